"""NatTraverser: what the network sees of this node, whether strangers can reach it,
and how to reach peers behind NAT.

- **Reachability.** It asks connected peers for dial-backs (``DialBack``): the helper
  sends a probe, from a port this node never contacted, to the address it sees the
  node at. Probes arriving: PUBLIC; helpers whose probes never come: PRIVATE
  (``protocol.nat.ReachabilityCheck``).
- **Relay reservation.** A PRIVATE node reserves a slot on a public peer it dialled,
  keeps that connection alive, and announces only its circuit address
  ``/ip4/R/udp/P/quic-v1/p2p/<relay>/p2p-circuit/p2p/<self>`` (``Announce`` to the
  peers it is connected to, ``Hello`` to new ones).
- **The dial cascade** is the Transport's (``actors._quic.reach``: direct, then a hole
  punch coordinated by the peer's relay, then a circuit through that relay, planned
  in one place). This actor gives it its step timeouts and says whether punching can
  work (not behind a symmetric NAT); ``connect`` asks it (``TransportHandle.reach``)
  and measures the connection it got.
- **Serving others**: dial-backs, punch coordination, relaying (the relay's datagram
  forwarding itself runs in the Transport's loop; this actor grants reservations and
  opens circuits).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypedDict

from actors.base import NodeActor
from actors.futures import Outcome, tell_when_done
from actors.messages import (
    AddressObserved,
    ConnectPeer,
    InboundRequest,
    PeerDisconnected,
    ProbeArrived,
    StatusQuery,
    Tick,
)
from actors.transport import ControlSink, ReachResult, TransportHandle
from protocol.errors import TransportError
from protocol.multiaddr import (
    Multiaddr,
    MultiaddrError,
    format_multiaddr,
    parse_multiaddr,
)
from protocol.nat import (
    NONCE_BYTES,
    Attempt,
    CascadeTimeouts,
    ControlKind,
    DialBackLimiter,
    How,
    NatStatus,
    Reachability,
    ReachabilityCheck,
    RelayReservation,
    control_datagram,
)
from protocol.relay import Refused
from protocol.wire import (
    Announce,
    DialBack,
    Error,
    ErrorCode,
    Message,
    Ok,
    Ping,
    PunchNotify,
    PunchReply,
    PunchRequest,
    RelayCircuit,
    RelayConnect,
    RelayIncoming,
    RelayReserve,
    RelayReserved,
)

log = logging.getLogger(__name__)

DIAL_BACK_PROBES: Final = 3
COORDINATION_TIMEOUT: Final = 3.0
RESERVE_RETRY: Final = 10.0


@dataclass(frozen=True)
class NatConfig:
    announce: bool = True
    """A node (True) checks its reachability and takes a relay when behind NAT; a
    client (False) only dials."""
    serve_relay: bool = True
    """Relay and coordinate for others when this node is public."""
    timeouts: CascadeTimeouts = field(default_factory=CascadeTimeouts)
    dial_back_wait: float = 2.0
    punch: bool = True
    """Try hole punching before a relay (off: straight to the relay)."""
    reachability: Reachability | None = None
    """Take this verdict instead of checking (an operator who knows; tests)."""


@dataclass(frozen=True, slots=True)
class CascadeResult:
    """What ``connect`` prints."""

    peer_id: str
    connected: bool
    how: str | None
    connect_ms: float
    rtt_ms: float | None
    attempts: list[Attempt]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- internal messages (results of remote calls, told back to the actor) ---------------


@dataclass(frozen=True, slots=True)
class _Reached:
    """The Transport's cascade for a ``connect`` ended."""

    peer_id: bytes
    on_done: Callable[[CascadeResult], None] | None
    started: float
    outcome: Outcome[ReachResult]


@dataclass(frozen=True, slots=True)
class _RttMeasured:
    on_done: Callable[[CascadeResult], None] | None
    result: CascadeResult
    sent: float
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _DialBackAnswered:
    nonce: bytes
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _ReserveAnswered:
    relay_id: bytes
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _Forwarded:
    """A coordinator's or relay's call to the target came back: answer the initiator."""

    request: InboundRequest
    answer: Message
    circuit: int | None
    outcome: Outcome[Message]


class NatTraverser(NodeActor):
    name = "NatTraverser"

    def __init__(self, transport: TransportHandle, config: NatConfig | None = None) -> None:
        super().__init__()
        self.transport = transport
        self.config = config or NatConfig()
        self.own_id = transport.peer_id
        self.nat = NatStatus(tuple(transport.listen_addrs()))
        self.check = ReachabilityCheck(self.nat, wait=self.config.dial_back_wait)
        if self.config.reachability is not None:
            self.nat.reachability = self.config.reachability
        self.relays = RelayReservation(retry_after=RESERVE_RETRY)
        self._dial_backs = DialBackLimiter()
        self._punch = self._can_punch()
        transport.set_cascade(self.config.timeouts, self._punch)

    def _can_punch(self) -> bool:
        # behind a symmetric NAT, the far side would open its NAT toward a port our
        # router does not use for it: straight to the relay
        return self.config.punch and not self.nat.symmetric()

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        now = time.monotonic()
        match message:
            case AddressObserved(address=address, reporter=reporter):
                self.nat.observe(address, reporter, time.time())
                if self._can_punch() != self._punch:
                    self._punch = self._can_punch()
                    self.transport.set_cascade(punch=self._punch)
            case ProbeArrived(nonce=nonce):
                if self.check.probe_received(nonce, now):
                    self._reachability_changed()
            case Tick():
                self._tick(now)
            case ConnectPeer(peer_id=peer_id, addrs=addrs, on_done=on_done, fresh=fresh):
                if fresh:
                    self.transport.disconnect(peer_id)
                future = self.transport.reach(peer_id, addrs)
                reached = partial(_Reached, peer_id, on_done, now)
                tell_when_done(future, self.actor_ref, reached)
            case PeerDisconnected(peer_id=peer_id):
                if self.relays.drop(peer_id):
                    log.info("lost the relay %s: looking for another", peer_id.hex()[:12])
                    self._announce()
            case InboundRequest():
                self._serve(message, now)
            case _Reached():
                self._reached(message)
            case _RttMeasured():
                self._rtt_measured(message)
            case _DialBackAnswered(nonce=nonce, outcome=outcome):
                if outcome.error is not None:
                    log.debug("dial-back helper failed: %s", outcome.error)
                    self.check.helper_failed(nonce)
            case _ReserveAnswered():
                self._reserve_answered(message, now)
            case _Forwarded():
                self._forwarded(message)
            case StatusQuery():
                return {"nat": self._status()}
            case _:
                return super().on_receive(message)
        return None

    def _status(self) -> dict[str, Any]:
        status = self.nat.as_status()
        relay = self.relays.relay
        status["relay"] = None if relay is None else relay.hex()
        status["announced_addrs"] = self.transport.announced_addrs()
        try:
            status["relaying"] = self.transport.relay_status()
        except TransportError as exc:
            status["relaying"] = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            stats = self.transport.stats()
            status["cascades"] = {
                "cascades": stats.cascades,
                "direct": stats.cascades_direct,
                "punched": stats.cascades_punched,
                "relayed": stats.cascades_relayed,
                "failed": stats.cascades_failed,
            }
        except TransportError as exc:
            status["cascades"] = {"error": f"{type(exc).__name__}: {exc}"}
        return status

    # -- reachability and the relay reservation ----------------------------------------

    def _tick(self, now: float) -> None:
        if not self.config.announce:
            return
        try:
            self._check_reachability(now)
        except TransportError as exc:  # the next tick tries again
            log.info("reachability check skipped: %s: %s", type(exc).__name__, exc)

    def _check_reachability(self, now: float) -> None:
        if self.check.expire(now):
            self._reachability_changed()
        if self.config.reachability is None and self.check.due(now):
            helper = self.check.choose_helper(self.transport.connected_peers(), now)
            if helper is not None:
                nonce = os.urandom(NONCE_BYTES)
                self.check.started(nonce, helper, now)
                future = self.transport.request(helper, DialBack(nonce), timeout=5.0)
                tell_when_done(future, self.actor_ref, partial(_DialBackAnswered, nonce))
        if self.nat.reachability is Reachability.PRIVATE:
            # relay candidates: public peers, i.e. those this node dialled directly
            candidates = (
                bytes.fromhex(c.peer_id)
                for c in self.transport.connections()
                if c.how == How.DIRECT and c.direction == "outbound"
            )
            relay = self.relays.to_ask(self.nat.reachability, candidates, now)
            if relay is not None:
                future = self.transport.request(relay, RelayReserve(), timeout=5.0)
                tell_when_done(future, self.actor_ref, partial(_ReserveAnswered, relay))

    def _reachability_changed(self) -> None:
        log.info("reachability: %s", self.nat.reachability)
        relay = self.relays.relay
        if self.nat.reachability is Reachability.PUBLIC and relay is not None:
            self.transport.pin(relay, False)
            self.relays.drop()
            self._announce()

    def _reserve_answered(self, message: _ReserveAnswered, now: float) -> None:
        relay, outcome = message.relay_id, message.outcome
        reply = outcome.value
        if not isinstance(reply, RelayReserved):
            log.info("relay %s refused: %s", relay.hex()[:12], outcome.error or reply)
            if self.relays.refused(relay, now):
                self._announce()
            return
        if self.relays.granted(relay, reply.seconds, now):
            self.transport.pin(relay)
            log.info("relay reserved on %s", relay.hex()[:12])
            self._announce()

    def _announce(self) -> None:
        """Announce the circuit address (behind NAT, with a relay) or the listen addresses."""
        relay = self.relays.relay
        if relay is not None:
            try:
                address = self.transport.peer_address(relay)
            except TransportError as exc:
                log.warning("circuit address not announced: %s: %s", type(exc).__name__, exc)
                return
            if address is None:
                return
            circuit = Multiaddr(address[0], address[1], self.own_id, relay_id=relay)
            addrs: list[str] | None = [str(circuit)]
        else:
            addrs = None
        self.transport.set_announced(addrs)
        announced = self.transport.announced_addrs()
        for peer_id in self.transport.connected_peers():
            self.transport.request(peer_id, Announce(announced), timeout=5.0)

    # -- connect: the Transport's cascade, then a measured RTT ---------------------------

    def _reached(self, message: _Reached) -> None:
        connect_ms = round((time.monotonic() - message.started) * 1000.0, 3)
        reached = message.outcome.value
        if reached is None:
            error = _why(message.outcome) or "no result"
            result = CascadeResult(message.peer_id.hex(), False, None, connect_ms, None, [], error)
            self._done(message.on_done, result)
            return
        attempts = list(reached.attempts)
        if not reached.connected:
            log.info("cannot reach %s: %s", message.peer_id.hex()[:12], reached.error)
            result = CascadeResult(
                message.peer_id.hex(), False, None, connect_ms, None, attempts, reached.error
            )
            self._done(message.on_done, result)
            return
        result = CascadeResult(message.peer_id.hex(), True, reached.how, connect_ms, None, attempts)
        if message.on_done is None:
            return
        sent = time.monotonic()
        ping = Ping(int.from_bytes(os.urandom(7)))
        future = self.transport.request(message.peer_id, ping, 5.0)
        tell_when_done(future, self.actor_ref, partial(_RttMeasured, message.on_done, result, sent))

    def _rtt_measured(self, message: _RttMeasured) -> None:
        rtt = None
        if message.outcome.error is None:
            rtt = round((time.monotonic() - message.sent) * 1000.0, 3)
        self._done(message.on_done, dataclasses.replace(message.result, rtt_ms=rtt))

    @staticmethod
    def _done(on_done: Callable[[CascadeResult], None] | None, result: CascadeResult) -> None:
        if on_done is None:
            return
        try:
            on_done(result)
        except Exception:
            log.exception("a connect waiter failed")

    # -- serving others ----------------------------------------------------------------

    def _serve(self, request: InboundRequest, now: float) -> None:
        message, peer_id = request.message, request.peer_id
        match message:
            case DialBack(nonce=nonce):
                self._dial_back(request, nonce, now)
            case PunchRequest(target=target):
                self._coordinate(request, target)
            case PunchNotify(addr=addr):
                if self.nat.symmetric():
                    request.reply(Error(ErrorCode.REFUSED, "behind a symmetric NAT: use a relay"))
                    return
                try:
                    initiator_addr = parse_multiaddr(addr).socket_address
                except MultiaddrError as exc:
                    request.reply(Error(ErrorCode.MALFORMED, str(exc)))
                    return
                self.transport.expect_punch(initiator_addr)
                self.transport.send_openers(initiator_addr)
                request.reply(Ok())
            case RelayReserve():
                if not self.config.serve_relay or self.nat.reachability is not Reachability.PUBLIC:
                    request.reply(Error(ErrorCode.REFUSED, "this node is not a public relay"))
                    return
                try:
                    granted = self.transport.relay_reserve(peer_id)
                except TransportError as exc:
                    request.reply(Error(ErrorCode.BUSY, str(exc)))
                    return
                if isinstance(granted, Refused):
                    request.reply(Error(ErrorCode.REFUSED, granted.reason))
                    return
                limits = self.transport.relay_limits
                request.reply(RelayReserved(limits.reservation_seconds, limits.bytes_per_second))
            case RelayConnect(target=circuit_target):
                self._open_circuit(request, circuit_target)
            case RelayIncoming(circuit=circuit_id):
                if peer_id != self.relays.relay:
                    request.reply(Error(ErrorCode.REFUSED, "you are not this node's relay"))
                    return
                self.transport.accept_circuit(peer_id, circuit_id)
                request.reply(Ok())
            case _:
                request.reply(Error(ErrorCode.UNSUPPORTED, type(message).__name__))

    def _dial_back(self, request: InboundRequest, nonce: bytes, now: float) -> None:
        peer_id = request.peer_id
        try:
            address = self.transport.peer_address(peer_id)
        except TransportError as exc:
            request.reply(Error(ErrorCode.BUSY, str(exc)))
            return
        if address is None:
            request.reply(Error(ErrorCode.UNREACHABLE, "not connected to you directly"))
            return
        if not self._dial_backs.take(peer_id, now):
            request.reply(Error(ErrorCode.BUSY, "one dial-back per peer every few seconds"))
            return
        probe = control_datagram(ControlKind.DIAL_BACK, nonce)
        # A fresh socket: a port the asking node never contacted, as a stranger's would be.
        host = self.transport.local_address[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host if host != "0.0.0.0" else "", 0))
                for _ in range(DIAL_BACK_PROBES):
                    sock.sendto(probe, address)
            except OSError as exc:
                request.reply(Error(ErrorCode.INTERNAL, f"dial-back not sent: {exc}"))
                return
        request.reply(Ok())

    def _open_circuit(self, request: InboundRequest, target: bytes) -> None:
        try:
            circuit = self.transport.relay_open(request.peer_id, target)
        except TransportError as exc:
            request.reply(Error(ErrorCode.BUSY, str(exc)))
            return
        if isinstance(circuit, Refused):
            request.reply(Error(ErrorCode.REFUSED, circuit.reason))
            return
        future = self.transport.request(
            target, RelayIncoming(request.peer_id, circuit.id), COORDINATION_TIMEOUT
        )
        answer = RelayCircuit(circuit.id)
        tell_when_done(future, self.actor_ref, partial(_Forwarded, request, answer, circuit.id))

    def _coordinate(self, request: InboundRequest, target: bytes) -> None:
        try:
            initiator_addr = self.transport.peer_address(request.peer_id)
            target_addr = self.transport.peer_address(target)
        except TransportError as exc:
            request.reply(Error(ErrorCode.BUSY, str(exc)))
            return
        if initiator_addr is None or target_addr is None:
            request.reply(Error(ErrorCode.UNREACHABLE, "not connected directly to both of you"))
            return
        notify = PunchNotify(request.peer_id, format_multiaddr(*initiator_addr))
        future = self.transport.request(target, notify, COORDINATION_TIMEOUT)
        answer = PunchReply(format_multiaddr(*target_addr, target))
        tell_when_done(future, self.actor_ref, partial(_Forwarded, request, answer, None))

    def _forwarded(self, message: _Forwarded) -> None:
        if isinstance(message.outcome.value, Ok):
            message.request.reply(message.answer)
            return
        if message.circuit is not None:
            self.transport.relay_close(message.circuit)
        why = _why(message.outcome) or "unexpected reply"
        message.request.reply(Error(ErrorCode.UNREACHABLE, f"the peer did not answer: {why}"))


class NatHooks(TypedDict):
    on_control: ControlSink


def nat_hooks(tell: Callable[[Any], None]) -> NatHooks:
    """The Transport's hooks that feed a NatTraverser (``tell`` reaches it)."""

    def on_control(kind: ControlKind, nonce: bytes, _addr: tuple[str, int]) -> None:
        if kind is ControlKind.DIAL_BACK:
            tell(ProbeArrived(nonce))

    return {"on_control": on_control}


def _why(outcome: Outcome[Any]) -> str | None:
    if outcome.error is None:
        return None
    return f"{type(outcome.error).__name__}: {outcome.error}"
