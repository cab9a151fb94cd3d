"""RoutingTable: buckets, LRS order, ping-before-evict, failures, diversity, refresh, persistence."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.routing import (
    Added,
    Cached,
    Evicted,
    FailureRecorded,
    K,
    NotAdded,
    PingNeeded,
    RoutingTable,
    RoutingView,
    StoredPeer,
    Updated,
    subnet_of,
)
from protocol.wire import MAX_SHUNNED_PER_REPLY
from protocol.xor import bucket_index, closest, random_address_in_bucket

OWN = bytes(range(32))


def in_bucket(index: int, n: int, own: bytes = OWN) -> list[bytes]:
    """``n`` distinct ids in bucket ``index`` of ``own``."""
    ids: set[bytes] = set()
    while len(ids) < n:
        ids.add(random_address_in_bucket(own, index))
    return sorted(ids)


def ip(n: int) -> str:
    """A distinct IP (and /24) per ``n``."""
    return f"198.51.{n // 250}.{n % 250 + 1}" if n < 250 else f"10.{n // 250}.{n % 250}.1"


def fill(table: RoutingTable, ids: list[bytes], start: float = 0.0) -> None:
    for n, peer_id in enumerate(ids):
        result = table.observe(peer_id, (f"/ip4/10.0.0.{n % 250}/udp/1/quic-v1",), None, start + n)
        assert isinstance(result, Added)


# --- basics --------------------------------------------------------------------------


def test_observe_adds_and_moves_to_tail() -> None:
    table = RoutingTable(OWN)
    a, b, c = in_bucket(200, 3)
    for n, peer in enumerate((a, b, c)):
        assert table.observe(peer, ("/x",), None, float(n)) == Added(peer, 200)
    assert [e.peer_id for e in table.bucket_peers(200)] == [a, b, c]
    assert table.observe(a, (), None, 10.0) == Updated(a, 200)
    assert [e.peer_id for e in table.bucket_peers(200)] == [b, c, a]
    entry = table.get(a)
    assert entry is not None
    assert entry.last_seen == 10.0
    assert entry.addrs == ("/x",)  # empty addrs keep the known ones
    assert len(table) == 3
    assert a in table
    assert table.bucket_sizes() == {200: 3}


def test_own_and_invalid_ids_are_rejected() -> None:
    table = RoutingTable(OWN)
    assert table.observe(OWN, (), None, 0.0) == NotAdded(OWN, "own_id")
    assert table.observe(b"short", (), None, 0.0) == NotAdded(b"short", "invalid_id")
    assert len(table) == 0
    assert table.get(OWN) is None
    assert table.record_failure(OWN, 0.0) is None
    assert table.remove(b"x") is None


def test_bucket_index_matches_xor() -> None:
    table = RoutingTable(OWN)
    for index in (0, 1, 100, 254, 255):
        (peer,) = in_bucket(index, 1)
        result = table.observe(peer, (), None, 0.0)
        assert result == Added(peer, index)
        assert bucket_index(OWN, peer) == index


# --- ping before evict ---------------------------------------------------------------


def test_full_bucket_asks_to_ping_the_least_recently_seen() -> None:
    table = RoutingTable(OWN, k=4)
    peers = in_bucket(255, 7)
    fill(table, peers[:4])
    newcomer, second, third = peers[4:7]

    action = table.observe(newcomer, ("/new",), None, 10.0)
    assert isinstance(action, PingNeeded)
    assert action.peer_id == peers[0]  # the least recently seen
    assert action.candidate == newcomer
    assert action.bucket == 255
    assert newcomer not in table  # it waits in the replacement cache
    assert table.replacement_count() == 1
    # While the ping is pending, further newcomers just wait.
    assert table.observe(second, (), None, 11.0) == Cached(second, 255)

    # Alive: the pinged peer moves to the tail, the newcomers stay out.
    assert table.ping_result(peers[0], True, 12.0) == Updated(peers[0], 255)
    assert [e.peer_id for e in table.bucket_peers(255)] == [*peers[1:4], peers[0]]
    assert newcomer not in table

    # The next newcomer asks for a ping of the new least recently seen.
    action = table.observe(third, (), None, 13.0)
    assert isinstance(action, PingNeeded)
    assert action.peer_id == peers[1]
    # Dead: evicted, the freshest waiting peer takes its place.
    outcome = table.ping_result(peers[1], False, 14.0)
    assert outcome == Evicted(peers[1], 255, replaced_by=third)
    assert third in table
    assert peers[1] not in table
    assert len(table.bucket_peers(255)) == 4


def test_seeing_the_pinged_peer_resolves_the_ping() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c, d = in_bucket(255, 4)
    fill(table, [a, b])
    assert isinstance(table.observe(c, (), None, 5.0), PingNeeded)
    assert table.observe(a, (), None, 6.0) == Updated(a, 255)  # a answered something
    action = table.observe(d, (), None, 7.0)  # no longer blocked by the old ping
    assert isinstance(action, PingNeeded)
    assert action.peer_id == b


def test_stale_pending_ping_no_longer_blocks() -> None:
    table = RoutingTable(OWN, k=2, ping_timeout=30.0)
    a, b, c, d = in_bucket(255, 4)
    fill(table, [a, b])
    assert isinstance(table.observe(c, (), None, 5.0), PingNeeded)
    assert isinstance(table.observe(d, (), None, 20.0), Cached)
    again = table.observe(d, (), None, 40.0)
    assert isinstance(again, PingNeeded)
    assert again.peer_id == a


def test_ping_dead_without_pending_ping_counts_a_failure() -> None:
    table = RoutingTable(OWN)
    (a,) = in_bucket(10, 1)
    table.observe(a, (), None, 0.0)
    assert table.ping_result(a, False, 1.0) == FailureRecorded(a, 1)
    assert a in table
    (unknown,) = in_bucket(11, 1)
    assert table.ping_result(unknown, True, 1.0) is None


# --- failures ------------------------------------------------------------------------


def test_one_missed_reply_never_evicts() -> None:
    table = RoutingTable(OWN, k=3, failure_threshold=3)
    a, b, c, spare = in_bucket(255, 4)
    fill(table, [a, b, c])
    assert isinstance(table.observe(spare, (), None, 10.0), PingNeeded)  # spare is cached
    table.ping_result(a, True, 11.0)  # a is alive: spare keeps waiting

    assert table.record_failure(b, 12.0) == FailureRecorded(b, 1)
    assert table.record_failure(b, 13.0) == FailureRecorded(b, 2)
    assert b in table
    # Failures keep the peer's position (it is not "seen").
    assert [e.peer_id for e in table.bucket_peers(255)] == [b, c, a]
    # A sign of life resets the count.
    table.observe(b, (), None, 14.0)
    entry = table.get(b)
    assert entry is not None
    assert entry.failures == 0
    for n in range(2):
        assert table.record_failure(b, 15.0 + n) == FailureRecorded(b, n + 1)
    assert table.record_failure(b, 17.0) == Evicted(b, 255, replaced_by=spare)
    assert b not in table
    assert spare in table


def test_failure_of_a_cached_peer_drops_it_from_the_cache() -> None:
    table = RoutingTable(OWN, k=1)
    a, b = in_bucket(255, 2)
    table.observe(a, (), None, 0.0)
    table.observe(b, (), None, 1.0)
    assert table.replacement_count() == 1
    assert table.record_failure(b, 2.0) is None
    assert table.replacement_count() == 0


def test_remove_promotes_from_the_replacement_cache() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c = in_bucket(255, 3)
    fill(table, [a, b])
    table.observe(c, (), None, 5.0)
    assert table.remove(a) == Evicted(a, 255, replaced_by=c)
    assert table.remove(a) is None
    assert [e.peer_id for e in table.bucket_peers(255)] == [b, c]


def test_replacement_cache_is_bounded_and_freshest_wins() -> None:
    table = RoutingTable(OWN, k=1, replacement_size=3)
    peers = in_bucket(255, 6)
    table.observe(peers[0], (), None, 0.0)
    for n, peer in enumerate(peers[1:], start=1):
        table.observe(peer, (), None, float(n))
    assert table.replacement_count() == 3
    outcome = table.remove(peers[0])
    assert outcome == Evicted(peers[0], 255, replaced_by=peers[5])


# --- diversity -----------------------------------------------------------------------


def test_at_most_two_per_ip_and_five_per_subnet_in_a_bucket() -> None:
    table = RoutingTable(OWN)
    peers = in_bucket(255, 10)
    assert isinstance(table.observe(peers[0], (), "203.0.113.7", 0.0), Added)
    assert isinstance(table.observe(peers[1], (), "203.0.113.7", 1.0), Added)
    assert table.observe(peers[2], (), "203.0.113.7", 2.0) == NotAdded(peers[2], "ip_limit")
    for n in range(3):
        assert isinstance(table.observe(peers[3 + n], (), f"203.0.113.{20 + n}", 3.0 + n), Added)
    assert table.observe(peers[6], (), "203.0.113.99", 9.0) == NotAdded(peers[6], "subnet_limit")
    assert isinstance(table.observe(peers[7], (), "203.0.114.1", 10.0), Added)
    assert isinstance(table.observe(peers[8], (), None, 11.0), Added)  # unknown IP: not counted
    # Another bucket has its own counts.
    (other,) = in_bucket(254, 1)
    assert isinstance(table.observe(other, (), "203.0.113.7", 12.0), Added)
    # A known peer moving onto a full IP is refused; the entry stays as it was.
    assert table.observe(peers[7], (), "203.0.113.7", 13.0) == NotAdded(peers[7], "ip_limit")
    entry = table.get(peers[7])
    assert entry is not None
    assert entry.ip == "203.0.114.1"


def test_local_lifts_the_ip_limits() -> None:
    table = RoutingTable(OWN, local=True)
    for n, peer in enumerate(in_bucket(255, 20)):
        assert isinstance(table.observe(peer, (), "127.0.0.1", float(n)), Added)
    assert len(table) == 20


def test_subnet_of() -> None:
    assert subnet_of("192.0.2.77") == "192.0.2.0/24"
    assert subnet_of("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert subnet_of("2001:db8:1:2::5") == "2001:db8:1::/48"
    with pytest.raises(ValueError):
        subnet_of("not an ip")


def test_promotion_respects_diversity() -> None:
    table = RoutingTable(OWN, k=3)
    a, b, c, d, e = in_bucket(255, 5)
    table.observe(a, (), "192.0.2.1", 0.0)
    table.observe(b, (), "198.51.100.1", 1.0)
    table.observe(c, (), "203.0.113.5", 2.0)
    assert isinstance(table.observe(d, (), "203.0.113.1", 3.0), PingNeeded)  # cached
    assert isinstance(table.observe(e, (), "192.0.2.1", 4.0), Cached)  # fits: one such IP
    assert isinstance(table.observe(b, (), "192.0.2.1", 5.0), Updated)  # b moves onto it
    # c leaves: e is the freshest waiting peer but would be a third 192.0.2.1.
    assert table.remove(c) == Evicted(c, 255, replaced_by=d)
    assert e not in table


# --- closest -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 300),
    count=st.integers(0, 40),
    target_kind=st.sampled_from(["random", "own", "member"]),
)
def test_closest_equals_brute_force(seed: int, size: int, count: int, target_kind: str) -> None:
    rng = random.Random(seed)
    own = rng.randbytes(32)
    table = RoutingTable(own, k=8, local=True)
    for n in range(size):
        depth = rng.randrange(0, 4)  # cluster some ids near the own id
        peer = own[:depth] + rng.randbytes(32 - depth)
        if peer != own:
            table.observe(peer, (), None, float(n))
    members = [e.peer_id for e in table.peers()]
    target = {
        "random": rng.randbytes(32),
        "own": own,
        "member": rng.choice(members) if members else own,
    }[target_kind]
    exclude = set(rng.sample(members, min(2, len(members))))
    got = [e.peer_id for e in table.closest(target, count, exclude=exclude)]
    assert got == closest(target, [m for m in members if m not in exclude], count)


# --- invariants under random operations -------------------------------------------


def _answer(view: RoutingView, target: bytes, now: float) -> tuple[list[Any], list[bytes]]:
    return [(e.peer_id, e.addrs) for e in view.closest(target, 8)], sorted(view.shunned(now))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["observe", "observe", "observe", "ping", "fail", "remove", "shun"]),
        st.integers(0, 60),
        st.booleans(),
    ),
    max_size=250,
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), ops=OPS, local=st.booleans())
def test_invariants_hold_under_any_sequence(
    seed: int, ops: list[tuple[str, int, bool]], local: bool
) -> None:
    rng = random.Random(seed)
    own = rng.randbytes(32)
    # 60 candidate peers crowded into 3 buckets (so buckets fill), a few IPs.
    pool = [random_address_in_bucket(own, rng.choice([255, 254, 200])) for _ in range(60)]
    pool.append(own)  # the own id must never get in
    ips = [f"192.0.2.{n % 7}" for n in range(30)] + [f"198.51.100.{n}" for n in range(31)]
    table = RoutingTable(own, k=5, local=local, failure_threshold=3)
    targets = [rng.randbytes(32) for _ in range(3)]
    now = 0.0
    for op, n, flag in ops:
        now += 1.0
        peer = pool[n]
        before = table.view()
        before_answers = [_answer(before, t, now) for t in targets]
        if op == "observe":
            addrs = (f"/ip4/192.0.2.{n}/udp/{1000 + flag}/quic-v1",) if n % 2 else ()
            table.observe(peer, addrs, ips[n], now)
        elif op == "ping":
            table.ping_result(peer, flag, now)
        elif op == "fail":
            table.record_failure(peer, now)
        elif op == "shun":
            table.shun(peer, now + (2.5 if flag else 50.0))
        else:
            table.remove(peer)

        # A view taken earlier never changes; the current one answers as the table does.
        assert [_answer(before, t, now) for t in targets] == before_answers
        view = table.view()
        for target in targets:
            assert _answer(view, target, now) == (
                [(e.peer_id, e.addrs) for e in table.closest(target, 8)],
                sorted(table.shunned(now)),
            )

        entries = table.peers()
        assert len(entries) == len(table)
        assert own not in {e.peer_id for e in entries}
        assert len({e.peer_id for e in entries}) == len(entries)
        for index, size in table.bucket_sizes().items():
            bucket = table.bucket_peers(index)
            assert size == len(bucket) <= 5
            assert all(bucket_index(own, e.peer_id) == index for e in bucket)
            seen = [e.last_seen for e in bucket]
            assert seen == sorted(seen)  # least recently seen first
            assert all(e.failures < 3 for e in bucket)
            if not local:
                by_ip = [e.ip for e in bucket if e.ip is not None]
                assert all(by_ip.count(x) <= 2 for x in by_ip)
                nets = [subnet_of(x) for x in by_ip]
                assert all(nets.count(x) <= 5 for x in nets)


# --- refresh ---------------------------------------------------------------------------


def test_buckets_to_refresh() -> None:
    table = RoutingTable(OWN)
    assert table.buckets_to_refresh(0.0, 60.0) == []  # nothing known: nothing to refresh
    (near,) = in_bucket(250, 1)
    (far,) = in_bucket(255, 1)
    table.observe(near, (), None, 0.0)
    table.observe(far, (), None, 0.0)
    assert table.buckets_to_refresh(0.0, 60.0) == [250, 251, 252, 253, 254, 255]
    for index in (250, 251, 252, 253, 254, 255):
        table.mark_refreshed(index, 100.0)
    assert table.buckets_to_refresh(150.0, 60.0) == []
    table.mark_refreshed(252, 50.0)
    assert table.buckets_to_refresh(150.0, 60.0) == [252]
    assert table.buckets_to_refresh(161.0, 60.0) == [250, 251, 252, 253, 254, 255]
    with pytest.raises(ValueError):
        table.mark_refreshed(256, 0.0)


# --- persistence -------------------------------------------------------------------


def test_export_import_round_trip() -> None:
    table = RoutingTable(OWN, k=3)
    peers = in_bucket(255, 3) + in_bucket(100, 2)
    for n, peer in enumerate(peers):
        table.observe(peer, (f"/ip4/192.0.2.{n}/udp/1/quic-v1",), f"192.0.2.{n}", float(n))
    table.record_failure(peers[1], 9.0)
    records = table.export_entries()
    assert all(isinstance(r, StoredPeer) for r in records)

    restored = RoutingTable(OWN, k=3)
    assert restored.import_entries(reversed(records)) == 5
    assert restored.export_entries() == records
    entry = restored.get(peers[1])
    assert entry is not None
    assert entry.failures == 1


def test_import_applies_the_rules() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c = in_bucket(255, 3)
    records = [
        StoredPeer(a, ("/a",), 5.0),
        StoredPeer(b, ("/b",), 1.0),
        StoredPeer(c, ("/c",), 3.0),
        StoredPeer(OWN, (), 0.0),
        StoredPeer(b"bad", (), 0.0),
        StoredPeer(b, ("/b",), 1.0),
    ]
    assert table.import_entries(records) == 2
    # Oldest first: b and c got in, a (the newest) waits in the replacement cache.
    assert [e.peer_id for e in table.bucket_peers(255)] == [b, c]
    assert table.replacement_count() == 1


# --- shunning ------------------------------------------------------------------------


def test_shun_removes_and_rejects_until_it_expires() -> None:
    table = RoutingTable(OWN)
    a, b = in_bucket(200, 2)
    fill(table, [a, b])
    assert table.shun(a, until=100.0) == Evicted(a, 200, replaced_by=None)
    assert a not in table and b in table
    assert table.is_shunned(a, 50.0)
    assert not table.is_shunned(b, 50.0)
    assert table.shunned(50.0) == [a]
    assert table.observe(a, ("/x",), None, 50.0) == NotAdded(a, "shunned")
    assert a not in table
    assert table.closest(a, 20) == [table.get(b)]
    # over: welcome again, a newcomer
    assert table.shunned(99.9) == [a]
    assert table.observe(a, ("/x",), None, 100.0) == Added(a, 200)
    assert not table.is_shunned(a, 100.0)
    assert table.shunned(100.0) == []


def test_shunning_an_unknown_peer_keeps_it_out_and_own_or_invalid_ids_are_ignored() -> None:
    table = RoutingTable(OWN)
    (a,) = in_bucket(10, 1)
    assert table.shun(a, until=10.0) is None
    assert table.observe(a, (), None, 5.0) == NotAdded(a, "shunned")
    assert table.shun(OWN, until=10.0) is None
    assert table.shun(b"short", until=10.0) is None
    assert table.shunned(0.0) == [a]
    assert table.observe(OWN, (), None, 0.0) == NotAdded(OWN, "own_id")
    # a longer shun replaces a shorter one
    table.shun(a, until=20.0)
    assert table.is_shunned(a, 15.0)


def test_shun_promotes_a_replacement_and_drops_a_shunned_replacement() -> None:
    table = RoutingTable(OWN, k=2)
    a, b, c, d = in_bucket(255, 4)
    fill(table, [a, b])
    table.observe(c, (), None, 5.0)
    assert table.replacement_count() == 1
    assert table.shun(a, until=1000.0) == Evicted(a, 255, replaced_by=c)
    assert [e.peer_id for e in table.bucket_peers(255)] == [b, c]
    # a shunned peer waiting in the replacement cache is dropped, never promoted
    table.observe(d, (), None, 6.0)
    assert table.replacement_count() == 1
    assert table.shun(d, until=1000.0) is None
    assert table.replacement_count() == 0
    assert table.remove(b) == Evicted(b, 255, replaced_by=None)
    assert table.observe(a, (), None, 7.0) == NotAdded(a, "shunned")
    assert table.observe(d, (), None, 7.0) == NotAdded(d, "shunned")


# --- the published view ------------------------------------------------------------------


def test_the_view_is_rebuilt_only_when_peers_addresses_or_shunned_peers_change() -> None:
    table = RoutingTable(OWN)
    a, b = in_bucket(200, 2)
    first = table.view()
    assert table.view() is first
    table.observe(a, ("/ip4/192.0.2.1/udp/1/quic-v1",), None, 1.0)
    added = table.view()
    assert added is not first and [e.peer_id for e in added.closest(a)] == [a]
    table.observe(a, (), None, 2.0)  # seen again, nothing else changed
    table.observe(a, ("/ip4/192.0.2.1/udp/1/quic-v1",), None, 3.0)
    table.record_failure(a, 4.0)
    assert table.view() is added
    table.observe(a, ("/ip4/192.0.2.1/udp/2/quic-v1",), None, 5.0)  # it moved
    moved = table.view()
    assert moved is not added and moved.closest(a)[0].addrs == ("/ip4/192.0.2.1/udp/2/quic-v1",)
    table.shun(b, until=100.0)  # not even in the table: still a change of the view
    assert table.view() is not moved and table.view().shunned(99.0) == [b]
    assert table.view().shunned(100.0) == []


def test_the_find_node_answer_leaves_out_the_requester_and_names_shunned_peers() -> None:
    table = RoutingTable(OWN, local=True)
    peers = in_bucket(255, 20) + in_bucket(254, 5)
    fill(table, peers)
    shunned = in_bucket(253, MAX_SHUNNED_PER_REPLY + 3)
    for peer in shunned:
        table.shun(peer, until=50.0)
    target, requester = peers[0], peers[1]
    answer = table.view().find_node_answer(target, requester, now=10.0)
    others = [p for p in peers if p != requester]
    assert [r.peer_id for r in answer.peers] == closest(target, others, K)
    assert answer.peers[0].addrs == list(table.get(target).addrs)  # type: ignore[union-attr]
    assert answer.shunned == closest(target, shunned, MAX_SHUNNED_PER_REPLY)
    assert table.view().find_node_answer(target, requester, now=50.0).shunned == []
