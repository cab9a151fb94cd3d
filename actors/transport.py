"""Transport: the node's QUIC endpoint as an actor.

The actor owns a ``QuicEndpoint`` (one UDP socket, an asyncio loop in its own
thread, every QUIC connection). Creating the actor binds the socket, so a port in
use fails ``Transport.start(...)`` at once. Remote calls do not queue behind the
actor's mailbox: a ``TransportHandle`` (``Transport.handle_of(ref)``) hands them
straight to the loop and returns pykka futures, Ray-style::

    handle = Transport.handle_of(transport_ref)
    reply = handle.request(peer_id, FindNode(target), timeout=5).get()   # or .get() later
    peer_id = handle.dial("/ip4/127.0.0.1/udp/12000/quic-v1/p2p/<id>").get()

Failures arrive as ``protocol.errors`` exceptions: ``RequestTimeout``,
``PeerRejected``, ``PeerUnreachable``, ``ConnectionLost``, ``RemoteError``,
``TransportClosed`` (all ``TransportError``).

Inbound requests other than ``Ping`` (answered here, with the observed address)
go to ``dispatch`` *on the loop thread*: it must not block (``tell`` an actor).
Peer events go through this actor's mailbox to ``on_peer_connected`` and
``on_peer_disconnected``, so slow subscribers never stall the loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pykka

from actors._quic.backend import QuicStack
from actors._quic.endpoint import (
    ConnectionInfo,
    ControlSink,
    Dispatch,
    QuicEndpoint,
    ReachResult,
    TransportBusy,
    TransportConfig,
    TransportStats,
)
from actors.base import NodeActor
from actors.messages import Event, InboundRequest, PeerConnected, PeerDisconnected, StatusQuery
from protocol.identity import Identity
from protocol.multiaddr import Multiaddr
from protocol.nat import CascadeTimeouts, How
from protocol.relay import Circuit, Refused, RelayLimits, Reservation
from protocol.wire import Error, ErrorCode, Message

log = logging.getLogger(__name__)

__all__ = [
    "ConnectionInfo",
    "ControlSink",
    "Dial",
    "GetTransportHandle",
    "QuicStack",
    "ReachResult",
    "Transport",
    "TransportBusy",
    "TransportConfig",
    "TransportHandle",
    "TransportStats",
]


@dataclass(frozen=True, slots=True)
class Dial(Event):
    """Connect to ``addr`` (a multiaddr); failures are logged. (``TransportHandle.dial``
    returns a future instead.)"""

    addr: str
    expected_peer_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class GetTransportHandle:
    """Ask: the thread-safe ``TransportHandle``."""


class TransportHandle:
    """Thread-safe remote calls and inspection; every method may be called from any thread.

    The queries that must ask the loop (``connections``, ``stats``, ``peer_address``
    and the ``relay_*`` calls) raise ``TransportBusy`` when it does not answer in time
    and ``TransportClosed`` once it is stopped; ``connected_peers`` never waits."""

    def __init__(self, endpoint: QuicEndpoint) -> None:
        self._endpoint = endpoint

    @property
    def peer_id(self) -> bytes:
        return self._endpoint.identity.peer_id

    @property
    def stack(self) -> str:
        return self._endpoint.stack

    @property
    def local_address(self) -> tuple[str, int]:
        return self._endpoint.local_address

    @property
    def certificate_sha256(self) -> bytes:
        """SHA-256 of this process's TLS certificate (what dialling peers must see)."""
        return self._endpoint.certificate.sha256

    def request(
        self,
        peer_id: bytes,
        message: Message,
        timeout: float | None = None,
        addrs: Sequence[str] = (),
    ) -> pykka.Future[Message]:
        """Send ``message`` to the peer; the future gets its reply message.

        Uses the open connection to the peer, else dials ``addrs`` or the addresses
        learnt from earlier connections. At most ``max_in_flight_per_peer`` requests
        are in flight per peer; the rest wait (their deadline keeps running).
        """
        return self._endpoint.request(peer_id, message, timeout, addrs)

    def dial(
        self,
        addr: str | Multiaddr | tuple[str, int],
        expected_peer_id: bytes | None = None,
        timeout: float | None = None,
        how: How = How.DIRECT,
    ) -> pykka.Future[bytes]:
        """Connect and authenticate; the future gets the peer's PeerId."""
        return self._endpoint.dial(addr, expected_peer_id, timeout, how)

    # NAT traversal: the NatTraverser's levers (see QuicEndpoint for each)

    def dial_circuit(
        self, relay_id: bytes, circuit: int, expected_peer_id: bytes, timeout: float | None = None
    ) -> pykka.Future[bytes]:
        return self._endpoint.dial_circuit(relay_id, circuit, expected_peer_id, timeout)

    def accept_circuit(self, relay_id: bytes, circuit: int) -> None:
        self._endpoint.accept_circuit(relay_id, circuit)

    def send_openers(self, addr: tuple[str, int]) -> None:
        self._endpoint.send_openers(addr)

    def expect_punch(self, addr: tuple[str, int]) -> None:
        self._endpoint.expect_punch(addr)

    def peer_address(self, peer_id: bytes) -> tuple[str, int] | None:
        return self._endpoint.peer_address(peer_id)

    def pin(self, peer_id: bytes, pinned: bool = True) -> None:
        self._endpoint.pin(peer_id, pinned)

    def announced_addrs(self) -> list[str]:
        return self._endpoint.announced_addrs()

    def set_announced(self, addrs: Sequence[str] | None) -> None:
        self._endpoint.set_announced(addrs)

    def reach(self, peer_id: bytes, addrs: Sequence[str] = ()) -> pykka.Future[ReachResult]:
        """Reach the peer through the one dial cascade (direct, then a hole punch, then a
        relay, with the step timeouts of ``protocol.nat``); the future gets how it went."""
        return self._endpoint.reach(peer_id, addrs)

    def set_cascade(
        self, timeouts: CascadeTimeouts | None = None, punch: bool | None = None
    ) -> None:
        """The cascade's step timeouts, and whether it tries hole punching."""
        self._endpoint.set_cascade(timeouts, punch)

    def relay_reserve(self, client: bytes) -> Reservation | Refused:
        return self._endpoint.relay_reserve(client)

    def relay_open(self, initiator: bytes, target: bytes) -> Circuit | Refused:
        return self._endpoint.relay_open(initiator, target)

    def relay_close(self, circuit_id: int) -> None:
        self._endpoint.relay_close(circuit_id)

    @property
    def relay_limits(self) -> RelayLimits:
        return self._endpoint.config.relay_limits

    def relay_status(self) -> dict[str, object]:
        return self._endpoint.relay_status()

    def listen_addrs(self) -> list[str]:
        """``/ip4/H/udp/P/quic-v1/p2p/<peer id>`` of this node."""
        return self._endpoint.listen_addrs()

    def connections(self) -> list[ConnectionInfo]:
        return self._endpoint.connections()

    def connected_peers(self) -> list[bytes]:
        return self._endpoint.connected_peers()

    def stats(self) -> TransportStats:
        return self._endpoint.counters()

    def disconnect(self, peer_id: bytes) -> None:
        self._endpoint.disconnect(peer_id)


def refuse_all(request: InboundRequest) -> None:
    """The default ``dispatch``: every request other than Ping is unsupported."""
    request.reply(Error(ErrorCode.UNSUPPORTED, f"{type(request.message).__name__} not served"))


class Transport(NodeActor):
    name = "Transport"

    def __init__(
        self,
        identity: Identity,
        handshake: pykka.ActorRef[Any],
        config: TransportConfig | None = None,
        *,
        dispatch: Dispatch = refuse_all,
        on_peer_connected: Callable[[PeerConnected], None] | None = None,
        on_peer_disconnected: Callable[[PeerDisconnected], None] | None = None,
        on_control: ControlSink | None = None,
    ) -> None:
        super().__init__()
        self.config = config or TransportConfig()
        self._on_peer_connected = on_peer_connected
        self._on_peer_disconnected = on_peer_disconnected
        self.endpoint = QuicEndpoint(
            identity,
            handshake,
            self.config,
            dispatch=dispatch,
            on_event=self._from_loop,
            on_control=on_control,
        )
        self.endpoint.start()  # binds the socket: a bad host/port raises here
        self.handle = TransportHandle(self.endpoint)
        log.info("listening on %s (%s)", ", ".join(self.endpoint.listen_addrs()), self.config.quic)

    @staticmethod
    def handle_of(ref: pykka.ActorRef[Any], timeout: float = 5.0) -> TransportHandle:
        handle = ref.ask(GetTransportHandle(), timeout=timeout)
        assert isinstance(handle, TransportHandle)
        return handle

    def _from_loop(self, event: PeerConnected | PeerDisconnected) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(event)

    def on_receive(self, message: Any) -> Any:
        match message:
            case PeerConnected():
                if self._on_peer_connected is not None:
                    self._on_peer_connected(message)
                return None
            case PeerDisconnected():
                if self._on_peer_disconnected is not None:
                    self._on_peer_disconnected(message)
                return None
            case Dial(addr=addr, expected_peer_id=expected):
                self.endpoint.dial(addr, expected)  # the endpoint logs a failure
                return None
            case GetTransportHandle():
                return self.handle
            case StatusQuery():
                return self._status()
        return super().on_receive(message)

    def _status(self) -> dict[str, Any]:
        return {
            "listen_addrs": self.endpoint.listen_addrs(),
            "quic": self.config.quic,
            "connections": [msgspec.structs.asdict(c) for c in self.endpoint.connections()],
            "transport": msgspec.structs.asdict(self.endpoint.counters()),
        }

    def on_stop(self) -> None:
        self.endpoint.close()

    def on_failure(self, *_exc_info: Any) -> None:
        self.endpoint.close()
