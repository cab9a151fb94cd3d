"""QuicEndpoint: the asyncio shell around the transport core.

The rules of the transport (connections, one per pair of peers; requests and
replies; per-peer queues and dials; keep-alive; relay circuits; half-open admission)
live in the sans-IO ``actors._quic.core.TransportCore``. This shell owns what the
core must not: the one UDP socket (server and client connections share it: hole
punching needs outbound packets to leave from the listening port), ICMP errors
(``IP_RECVERR``), TTL-limited punch openers, the asyncio loop in a thread of its own
and ONE timer, armed at the core's next deadline. It feeds the core datagrams,
requests and the time, and carries out what the core returns: datagrams to send,
completed futures, inbound requests for ``dispatch``, messages for the Handshake
actor and peer events.

All core state lives on the loop thread; other threads reach it only through
``loop.call_soon_threadsafe`` (the public methods below do that), and the loop
reaches actors only by ``tell`` and by completing pykka futures. The loop never
waits for anything but its socket and its timer. A query that must read the core
from another thread (``connections``, ``counters``, ...) raises ``TransportBusy``
if the loop does not answer in time: never a made-up default.

On every new connection, once TLS is done, the Handshake actor runs the identity
handshake over the first unidirectional stream of each side. Until it accepts the
peer, request streams from it are held. After, each bidirectional stream carries one
request frame and one reply frame. The core answers ``Ping`` itself; every other
request goes to ``dispatch``.

Work for peers that proved nothing yet is bounded (``actors._quic.admission``): inbound
connections not through the identity handshake are capped per source IP and in all
(a client Initial over a cap is dropped unread), each must finish within
``handshake_timeout``, and under pressure a client gets a stateless QUIC Retry before
any connection state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import msgspec
import pykka

from actors._quic.backend import QuicConnectionAdapter, SocketAddress
from actors._quic.core import TransportCore
from actors._quic.model import (
    ConnectionInfo,
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
    TransportStats,
)
from actors._quic.state import _Conn, _destination_cid
from actors.futures import NotifyingFuture
from actors.messages import InboundRequest, PeerConnected, PeerDisconnected
from protocol.errors import TransportClosed, TransportError
from protocol.handshake import Accepted, Rejected
from protocol.identity import Identity
from protocol.multiaddr import Multiaddr, format_multiaddr
from protocol.nat import NONCE_BYTES, CascadeTimeouts, ControlKind, How, control_datagram
from protocol.relay import Circuit, Refused, Reservation
from protocol.wire import Error, ErrorCode, Message, WireError, encode_frame

__all__ = [
    "ConnectionInfo",
    "ControlSink",
    "Dispatch",
    "EventSink",
    "QuicEndpoint",
    "ReachResult",
    "TransportBusy",
    "TransportConfig",
    "TransportStats",
    "_destination_cid",
]

log = logging.getLogger("actors.transport")

_T = TypeVar("_T")

PENDING_ICMP_ERRORS: Final = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPROTO}
)
IP_RECVERR: Final = 11  # linux/in.h; not exported by Python's socket module
SO_EE_ORIGIN_ICMP: Final = 2
ICMP_DEST_UNREACH: Final = 3
_EXTENDED_ERROR = struct.Struct("=IBBBBII")
RECV_BATCH: Final = 256
FLUSH_EVERY = 8
"""Datagrams read between two flushes (which send ACKs) in one readable burst."""
CALL_TIMEOUT: Final = 2.0
"""How long a thread waits for the loop to answer a query (``TransportBusy`` after)."""

EventSink = Callable[[PeerConnected | PeerDisconnected], None]
Dispatch = Callable[[InboundRequest], None]
ControlSink = Callable[[ControlKind, bytes, SocketAddress], None]
"""Receives control datagrams (a dial-back probe's nonce) on the loop thread."""


class TransportBusy(TransportError):
    """The transport's loop did not answer a query in time (it is overloaded): the
    answer is unknown, not a default."""


INLINE_REPLY_BYTES = 16 * 1024
"""A reply at most this long, given on the loop while its request is carried out (a
``FindNode``), is queued at once and leaves with the ACK of the request. A longer one
is posted to the loop like a reply from another thread: queued in the same drive as
the requests around it, 4 MiB chunks went out a third slower (bench_transport)."""


class _Reply:
    """The ``reply`` of an ``InboundRequest``: thread-safe, first call wins."""

    __slots__ = ("_conn_id", "_endpoint", "_lock", "_stream_id", "_used")

    def __init__(self, endpoint: QuicEndpoint, conn_id: int, stream_id: int) -> None:
        self._endpoint = endpoint
        self._conn_id = conn_id
        self._stream_id = stream_id
        self._lock = threading.Lock()
        self._used = False

    def __call__(self, message: Message) -> None:
        with self._lock:
            if self._used:
                log.debug("second reply to one request ignored: %s", type(message).__name__)
                return
            self._used = True
        try:
            frame = encode_frame(message)
        except WireError as exc:
            frame = encode_frame(Error(ErrorCode.INTERNAL, f"reply cannot be encoded: {exc}"))
        endpoint = self._endpoint
        if len(frame) <= INLINE_REPLY_BYTES and threading.current_thread() is endpoint._thread:
            endpoint._reply(self._conn_id, self._stream_id, frame)
        else:
            endpoint._post(endpoint._reply, self._conn_id, self._stream_id, frame)


class QuicEndpoint:
    """The node's QUIC endpoint. Public methods are thread-safe; the rest runs on the loop."""

    def __init__(
        self,
        identity: Identity,
        handshake: pykka.ActorRef[Any],
        config: TransportConfig,
        *,
        dispatch: Dispatch,
        on_event: EventSink,
        on_control: ControlSink | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self._handshake = handshake
        self._dispatch = dispatch
        self._on_event = on_event
        self.on_control = on_control
        self.core = TransportCore(identity, config, sink=self)
        self.certificate = self.core.certificate
        self.stack = config.quic
        self.instance = self.core.instance
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._driving = False
        """A ``_drive`` is running (on the loop): what the core queues now goes out with it."""
        self._closed = False
        self._local: SocketAddress = (config.host, config.port)
        # loop-thread state
        self._requests: dict[int, pykka.ThreadingFuture[Message]] = {}
        self._dials: dict[int, pykka.ThreadingFuture[bytes]] = {}
        self._reaches: dict[int, pykka.ThreadingFuture[ReachResult]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._send_backlog: list[tuple[bytes, SocketAddress]] = []
        self._connected: dict[bytes, None] = {}
        """The peers with a connection, in order of connection (replaced, never changed)."""

    @property
    def _conns(self) -> dict[int, _Conn]:
        """The core's connections (for tests, on the loop thread)."""
        return self.core._conns

    @property
    def _lingering(self) -> dict[bytes, tuple[QuicConnectionAdapter, float]]:
        return self.core._lingering

    # -- lifecycle (any thread) --------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (errors raise here, in the caller's thread) and start the loop."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, self.config.socket_buffer_bytes)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            sock.bind((self.config.host, self.config.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._local = (host, port)
        self.core.listen_addrs = tuple(
            format_multiaddr(h, port, self.identity.peer_id) for h in self._advertised_hosts(host)
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop, ready), name=f"transport-{port}", daemon=True
        )
        self._thread.start()
        ready.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection (telling peers), fail what is pending, stop the loop."""
        if self._closed or self._loop is None or self._thread is None:
            return
        self._closed = True
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() must not be called from the transport's loop")
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout)

    def _run_loop(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        assert self._sock is not None
        loop.add_reader(self._sock.fileno(), self._on_readable)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.remove_reader(self._sock.fileno())
                loop.remove_writer(self._sock.fileno())
            except (ValueError, OSError):
                pass
            self._sock.close()
            loop.close()

    def _advertised_hosts(self, bound: str) -> list[str]:
        if self.config.advertise_hosts:
            return list(self.config.advertise_hosts)
        if bound != "0.0.0.0":
            return [bound]
        hosts = ["127.0.0.1"]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            primary = probe.getsockname()[0]
            if primary not in hosts:
                hosts.append(primary)
        except OSError:
            pass
        finally:
            probe.close()
        return hosts

    def _shutdown(self) -> None:
        assert self._loop is not None
        self.core.close(self._loop.time())
        self._drive()
        for futures in (self._requests, self._dials, self._reaches):
            for future in futures.values():
                _fail(future, TransportClosed("stopping"))
            futures.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._send_backlog:
            self._on_writable()
        self._loop.stop()

    # -- public API (any thread) -------------------------------------------------------

    @property
    def local_address(self) -> SocketAddress:
        return self._local

    def listen_addrs(self) -> list[str]:
        return list(self.core.listen_addrs)

    def request(
        self,
        peer_id: bytes,
        message: Message,
        timeout: float | None = None,
        addrs: Sequence[str] = (),
    ) -> pykka.Future[Message]:
        """Send ``message`` to ``peer_id``; the future gets the reply or a TransportError.

        ``addrs`` are multiaddrs to dial if no connection to the peer is open.
        """
        future: pykka.ThreadingFuture[Message] = NotifyingFuture()
        try:
            frame = encode_frame(message)  # here, not on the loop: a chunk is big
        except WireError as exc:
            _fail(future, exc)
            return future
        deadline = time.monotonic() + (self.config.request_timeout if timeout is None else timeout)
        if not self._post(self._request, future, peer_id, frame, deadline, tuple(addrs)):
            _fail(future, TransportClosed("the transport is closed"))
        return future

    def dial(
        self,
        addr: str | Multiaddr | SocketAddress,
        expected_peer_id: bytes | None = None,
        timeout: float | None = None,
        how: How = How.DIRECT,
    ) -> pykka.Future[bytes]:
        """Connect and run the identity handshake; the future gets the peer's PeerId.

        A multiaddr with ``/p2p/<id>`` sets the expected PeerId (unless given). ``how``
        is recorded on the connection (a punched dial's address is not remembered as
        one to dial again).
        """
        future: pykka.ThreadingFuture[bytes] = NotifyingFuture()
        if not self._post(self._dial, future, addr, expected_peer_id, timeout, how):
            _fail(future, TransportClosed("the transport is closed"))
        return future

    def connections(self) -> list[ConnectionInfo]:
        """Every authenticated connection (for ``status``)."""
        return self._call(lambda: self.core.connections(self._time()))

    def counters(self) -> TransportStats:
        return self._call(lambda: msgspec.structs.replace(self.core.stats))

    def connected_peers(self) -> list[bytes]:
        """The peers with a connection (a snapshot the loop keeps: never waits)."""
        return list(self._connected)

    def disconnect(self, peer_id: bytes) -> None:
        """Close the connection to ``peer_id`` (if any)."""
        self._post(self._in_core, lambda now: self.core.disconnect(peer_id, now))

    # -- NAT traversal (any thread; the NatTraverser decides, the loop carries out) -----

    def announced_addrs(self) -> list[str]:
        """What this node tells peers it can be reached at (its Hello and ``Announce``)."""
        return self.core.announced_addrs()

    def set_announced(self, addrs: Sequence[str] | None) -> None:
        """Announce ``addrs`` from now on (None: the listen addresses again)."""
        self.core.set_announced(addrs)

    def peer_address(self, peer_id: bytes) -> SocketAddress | None:
        """The UDP address this node sees the peer at (None if not connected directly)."""
        return self._call(lambda: self.core.peer_address(peer_id))

    def send_openers(self, addr: SocketAddress, count: int = 3) -> None:
        """Open this side's NAT mapping toward ``addr`` with small-TTL datagrams."""
        self._post(self._send_openers, addr, count)

    def expect_punch(self, addr: SocketAddress) -> None:
        """A connection arriving from ``addr`` soon is a punched one (for ``how``)."""
        self._post(self._in_core, lambda now: self.core.expect_punch(addr, now))

    def pin(self, peer_id: bytes, pinned: bool = True) -> None:
        """Keep the connection to ``peer_id`` alive even when idle (this node's relay)."""
        self._post(self.core.pin, peer_id, pinned)

    def dial_circuit(
        self, relay_id: bytes, circuit: int, expected_peer_id: bytes, timeout: float | None = None
    ) -> pykka.Future[bytes]:
        """Connect to ``expected_peer_id`` through circuit ``circuit`` of relay ``relay_id``."""
        future: pykka.ThreadingFuture[bytes] = NotifyingFuture()

        def start(now: float) -> None:
            dial_id = self.core.dial_circuit(relay_id, circuit, expected_peer_id, now, timeout)
            self._dials[dial_id] = future

        if not self._post(self._in_core, start):
            _fail(future, TransportClosed("the transport is closed"))
        return future

    def accept_circuit(self, relay_id: bytes, circuit: int) -> None:
        """A peer will connect to this node through circuit ``circuit`` of ``relay_id``."""
        self._post(self.core.accept_circuit, relay_id, circuit)

    def reach(self, peer_id: bytes, addrs: Sequence[str] = ()) -> pykka.Future[ReachResult]:
        """Reach the peer through the dial cascade over ``addrs`` (multiaddrs, direct
        and relayed); the future gets the ``ReachResult`` (also when not connected)."""
        future: pykka.ThreadingFuture[ReachResult] = NotifyingFuture()

        def start(now: float) -> None:
            self._reaches[self.core.reach(peer_id, tuple(addrs), now)] = future

        if not self._post(self._in_core, start):
            _fail(future, TransportClosed("the transport is closed"))
        return future

    def set_cascade(
        self, timeouts: CascadeTimeouts | None = None, punch: bool | None = None
    ) -> None:
        """The cascade's step timeouts, and whether to try hole punching."""
        self._post(self.core.set_cascade, timeouts, punch)

    def relay_reserve(self, client: bytes) -> Reservation | Refused:
        now = time.monotonic()
        return self._call(lambda: self.core.relay_reserve(client, now))

    def relay_open(self, initiator: bytes, target: bytes) -> Circuit | Refused:
        now = time.monotonic()
        return self._call(lambda: self.core.relay_open(initiator, target, now))

    def relay_close(self, circuit_id: int) -> None:
        self._post(self.core.relay_close, circuit_id)

    def relay_status(self) -> dict[str, object]:
        now = time.monotonic()
        return self._call(lambda: self.core.relay_status(now))

    # -- HandshakeSink (called from the Handshake actor's thread) ---------------------

    def handshake_send(self, conn_id: int, frame: bytes) -> None:
        self._post(self._in_core, lambda now: self.core.handshake_send(conn_id, frame, now))

    def handshake_finished(self, conn_id: int, outcome: Accepted | Rejected) -> None:
        self._post(self._in_core, lambda now: self.core.handshake_finished(conn_id, outcome, now))

    # -- thread bridges ----------------------------------------------------------------

    def _post(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop; False if the loop is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def _call(self, function: Callable[[], _T], timeout: float = CALL_TIMEOUT) -> _T:
        """Run ``function`` on the loop and wait for its result (never from the loop).

        Raises ``TransportClosed`` if the loop is gone and ``TransportBusy`` if it did
        not run ``function`` within ``timeout``: never a made-up default."""
        if self._thread is threading.current_thread():
            return function()
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(function())
            except Exception as exc:
                result.set_exception(exc)

        if not self._post(run):
            raise TransportClosed("the transport is closed")
        try:
            return result.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TransportBusy(f"the transport's loop did not answer within {timeout} s") from None

    # -- feeding the core (loop thread) ------------------------------------------------

    def _time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _in_core(self, change: Callable[[float], object]) -> None:
        """Apply ``change(now)`` to the core, then carry out what it returned."""
        change(self._time())
        self._drive()

    def _request(
        self,
        future: pykka.ThreadingFuture[Message],
        peer_id: bytes,
        frame: bytes,
        deadline: float,
        addrs: tuple[str, ...],
    ) -> None:
        if self._closed:
            _fail(future, TransportClosed("the transport is closed"))
            return
        now = self._time()
        request_id = self.core.request(peer_id, frame, now, max(0.0, deadline - now), addrs)
        self._requests[request_id] = future
        self._drive()

    def _dial(
        self,
        future: pykka.ThreadingFuture[bytes],
        addr: str | Multiaddr | SocketAddress,
        expected: bytes | None,
        timeout: float | None,
        how: How,
    ) -> None:
        if self._closed:
            _fail(future, TransportClosed("the transport is closed"))
            return
        dial_id = self.core.dial(addr, self._time(), expected, timeout, how)
        self._dials[dial_id] = future
        self._drive()

    def _reply(self, conn_id: int, stream_id: int, frame: bytes) -> None:
        self.core.reply(conn_id, stream_id, frame, self._time())
        if not self._driving:  # else the running _drive sends it
            self._drive()

    def _drive(self) -> None:
        """Carry out the core's events, send what it has to send, arm the one timer.

        Events come first, as in aioquic's shell: a request answered on the loop while
        its event is carried out (``FindNode``) then leaves in the same datagram as the
        acknowledgement of the request."""
        core = self.core
        outer, self._driving = self._driving, True
        try:
            while True:
                while (event := core.next_event()) is not None:
                    self._carry_out(event)
                for data, addr in core.datagrams_to_send(self._time()):
                    self._sendto(data, addr)
                if not core.has_work():  # ICMP errors read while sending feed the core too
                    break
        finally:
            self._driving = outer
        self._arm_timer()

    def _arm_timer(self) -> None:
        assert self._loop is not None
        at = self.core.get_timer()
        if at == self._timer_at and (at is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else self._loop.call_at(at, self._on_timer, at)

    def _on_timer(self, at: float) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(max(self._time(), at))
        self._drive()

    def _carry_out(self, event: CoreEvent) -> None:
        match event:
            case RequestDone(request_id=request_id, reply=reply, error=error):
                request = self._requests.pop(request_id, None)
                if request is None:
                    return  # the core's own request (an Announce)
                if error is not None:
                    _fail(request, error)
                else:
                    assert reply is not None
                    request.set(reply)
            case DialDone(dial_id=dial_id, peer_id=peer_id, error=error):
                dial = self._dials.pop(dial_id, None)
                if dial is None:
                    return
                if error is not None:
                    _fail(dial, error)
                else:
                    dial.set(peer_id)
            case RequestReceived(conn_id=conn_id, stream_id=stream_id, peer_id=peer_id):
                respond = _Reply(self, conn_id, stream_id)
                try:
                    self._dispatch(InboundRequest(peer_id, event.message, respond))
                except Exception:
                    log.exception("dispatch of %s failed", type(event.message).__name__)
                    respond(Error(ErrorCode.INTERNAL, "the node could not handle the request"))
            case ToHandshake(message=message):
                try:
                    self._handshake.tell(message)
                except pykka.ActorDeadError:
                    # the connection is left to its deadline
                    level = logging.DEBUG if self._closed else logging.WARNING
                    name = type(message).__name__
                    log.log(level, "the Handshake actor is gone: %s dropped", name)
            case ReachDone(reach_id=reach_id, result=result):
                reach = self._reaches.pop(reach_id, None)
                if reach is not None:
                    reach.set(result)
            case SendOpeners(addr=addr):
                self._send_openers(addr, 3)
            case ControlReceived(kind=kind, nonce=nonce, addr=addr):
                if self.on_control is not None:
                    try:
                        self.on_control(kind, nonce, addr)
                    except Exception:
                        log.exception("control datagram handler failed")
            case PeerConnected() | PeerDisconnected():
                self._peer_event(event)

    def _peer_event(self, event: PeerConnected | PeerDisconnected) -> None:
        connected = dict(self._connected)  # copied, then swapped: readers never lock
        if isinstance(event, PeerConnected):
            connected[event.peer_id] = None
        else:
            connected.pop(event.peer_id, None)
        self._connected = connected
        try:
            self._on_event(event)
        except Exception:
            log.exception("peer event %s was not delivered", type(event).__name__)

    # -- socket I/O ------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Read what the socket holds and feed it to the core, with a flush (which
        sends ACKs: the sender is ACK-clocked) every ``FLUSH_EVERY`` datagrams."""
        sock = self._sock
        assert sock is not None
        batch: list[tuple[bytes, SocketAddress]] = []
        for count in range(1, RECV_BATCH + 1):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                if batch:
                    self.core.receive_datagrams(batch, self._time())
                    batch = []
                self._drain_error_queue()
                continue
            batch.append((data, addr))
            if count % FLUSH_EVERY == 0:
                self.core.receive_datagrams(batch, self._time())
                batch = []
                self._drive()
        if batch:
            self.core.receive_datagrams(batch, self._time())
        self._drive()

    def _sendto(self, data: bytes, addr: SocketAddress) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        if self._send_backlog:
            self._send_backlog.append((data, addr))
            return
        for _attempt in range(2):
            try:
                sock.sendto(data, addr)
                self.core.stats.datagrams_sent += 1
                return
            except (BlockingIOError, InterruptedError):
                self._send_backlog.append((data, addr))
                self._loop.add_writer(sock.fileno(), self._on_writable)
                return
            except OSError as exc:
                if exc.errno not in PENDING_ICMP_ERRORS:
                    log.debug("send to %s:%d failed: %s", addr[0], addr[1], exc)
                    return
                # a pending ICMP error (IP_RECVERR) of an earlier datagram, e.g. a
                # punch opener's time exceeded: this send may work
            # outside the except block: what this closes runs callbacks, whose own
            # errors should not be logged as raised "during" this one
            self._drain_error_queue()

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        backlog = self._send_backlog
        sent = 0
        while sent < len(backlog):
            data, addr = backlog[sent]
            try:
                sock.sendto(data, addr)
                self.core.stats.datagrams_sent += 1
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in PENDING_ICMP_ERRORS:
                    self._drain_error_queue()
                    continue
                log.debug("send to %s:%d failed: %s", addr[0], addr[1], exc)
            sent += 1
        del backlog[:sent]
        if not backlog:
            self._loop.remove_writer(sock.fileno())
        if self.core.has_work():
            self._drive()

    def _drain_error_queue(self) -> None:
        """Read ICMP errors (IP_RECVERR): a closed port on a peer's address means it died."""
        sock = self._sock
        assert sock is not None
        unreachable: set[SocketAddress] = set()
        no_route: set[SocketAddress] = set()
        while True:
            try:
                _data, ancillary, _flags, addr = sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            for level, kind, payload in ancillary:
                if level != socket.IPPROTO_IP or kind != IP_RECVERR:
                    continue
                if len(payload) < _EXTENDED_ERROR.size:
                    continue
                error_number, origin, icmp_type = _EXTENDED_ERROR.unpack_from(payload)[:3]
                if origin != SO_EE_ORIGIN_ICMP or not addr:
                    continue
                if error_number == errno.ECONNREFUSED:
                    unreachable.add((addr[0], addr[1]))
                elif icmp_type == ICMP_DEST_UNREACH:  # not a punch opener's time exceeded
                    no_route.add((addr[0], addr[1]))
        now = self._time()
        for target in unreachable:
            self.core.port_unreachable(target, now)
        for target in no_route:
            self.core.no_route(target, now)

    def _send_openers(self, addr: SocketAddress, count: int) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        opener = control_datagram(ControlKind.PUNCH_OPENER, os.urandom(NONCE_BYTES))
        default_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.config.punch_ttl)
            for _ in range(count):
                with contextlib.suppress(OSError):
                    sock.sendto(opener, addr)
                    self.core.stats.datagrams_sent += 1
        finally:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, default_ttl)


def _fail(future: pykka.ThreadingFuture[Any], error: Exception) -> None:
    future.set_exception((type(error), error, None))
