"""Bounded unauthenticated work: half-open connections are capped per source and in
all, expire, and under pressure a client must answer a QUIC Retry first.

Real sockets on loopback; other source addresses are other 127.0.0.x addresses. The
rules themselves (``actors._quic.admission``) are tested without sockets first.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from blake3 import blake3

from actors._quic.admission import (
    HalfOpenAdmission,
    HalfOpenLimits,
    RetryTokens,
    Verdict,
    parse_initial,
    retry_packet,
)
from actors._quic.backend import QuicSettings, QuicStack, TlsCertificate, make_backend
from actors.messages import StatusQuery
from protocol.errors import AppErrorCode
from protocol.wire import Chunk, GetChunk, Ping, Pong, PutAck, PutChunk
from tests.actors.quic_tools import RawEndpoint, wait_until
from tests.actors.transport_nodes import LiveNode, start_node


@pytest.fixture
def nodes() -> Iterator[list[LiveNode]]:
    started: list[LiveNode] = []
    yield started
    for node in started:
        node.stop()


@pytest.fixture
def raws() -> Iterator[list[RawEndpoint]]:
    started: list[RawEndpoint] = []
    yield started
    for raw in started:
        raw.close()


def client_initial(stack: QuicStack = "qh3") -> bytes:
    """A client's first datagram (an Initial carrying a ClientHello, padded)."""
    backend = make_backend(stack, TlsCertificate.generate(), QuicSettings())
    quic = backend.client()
    quic.connect(("127.0.0.1", 9), time.monotonic())
    ((data, _addr), *_rest) = quic.datagrams_to_send(time.monotonic())
    return data


def initial_with_forged_token(target: tuple[str, int], source: tuple[str, int]) -> bytes:
    """A client's Initial after a Retry whose token another node minted."""
    backend = make_backend("qh3", TlsCertificate.generate(), QuicSettings())
    quic = backend.client()
    now = time.monotonic()
    quic.connect(target, now)
    ((first, _addr), *_rest) = quic.datagrams_to_send(now)
    header = parse_initial(first)
    assert header is not None
    token = RetryTokens().mint(source, header.destination_cid, b"retrycid", now)
    quic.receive_datagram(retry_packet(header, b"retrycid", token), target, now)
    ((second, _addr), *_rest) = quic.datagrams_to_send(now)
    again = parse_initial(second)
    assert again is not None and again.token == token and again.destination_cid == b"retrycid"
    return second


def endpoint_counts(node: LiveNode) -> tuple[int, int]:
    """(connections, lingering closed connections) the node's endpoint holds."""
    endpoint = node.handle._endpoint
    return endpoint._call(lambda: (len(endpoint._conns), len(endpoint._lingering)))


def live_tls(raw: RawEndpoint) -> int:
    return raw.count(lambda c: c.tls_done.is_set() and not c.closed.is_set())


# -- the rules ---------------------------------------------------------------------------


def test_admission_caps_per_source_and_in_total_and_retries_under_pressure() -> None:
    admission = HalfOpenAdmission(HalfOpenLimits(per_source=2, total=4, retry_above=3))
    assert admission.decide("10.0.0.1", validated=False) is Verdict.ADMIT
    admission.opened(1, "10.0.0.1")
    admission.opened(2, "10.0.0.1")
    assert admission.decide("10.0.0.1", validated=True) is Verdict.REFUSE  # its cap
    assert admission.decide("10.0.0.2", validated=False) is Verdict.ADMIT
    admission.opened(3, "10.0.0.2")
    # three half-open in all: unvalidated clients must answer a Retry first
    assert admission.decide("10.0.0.3", validated=False) is Verdict.RETRY
    assert admission.decide("10.0.0.3", validated=True) is Verdict.ADMIT
    admission.opened(4, "10.0.0.3")
    assert admission.decide("10.0.0.4", validated=True) is Verdict.REFUSE  # the total
    assert admission.count == admission.peak == 4
    assert admission.finished(1) and not admission.finished(1)
    assert admission.from_source("10.0.0.1") == 1
    assert admission.decide("10.0.0.1", validated=True) is Verdict.ADMIT
    for conn_id in (2, 3, 4):
        admission.finished(conn_id)
    assert admission.count == 0 and admission.peak == 4
    assert admission.decide("10.0.0.1", validated=False) is Verdict.ADMIT


def test_retry_threshold_defaults_to_half_the_total() -> None:
    assert HalfOpenLimits(total=256).retry_threshold == 128
    assert HalfOpenLimits(total=256, retry_above=0).retry_threshold == 0


def test_an_initial_parses_and_a_retry_token_binds_address_and_connection_ids() -> None:
    header = parse_initial(client_initial())
    assert header is not None and header.version == 1 and header.token == b""
    assert len(header.destination_cid) == 8 and len(header.source_cid) == 8
    assert parse_initial(b"\x40" + bytes(1300)) is None  # a short header
    assert parse_initial(b"\xc0\x00") is None

    tokens = RetryTokens(lifetime=10.0)
    addr = ("192.0.2.7", 4433)
    token = tokens.mint(addr, b"original", b"retrycid", now=100.0)
    assert tokens.check(addr, b"retrycid", token, now=105.0) == b"original"
    assert tokens.check(("192.0.2.8", 4433), b"retrycid", token, now=105.0) is None
    assert tokens.check(("192.0.2.7", 4434), b"retrycid", token, now=105.0) is None
    assert tokens.check(addr, b"othercid", token, now=105.0) is None
    assert tokens.check(addr, b"retrycid", token, now=111.0) is None  # stale
    assert tokens.check(addr, b"retrycid", token[:-1] + b"\x00", now=105.0) is None
    assert RetryTokens().check(addr, b"retrycid", token, now=105.0) is None  # not ours

    packet = retry_packet(header, b"retrycid", token)
    assert packet[0] & 0xF0 == 0xF0  # long header, Retry
    assert header.source_cid in packet and token in packet


# -- a flood from one address ------------------------------------------------------------


def test_a_flood_from_one_address_is_capped_expires_and_honest_peers_stay_served(
    nodes: list[LiveNode], raws: list[RawEndpoint]
) -> None:
    cap = 4
    b = start_node(half_open_per_source=cap, half_open_total=64, handshake_timeout=1.5)
    warm = start_node()  # connected before the flood, from the flood's address
    nodes += [b, warm]
    content = b"x" * 1024
    address = blake3(content).digest()
    assert warm.handle.dial(b.addr).get(timeout=10) == b.peer_id
    assert isinstance(
        warm.handle.request(b.peer_id, PutChunk(address, content)).get(timeout=5), PutAck
    )

    flood = RawEndpoint(host="127.0.0.1")
    raws.append(flood)
    target = b.handle.local_address
    conns = flood.open_many(target, 40)
    # each one that gets in finishes TLS, then never starts the identity handshake
    assert wait_until(lambda: live_tls(flood) == cap, timeout=5)

    # meanwhile: a warm peer and a newcomer from another address are served
    reply = warm.handle.request(b.peer_id, GetChunk(address)).get(timeout=5)
    assert isinstance(reply, Chunk) and reply.content == content
    newcomer = start_node(host="127.0.0.2")
    nodes.append(newcomer)
    assert newcomer.handle.dial(b.addr).get(timeout=10) == b.peer_id
    reply = newcomer.handle.request(b.peer_id, GetChunk(address)).get(timeout=5)
    assert isinstance(reply, Chunk) and reply.content == content

    stats = b.handle.stats()
    assert stats.half_open_refused > 0
    assert stats.retries_sent == 0  # a handful in all: no pressure
    # the deadline closes what got in; refused clients retry and get in in turn
    assert wait_until(lambda: b.handle.stats().handshake_timeouts >= 2 * cap, timeout=15)
    assert b.handle.stats().half_open_peak <= cap + 1  # the flood's cap, and the newcomer
    assert live_tls(flood) <= cap
    # (a raw client reports the close after its draining period)
    assert wait_until(
        lambda: flood.count(lambda c: c.closed.is_set() and c.tls_done.is_set()) >= 2 * cap,
        timeout=10,
    )
    timed_out = [c for c in conns if c.closed.is_set() and c.tls_done.is_set()]
    assert all(c.close_code == AppErrorCode.HANDSHAKE_REJECTED for c in timed_out)

    # the flood stops: everything it held is released
    flood.close()
    assert wait_until(lambda: b.handle.stats().half_open == 0, timeout=10)
    assert wait_until(lambda: endpoint_counts(b) == (2, 0), timeout=10)  # warm, newcomer
    assert wait_until(lambda: b.handshake_stats().in_progress == 0, timeout=5)
    assert b.handle.stats().half_open_peak <= cap + 1
    assert isinstance(warm.handle.request(b.peer_id, Ping(nonce=7)).get(timeout=5), Pong)


def test_the_status_section_shows_the_half_open_counters(nodes: list[LiveNode]) -> None:
    b = start_node()
    nodes.append(b)
    status = cast(dict[str, Any], b.transport.ask(StatusQuery(), timeout=5))
    for key in (
        "half_open",
        "half_open_peak",
        "half_open_refused",
        "retries_sent",
        "handshake_timeouts",
    ):
        assert status["transport"][key] == 0


# -- the total cap, and Retry under pressure ---------------------------------------------


def test_many_sources_are_capped_in_total_and_validated_by_retry(
    nodes: list[LiveNode], raws: list[RawEndpoint]
) -> None:
    total = 8
    b = start_node(
        half_open_per_source=4, half_open_total=total, handshake_timeout=2.0
    )  # Retry from 4 half-open on
    nodes.append(b)
    target = b.handle.local_address
    floods = [RawEndpoint(host=f"127.0.0.{10 + i}") for i in range(4)]
    raws.extend(floods)
    for flood in floods:
        flood.open_many(target, 4)
    # real clients answer the Retry and get in, up to the total
    assert wait_until(lambda: sum(live_tls(f) for f in floods) == total, timeout=10)
    stats = b.handle.stats()
    assert stats.half_open <= stats.half_open_peak == total
    assert stats.retries_sent > 0
    assert stats.half_open_refused > 0
    assert all(live_tls(f) <= 4 for f in floods)
    assert wait_until(lambda: b.handle.stats().handshake_timeouts >= total, timeout=15)
    assert b.handle.stats().half_open_peak == total


@pytest.mark.parametrize(
    ("server", "client"),
    [("qh3", "qh3"), ("qh3", "aioquic"), ("aioquic", "qh3"), ("aioquic", "aioquic")],
)
def test_a_client_that_answers_the_retry_is_served(
    nodes: list[LiveNode], server: QuicStack, client: QuicStack
) -> None:
    b = start_node(stack=server, half_open_retry_above=0)  # always Retry first
    a = start_node(stack=client, host="127.0.0.2")
    nodes += [b, a]
    assert a.handle.dial(b.addr).get(timeout=10) == b.peer_id
    assert isinstance(a.handle.request(b.peer_id, Ping(nonce=3)).get(timeout=5), Pong)
    stats = b.handle.stats()
    # (one per datagram of the first flight: a post-quantum ClientHello takes two)
    assert stats.retries_sent >= 1 and stats.retry_tokens_rejected == 0
    assert stats.half_open == 0 and stats.half_open_peak == 1
    # the other way round: b dials a (no pressure on a), then requests flow both ways
    assert isinstance(b.handle.request(a.peer_id, Ping(nonce=4)).get(timeout=5), Pong)


def test_spoofed_initials_under_pressure_cost_no_connection(nodes: list[LiveNode]) -> None:
    b = start_node(half_open_retry_above=0)
    nodes.append(b)
    target = b.handle.local_address
    sockets = []
    try:
        for i in range(20):  # 20 "sources" that never read what is sent to them
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.0.{30 + i}", 0))
            sockets.append(sock)
            sock.sendto(client_initial(), target)
        assert wait_until(lambda: b.handle.stats().retries_sent == 20, timeout=5)
        # a token the node did not mint is no way in either
        sockets[0].sendto(initial_with_forged_token(target, sockets[0].getsockname()), target)
        assert wait_until(lambda: b.handle.stats().retry_tokens_rejected == 1, timeout=5)
    finally:
        for sock in sockets:
            sock.close()
    stats = b.handle.stats()
    assert stats.retries_sent == 20
    assert stats.connections_accepted == 0
    assert stats.half_open == stats.half_open_peak == 0
    assert endpoint_counts(b)[0] == 0


def test_an_honest_peer_from_a_flooded_address_gets_in_once_the_flood_expires(
    nodes: list[LiveNode], raws: list[RawEndpoint]
) -> None:
    b = start_node(half_open_per_source=2, handshake_timeout=1.0)
    nodes.append(b)
    flood = RawEndpoint(host="127.0.0.3")
    raws.append(flood)
    flood.open_many(b.handle.local_address, 2)
    assert wait_until(lambda: live_tls(flood) == 2, timeout=5)
    late = start_node(host="127.0.0.3")  # same address as the flood
    nodes.append(late)
    assert late.handle.dial(b.addr, timeout=10).get(timeout=15) == b.peer_id
    assert b.handle.stats().half_open_peak <= 2


def test_a_refused_flight_leaves_no_stillborn_connection(nodes: list[LiveNode]) -> None:
    """When a client's first datagram was refused at the cap and room frees up before
    its next one, a datagram that is not the start of a flight (the PING of a qh3
    probe) must not make a connection: it would fail the client's dial at once."""
    b = start_node()
    nodes.append(b)
    target = b.handle.local_address
    backend = make_backend("qh3", TlsCertificate.generate(), QuicSettings())
    quic = backend.client()
    now = time.monotonic()
    quic.connect(target, now)
    quic.datagrams_to_send(now)  # the first flight: "refused"
    at = quic.get_timer()
    assert at is not None
    quic.handle_timer(at)
    (_crypto, (ping, _addr)) = quic.datagrams_to_send(at)  # a probe: CRYPTO, then a PING
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.4", 0))
    sock.settimeout(0.5)
    try:
        sock.sendto(ping, target)
        assert wait_until(lambda: b.handle.stats().datagrams_received == 1, timeout=5)
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)  # no CONNECTION_CLOSE (nor anything else)
    finally:
        sock.close()
    assert endpoint_counts(b) == (0, 0)
    assert b.handle.stats().half_open == 0
