"""An in-memory network of transport cores with a fake clock.

Each ``CoreNode`` is a ``TransportCore`` plus what the shell and the Handshake actor
would do around it, run synchronously: its datagrams go into the ``CoreNet``'s wire
(with latency, and optionally loss, jitter that reorders, and nodes cut off), its
handshake messages drive a ``protocol.handshake.IdentityHandshake`` at once, its
inbound requests are answered by a handler. Time moves only when the net is idle:
to the next delivery or the next core deadline. Nothing here reads a real clock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors._quic.backend import SocketAddress
from actors._quic.core import TransportCore
from actors._quic.model import (
    ControlReceived,
    CoreEvent,
    DialDone,
    ReachDone,
    ReachResult,
    RequestDone,
    RequestReceived,
    SendOpeners,
    ToHandshake,
    TransportConfig,
)
from actors.handshake import start_handshake
from actors.messages import (
    BeginHandshake,
    HandshakeClosed,
    HandshakeFrame,
    HandshakeTimer,
    PeerConnected,
    PeerDisconnected,
)
from protocol.handshake import (
    Accepted,
    IdentityHandshake,
    Output,
    Rejected,
    ReplayCache,
    Send,
)
from protocol.identity import Identity
from protocol.multiaddr import format_multiaddr, parse_multiaddr
from protocol.relay import Refused
from protocol.wire import (
    Error,
    ErrorCode,
    FindNode,
    Message,
    Nodes,
    Ok,
    PunchNotify,
    PunchReply,
    PunchRequest,
    RelayCircuit,
    RelayConnect,
    RelayIncoming,
    encode_frame,
)

Handler = Callable[["CoreNode", RequestReceived], Message | None]


def answer_find_node(_node: CoreNode, request: RequestReceived) -> Message | None:
    """The default handler: ``FindNode`` gets an empty ``Nodes``, the rest an Error."""
    if isinstance(request.message, FindNode):
        return Nodes([])
    return Error(ErrorCode.UNSUPPORTED, type(request.message).__name__)


def serve_as_relay(node: CoreNode, request: RequestReceived) -> Message | None:
    """A public node's NatTraverser, in short: coordinates punches, opens circuits."""
    message, now = request.message, node.net.now
    match message:
        case RelayConnect(target=target):
            circuit = node.core.relay_open(request.peer_id, target, now)
            if isinstance(circuit, Refused):
                return Error(ErrorCode.REFUSED, circuit.reason)
            incoming = RelayIncoming(request.peer_id, circuit.id)
            answer = RelayCircuit(circuit.id)
            node.ask(target, incoming, lambda done: node.reply(request, _forwarded(done, answer)))
            return None
        case PunchRequest(target=target):
            initiator_addr = node.core.peer_address(request.peer_id)
            target_addr = node.core.peer_address(target)
            if initiator_addr is None or target_addr is None:
                return Error(ErrorCode.UNREACHABLE, "not connected directly to both of you")
            notify = PunchNotify(request.peer_id, format_multiaddr(*initiator_addr))
            reply = PunchReply(format_multiaddr(*target_addr, target))
            node.ask(target, notify, lambda done: node.reply(request, _forwarded(done, reply)))
            return None
    return answer_find_node(node, request)


def serve_behind_nat(node: CoreNode, request: RequestReceived) -> Message | None:
    """A private node's NatTraverser, in short: takes circuits, opens its NAT to punch."""
    message, now = request.message, node.net.now
    match message:
        case RelayIncoming(circuit=circuit):
            node.core.accept_circuit(request.peer_id, circuit)
            return Ok()
        case PunchNotify(addr=addr):
            initiator = parse_multiaddr(addr).socket_address
            node.core.expect_punch(initiator, now)
            node.net.open_nat(node.addr, initiator)  # the openers leave our router
            return Ok()
    return answer_find_node(node, request)


def _forwarded(done: RequestDone, answer: Message) -> Message:
    if isinstance(done.reply, Ok):
        return answer
    return Error(ErrorCode.UNREACHABLE, f"the peer did not answer: {done.error or done.reply}")


@dataclass
class CoreNode:
    net: CoreNet
    addr: SocketAddress
    identity: Identity
    config: TransportConfig
    handler: Handler = answer_find_node
    core: TransportCore = field(init=False)
    done: dict[int, RequestDone] = field(default_factory=dict)
    dialled: dict[int, DialDone] = field(default_factory=dict)
    received: list[RequestReceived] = field(default_factory=list)
    held: list[RequestReceived] = field(default_factory=list)
    then: dict[int, Callable[[RequestDone], None]] = field(default_factory=dict)
    """What to do with the outcome of a request (``ask``)."""
    """Requests the handler left unanswered (it returned None)."""
    peer_events: list[PeerConnected | PeerDisconnected] = field(default_factory=list)
    reached: dict[int, ReachResult] = field(default_factory=dict)
    openers: list[SocketAddress] = field(default_factory=list)
    _machines: dict[int, IdentityHandshake] = field(default_factory=dict)
    _replays: ReplayCache = field(default_factory=ReplayCache)
    _from_handshake: list[tuple[int, bytes | Accepted | Rejected]] = field(default_factory=list)

    def __post_init__(self) -> None:
        listen = (format_multiaddr(self.addr[0], self.addr[1], self.peer_id),)
        self.core = TransportCore(self.identity, self.config, sink=self, listen_addrs=listen)

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    @property
    def multiaddr(self) -> str:
        return format_multiaddr(self.addr[0], self.addr[1], self.peer_id)

    # -- calls a test makes (the shell's public API, without threads) ----------------------

    def request(self, peer: CoreNode | bytes, message: Message, timeout: float = 30.0) -> int:
        peer_id = peer.peer_id if isinstance(peer, CoreNode) else peer
        addrs = [peer.multiaddr] if isinstance(peer, CoreNode) else []
        return self.core.request(peer_id, message, self.net.now, timeout, addrs)

    def dial(self, peer: CoreNode, timeout: float | None = None) -> int:
        return self.core.dial(peer.multiaddr, self.net.now, timeout=timeout)

    def ask(self, peer_id: bytes, message: Message, then: Callable[[RequestDone], None]) -> None:
        """A request whose outcome goes to ``then`` (as an actor's ``tell_when_done``)."""
        self.then[self.core.request(peer_id, message, self.net.now, 5.0)] = then

    def reply(self, request: RequestReceived, message: Message) -> None:
        self.core.reply(request.conn_id, request.stream_id, message, self.net.now)

    def ready_connections(self) -> int:
        return len(self.core.connections(self.net.now))

    # -- the Handshake actor's sink ----------------------------------------------------------

    def handshake_send(self, conn_id: int, frame: bytes) -> None:
        self._from_handshake.append((conn_id, frame))

    def handshake_finished(self, conn_id: int, outcome: Accepted | Rejected) -> None:
        self._from_handshake.append((conn_id, outcome))

    # -- the shell's part ---------------------------------------------------------------------

    def pump(self) -> bool:
        """Carry out what the core returned; True if anything happened."""
        now = self.net.now
        busy = False
        while True:
            for conn_id, item in self._from_handshake:
                if isinstance(item, bytes):
                    self.core.handshake_send(conn_id, item, now)
                else:
                    self.core.handshake_finished(conn_id, item, now)
            self._from_handshake.clear()
            events = False
            while (event := self.core.next_event()) is not None:
                self._carry_out(event)
                events = busy = True
            for data, target in self.core.datagrams_to_send(now):
                self.net.send(self.addr, target, data)
                busy = True
            if not events and not self._from_handshake and not self.core.has_work():
                return busy

    def _carry_out(self, event: CoreEvent) -> None:
        match event:
            case RequestDone():
                self.done[event.request_id] = event
                then = self.then.pop(event.request_id, None)
                if then is not None:
                    then(event)
            case DialDone():
                self.dialled[event.dial_id] = event
            case RequestReceived():
                self.received.append(event)
                answer = self.handler(self, event)
                if answer is None:
                    self.held.append(event)
                else:
                    self.reply(event, answer)
            case ToHandshake(message=message):
                self._handshake(message)
            case PeerConnected() | PeerDisconnected():
                self.peer_events.append(event)
            case ReachDone(reach_id=reach_id, result=result):
                self.reached[reach_id] = result
            case SendOpeners(addr=addr):
                self.openers.append(addr)
                self.net.open_nat(self.addr, addr)
            case ControlReceived():
                pass

    def _handshake(
        self, message: BeginHandshake | HandshakeFrame | HandshakeTimer | HandshakeClosed
    ) -> None:
        """What the Handshake actor does, synchronously."""
        now = self.net.now
        match message:
            case BeginHandshake():
                machine, outputs = start_handshake(message, self.identity, self._replays, now)
                self._machines[message.conn_id] = machine
                self._apply(message.conn_id, outputs)
            case HandshakeFrame(conn_id=conn_id, message=frame):
                machine_or_none = self._machines.get(conn_id)
                if machine_or_none is not None:
                    self._apply(conn_id, machine_or_none.receive(frame, now))
            case HandshakeTimer(conn_id=conn_id):
                machine_or_none = self._machines.get(conn_id)
                if machine_or_none is not None:
                    self._apply(conn_id, machine_or_none.handle_timer(now))
            case HandshakeClosed(conn_id=conn_id):
                self._machines.pop(conn_id, None)

    def _apply(self, conn_id: int, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self.handshake_send(conn_id, encode_frame(output.message))
            else:
                self.handshake_finished(conn_id, output)
        machine = self._machines.get(conn_id)
        if machine is not None and machine.done:
            del self._machines[conn_id]


@dataclass
class CoreNet:
    """The wire between ``CoreNode``s and the one clock."""

    now: float = 1000.0
    latency: float = 0.005
    jitter: float = 0.0
    """Up to this much extra delay per datagram, at random: datagrams overtake each other."""
    loss: float = 0.0
    """Probability that a datagram is lost."""
    seed: int = 1
    nodes: dict[SocketAddress, CoreNode] = field(default_factory=dict)
    cut: set[SocketAddress] = field(default_factory=set)
    """Addresses whose datagrams (either way) are lost: a peer that vanished."""
    behind_nat: set[SocketAddress] = field(default_factory=set)
    """Nodes behind a NAT with address-and-port-dependent filtering: a datagram reaches
    one only from an address it has sent to (or opened its NAT toward)."""
    _nat_open: dict[SocketAddress, set[SocketAddress]] = field(default_factory=dict)
    delivered: int = 0
    lost: int = 0
    _wire: list[tuple[float, int, SocketAddress, SocketAddress, bytes]] = field(
        default_factory=list
    )
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _rng: random.Random = field(init=False)
    _hosts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, handler: Handler = answer_find_node, **config: Any) -> CoreNode:
        host = f"198.51.100.{next(self._hosts)}"
        return self.add_at((host, 4433), handler, **config)

    def add_at(
        self,
        addr: SocketAddress,
        handler: Handler = answer_find_node,
        identity: Identity | None = None,
        **config: Any,
    ) -> CoreNode:
        settings = TransportConfig(host=addr[0], port=addr[1], **config)
        node = CoreNode(self, addr, identity or Identity.generate(), settings, handler)
        self.nodes[addr] = node
        return node

    def remove(self, node: CoreNode) -> None:
        """The node's process is gone (nothing answers at its address any more)."""
        if self.nodes.get(node.addr) is node:
            del self.nodes[node.addr]

    def open_nat(self, inside: SocketAddress, toward: SocketAddress) -> None:
        self._nat_open.setdefault(inside, set()).add(toward)

    def send(self, source: SocketAddress, target: SocketAddress, data: bytes) -> None:
        if source in self.behind_nat:
            self.open_nat(source, target)
        if source in self.cut or target in self.cut or self._rng.random() < self.loss:
            self.lost += 1
            return
        at = self.now + self.latency + self._rng.random() * self.jitter
        heapq.heappush(self._wire, (at, next(self._seq), source, target, data))

    def settle(self) -> None:
        """Let every node carry out what it can at ``now``."""
        while True:
            pumped = [node.pump() for node in list(self.nodes.values())]  # every node
            if not any(pumped):
                return

    def step(self) -> bool:
        """Advance to the next delivery or deadline and handle it; False if none."""
        self.settle()
        deadlines = [t for n in self.nodes.values() if (t := n.core.get_timer()) is not None]
        if self._wire:
            deadlines.append(self._wire[0][0])
        if not deadlines:
            return False
        self.now = max(self.now, min(deadlines))
        arrived: dict[SocketAddress, list[tuple[bytes, SocketAddress]]] = {}
        while self._wire and self._wire[0][0] <= self.now:
            _at, _seq, source, target, data = heapq.heappop(self._wire)
            filtered = target in self.behind_nat and source not in self._nat_open.get(target, ())
            if target in self.cut or target not in self.nodes or filtered:
                self.lost += 1
                continue
            arrived.setdefault(target, []).append((data, source))
            self.delivered += 1
        for target, datagrams in arrived.items():
            self.nodes[target].core.receive_datagrams(datagrams, self.now)
        for node in list(self.nodes.values()):
            timer = node.core.get_timer()
            if timer is not None and timer <= self.now:
                node.core.handle_timer(self.now)
        self.settle()
        return True

    def run_until(self, condition: Callable[[], bool], limit: float = 120.0) -> bool:
        """Step until ``condition()`` holds or ``limit`` seconds of fake time passed."""
        end = self.now + limit
        while not condition():
            if self.now > end or not self.step():
                return condition()
        return True

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end and self.step():
            pass
