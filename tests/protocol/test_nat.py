import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.nat import (
    CONTROL_MAGIC,
    MAX_TRACKED_ADDRESSES,
    NONCE_BYTES,
    Attempt,
    CascadeAction,
    CascadeTimeouts,
    Connected,
    ControlKind,
    DialBackLimiter,
    DialCascade,
    DialDirect,
    GaveUp,
    How,
    NatStatus,
    PunchVia,
    Reachability,
    ReachabilityCheck,
    RelayReservation,
    RelayVia,
    control_datagram,
    is_control_datagram,
    parse_control_datagram,
)


def test_address_confirmed_by_two_distinct_peers() -> None:
    nat = NatStatus()
    addr = "/ip4/203.0.113.7/udp/4000/quic-v1"
    assert not nat.observe(addr, b"a" * 32, 1.0)
    assert not nat.observe(addr, b"a" * 32, 2.0), "the same reporter twice is one vote"
    assert nat.confirmed() == []
    assert nat.observe(addr, b"b" * 32, 3.0)
    assert nat.confirmed() == [addr]
    assert not nat.observe(addr, b"c" * 32, 4.0), "confirmed only once"


def test_tracked_addresses_are_bounded() -> None:
    nat = NatStatus()
    for i in range(MAX_TRACKED_ADDRESSES * 3):
        nat.observe(f"/ip4/198.51.100.{i}/udp/1/quic-v1", b"x" * 32, float(i))
    assert len(nat.as_status()["observed_addrs"]) == MAX_TRACKED_ADDRESSES  # type: ignore[arg-type]


def test_reachability_verdict() -> None:
    nat = NatStatus()
    assert nat.reachability is Reachability.UNKNOWN
    nat.dial_back_result(False)
    assert nat.as_status()["reachability"] == "private"
    nat.dial_back_result(True)
    assert nat.as_status()["reachability"] == Reachability.PUBLIC


# -- control datagrams -------------------------------------------------------------------

nonces = st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)


@given(st.sampled_from(ControlKind), nonces)
def test_control_datagram_round_trip(kind: ControlKind, nonce: bytes) -> None:
    data = control_datagram(kind, nonce)
    assert is_control_datagram(data)
    assert parse_control_datagram(data) == (kind, nonce)


@pytest.mark.parametrize("length", [0, 1, NONCE_BYTES - 1, NONCE_BYTES + 1, 32])
def test_control_nonce_has_a_fixed_length(length: int) -> None:
    with pytest.raises(ValueError, match="nonce"):
        control_datagram(ControlKind.DIAL_BACK, b"n" * length)


@given(st.binary(min_size=1, max_size=1500).filter(lambda d: d[0] & 0x40 != 0))
def test_quic_looking_datagrams_are_never_control(data: bytes) -> None:
    # every QUIC packet (long or short header) has the fixed bit 0x40 in its first byte
    assert not is_control_datagram(data)
    assert parse_control_datagram(data) is None


def test_garbage_is_not_a_control_datagram() -> None:
    good = control_datagram(ControlKind.PUNCH_OPENER, b"n" * NONCE_BYTES)
    assert not is_control_datagram(b"")
    assert parse_control_datagram(b"") is None
    assert parse_control_datagram(good[:-1]) is None, "too short"
    assert parse_control_datagram(good + b"x") is None, "too long"
    assert parse_control_datagram(b"\x00XYZ" + good[4:]) is None, "wrong magic"
    kind_at = len(CONTROL_MAGIC)
    for unknown_kind in (0, 3, 255):
        bad = good[:kind_at] + bytes([unknown_kind]) + good[kind_at + 1 :]
        assert is_control_datagram(bad), "looks like one (starts with 0x00)..."
        assert parse_control_datagram(bad) is None, "...but its kind is unknown"


@given(st.binary(max_size=64))
def test_parse_never_raises(data: bytes) -> None:
    parsed = parse_control_datagram(data)
    if parsed is not None:
        assert is_control_datagram(data)
        assert control_datagram(*parsed) == data


# -- reachability: dial-back checks ------------------------------------------------------

H1, H2, H3 = b"1" * 32, b"2" * 32, b"3" * 32


def _verdict(status: NatStatus) -> Reachability:
    """The current verdict (read through a call: mypy would keep an earlier narrowing)."""
    return status.reachability


def _nonce(i: int) -> bytes:
    return i.to_bytes(NONCE_BYTES, "big")


def test_a_probe_arriving_makes_the_node_public() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=2.0, recheck_interval=600.0)
    assert check.due(0.0)
    assert check.choose_helper([H1, H2]) == H1
    check.started(_nonce(1), H1, 0.0)
    assert not check.due(0.5), "a check is running"
    assert check.probe_received(_nonce(1), 0.5)
    assert _verdict(status) is Reachability.PUBLIC
    assert not check.expire(10.0), "the answered check does not expire later"
    assert _verdict(status) is Reachability.PUBLIC


def test_two_helpers_whose_probe_never_came_make_the_node_private() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=2.0, failures_for_private=2)
    check.started(_nonce(1), H1, 0.0)
    assert not check.expire(1.9), "not yet past the wait"
    assert not check.expire(2.0), "one miss is not enough"
    assert _verdict(status) is Reachability.UNKNOWN
    assert check.due(2.0)
    assert check.choose_helper([H1, H2]) == H2, "the helper that missed is not asked again"
    check.started(_nonce(2), H2, 2.0)
    assert check.expire(4.0)
    assert _verdict(status) is Reachability.PRIVATE
    assert check.choose_helper([H1, H2]) == H1, "a verdict starts a new round"


def test_a_late_probe_still_counts_only_if_its_check_is_pending() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=2.0)
    check.started(_nonce(1), H1, 0.0)
    check.expire(3.0)
    assert not check.probe_received(_nonce(1), 3.5), "its check already expired"
    assert _verdict(status) is Reachability.UNKNOWN


def test_unknown_nonce_is_ignored() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status)
    check.started(_nonce(1), H1, 0.0)
    assert not check.probe_received(_nonce(99), 0.1)
    assert _verdict(status) is Reachability.UNKNOWN
    assert not check.due(0.1), "the real check is still pending"
    assert check.probe_received(_nonce(1), 0.2)


def test_helper_failed_is_no_evidence() -> None:
    """A helper that refused or did not answer says nothing about this node's NAT: it is
    not asked again this round, but it is not a miss toward PRIVATE."""
    status = NatStatus()
    check = ReachabilityCheck(status, wait=2.0, failures_for_private=2)
    check.started(_nonce(1), H1, 0.0)
    check.helper_failed(_nonce(1))
    assert _verdict(status) is Reachability.UNKNOWN
    assert check.due(0.1), "try another helper at once"
    assert check.choose_helper([H1, H2, H3]) == H2
    check.started(_nonce(2), H2, 0.1)
    assert not check.expire(2.1), "one real miss (H2); H1's refusal is no miss"
    assert _verdict(status) is Reachability.UNKNOWN
    assert check.choose_helper([H1, H2, H3]) == H3
    check.started(_nonce(3), H3, 2.1)
    assert check.expire(4.1), "the second real miss"
    assert _verdict(status) is Reachability.PRIVATE


def test_helper_failed_for_an_unknown_nonce_is_ignored() -> None:
    check = ReachabilityCheck(NatStatus())
    check.helper_failed(_nonce(7))
    assert check.choose_helper([H1]) == H1


def test_no_untried_helper_left() -> None:
    check = ReachabilityCheck(NatStatus(), wait=1.0)
    assert check.choose_helper([]) is None
    check.started(_nonce(1), H1, 0.0)
    check.expire(1.0)
    assert check.choose_helper([H1]) is None


def test_a_round_without_verdict_starts_again_after_a_backoff() -> None:
    """Every helper refused: no evidence; the node asks again later, not never."""
    status = NatStatus()
    check = ReachabilityCheck(status, wait=1.0, round_backoff=30.0)
    check.started(_nonce(1), H1, 0.0)
    check.helper_failed(_nonce(1))
    assert check.choose_helper([H1], now=5.0) is None
    assert not check.due(20.0)
    assert check.due(35.0)
    assert check.choose_helper([H1], now=35.0) == H1
    assert status.reachability is Reachability.UNKNOWN


def test_verdict_is_rechecked_after_the_interval() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=1.0, failures_for_private=1, recheck_interval=600.0)
    check.started(_nonce(1), H1, 0.0)
    assert check.expire(1.0)
    assert _verdict(status) is Reachability.PRIVATE
    assert not check.due(1.0)
    assert not check.due(600.9)
    assert check.due(601.0)
    check.started(_nonce(2), H1, 601.0)
    assert check.probe_received(_nonce(2), 601.1)
    assert _verdict(status) is Reachability.PUBLIC
    assert not check.due(1200.0)
    assert check.due(1201.1)


def test_an_unchanged_verdict_reports_no_change() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=1.0, failures_for_private=1, recheck_interval=10.0)
    check.started(_nonce(1), H1, 0.0)
    assert check.expire(1.0)
    check.started(_nonce(2), H1, 11.0)
    assert not check.expire(12.0), "PRIVATE again: no change"
    assert _verdict(status) is Reachability.PRIVATE


def test_several_checks_expiring_at_once() -> None:
    status = NatStatus()
    check = ReachabilityCheck(status, wait=1.0, failures_for_private=2)
    for i, helper in enumerate((H1, H2, H3)):
        check.started(_nonce(i), helper, 0.0)
    assert check.expire(1.0)
    assert _verdict(status) is Reachability.PRIVATE
    assert check.due(1.0) is False


# -- the dial cascade --------------------------------------------------------------------

RELAY_1 = "/ip4/198.51.100.1/udp/4001/quic-v1/p2p/" + "11" * 32
RELAY_2 = "/ip4/198.51.100.2/udp/4002/quic-v1/p2p/" + "22" * 32
TARGET = "ee" * 32
DIRECT_1 = f"/ip4/203.0.113.5/udp/5000/quic-v1/p2p/{TARGET}"
DIRECT_2 = f"/ip4/10.0.0.5/udp/5000/quic-v1/p2p/{TARGET}"
CIRCUIT_1 = f"{RELAY_1}/p2p-circuit/p2p/{TARGET}"
CIRCUIT_2 = f"{RELAY_2}/p2p-circuit/p2p/{TARGET}"
TIMEOUTS = CascadeTimeouts(direct=1.0, punch=2.0, relay=3.0)


def _run_to_the_end(cascade: DialCascade, now: float) -> list[CascadeAction]:
    actions = [cascade.start(now)]
    while not isinstance(actions[-1], GaveUp | Connected):
        now += 1.0
        actions.append(cascade.failed("timeout", now))
    return actions


def test_cascade_order_is_direct_then_punch_then_relay_per_relay() -> None:
    cascade = DialCascade([DIRECT_1, DIRECT_2], [CIRCUIT_1, CIRCUIT_2], 0.0, TIMEOUTS)
    actions = _run_to_the_end(cascade, 0.0)
    assert actions == [
        DialDirect(DIRECT_1, 1.0),
        DialDirect(DIRECT_2, 1.0),
        PunchVia(RELAY_1, 2.0),
        PunchVia(RELAY_2, 2.0),
        RelayVia(RELAY_1, 3.0),
        RelayVia(RELAY_2, 3.0),
        GaveUp(
            "direct: timeout; direct: timeout; punch: timeout; punch: timeout; "
            "relay: timeout; relay: timeout"
        ),
    ]
    assert cascade.current is None


def test_default_timeouts() -> None:
    cascade = DialCascade([DIRECT_1], [CIRCUIT_1], 0.0)
    defaults = CascadeTimeouts()
    assert cascade.start(0.0) == DialDirect(DIRECT_1, defaults.direct)
    assert cascade.failed("x", 0.0) == PunchVia(RELAY_1, defaults.punch)
    assert cascade.failed("x", 0.0) == RelayVia(RELAY_1, defaults.relay)


def test_punch_false_goes_straight_to_the_relay() -> None:
    cascade = DialCascade([DIRECT_1], [CIRCUIT_1], 0.0, TIMEOUTS, punch=False)
    actions = _run_to_the_end(cascade, 0.0)
    assert actions[:2] == [DialDirect(DIRECT_1, 1.0), RelayVia(RELAY_1, 3.0)]
    assert isinstance(actions[2], GaveUp)
    assert not any(isinstance(a, PunchVia) for a in actions)


def test_no_address_gives_up_at_once() -> None:
    assert DialCascade([], [], 0.0).start(0.0) == GaveUp("no address to dial")
    plain_relayless = DialCascade([], ["/ip4/1.2.3.4/udp/1/quic-v1/p2p/" + TARGET], 0.0)
    assert plain_relayless.start(0.0) == GaveUp("no address to dial"), "no /p2p-circuit in it"


def test_relay_parts_are_deduplicated() -> None:
    other_path = f"{RELAY_1}/p2p-circuit/p2p/{'ff' * 32}"
    cascade = DialCascade([], [CIRCUIT_1, CIRCUIT_1, other_path, CIRCUIT_2], 0.0, TIMEOUTS)
    actions = _run_to_the_end(cascade, 0.0)
    assert actions[:-1] == [
        PunchVia(RELAY_1, 2.0),
        PunchVia(RELAY_2, 2.0),
        RelayVia(RELAY_1, 3.0),
        RelayVia(RELAY_2, 3.0),
    ]


@pytest.mark.parametrize(
    ("failures", "how", "step", "via"),
    [
        (0, How.DIRECT, "direct", DIRECT_1),
        (1, How.PUNCHED, "punch", RELAY_1),
        (2, How.RELAYED, "relay", RELAY_1),
    ],
)
def test_succeeded_says_how(failures: int, how: How, step: str, via: str) -> None:
    cascade = DialCascade([DIRECT_1], [CIRCUIT_1], 0.0, TIMEOUTS)
    cascade.start(0.0)
    for i in range(failures):
        cascade.failed(f"fail {i}", float(i + 1))
    assert cascade.succeeded(10.0) == Connected(how)
    assert cascade.current is None
    assert cascade.attempts[-1].step == step
    assert cascade.attempts[-1].via == via
    assert cascade.attempts[-1].outcome == "connected"
    assert len(cascade.attempts) == failures + 1
    with pytest.raises(AssertionError):
        cascade.succeeded(11.0)


def test_attempts_record_step_via_outcome_and_seconds() -> None:
    cascade = DialCascade([DIRECT_1], [CIRCUIT_1], 100.0, TIMEOUTS)
    cascade.start(100.0)
    cascade.failed("PeerUnreachable: port unreachable", 100.25)
    cascade.failed("RemoteError: unreachable", 101.0)
    cascade.succeeded(103.5)
    assert cascade.attempts == [
        Attempt("direct", DIRECT_1, "PeerUnreachable: port unreachable", 0.25),
        Attempt("punch", RELAY_1, "RemoteError: unreachable", 0.75),
        Attempt("relay", RELAY_1, "connected", 2.5),
    ]


def test_failing_after_giving_up_keeps_giving_up() -> None:
    cascade = DialCascade([DIRECT_1], [], 0.0, TIMEOUTS)
    cascade.start(0.0)
    assert cascade.failed("no", 1.0) == GaveUp("direct: no")
    assert isinstance(cascade.failed("again", 2.0), GaveUp)
    assert len(cascade.attempts) == 1


def test_dial_backs_are_limited_per_peer() -> None:
    limiter = DialBackLimiter(interval=5.0)
    assert limiter.take(H1, 0.0)
    assert not limiter.take(H1, 4.9), "a second dial-back too soon"
    assert limiter.take(H2, 1.0), "another peer is not held back"
    assert limiter.take(H1, 5.0)


def test_dial_back_limiter_forgets_old_peers_beyond_its_bound() -> None:
    limiter = DialBackLimiter(interval=5.0, max_tracked=2)
    for i in range(3):
        assert limiter.take(bytes([i]) * 32, float(i * 10))
    assert len(limiter._sent) == 1  # only the one inside the interval is kept
    assert not limiter.take(bytes([2]) * 32, 21.0)


def test_a_private_node_asks_one_candidate_at_a_time_and_renews_at_half_time() -> None:
    hold = RelayReservation(retry_after=10.0)
    assert hold.to_ask(Reachability.PUBLIC, [H1], 0.0) is None, "a public node needs no relay"
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 0.0) == H1
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 0.5) is None, "one request at a time"
    assert hold.granted(H1, 100.0, 1.0) is True
    assert hold.relay == H1
    assert hold.to_ask(Reachability.PRIVATE, [H2], 50.0) is None
    assert hold.to_ask(Reachability.PRIVATE, [H2], 51.0) == H1, "renewal goes to the relay"
    assert hold.granted(H1, 100.0, 51.5) is False, "a renewal is not a new relay"


def test_a_refusing_relay_is_not_asked_again_soon() -> None:
    hold = RelayReservation(retry_after=10.0)
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 0.0) == H1
    assert hold.refused(H1, 1.0) is False, "it was not the relay"
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 2.0) == H2
    assert hold.refused(H2, 2.5) is False
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 5.0) is None
    assert hold.to_ask(Reachability.PRIVATE, [H1, H2], 11.0) == H1


def test_losing_the_relay_starts_a_new_search() -> None:
    hold = RelayReservation()
    assert hold.to_ask(Reachability.PRIVATE, [H1], 0.0) == H1
    hold.granted(H1, 3600.0, 0.0)
    assert hold.drop(H2) is False, "another peer leaving changes nothing"
    assert hold.drop(H1) is True and hold.relay is None
    assert hold.to_ask(Reachability.PRIVATE, [H2], 1.0) == H2
    assert hold.refused(H2, 1.5) is False
    hold.to_ask(Reachability.PRIVATE, [H1], 2.0)
    hold.granted(H1, 3600.0, 2.0)
    assert hold.refused(H1, 1802.0) is True, "a relay refusing the renewal is lost"
