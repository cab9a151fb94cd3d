"""Typed messages that travel between the node's actors.

Actors reach each other only through these (``tell`` for events, ``ask`` when a
reply is needed). Remote peers' requests arrive as ``InboundRequest``; the actor
that handles one answers by calling ``reply`` exactly once, from any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from protocol.wire import Message

Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A request from an authenticated remote peer, waiting for one reply message."""

    peer_id: bytes
    message: Message
    reply: Callable[[Message], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A peer passed the identity handshake on a new connection (sent to BucketManager)."""

    peer_id: bytes
    listen_addrs: tuple[str, ...]
    """Multiaddrs the peer can be dialled at."""
    remote_host: str
    remote_port: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """A connection to a peer closed (idle, error, or the peer went away)."""

    peer_id: bytes
    reason: str
