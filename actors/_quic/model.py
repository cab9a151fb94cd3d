"""What the transport core and its shell share: configuration, counters, the
connection record of ``status``, and the events the core returns.

The core (``actors._quic.core``) returns effects as values: datagrams from
``datagrams_to_send`` and the events below from ``next_event``. The shell
(``actors._quic.endpoint``) turns them into socket writes, completed futures and
messages to actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from actors._quic.backend import QuicStack, SocketAddress
from actors.messages import (
    BeginHandshake,
    Direction,
    HandshakeClosed,
    HandshakeFrame,
    HandshakeTimer,
    PeerConnected,
    PeerDisconnected,
)
from protocol.errors import TransportError
from protocol.nat import Attempt, ControlKind
from protocol.relay import RelayLimits
from protocol.wire import Message


@dataclass(frozen=True)
class TransportConfig:
    """How the Transport listens and how patient it is."""

    host: str = "127.0.0.1"
    port: int = 0
    quic: QuicStack = "qh3"
    advertise_hosts: tuple[str, ...] = ()
    """Hosts to put in listen_addrs (default: the bound host, or this machine's
    addresses when bound to 0.0.0.0)."""
    idle_timeout: float = 60.0
    keepalive_interval: float = 15.0
    """QUIC PING period for connections used within the last ``idle_timeout``."""
    handshake_timeout: float = 10.0
    """TLS plus identity handshake must finish within this (dial timeout too)."""
    request_timeout: float = 30.0
    """Default deadline of a request: queueing, dialling, sending and the reply."""
    max_in_flight_per_peer: int = 32
    max_inbound_per_peer: int = 64
    stream_read_timeout: float = 30.0
    """An inbound request frame must be complete within this."""
    probe_interval: float = 1.0
    """With requests outstanding, PING a peer silent for this long."""
    peer_silence_timeout: float = 5.0
    """With requests outstanding, a peer silent this long despite PINGs is dead."""
    max_connections: int = 4096
    half_open_per_source: int = 16
    """Inbound connections not yet through the identity handshake, per source IP;
    a client Initial over the cap is dropped. Each must finish within
    ``handshake_timeout`` or is closed."""
    half_open_total: int = 256
    """Inbound connections not yet through the identity handshake, in all."""
    half_open_retry_above: int | None = None
    """From this many half-open connections on, a client must first answer a QUIC
    Retry (prove its address) to get a connection (None: half of ``half_open_total``;
    0: always)."""
    max_datagram_size: int = 1350
    socket_buffer_bytes: int = 4 * 1024 * 1024
    announce: bool = True
    """Tell peers our listen addresses. A client does not: peers then know it is no node
    and keep it out of their routing tables."""
    close_on_port_unreachable: bool = True
    """Close connections whose address answers ICMP port unreachable (a dead peer)."""
    punch_ttl: int = 2
    """IP TTL of hole-punch openers: enough to leave the home router, too little to
    reach the far side's (whose router would otherwise remember them and give our
    later flow another port)."""
    relay_limits: RelayLimits = field(default_factory=RelayLimits)


class ConnectionInfo(msgspec.Struct, frozen=True):
    """One authenticated connection, as ``status --json`` shows it."""

    peer_id: str
    direction: Direction
    remote_addr: str
    pq: bool
    """True when the key exchange was the hybrid post-quantum X25519MLKEM768."""
    group: str
    rtt_ms: float | None
    quic: str
    state: str
    """``ready``, or ``draining`` for the loser of a simultaneous dial."""
    age_s: float
    requests_in_flight: int
    requests_sent: int
    requests_served: int
    how: str = "direct"
    """How the connection was made: ``direct``, ``punched`` or ``relayed``."""


class TransportStats(msgspec.Struct):
    """Counters since start."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    datagrams_dropped: int = 0
    connections_opened: int = 0
    connections_accepted: int = 0
    connections_closed: int = 0
    duplicate_connections: int = 0
    handshakes_rejected_locally: int = 0
    handshakes_rejected_by_peer: int = 0
    setup_timeouts: int = 0
    requests_sent: int = 0
    requests_served: int = 0
    request_timeouts: int = 0
    malformed_frames: int = 0
    stalled_streams: int = 0
    busy_rejections: int = 0
    unexpected_streams: int = 0
    port_unreachable: int = 0
    stack_failures: int = 0
    """Connections given up because the QUIC stack raised on them."""
    event_holds: int = 0
    """Times a connection's stack held received events back (qh3, congestion window
    full; see ``actors._quic.backend``)."""
    half_open: int = 0
    """Inbound connections now between their first Initial and the identity
    handshake's acceptance (a gauge, not a counter)."""
    half_open_peak: int = 0
    """The most ``half_open`` has been."""
    half_open_refused: int = 0
    """Client Initials dropped because their source or the node was at its
    half-open cap (a refused client's retransmissions count again)."""
    retries_sent: int = 0
    """QUIC Retry packets sent (address validation under pressure)."""
    retry_tokens_rejected: int = 0
    """Initials whose token was not a valid, fresh Retry token of this node."""
    handshake_timeouts: int = 0
    """Inbound connections closed because their handshake (TLS and identity) was not
    done within ``handshake_timeout``."""
    cascades: int = 0
    """Dial cascades that involved NAT traversal (the peer has relayed addresses) or
    were asked for (``reach``)."""
    cascades_direct: int = 0
    cascades_punched: int = 0
    cascades_relayed: int = 0
    cascades_failed: int = 0


# -- events the core returns (``TransportCore.next_event``) -----------------------------


@dataclass(frozen=True, slots=True)
class RequestDone:
    """Request ``request_id`` (from ``TransportCore.request``) has its reply or failed."""

    request_id: int
    reply: Message | None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class DialDone:
    """Dial ``dial_id`` (from ``TransportCore.dial``) is connected and authenticated
    (``peer_id``) or failed."""

    dial_id: int
    peer_id: bytes | None
    error: TransportError | None = None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A peer's request: answer it with ``TransportCore.reply(conn_id, stream_id, ...)``."""

    conn_id: int
    stream_id: int
    peer_id: bytes
    message: Message


HandshakeMessage = BeginHandshake | HandshakeFrame | HandshakeTimer | HandshakeClosed


@dataclass(frozen=True, slots=True)
class ToHandshake:
    """A message for the Handshake actor (which answers through the core's sink)."""

    message: HandshakeMessage


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """A control datagram (a dial-back probe's nonce) arrived on the socket."""

    kind: ControlKind
    nonce: bytes
    addr: SocketAddress


@dataclass(frozen=True, slots=True)
class ReachResult:
    """How a dial cascade ended (``TransportCore.reach``; what ``connect`` prints)."""

    peer_id: bytes
    connected: bool
    how: str | None
    attempts: tuple[Attempt, ...]
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReachDone:
    """Reach ``reach_id`` (from ``TransportCore.reach``) ended."""

    reach_id: int
    result: ReachResult


@dataclass(frozen=True, slots=True)
class SendOpeners:
    """Open this side's NAT mapping toward ``addr`` (small-TTL datagrams: the shell's
    socket option, not the core's business)."""

    addr: SocketAddress


CoreEvent = (
    RequestDone
    | DialDone
    | ReachDone
    | RequestReceived
    | ToHandshake
    | SendOpeners
    | ControlReceived
    | PeerConnected
    | PeerDisconnected
)
