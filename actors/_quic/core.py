"""TransportCore: the transport's rules as a sans-IO state machine (after aioquic).

The core holds every QUIC connection of a node and the rules around them: one
connection per pair of peers, request and reply multiplexing (one request per
bidirectional stream, deadlines, cancellation), per-peer queues, dials to a peer's
known addresses and retries, keep-alive and liveness probes, relay circuits (inner
connections carried in DATAGRAM frames of a connection to a relay) and the
half-open admission rules. It owns no socket, no thread and no clock:

- inputs: ``receive_datagrams(datagrams, now)``, ``request(peer, message, now)``,
  ``dial(addr, now)``, ``reply(conn_id, stream_id, message, now)``, the Handshake
  actor's answers (``handshake_send``, ``handshake_finished``), ICMP errors
  (``port_unreachable``, ``no_route``) and ``handle_timer(now)``;
- outputs: ``datagrams_to_send(now)`` (which also handles what the inputs left to
  do), ``next_event()`` (``actors._quic.model.CoreEvent``: request and dial
  outcomes, inbound requests, messages for the Handshake actor, peer events) and
  ``get_timer()``, the one next deadline.

Everything happens in calls; effects are returned values, never calls into actors.
The rules are split by concern: connections and their lifecycle here; streams,
requests and per-peer queues in ``actors._quic.streams``; relay circuits in
``actors._quic.circuits``; the dial cascade in ``actors._quic.reach``; the records
in ``actors._quic.state``.
The shell (``actors._quic.endpoint``) owns the socket, ICMP errors, TTL-limited
openers and one timer, and feeds the core on its loop thread. Tests pump
datagrams between cores in memory with a fake clock.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from actors._quic import circuits, streams
from actors._quic.admission import (
    RETRY_CID_BYTES,
    HalfOpenAdmission,
    HalfOpenLimits,
    RetryTokens,
    Verdict,
    parse_initial,
    retry_packet,
)
from actors._quic.backend import (
    POST_QUANTUM_GROUPS,
    RELAYED_DATAGRAM_SIZE,
    ConnectionIdIssued,
    ConnectionIdRetired,
    DatagramReceived,
    HandshakeDone,
    PingAcknowledged,
    QuicBackend,
    QuicConnectionAdapter,
    QuicSettings,
    SocketAddress,
    StopSending,
    StreamData,
    StreamReset,
    Terminated,
    TlsCertificate,
    group_name,
    make_backend,
)
from actors._quic.model import (
    ConnectionInfo,
    CoreEvent,
    DialDone,
    HandshakeMessage,
    ReachDone,
    ReachResult,
    RequestDone,
    SendOpeners,
    ToHandshake,
    TransportConfig,
    TransportStats,
)
from actors._quic.reach import Answer, ReachPlanner
from actors._quic.state import (
    CLOSE_LINGER,
    DRAINING_BACKSTOP,
    EXPECTED_PUNCH_SECONDS,
    HANDSHAKE_BACKSTOP,
    ICMP_MIN_SILENCE,
    SERVICE_ROUNDS,
    VIRTUAL_NET,
    _addresses,
    _Conn,
    _destination_cid,
    _dial_target,
    _is_closed,
    _Outbound,
    _Peer,
    _remember_addr,
    _short,
)
from actors._quic.timers import Timer, Timers
from actors.messages import (
    BeginHandshake,
    HandshakeClosed,
    HandshakeFrame,
    HandshakeSink,
    HandshakeTimer,
    PeerConnected,
    PeerDisconnected,
)
from protocol.errors import (
    AppErrorCode,
    ConnectionLost,
    PeerRejected,
    PeerUnreachable,
    TransportClosed,
    TransportError,
)
from protocol.handshake import Accepted, Rejected, Role, hello_message
from protocol.identity import Identity
from protocol.multiaddr import (
    Multiaddr,
    MultiaddrError,
    format_multiaddr,
    split_addrs,
)
from protocol.nat import (
    CascadeTimeouts,
    How,
    is_control_datagram,
)
from protocol.relay import Circuit, Refused, RelayTable, Reservation
from protocol.wire import (
    HANDSHAKE_NONCE_BYTES,
    INSTANCE_ID_BYTES,
    Announce,
    Error,
    ErrorCode,
    FrameDecoder,
    Message,
    WireError,
    encode_frame,
)

log = logging.getLogger("actors.transport")


class TransportCore:
    """The node's QUIC connections and the rules around them; see the module docstring."""

    def __init__(
        self,
        identity: Identity,
        config: TransportConfig,
        *,
        sink: HandshakeSink,
        certificate: TlsCertificate | None = None,
        instance: bytes | None = None,
        listen_addrs: Sequence[str] = (),
    ) -> None:
        """``sink`` goes into the Handshake actor's messages (it answers there)."""
        self.identity = identity
        self.own_id = identity.peer_id
        self.config = config
        self._sink = sink
        self.planner = ReachPlanner(self)
        self._answers: dict[int, Answer] = {}
        """The core's own requests (a cascade's questions to relays): who gets the reply."""
        self._deferred: list[Callable[[], object]] = []
        self.certificate = certificate or TlsCertificate.generate()
        self._backend: QuicBackend = make_backend(
            config.quic,
            self.certificate,
            QuicSettings(
                idle_timeout=config.idle_timeout, max_datagram_size=config.max_datagram_size
            ),
        )
        self._relayed_backend: QuicBackend | None = None
        self.instance = instance or os.urandom(INSTANCE_ID_BYTES)
        self.listen_addrs: tuple[str, ...] = tuple(listen_addrs)
        self._announced: tuple[str, ...] | None = None
        self._now = 0.0
        self._closed = False
        self._timers = Timers()
        self._outbox: list[tuple[bytes, SocketAddress]] = []
        self._events: collections.deque[CoreEvent] = collections.deque()
        self._op_ids = itertools.count(1)
        self.relay = RelayTable(config.relay_limits)
        self._circuit_addr: dict[tuple[bytes, int], SocketAddress] = {}
        self._circuit_of: dict[SocketAddress, tuple[bytes, int]] = {}
        self._virtual_ids = itertools.count(1)
        self._expected_punches: dict[SocketAddress, float] = {}
        self._conns: dict[int, _Conn] = {}
        self._cids: dict[bytes, _Conn] = {}
        self._peers: dict[bytes, _Peer] = {}
        self._ids = itertools.count(1)
        self._ping_uids = itertools.count(1)
        self._dirty: dict[_Conn, None] = {}
        self._lingering: dict[bytes, tuple[QuicConnectionAdapter, float]] = {}
        self._linger_timer: Timer | None = None
        self._admission = HalfOpenAdmission(
            HalfOpenLimits(
                per_source=config.half_open_per_source,
                total=config.half_open_total,
                retry_above=config.half_open_retry_above,
            )
        )
        self._retry_tokens = RetryTokens()
        self._stats = TransportStats()

    @property
    def stats(self) -> TransportStats:
        """The counters (the cascade figures copied in)."""
        figures = self.planner.figures
        stats = self._stats
        stats.cascades = figures["cascades"]
        stats.cascades_direct = figures["direct"]
        stats.cascades_punched = figures["punched"]
        stats.cascades_relayed = figures["relayed"]
        stats.cascades_failed = figures["failed"]
        return stats

    # -- inputs ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: SocketAddress, now: float) -> None:
        self.receive_datagrams([(data, addr)], now)

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes, SocketAddress]], now: float
    ) -> None:
        """Datagrams from the socket, in order of arrival; consecutive datagrams of one
        connection go to its stack as one batch (qh3 then crosses into its native core
        once). Nothing is sent before ``datagrams_to_send``."""
        self._now = now
        batch: list[bytes] = []
        batch_conn: _Conn | None = None
        batch_addr: SocketAddress = ("", 0)
        for data, addr in datagrams:
            self.stats.datagrams_received += 1
            if is_control_datagram(data):
                circuits.on_control_datagram(self, data, addr)
                continue
            conn = self._route(data, addr, now)
            if conn is None:
                continue
            if conn is not batch_conn or addr != batch_addr:
                if batch_conn is not None:
                    self._deliver(batch_conn, batch_addr, batch, now)
                batch, batch_conn, batch_addr = [], conn, addr
            batch.append(data)
        if batch_conn is not None:
            self._deliver(batch_conn, batch_addr, batch, now)

    def request(
        self,
        peer_id: bytes,
        message: Message | bytes,
        now: float,
        timeout: float | None = None,
        addrs: Sequence[str] = (),
        *,
        answer: Answer | None = None,
    ) -> int:
        """Send ``message`` (or an encoded frame) to ``peer_id``; returns the request id
        that its ``RequestDone`` event carries (the reply, or a ``TransportError``).

        ``addrs`` are multiaddrs to dial if no connection to the peer is open. The
        deadline (default ``request_timeout``) covers queueing, dialling and the reply.
        ``answer`` (the core's own requests): called instead of the event.
        """
        self._now = now
        request_id = next(self._op_ids)
        if answer is not None:
            self._answers[request_id] = answer
        try:
            frame = message if isinstance(message, bytes) else encode_frame(message)
        except WireError as exc:
            self._request_done(request_id, None, exc)
            return request_id
        if peer_id == self.identity.peer_id:
            error = PeerUnreachable("a node does not send requests to itself")
            self._request_done(request_id, None, error)
            return request_id
        deadline = now + (self.config.request_timeout if timeout is None else timeout)
        hints, relayed = _addresses(addrs, peer_id)
        streams.submit(self, _Outbound(peer_id, frame, request_id, deadline), hints, relayed)
        return request_id

    def dial(
        self,
        addr: str | Multiaddr | SocketAddress,
        now: float,
        expected_peer_id: bytes | None = None,
        timeout: float | None = None,
        how: How = How.DIRECT,
    ) -> int:
        """Connect and run the identity handshake; returns the dial id that its
        ``DialDone`` event carries (the peer's PeerId, or a ``TransportError``).

        A multiaddr with ``/p2p/<id>`` sets the expected PeerId (unless given). ``how``
        is recorded on the connection (a punched dial's address is not remembered as
        one to dial again).
        """
        self._now = now
        dial_id = next(self._op_ids)
        try:
            target, expected = _dial_target(addr, expected_peer_id)
        except (MultiaddrError, ValueError) as exc:
            error = PeerUnreachable(f"cannot dial {addr!r}: {exc}")
            self._dial_done(dial_id, error=error)
            return dial_id
        wait = self.config.handshake_timeout if timeout is None else timeout
        self._dial(target, expected, dial_id, wait, how)
        return dial_id

    def dial_circuit(
        self,
        relay_id: bytes,
        circuit: int,
        expected_peer_id: bytes,
        now: float,
        timeout: float | None = None,
    ) -> int:
        """Connect to ``expected_peer_id`` through circuit ``circuit`` of relay
        ``relay_id`` (a dial id, as ``dial``)."""
        self._now = now
        dial_id = next(self._op_ids)
        wait = self.config.handshake_timeout if timeout is None else timeout
        circuits.dial_circuit(self, relay_id, circuit, expected_peer_id, dial_id, wait)
        return dial_id

    def reply(self, conn_id: int, stream_id: int, message: Message | bytes, now: float) -> None:
        """Answer the ``RequestReceived`` of ``(conn_id, stream_id)`` (a message or an
        encoded frame); ignored if the requester gave up meanwhile."""
        self._now = now
        if isinstance(message, bytes):
            frame = message
        else:
            try:
                frame = encode_frame(message)
            except WireError as exc:
                frame = encode_frame(Error(ErrorCode.INTERNAL, f"reply cannot be encoded: {exc}"))
        streams.send_reply(self, conn_id, stream_id, frame)

    def handshake_send(self, conn_id: int, frame: bytes, now: float) -> None:
        """The Handshake actor's frame for the peer of ``conn_id``."""
        self._now = now
        self._handshake_send(conn_id, frame)

    def handshake_finished(self, conn_id: int, outcome: Accepted | Rejected, now: float) -> None:
        """The Handshake actor's verdict on ``conn_id``."""
        self._now = now
        self._handshake_finished(conn_id, outcome)

    def disconnect(self, peer_id: bytes, now: float) -> None:
        """Close every connection to ``peer_id``."""
        self._now = now
        for conn in [c for c in self._conns.values() if c.peer_id == peer_id]:
            self._close(conn, AppErrorCode.NO_ERROR, "disconnect requested", None)

    def port_unreachable(self, addr: SocketAddress, now: float) -> None:
        """ICMP port unreachable from ``addr`` (IP_RECVERR): a dead peer, if it went quiet."""
        self._now = now
        self._port_unreachable(addr)

    def no_route(self, addr: SocketAddress, now: float) -> None:
        """ICMP destination unreachable (not a port): dials to ``addr`` fail now."""
        self._now = now
        self._no_route(addr)

    def close(self, now: float) -> None:
        """Close every connection (telling peers) and fail what is pending."""
        self._now = now
        self._closed = True
        self.planner.close(TransportClosed("stopping"), now)
        for conn in list(self._conns.values()):
            self._close(conn, AppErrorCode.SHUTDOWN, "node stopping", TransportClosed("stopping"))
        for peer in self._peers.values():
            while peer.queue:
                streams.complete(self, peer.queue.popleft(), error=TransportClosed("stopping"))
        self._lingering.clear()

    # -- NAT traversal inputs --------------------------------------------------------------

    def announced_addrs(self) -> list[str]:
        """What this node tells peers it can be reached at (its Hello and ``Announce``)."""
        announced = self._announced
        return list(self.listen_addrs if announced is None else announced)

    def set_announced(self, addrs: Sequence[str] | None) -> None:
        """Announce ``addrs`` from now on (None: the listen addresses again)."""
        self._announced = None if addrs is None else tuple(addrs)

    def expect_punch(self, addr: SocketAddress, now: float) -> None:
        """A connection arriving from ``addr`` soon is a punched one (for ``how``)."""
        self._now = now
        for stale in [a for a, until in self._expected_punches.items() if until < now]:
            del self._expected_punches[stale]
        self._expected_punches[addr] = now + EXPECTED_PUNCH_SECONDS

    def pin(self, peer_id: bytes, pinned: bool = True) -> None:
        """Keep the connection to ``peer_id`` alive even when idle (this node's relay)."""
        peer = self._peers.get(peer_id)
        if peer is not None and peer.conn is not None:
            peer.conn.pinned = pinned

    def accept_circuit(self, relay_id: bytes, circuit: int) -> None:
        """A peer will connect to this node through circuit ``circuit`` of ``relay_id``."""
        circuits.circuit_address(self, relay_id, circuit)

    def reach(self, peer_id: bytes, addrs: Sequence[str], now: float) -> int:
        """Reach the peer through the dial cascade (direct, punch, relay) over ``addrs``
        (multiaddrs, direct and relayed); returns the reach id that its ``ReachDone``
        event carries. Joins the peer's running cascade; answers at once if connected."""
        self._now = now
        reach_id = next(self._op_ids)
        peer = self._peer(peer_id) if peer_id != self.own_id else None
        if peer is None:
            result = ReachResult(peer_id, False, None, (), 0.0, "that is this node")
            self._events.append(ReachDone(reach_id, result))
            return reach_id
        if peer.conn is not None and peer.conn.state == "ready":
            result = ReachResult(peer_id, True, str(peer.conn.how), (), 0.0)
            self._events.append(ReachDone(reach_id, result))
            return reach_id
        direct, relayed = split_addrs(addrs, peer_id)
        self.planner.start(
            peer_id,
            [str(m) for m in direct],
            [str(m) for m in relayed],
            now,
            counted=True,
            reach_id=reach_id,
        )
        return reach_id

    def set_cascade(
        self, timeouts: CascadeTimeouts | None = None, punch: bool | None = None
    ) -> None:
        """The cascade's step timeouts, and whether to try hole punching (not behind a
        symmetric NAT)."""
        if timeouts is not None:
            self.planner.timeouts = timeouts
        if punch is not None:
            self.planner.punch = punch

    def relay_reserve(self, client: bytes, now: float) -> Reservation | Refused:
        return self.relay.reserve(client, now)

    def relay_open(self, initiator: bytes, target: bytes, now: float) -> Circuit | Refused:
        peer = self._peers.get(target)
        if peer is None or peer.conn is None:
            return Refused("the peer is not connected to this relay")
        return self.relay.open(initiator, target, now)

    def relay_close(self, circuit_id: int) -> None:
        self.relay.close(circuit_id)

    def relay_status(self, now: float) -> dict[str, object]:
        return self.relay.status(now)

    # -- timers and outputs ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (None: nothing scheduled)."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Run the rules whose deadline is ``now`` or earlier."""
        self._now = now
        self._timers.run_due(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, SocketAddress]]:
        """Handle what the inputs left to do and return the datagrams to send."""
        self._now = now
        while True:
            while self._deferred:
                self._deferred.pop(0)()
            self._flush()
            if not self._deferred:
                break
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> CoreEvent | None:
        """The next event for the owner, or None. Call it after each input, before
        ``datagrams_to_send``: a reply given while carrying out ``RequestReceived`` then
        leaves in the datagram that acknowledges the request."""
        return self._events.popleft() if self._events else None

    def has_work(self) -> bool:
        """Datagrams, events or connections to service are waiting."""
        return bool(self._outbox or self._events or self._dirty or self._deferred)

    # -- queries ---------------------------------------------------------------------------

    def connected_peers(self) -> list[bytes]:
        return [p.peer_id for p in self._peers.values() if p.conn is not None]

    def peer_address(self, peer_id: bytes) -> SocketAddress | None:
        """The UDP address this node sees the peer at (None if not connected directly)."""
        peer = self._peers.get(peer_id)
        conn = None if peer is None else peer.conn
        if conn is None or conn.state != "ready" or conn.circuit is not None:
            return None
        return conn.addr

    # -- effects ---------------------------------------------------------------------------

    def _call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return self._timers.call_at(self._now + delay, callback, *args)

    def _dial_done(
        self, dial_id: int, peer_id: bytes | None = None, error: TransportError | None = None
    ) -> None:
        self._events.append(DialDone(dial_id, peer_id, error))

    def _request_done(
        self, request_id: int, reply: Message | None, error: Exception | None
    ) -> None:
        answer = self._answers.pop(request_id, None)
        if answer is None:
            self._events.append(RequestDone(request_id, reply, error))
        else:  # later, not inside the rule that finished the request
            self._deferred.append(lambda: answer(reply, error, self._now))

    # -- the dial cascade's steps (``ReachActions``, called by the planner) --------------

    def reach_dial(
        self, peer_id: bytes, addr: SocketAddress, timeout: float, how: How, token: tuple[int, int]
    ) -> None:
        peer = self._peer(peer_id)
        if self._closed:
            error = TransportClosed("the transport is closed")
            self._deferred.append(lambda: self.planner.step_failed(token, error, self._now))
            return
        if how is How.DIRECT:
            _remember_addr(peer, addr)
        if peer.conn is not None and peer.conn.state == "ready":
            how_now = peer.conn.how
            self._deferred.append(lambda: self.planner.connected(peer_id, how_now, self._now))
            return
        running = self._running_dial(addr, peer_id)
        if running is not None:
            running.reach = token  # a dial to that address is running: its end decides
            return
        conn = self._open(addr, peer_id, [], timeout, how)
        conn.reach = token

    def reach_ask(
        self, relay_id: bytes, message: Message, timeout: float, via: str, answer: Answer
    ) -> None:
        self.request(relay_id, message, self._now, timeout, [via], answer=answer)

    def reach_circuit(
        self, relay_id: bytes, circuit: int, peer_id: bytes, timeout: float, token: tuple[int, int]
    ) -> str | None:
        if self._closed:
            return "the transport is closed"
        relay = self._peers.get(relay_id)
        if relay is None or relay.conn is None or relay.conn.state != "ready":
            return "not connected to the relay"
        peer = self._peer(peer_id)
        if peer.conn is not None and peer.conn.state == "ready":
            how_now = peer.conn.how
            self._deferred.append(lambda: self.planner.connected(peer_id, how_now, self._now))
            return None
        addr = circuits.circuit_address(self, relay_id, circuit)
        conn = self._open(addr, peer_id, [], timeout, how=How.RELAYED)
        conn.circuit = (relay_id, circuit)
        conn.reach = token
        return None

    def reach_openers(self, addr: SocketAddress) -> None:
        self._events.append(SendOpeners(addr))

    def reach_finished(
        self, peer_id: bytes, result: ReachResult, failure: TransportError | None
    ) -> None:
        for waiters, done in self.planner.finished:
            for reach_id in waiters:
                self._events.append(ReachDone(reach_id, done))
        self.planner.finished.clear()
        peer = self._peers.get(peer_id)
        if peer is None:
            return
        if failure is None or (peer.conn is not None and peer.conn.state == "ready"):
            peer.tried.clear()
            streams.pump(self, peer)
            return
        peer.tried.update(a.via for a in result.attempts if a.step == "direct")
        known = [format_multiaddr(host, port, peer_id) for host, port in peer.addrs]
        untried = [a for a in known if a not in peer.tried]
        if untried and peer.queue and not self._closed:
            # addresses learnt while the cascade ran (a later request's, an Announce)
            self.planner.start(peer_id, untried, [], self._now, counted=False)
            return
        peer.tried.clear()
        while peer.queue:  # they waited for this cascade
            streams.complete(self, peer.queue.popleft(), error=failure)

    # -- datagrams in ------------------------------------------------------------
    def _route(self, data: bytes, addr: SocketAddress, now: float) -> _Conn | None:
        """The connection a datagram belongs to (new if it opens one); None if consumed
        or dropped here."""
        cid = _destination_cid(data)
        if cid is None:
            self.stats.datagrams_dropped += 1
            return None
        conn = self._cids.get(cid)
        if conn is not None:
            return conn
        if cid in self._lingering:
            self._linger_receive(cid, data, addr, now)
            return None
        conn = self._accept(data, cid, addr, now)
        if conn is None:
            self.stats.datagrams_dropped += 1
        return conn

    def _deliver(
        self, conn: _Conn, addr: SocketAddress, datagrams: list[bytes], now: float
    ) -> None:
        if conn.state == "closed":
            return
        try:
            conn.quic.receive_datagrams(datagrams, addr, now)
        except Exception:
            log.exception("QUIC stack failed on datagrams from %s:%d", *addr)
            self._stack_failed(conn)
            return
        if not conn.last_received and conn.role is Role.SERVER and conn.quic.close_event():
            # Stillborn: the datagram that made the connection is not the start of a
            # client's flight (say its first datagram was refused at the half-open cap
            # and this is the PING of a probe). Forget it without a word: the client's
            # next probe carries its ClientHello and gets a connection.
            self._abort(conn, "no ClientHello", PeerUnreachable("no ClientHello"))
            return
        if conn.state == "ready" and addr != conn.addr:
            log.info("peer %s moved from %s:%d to %s:%d", _short(conn.peer_id), *conn.addr, *addr)
        conn.addr = addr
        conn.last_received = now
        self._dirty[conn] = None
        try:  # requests and replies become events now, before anything is sent: a reply
            self._process_events(conn)  # the owner gives at once shares the ACK's datagram
        except Exception:
            log.exception("connection %d failed on its events", conn.id)
            self._stack_failed(conn)

    def _linger_receive(self, cid: bytes, data: bytes, addr: SocketAddress, now: float) -> None:
        quic, until = self._lingering[cid]
        if now > until:
            del self._lingering[cid]
            return
        try:
            quic.receive_datagram(data, addr, now)
            for datagram, target in quic.datagrams_to_send(now):
                self._sendto(datagram, target)
        except Exception:
            log.debug("closed connection failed on a late datagram", exc_info=True)

    def _accept(self, data: bytes, cid: bytes, addr: SocketAddress, now: float) -> _Conn | None:
        """A new inbound connection for a client Initial; None to drop the datagram.

        Unauthenticated work is bounded (``actors._quic.admission``): an Initial over
        the half-open caps is dropped before anything is allocated, and under
        pressure an unvalidated client gets a stateless Retry instead."""
        is_initial = len(data) >= 1200 and data[0] & 0xF0 == 0xC0  # long header, Initial
        if not is_initial or self._closed or len(self._conns) >= self.config.max_connections:
            return None
        header = parse_initial(data)
        if header is None:
            return None
        host = addr[0]
        admission = self._admission
        if admission.decide(host, validated=True) is Verdict.REFUSE:
            self.stats.half_open_refused += 1
            return None
        original, retry_cid = cid, None
        if header.token:
            checked = self._retry_tokens.check(addr, header.destination_cid, header.token, now)
            if checked is None:
                self.stats.retry_tokens_rejected += 1
            else:
                original, retry_cid = checked, header.destination_cid
        # a relay circuit cannot be spoofed (and a Retry through one only costs time)
        validated = retry_cid is not None or host.startswith(VIRTUAL_NET)
        if admission.decide(host, validated) is Verdict.RETRY:
            if header.token:  # a client answers one Retry only: this one is lost
                return None
            new_cid = os.urandom(RETRY_CID_BYTES)
            token = self._retry_tokens.mint(addr, header.destination_cid, new_cid, now)
            self._sendto(retry_packet(header, new_cid, token), addr)
            self.stats.retries_sent += 1
            return None
        quic = self._backend_for(addr).server(original_dcid=original, retry_cid=retry_cid)
        conn = self._new_conn(quic, Role.SERVER, addr, now)
        self._map_cid(conn, cid)
        admission.opened(conn.id, host)
        self._count_half_open()
        if addr in self._circuit_of:
            conn.how = How.RELAYED
            conn.circuit = self._circuit_of[addr]
        elif self._expected_punches.pop(addr, 0.0) >= now:
            conn.how = How.PUNCHED
        return conn

    def _backend_for(self, addr: SocketAddress) -> QuicBackend:
        """The stack for a peer address: connections through a relay use smaller datagrams."""
        if not addr[0].startswith(VIRTUAL_NET):
            return self._backend
        if self._relayed_backend is None:
            self._relayed_backend = make_backend(
                self.config.quic,
                self.certificate,
                QuicSettings(
                    idle_timeout=self.config.idle_timeout, max_datagram_size=RELAYED_DATAGRAM_SIZE
                ),
            )
        return self._relayed_backend

    def _new_conn(
        self, quic: QuicConnectionAdapter, role: Role, addr: SocketAddress, now: float
    ) -> _Conn:
        conn = _Conn(next(self._ids), quic, role, addr, created_at=now)
        self._conns[conn.id] = conn
        self._map_cid(conn, quic.host_cid)
        conn.setup_timer = self._timers.call_at(
            now + self.config.handshake_timeout, self._setup_expired, conn
        )
        if role is Role.CLIENT:
            self.stats.connections_opened += 1
        else:
            self.stats.connections_accepted += 1
        return conn

    def _map_cid(self, conn: _Conn, cid: bytes) -> None:
        self._cids[cid] = conn
        conn.cids.add(cid)

    def _sendto(self, data: bytes, addr: SocketAddress) -> None:
        if addr[0].startswith(VIRTUAL_NET):
            circuits.send_circuit(self, data, addr)
        else:
            self._outbox.append((data, addr))

    def _no_route(self, addr: SocketAddress) -> None:
        """A router says there is no way to ``addr``: dials to it fail now, not at their
        timeout (typically a peer's private LAN address announced before it knew)."""
        for conn in [c for c in self._conns.values() if c.addr == addr and c.state == "quic"]:
            if conn.role is Role.CLIENT:
                detail = f"{addr[0]}:{addr[1]}: no route (ICMP destination unreachable)"
                self._abort(conn, "no route", PeerUnreachable(detail))

    def _port_unreachable(self, addr: SocketAddress) -> None:
        self.stats.port_unreachable += 1
        if not self.config.close_on_port_unreachable:
            return
        now = self._now
        for conn in [c for c in self._conns.values() if c.addr == addr]:
            # ICMP is unauthenticated: believe it only of a peer that went quiet (a
            # live one is still talking; the liveness probe asks again soon)
            if now - conn.last_received < ICMP_MIN_SILENCE:
                continue
            log.info("%s:%d is unreachable (ICMP port unreachable): closing", *addr)
            if conn.state == "ready":
                error: TransportError = ConnectionLost(f"{addr[0]}:{addr[1]} port unreachable")
            else:
                error = PeerUnreachable(f"{addr[0]}:{addr[1]} port unreachable")
            self._abort(conn, "port unreachable", error)

    # -- servicing connections ------------------------------------------------------------

    def _touch(self, conn: _Conn) -> None:
        """``conn`` has something to handle or send (at the next ``datagrams_to_send``)."""
        self._dirty[conn] = None

    def _flush(self) -> None:
        """Process events and send datagrams of every connection touched since last time."""
        while self._dirty:
            conn = next(iter(self._dirty))
            del self._dirty[conn]
            if conn.state == "closed":
                continue
            try:
                self._service(conn)
            except Exception:
                log.exception("connection %d failed", conn.id)
                self._stack_failed(conn)

    def _service(self, conn: _Conn) -> None:
        """Handle the connection's events and send what it has to send.

        Sending can release events the stack held back (see ``actors._quic.backend``,
        qh3), and handling those can give more to send: a few rounds, then the rest
        waits for the next flush.
        """
        for _round in range(SERVICE_ROUNDS):
            self._process_events(conn)
            if _is_closed(conn):
                return
            peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
            if peer is not None and peer.queue and peer.conn is conn:
                streams.pump(self, peer)  # the peer may have raised its stream limit
            for data, addr in conn.quic.datagrams_to_send(self._now):
                self._sendto(data, addr)
            holding = conn.quic.holding_events()
            if holding and not conn.holding_events:
                self.stats.event_holds += 1
            conn.holding_events = holding
            closing = conn.quic.close_event()
            if closing is not None:
                self._on_terminated(conn, *closing)
                return
            if not conn.quic.has_events():
                break
        else:
            self._touch(conn)
        self._arm_timer(conn)

    def _stack_failed(self, conn: _Conn) -> None:
        """The QUIC stack raised on ``conn``: its state cannot be trusted any more.
        Fail what waits on it at once, tell the peer if the stack still can, and let
        the next request to the peer dial a new connection."""
        self.stats.stack_failures += 1
        self._close(
            conn,
            AppErrorCode.INTERNAL_ERROR,
            "internal error",
            ConnectionLost("the QUIC stack failed on the connection"),
        )

    def _arm_timer(self, conn: _Conn) -> None:
        at = conn.quic.get_timer()
        if at == conn.timer_at:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer_at = at
        conn.timer = None if at is None else self._timers.call_at(at, self._on_quic_timer, conn)

    def _on_quic_timer(self, conn: _Conn) -> None:
        conn.timer = None
        conn.timer_at = None
        if conn.state == "closed":
            return
        try:
            conn.quic.handle_timer(self._now)
        except Exception:
            log.exception("connection %d failed on its timer", conn.id)
            self._stack_failed(conn)
            return
        self._touch(conn)

    def _process_events(self, conn: _Conn) -> None:
        while conn.state != "closed":
            event = conn.quic.next_event()
            if event is None:
                return
            match event:
                case StreamData():
                    streams.on_stream_data(self, conn, event)
                case HandshakeDone():
                    self._on_tls_done(conn)
                case StreamReset(stream_id=stream_id, error_code=code):
                    streams.on_stream_reset(self, conn, stream_id, code)
                case StopSending(stream_id=stream_id, error_code=code):
                    streams.on_stop_sending(self, conn, stream_id, code)
                case ConnectionIdIssued(connection_id=cid):
                    self._map_cid(conn, cid)
                case ConnectionIdRetired(connection_id=cid):
                    if self._cids.get(cid) is conn:
                        del self._cids[cid]
                    conn.cids.discard(cid)
                case DatagramReceived(data=data):
                    circuits.on_datagram_frame(self, conn, data)
                case PingAcknowledged(uid=uid):
                    sent = conn.ping_uids.pop(uid, None)
                    if sent is not None:
                        conn.rtt_sample = self._now - sent
                case Terminated(error_code=code, reason=reason):
                    self._on_terminated(conn, code, reason)

    # -- connection lifecycle -------------------------------------------------------------

    def _dial(
        self,
        addr: SocketAddress,
        expected: bytes | None,
        dial_id: int,
        wait: float,
        how: How = How.DIRECT,
    ) -> None:
        if self._closed:
            self._dial_done(dial_id, error=TransportClosed("the transport is closed"))
            return
        if expected is not None:
            if expected == self.identity.peer_id:
                error = PeerRejected("self_connection", "that is this node's own PeerId")
                self._dial_done(dial_id, error=error)
                return
            peer = self._peer(expected)
            if how is How.DIRECT:
                _remember_addr(peer, addr)
            if peer.conn is not None:
                self._dial_done(dial_id, expected)
                return
        running = self._running_dial(addr, expected)
        if running is not None:
            running.dial_ids.append(dial_id)
            return
        self._open(addr, expected, [dial_id], wait, how)

    def _running_dial(self, addr: SocketAddress, expected: bytes | None) -> _Conn | None:
        """The dial to ``addr`` for the peer ``expected`` that is still setting up, if any."""
        for conn in self._conns.values():
            if (
                conn.role is Role.CLIENT
                and conn.state in ("quic", "identity")
                and conn.dial_addr == addr
                and conn.expected_peer_id == expected
            ):
                return conn
        return None

    def _open(
        self,
        addr: SocketAddress,
        expected: bytes | None,
        dial_ids: list[int],
        wait: float | None = None,
        how: How = How.DIRECT,
    ) -> _Conn:
        now = self._now
        quic = self._backend_for(addr).client()
        quic.connect(addr, now)
        conn = self._new_conn(quic, Role.CLIENT, addr, now)
        conn.how = how
        conn.dial_addr = addr
        conn.expected_peer_id = expected
        conn.dial_ids.extend(dial_ids)
        if wait is not None and wait != self.config.handshake_timeout:
            assert conn.setup_timer is not None
            conn.setup_timer.cancel()
            conn.setup_timer = self._timers.call_at(now + wait, self._setup_expired, conn)
        if expected is not None:
            self._peer(expected).dialing = True
        self._touch(conn)
        return conn

    def _on_tls_done(self, conn: _Conn) -> None:
        if conn.role is Role.CLIENT:
            der = conn.quic.peer_certificate_der()
            if der is None:
                self._reject(conn, "protocol_violation", "the server sent no certificate")
                return
            cert_hash = hashlib.sha256(der).digest()
        else:
            cert_hash = self.certificate.sha256
        conn.group = conn.quic.key_exchange_group()
        conn.state = "identity"
        conn.hs_send_stream = conn.quic.next_stream_id(unidirectional=True)
        deadline = conn.created_at + self.config.handshake_timeout
        if conn.setup_timer is not None:
            deadline = conn.setup_timer.when()
        # The Hello needs no signature: send it now, in the flight of TLS's last
        # message, so both sides get each other's nonce (and sign) at the same time.
        nonce = os.urandom(HANDSHAKE_NONCE_BYTES)
        announced = tuple(self.announced_addrs()) if self.config.announce else ()
        conn.hello_addrs = announced
        hello = hello_message(self.identity, nonce, cert_hash, self.instance, announced)
        conn.quic.send(conn.hs_send_stream, encode_frame(hello))
        self._tell_handshake(
            BeginHandshake(
                conn_id=conn.id,
                role=conn.role,
                cert_hash=cert_hash,
                deadline=deadline,
                expected_peer_id=conn.expected_peer_id,
                listen_addrs=announced,
                instance=self.instance,
                nonce=nonce,
                hello_sent=True,
                remote=f"{conn.addr[0]}:{conn.addr[1]}",
                sink=self._sink,
            )
        )
        pending, conn.hs_pending = conn.hs_pending or [], None
        for message in pending:
            self._tell_handshake(HandshakeFrame(conn.id, message, self._sink))

    def _handshake_send(self, conn_id: int, frame: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state == "closed" or conn.hs_send_stream is None:
            return
        conn.quic.send(conn.hs_send_stream, frame)
        self._touch(conn)

    def _handshake_finished(self, conn_id: int, outcome: Accepted | Rejected) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state == "closed":
            return
        if isinstance(outcome, Rejected):
            self.stats.handshakes_rejected_locally += 1
            self._reject(conn, outcome.reason.value, outcome.detail)
            return
        if conn.setup_timer is not None:
            conn.setup_timer.cancel()
            conn.setup_timer = None
        now = self._now
        conn.state = "ready"
        if self._admission.finished(conn.id):
            self._count_half_open()
        conn.peer_id = outcome.peer_id
        conn.listen_addrs = outcome.listen_addrs
        conn.instance = outcome.instance
        conn.transcript = outcome.transcript
        conn.ready_at = now
        conn.last_used = now
        if conn.hs_send_stream is not None:
            conn.quic.send(conn.hs_send_stream, b"", end_stream=True)
        peer = self._peer(outcome.peer_id)
        direct, peer.relayed = _addresses(outcome.listen_addrs, outcome.peer_id)
        for addr in direct:
            _remember_addr(peer, addr)
        if conn.dial_addr is not None and conn.how is How.DIRECT:
            _remember_addr(peer, conn.dial_addr, first=True)
        dial_ids, conn.dial_ids = conn.dial_ids, []
        for dial_id in dial_ids:
            self._dial_done(dial_id, outcome.peer_id)
        self._install(conn, peer)
        if self.config.announce and conn.hello_addrs != tuple(self.announced_addrs()):
            # The addresses changed during the handshake, after the Hello left, and the
            # NatTraverser's Announce went only to the peers connected then.
            self.request(outcome.peer_id, Announce(self.announced_addrs()), self._now, 5.0)
        held, conn.held = conn.held, []
        for inbound in held:
            streams.handle_request(self, conn, inbound)
        self._schedule_keepalive(conn)
        self._ping(conn)
        self._touch(conn)

    def _install(self, conn: _Conn, peer: _Peer) -> None:
        """Make ``conn`` the peer's connection, or keep the current one (one per pair).

        Both sides choose alike, with nothing but what they share: a connection from
        a new run of the peer's process replaces the old one (which is dead); else
        the connection dialled by the lower PeerId wins, and between two dialled by
        the same side, the lower transcript hash.
        """
        current = peer.conn
        peer.dialing = False
        if current is None or current is conn or current.state != "ready":
            peer.conn = conn
            self._emit_connected(conn)
        elif conn.instance != current.instance:
            peer.conn = conn
            log.info("peer %s restarted: replacing its old connection", _short(peer.peer_id))
            self._close(current, AppErrorCode.DUPLICATE, "the peer restarted", None)
            self._emit_connected(conn)
        elif self._rank(conn) < self._rank(current):
            peer.conn = conn
            self._retire(current)
        else:
            self._retire(conn)
        if peer.conn is not None and self.planner.running(peer.peer_id):
            self.planner.connected(peer.peer_id, peer.conn.how, self._now)
        streams.pump(self, peer)

    def _emit_connected(self, conn: _Conn) -> None:
        assert conn.peer_id is not None
        self._events.append(
            PeerConnected(
                peer_id=conn.peer_id,
                listen_addrs=conn.listen_addrs,
                remote_host=conn.addr[0],
                remote_port=conn.addr[1],
                direction=conn.direction,
            )
        )

    def _rank(self, conn: _Conn) -> tuple[bytes, bytes]:
        return (self._dialer(conn), conn.transcript)

    def _dialer(self, conn: _Conn) -> bytes:
        assert conn.peer_id is not None
        return self.identity.peer_id if conn.role is Role.CLIENT else conn.peer_id

    def _retire(self, conn: _Conn) -> None:
        """The losing connection of a pair: no new requests; its dialer closes it once idle."""
        self.stats.duplicate_connections += 1
        conn.draining = True
        conn.drain_timer = self._call_later(DRAINING_BACKSTOP, self._close_drained, conn)
        self._maybe_close_drained(conn)

    def _maybe_close_drained(self, conn: _Conn) -> None:
        if (
            conn.draining
            and conn.role is Role.CLIENT
            and not conn.outbound
            and not conn.inbound
            and not conn.held
        ):
            self._close_drained(conn)

    def _close_drained(self, conn: _Conn) -> None:
        if conn.state != "closed":
            self._close(conn, AppErrorCode.DUPLICATE, "replaced by another connection", None)

    def _setup_expired(self, conn: _Conn) -> None:
        conn.setup_timer = None
        if conn.role is Role.SERVER and conn.state in ("quic", "identity"):
            self.stats.handshake_timeouts += 1
        if conn.state == "quic":
            self.stats.setup_timeouts += 1
            detail = f"no QUIC handshake with {conn.addr[0]}:{conn.addr[1]}"
            self._close(conn, AppErrorCode.HANDSHAKE_REJECTED, "stalled", PeerUnreachable(detail))
        elif conn.state == "identity":
            self._tell_handshake(HandshakeTimer(conn.id, self._now, self._sink))
            conn.setup_timer = self._call_later(HANDSHAKE_BACKSTOP, self._setup_backstop, conn)

    def _setup_backstop(self, conn: _Conn) -> None:
        """The Handshake actor did not answer the timer: close anyway."""
        conn.setup_timer = None
        if conn.state == "identity":
            self.stats.setup_timeouts += 1
            self._reject(conn, "stalled", "no identity handshake result in time")

    def _reject(self, conn: _Conn, reason: str, detail: str) -> None:
        log.info("closing connection to %s:%d: handshake %s (%s)", *conn.addr, reason, detail)
        self._close(conn, AppErrorCode.HANDSHAKE_REJECTED, reason, PeerRejected(reason, detail))

    def _close(
        self, conn: _Conn, code: AppErrorCode, reason: str, error: TransportError | None
    ) -> None:
        """Close ``conn`` (sending CONNECTION_CLOSE) and fail what waits on it."""
        if conn.state == "closed":
            return
        now = self._now
        try:
            for data, addr in conn.quic.datagrams_to_send(now):  # what is queued goes first
                self._sendto(data, addr)
        except Exception:
            log.debug("could not send what connection %d had queued", conn.id, exc_info=True)
        try:
            conn.quic.close(int(code), reason)
            for data, addr in conn.quic.datagrams_to_send(now):
                self._sendto(data, addr)
        except Exception:
            log.debug("could not send the close of connection %d", conn.id, exc_info=True)
        self._finalize(conn, reason, error or ConnectionLost(reason), code)
        if not self._closed:
            for cid in conn.cids:
                self._lingering[cid] = (conn.quic, now + CLOSE_LINGER)
            if self._linger_timer is None:
                self._linger_timer = self._timers.call_at(now + CLOSE_LINGER, self._prune_lingering)

    def _prune_lingering(self) -> None:
        """Release the closed connections whose linger time is over (the dict is in
        order of closing, so of expiry)."""
        self._linger_timer = None
        now = self._now
        lingering = self._lingering
        while lingering:
            cid = next(iter(lingering))
            until = lingering[cid][1]
            if until > now:
                if not self._closed:
                    self._linger_timer = self._timers.call_at(until, self._prune_lingering)
                return
            del lingering[cid]

    def _count_half_open(self) -> None:
        self.stats.half_open = self._admission.count
        self.stats.half_open_peak = self._admission.peak

    def _abort(self, conn: _Conn, reason: str, error: TransportError) -> None:
        """Forget ``conn`` without telling the peer (it is gone or the stack failed)."""
        self._finalize(conn, reason, error, AppErrorCode.NO_ERROR)

    def _on_terminated(self, conn: _Conn, code: int, reason: str) -> None:
        error: TransportError
        if code == AppErrorCode.HANDSHAKE_REJECTED:
            self.stats.handshakes_rejected_by_peer += 1
            log.info("peer at %s:%d rejected the handshake: %s", *conn.addr, reason)
            error = PeerRejected("rejected_by_peer", reason)
        elif conn.state == "quic":
            error = PeerUnreachable(f"QUIC connection failed: {reason or code}")
        elif conn.state == "identity":
            error = PeerRejected("connection_lost", reason or f"closed with code {code}")
        else:
            error = ConnectionLost(f"connection closed by peer: {reason or code}")
        description = reason or f"closed with code {code:#x}"
        self._finalize(conn, description, error, code)

    def _finalize(self, conn: _Conn, reason: str, error: TransportError, code: int) -> None:
        if conn.state == "closed":
            return
        was_ready = conn.state == "ready"
        conn.state = "closed"
        self.stats.connections_closed += 1
        if self._admission.finished(conn.id):
            self._count_half_open()
        self._conns.pop(conn.id, None)
        for cid in conn.cids:
            if self._cids.get(cid) is conn:
                del self._cids[cid]
        self._dirty.pop(conn, None)
        if conn.circuit is not None:
            circuits.forget_circuit(self, conn.addr)
        timers = (conn.timer, conn.setup_timer, conn.keepalive_timer, conn.probe_timer)
        for timer in (*timers, conn.drain_timer):
            if timer is not None:
                timer.cancel()
        if not was_ready:
            self._tell_handshake(HandshakeClosed(conn.id, reason, self._sink))
        dial_ids, conn.dial_ids = conn.dial_ids, []
        if conn.role is Role.CLIENT and not was_ready:
            log.info("dial to %s:%d failed: %s", *conn.addr, error)
        for dial_id in dial_ids:
            self._dial_done(dial_id, error=error)
        for inbound in list(conn.inbound.values()) + conn.held:
            if inbound.timer is not None:
                inbound.timer.cancel()
        conn.inbound.clear()
        conn.held.clear()
        peer = self._peers.get(conn.peer_id or conn.expected_peer_id or b"")
        retry = code == AppErrorCode.DUPLICATE
        for outbound in list(conn.outbound.values()):
            if peer is not None:
                peer.in_flight -= 1
            outbound.conn = None
            if retry and peer is not None and outbound.retries < 2 and not outbound.done:
                outbound.retries += 1
                outbound.decoder = FrameDecoder()
                peer.queue.appendleft(outbound)
            else:
                streams.complete(self, outbound, error=error)
        conn.outbound.clear()
        if peer is None:
            return
        if peer.conn is conn:
            peer.conn = self._survivor(peer)
            if peer.conn is None:
                log.info("peer %s disconnected: %s", _short(peer.peer_id), reason)
                self._events.append(PeerDisconnected(peer.peer_id, reason))
                self._relay_gone(peer.peer_id)
        elif not was_ready and conn.role is Role.CLIENT and peer.conn is None:
            peer.dialing = False
            if conn.reach is not None and self.planner.running(peer.peer_id):
                self.planner.step_failed(conn.reach, error, self._now)  # the next step
                return
        streams.pump(self, peer)

    def _relay_gone(self, peer_id: bytes) -> None:
        """``peer_id`` disconnected: circuits through it (as relay or as an end) end."""
        self.relay.forget_peer(peer_id)
        for conn in [c for c in self._conns.values() if c.circuit and c.circuit[0] == peer_id]:
            self._abort(conn, "relay disconnected", ConnectionLost("the relay disconnected"))

    def _survivor(self, peer: _Peer) -> _Conn | None:
        """Another ready connection to the peer (a draining one), promoted to current."""
        for conn in self._conns.values():
            if conn.peer_id == peer.peer_id and conn.state == "ready":
                conn.draining = False
                if conn.drain_timer is not None:
                    conn.drain_timer.cancel()
                    conn.drain_timer = None
                return conn
        return None

    def _tell_handshake(self, message: HandshakeMessage) -> None:
        """For the Handshake actor (the owner delivers it)."""
        self._events.append(ToHandshake(message))

    # -- keep-alive and RTT ---------------------------------------------------------------

    def _schedule_keepalive(self, conn: _Conn) -> None:
        conn.keepalive_timer = self._call_later(
            self.config.keepalive_interval, self._keepalive, conn
        )

    def _keepalive(self, conn: _Conn) -> None:
        conn.keepalive_timer = None
        if conn.state != "ready":
            return
        in_use = (
            conn.pinned
            or bool(conn.outbound or conn.inbound)
            or (self._now - conn.last_used < self.config.idle_timeout)
        )
        if in_use:
            self._ping(conn)
            self._touch(conn)
        self._schedule_keepalive(conn)

    def _probe(self, conn: _Conn) -> None:
        """Liveness of a peer we wait for: PING when it is quiet, give up when it stays so."""
        conn.probe_timer = None
        if conn.state != "ready" or not conn.outbound:
            return
        silence = self._now - conn.last_received
        if silence >= self.config.peer_silence_timeout:
            log.info("peer %s silent for %.1f s: closing", _short(conn.peer_id), silence)
            self._close(
                conn,
                AppErrorCode.UNRESPONSIVE,
                "no answer",
                ConnectionLost(f"the peer answered nothing for {silence:.1f} s"),
            )
            return
        if silence >= self.config.probe_interval / 2:
            self._ping(conn)
            self._touch(conn)
        conn.probe_timer = self._call_later(self.config.probe_interval, self._probe, conn)

    def _ping(self, conn: _Conn) -> None:
        uid = next(self._ping_uids)
        conn.ping_uids[uid] = self._now
        if len(conn.ping_uids) > 16:
            conn.ping_uids.pop(next(iter(conn.ping_uids)))
        conn.quic.send_ping(uid)

    # -- helpers --------------------------------------------------------------------------

    def _peer(self, peer_id: bytes) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id)
        return peer

    def connections(self, now: float) -> list[ConnectionInfo]:
        """Every authenticated connection (for ``status``)."""
        infos = []
        for conn in self._conns.values():
            if conn.state != "ready" or conn.peer_id is None:
                continue
            rtt = conn.quic.smoothed_rtt()
            if rtt is None:
                rtt = conn.rtt_sample
            infos.append(
                ConnectionInfo(
                    peer_id=conn.peer_id.hex(),
                    direction=conn.direction,
                    remote_addr=(
                        format_multiaddr(conn.addr[0], conn.addr[1])
                        if conn.circuit is None
                        else f"/p2p/{conn.circuit[0].hex()}/p2p-circuit"
                    ),
                    pq=conn.group in POST_QUANTUM_GROUPS,
                    group=group_name(conn.group),
                    rtt_ms=None if rtt is None else round(rtt * 1000.0, 3),
                    quic=self.config.quic,
                    state="draining" if conn.draining else "ready",
                    age_s=round(now - conn.ready_at, 1),
                    requests_in_flight=len(conn.outbound),
                    requests_sent=conn.requests_sent,
                    requests_served=conn.requests_served,
                    how=str(conn.how),
                )
            )
        return infos
