"""Bare QUIC tools for tests: a raw endpoint (no identity handshake of its own), a
terminating man-in-the-middle proxy, and a plain UDP forwarder.

They use the QUIC stacks through ``actors._quic.backend`` but none of the
Transport's logic, so a test can play a misbehaving or hostile peer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import heapq
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from actors._quic.backend import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    HandshakeDone,
    QuicConnectionAdapter,
    QuicEvent,
    QuicSettings,
    QuicStack,
    SocketAddress,
    StopSending,
    StreamData,
    StreamReset,
    Terminated,
    TlsCertificate,
    make_backend,
)
from protocol.handshake import (
    Accepted,
    IdentityHandshake,
    Rejected,
    Role,
    Send,
    Signer,
)
from protocol.wire import FrameDecoder, Message, encode_frame

_T = TypeVar("_T")

CLIENT_HANDSHAKE_STREAM = 2
SERVER_HANDSHAKE_STREAM = 3


@dataclass(eq=False)
class RawConn:
    endpoint: RawEndpoint
    quic: QuicConnectionAdapter
    role: Role
    addr: SocketAddress
    tls_done: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    close_code: int | None = None
    close_reason: str = ""
    data: dict[int, bytearray] = field(default_factory=lambda: collections.defaultdict(bytearray))
    ended: set[int] = field(default_factory=set)
    resets: dict[int, int] = field(default_factory=dict)
    stops: dict[int, int] = field(default_factory=dict)
    on_event: Callable[[RawConn, QuicEvent], None] | None = None
    timer: asyncio.TimerHandle | None = None
    cids: set[bytes] = field(default_factory=set)

    # -- any thread --------------------------------------------------------------------

    @property
    def cert_hash(self) -> bytes:
        """SHA-256 of the server certificate as this connection saw it."""
        if self.role is Role.SERVER:
            return self.endpoint.certificate.sha256
        der = self.endpoint.call(self.quic.peer_certificate_der)
        assert der is not None
        return hashlib.sha256(der).digest()

    def new_stream(self, unidirectional: bool = False) -> int:
        return self.endpoint.call(lambda: self.quic.next_stream_id(unidirectional))

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        def run() -> None:
            self.quic.send(stream_id, data, end)
            self.endpoint.service(self)

        self.endpoint.call(run)

    def reset(self, stream_id: int, code: int) -> None:
        def run() -> None:
            self.quic.reset_stream(stream_id, code)
            self.endpoint.service(self)

        self.endpoint.call(run)

    def close(self, code: int = 0, reason: str = "") -> None:
        def run() -> None:
            self.quic.close(code, reason)
            self.endpoint.service(self)

        self.endpoint.call(run)

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.endpoint.condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.endpoint.condition.wait(remaining)
        return True

    def messages(self, stream_id: int) -> list[Message]:
        """Every complete frame received on ``stream_id`` so far."""
        with self.endpoint.condition:
            raw = bytes(self.data.get(stream_id, b""))
        return FrameDecoder().feed(raw)

    def wait_messages(self, stream_id: int, count: int, timeout: float = 5.0) -> list[Message]:
        self.wait(
            lambda: len(self._try_messages(stream_id)) >= count or self.closed.is_set(), timeout
        )
        return self._try_messages(stream_id)

    def _try_messages(self, stream_id: int) -> list[Message]:
        try:
            return FrameDecoder().feed(bytes(self.data.get(stream_id, b"")))
        except Exception:
            return []


class RawEndpoint:
    """One UDP socket and any number of raw QUIC connections, on a loop thread."""

    def __init__(
        self,
        stack: QuicStack = "qh3",
        on_accept: Callable[[RawConn], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.certificate = TlsCertificate.generate()
        self.backend = make_backend(stack, self.certificate, QuicSettings())
        self.on_accept = on_accept
        self.condition = threading.Condition()
        self.conns: list[RawConn] = []
        self._cids: dict[bytes, RawConn] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address: SocketAddress = self.sock.getsockname()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="raw-quic")
        started = threading.Event()
        self.loop.call_soon(started.set)
        self._thread.start()
        started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self.loop.run_forever()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.loop.close()

    def call(self, function: Callable[[], _T], timeout: float = 5.0) -> _T:
        if threading.current_thread() is self._thread:
            return function()
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(function), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        def run() -> None:
            for conn in self.conns:
                if not conn.closed.is_set():
                    conn.quic.close(0, "bye")
                    self.service(conn)
            self.loop.stop()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(run)
            self._thread.join(5)

    def connect(self, addr: SocketAddress, timeout: float = 5.0) -> RawConn:
        conn = self.open(addr)
        if not conn.wait(conn.tls_done.is_set, timeout):
            raise TimeoutError(f"no QUIC handshake with {addr}")
        return conn

    def open(self, addr: SocketAddress) -> RawConn:
        """Start a connection to ``addr`` without waiting for its QUIC handshake."""

        def run() -> RawConn:
            quic = self.backend.client()
            quic.connect(addr, self.loop.time())
            conn = RawConn(self, quic, Role.CLIENT, addr)
            self._register(conn)
            self.service(conn)
            return conn

        return self.call(run)

    def open_many(self, addr: SocketAddress, count: int) -> list[RawConn]:
        """Start ``count`` connections to ``addr`` at once (one loop turn)."""
        return self.call(lambda: [self.open(addr) for _ in range(count)], timeout=60.0)

    def count(self, predicate: Callable[[RawConn], bool]) -> int:
        """How many of this endpoint's connections satisfy ``predicate``."""
        with self.condition:
            return sum(1 for conn in self.conns if predicate(conn))

    # -- loop thread ---------------------------------------------------------------------

    def _register(self, conn: RawConn) -> None:
        self.conns.append(conn)
        self._cids[conn.quic.host_cid] = conn
        conn.cids.add(conn.quic.host_cid)

    def _readable(self) -> None:
        touched: dict[RawConn, None] = {}
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            cid = _dcid(data)
            conn = self._cids.get(cid)
            if conn is None:
                if len(data) < 1200 or data[0] & 0xF0 != 0xC0:
                    continue
                conn = RawConn(self, self.backend.server(cid), Role.SERVER, addr)
                self._register(conn)
                self._cids[cid] = conn
                if self.on_accept is not None:
                    self.on_accept(conn)
            conn.quic.receive_datagram(data, addr, self.loop.time())
            touched[conn] = None
        for conn in touched:
            self.service(conn)

    def service(self, conn: RawConn) -> None:
        while (event := conn.quic.next_event()) is not None:
            self._on_event(conn, event)
        for data, addr in conn.quic.datagrams_to_send(self.loop.time()):
            with contextlib.suppress(OSError):
                self.sock.sendto(data, addr)
        if conn.timer is not None:
            conn.timer.cancel()
        at = conn.quic.get_timer()
        conn.timer = None if at is None else self.loop.call_at(at, self._on_timer, conn)

    def _on_timer(self, conn: RawConn) -> None:
        conn.timer = None
        conn.quic.handle_timer(self.loop.time())
        self.service(conn)

    def _on_event(self, conn: RawConn, event: QuicEvent) -> None:
        with self.condition:
            match event:
                case HandshakeDone():
                    conn.tls_done.set()
                case StreamData(stream_id=stream_id, data=data, end_stream=end):
                    conn.data[stream_id] += data
                    if end:
                        conn.ended.add(stream_id)
                case StreamReset(stream_id=stream_id, error_code=code):
                    conn.resets[stream_id] = code
                case StopSending(stream_id=stream_id, error_code=code):
                    conn.stops[stream_id] = code
                case ConnectionIdIssued(connection_id=cid):
                    self._cids[cid] = conn
                case ConnectionIdRetired(connection_id=cid):
                    self._cids.pop(cid, None)
                case Terminated(error_code=code, reason=reason):
                    conn.close_code = code
                    conn.close_reason = reason
                    conn.closed.set()
            self.condition.notify_all()
        if conn.on_event is not None:
            conn.on_event(conn, event)


async def _as_coroutine(function: Callable[[], _T]) -> _T:
    return function()


def _dcid(data: bytes) -> bytes:
    if data[0] & 0x80:
        return data[6 : 6 + data[5]]
    return data[1:9]


# -- playing the identity handshake by hand --------------------------------------------


def run_identity_handshake(
    conn: RawConn,
    signer: Signer,
    *,
    expected_peer_id: bytes | None = None,
    tamper: Callable[[Message], Message] | None = None,
    timeout: float = 5.0,
) -> Accepted | Rejected | None:
    """Play the client side of the identity handshake on ``conn``; ``tamper`` may
    rewrite each outgoing message. Returns this side's verdict (None if the peer
    closed first)."""
    machine = IdentityHandshake(
        signer=signer,
        role=Role.CLIENT,
        cert_hash=conn.cert_hash,
        now=time.monotonic(),
        expected_peer_id=expected_peer_id,
    )
    stream = conn.new_stream(unidirectional=True)
    outputs = machine.start()
    seen = 0
    deadline = time.monotonic() + timeout
    while True:
        for output in outputs:
            if isinstance(output, Send):
                message: Message = output.message
                if tamper is not None:
                    message = tamper(message)
                conn.send(stream, encode_frame(message))
            elif isinstance(output, Accepted | Rejected):
                return output
        outputs = []
        received = conn.wait_messages(
            SERVER_HANDSHAKE_STREAM, seen + 1, deadline - time.monotonic()
        )
        if len(received) <= seen:
            return None
        for message in received[seen:]:
            outputs += machine.receive(message, time.monotonic())
        seen = len(received)


def send_raw_handshake(conn: RawConn, messages: list[Message]) -> None:
    """Send exact handshake frames (recorded or forged) on a fresh uni stream."""
    stream = conn.new_stream(unidirectional=True)
    for message in messages:
        conn.send(stream, encode_frame(message))


# -- a terminating man in the middle ---------------------------------------------------


class MitmProxy:
    """Accepts QUIC with its own certificate and opens its own QUIC connection to
    ``target``; relays the handshake frames both ways (optionally rewriting them)."""

    def __init__(
        self,
        target: SocketAddress,
        rewrite: Callable[[Message, str], Message] | None = None,
        stack: QuicStack = "qh3",
    ) -> None:
        self.target = target
        self.rewrite = rewrite
        self.endpoint = RawEndpoint(stack, on_accept=self._accepted)
        self.address = self.endpoint.address
        self.relayed: list[tuple[str, Message]] = []
        self._links: dict[RawConn, _Link] = {}

    def close(self) -> None:
        self.endpoint.close()

    def _accepted(self, downstream: RawConn) -> None:
        downstream.on_event = self._on_event

    def _on_event(self, conn: RawConn, event: QuicEvent) -> None:
        endpoint = self.endpoint
        if isinstance(event, HandshakeDone) and conn.role is Role.SERVER:
            quic = endpoint.backend.client()
            quic.connect(self.target, endpoint.loop.time())
            upstream = RawConn(endpoint, quic, Role.CLIENT, self.target)
            upstream.on_event = self._on_event
            endpoint._register(upstream)
            self._links[conn] = _Link(upstream, "to_server")
            self._links[upstream] = _Link(conn, "to_client")
            endpoint.service(upstream)
        elif isinstance(event, HandshakeDone) and conn.role is Role.CLIENT:
            self._flush(self._links[self._links[conn].other])
        elif isinstance(event, StreamData) and event.stream_id & 2 and conn in self._links:
            link = self._links[conn]
            for received in link.decoder.feed(event.data):
                message = (
                    received if self.rewrite is None else self.rewrite(received, link.direction)
                )
                self.relayed.append((link.direction, message))
                link.pending.append(message)
            self._flush(link)

    def _flush(self, link: _Link) -> None:
        other = link.other
        if not other.tls_done.is_set() or not link.pending:
            return
        if link.out_stream is None:
            link.out_stream = other.quic.next_stream_id(True)
        for message in link.pending:
            other.quic.send(link.out_stream, encode_frame(message))
        link.pending.clear()
        self.endpoint.service(other)


@dataclass(eq=False)
class _Link:
    other: RawConn
    direction: str
    out_stream: int | None = None
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    pending: list[Message] = field(default_factory=list)


# -- a plain UDP forwarder (a path, not a party) -------------------------------------------


class UdpForwarder:
    """Forwards datagrams between clients and ``target``; each client gets its own
    upstream socket, as a NAT would."""

    def __init__(self, target: SocketAddress) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address: SocketAddress = self.sock.getsockname()
        self.forwarded = 0
        self._upstreams: dict[SocketAddress, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="udp-forwarder")
        self._thread.start()

    def _run(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                data, addr = sock.recvfrom(65535)
                self.forwarded += 1
                if key.data is None:  # from a client
                    upstream = self._upstreams.get(addr)
                    if upstream is None:
                        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        upstream.bind(("127.0.0.1", 0))
                        self._upstreams[addr] = upstream
                        selector.register(upstream, selectors.EVENT_READ, addr)
                    upstream.sendto(data, self.target)
                else:
                    self.sock.sendto(data, key.data)
        for upstream in self._upstreams.values():
            upstream.close()
        self.sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class ImpairedForwarder(UdpForwarder):
    """A ``UdpForwarder`` over a bad path: from a seeded generator, each datagram is
    lost with probability ``loss`` or held back up to ``jitter`` seconds (so
    datagrams arrive out of order)."""

    def __init__(self, target: SocketAddress, loss: float, jitter: float, seed: int = 1) -> None:
        self.loss = loss
        self.jitter = jitter
        self._rng = random.Random(seed)
        self._later: list[tuple[float, int, socket.socket, bytes, SocketAddress]] = []
        self._sequence = 0
        self.lost = 0
        super().__init__(target)

    def _run(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                _, _, sender, data, target = heapq.heappop(self._later)
                with contextlib.suppress(OSError):
                    sender.sendto(data, target)
            wait = 0.05 if not self._later else max(0.0, self._later[0][0] - now)
            for key, _ in selector.select(wait):
                receiver: socket.socket = key.fileobj  # type: ignore[assignment]
                data, addr = receiver.recvfrom(65535)
                self.forwarded += 1
                if key.data is None:  # from a client
                    out = self._upstreams.get(addr)
                    if out is None:
                        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        out.bind(("127.0.0.1", 0))
                        self._upstreams[addr] = out
                        selector.register(out, selectors.EVENT_READ, addr)
                    target = self.target
                else:
                    out, target = self.sock, key.data
                if self._rng.random() < self.loss:
                    self.lost += 1
                    continue
                self._sequence += 1
                at = time.monotonic() + self._rng.uniform(0.0, self.jitter)
                heapq.heappush(self._later, (at, self._sequence, out, data, target))
        for upstream in self._upstreams.values():
            upstream.close()
        self.sock.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
