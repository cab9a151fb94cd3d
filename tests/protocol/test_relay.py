"""RelayTable: reservations, circuits, routing, the per-client token bucket; pack/unpack."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.relay import (
    CIRCUIT_HEADER,
    MAX_CIRCUIT_ID,
    Circuit,
    Refused,
    RelayLimits,
    RelayTable,
    Reservation,
    pack,
    unpack,
)

CLIENT = b"c" * 32
OTHER_CLIENT = b"d" * 32
DIALER = b"a" * 32
STRANGER = b"s" * 32


def _reserved(table: RelayTable, client: bytes, now: float) -> Reservation:
    granted = table.reserve(client, now)
    assert isinstance(granted, Reservation), granted
    return granted


def _circuit(table: RelayTable, initiator: bytes, target: bytes, now: float) -> Circuit:
    opened = table.open(initiator, target, now)
    assert isinstance(opened, Circuit), opened
    return opened


# -- reservations ------------------------------------------------------------------------


def test_reservation_lasts_the_granted_seconds() -> None:
    table = RelayTable(RelayLimits(reservation_seconds=100))
    reservation = _reserved(table, CLIENT, 10.0)
    assert reservation.expires == 110.0
    assert table.is_reserved(CLIENT, 109.9)
    assert not table.is_reserved(CLIENT, 110.0)
    assert not table.is_reserved(OTHER_CLIENT, 50.0)
    assert table.status(50.0)["reservations"] == 1
    assert table.status(110.0)["reservations"] == 0


def test_reservations_are_limited() -> None:
    table = RelayTable(RelayLimits(max_reservations=2))
    _reserved(table, CLIENT, 0.0)
    _reserved(table, OTHER_CLIENT, 0.0)
    assert table.reserve(DIALER, 1.0) == Refused("relay full")
    # a client already holding a slot renews even when the relay is full
    assert isinstance(table.reserve(CLIENT, 1.0), Reservation)


def test_renewal_extends_the_same_reservation_and_keeps_its_circuits() -> None:
    table = RelayTable(RelayLimits(reservation_seconds=100))
    first = _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 1.0)
    renewed = _reserved(table, CLIENT, 60.0)
    assert renewed is first
    assert renewed.expires == 160.0
    assert circuit.id in renewed.circuits
    assert table.is_reserved(CLIENT, 150.0)
    assert table.route(DIALER, circuit.id, 10, 150.0) == CLIENT


def test_an_expired_reservation_frees_its_slot_and_closes_its_circuits() -> None:
    table = RelayTable(RelayLimits(max_reservations=1, reservation_seconds=10))
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 1.0)
    assert table.reserve(OTHER_CLIENT, 5.0) == Refused("relay full")
    _reserved(table, OTHER_CLIENT, 10.0)  # CLIENT's reservation ended at 10
    assert not table.is_reserved(CLIENT, 10.0)
    assert table.status(10.0)["circuits"] == 0
    assert table.route(DIALER, circuit.id, 10, 10.0) is None
    refused = table.open(DIALER, CLIENT, 11.0)
    assert isinstance(refused, Refused)


# -- opening circuits --------------------------------------------------------------------


def test_open_needs_a_reservation_of_the_target() -> None:
    table = RelayTable()
    refused = table.open(DIALER, CLIENT, 0.0)
    assert isinstance(refused, Refused)
    assert "reservation" in refused.reason
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert (circuit.initiator, circuit.target) == (DIALER, CLIENT)
    assert table.counters.circuits_opened == 1


def test_open_refuses_a_circuit_to_oneself() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    refused = table.open(CLIENT, CLIENT, 0.0)
    assert isinstance(refused, Refused)
    assert "oneself" in refused.reason
    assert table.counters.circuits_opened == 0


def _initiator(i: int) -> bytes:
    return bytes([i]) * 32


def test_circuits_per_client_are_limited_and_closing_frees_one() -> None:
    table = RelayTable(RelayLimits(max_circuits_per_client=3))
    _reserved(table, CLIENT, 0.0)
    circuits = [_circuit(table, _initiator(i), CLIENT, 0.0) for i in range(3)]
    assert len({c.id for c in circuits}) == 3
    refused = table.open(DIALER, CLIENT, 0.0)
    assert isinstance(refused, Refused)
    assert "too many" in refused.reason
    # the limit is per target: another client's circuits are not affected
    _reserved(table, OTHER_CLIENT, 0.0)
    _circuit(table, DIALER, OTHER_CLIENT, 0.0)
    table.close(circuits[0].id)
    _circuit(table, DIALER, CLIENT, 0.0)
    table.close(circuits[0].id)  # closing twice is harmless
    table.close(12345)  # as is closing an unknown circuit


def test_a_new_circuit_replaces_the_initiators_old_one_to_the_same_target() -> None:
    """The relay never learns that a connection through a circuit ended: an initiator
    that asks again (reconnecting) must not pile up circuits until the target's limit."""
    table = RelayTable(RelayLimits(max_circuits_per_client=2))
    _reserved(table, CLIENT, 0.0)
    _reserved(table, OTHER_CLIENT, 0.0)
    other_initiator = _circuit(table, _initiator(9), CLIENT, 0.0)
    to_other_target = _circuit(table, DIALER, OTHER_CLIENT, 0.0)
    old = _circuit(table, DIALER, CLIENT, 0.0)
    for _ in range(5):
        new = _circuit(table, DIALER, CLIENT, 0.0)
        assert new.id != old.id
        assert table.route(DIALER, old.id, 1, 0.0) is None, "the old one is closed"
        assert table.route(DIALER, new.id, 1, 0.0) == CLIENT
        old = new
    assert table.route(_initiator(9), other_initiator.id, 1, 0.0) == CLIENT
    assert table.route(DIALER, to_other_target.id, 1, 0.0) == OTHER_CLIENT
    assert table.status(0.0)["circuits"] == 3
    # the target dialling its dialer back through the same relay is another circuit
    _reserved(table, DIALER, 0.0)
    _circuit(table, CLIENT, DIALER, 0.0)
    assert table.route(DIALER, old.id, 1, 0.0) == CLIENT


def test_circuit_ids_skip_those_in_use_when_they_wrap() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    first = _circuit(table, _initiator(1), CLIENT, 0.0)
    assert first.id == 1
    table._next_id = MAX_CIRCUIT_ID  # as after four billion circuits
    last = _circuit(table, _initiator(2), CLIENT, 0.0)
    wrapped = _circuit(table, _initiator(3), CLIENT, 0.0)
    assert last.id == MAX_CIRCUIT_ID
    assert wrapped.id == 2, "1 is still open: skipped"


# -- routing -----------------------------------------------------------------------------


def test_route_goes_both_ways_and_counts() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert table.route(DIALER, circuit.id, 100, 0.0) == CLIENT
    assert table.route(CLIENT, circuit.id, 50, 0.0) == DIALER
    status = table.status(0.0)
    assert status["datagrams_relayed"] == 2
    assert status["bytes_relayed"] == 150
    assert status["circuits"] == 1
    assert status["reservations"] == 1


def test_unknown_circuit_or_stranger_sender_is_dropped() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert table.route(DIALER, circuit.id + 1, 10, 0.0) is None
    assert table.route(STRANGER, circuit.id, 10, 0.0) is None, "not an end of the circuit"
    assert table.counters.datagrams_dropped_no_circuit == 2
    assert table.counters.datagrams_relayed == 0
    assert table.counters.bytes_relayed == 0


def test_closed_circuit_routes_nothing() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    table.close(circuit.id)
    assert table.route(DIALER, circuit.id, 10, 0.0) is None
    assert table.route(CLIENT, circuit.id, 10, 0.0) is None


# -- the token bucket --------------------------------------------------------------------


def test_over_budget_is_dropped_and_the_budget_refills_with_time() -> None:
    table = RelayTable(RelayLimits(bytes_per_second=100, burst_bytes=1000))
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert table.route(DIALER, circuit.id, 600, 0.0) == CLIENT
    assert table.route(CLIENT, circuit.id, 600, 0.0) is None, "400 bytes left"
    assert table.counters.datagrams_dropped_over_budget == 1
    assert table.route(CLIENT, circuit.id, 400, 0.0) == DIALER, "both directions share it"
    assert table.route(DIALER, circuit.id, 1, 0.0) is None
    assert table.route(DIALER, circuit.id, 150, 1.0) is None, "100 bytes after one second"
    assert table.route(DIALER, circuit.id, 100, 1.0) == CLIENT
    assert table.route(DIALER, circuit.id, 1000, 100.0) == CLIENT, "refilled up to the burst"
    assert table.route(DIALER, circuit.id, 1, 100.0) is None, "never beyond the burst"
    assert table.counters.bytes_relayed == 600 + 400 + 100 + 1000


def test_a_datagram_larger_than_the_burst_never_passes() -> None:
    table = RelayTable(RelayLimits(bytes_per_second=100, burst_bytes=1000))
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert table.route(DIALER, circuit.id, 1001, 1_000.0) is None


def test_the_budget_is_per_client() -> None:
    table = RelayTable(RelayLimits(bytes_per_second=1, burst_bytes=100))
    _reserved(table, CLIENT, 0.0)
    _reserved(table, OTHER_CLIENT, 0.0)
    to_client = _circuit(table, DIALER, CLIENT, 0.0)
    to_other = _circuit(table, DIALER, OTHER_CLIENT, 0.0)
    assert table.route(DIALER, to_client.id, 100, 0.0) == CLIENT
    assert table.route(DIALER, to_client.id, 1, 0.0) is None
    assert table.route(DIALER, to_other.id, 100, 0.0) == OTHER_CLIENT


def test_a_clock_going_back_does_not_mint_tokens() -> None:
    table = RelayTable(RelayLimits(bytes_per_second=100, burst_bytes=100))
    _reserved(table, CLIENT, 10.0)
    circuit = _circuit(table, DIALER, CLIENT, 10.0)
    assert table.route(DIALER, circuit.id, 100, 10.0) == CLIENT
    assert table.route(DIALER, circuit.id, 1, 5.0) is None


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(1, 10_000),
    burst=st.integers(1, 10_000),
    steps=st.lists(
        st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(1, 5_000), st.booleans()),
        max_size=60,
    ),
)
def test_relayed_bytes_never_exceed_burst_plus_rate_times_time(
    rate: int, burst: int, steps: list[tuple[float, int, bool]]
) -> None:
    table = RelayTable(RelayLimits(bytes_per_second=rate, burst_bytes=burst))
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    now = 0.0
    for dt, size, forward in steps:
        now += dt
        sender = DIALER if forward else CLIENT
        routed = table.route(sender, circuit.id, size, now)
        assert routed in (None, CLIENT if forward else DIALER)
        assert table.counters.bytes_relayed <= burst + rate * now + 1e-6
    counters = table.counters
    assert counters.datagrams_relayed + counters.datagrams_dropped_over_budget == len(steps)


# -- peers leaving -----------------------------------------------------------------------


def test_forget_peer_closes_its_circuits_and_its_reservation() -> None:
    table = RelayTable()
    _reserved(table, CLIENT, 0.0)
    _reserved(table, OTHER_CLIENT, 0.0)
    to_client = _circuit(table, DIALER, CLIENT, 0.0)
    dialer_to_other = _circuit(table, DIALER, OTHER_CLIENT, 0.0)
    client_to_other = _circuit(table, CLIENT, OTHER_CLIENT, 0.0)
    closed = table.forget_peer(CLIENT)
    assert {c.id for c in closed} == {to_client.id, client_to_other.id}
    assert not table.is_reserved(CLIENT, 0.0)
    assert table.route(DIALER, to_client.id, 1, 0.0) is None
    assert table.route(CLIENT, client_to_other.id, 1, 0.0) is None
    assert table.route(DIALER, dialer_to_other.id, 1, 0.0) == OTHER_CLIENT
    assert table.status(0.0)["circuits"] == 1


def test_forget_an_initiator_keeps_the_targets_reservation() -> None:
    table = RelayTable(RelayLimits(max_circuits_per_client=1))
    _reserved(table, CLIENT, 0.0)
    circuit = _circuit(table, DIALER, CLIENT, 0.0)
    assert table.forget_peer(DIALER) == [circuit]
    assert table.is_reserved(CLIENT, 0.0)
    _circuit(table, OTHER_CLIENT, CLIENT, 0.0)  # its circuit slot was freed
    assert table.forget_peer(STRANGER) == []


# -- pack / unpack -----------------------------------------------------------------------


@given(st.integers(0, MAX_CIRCUIT_ID), st.binary(min_size=1, max_size=1400))
def test_pack_unpack_round_trip(circuit_id: int, datagram: bytes) -> None:
    payload = pack(circuit_id, datagram)
    assert len(payload) == CIRCUIT_HEADER.size + len(datagram)
    assert unpack(payload) == (circuit_id, datagram)


def test_pack_is_big_endian() -> None:
    assert pack(0x01020304, b"x") == b"\x01\x02\x03\x04x"


@given(st.binary(max_size=CIRCUIT_HEADER.size))
def test_unpack_rejects_a_payload_without_an_inner_datagram(payload: bytes) -> None:
    assert unpack(payload) is None


def test_idle_circuits_give_way_when_the_limit_is_reached() -> None:
    limits = RelayLimits(max_circuits_per_client=2, circuit_idle_seconds=60.0)
    table = RelayTable(limits)
    table.reserve(CLIENT, 0.0)
    first = table.open(b"\x01" * 32, CLIENT, 0.0)
    second = table.open(b"\x02" * 32, CLIENT, 0.0)
    assert isinstance(first, Circuit) and isinstance(second, Circuit)
    assert table.route(b"\x02" * 32, second.id, 100, 50.0) == CLIENT  # second is in use
    assert isinstance(table.open(b"\x03" * 32, CLIENT, 30.0), Refused)  # none idle yet
    third = table.open(b"\x03" * 32, CLIENT, 61.0)  # the first is idle: it gives way
    assert isinstance(third, Circuit)
    assert table.route(b"\x01" * 32, first.id, 100, 62.0) is None
    assert table.route(b"\x02" * 32, second.id, 100, 62.0) == CLIENT
