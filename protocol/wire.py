"""Wire messages and framing.

Every message is a msgspec Struct in one tagged union. On the wire a message
travels in a frame::

    +----------------+---------+------------------------+
    | length: u32 BE | version | msgpack body (tagged)  |
    +----------------+---------+------------------------+

``length`` counts the bytes after itself (version + body). A frame is at most
``MAX_FRAME_BYTES`` long in all, a chunk's content at most ``MAX_CHUNK_BYTES``.
Every failure to decode, whatever its cause, raises ``WireError``.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Final

import msgspec

from protocol.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from protocol.xor import ADDRESS_BYTES

WIRE_VERSION: Final = 1
MAX_CHUNK_BYTES: Final = 4 * 1024 * 1024
MAX_FRAME_BYTES: Final = 5 * 1024 * 1024
MAX_PEERS_PER_REPLY: Final = 64
MAX_ADDRS_PER_PEER: Final = 8
MAX_ADDR_CHARS: Final = 256
MAX_ERROR_CHARS: Final = 1024
MAX_OFFER_ADDRESSES: Final = 1024
MAX_PROOF_QUOTES: Final = 7
"""Quotes a payment proof may carry: the close group and the margin past it."""
MAX_CHALLENGE_ADDRESSES: Final = 64
"""Addresses one storage challenge may name (``protocol.audit``)."""
MAX_SHUNNED_PER_REPLY: Final = 16
CHALLENGE_NONCE_BYTES: Final = 32
STORAGE_PROOF_BYTES: Final = 32
EVM_ADDRESS_BYTES: Final = 20

_HEADER = struct.Struct(">IB")
HEADER_BYTES: Final = _HEADER.size

Address = Annotated[bytes, msgspec.Meta(min_length=ADDRESS_BYTES, max_length=ADDRESS_BYTES)]
"""A 32-byte point of the XOR space: a PeerId or a chunk address."""
ChunkContent = Annotated[bytes, msgspec.Meta(max_length=MAX_CHUNK_BYTES)]
Multiaddr = Annotated[str, msgspec.Meta(max_length=MAX_ADDR_CHARS)]
Nonce = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
HANDSHAKE_NONCE_BYTES: Final = 32
HandshakeNonce = Annotated[
    bytes, msgspec.Meta(min_length=HANDSHAKE_NONCE_BYTES, max_length=HANDSHAKE_NONCE_BYTES)
]
CertHash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
INSTANCE_ID_BYTES: Final = 16
InstanceId = Annotated[
    bytes, msgspec.Meta(min_length=INSTANCE_ID_BYTES, max_length=INSTANCE_ID_BYTES)
]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
Signature = Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
EvmAddress = Annotated[
    bytes, msgspec.Meta(min_length=EVM_ADDRESS_BYTES, max_length=EVM_ADDRESS_BYTES)
]
"""A 20-byte account on the EVM chain (a node's rewards address)."""
TokenAmount = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""Token base units (18 decimals)."""


class WireError(ValueError):
    """A frame or message that cannot be decoded: malformed, oversized or unknown."""


class ErrorCode(enum.StrEnum):
    """Why a request failed, carried by ``Error`` replies."""

    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    NOT_FOUND = "not_found"
    NOT_RESPONSIBLE = "not_responsible"
    STORAGE_FULL = "storage_full"
    BAD_CHUNK = "bad_chunk"
    BUSY = "busy"
    UNREACHABLE = "unreachable"
    """A coordinator or relay has no connection to the peer asked for."""
    REFUSED = "refused"
    """A relay does not serve this request (not public, full, or no reservation)."""
    PAYMENT_REQUIRED = "payment_required"
    """A PUT without a proof of payment, to a node that stores only paid data."""
    PAYMENT_INVALID = "payment_invalid"
    """The proof of payment is forged, for another chunk, expired, unpaid or underpaid."""
    CHAIN_UNAVAILABLE = "chain_unavailable"
    """The node could not ask the chain whether the proof was paid: try again later."""
    REPLAYED = "replayed"
    """A storage challenge repeated a nonce already seen."""
    INTERNAL = "internal"


class _Message(
    msgspec.Struct, frozen=True, array_like=True, tag_field="t", forbid_unknown_fields=True
):
    """Base of every wire message."""


class PeerRecord(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A peer and the multiaddrs it can be reached at."""

    peer_id: Address
    addrs: Annotated[list[Multiaddr], msgspec.Meta(max_length=MAX_ADDRS_PER_PEER)] = []


class Ping(_Message, tag="ping", frozen=True):
    nonce: Nonce


class Pong(_Message, tag="pong", frozen=True):
    nonce: Nonce
    observed_addr: Multiaddr = ""
    """The address the responder saw the request come from (for NAT discovery)."""


class FindNode(_Message, tag="find_node", frozen=True):
    target: Address


class Nodes(_Message, tag="nodes", frozen=True):
    peers: Annotated[list[PeerRecord], msgspec.Meta(max_length=MAX_PEERS_PER_REPLY)]
    shunned: Annotated[list[Address], msgspec.Meta(max_length=MAX_SHUNNED_PER_REPLY)] = []
    """Peers close to the target that the responder shuns (they failed its storage
    audits): a client skips a peer that enough responders name here."""


class Quote(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A node's signed price for storing one chunk (``protocol.payments`` holds the rules)."""

    address: Address
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNK_BYTES)]
    price: TokenAmount
    timestamp: Annotated[int, msgspec.Meta(ge=0)]
    """Unix seconds when the quote was made."""
    rewards_address: EvmAddress
    public_key: PublicKey
    signature: Signature


class PaymentProof(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The quotes a client got for a chunk; the median one is paid on chain."""

    quotes: Annotated[list[Quote], msgspec.Meta(max_length=MAX_PROOF_QUOTES)]


class GetQuote(_Message, tag="get_quote", frozen=True):
    address: Address
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNK_BYTES)]


class QuoteReply(_Message, tag="quote", frozen=True):
    """Reply to ``GetQuote``; ``held``: this node already stores the chunk (nothing to pay)."""

    quote: Quote
    held: bool = False


class PutChunk(_Message, tag="put_chunk", frozen=True):
    address: Address
    content: ChunkContent
    proof: PaymentProof | None = None
    copies_to: Annotated[list[Address], msgspec.Meta(max_length=MAX_PROOF_QUOTES)] = []
    """The other peers the sender stores this chunk on itself: the receiver need not offer
    it to them."""


class PutAck(_Message, tag="put_ack", frozen=True):
    address: Address


class GetChunk(_Message, tag="get_chunk", frozen=True):
    address: Address
    with_proof: bool = False
    """Send the chunk's proof of payment too (a replica is stored only with one)."""


class Chunk(_Message, tag="chunk", frozen=True):
    address: Address
    content: ChunkContent
    proof: PaymentProof | None = None


class NotFound(_Message, tag="not_found", frozen=True):
    address: Address


class Error(_Message, tag="error", frozen=True):
    code: ErrorCode
    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_CHARS)] = ""


class Hello(_Message, tag="hello", frozen=True):
    """First identity-handshake frame: who the sender claims to be, and its fresh nonce."""

    peer_id: Address
    public_key: PublicKey
    nonce: HandshakeNonce
    cert_hash: CertHash
    """SHA-256 of the server's TLS certificate (DER) as the sender saw it on this connection."""
    instance: InstanceId
    """Random per run of the sender's process: a new value means the peer restarted."""
    listen_addrs: Annotated[list[Multiaddr], msgspec.Meta(max_length=MAX_ADDRS_PER_PEER)] = []


class Proof(_Message, tag="proof", frozen=True):
    """Second identity-handshake frame: the sender's ML-DSA-65 signature of the transcript."""

    signature: Signature


class Offer(_Message, tag="offer", frozen=True):
    """Replication: "you are in the close group of these chunks; fetch what you lack"."""

    addresses: Annotated[list[Address], msgspec.Meta(max_length=MAX_OFFER_ADDRESSES)]


class OfferAck(_Message, tag="offer_ack", frozen=True):
    """Reply to ``Offer``: how many of the offered chunks the receiver will fetch."""

    wanted: Annotated[int, msgspec.Meta(ge=0)]


# -- storage audits (see protocol/audit.py) ---------------------------------------------

ChallengeNonce = Annotated[
    bytes, msgspec.Meta(min_length=CHALLENGE_NONCE_BYTES, max_length=CHALLENGE_NONCE_BYTES)
]
StorageAnswer = Annotated[bytes, msgspec.Meta(max_length=STORAGE_PROOF_BYTES)]
"""A storage proof (32 bytes), or empty: the chunk is not held."""


class StorageChallenge(_Message, tag="storage_challenge", frozen=True):
    """ "Prove you hold these chunks": answer each with ``protocol.audit.storage_proof``
    of this fresh nonce, your id, the address and the chunk's bytes."""

    nonce: ChallengeNonce
    addresses: Annotated[
        list[Address], msgspec.Meta(min_length=1, max_length=MAX_CHALLENGE_ADDRESSES)
    ]


class StorageAnswers(_Message, tag="storage_answers", frozen=True):
    """Reply to ``StorageChallenge``: one answer per address, in the same order."""

    answers: Annotated[list[StorageAnswer], msgspec.Meta(max_length=MAX_CHALLENGE_ADDRESSES)]


# -- NAT traversal (see protocol/nat.py and protocol/relay.py) ---------------------------

DIAL_BACK_NONCE_BYTES: Final = 16
DialBackNonce = Annotated[
    bytes, msgspec.Meta(min_length=DIAL_BACK_NONCE_BYTES, max_length=DIAL_BACK_NONCE_BYTES)
]
CircuitId = Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]


class Ok(_Message, tag="ok", frozen=True):
    """A request was done and has nothing to return."""


class DialBack(_Message, tag="dial_back", frozen=True):
    """ "Send a probe carrying this nonce, from a port I never contacted, to the
    address you see me at": the sender learns whether strangers can reach it."""

    nonce: DialBackNonce


class PunchRequest(_Message, tag="punch_request", frozen=True):
    """To a coordinator connected to ``target``: "tell it to open its NAT toward me"."""

    target: Address


class PunchNotify(_Message, tag="punch_notify", frozen=True):
    """From a coordinator: ``initiator`` (seen at ``addr``) is about to dial you."""

    initiator: Address
    addr: Multiaddr


class PunchReply(_Message, tag="punch_reply", frozen=True):
    """Reply to ``PunchRequest``: the target has opened its NAT; dial it at ``addr``."""

    addr: Multiaddr


class RelayReserve(_Message, tag="relay_reserve", frozen=True):
    """Ask a public node to relay connections to the sender (it is behind a symmetric NAT)."""


class RelayReserved(_Message, tag="relay_reserved", frozen=True):
    """Reply to ``RelayReserve``: granted for ``seconds``, at ``bytes_per_second``."""

    seconds: Annotated[int, msgspec.Meta(ge=0)]
    bytes_per_second: Annotated[int, msgspec.Meta(ge=0)]


class RelayConnect(_Message, tag="relay_connect", frozen=True):
    """To a relay: open a circuit to ``target`` (which holds a reservation)."""

    target: Address


class RelayIncoming(_Message, tag="relay_incoming", frozen=True):
    """From a relay to its client: ``initiator`` opens circuit ``circuit`` to you."""

    initiator: Address
    circuit: CircuitId


class RelayCircuit(_Message, tag="relay_circuit", frozen=True):
    """Reply to ``RelayConnect``: send the end-to-end QUIC packets on circuit ``circuit``."""

    circuit: CircuitId


class Announce(_Message, tag="announce", frozen=True):
    """The sender's addresses changed (e.g. it learnt it is behind NAT and took a relay)."""

    listen_addrs: Annotated[list[Multiaddr], msgspec.Meta(max_length=MAX_ADDRS_PER_PEER)]


Message = (
    Ping
    | Pong
    | FindNode
    | Nodes
    | PutChunk
    | PutAck
    | GetChunk
    | Chunk
    | NotFound
    | Error
    | Hello
    | Proof
    | Offer
    | OfferAck
    | Ok
    | DialBack
    | PunchRequest
    | PunchNotify
    | PunchReply
    | RelayReserve
    | RelayReserved
    | RelayConnect
    | RelayIncoming
    | RelayCircuit
    | Announce
    | GetQuote
    | QuoteReply
    | StorageChallenge
    | StorageAnswers
)
"""Every message that can travel in a frame (``Hello``/``Proof`` only on handshake streams)."""

REPLIES: Final[dict[type[_Message], tuple[type[_Message], ...]]] = {
    Ping: (Pong,),
    FindNode: (Nodes,),
    PutChunk: (PutAck,),
    GetChunk: (Chunk, NotFound),
    GetQuote: (QuoteReply,),
    Offer: (OfferAck,),
    StorageChallenge: (StorageAnswers,),
    DialBack: (Ok,),
    PunchRequest: (PunchReply,),
    PunchNotify: (Ok,),
    RelayReserve: (RelayReserved,),
    RelayConnect: (RelayCircuit,),
    RelayIncoming: (Ok,),
    Announce: (Ok,),
}
"""What each request may be answered with, besides ``Error`` (declared here only)."""


def is_reply_to(request: Message, reply: Message) -> bool:
    """True if ``reply`` is an answer ``request`` may get: its declared reply, or ``Error``."""
    return isinstance(reply, (Error, *REPLIES.get(type(request), ())))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode_body(message: Message) -> bytes:
    """The msgpack body of ``message`` (no frame header)."""
    return _encoder.encode(message)


def decode_body(body: bytes | memoryview) -> Message:
    """Decode a msgpack body into a message; raises ``WireError``."""
    try:
        message: Message = _decoder.decode(body)
        return message
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid message: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:
        # ValueError covers what msgspec lets through, e.g. a tag that is not UTF-8.
        raise WireError(f"malformed message: {exc}") from None


def encode_frame(message: Message) -> bytes:
    """``message`` in a complete frame; raises ``WireError`` if it would be oversized."""
    body = _encoder.encode(message)
    length = len(body) + 1
    if length + 4 > MAX_FRAME_BYTES:
        raise WireError(f"frame of {length + 4} bytes exceeds the limit of {MAX_FRAME_BYTES}")
    return _HEADER.pack(length, WIRE_VERSION) + body


def decode_frame(frame: bytes | memoryview) -> Message:
    """Decode exactly one complete frame; raises ``WireError``."""
    view = memoryview(frame)
    if len(view) < HEADER_BYTES:
        raise WireError(f"a frame has a {HEADER_BYTES}-byte header, got {len(view)} bytes")
    length = _check_header(view, MAX_FRAME_BYTES)
    if len(view) != 4 + length:
        raise WireError(f"frame header announces {length + 4} bytes, got {len(view)}")
    return decode_body(view[HEADER_BYTES:])


def _check_header(data: bytes | bytearray | memoryview, max_frame_bytes: int) -> int:
    """Validate a frame header and return its length field."""
    length, version = _HEADER.unpack_from(data)
    if length + 4 > max_frame_bytes:
        raise WireError(f"frame of {length + 4} bytes exceeds the limit of {max_frame_bytes}")
    if length < 2:
        raise WireError(f"frame length {length} is too short to hold a message")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version} (this node speaks {WIRE_VERSION})")
    return int(length)


class FrameDecoder:
    """Incremental frame parser for a byte stream.

    ``feed`` returns the messages completed by the new bytes. An oversized length
    is rejected as soon as the header arrives, before its body is buffered.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | memoryview) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= HEADER_BYTES:
            length = _check_header(self._buffer, self._max)
            end = 4 + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[HEADER_BYTES:end])
            del self._buffer[:end]
            messages.append(decode_body(body))
        return messages
