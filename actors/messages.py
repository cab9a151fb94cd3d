"""Typed messages that travel between the node's actors.

Actors reach each other only through these (``tell`` for events, ``ask`` when a
reply is needed). Remote peers' requests arrive as ``InboundRequest``; the actor
that handles one answers by calling ``reply`` exactly once, from any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from protocol.handshake import Accepted, Rejected, Role
from protocol.trust import TrustEvent
from protocol.wire import Message, PaymentProof

Direction = Literal["inbound", "outbound"]


class Event:
    """Marker base of messages sent with ``tell``: no reply, and a handler that fails on
    one is logged and counted without stopping the actor."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class InboundRequest(Event):
    """A request from an authenticated remote peer, waiting for one reply message."""

    peer_id: bytes
    message: Message
    reply: Callable[[Message], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class PeerConnected(Event):
    """A peer passed the identity handshake on a new connection (sent to BucketManager)."""

    peer_id: bytes
    listen_addrs: tuple[str, ...]
    """Multiaddrs the peer can be dialled at."""
    remote_host: str
    remote_port: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class PeerDisconnected(Event):
    """A connection to a peer closed (idle, error, or the peer went away)."""

    peer_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """The supervisor's periodic timer; actors do their periodic work on it."""

    now: float


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Ask any actor for its section of ``status`` (a JSON-ready dict)."""


@dataclass(frozen=True, slots=True)
class RoutingChanged(Event):
    """Peers entered or left the routing table (BucketManager -> the actors that need to
    know the peers)."""

    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    peers: frozenset[bytes]
    """Every peer of the routing table after this change: the one set of known peers,
    owned by the BucketManager. Others keep this snapshot; none keeps a copy of its own."""


@dataclass(frozen=True, slots=True)
class CloseGroupChanged(Event):
    """The node's own close group changed (CloseGroupTracker -> subscribers)."""

    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    group: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SubscribeCloseGroup:
    """Register ``notify`` to receive every ``CloseGroupChanged`` (and the current group at once)."""

    notify: Callable[[CloseGroupChanged], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class AddressObserved(Event):
    """A peer reported the address it saw this node's connection come from."""

    address: str
    reporter: bytes


@dataclass(frozen=True, slots=True)
class ProbeArrived(Event):
    """A dial-back probe with this nonce reached the node's socket (from the Transport)."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class ConnectPeer(Event):
    """Reach the peer through the whole cascade; ``on_done`` gets the ``CascadeResult``."""

    peer_id: bytes
    addrs: tuple[str, ...]
    on_done: Callable[[Any], None] = field(repr=False)
    fresh: bool = False
    """Close an existing connection first (to measure a new one)."""


@dataclass(frozen=True, slots=True)
class ChunkStored(Event):
    """A chunk this node is responsible for was stored (ChunkKeeper -> Replicator)."""

    address: bytes
    size: int
    copies_to: tuple[bytes, ...] = ()
    """Peers the client stores it on itself: no need to offer it to them."""


@dataclass(frozen=True, slots=True)
class ChunkLost(Event):
    """A held chunk failed its integrity check and was quarantined: fetch it again."""

    address: bytes


@dataclass(frozen=True, slots=True)
class HoldsChunks:
    """Ask ChunkKeeper: is each of these chunks held (responsible or cached)? A list of
    bools, in order."""

    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HeldChunks(Event):
    """To ChunkKeeper: the addresses of every chunk held as responsible, given to ``reply``."""

    reply: Callable[[list[bytes]], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClaimChunks(Event):
    """To ChunkKeeper: this node is responsible for these chunks; ``reply`` gets those not
    held (to fetch). A cached copy is promoted to responsible on the way (re-verified,
    within the storage limit), so it need not be fetched."""

    addresses: tuple[bytes, ...]
    reply: Callable[[list[bytes]], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class DemoteChunks(Event):
    """This node is no longer responsible for these chunks and their close group has
    acknowledged them: keep them as cache, not as responsible (Replicator -> ChunkKeeper)."""

    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StoreChunk(Event):
    """Store a replica fetched by this node (with the proof of payment it came with);
    ``reply`` gets the wire answer a remote PUT would get (``PutAck`` or ``Error``),
    perhaps later: a proof may need the chain."""

    address: bytes
    content: bytes = field(repr=False)
    proof: PaymentProof | None = field(default=None, repr=False)
    reply: Callable[[Message], None] = field(default=lambda _message: None, repr=False)


@dataclass(frozen=True, slots=True)
class FindClosest(Event):
    """Run an iterative lookup of ``target``; ``on_done`` gets the closest peers found
    (``protocol.lookup.Contact``, closest first). Sent to BucketManager."""

    target: bytes
    on_done: Callable[[list[Any]], None] = field(repr=False)
    count: int = 20


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """Ask BucketManager: the routing table's peers as ``(peer_id, addrs)`` pairs."""


@dataclass(frozen=True, slots=True)
class ExpectProofs(Event):
    """To ChunkKeeper: the storage proofs ``peer`` should answer for these chunks
    (``protocol.audit.storage_proof`` over this node's own intact copies); ``reply`` gets
    ``{address: proof}`` for the chunks held intact here."""

    nonce: bytes
    peer: bytes
    addresses: tuple[bytes, ...]
    reply: Callable[[dict[bytes, bytes]], None] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ShunPeer(Event):
    """Keep the peer out of the routing table until ``until`` (Auditor -> BucketManager)."""

    peer_id: bytes
    until: float


@dataclass(frozen=True, slots=True)
class PeerMisbehaved(Event):
    """Evidence against a peer seen outside audits, e.g. it served wrong bytes (to the
    Auditor)."""

    peer_id: bytes
    event: TrustEvent


@dataclass(frozen=True, slots=True)
class OfferChunks(Event):
    """Offer these chunks to ``peer``: it should hold them and does not (to the Replicator)."""

    peer_id: bytes
    addresses: tuple[bytes, ...]


# -- the identity handshake (Transport <-> Handshake actor) ------------------------------


class HandshakeSink(Protocol):
    """Where the actor sends its outputs for a connection (the Transport's endpoint).

    Both methods are called from the actor's thread and must be thread-safe.
    """

    def handshake_send(self, conn_id: int, frame: bytes) -> None: ...

    def handshake_finished(self, conn_id: int, outcome: Accepted | Rejected) -> None: ...


@dataclass(frozen=True, slots=True)
class BeginHandshake(Event):
    """TLS is up on connection ``conn_id``: start the identity handshake."""

    conn_id: int
    role: Role
    cert_hash: bytes
    """SHA-256 of the server's certificate (DER) as this connection saw it."""
    deadline: float
    """``time.monotonic()`` by which the handshake must be complete."""
    expected_peer_id: bytes | None
    listen_addrs: tuple[str, ...]
    instance: bytes
    """This process's instance id (sent in the Hello)."""
    nonce: bytes
    """This side's nonce."""
    hello_sent: bool
    """The Transport already sent this side's Hello (``hello_message`` of these
    values): it needs no signature, and sending it at once lets both sides sign in
    parallel."""
    remote: str
    """``host:port`` of the peer, for logs."""
    sink: HandshakeSink = field(repr=False)


@dataclass(frozen=True, slots=True)
class HandshakeFrame(Event):
    """A message the peer sent on its handshake stream."""

    conn_id: int
    message: Message
    sink: HandshakeSink = field(repr=False)


@dataclass(frozen=True, slots=True)
class HandshakeTimer(Event):
    """The connection's deadline passed (sent by the Transport's loop)."""

    conn_id: int
    now: float
    sink: HandshakeSink = field(repr=False)


@dataclass(frozen=True, slots=True)
class HandshakeClosed(Event):
    """The connection closed before the handshake finished: forget it."""

    conn_id: int
    detail: str
    sink: HandshakeSink = field(repr=False)
