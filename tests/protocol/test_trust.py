"""TrustBook: evidence moves scores, scores decay, low scores shun for a while."""

from __future__ import annotations

import pytest

from protocol.trust import (
    HALF_LIFE_SECONDS,
    MAX_SCORE,
    SHUN_SECONDS,
    SHUN_THRESHOLD,
    WEIGHTS,
    PeerTrust,
    TrustBook,
    TrustEvent,
    decayed,
)

A = bytes([1]) * 32
B = bytes([2]) * 32


def test_each_event_moves_the_score_by_its_weight() -> None:
    for event, weight in WEIGHTS.items():
        book = TrustBook()
        book.record(A, event, 100.0)
        assert book.score(A, 100.0) == weight
    assert WEIGHTS[TrustEvent.AUDIT_PASSED] > 0
    assert all(w < 0 for e, w in WEIGHTS.items() if e is not TrustEvent.AUDIT_PASSED)
    assert TrustBook().score(A, 0.0) == 0.0, "nothing known: 0"


def test_passed_and_failed_counts() -> None:
    book = TrustBook()
    book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    book.record(A, TrustEvent.CHUNK_MISSING, 0.0)  # a slip, not a failure
    book.record(A, TrustEvent.CHECK_REFUSED, 0.0)
    (trust,) = book.peers()
    assert (trust.passed, trust.failed) == (2, 1)


def test_good_behaviour_cannot_be_banked_past_max_score() -> None:
    book = TrustBook()
    for _ in range(50):
        book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    assert book.score(A, 0.0) == MAX_SCORE
    book.record(A, TrustEvent.AUDIT_FAILED, 0.0)
    assert book.score(A, 0.0) == MAX_SCORE + WEIGHTS[TrustEvent.AUDIT_FAILED]


def test_scores_decay_with_the_half_life() -> None:
    assert decayed(4.0, HALF_LIFE_SECONDS) == pytest.approx(2.0)
    assert decayed(-4.0, 2 * HALF_LIFE_SECONDS) == pytest.approx(-1.0)
    assert decayed(3.0, 0.0) == 3.0
    assert decayed(3.0, -10.0) == 3.0, "no growth backwards"
    book = TrustBook(half_life=100.0)
    book.record(A, TrustEvent.AUDIT_FAILED, 0.0)
    assert book.score(A, 100.0) == pytest.approx(-2.5)
    assert book.score(A, 300.0) == pytest.approx(-0.625)
    # new evidence adds to the decayed score
    book.record(A, TrustEvent.AUDIT_PASSED, 100.0)
    assert book.score(A, 100.0) == pytest.approx(-1.5)


def test_one_slip_does_not_shun() -> None:
    for event in TrustEvent:
        if event is TrustEvent.PROOF_FORGED:
            continue  # no slip: a lie (below)
        book = TrustBook()
        assert book.record(A, event, 0.0) is False
        assert not book.is_shunned(A, 0.0)
        assert book.shunned(0.0) == {}


def test_a_forged_proof_shuns_at_once_even_a_peer_of_full_trust() -> None:
    book = TrustBook()
    for _ in range(10):
        book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    assert book.score(A, 0.0) == MAX_SCORE
    assert book.record(A, TrustEvent.PROOF_FORGED, 1.0) is True
    assert book.is_shunned(A, 1.0)


def test_a_missing_chunk_then_a_failed_audit_shuns() -> None:
    book = TrustBook()
    assert book.record(A, TrustEvent.CHUNK_MISSING, 0.0) is False
    assert book.record(A, TrustEvent.AUDIT_FAILED, 180.0) is True  # one possession delay later
    assert book.score(A, 180.0) <= SHUN_THRESHOLD
    assert book.is_shunned(A, 180.0)
    assert not book.is_shunned(B, 180.0)
    assert book.shunned(180.0) == {A: 180.0 + SHUN_SECONDS}
    # more evidence while shunned does not announce it again
    assert book.record(A, TrustEvent.WRONG_BYTES, 181.0) is False
    assert book.shunned(181.0) == {A: 180.0 + SHUN_SECONDS}


def test_three_refusals_shun() -> None:
    book = TrustBook()
    assert not book.record(A, TrustEvent.CHECK_REFUSED, 0.0)
    assert not book.record(A, TrustEvent.CHECK_REFUSED, 0.0)
    assert book.record(A, TrustEvent.CHECK_REFUSED, 0.0)


def test_a_slip_long_ago_has_faded() -> None:
    book = TrustBook(half_life=100.0)
    book.record(A, TrustEvent.CHUNK_MISSING, 0.0)
    assert book.record(A, TrustEvent.AUDIT_FAILED, 1000.0) is False
    assert not book.is_shunned(A, 1000.0)


def test_shunning_expires_and_can_start_again() -> None:
    book = TrustBook(half_life=1e12, shun_seconds=50.0)
    book.record(A, TrustEvent.WRONG_BYTES, 0.0)
    assert book.record(A, TrustEvent.WRONG_BYTES, 0.0) is True
    assert book.is_shunned(A, 49.9)
    assert not book.is_shunned(A, 50.0)
    assert book.shunned(50.0) == {}
    # still below the threshold: the next evidence shuns it again
    assert book.record(A, TrustEvent.CHUNK_MISSING, 60.0) is True
    assert book.shunned(60.0) == {A: 110.0}


def test_take_changed_returns_each_changed_record_once() -> None:
    book = TrustBook()
    book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    book.record(B, TrustEvent.CHUNK_MISSING, 0.0)
    book.record(A, TrustEvent.AUDIT_PASSED, 1.0)
    assert {t.peer_id for t in book.take_changed()} == {A, B}
    assert book.take_changed() == []
    book.record(B, TrustEvent.AUDIT_PASSED, 2.0)
    assert [t.peer_id for t in book.take_changed()] == [B]


def test_forget_faded_keeps_the_shunned_and_the_marked() -> None:
    book = TrustBook(half_life=100.0, shun_seconds=10_000.0)
    c = bytes([3]) * 32
    book.record(A, TrustEvent.AUDIT_PASSED, 0.0)
    book.record(B, TrustEvent.WRONG_BYTES, 0.0)
    book.record(B, TrustEvent.WRONG_BYTES, 0.0)  # shunned
    book.record(c, TrustEvent.AUDIT_FAILED, 900.0)
    assert book.forget_faded(1000.0) == [A]
    assert len(book) == 2
    assert book.score(A, 1000.0) == 0.0
    assert book.is_shunned(B, 1000.0), "a shunned peer is kept however faded"
    assert all(t.peer_id != A for t in book.take_changed()), "forgotten: not to save"
    assert set(book.forget_faded(20_000.0)) == {B, c}, "shunning over, score faded"
    assert len(book) == 0


def test_load_restores_scores_and_shunning() -> None:
    book = TrustBook(half_life=100.0)
    book.load(
        [
            PeerTrust(A, score=-8.0, updated_at=0.0, passed=1, failed=2, shunned_until=500.0),
            PeerTrust(B, score=4.0, updated_at=0.0, passed=4),
        ]
    )
    assert book.score(A, 100.0) == pytest.approx(-4.0)
    assert book.score(B, 0.0) == 4.0
    assert book.shunned(100.0) == {A: 500.0}
    assert not book.is_shunned(A, 500.0)
    assert book.take_changed() == [], "loaded records are not changes"
    book.record(B, TrustEvent.AUDIT_PASSED, 0.0)
    (trust,) = [t for t in book.peers() if t.peer_id == B]
    assert trust.passed == 5
