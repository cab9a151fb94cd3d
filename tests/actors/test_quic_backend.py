"""Both QUIC stacks through ``actors._quic.backend``, sans-IO: two connections in one
thread, datagrams carried by hand over a simulated path, time simulated too.

Regression: qh3 failed with ``ValueError: reserved stream is missing`` (in
``datagrams_to_send``) when a stream finished while one of its frames waited in the
core for congestion window; the connection was then unusable.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator

import pytest

from actors._quic.backend import (
    QuicConnectionAdapter,
    QuicEvent,
    QuicSettings,
    QuicStack,
    SocketAddress,
    StopSending,
    StreamData,
    StreamReset,
    TlsCertificate,
    make_backend,
)
from actors._quic.endpoint import _destination_cid
from protocol.errors import AppErrorCode

CLIENT: SocketAddress = ("127.0.0.1", 4001)
SERVER: SocketAddress = ("127.0.0.1", 4002)
STACKS: tuple[QuicStack, ...] = ("qh3", "aioquic")


def events(conn: QuicConnectionAdapter) -> Iterator[QuicEvent]:
    while (event := conn.next_event()) is not None:
        yield event


def carry(source: QuicConnectionAdapter, target: QuicConnectionAdapter, now: float) -> int:
    """Everything ``source`` has to send, received by ``target`` at once."""
    datagrams = source.datagrams_to_send(now)
    source_addr = CLIENT if source.is_client else SERVER
    for data, _ in datagrams:
        target.receive_datagram(data, source_addr, now)
    return len(datagrams)


def connect(stack: QuicStack) -> tuple[QuicConnectionAdapter, QuicConnectionAdapter, float]:
    backend = make_backend(stack, TlsCertificate.generate(), QuicSettings())
    client = backend.client()
    now = 1.0
    client.connect(SERVER, now)
    first = client.datagrams_to_send(now)
    dcid = _destination_cid(first[0][0])
    assert dcid is not None
    server = backend.server(original_dcid=dcid)
    for data, _ in first:
        server.receive_datagram(data, CLIENT, now)
    for _ in range(6):
        carry(server, client, now)
        carry(client, server, now)
    list(events(client))
    list(events(server))
    assert client.close_event() is None and server.close_event() is None
    return client, server, now


@pytest.mark.parametrize("stack", STACKS)
def test_a_request_cancelled_behind_a_full_window_then_answered(stack: QuicStack) -> None:
    """The requester gives up on a request (RESET_STREAM and STOP_SENDING, as on a
    timeout) while its congestion window is full of other requests, so the two
    frames wait; the answer then arrives and completes the stream; the window opens."""
    waited = 0
    for others in range(8, 19):
        client, server, now = connect(stack)
        request = client.next_stream_id()
        client.send(request, b"request", end_stream=True)
        carry(client, server, now)
        list(events(server))
        now += 0.05
        server.handle_timer(now)  # its delayed ACK: the request is acknowledged
        carry(server, client, now)
        carry(client, server, now)
        list(events(client))
        for _ in range(others):
            client.send(client.next_stream_id(), bytes(2000), end_stream=True)
        client.reset_stream(request, AppErrorCode.CANCELLED)
        client.stop_stream(request, AppErrorCode.CANCELLED)
        first_flight = client.datagrams_to_send(now)  # until the window is full

        server.send(request, b"reply", end_stream=True)  # before the cancel arrives
        now += 0.01
        carry(server, client, now)  # completes the request stream at the client
        for data, _ in first_flight:
            server.receive_datagram(data, CLIENT, now)
        seen = [(type(e), getattr(e, "stream_id", None)) for e in events(server)]
        if (StopSending, request) not in seen and (StreamReset, request) not in seen:
            waited += 1  # the cancel frames were still waiting at the client
        now += 0.05
        server.handle_timer(now)
        carry(server, client, now)  # acknowledgements: the client's window opens
        carry(client, server, now)  # what waited goes (this raised in qh3)
        carry(server, client, now)
        list(events(client))
        assert client.close_event() is None and server.close_event() is None
    if stack == "qh3":  # aioquic sends such control frames ahead of stream data
        assert waited > 0, "the scenario never made the cancel frames wait"


class LossyPath:
    """Datagrams in both directions, each delayed by a random amount (so reordered)
    or lost, from a seeded generator."""

    def __init__(self, rng: random.Random, loss: float, delay: tuple[float, float]) -> None:
        self.rng = rng
        self.loss = loss
        self.delay = delay
        self._queue: list[tuple[float, int, QuicConnectionAdapter, bytes, SocketAddress]] = []
        self._sequence = 0

    def send(
        self, source: QuicConnectionAdapter, target: QuicConnectionAdapter, now: float
    ) -> None:
        source_addr = CLIENT if source.is_client else SERVER
        for data, _ in source.datagrams_to_send(now):
            if self.rng.random() < self.loss:
                continue
            self._sequence += 1
            at = now + self.rng.uniform(*self.delay)
            heapq.heappush(self._queue, (at, self._sequence, target, data, source_addr))

    def deliver(self, now: float) -> None:
        while self._queue and self._queue[0][0] <= now:
            _, _, target, data, source_addr = heapq.heappop(self._queue)
            target.receive_datagrams([data], source_addr, now)


def run_requests(stack: QuicStack, seed: int, steps: int) -> int:
    """Requests and replies of mixed sizes over a lossy, reordering path; the
    requester cancels some (reset and stop), the server refuses some (stop and
    reset) and answers a peer's STOP_SENDING with a reset, as the endpoint does.
    Returns how many requests completed."""
    rng = random.Random(seed)
    client, server, now = connect(stack)
    path = LossyPath(rng, loss=0.02, delay=(0.001, 0.02))
    live: set[int] = set()
    completed = 0
    reply_due: dict[int, float | None] = {}  # server side; None once answered
    for _ in range(steps):
        now += rng.uniform(0.0005, 0.004)
        roll = rng.random()
        if roll < 0.3 and len(live) < 40:
            stream = client.next_stream_id()
            client.send(stream, bytes(rng.choice((20, 1500, 5000))), end_stream=True)
            live.add(stream)
        elif roll < 0.35 and live:
            stream = rng.choice(sorted(live))
            live.discard(stream)
            client.reset_stream(stream, AppErrorCode.CANCELLED)
            client.stop_stream(stream, AppErrorCode.CANCELLED)
        for stream, due in list(reply_due.items()):
            if due is not None and now >= due:
                reply_due[stream] = None
                if rng.random() < 0.85:
                    reply = bytes(rng.choice((30, 2000, 9000)))
                    server.send(stream, reply, end_stream=True)
                else:
                    server.stop_stream(stream, AppErrorCode.BUSY)
                    server.reset_stream(stream, AppErrorCode.BUSY)
        for conn in (client, server):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        path.deliver(now)
        for event in events(server):
            if isinstance(event, StreamData) and event.end_stream:
                reply_due.setdefault(event.stream_id, now + rng.uniform(0.0, 0.2))
            elif isinstance(event, StopSending) and reply_due.get(event.stream_id) is not None:
                reply_due[event.stream_id] = None
                server.reset_stream(event.stream_id, AppErrorCode.CANCELLED)
        for event in events(client):
            if isinstance(event, StreamData) and not event.end_stream:
                continue
            if isinstance(event, StreamData | StreamReset) and event.stream_id in live:
                live.discard(event.stream_id)
                completed += 1
        path.send(client, server, now)
        path.send(server, client, now)
    assert client.close_event() is None and server.close_event() is None
    return completed


@pytest.mark.parametrize(
    ("stack", "seed", "steps"),
    [("qh3", 0, 1500), ("qh3", 1, 1500), ("qh3", 2, 1500), ("aioquic", 0, 400)],
)
def test_requests_over_a_lossy_reordering_path(stack: QuicStack, seed: int, steps: int) -> None:
    """Retransmissions and probe copies of frames wait for window too, and the
    original's acknowledgement can complete their stream first."""
    assert run_requests(stack, seed, steps) > 0
