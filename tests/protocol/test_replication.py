import os

from protocol.replication import FetchQueue, holders, offers
from protocol.xor import closest


def test_holders_include_this_node_when_close() -> None:
    own = bytes(32)
    address = bytes(31) + b"\x01"
    peers = [os.urandom(32) for _ in range(10)]
    group = holders(address, own, peers)
    assert group[0] == own
    assert group == closest(address, [*peers, own], 5)


def test_offers_go_to_the_close_group_members_only() -> None:
    own = os.urandom(32)
    peers = [os.urandom(32) for _ in range(30)]
    addresses = [os.urandom(32) for _ in range(40)]
    plan = offers(addresses, own, peers)
    for peer, offered in plan.items():
        assert peer != own
        for address in offered:
            assert peer in holders(address, own, peers)
    total = sum(len(v) for v in plan.values())
    expected = sum(len([p for p in holders(a, own, peers) if p != own]) for a in addresses)
    assert total == expected


def test_offers_restricted_to_new_members() -> None:
    own = os.urandom(32)
    peers = [os.urandom(32) for _ in range(20)]
    newcomer = peers[0]
    addresses = [os.urandom(32) for _ in range(100)]
    plan = offers(addresses, own, peers, only_to=[newcomer])
    assert set(plan) <= {newcomer}
    assert plan.get(newcomer, []) == [a for a in addresses if newcomer in holders(a, own, peers)]


def test_fetch_queue_bounds_concurrency_and_falls_back_to_other_sources() -> None:
    queue = FetchQueue(max_in_flight=2, bytes_per_second=1e12, expected_chunk_bytes=1)
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    s1, s2 = b"\x10" * 32, b"\x20" * 32
    for address in (a, b, c):
        queue.want(address, [s1, s2])
    first = queue.next_fetches(0.0)
    assert [(f.address, f.source) for f in first] == [(a, s1), (b, s1)]
    assert queue.next_fetches(0.0) == []  # two in flight already
    queue.done(a, ok=False)
    retry = queue.next_fetches(0.0)
    assert [(f.address, f.source) for f in retry] == [(a, s2)]
    queue.done(a, ok=False)
    queue.done(b, ok=True, size=1)
    nxt = queue.next_fetches(0.0)
    # a has no untried source left: dropped and counted; c starts
    assert [(f.address, f.source) for f in nxt] == [(c, s1)]
    assert a not in queue and queue.failed == 1 and queue.fetched == 1


def test_fetch_queue_bandwidth_budget() -> None:
    queue = FetchQueue(max_in_flight=100, bytes_per_second=10, expected_chunk_bytes=5)
    for i in range(10):
        queue.want(bytes([i]) * 32, [b"\x01" * 32])
    assert len(queue.next_fetches(0.0)) == 2  # 10 tokens, 5 each
    assert queue.next_fetches(0.0) == []
    assert len(queue.next_fetches(0.5)) == 1  # 5 more tokens after half a second
    assert len(queue.next_fetches(10.0)) == 2  # the bucket holds one second's worth at most
