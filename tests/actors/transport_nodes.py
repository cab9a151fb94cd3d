"""Transport + Handshake actors started as a minimal node, for tests and child processes."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
from blake3 import blake3

from actors._quic.backend import QuicStack
from actors.handshake import Handshake, HandshakeStats, HandshakeStatsQuery
from actors.messages import InboundRequest, PeerConnected, PeerDisconnected
from actors.transport import Transport, TransportConfig, TransportHandle
from protocol.identity import Identity
from protocol.wire import (
    Chunk,
    Error,
    ErrorCode,
    FindNode,
    GetChunk,
    Nodes,
    NotFound,
    PutAck,
    PutChunk,
)


@dataclass
class ChunkStore:
    """A dispatcher serving FindNode, PutChunk and GetChunk from memory."""

    chunks: dict[bytes, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: InboundRequest) -> None:
        message = request.message
        if isinstance(message, FindNode):
            request.reply(Nodes(peers=[]))
        elif isinstance(message, PutChunk):
            if blake3(message.content).digest() != message.address:
                request.reply(Error(ErrorCode.BAD_CHUNK, "content does not match the address"))
                return
            with self.lock:
                self.chunks[message.address] = message.content
            request.reply(PutAck(message.address))
        elif isinstance(message, GetChunk):
            with self.lock:
                content = self.chunks.get(message.address)
            if content is None:
                request.reply(NotFound(message.address))
            else:
                request.reply(Chunk(message.address, content))
        else:
            request.reply(Error(ErrorCode.UNSUPPORTED, type(message).__name__))


@dataclass
class LiveNode:
    identity: Identity
    handshake: pykka.ActorRef[Any]
    transport: pykka.ActorRef[Any]
    handle: TransportHandle
    connected: list[PeerConnected]
    disconnected: list[PeerDisconnected]

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    @property
    def addr(self) -> str:
        return self.handle.listen_addrs()[0]

    def handshake_stats(self) -> HandshakeStats:
        stats = self.handshake.ask(HandshakeStatsQuery(), timeout=5)
        assert isinstance(stats, HandshakeStats)
        return stats

    def stop(self) -> None:
        for ref in (self.transport, self.handshake):
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(timeout=10)


def start_node(
    identity: Identity | None = None,
    *,
    stack: QuicStack = "qh3",
    dispatch: Callable[[InboundRequest], None] | None = None,
    **config: Any,
) -> LiveNode:
    identity = identity or Identity.generate()
    connected: list[PeerConnected] = []
    disconnected: list[PeerDisconnected] = []
    handshake = Handshake.start(identity)
    settings = dataclasses.replace(TransportConfig(), quic=stack, **config)
    try:
        transport = Transport.start(
            identity,
            handshake,
            settings,
            dispatch=dispatch or ChunkStore(),
            on_peer_connected=connected.append,
            on_peer_disconnected=disconnected.append,
        )
    except BaseException:
        handshake.stop()
        raise
    handle = Transport.handle_of(transport)
    return LiveNode(identity, handshake, transport, handle, connected, disconnected)
