"""The transport core's streams: one request and its reply per bidirectional stream,
the per-peer queue of outbound requests, their deadlines and cancellation, inbound
requests held until the peer is authenticated, and refusals (busy, malformed,
stalled). Functions of the ``TransportCore`` they are given (its rules, split out)."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from actors._quic import circuits
from actors._quic.backend import (
    SocketAddress,
    StreamData,
)
from actors._quic.model import RequestReceived
from actors._quic.state import (
    _Conn,
    _Inbound,
    _Outbound,
    _Peer,
    _remember_addr,
    _short,
)
from actors.messages import (
    HandshakeClosed,
    HandshakeFrame,
)
from protocol.errors import (
    AppErrorCode,
    ConnectionLost,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    TransportClosed,
    TransportError,
    error_code_of_reset,
)
from protocol.multiaddr import format_multiaddr
from protocol.wire import (
    Announce,
    Error,
    ErrorCode,
    Hello,
    Message,
    Ok,
    Ping,
    Pong,
    Proof,
    WireError,
    encode_frame,
)

if TYPE_CHECKING:
    from actors._quic.core import TransportCore

log = logging.getLogger("actors.transport")


def on_stream_data(core: TransportCore, conn: _Conn, event: StreamData) -> None:
    stream_id = event.stream_id
    if stream_id & 2:  # unidirectional: only the handshake streams
        on_uni_data(core, conn, stream_id, event.data)
    elif conn.locally_initiated(stream_id):
        on_reply_data(core, conn, stream_id, event.data, event.end_stream)
    else:
        on_request_data(core, conn, stream_id, event.data, event.end_stream)


def on_uni_data(core: TransportCore, conn: _Conn, stream_id: int, data: bytes) -> None:
    if conn.locally_initiated(stream_id):
        return
    if conn.hs_recv_stream is None:
        conn.hs_recv_stream = stream_id
    if stream_id != conn.hs_recv_stream:
        core.stats.unexpected_streams += 1
        conn.quic.stop_stream(stream_id, AppErrorCode.PROTOCOL_VIOLATION)
        return
    if not data or conn.state == "ready":
        return
    try:
        messages = conn.hs_decoder.feed(data)
    except WireError as exc:
        core.stats.malformed_frames += 1
        core._tell_handshake(HandshakeClosed(conn.id, "malformed handshake frame", core._sink))
        core._reject(conn, "protocol_violation", f"malformed handshake frame: {exc}")
        return
    for message in messages:
        if conn.hs_pending is not None:
            conn.hs_pending.append(message)
        else:
            core._tell_handshake(HandshakeFrame(conn.id, message, core._sink))


def on_request_data(
    core: TransportCore, conn: _Conn, stream_id: int, data: bytes, end: bool
) -> None:
    inbound = conn.inbound.get(stream_id)
    if inbound is None:
        if stream_id in conn.recently_closed or any(i.stream_id == stream_id for i in conn.held):
            return
        if len(conn.inbound) + len(conn.held) >= core.config.max_inbound_per_peer:
            core.stats.busy_rejections += 1
            refuse_stream(core, conn, stream_id, AppErrorCode.BUSY)
            return
        inbound = _Inbound(stream_id)
        inbound.timer = core._call_later(
            core.config.stream_read_timeout, inbound_stalled, core, conn, inbound
        )
        conn.inbound[stream_id] = inbound
    if inbound.request is not None:
        if data:
            malformed(core, conn, inbound, "data after the request frame")
        return
    try:
        messages = inbound.decoder.feed(data)
    except WireError as exc:
        malformed(core, conn, inbound, str(exc))
        return
    if not messages:
        if end:
            malformed(core, conn, inbound, "stream ended inside a frame")
        return
    if len(messages) > 1 or inbound.decoder.buffered:
        malformed(core, conn, inbound, "more than one frame on a request stream")
        return
    inbound.request = messages[0]
    if inbound.timer is not None:
        inbound.timer.cancel()
        inbound.timer = None
    if conn.state != "ready":
        del conn.inbound[stream_id]
        conn.held.append(inbound)
        return
    handle_request(core, conn, inbound)


def handle_request(core: TransportCore, conn: _Conn, inbound: _Inbound) -> None:
    assert inbound.request is not None and conn.peer_id is not None
    conn.inbound[inbound.stream_id] = inbound
    conn.last_used = core._now
    request = inbound.request
    if isinstance(request, Announce):
        circuits.on_announce(core, conn, request.listen_addrs)
        send_reply(core, conn.id, inbound.stream_id, encode_frame(Ok()))
        return
    if isinstance(request, Ping):
        observed = (
            ""  # what a relayed connection "comes from" says nothing about the peer
            if conn.circuit is not None
            else format_multiaddr(conn.addr[0], conn.addr[1], conn.peer_id)
        )
        send_reply(core, conn.id, inbound.stream_id, encode_frame(Pong(request.nonce, observed)))
        return
    if isinstance(request, Hello | Proof):
        frame = encode_frame(Error(ErrorCode.MALFORMED, "handshake frame on a request stream"))
        send_reply(core, conn.id, inbound.stream_id, frame)
        return
    core._events.append(RequestReceived(conn.id, inbound.stream_id, conn.peer_id, request))


def send_reply(core: TransportCore, conn_id: int, stream_id: int, frame: bytes) -> None:
    conn = core._conns.get(conn_id)
    if conn is None or conn.state == "closed":
        return
    inbound = conn.inbound.pop(stream_id, None)
    if inbound is None:
        return  # cancelled by the requester meanwhile
    conn.recently_closed.append(stream_id)
    conn.requests_served += 1
    core.stats.requests_served += 1
    conn.quic.send(stream_id, frame, end_stream=True)
    core._touch(conn)
    core._maybe_close_drained(conn)


def malformed(core: TransportCore, conn: _Conn, inbound: _Inbound, detail: str) -> None:
    core.stats.malformed_frames += 1
    log.info(
        "malformed request from %s on stream %d: %s",
        _short(conn.peer_id),
        inbound.stream_id,
        detail,
    )
    drop_inbound(core, conn, inbound, AppErrorCode.FRAME_ERROR)


def inbound_stalled(core: TransportCore, conn: _Conn, inbound: _Inbound) -> None:
    inbound.timer = None
    if conn.state == "closed" or conn.inbound.get(inbound.stream_id) is not inbound:
        return
    core.stats.stalled_streams += 1
    drop_inbound(core, conn, inbound, AppErrorCode.STREAM_TIMEOUT)


def drop_inbound(core: TransportCore, conn: _Conn, inbound: _Inbound, code: AppErrorCode) -> None:
    if inbound.timer is not None:
        inbound.timer.cancel()
        inbound.timer = None
    conn.inbound.pop(inbound.stream_id, None)
    refuse_stream(core, conn, inbound.stream_id, code)
    core._maybe_close_drained(conn)


def refuse_stream(core: TransportCore, conn: _Conn, stream_id: int, code: AppErrorCode) -> None:
    conn.recently_closed.append(stream_id)
    conn.quic.stop_stream(stream_id, int(code))
    conn.quic.reset_stream(stream_id, int(code))
    core._touch(conn)


def on_stream_reset(core: TransportCore, conn: _Conn, stream_id: int, code: int) -> None:
    if stream_id & 2:
        return
    if conn.locally_initiated(stream_id):
        fail_outbound(core, conn, stream_id, code, f"stream reset with code {code:#x}")
    elif forget_inbound(conn, stream_id):
        core._maybe_close_drained(conn)


def on_stop_sending(core: TransportCore, conn: _Conn, stream_id: int, code: int) -> None:
    if stream_id & 2 or conn.locally_initiated(stream_id):
        fail_outbound(core, conn, stream_id, code, f"peer stopped stream ({code:#x})")
    elif forget_inbound(conn, stream_id):
        conn.quic.reset_stream(stream_id, int(AppErrorCode.CANCELLED))
        core._touch(conn)
        core._maybe_close_drained(conn)


def fail_outbound(core: TransportCore, conn: _Conn, stream_id: int, code: int, why: str) -> None:
    """The peer refused our request's stream: its caller gets a ``RemoteError``."""
    outbound = conn.outbound.get(stream_id)
    if outbound is not None:
        finish_outbound(core, outbound, error=RemoteError(error_code_of_reset(code), why))


def forget_inbound(conn: _Conn, stream_id: int) -> bool:
    """Forget a request the peer gave up on; False if it was not pending."""
    inbound = conn.inbound.pop(stream_id, None)
    if inbound is None:
        return False
    if inbound.timer is not None:
        inbound.timer.cancel()
    conn.recently_closed.append(stream_id)
    return True


# -- outbound requests ----------------------------------------------------------------


def submit(
    core: TransportCore, outbound: _Outbound, hints: list[SocketAddress], relayed: list[str]
) -> None:
    if core._closed:
        complete(core, outbound, error=TransportClosed("the transport is closed"))
        return
    outbound.timer = core._timers.call_at(outbound.deadline, request_expired, core, outbound)
    peer = core._peer(outbound.peer_id)
    if relayed and not hints:
        # the peer now says it is reachable only through relays: what direct
        # addresses were learnt of it before are stale (e.g. its LAN address)
        peer.addrs.clear()
    for addr in hints:
        _remember_addr(peer, addr)
    for text in relayed:
        if text not in peer.relayed:
            peer.relayed.append(text)
    peer.queue.append(outbound)
    pump(core, peer)


def pump(core: TransportCore, peer: _Peer) -> None:
    """Start queued requests on the peer's connection, or reach it."""
    conn = peer.conn
    if conn is None or conn.state != "ready":
        if peer.queue and not peer.dialing and not core.planner.running(peer.peer_id):
            reach_for_queue(core, peer)
        return
    while peer.queue and peer.in_flight < core.config.max_in_flight_per_peer:
        if not conn.quic.can_open_stream():
            return  # the peer's stream limit: wait for its MAX_STREAMS (see _service)
        outbound = peer.queue.popleft()
        if not outbound.done:
            start(core, conn, peer, outbound)


def reach_for_queue(core: TransportCore, peer: _Peer) -> None:
    """Start the cascade to the peer for its queued requests (its known direct
    addresses, then its relays)."""
    live = [o for o in peer.queue if not o.done]
    peer.queue = collections.deque(live)
    if not live:
        return
    if core._closed or not (peer.addrs or peer.relayed):
        error: TransportError = (
            TransportClosed("the transport is closed")
            if core._closed
            else PeerUnreachable(f"not connected to {_short(peer.peer_id)} and no address to dial")
        )
        while peer.queue:
            complete(core, peer.queue.popleft(), error=error)
        return
    direct = [format_multiaddr(host, port, peer.peer_id) for host, port in peer.addrs]
    # only a cascade that may need NAT traversal counts in the figures
    core.planner.start(
        peer.peer_id, direct, list(peer.relayed), core._now, counted=bool(peer.relayed)
    )


def start(core: TransportCore, conn: _Conn, peer: _Peer, outbound: _Outbound) -> None:
    stream_id = conn.quic.next_stream_id()
    if not conn.quic.send(stream_id, outbound.frame, end_stream=True):
        complete(core, outbound, error=ConnectionLost("the connection is closing"))
        return
    outbound.conn = conn
    outbound.stream_id = stream_id
    conn.outbound[stream_id] = outbound
    conn.requests_sent += 1
    conn.last_used = core._now
    if conn.probe_timer is None:
        conn.probe_timer = core._call_later(core.config.probe_interval, core._probe, conn)
    peer.in_flight += 1
    core.stats.requests_sent += 1
    core._touch(conn)


def on_reply_data(core: TransportCore, conn: _Conn, stream_id: int, data: bytes, end: bool) -> None:
    outbound = conn.outbound.get(stream_id)
    if outbound is None:
        return
    try:
        messages = outbound.decoder.feed(data)
    except WireError as exc:
        core.stats.malformed_frames += 1
        cancel_stream(core, conn, stream_id, AppErrorCode.FRAME_ERROR)
        finish_outbound(
            core, outbound, error=RemoteError(ErrorCode.MALFORMED, f"malformed reply: {exc}")
        )
        return
    if messages:
        reply = messages[0]
        if isinstance(reply, Error):
            finish_outbound(core, outbound, error=RemoteError(reply.code, reply.message))
        else:
            finish_outbound(core, outbound, reply=reply)
    elif end:
        finish_outbound(
            core, outbound, error=RemoteError(ErrorCode.MALFORMED, "reply stream ended early")
        )


def request_expired(core: TransportCore, outbound: _Outbound) -> None:
    outbound.timer = None
    if outbound.done:
        return
    core.stats.request_timeouts += 1
    conn = outbound.conn
    if conn is not None and conn.state != "closed":
        cancel_stream(core, conn, outbound.stream_id, AppErrorCode.CANCELLED)
    finish_outbound(core, outbound, error=RequestTimeout("no reply before the deadline"))


def cancel_stream(core: TransportCore, conn: _Conn, stream_id: int, code: AppErrorCode) -> None:
    conn.quic.reset_stream(stream_id, int(code))
    conn.quic.stop_stream(stream_id, int(code))
    core._touch(conn)


def finish_outbound(
    core: TransportCore,
    outbound: _Outbound,
    reply: Message | None = None,
    error: Exception | None = None,
) -> None:
    conn = outbound.conn
    peer = core._peers.get(outbound.peer_id)
    if conn is not None:
        conn.outbound.pop(outbound.stream_id, None)
        outbound.conn = None
        if peer is not None:
            peer.in_flight -= 1
    complete(core, outbound, reply, error)
    if peer is not None:
        pump(core, peer)
    if conn is not None:
        core._maybe_close_drained(conn)


def complete(
    core: TransportCore,
    outbound: _Outbound,
    reply: Message | None = None,
    error: Exception | None = None,
) -> None:
    if outbound.done:
        return
    outbound.done = True
    if outbound.timer is not None:
        outbound.timer.cancel()
        outbound.timer = None
    core._request_done(outbound.request_id, reply, error)
