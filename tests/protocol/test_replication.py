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


def test_no_longer_responsible_uses_the_put_margin() -> None:
    from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN
    from protocol.replication import no_longer_responsible
    from protocol.xor import distance

    own = bytes(32)
    address = b"\xf0" + bytes(31)  # far from own: peers with the same top bits are closer
    places = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
    closer = [b"\xf0" + os.urandom(31) for _ in range(places)]
    farther = [b"\x00" + os.urandom(31) for _ in range(20)]
    assert all(distance(p, address) < distance(own, address) for p in closer)
    assert no_longer_responsible([address], own, [*closer[:-1], *farther]) == []
    assert no_longer_responsible([address], own, [*closer, *farther]) == [address]
    near = bytes(31) + b"\x01"  # own is the closest of all to this one
    assert no_longer_responsible([near, address], own, closer) == [address]


def test_handover_completes_when_every_member_acknowledged() -> None:
    from protocol.replication import Handover

    a, b = os.urandom(32), os.urandom(32)
    p1, p2, p3 = (os.urandom(32) for _ in range(3))
    handover = Handover()
    assert handover.start(a, [p1, p2])
    assert handover.start(b, [p2, p3])
    assert not handover.start(os.urandom(32), []), "nobody to hand over to"
    assert len(handover) == 2
    assert handover.acknowledged(p1, [a]) == []
    assert handover.acknowledged(p2, [a, b]) == [a]
    assert a not in handover and b in handover
    assert handover.acknowledged(p2, [a, b]) == [], "a repeated ack changes nothing"
    handover.failed(p1, [b])  # p1 was not waited for on b: nothing happens
    assert b in handover
    handover.failed(p3, [b])
    assert b not in handover and len(handover) == 0
    assert handover.acknowledged(p3, [b]) == [], "an ack after a failure does not demote"
    assert (handover.completed, handover.abandoned) == (1, 1)
