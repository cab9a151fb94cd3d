"""Storage audits: proofs, sampling, judging, planning and the answering side's gate."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.audit import (
    CHALLENGE_BURST,
    DECLINED,
    IN_FLIGHT_SECONDS,
    MAX_BACKLOG_PER_PEER,
    MISSING,
    PLAUSIBLE_DECLINE_RANK,
    REFETCH_SECONDS,
    AuditOutcome,
    AuditPlanner,
    AuditReport,
    Challenge,
    ChallengeGate,
    ChallengeKind,
    GateLimits,
    Refusal,
    answer,
    judge,
    judge_error,
    sample_size,
    storage_proof,
)
from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.replication import holders, offers
from protocol.trust import TrustEvent
from protocol.wire import MAX_CHALLENGE_ADDRESSES, ErrorCode
from protocol.xor import closest

RNG = random.Random(1234)
OWN = RNG.randbytes(32)
PEERS = [RNG.randbytes(32) for _ in range(9)]
NONCE = bytes([7]) * 32
PEER = PEERS[0]


def content_for(address: bytes) -> bytes:
    return b"chunk:" + address


def nonces() -> Callable[[], bytes]:
    counter = itertools.count(1)
    return lambda: next(counter).to_bytes(32, "big")


def near(base: bytes, rng: random.Random) -> bytes:
    """An address sharing ``base``'s first 8 bytes: ``base`` is the closest to it."""
    return base[:8] + rng.randbytes(24)


# --- storage_proof and sample_size --------------------------------------------------


def test_storage_proof_binds_every_input() -> None:
    address = bytes([3]) * 32
    base = storage_proof(NONCE, PEER, address, b"content")
    assert len(base) == 32
    assert base == storage_proof(NONCE, PEER, address, b"content"), "deterministic"
    variants = [
        storage_proof(bytes([8]) * 32, PEER, address, b"content"),
        storage_proof(NONCE, PEERS[1], address, b"content"),
        storage_proof(NONCE, PEER, bytes([4]) * 32, b"content"),
        storage_proof(NONCE, PEER, address, b"contenT"),
        storage_proof(NONCE, PEER, address, b"content" + b"\x00"),
    ]
    assert len({base, *variants}) == len(variants) + 1


@pytest.mark.parametrize(
    ("shared", "expected"),
    [(0, 0), (-3, 0), (1, 1), (2, 2), (4, 2), (5, 3), (1000, 32), (4096, 64), (10**6, 64)],
)
def test_sample_size(shared: int, expected: int) -> None:
    assert sample_size(shared) == expected


@given(st.integers(min_value=1, max_value=10**7))
def test_property_sample_size_is_about_the_square_root(shared: int) -> None:
    n = sample_size(shared)
    assert 1 <= n <= min(shared, MAX_CHALLENGE_ADDRESSES)
    if n < MAX_CHALLENGE_ADDRESSES:
        assert (n - 1) ** 2 < shared <= n * n, "the square root, rounded up"
    else:
        assert shared > (MAX_CHALLENGE_ADDRESSES - 1) ** 2
    assert n >= min(math.isqrt(shared), MAX_CHALLENGE_ADDRESSES)


# --- judge ----------------------------------------------------------------------------


ADDRS = [bytes([i]) * 32 for i in range(1, 5)]


def challenge(
    addresses: list[bytes] = ADDRS,
    owed: frozenset[bytes] = frozenset(),
    close: frozenset[bytes] = frozenset(),
    kind: ChallengeKind = ChallengeKind.AUDIT,
) -> Challenge:
    return Challenge(PEER, NONCE, tuple(addresses), kind, owed, close)


def expected_for(c: Challenge) -> dict[bytes, bytes]:
    return {a: storage_proof(c.nonce, c.peer, a, content_for(a)) for a in c.addresses}


def honest_answers(c: Challenge) -> list[bytes]:
    return [storage_proof(c.nonce, c.peer, a, content_for(a)) for a in c.addresses]


def test_all_proven_passes() -> None:
    c = challenge()
    report = judge(c, expected_for(c), honest_answers(c))
    assert report.outcome is AuditOutcome.PASSED
    assert report.events == (TrustEvent.AUDIT_PASSED,)
    assert (report.proven, report.missing, report.wrong, report.declined) == (4, 0, 0, 0)
    assert report.offer_back == ()
    assert report.peer == PEER and report.kind is ChallengeKind.AUDIT


def test_a_wrong_proof_fails() -> None:
    c = challenge()
    answers = honest_answers(c)
    answers[2] = storage_proof(c.nonce, c.peer, ADDRS[2], b"other bytes")
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.FAILED
    assert report.events == (TrustEvent.PROOF_FORGED,), "a proof of other bytes is forged"
    assert (report.proven, report.wrong) == (3, 1)


def test_a_first_time_missing_chunk_is_offered_back() -> None:
    c = challenge()
    answers = honest_answers(c)
    answers[1] = MISSING
    answers[3] = MISSING
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.INCOMPLETE
    assert report.events == (TrustEvent.CHUNK_MISSING,)
    assert report.offer_back == (ADDRS[1], ADDRS[3])
    assert (report.proven, report.missing) == (2, 2)


def test_a_chunk_still_missing_after_it_was_offered_back_fails() -> None:
    c = challenge(owed=frozenset({ADDRS[1]}), kind=ChallengeKind.POSSESSION)
    answers = honest_answers(c)
    answers[1] = MISSING
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.FAILED
    assert report.events == (TrustEvent.AUDIT_FAILED,)
    # an owed chunk now proven is a pass
    report = judge(c, expected_for(c), honest_answers(c))
    assert report.outcome is AuditOutcome.PASSED


def test_declining_an_address_it_is_close_to_is_a_refusal() -> None:
    c = challenge(close=frozenset({ADDRS[0]}))
    answers = honest_answers(c)
    answers[0] = DECLINED
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.REFUSED
    assert report.events == (TrustEvent.CHECK_REFUSED,)
    assert report.declined == 1


def test_declining_an_address_it_is_far_from_is_no_evidence() -> None:
    c = challenge(close=frozenset({ADDRS[0]}))
    answers = honest_answers(c)
    answers[3] = DECLINED
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.PASSED
    assert report.events == (TrustEvent.AUDIT_PASSED,)
    assert (report.proven, report.declined) == (3, 1)
    only = challenge([ADDRS[3]])
    report = judge(only, expected_for(only), [DECLINED])
    assert report.outcome is AuditOutcome.PASSED
    assert report.events == (), "nothing proven, nothing refused: no evidence"


@pytest.mark.parametrize("count", [0, 3, 5])
def test_a_wrong_number_of_answers_fails(count: int) -> None:
    c = challenge()
    answers = (honest_answers(c) * 2)[:count]
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.FAILED
    assert report.events == (TrustEvent.AUDIT_FAILED,)


@pytest.mark.parametrize("bad", [b"\x01", b"\x00\x00", bytes(31), bytes(33)])
def test_an_answer_of_bad_length_fails(bad: bytes) -> None:
    c = challenge()
    answers = honest_answers(c)
    answers[0] = bad
    report = judge(c, expected_for(c), answers)
    assert report.outcome is AuditOutcome.FAILED
    assert report.wrong == 1


def test_a_replayed_answer_fails() -> None:
    c = challenge()
    old_nonce = [storage_proof(bytes(32), c.peer, a, content_for(a)) for a in c.addresses]
    assert judge(c, expected_for(c), old_nonce).outcome is AuditOutcome.FAILED
    copied = [storage_proof(c.nonce, PEERS[1], a, content_for(a)) for a in c.addresses]
    report = judge(c, expected_for(c), copied)
    assert report.outcome is AuditOutcome.FAILED
    assert report.wrong == 4


def test_judge_error_busy_or_silence_is_no_evidence() -> None:
    c = challenge()
    for code in (None, ErrorCode.BUSY, ErrorCode.INTERNAL):  # INTERNAL: also a reset stream
        report = judge_error(c, code)
        assert report.outcome is AuditOutcome.UNANSWERED
        assert report.events == ()
    for code in (ErrorCode.NOT_RESPONSIBLE, ErrorCode.MALFORMED, ErrorCode.REPLAYED):
        report = judge_error(c, code)
        assert report.outcome is AuditOutcome.REFUSED
        assert report.events == (TrustEvent.CHECK_REFUSED,)


def test_narrowed_keeps_order_and_marks() -> None:
    c = challenge(owed=frozenset({ADDRS[0]}), close=frozenset({ADDRS[2]}))
    narrow = c.narrowed([ADDRS[3], ADDRS[0]])
    assert narrow.addresses == (ADDRS[0], ADDRS[3])
    assert (narrow.nonce, narrow.peer, narrow.owed, narrow.close) == (
        c.nonce,
        c.peer,
        c.owed,
        c.close,
    )


# --- AuditPlanner ---------------------------------------------------------------------


def planner(interval: float, grace: float, possession_delay: float | None = None) -> AuditPlanner:
    return AuditPlanner(
        OWN,
        interval=interval,
        grace=grace,
        possession_delay=possession_delay,
        rng=random.Random(5),
        make_nonce=nonces(),
    )


def held_addresses(count: int, seed: int = 9) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(count)]


def test_newcomers_are_not_challenged_during_grace() -> None:
    p = planner(interval=100.0, grace=300.0, possession_delay=10.0)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    leader = near(OWN, random.Random(1))
    p.chunk_stored(leader, 0.0)
    held = held_addresses(200)
    for now in range(0, 300, 5):
        assert p.plan(float(now), held, PEERS) == [], f"challenged at {now}"
    assert p.in_flight == 0
    assert p.waiting == len(holders(leader, OWN, PEERS)) - 1, "checks wait for the grace"
    # joining again does not restart the grace
    p.peer_joined(PEERS[0], 250.0)
    challenges = p.plan(300.0, held, PEERS)
    assert {c.peer for c in challenges if c.kind is ChallengeKind.POSSESSION} == set(
        holders(leader, OWN, PEERS)
    ) - {OWN}


def test_after_grace_every_sharing_peer_is_audited_once_per_interval() -> None:
    interval, grace, step = 100.0, 50.0, 1.0
    # held chunks whose close group never includes the last peer: it shares nothing
    loner = PEERS[-1]
    held = [a for a in held_addresses(400) if loner not in holders(a, OWN, PEERS)]
    shared = offers(held, OWN, PEERS)
    assert loner not in shared and len(shared) >= 4
    p = planner(interval=interval, grace=grace)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    audits: dict[bytes, list[float]] = {}
    now = 0.0
    end = grace + 20 * interval
    while now < end:
        if p.wants_held(now):
            for c in p.plan(now, held, PEERS):
                assert c.kind is ChallengeKind.AUDIT
                assert now >= grace
                audits.setdefault(c.peer, []).append(now)
                mine = shared[c.peer]
                assert len(c.addresses) == sample_size(len(mine))
                assert len(set(c.addresses)) == len(c.addresses)
                assert set(c.addresses) <= set(mine)
                assert all(c.peer in holders(a, OWN, PEERS) for a in c.addresses)
                assert c.close == {a for a in c.addresses if c.peer in closest(a, [OWN, *PEERS], 4)}
                assert PLAUSIBLE_DECLINE_RANK == CLOSE_GROUP_SIZE - 1
                p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), now)
        now += step
    assert set(audits) == set(shared), "every peer sharing chunks, and only those"
    for times in audits.values():
        assert times[0] <= grace + interval + step
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.5 * interval <= g <= 1.5 * interval + step for g in gaps), gaps
        assert 20 / 1.5 - 1 <= len(times) <= 20 / 0.5 + 1
    assert p.in_flight == 0


def test_at_most_one_challenge_in_flight_per_peer() -> None:
    p = planner(interval=10.0, grace=0.0, possession_delay=1.0)
    held = held_addresses(300)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    first = p.plan(10.0, held, PEERS)
    assert first and len({c.peer for c in first}) == len(first)
    busy = {c.peer for c in first}
    assert p.in_flight == len(busy)
    # stores make possession checks due; time makes audits due again: still one each
    for address in held[:50]:
        p.chunk_stored(address, 10.0)
    for now in (20.0, 40.0, 100.0):
        again = p.plan(now, held, PEERS)
        assert not busy & {c.peer for c in again}
        assert len({c.peer for c in again}) == len(again)
        busy |= {c.peer for c in again}
    peer = first[0].peer
    p.done(AuditReport(peer, first[0].kind, AuditOutcome.PASSED), 100.0)
    later = p.plan(120.0, held, PEERS)  # the others' answers may still come (IN_FLIGHT_SECONDS)
    assert [c.peer for c in later] == [peer]
    other = next(iter(busy - {peer}))
    p.failed(other)
    assert other in {c.peer for c in p.plan(125.0, held, PEERS)}


def test_possession_checks_are_sent_by_the_leader_only_batched_per_peer() -> None:
    rng = random.Random(3)
    p = planner(interval=1e9, grace=0.0, possession_delay=30.0)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    led = [near(OWN, rng) for _ in range(3)]
    not_led = [near(PEERS[1], rng) for _ in range(3)]
    not_led = [a for a in not_led if OWN in holders(a, OWN, PEERS)] + [near(PEERS[2], rng)]
    for address in led + not_led:
        p.chunk_stored(address, 0.0)
    assert not p.has_checks(29.0)
    assert p.plan(29.0, None, PEERS) == []
    assert p.has_checks(30.0) and not p.wants_held(30.0), "checks need no held chunks"
    challenges = p.plan(30.0, None, PEERS)
    group = [m for m in holders(led[0], OWN, PEERS) if m != OWN]
    assert all(holders(a, OWN, PEERS)[0] == OWN for a in led)
    assert sorted(c.peer for c in challenges) == sorted(group)
    for c in challenges:
        assert c.kind is ChallengeKind.POSSESSION
        assert sorted(c.addresses) == sorted(a for a in led if c.peer in holders(a, OWN, PEERS))
        assert not set(c.addresses) & set(not_led)
        assert c.owed == frozenset()
    assert p.waiting == 0
    for c in challenges:
        p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), 31.0)
    assert p.plan(1000.0, [], PEERS) == [], "each store is checked once"


def test_the_backlog_of_possession_checks_is_bounded() -> None:
    rng = random.Random(4)
    p = planner(interval=1e9, grace=0.0, possession_delay=1.0)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    stored = {near(OWN, rng) for _ in range(MAX_BACKLOG_PER_PEER + 150)}
    for address in stored:
        p.chunk_stored(address, 0.0)
    group = [m for m in holders(next(iter(stored)), OWN, PEERS) if m != OWN]
    assert all(holders(a, OWN, PEERS)[1:] == group for a in stored)
    first = p.plan(1.0, [], PEERS)
    assert sorted(c.peer for c in first) == sorted(group)
    assert all(len(c.addresses) == MAX_CHALLENGE_ADDRESSES for c in first)
    assert p.waiting == len(group) * (MAX_BACKLOG_PER_PEER - MAX_CHALLENGE_ADDRESSES)
    checked: dict[bytes, set[bytes]] = {c.peer: set(c.addresses) for c in first}
    now = 2.0
    for c in first:
        p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), now)
    while p.waiting:
        now += 1.0
        batch = p.plan(now, [], PEERS)
        assert batch, "a backlog is sent as soon as the peer is free"
        for c in batch:
            assert not checked[c.peer] & set(c.addresses), "no address checked twice"
            checked[c.peer] |= set(c.addresses)
            p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), now)
    assert all(len(s) == MAX_BACKLOG_PER_PEER for s in checked.values())
    assert all(s <= stored for s in checked.values())


def test_chunks_offered_back_are_checked_again_and_owed() -> None:
    rng = random.Random(6)
    p = planner(interval=1e9, grace=0.0, possession_delay=20.0)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    # the peer is not the leader's concern here: owed chunks are re-checked regardless
    lacking = [near(PEERS[3], rng) for _ in range(2)]
    peer = PEERS[3]
    c = Challenge(peer, NONCE, tuple(lacking), ChallengeKind.AUDIT)
    report = judge(c, expected_for(c), [MISSING, MISSING])
    assert report.offer_back == tuple(lacking)
    p.done(report, 100.0)
    assert not p.has_checks(119.0)
    assert p.plan(119.0, None, PEERS) == []
    assert p.has_checks(120.0)
    (again,) = p.plan(120.0, None, PEERS)
    assert again.peer == peer and again.kind is ChallengeKind.POSSESSION
    assert sorted(again.addresses) == sorted(lacking)
    assert again.owed == frozenset(lacking)
    assert again.nonce != NONCE
    # still missing now: a failure
    still = judge(again, expected_for(again), [MISSING, MISSING])
    assert still.outcome is AuditOutcome.FAILED
    p.done(still, 121.0)


def test_an_audit_sampling_an_owed_chunk_before_it_is_due_does_not_hold_it_against_the_peer() -> (
    None
):
    """The offer may still be on the way: only the re-check when it is due can fail."""
    rng = random.Random(7)
    p = planner(interval=5.0, grace=0.0, possession_delay=20.0)
    peer = PEERS[3]
    for member in PEERS:
        p.peer_joined(member, 0.0)
    lacking = [near(peer, rng) for _ in range(2)]
    first = Challenge(peer, NONCE, tuple(lacking), ChallengeKind.AUDIT)
    p.done(judge(first, expected_for(first), [MISSING, MISSING]), 100.0)
    early = [c for c in p.plan(110.0, lacking, PEERS) if c.peer == peer]
    assert early and early[0].kind is ChallengeKind.AUDIT and early[0].owed == frozenset()
    report = judge(early[0], expected_for(early[0]), [MISSING] * len(early[0].addresses))
    assert report.outcome is AuditOutcome.INCOMPLETE
    p.done(report, 111.0)  # found missing again: the first due stands
    assert p.has_checks(120.0)
    (due,) = [c for c in p.plan(120.0, None, PEERS) if c.peer == peer]
    assert due.owed == frozenset(lacking)


def test_an_owed_chunk_has_at_least_refetch_seconds_to_arrive() -> None:
    p = planner(interval=1.0, grace=0.0)
    assert p.possession_delay == 0.5
    p.peer_joined(PEER, 0.0)
    c = Challenge(PEER, NONCE, (ADDRS[0],), ChallengeKind.AUDIT)
    p.done(judge(c, expected_for(c), [MISSING]), 100.0)
    assert not p.has_checks(100.0 + REFETCH_SECONDS - 0.1)
    assert p.has_checks(100.0 + REFETCH_SECONDS)


def test_offer_back_of_a_departed_peer_is_not_remembered() -> None:
    p = planner(interval=1e9, grace=0.0, possession_delay=20.0)
    p.peer_joined(PEER, 0.0)
    p.peer_left(PEER)
    p.done(
        AuditReport(PEER, ChallengeKind.AUDIT, AuditOutcome.INCOMPLETE, offer_back=(ADDRS[0],)), 0.0
    )
    p.peer_joined(PEER, 1.0)
    assert p.plan(100.0, [], [PEER]) == []


def test_peer_left_forgets_everything() -> None:
    rng = random.Random(8)
    p = planner(interval=5.0, grace=0.0, possession_delay=5.0)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    led = [near(OWN, rng) for _ in range(5)]
    group = [m for m in holders(led[0], OWN, PEERS) if m != OWN]
    busy = p.plan(5.0, led, PEERS)  # audits keep the group busy
    assert sorted(c.peer for c in busy) == sorted(group)
    for address in led:
        p.chunk_stored(address, 5.0)
    assert p.plan(10.0, [], PEERS) == [], "the group is busy: the checks wait"
    assert p.waiting == len(group) * len(led)
    gone = group[0]
    p.done(
        AuditReport(gone, ChallengeKind.AUDIT, AuditOutcome.INCOMPLETE, offer_back=(led[0],)), 10.0
    )
    p.failed(gone)
    p.peer_left(gone)
    assert p.waiting == (len(group) - 1) * len(led)
    for now in range(11, 200):
        for c in p.plan(float(now), led, PEERS):  # it is still named among the peers
            assert c.peer != gone, "neither its backlog, nor what it owes, nor audits"
            p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), float(now))
    # it comes back: a newcomer, with a grace again
    p.grace = 100.0
    p.peer_joined(gone, 200.0)
    seen: list[float] = []
    for now in range(200, 400):
        for c in p.plan(float(now), led, PEERS):
            if c.peer == gone:
                seen.append(float(now))
                assert c.kind is ChallengeKind.AUDIT and not c.owed
            p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), float(now))
    assert seen and seen[0] >= 300.0


# --- ChallengeGate ----------------------------------------------------------------------


LIMITS = GateLimits(
    per_peer_bytes_per_second=100.0,
    per_peer_burst_bytes=1000.0,
    total_bytes_per_second=100.0,
    total_burst_bytes=1500.0,
    bytes_per_challenge=100,
    nonce_memory=5,
    nonce_seconds=60.0,
)
A, B, C = (bytes([n]) * 32 for n in (0xA, 0xB, 0xC))


def fresh_nonces() -> Callable[[], bytes]:
    return nonces()


def test_gate_refuses_duplicates_and_bad_nonces_as_malformed() -> None:
    gate = ChallengeGate(LIMITS)
    assert gate.admit(A, NONCE, [ADDRS[0], ADDRS[0]], {}, {ADDRS[0]}, 0.0) is Refusal.MALFORMED
    assert gate.admit(A, bytes(31), [ADDRS[0]], {}, {ADDRS[0]}, 0.0) is Refusal.MALFORMED
    assert gate.refused["malformed"] == 2 and gate.answered == 0


def test_gate_a_flood_from_one_peer_is_busy_while_another_is_admitted() -> None:
    gate = ChallengeGate(LIMITS)
    nonce = fresh_nonces()
    sizes = {ADDRS[0]: 100}  # each challenge costs 100 + 100
    admitted = 0
    while gate.admit(A, nonce(), [ADDRS[0]], sizes, (), 0.0) is None:
        admitted += 1
        assert admitted <= 10
    assert admitted == 5, "the per-peer burst of 1000 bytes"
    assert gate.admit(A, nonce(), [ADDRS[0]], sizes, (), 0.0) is Refusal.BUSY
    assert gate.admit(B, nonce(), [ADDRS[0]], sizes, (), 0.0) is None
    assert gate.refused["busy"] == 2
    # the budget refills with time
    assert gate.admit(A, nonce(), [ADDRS[0]], sizes, (), 1.0) is Refusal.BUSY
    assert gate.admit(A, nonce(), [ADDRS[0]], sizes, (), 2.0) is None


def test_gate_the_total_budget_bounds_every_challenger_together() -> None:
    gate = ChallengeGate(LIMITS)
    nonce = fresh_nonces()
    results = [gate.admit(p, nonce(), [ADDRS[0]], {}, {ADDRS[0]}, 0.0) for p in (A, B, C) * 10]
    assert results.count(None) == 15, "1500 total bytes at 100 per challenge"
    assert all(r is Refusal.BUSY for r in results[15:])
    assert gate.answered == 15
    assert gate.refused["busy"] == 15


def test_gate_a_replayed_nonce_is_refused() -> None:
    gate = ChallengeGate(LIMITS)
    assert gate.admit(A, NONCE, [ADDRS[0]], {ADDRS[0]: 1}, (), 0.0) is None
    assert gate.admit(A, NONCE, [ADDRS[1]], {ADDRS[1]: 1}, (), 1.0) is Refusal.REPLAYED
    assert gate.admit(B, NONCE, [ADDRS[0]], {ADDRS[0]: 1}, (), 1.0) is Refusal.REPLAYED
    assert gate.refused["replayed"] == 2 and gate.answered == 1


def test_gate_a_busy_challenge_does_not_burn_its_nonce() -> None:
    gate = ChallengeGate(LIMITS)
    assert gate.admit(A, NONCE, [ADDRS[0]], {ADDRS[0]: 5000}, (), 0.0) is Refusal.BUSY
    assert gate.admit(A, NONCE, [ADDRS[0]], {ADDRS[0]: 10}, (), 0.0) is None


def test_gate_nothing_held_nor_responsible_is_refused() -> None:
    gate = ChallengeGate(LIMITS)
    assert gate.admit(A, NONCE, ADDRS, {}, {bytes(32)}, 0.0) is Refusal.NOT_RESPONSIBLE
    assert gate.refused["not_responsible"] == 1
    assert gate.admit(A, NONCE, ADDRS, {}, {ADDRS[2]}, 0.0) is None, "responsible for one"
    assert gate.admit(A, bytes([1]) * 32, ADDRS, {ADDRS[1]: 9}, (), 0.0) is None, "holds one"


def test_gate_nonce_memory_is_bounded_in_count_and_time() -> None:
    gate = ChallengeGate(LIMITS)
    nonce = fresh_nonces()
    seen = [nonce() for _ in range(6)]
    for n, value in enumerate(seen):
        assert gate.admit(A, value, [ADDRS[0]], {}, {ADDRS[0]}, float(n)) is None
    assert gate.admit(B, seen[-1], [ADDRS[0]], {}, {ADDRS[0]}, 6.0) is Refusal.REPLAYED
    assert gate.admit(B, seen[0], [ADDRS[0]], {}, {ADDRS[0]}, 6.0) is None, "forgotten"
    later = nonce()
    assert gate.admit(C, later, [ADDRS[0]], {}, {ADDRS[0]}, 7.0) is None
    assert gate.admit(C, later, [ADDRS[0]], {}, {ADDRS[0]}, 60.0) is Refusal.REPLAYED
    assert gate.admit(C, later, [ADDRS[0]], {}, {ADDRS[0]}, 68.0) is None, "too old"


def test_gate_counters() -> None:
    gate = ChallengeGate(LIMITS)
    assert gate.refused == {r.value: 0 for r in Refusal} and gate.answered == 0
    gate.admit(A, NONCE, [ADDRS[0]], {}, {ADDRS[0]}, 0.0)
    gate.admit(A, NONCE, [ADDRS[0]], {}, {ADDRS[0]}, 0.0)
    gate.admit(A, bytes(32), [ADDRS[0], ADDRS[0]], {}, {ADDRS[0]}, 0.0)
    gate.admit(A, bytes(32), [ADDRS[1]], {}, (), 0.0)
    assert gate.answered == 1
    assert gate.refused == {"malformed": 1, "busy": 0, "replayed": 1, "not_responsible": 1}


# --- answer -------------------------------------------------------------------------------


def test_answer_proves_held_marks_missing_and_declines_the_rest() -> None:
    held, lost, foreign = ADDRS[0], ADDRS[1], ADDRS[2]
    contents = {held: content_for(held)}
    answers = answer(NONCE, OWN, [foreign, held, lost], contents.get, {held, lost})
    assert answers == [DECLINED, storage_proof(NONCE, OWN, held, content_for(held)), MISSING]
    # a held chunk is proven even where this node thinks it is not responsible
    assert answer(NONCE, OWN, [held], contents.get, ()) == [
        storage_proof(NONCE, OWN, held, content_for(held))
    ]
    # and the auditor's judge accepts an honest answer
    c = Challenge(OWN, NONCE, (held,), ChallengeKind.AUDIT)
    assert judge(c, expected_for(c), answer(NONCE, OWN, [held], contents.get, ())).outcome is (
        AuditOutcome.PASSED
    )


def test_the_auditor_challenges_within_its_own_budget() -> None:
    """Many peers due at once with large samples: at most the burst goes out at once, the
    rest waits (still due) and goes out as the budget refills; nothing is skipped."""
    peers = [RNG.randbytes(32) for _ in range(40)]
    held = held_addresses(4000, seed=3)
    shared = offers(held, OWN, peers)
    p = AuditPlanner(
        OWN,
        interval=1000.0,
        grace=0.0,
        rng=random.Random(2),
        make_nonce=nonces(),
        addresses_per_second=10.0,
    )
    for peer in peers:
        p.peer_joined(peer, 0.0)
    first = p.plan(1000.0, held, peers)
    assert sum(len(c.addresses) for c in first) <= CHALLENGE_BURST
    wanted = sum(sample_size(len(a)) for a in shared.values())
    assert wanted > CHALLENGE_BURST, "the test needs more than one burst"
    audited = {c.peer for c in first}
    for c in first:
        p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), 1000.0)
    now, sent = 1000.0, sum(len(c.addresses) for c in first)
    while now < 1000.0 + 200.0:
        now += 1.0
        if not p.wants_held(now):
            continue
        for c in p.plan(now, held, peers):
            audited.add(c.peer)
            sent += len(c.addresses)
            p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), now)
        assert sent <= CHALLENGE_BURST + 10.0 * (now - 1000.0)
    assert audited == set(shared), "every due peer was audited once the budget allowed"


def test_held_chunks_are_wanted_only_for_a_ready_peer_due_an_audit() -> None:
    p = planner(interval=10.0, grace=0.0)
    held = held_addresses(300)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    assert not p.wants_held(0.0)
    now = 20.0  # every peer is due
    assert p.wants_held(now)
    assert p.plan(now, None, PEERS) == [], "no audit without the held chunks"
    assert p.wants_held(now), "still due"
    challenges = p.plan(now, held, PEERS)
    assert challenges and all(c.kind is ChallengeKind.AUDIT for c in challenges)
    # those challenged are in flight, the others had nothing shared and were rescheduled
    assert not p.wants_held(now), "in flight or rescheduled: nothing to fetch held chunks for"


def test_a_challenge_never_reported_done_is_taken_as_lost() -> None:
    p = planner(interval=10.0, grace=0.0)
    held = held_addresses(300)
    for peer in PEERS:
        p.peer_joined(peer, 0.0)
    first = p.plan(20.0, held, PEERS)
    assert first
    lost = first[0].peer
    for c in first[1:]:
        p.done(AuditReport(c.peer, c.kind, AuditOutcome.PASSED), 20.0)
    # no answer ever comes for ``lost``: not challenged again while it may still come...
    assert lost not in {c.peer for c in p.plan(20.0 + IN_FLIGHT_SECONDS - 1, held, PEERS)}
    # ...then it is taken as lost, and the peer (long due) is challenged again
    assert lost in {c.peer for c in p.plan(20.0 + IN_FLIGHT_SECONDS, held, PEERS)}
