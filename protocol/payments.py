"""Payment rules: quotes, their price, the median rule, and the checks of a proof.

A client asks the close group of a chunk's address for quotes (``Quote``: the
address, size, price, time, the node's rewards address and public key, signed with
the node's ML-DSA-65 identity). It pays on chain for the *median* quote (ordered by
price, then PeerId): ``MEDIAN_MULTIPLIER`` times its price to its rewards address,
recorded by the vault under the quote's hash; the other quotes are paid nothing.
The PUT carries every quote (``PaymentProof``).

A node checks a proof in two steps, cheapest first: ``check_proof`` (pure: the
quotes are for this address, signed, from distinct peers close to the address, its
own quote fresh) names the one on-chain fact left to check, a ``PaymentClaim``;
``check_payment`` judges what the chain says about it. ``ProofCache`` remembers
proofs already found paid, so the chain is asked once per proof, not once per
replica.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from blake3 import blake3

from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN, is_responsible
from protocol.identity import Identity, peer_id_of, verify
from protocol.wire import EVM_ADDRESS_BYTES, Error, ErrorCode, PaymentProof, Quote

QUOTE_TTL_SECONDS: Final = 3600
"""A node accepts its own quote in a client's PUT for this long after making it."""
QUOTE_CLOCK_SKEW_SECONDS: Final = 300
"""How far in the future a quote's timestamp may be (clocks disagree a little)."""
MEDIAN_MULTIPLIER: Final = 3
"""The median quote's node is paid this many times its price; the others nothing."""
MIN_QUOTES: Final = 3
"""Quotes a proof needs: a majority of the close group."""
REPLICA_PLACES: Final = 20
"""A replica's quoters must be among this many peers closest to the address (the close
group has moved on since the payment, so the check is looser than for a client's PUT)."""

BASE_PRICE: Final = 10**12
"""Price of storing a chunk on an empty node, in token base units (1e-6 ANT)."""
FULLNESS_PRICE: Final = 99 * 10**12
"""Added to ``BASE_PRICE`` in proportion to the square of how full the node is."""

_SIGNING_CONTEXT: Final = b"autonomi-actors/quote/v1\x00"
_signing_encoder = msgspec.msgpack.Encoder()


def quote_price(bytes_stored: int, max_storage: int) -> int:
    """The price of a chunk on a node this full: base + k * (stored / capacity)^2."""
    if max_storage <= 0:
        return BASE_PRICE + FULLNESS_PRICE
    stored = min(max(bytes_stored, 0), max_storage)
    return BASE_PRICE + FULLNESS_PRICE * stored * stored // (max_storage * max_storage)


def _signed_bytes(
    address: bytes, size: int, price: int, timestamp: int, rewards_address: bytes, public_key: bytes
) -> bytes:
    fields = (address, size, price, timestamp, rewards_address, public_key)
    return _SIGNING_CONTEXT + _signing_encoder.encode(fields)


def signed_bytes(quote: Quote) -> bytes:
    """What the quote's signature covers: every field but the signature, under a context."""
    return _signed_bytes(
        quote.address,
        quote.size,
        quote.price,
        quote.timestamp,
        quote.rewards_address,
        quote.public_key,
    )


def make_quote(
    identity: Identity,
    address: bytes,
    size: int,
    price: int,
    now: float,
    rewards_address: bytes,
) -> Quote:
    """A quote signed by ``identity``."""
    if len(rewards_address) != EVM_ADDRESS_BYTES:
        raise ValueError(f"a rewards address is {EVM_ADDRESS_BYTES} bytes")
    timestamp = int(now)
    message = _signed_bytes(address, size, price, timestamp, rewards_address, identity.public_key)
    return Quote(
        address=address,
        size=size,
        price=price,
        timestamp=timestamp,
        rewards_address=rewards_address,
        public_key=identity.public_key,
        signature=identity.sign(message),
    )


def quote_hash(quote: Quote) -> bytes:
    """The 32 bytes the vault records a payment under: BLAKE3 of what the signature
    covers (not of the signature, which a signer could vary)."""
    return blake3(signed_bytes(quote)).digest()


def quoter(quote: Quote) -> bytes:
    """The PeerId of the node that made the quote: BLAKE3 of its public key."""
    return peer_id_of(quote.public_key)


def paid_quote(quotes: Sequence[Quote]) -> Quote:
    """The quote a client pays: the median by price (ties broken by PeerId)."""
    if not quotes:
        raise ValueError("no quotes to choose from")
    ordered = sorted(quotes, key=lambda q: (q.price, quoter(q)))
    return ordered[len(ordered) // 2]


@dataclass(frozen=True, slots=True)
class PaymentClaim:
    """What a proof says was paid on chain: ``amount`` to ``rewards_address`` under
    ``quote_hash``."""

    quote_hash: bytes
    rewards_address: bytes
    amount: int


def payment_for(quotes: Sequence[Quote]) -> PaymentClaim:
    """The payment a client makes for a chunk with these quotes (the median rule)."""
    median = paid_quote(quotes)
    return PaymentClaim(
        quote_hash(median), median.rewards_address, median.price * MEDIAN_MULTIPLIER
    )


class ProofVerdict(enum.Enum):
    MISSING = "missing"
    TOO_FEW_QUOTES = "too_few_quotes"
    WRONG_ADDRESS = "wrong_address"
    DUPLICATE_QUOTER = "duplicate_quoter"
    BAD_SIGNATURE = "bad_signature"
    NOT_CLOSE = "not_close"
    EXPIRED = "expired"
    FROM_THE_FUTURE = "from_the_future"
    UNPAID = "unpaid"
    UNDERPAID = "underpaid"
    WRONG_RECIPIENT = "wrong_recipient"
    CHAIN_UNAVAILABLE = "chain_unavailable"
    PAID = "paid"
    CHECK_CHAIN = "check_chain"
    """Everything that can be checked off chain is right: ask the chain about the claim."""


PROOF_ERRORS: Final[dict[ProofVerdict, str]] = {
    ProofVerdict.MISSING: "PaymentRequired: this node stores only paid chunks; send a proof",
    ProofVerdict.TOO_FEW_QUOTES: f"a proof needs quotes from at least {MIN_QUOTES} nodes",
    ProofVerdict.WRONG_ADDRESS: "a quote of the proof is for another chunk",
    ProofVerdict.DUPLICATE_QUOTER: "two quotes of the proof come from the same node",
    ProofVerdict.BAD_SIGNATURE: "a quote of the proof is not signed by the key it names",
    ProofVerdict.NOT_CLOSE: "the quoting nodes are not the chunk's close group",
    ProofVerdict.EXPIRED: "this node's quote has expired: ask for a new quote",
    ProofVerdict.FROM_THE_FUTURE: "a quote of the proof is dated in the future",
    ProofVerdict.UNPAID: "the paid quote was not paid on chain",
    ProofVerdict.UNDERPAID: "the paid quote received less on chain than the proof says",
    ProofVerdict.WRONG_RECIPIENT: "the paid quote was paid to another rewards address",
    ProofVerdict.CHAIN_UNAVAILABLE: "the chain cannot be asked about the payment now: try later",
}
"""What a node answers for each failed check (the ``Error`` message)."""


def refusal(verdict: ProofVerdict) -> Error:
    """The answer to a PUT whose proof failed: no proof is ``PAYMENT_REQUIRED``, a chain
    that cannot be asked ``CHAIN_UNAVAILABLE`` (try later), anything else ``PAYMENT_INVALID``."""
    code = {
        ProofVerdict.MISSING: ErrorCode.PAYMENT_REQUIRED,
        ProofVerdict.CHAIN_UNAVAILABLE: ErrorCode.CHAIN_UNAVAILABLE,
    }.get(verdict, ErrorCode.PAYMENT_INVALID)
    return Error(code, PROOF_ERRORS[verdict])


@dataclass(frozen=True, slots=True)
class ProofContext:
    """What the node knows when a proof arrives."""

    own_id: bytes
    known_peers: Sequence[bytes]
    now: float
    replica: bool = False
    """A replica fetched from a peer: the close group may have changed since the payment,
    and the node's own quote may be old; closeness is checked within ``REPLICA_PLACES``."""


@dataclass(frozen=True, slots=True)
class ProofCheck:
    verdict: ProofVerdict
    claim: PaymentClaim | None = None
    """With ``CHECK_CHAIN``: what to ask the chain."""


def check_proof(
    address: bytes, proof: PaymentProof | None, ctx: ProofContext, *, known_paid: bool = False
) -> ProofCheck:
    """The off-chain checks of a proof, cheapest first: count, addresses, distinct
    quoters, freshness, closeness, then the signatures. ``known_paid``: the proof is in
    the ``ProofCache`` (its signatures and payment were checked before), so a proof that
    passes the rest is ``PAID`` without the signatures or the chain."""
    if proof is None:
        return ProofCheck(ProofVerdict.MISSING)
    quotes = proof.quotes
    if len(quotes) < MIN_QUOTES:
        return ProofCheck(ProofVerdict.TOO_FEW_QUOTES)
    if any(q.address != address for q in quotes):
        return ProofCheck(ProofVerdict.WRONG_ADDRESS)
    quoters = [quoter(q) for q in quotes]
    if len(set(quoters)) != len(quoters):
        return ProofCheck(ProofVerdict.DUPLICATE_QUOTER)
    for quote, peer in zip(quotes, quoters, strict=True):
        if quote.timestamp > ctx.now + QUOTE_CLOCK_SKEW_SECONDS:
            return ProofCheck(ProofVerdict.FROM_THE_FUTURE)
        if not ctx.replica and peer == ctx.own_id and ctx.now - quote.timestamp > QUOTE_TTL_SECONDS:
            return ProofCheck(ProofVerdict.EXPIRED)
    median = paid_quote(quotes)
    if not _close_enough(address, quoters, quoter(median), ctx):
        return ProofCheck(ProofVerdict.NOT_CLOSE)
    claim = payment_for(quotes)
    if known_paid:
        return ProofCheck(ProofVerdict.PAID, claim)
    if not all(verify(q.public_key, q.signature, signed_bytes(q)) for q in quotes):
        return ProofCheck(ProofVerdict.BAD_SIGNATURE)
    return ProofCheck(ProofVerdict.CHECK_CHAIN, claim)


def _close_enough(address: bytes, quoters: Sequence[bytes], paid: bytes, ctx: ProofContext) -> bool:
    """The paid quoter and a majority of all quoters are among the node's view of the
    closest peers to ``address`` (routing tables differ a little, so not all must be)."""
    places = REPLICA_PLACES if ctx.replica else CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
    view = [ctx.own_id, *ctx.known_peers]

    def close(peer: bytes) -> bool:
        return is_responsible(peer, address, view, places)

    if not close(paid):
        return False
    return sum(1 for peer in quoters if close(peer)) > len(quoters) // 2


def check_payment(claim: PaymentClaim, paid_to: bytes, paid_amount: int) -> ProofVerdict:
    """Judge what the vault recorded under the claim's quote hash."""
    if paid_amount == 0:
        return ProofVerdict.UNPAID
    if paid_to != claim.rewards_address:
        return ProofVerdict.WRONG_RECIPIENT
    if paid_amount < claim.amount:
        return ProofVerdict.UNDERPAID
    return ProofVerdict.PAID


def proof_key(proof: PaymentProof) -> bytes:
    """A proof's identity in ``ProofCache``: BLAKE3 of its encoding."""
    return blake3(msgspec.msgpack.encode(proof)).digest()


class ProofCache:
    """Proofs already found paid (by ``proof_key``), least recently used dropped first.

    A hit skips the signatures and the chain; the address and freshness checks of
    ``check_proof`` that depend on the PUT are cheap and still run before it.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._paid: OrderedDict[bytes, PaymentClaim] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._paid)

    def get(self, key: bytes) -> PaymentClaim | None:
        claim = self._paid.get(key)
        if claim is None:
            self.misses += 1
            return None
        self._paid.move_to_end(key)
        self.hits += 1
        return claim

    def add(self, key: bytes, claim: PaymentClaim) -> None:
        self._paid[key] = claim
        self._paid.move_to_end(key)
        while len(self._paid) > self.capacity:
            self._paid.popitem(last=False)


def is_valid_quote(quote: Quote, address: bytes, peer_id: bytes, size: int) -> bool:
    """A quote a client may pay: for the chunk asked about, made by the peer asked,
    signed by it (a quote that fails would make every node refuse the proof)."""
    return (
        quote.address == address
        and quote.size == size
        and quoter(quote) == peer_id
        and verify(quote.public_key, quote.signature, signed_bytes(quote))
    )


def is_fresh(proof: PaymentProof, now: float, margin: float = 300.0) -> bool:
    """Every quote of the proof is young enough for its node to still accept it for
    ``margin`` seconds more (a client reusing a proof it paid for before)."""
    return all(now - q.timestamp < QUOTE_TTL_SECONDS - margin for q in proof.quotes)
