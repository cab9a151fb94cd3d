"""Relay rules: reservations, circuits and their bandwidth, for a public node that
relays end-to-end QUIC packets between a peer behind a symmetric NAT and its dialers.

A client behind NAT reserves a slot (``reserve``); a dialer asks for a circuit to
it (``open``); afterwards each encapsulated datagram is routed by
``(sender, circuit id)`` (``route``). The relay sees only ciphertext: the packets it
forwards belong to a QUIC connection between the two ends, whose identity handshake
binds them to each other.

Circuit datagrams travel in QUIC DATAGRAM frames on the connections to the relay,
as ``circuit id (u32, big-endian) || inner QUIC datagram`` (see ``pack``/``unpack``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from protocol.rate import TokenBucket

CIRCUIT_HEADER: Final = struct.Struct(">I")
MAX_CIRCUIT_ID: Final = 2**32 - 1


@dataclass(frozen=True)
class RelayLimits:
    """What a relay grants. Bandwidth is per reserved client, both directions together."""

    max_reservations: int = 64
    reservation_seconds: int = 3600
    max_circuits_per_client: int = 16
    bytes_per_second: int = 8 * 1024 * 1024
    burst_bytes: int = 1024 * 1024
    circuit_idle_seconds: float = 120.0
    """A circuit nothing crossed for this long may give its place to a new one."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Why the relay said no."""

    reason: str


@dataclass(frozen=True, slots=True)
class Circuit:
    id: int
    initiator: bytes
    target: bytes


@dataclass
class Reservation:
    expires: float
    budget: TokenBucket
    """Bytes the client's circuits may still relay."""
    circuits: set[int] = field(default_factory=set)


@dataclass
class RelayCounters:
    circuits_opened: int = 0
    datagrams_relayed: int = 0
    bytes_relayed: int = 0
    datagrams_dropped_over_budget: int = 0
    datagrams_dropped_no_circuit: int = 0


class RelayTable:
    """The relay's reservations and circuits (one owner thread, no I/O)."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._reservations: dict[bytes, Reservation] = {}
        self._circuits: dict[int, Circuit] = {}
        self._last_used: dict[int, float] = {}
        self._next_id = 1
        self.counters = RelayCounters()

    def reserve(self, client: bytes, now: float) -> Reservation | Refused:
        """Grant (or renew) ``client`` a reservation."""
        self._expire(now)
        existing = self._reservations.get(client)
        if existing is None and len(self._reservations) >= self.limits.max_reservations:
            return Refused("relay full")
        expires = now + self.limits.reservation_seconds
        if existing is not None:
            existing.expires = expires
            return existing
        budget = TokenBucket(self.limits.bytes_per_second, self.limits.burst_bytes)
        reservation = Reservation(expires, budget)
        self._reservations[client] = reservation
        return reservation

    def is_reserved(self, client: bytes, now: float) -> bool:
        reservation = self._reservations.get(client)
        return reservation is not None and reservation.expires > now

    def open(self, initiator: bytes, target: bytes, now: float) -> Circuit | Refused:
        """A circuit from ``initiator`` to reserved ``target``."""
        self._expire(now)
        reservation = self._reservations.get(target)
        if reservation is None:
            return Refused("the peer holds no reservation on this relay")
        if initiator == target:
            return Refused("a circuit to oneself")
        # The relay cannot see an inner connection end: an initiator asks for a new
        # circuit only when its connection through the old one is gone, so the new one
        # replaces it (else old circuits pile up until no one can reach the target).
        for stale in [c.id for c in self._circuits.values() if c.initiator == initiator]:
            if stale in reservation.circuits:
                self.close(stale)
        if len(reservation.circuits) >= self.limits.max_circuits_per_client:
            # the relay never sees an inner connection end: idle circuits give way
            idle_before = now - self.limits.circuit_idle_seconds
            for idle in [c for c in reservation.circuits if self._last_used[c] <= idle_before]:
                self.close(idle)
        if len(reservation.circuits) >= self.limits.max_circuits_per_client:
            return Refused("too many circuits to this peer")
        circuit = Circuit(self._allocate_id(), initiator, target)
        self._circuits[circuit.id] = circuit
        self._last_used[circuit.id] = now
        reservation.circuits.add(circuit.id)
        self.counters.circuits_opened += 1
        return circuit

    def route(self, sender: bytes, circuit_id: int, size: int, now: float) -> bytes | None:
        """The peer a datagram of ``size`` bytes from ``sender`` on ``circuit_id`` goes
        to; None to drop it (no such circuit, or the client's budget is spent)."""
        circuit = self._circuits.get(circuit_id)
        if circuit is None or sender not in (circuit.initiator, circuit.target):
            self.counters.datagrams_dropped_no_circuit += 1
            return None
        reservation = self._reservations.get(circuit.target)
        if reservation is None or reservation.expires <= now:
            self.counters.datagrams_dropped_no_circuit += 1
            return None
        if not reservation.budget.take(size, now):
            self.counters.datagrams_dropped_over_budget += 1
            return None
        self._last_used[circuit_id] = now
        self.counters.datagrams_relayed += 1
        self.counters.bytes_relayed += size
        return circuit.target if sender == circuit.initiator else circuit.initiator

    def close(self, circuit_id: int) -> None:
        circuit = self._circuits.pop(circuit_id, None)
        self._last_used.pop(circuit_id, None)
        if circuit is not None:
            reservation = self._reservations.get(circuit.target)
            if reservation is not None:
                reservation.circuits.discard(circuit_id)

    def forget_peer(self, peer: bytes) -> list[Circuit]:
        """``peer`` disconnected: its reservation and every circuit it was on end.
        Returns the circuits closed."""
        closed = [c for c in self._circuits.values() if peer in (c.initiator, c.target)]
        for circuit in closed:
            self.close(circuit.id)
        self._reservations.pop(peer, None)
        return closed

    def status(self, now: float) -> dict[str, object]:
        return {
            "reservations": sum(1 for r in self._reservations.values() if r.expires > now),
            "circuits": len(self._circuits),
            "bytes_per_second": self.limits.bytes_per_second,
            **vars(self.counters),
        }

    def _allocate_id(self) -> int:
        while self._next_id in self._circuits:
            self._next_id = self._next_id % MAX_CIRCUIT_ID + 1
        allocated = self._next_id
        self._next_id = self._next_id % MAX_CIRCUIT_ID + 1
        return allocated

    def _expire(self, now: float) -> None:
        for client in [c for c, r in self._reservations.items() if r.expires <= now]:
            self.forget_peer(client)


def pack(circuit_id: int, datagram: bytes) -> bytes:
    """The DATAGRAM frame payload that carries ``datagram`` on ``circuit_id``."""
    return CIRCUIT_HEADER.pack(circuit_id) + datagram


def unpack(payload: bytes) -> tuple[int, bytes] | None:
    """``(circuit id, inner datagram)``, or None for a payload too short to be one."""
    if len(payload) <= CIRCUIT_HEADER.size:
        return None
    (circuit_id,) = CIRCUIT_HEADER.unpack_from(payload)
    return circuit_id, payload[CIRCUIT_HEADER.size :]
