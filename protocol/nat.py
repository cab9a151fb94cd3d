"""NAT status: the addresses peers observe for this node, and whether it is reachable.

Peers report the address a connection from this node came from. One peer's word
is not enough (it could lie, or see a relay): an address counts as confirmed
when ``CONFIRMATIONS`` distinct peers reported it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from protocol.multiaddr import split_addrs

CONFIRMATIONS: Final = 2
MAX_TRACKED_ADDRESSES: Final = 16


class Reachability(enum.StrEnum):
    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass
class _Observation:
    reporters: set[bytes] = field(default_factory=set)
    last_seen: float = 0.0


class NatStatus:
    """Observed external addresses and the reachability verdict of this node."""

    def __init__(self, listen_addrs: tuple[str, ...] = ()) -> None:
        self.listen_addrs = listen_addrs
        self.reachability = Reachability.UNKNOWN
        self._observed: dict[str, _Observation] = {}

    def observe(self, address: str, reporter: bytes, now: float) -> bool:
        """Record that ``reporter`` saw this node at ``address``; True if it became confirmed now."""
        obs = self._observed.get(address)
        if obs is None:
            if len(self._observed) >= MAX_TRACKED_ADDRESSES:
                oldest = min(self._observed, key=lambda a: self._observed[a].last_seen)
                del self._observed[oldest]
            obs = self._observed[address] = _Observation()
        before = len(obs.reporters)
        obs.reporters.add(reporter)
        obs.last_seen = now
        return before < CONFIRMATIONS <= len(obs.reporters)

    def confirmed(self) -> list[str]:
        """Addresses reported by enough distinct peers, most recent first."""
        items = [
            (o.last_seen, a) for a, o in self._observed.items() if len(o.reporters) >= CONFIRMATIONS
        ]
        return [a for _, a in sorted(items, reverse=True)]

    def symmetric(self) -> bool:
        """Whether peers see this node at one host but different ports: a symmetric NAT
        (a new mapping per destination), against which hole punching cannot work."""
        ports: dict[str, set[int]] = {}
        for address in split_addrs(self._observed)[0]:
            ports.setdefault(address.host, set()).add(address.port)
        return any(len(p) > 1 for p in ports.values())

    def dial_back_result(self, succeeded: bool) -> None:
        """A peer we never contacted tried to dial our observed address: the verdict."""
        self.reachability = Reachability.PUBLIC if succeeded else Reachability.PRIVATE

    def as_status(self) -> dict[str, object]:
        return {
            "reachability": str(self.reachability),
            "observed_addrs": {a: len(o.reporters) for a, o in self._observed.items()},
            "confirmed_addrs": self.confirmed(),
            "symmetric": self.symmetric(),
        }


# -- control datagrams -----------------------------------------------------------------
#
# Besides QUIC, the node's socket carries two tiny datagrams of its own. Every QUIC
# packet has the fixed bit (0x40) set in its first byte; these start with 0x00, so
# the two never mix.

CONTROL_MAGIC: Final = b"\x00AAN"
NONCE_BYTES: Final = 16


class ControlKind(enum.IntEnum):
    PUNCH_OPENER = 1
    """Sent with a small TTL toward a peer about to dial: opens this side's NAT mapping."""
    DIAL_BACK = 2
    """Sent by a dial-back helper: its arrival proves strangers can reach this node."""


def control_datagram(kind: ControlKind, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a control nonce is {NONCE_BYTES} bytes")
    return CONTROL_MAGIC + bytes([kind]) + nonce


def is_control_datagram(data: bytes) -> bool:
    return data[:1] == CONTROL_MAGIC[:1]


def parse_control_datagram(data: bytes) -> tuple[ControlKind, bytes] | None:
    """``(kind, nonce)``, or None for anything else (dropped by the caller)."""
    if len(data) != len(CONTROL_MAGIC) + 1 + NONCE_BYTES or not data.startswith(CONTROL_MAGIC):
        return None
    try:
        kind = ControlKind(data[len(CONTROL_MAGIC)])
    except ValueError:
        return None
    return kind, data[len(CONTROL_MAGIC) + 1 :]


# -- reachability: dial-back checks ------------------------------------------------------


@dataclass
class _Pending:
    helper: bytes
    deadline: float


class ReachabilityCheck:
    """Decides PUBLIC or PRIVATE from dial-backs.

    The node asks a connected helper to send a probe to the address the helper sees it
    at, from a port this node never contacted. The probe arriving means a stranger's
    packets reach the node: PUBLIC. ``failures_for_private`` helpers in a row whose
    probe never came: PRIVATE. A verdict is re-checked every ``recheck_interval``.
    """

    def __init__(
        self,
        status: NatStatus,
        wait: float = 2.0,
        failures_for_private: int = 2,
        recheck_interval: float = 600.0,
        round_backoff: float = 30.0,
    ) -> None:
        self.status = status
        self.wait = wait
        self.failures_for_private = failures_for_private
        self.recheck_interval = recheck_interval
        self.round_backoff = round_backoff
        self._pending: dict[bytes, _Pending] = {}
        self._failed_helpers: list[bytes] = []
        """Helpers tried this round (refused, failed or missed): not asked again."""
        self._misses = 0
        """Checks this round whose probe never came (the only evidence of PRIVATE)."""
        self._next_check = 0.0

    def due(self, now: float) -> bool:
        return not self._pending and now >= self._next_check

    def choose_helper(self, connected: list[bytes], now: float | None = None) -> bytes | None:
        """A connected peer not tried in the current round (the first untried one).

        When every connected peer was tried without a verdict (they refused, or too
        few probes went missing), a new round starts ``round_backoff`` later (with
        ``now`` given), so the node does not stay UNKNOWN for good."""
        for peer in connected:
            if peer not in self._failed_helpers:
                return peer
        if now is not None and connected and not self._pending:
            self._failed_helpers.clear()
            self._misses = 0
            self._next_check = now + self.round_backoff
        return None

    def started(self, nonce: bytes, helper: bytes, now: float) -> None:
        self._pending[nonce] = _Pending(helper, now + self.wait)

    def helper_failed(self, nonce: bytes) -> None:
        """The helper refused or did not answer: no evidence either way; try another."""
        pending = self._pending.pop(nonce, None)
        if pending is not None:
            self._failed_helpers.append(pending.helper)

    def probe_received(self, nonce: bytes, now: float) -> bool:
        """A probe arrived; True if it answers one of our checks (the node is PUBLIC)."""
        if self._pending.pop(nonce, None) is None:
            return False
        self._verdict(Reachability.PUBLIC, now)
        return True

    def expire(self, now: float) -> bool:
        """Count the checks whose probe never came; True if the verdict changed."""
        expired = [n for n, p in self._pending.items() if p.deadline <= now]
        changed = False
        for nonce in expired:
            pending = self._pending.pop(nonce, None)
            if pending is None:  # a verdict earlier in this loop cleared it
                continue
            self._failed_helpers.append(pending.helper)
            self._misses += 1
            if self._misses >= self.failures_for_private:
                changed = self._verdict(Reachability.PRIVATE, now) or changed
        return changed

    def _verdict(self, verdict: Reachability, now: float) -> bool:
        changed = self.status.reachability != verdict
        self.status.reachability = verdict
        self._failed_helpers.clear()
        self._misses = 0
        self._pending.clear()
        self._next_check = now + self.recheck_interval
        return changed


class RelayReservation:
    """A private node's hold on a relay: whom to ask for a slot, when to renew it, and
    whom not to ask again soon. The owner sends ``RelayReserve`` to what ``to_ask``
    returns and reports ``granted`` or ``refused``."""

    def __init__(self, retry_after: float = 10.0) -> None:
        self.retry_after = retry_after
        self.relay: bytes | None = None
        self._asking: bytes | None = None
        self._renew_at = 0.0
        self._refused: dict[bytes, float] = {}

    def to_ask(
        self, reachability: Reachability, candidates: Iterable[bytes], now: float
    ) -> bytes | None:
        """The peer to ask now (the relay itself, to renew), or None."""
        if reachability is not Reachability.PRIVATE or self._asking is not None:
            return None
        if self.relay is not None:
            if now < self._renew_at:
                return None
            self._asking = self.relay
            return self.relay
        self._refused = {p: until for p, until in self._refused.items() if until > now}
        for peer in candidates:
            if peer not in self._refused:
                self._asking = peer
                return peer
        return None

    def granted(self, relay: bytes, seconds: float, now: float) -> bool:
        """The slot was granted for ``seconds``; True if ``relay`` is a new relay."""
        self._asking = None
        self._renew_at = now + max(1.0, seconds / 2)
        if relay == self.relay:
            return False
        self.relay = relay
        return True

    def refused(self, relay: bytes, now: float) -> bool:
        """Refused or no answer: not asked again for a while; True if it was the relay."""
        self._asking = None
        self._refused[relay] = now + self.retry_after
        return self.drop(relay)

    def drop(self, relay: bytes | None = None) -> bool:
        """Give up the relay (if ``relay`` is given: only if it is that one); True if
        there was one to give up."""
        if self.relay is None or relay not in (None, self.relay):
            return False
        self.relay = None
        return True


class DialBackLimiter:
    """A helper's side: one dial-back per asking peer every ``interval`` seconds, so
    no one can turn the node into a probe cannon."""

    def __init__(self, interval: float = 5.0, max_tracked: int = 1024) -> None:
        self.interval = interval
        self.max_tracked = max_tracked
        self._sent: dict[bytes, float] = {}

    def take(self, peer: bytes, now: float) -> bool:
        """True (and remembered) if a dial-back for ``peer`` may be sent now."""
        last = self._sent.get(peer)
        if last is not None and now - last < self.interval:
            return False
        self._sent[peer] = now
        if len(self._sent) > self.max_tracked:
            self._sent = {p: t for p, t in self._sent.items() if now - t < self.interval}
        return True


# -- the dial cascade --------------------------------------------------------------------


class How(enum.StrEnum):
    """How a connection was made."""

    DIRECT = "direct"
    PUNCHED = "punched"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class DialDirect:
    """Dial the peer's direct multiaddr ``via``."""

    via: str
    timeout: float
    step: ClassVar[str] = "direct"
    how: ClassVar[How] = How.DIRECT


@dataclass(frozen=True, slots=True)
class PunchVia:
    """Ask relay ``via`` (connected to the target) to coordinate a hole punch; dial
    the address it returns."""

    via: str
    timeout: float
    step: ClassVar[str] = "punch"
    how: ClassVar[How] = How.PUNCHED


@dataclass(frozen=True, slots=True)
class RelayVia:
    """Ask relay ``via`` for a circuit to the target; connect through it."""

    via: str
    timeout: float
    step: ClassVar[str] = "relay"
    how: ClassVar[How] = How.RELAYED


@dataclass(frozen=True, slots=True)
class Connected:
    how: How


@dataclass(frozen=True, slots=True)
class GaveUp:
    reason: str


CascadeAction = DialDirect | PunchVia | RelayVia | Connected | GaveUp


@dataclass(frozen=True)
class CascadeTimeouts:
    direct: float = 3.0
    punch: float = 3.0
    relay: float = 10.0


@dataclass(frozen=True, slots=True)
class Attempt:
    step: str
    via: str
    outcome: str
    seconds: float


class DialCascade:
    """Direct, then a coordinated hole punch, then a relay; each step with its own timeout.

    ``direct`` are direct multiaddrs of the target; ``relayed`` its circuit addresses
    (``/ip4/R/udp/P/quic-v1/p2p/<relay>/p2p-circuit/p2p/<target>``), whose relays
    also coordinate punches. The owner performs each action and reports
    ``succeeded()`` or ``failed(why)``; ``attempts`` is the record ``connect`` prints.
    """

    def __init__(
        self,
        direct: list[str],
        relayed: list[str],
        now: float,
        timeouts: CascadeTimeouts | None = None,
        punch: bool = True,
    ) -> None:
        t = timeouts or CascadeTimeouts()
        relays = _relay_parts(relayed)
        self._plan: list[DialDirect | PunchVia | RelayVia] = [
            DialDirect(a, t.direct) for a in direct
        ]
        if punch:
            self._plan += [PunchVia(r, t.punch) for r in relays]
        self._plan += [RelayVia(r, t.relay) for r in relays]
        self._index = -1
        self._started = now
        self.attempts: list[Attempt] = []

    def start(self, now: float) -> CascadeAction:
        return self._advance(now)

    @property
    def current(self) -> DialDirect | PunchVia | RelayVia | None:
        return self._plan[self._index] if 0 <= self._index < len(self._plan) else None

    def succeeded(self, now: float) -> Connected:
        action = self.current
        assert action is not None, "no step is running"
        self._record(action, "connected", now)
        self._index = len(self._plan)
        return Connected(action.how)

    def failed(self, why: str, now: float) -> CascadeAction:
        action = self.current
        if action is not None:
            self._record(action, why, now)
        return self._advance(now)

    def _advance(self, now: float) -> CascadeAction:
        self._index += 1
        self._started = now
        action = self.current
        if action is not None:
            return action
        if not self._plan:
            return GaveUp("no address to dial")
        return GaveUp("; ".join(f"{a.step}: {a.outcome}" for a in self.attempts))

    def _record(self, action: DialDirect | PunchVia | RelayVia, outcome: str, now: float) -> None:
        elapsed = round(now - self._started, 4)
        self.attempts.append(Attempt(action.step, action.via, outcome, elapsed))


def _relay_parts(relayed: list[str]) -> list[str]:
    """The relay's own multiaddr (``/ip4/R/udp/P/quic-v1/p2p/<relay>``) of each circuit
    address, without repeats."""
    relays: list[str] = []
    for circuit in split_addrs(relayed)[1]:
        relay = str(circuit.relay)
        if relay not in relays:
            relays.append(relay)
    return relays
