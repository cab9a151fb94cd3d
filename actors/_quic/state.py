"""The transport core's records (connections, peers, requests), constants and helpers."""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from actors._quic.backend import (
    CONNECTION_ID_BYTES,
    QuicConnectionAdapter,
    SocketAddress,
)
from actors._quic.timers import Timer
from actors.messages import Direction
from protocol.handshake import Role
from protocol.multiaddr import (
    Multiaddr,
    parse_multiaddr,
    split_addrs,
)
from protocol.nat import How
from protocol.wire import (
    FrameDecoder,
    Message,
)

DRAINING_BACKSTOP: Final = 10.0
RECENTLY_CLOSED_STREAMS: Final = 1024
HANDSHAKE_BACKSTOP: Final = 1.0
ICMP_MIN_SILENCE: Final = 0.25
"""An ICMP port unreachable closes a connection only if its peer has been silent this
long (seconds)."""
SERVICE_ROUNDS: Final = 4
"""Rounds of handling events and sending for one connection in one flush."""
CLOSE_LINGER: Final = 2.0
"""A connection this node closed keeps answering its peer's packets (with the
stack's CONNECTION_CLOSE) this long, in case the first close was lost."""

MAX_CIRCUIT_PAYLOAD: Final = 1310
"""Largest DATAGRAM frame payload sent on a relay leg: a larger one does not fit a
1350-byte packet (qh3 then fails the whole connection). Bigger inner datagrams (path
MTU probes) are dropped, as a path with that MTU would."""
VIRTUAL_NET: Final = "0."
"""Connections through a relay get a virtual peer address in 0.0.0.0/8 (no packet is
ever sent to one: ``_sendto`` hands them to the relay)."""
EXPECTED_PUNCH_SECONDS: Final = 15.0
MAX_RELAYED_PER_PEER: Final = 4

ConnState = Literal["quic", "identity", "ready", "closed"]


# -- per-connection and per-request state (loop thread only) --------------------------


@dataclass(eq=False)
class _Outbound:
    peer_id: bytes
    frame: bytes = field(repr=False)
    request_id: int
    deadline: float
    timer: Timer | None = None
    conn: _Conn | None = None
    stream_id: int = -1
    decoder: FrameDecoder = field(default_factory=FrameDecoder, repr=False)
    retries: int = 0
    done: bool = False


@dataclass(eq=False)
class _Inbound:
    stream_id: int
    decoder: FrameDecoder = field(default_factory=FrameDecoder, repr=False)
    request: Message | None = None
    timer: Timer | None = None


@dataclass(eq=False)
class _Conn:
    id: int
    quic: QuicConnectionAdapter
    role: Role
    addr: SocketAddress
    created_at: float
    state: ConnState = "quic"
    draining: bool = False
    peer_id: bytes | None = None
    listen_addrs: tuple[str, ...] = ()
    expected_peer_id: bytes | None = None
    dial_addr: SocketAddress | None = None
    dial_ids: list[int] = field(default_factory=list)
    """The dials waiting for this connection (``DialDone`` when it is ready or closed)."""
    group: int | None = None
    instance: bytes = b""
    """The peer's per-process instance id, from its Hello."""
    transcript: bytes = b""
    cids: set[bytes] = field(default_factory=set)
    timer: Timer | None = None
    timer_at: float | None = None
    setup_timer: Timer | None = None
    keepalive_timer: Timer | None = None
    probe_timer: Timer | None = None
    last_received: float = 0.0
    drain_timer: Timer | None = None
    hs_send_stream: int | None = None
    hs_recv_stream: int | None = None
    hs_decoder: FrameDecoder = field(default_factory=FrameDecoder)
    hs_pending: list[Message] | None = field(default_factory=list)
    """Handshake frames received before the Handshake actor was told to begin."""
    outbound: dict[int, _Outbound] = field(default_factory=dict)
    inbound: dict[int, _Inbound] = field(default_factory=dict)
    held: list[_Inbound] = field(default_factory=list)
    recently_closed: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=RECENTLY_CLOSED_STREAMS)
    )
    ready_at: float = 0.0
    last_used: float = 0.0
    requests_sent: int = 0
    requests_served: int = 0
    ping_uids: dict[int, float] = field(default_factory=dict)
    rtt_sample: float | None = None
    holding_events: bool = False
    how: How = How.DIRECT
    circuit: tuple[bytes, int] | None = None
    """(relay PeerId, circuit id) of a connection carried through a relay."""
    pinned: bool = False
    """Kept alive even when idle (the connection to this node's relay)."""
    hello_addrs: tuple[str, ...] = ()
    """The addresses this node's Hello announced on this connection."""
    reach: tuple[int, int] | None = None
    """The cascade step this dial carries out (``ReachPlanner`` token)."""

    @property
    def direction(self) -> Direction:
        return "outbound" if self.role is Role.CLIENT else "inbound"

    def locally_initiated(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self.role is Role.CLIENT else 1)


@dataclass(eq=False)
class _Peer:
    peer_id: bytes
    conn: _Conn | None = None
    queue: collections.deque[_Outbound] = field(default_factory=collections.deque)
    in_flight: int = 0
    addrs: list[SocketAddress] = field(default_factory=list)
    relayed: list[str] = field(default_factory=list)
    """Circuit multiaddrs of the peer (it is behind NAT and holds relay reservations)."""
    dialing: bool = False
    tried: set[str] = field(default_factory=set)
    """Direct multiaddrs the cascades for the current queue tried (an address learnt
    meanwhile gets its own try before the queue fails)."""


# -- module helpers ------------------------------------------------------------------


def _destination_cid(data: bytes) -> bytes | None:
    """The destination connection ID of a QUIC datagram's first packet."""
    if not data:
        return None
    if data[0] & 0x80:  # long header
        if len(data) < 6:
            return None
        length = data[5]
        if length > 20 or len(data) < 6 + length:
            return None
        return data[6 : 6 + length]
    if len(data) < 1 + CONNECTION_ID_BYTES:
        return None
    return data[1 : 1 + CONNECTION_ID_BYTES]


def _is_closed(conn: _Conn) -> bool:
    """Whether ``conn`` is closed (a function, so type narrowing does not stick)."""
    return conn.state == "closed"


def _short(peer_id: bytes | None) -> str:
    return "?" if peer_id is None else peer_id.hex()[:12]


def _remember_addr(peer: _Peer, addr: SocketAddress, first: bool = False) -> None:
    if addr in peer.addrs:
        if not first:
            return
        peer.addrs.remove(addr)
    if first:
        peer.addrs.insert(0, addr)
    else:
        peer.addrs.append(addr)
    del peer.addrs[8:]


def _addresses(texts: Iterable[str], peer_id: bytes) -> tuple[list[SocketAddress], list[str]]:
    """The peer's direct UDP addresses and (a few of) its circuit multiaddrs in ``texts``."""
    direct, relayed = split_addrs(texts, peer_id)
    return [m.socket_address for m in direct], [str(m) for m in relayed[:MAX_RELAYED_PER_PEER]]


def _dial_target(
    addr: str | Multiaddr | SocketAddress, expected: bytes | None
) -> tuple[SocketAddress, bytes | None]:
    if isinstance(addr, str):
        addr = parse_multiaddr(addr)
    if isinstance(addr, Multiaddr):
        if addr.relay_id is not None:
            raise ValueError("relayed addresses are dialled through NatTraverser")
        return addr.socket_address, expected if expected is not None else addr.peer_id
    host, port = addr
    socket.inet_aton(host)
    return (host, int(port)), expected
