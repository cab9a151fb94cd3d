"""The chunk cache's accounting: byte bound, least-recently-used eviction, restart order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.chunk_cache import ChunkCache


def addr(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_admit_within_capacity_evicts_nothing() -> None:
    cache = ChunkCache(100)
    assert cache.admit(addr(1), 40) == []
    assert cache.admit(addr(2), 60) == []
    assert cache.total_bytes == 100 and len(cache) == 2
    assert addr(1) in cache and addr(2) in cache


def test_least_recently_used_is_evicted_first() -> None:
    cache = ChunkCache(100)
    cache.admit(addr(1), 40)
    cache.admit(addr(2), 40)
    assert cache.touch(addr(1))  # now 2 is the least recently used
    assert cache.admit(addr(3), 40) == [addr(2)]
    assert cache.order() == [addr(1), addr(3)]
    assert cache.total_bytes == 80


def test_several_are_evicted_to_make_room_for_a_big_one() -> None:
    cache = ChunkCache(100)
    for n in range(5):
        cache.admit(addr(n), 20)
    assert cache.admit(addr(9), 70) == [addr(0), addr(1), addr(2), addr(3)]
    assert cache.order() == [addr(4), addr(9)]
    assert cache.total_bytes == 90


def test_a_chunk_larger_than_the_capacity_is_refused_without_evicting_others() -> None:
    cache = ChunkCache(100)
    cache.admit(addr(1), 50)
    assert cache.admit(addr(2), 101) == [addr(2)]
    assert addr(2) not in cache and cache.order() == [addr(1)] and cache.total_bytes == 50


def test_zero_capacity_caches_nothing() -> None:
    cache = ChunkCache(0)
    assert cache.admit(addr(1), 1) == [addr(1)]
    assert cache.admit(addr(2), 0) == [], "an empty chunk takes no room"
    assert cache.total_bytes == 0


def test_readmitting_refreshes_and_does_not_double_count() -> None:
    cache = ChunkCache(100)
    cache.admit(addr(1), 30)
    cache.admit(addr(2), 30)
    assert cache.admit(addr(1), 30) == []
    assert cache.order() == [addr(2), addr(1)] and cache.total_bytes == 60


def test_remove_and_touch_of_unknown_addresses() -> None:
    cache = ChunkCache(100)
    cache.admit(addr(1), 30)
    assert cache.remove(addr(1)) == 30
    assert cache.remove(addr(1)) is None
    assert not cache.touch(addr(1))
    assert cache.total_bytes == 0 and len(cache) == 0


def test_load_keeps_the_most_recent_when_the_capacity_shrank() -> None:
    cache = ChunkCache(50)
    evicted = cache.load([(addr(1), 20), (addr(2), 20), (addr(3), 500), (addr(4), 20)])
    assert set(evicted) == {addr(1), addr(3)}
    assert cache.order() == [addr(2), addr(4)] and cache.total_bytes == 40


def test_negative_values_are_refused() -> None:
    with pytest.raises(ValueError):
        ChunkCache(-1)
    with pytest.raises(ValueError):
        ChunkCache(10).admit(addr(1), -1)


operations = st.lists(
    st.tuples(
        st.sampled_from(["admit", "touch", "remove"]),
        st.integers(0, 15),
        st.integers(0, 60),
    ),
    max_size=200,
)


@given(st.integers(0, 150), operations)
def test_accounting_matches_a_plain_model(capacity: int, ops: list[tuple[str, int, int]]) -> None:
    cache = ChunkCache(capacity)
    model: dict[bytes, int] = {}  # insertion order = least recently used first
    for op, n, size in ops:
        a = addr(n)
        if op == "admit":
            evicted = cache.admit(a, size)
            model.pop(a, None)
            if size > capacity:
                assert evicted == [a]
            else:
                model[a] = size
                expected = []
                while sum(model.values()) > capacity:
                    oldest = next(iter(model))
                    expected.append(oldest)
                    del model[oldest]
                assert evicted == expected
        elif op == "touch":
            assert cache.touch(a) == (a in model)
            if a in model:
                model[a] = model.pop(a)
        else:
            assert cache.remove(a) == model.pop(a, None)
        assert cache.order() == list(model)
        assert cache.total_bytes == sum(model.values()) <= capacity
