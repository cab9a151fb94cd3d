"""TokenBucket: starts full, refills at ``rate`` up to ``burst``, never spends what it lacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.rate import TokenBucket


def test_starts_full_and_spends_only_what_it_holds() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert bucket.available(0.0) == 100.0
    assert bucket.take(60.0, 0.0)
    assert bucket.available(0.0) == 40.0
    assert not bucket.take(41.0, 0.0), "more than is left"
    assert bucket.available(0.0) == 40.0, "a refused take spends nothing"
    assert bucket.take(40.0, 0.0)
    assert not bucket.take(0.5, 0.0)


def test_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert bucket.take(100.0, 0.0)
    assert bucket.available(1.0) == pytest.approx(10.0)
    assert bucket.available(3.5) == pytest.approx(35.0)
    assert bucket.take(35.0, 3.5)
    assert bucket.available(1000.0) == 100.0, "never more than the burst"


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert bucket.take(100.0, 50.0)
    assert bucket.available(10.0) == 0.0
    assert bucket.available(50.0) == 0.0, "the earlier moment did not reset the clock"
    assert bucket.available(51.0) == pytest.approx(10.0)


def test_zero_rate_never_refills() -> None:
    bucket = TokenBucket(rate=0.0, burst=5.0)
    assert bucket.take(5.0, 0.0)
    assert bucket.available(1e9) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 10.0), (1.0, 0.0), (1.0, -5.0)])
def test_invalid_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@given(
    st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0, 200, allow_nan=False)),
        max_size=50,
    )
)
def test_property_never_spends_more_than_rate_times_time_plus_burst(
    steps: list[tuple[float, float]],
) -> None:
    rate, burst = 10.0, 100.0
    bucket = TokenBucket(rate, burst)
    now = spent = 0.0
    for gap, amount in steps:
        now += gap
        before = bucket.available(now)
        assert 0.0 <= before <= burst
        if bucket.take(amount, now):
            spent += amount
            assert amount <= before
        else:
            assert amount > before
    assert spent <= burst + rate * now + 1e-6


def test_adjust_corrects_an_estimated_cost_and_may_leave_a_debt() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert bucket.take(80, 0.0)
    bucket.adjust(50)  # the real cost was 30: 50 back
    assert bucket.available(0.0) == 70
    bucket.adjust(1000)
    assert bucket.available(0.0) == 100, "never past the burst"
    assert bucket.take(100, 0.0)
    bucket.adjust(-20)  # it cost 20 more than estimated
    assert bucket.available(0.0) == -20
    assert not bucket.take(1, 1.0), "the debt is paid back first"
    assert bucket.available(3.0) == 10
