"""ChunkKeeper: chunk files and their metadata, capacity, and integrity.

A PUT is judged by ``protocol.chunks.check_put`` (size, hash, already held,
capacity, responsibility, in that order) and stored file-first, metadata second:
a crash between the two leaves a file without a row, which the restart
reconciliation adopts after re-checking its hash. A GET re-verifies the bytes; a
chunk that fails is quarantined, forgotten, and (if this node is responsible for it)
reported so it is fetched again.

On a paying network (``KeeperPayments``) the keeper answers ``GetQuote`` with a
quote signed by the node, and stores a chunk only with a proof of payment: after the
checks above, ``protocol.payments.check_proof`` runs the off-chain checks and the
PaymentVerifier asks the chain about what is left; the PUT is answered when it has
(the keeper serves other requests meanwhile). Proofs found paid are cached, and the
proof is kept with the chunk's metadata so that replicas travel with it.

Chunks this node is no longer responsible for are kept as a bounded cache
(``DemoteChunks`` from the Replicator), apart from the responsible storage: cached
bytes count against ``cache_size``, not ``max_storage``, and the least recently
used are deleted past the bound (``protocol.chunk_cache``). Cached chunks are served
to GETs like responsible ones; a PUT or a claim (``ClaimChunks``) of a cached chunk
this node is responsible for promotes it back to responsible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka

from actors.base import NodeActor
from actors.messages import (
    ChunkLost,
    ChunkStored,
    ClaimChunks,
    DemoteChunks,
    Event,
    ExpectProofs,
    HeldChunks,
    HoldsChunks,
    InboundRequest,
    RoutingChanged,
    StatusQuery,
    StoreChunk,
    Tick,
)
from actors.payment_verifier import VerifyPayment
from persistence.chunk_files import ChunkFiles
from persistence.database import ChunkRecord, Database
from persistence.errors import ChunkFileError, StorageFull
from persistence.models import ChunkKind
from protocol.audit import REFUSAL_ERRORS, ChallengeGate, answer
from protocol.chunk_cache import DEFAULT_CACHE_BYTES, ChunkCache
from protocol.chunks import (
    CLOSE_GROUP_SIZE,
    RESPONSIBILITY_MARGIN,
    PutContext,
    PutVerdict,
    check_put,
    is_responsible,
    is_valid_chunk,
)
from protocol.identity import Identity
from protocol.payments import (
    PaymentClaim,
    ProofCache,
    ProofContext,
    ProofVerdict,
    check_proof,
    make_quote,
    proof_key,
    quote_price,
    refusal,
)
from protocol.wire import (
    STORAGE_PROOF_BYTES,
    Chunk,
    Error,
    ErrorCode,
    GetChunk,
    GetQuote,
    Message,
    NotFound,
    PaymentProof,
    PutAck,
    PutChunk,
    QuoteReply,
    StorageAnswers,
    StorageChallenge,
)

log = logging.getLogger(__name__)

SCRUB_INTERVAL_SECONDS = 6 * 3600.0
"""A stored chunk's bytes are re-checked when last verified longer ago than this."""
SCRUB_BATCH = 4
"""Chunks re-checked per tick: slow on purpose, the scrub must not compete with traffic."""

_QUOTE_PLACES = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
"""A node quotes for the addresses it would accept a PUT of."""

_VERDICT_ERRORS: dict[PutVerdict, tuple[ErrorCode, str]] = {
    PutVerdict.TOO_LARGE: (ErrorCode.BAD_CHUNK, "chunk larger than 4 MiB"),
    PutVerdict.HASH_MISMATCH: (ErrorCode.BAD_CHUNK, "BLAKE3 of the content is not the address"),
    PutVerdict.STORAGE_FULL: (
        ErrorCode.STORAGE_FULL,
        "StorageFull: this node's storage limit is reached",
    ),
    PutVerdict.NOT_RESPONSIBLE: (
        ErrorCode.NOT_RESPONSIBLE,
        "this node is not in the chunk's close group",
    ),
}


_proof_decoder = msgspec.msgpack.Decoder(PaymentProof)


@dataclass(frozen=True)
class KeeperPayments:
    """A paying network: the node quotes with its identity and rewards address, and the
    PaymentVerifier checks proofs on chain."""

    identity: Identity = field(repr=False)
    rewards_address: bytes
    verifier: pykka.ActorRef[Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Put:
    """A PUT being judged: a client's (``replica`` False) or a fetched replica's."""

    address: bytes
    content: bytes = field(repr=False)
    proof: PaymentProof | None = field(repr=False)
    reply: Callable[[Message], None] = field(repr=False)
    replica: bool = False
    copies_to: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class _PaymentJudged(Event):
    put: _Put
    key: bytes
    claim: PaymentClaim
    verdict: ProofVerdict


class _Responsible:
    """The addresses this node is responsible for, judged only when asked (a challenge
    refused for its cost must not cost the judging first) and once per address."""

    def __init__(self, own_id: bytes, known_peers: tuple[bytes, ...]) -> None:
        self.own_id = own_id
        self.known_peers = known_peers
        self._judged: dict[object, bool] = {}

    def __contains__(self, address: object) -> bool:
        judged = self._judged.get(address)
        if judged is None:
            judged = isinstance(address, bytes) and is_responsible(
                self.own_id, address, self.known_peers, _QUOTE_PLACES
            )
            self._judged[address] = judged
        return judged


class ChunkKeeper(NodeActor):
    name = "ChunkKeeper"

    def __init__(
        self,
        own_id: bytes,
        database: Database,
        files: ChunkFiles,
        max_storage: int,
        on_stored: Callable[[ChunkStored], None] = lambda _event: None,
        on_lost: Callable[[ChunkLost], None] = lambda _event: None,
        *,
        cache_size: int = DEFAULT_CACHE_BYTES,
        payments: KeeperPayments | None = None,
    ) -> None:
        super().__init__()
        self.payments = payments
        self.gate = ChallengeGate()
        self.proofs = ProofCache()
        self.quotes_given = 0
        self.paid_chunks = 0
        self.payment_rejections: dict[str, int] = {}
        self.own_id = own_id
        self.database = database
        self.files = files
        self.max_storage = max_storage
        self.on_stored = on_stored
        self.on_lost = on_lost
        self.known_peers: tuple[bytes, ...] = ()
        """The routing table's peers, as the BucketManager last announced them."""
        self._lost_at_start: list[bytes] = []
        self.reconciled = {"missing": 0, "adopted": 0, "removed": 0}
        self.cache = ChunkCache(cache_size)
        self.bytes_stored = 0
        """Bytes of the chunks this node is responsible for (counted against max_storage)."""
        self.chunk_count = 0
        self.puts = 0
        self.gets = 0
        self.rejected = 0
        self.cache_hits = 0
        self.demoted = 0
        self.promoted = 0
        self.evicted = 0

    @property
    def cached_count(self) -> int:
        return len(self.cache)

    @property
    def cached_bytes(self) -> int:
        return self.cache.total_bytes

    def on_start(self) -> None:
        self._reconcile(time.time())
        totals = self.database.chunk_totals()
        self.bytes_stored = totals[ChunkKind.RESPONSIBLE].total_bytes
        self.chunk_count = totals[ChunkKind.RESPONSIBLE].count
        # Last use is not persisted: after a restart the oldest stored goes first.
        cached = self.database.chunks_of_kind(ChunkKind.CACHE)
        self._evict(self.cache.load((r.address, r.size) for r in cached))

    def on_receive(self, message: Any) -> Any:
        match message:
            case InboundRequest(message=PutChunk() as put, reply=reply):
                self.put(
                    _Put(put.address, put.content, put.proof, reply, copies_to=tuple(put.copies_to))
                )
            case InboundRequest(message=GetChunk(address=address, with_proof=proof), reply=reply):
                reply(self.get(address, with_proof=proof))
            case InboundRequest(message=GetQuote(address=address, size=size), reply=reply):
                reply(self.quote(address, size))
            case InboundRequest(
                peer_id=peer_id, message=StorageChallenge() as challenge, reply=reply
            ):
                reply(self.answer_challenge(peer_id, challenge))
            case ExpectProofs(nonce=nonce, peer=peer, addresses=addresses, reply=reply):
                reply(self.expected_proofs(nonce, peer, addresses))
            case StoreChunk(address=address, content=content, proof=proof, reply=reply):
                self.put(_Put(address, content, proof, reply, replica=True))
            case _PaymentJudged(put=put, key=key, claim=claim, verdict=verdict):
                self._payment_judged(put, key, claim, verdict)
            case RoutingChanged(peers=peers):
                self.known_peers = tuple(peers)
            case HoldsChunks(addresses=addresses):
                return [self.database.get_chunk(a) is not None for a in addresses]
            case ClaimChunks(addresses=addresses, reply=reply):
                reply([a for a in addresses if not self.claim(a)])
            case DemoteChunks(addresses=addresses):
                return self.demote(addresses)
            case HeldChunks(reply=reply):
                reply(self.database.list_chunk_addresses(ChunkKind.RESPONSIBLE))
            case Tick(now=now):
                while self._lost_at_start:  # the Replicator is running by the first tick
                    self.on_lost(ChunkLost(self._lost_at_start.pop()))
                self.scrub(now)
            case StatusQuery():
                return {
                    "chunks": self.chunk_count,
                    "bytes_stored": self.bytes_stored,
                    "max_storage": self.max_storage,
                    "cached_chunks": self.cached_count,
                    "cached_bytes": self.cached_bytes,
                    "cache_size": self.cache.capacity,
                    "cache_hits": self.cache_hits,
                    "cache_evictions": self.evicted,
                    "chunks_demoted": self.demoted,
                    "chunks_promoted": self.promoted,
                    "puts": self.puts,
                    "gets": self.gets,
                    "puts_rejected": self.rejected,
                    "reconciled_at_start": dict(self.reconciled),
                    "audits": {
                        "answered": self.gate.answered,
                        "refused": dict(self.gate.refused),
                    },
                    "payments": {
                        "enabled": self.payments is not None,
                        "quotes_given": self.quotes_given,
                        "paid_chunks": self.paid_chunks,
                        "proofs_cached": len(self.proofs),
                        "proof_cache_hits": self.proofs.hits,
                        "payment_rejections": dict(self.payment_rejections),
                    },
                }
            case _:
                return super().on_receive(message)
        return None

    def quote(self, address: bytes, size: int) -> Message:
        """A signed quote for storing ``address``, priced by how full this node is."""
        if self.payments is None:
            return Error(ErrorCode.UNSUPPORTED, "this node stores for free: it gives no quotes")
        if not is_responsible(self.own_id, address, self.known_peers, _QUOTE_PLACES):
            return Error(*_VERDICT_ERRORS[PutVerdict.NOT_RESPONSIBLE])
        held = self.database.get_chunk(address)
        quote = make_quote(
            self.payments.identity,
            address,
            size,
            quote_price(self.bytes_stored, self.max_storage),
            time.time(),
            self.payments.rewards_address,
        )
        self.quotes_given += 1
        return QuoteReply(quote, held=held is not None and held.kind is ChunkKind.RESPONSIBLE)

    def put(self, put: _Put) -> None:
        """Judge a PUT: the chunk checks, then (on a paying network) its proof; answer
        ``put.reply`` now, or once the chain has answered."""
        verdict, held = self._check(put.address, put.content)
        if verdict is not PutVerdict.STORE or self.payments is None:
            put.reply(self._store_judged(put, verdict, held, None))
            return
        key = proof_key(put.proof) if put.proof is not None else b""
        context = ProofContext(self.own_id, self.known_peers, time.time(), put.replica)
        check = check_proof(
            put.address, put.proof, context, known_paid=self.proofs.get(key) is not None
        )
        if check.verdict is ProofVerdict.PAID:
            put.reply(self._store_judged(put, verdict, held, put.proof))
        elif check.verdict is ProofVerdict.CHECK_CHAIN and check.claim is not None:
            claim = check.claim
            self.payments.verifier.tell(
                VerifyPayment(
                    claim,
                    lambda paid: self.tell_self(_PaymentJudged(put, key, claim, paid)),
                )
            )
        else:
            put.reply(self._refuse_payment(check.verdict))

    def _payment_judged(
        self, put: _Put, key: bytes, claim: PaymentClaim, verdict: ProofVerdict
    ) -> None:
        if verdict is not ProofVerdict.PAID:
            put.reply(self._refuse_payment(verdict))
            return
        self.proofs.add(key, claim)
        # The node may have changed while the chain was asked: judge the chunk again.
        chunk_verdict, held = self._check(put.address, put.content)
        put.reply(self._store_judged(put, chunk_verdict, held, put.proof))

    def _refuse_payment(self, verdict: ProofVerdict) -> Error:
        self.rejected += 1
        self.payment_rejections[verdict.value] = self.payment_rejections.get(verdict.value, 0) + 1
        return refusal(verdict)

    def _check(self, address: bytes, content: bytes) -> tuple[PutVerdict, ChunkRecord | None]:
        held = self.database.get_chunk(address)
        verdict = check_put(
            address,
            content,
            PutContext(
                own_id=self.own_id,
                held=held is not None and held.kind is ChunkKind.RESPONSIBLE,
                bytes_stored=self.bytes_stored,
                max_storage=self.max_storage,
                known_peers=self.known_peers,
            ),
        )
        return verdict, held

    def _store_judged(
        self,
        put: _Put,
        verdict: PutVerdict,
        held: ChunkRecord | None,
        proof: PaymentProof | None,
    ) -> Message:
        """Store a chunk whose checks (and proof) passed, or answer why not."""
        address, content = put.address, put.content
        if verdict is PutVerdict.ALREADY_HELD:
            return PutAck(address)
        if verdict is not PutVerdict.STORE:
            self.rejected += 1
            code, text = _VERDICT_ERRORS[verdict]
            return Error(code, text)
        try:
            self.files.write(address, content)
        except StorageFull as exc:
            self.rejected += 1
            log.warning("disk full storing %s: %s", address.hex()[:16], exc)
            return Error(ErrorCode.STORAGE_FULL, "StorageFull: the disk is full")
        except ChunkFileError as exc:
            log.error("cannot store chunk %s: %s", address.hex()[:16], exc)
            return Error(ErrorCode.INTERNAL, "cannot write the chunk")
        now = time.time()
        encoded = None if proof is None else msgspec.msgpack.encode(proof)
        if held is not None:  # a cached copy becomes a responsible one
            self._promote(held)
            self.database.mark_verified(address, now)
            if encoded is not None:
                self.database.set_proof(address, encoded)
        else:  # its arrival time counts as its last check (``persistence.models.AUDIT_ORDER``)
            self.database.add_chunk(address, len(content), ChunkKind.RESPONSIBLE, now, encoded)
            self.bytes_stored += len(content)
            self.chunk_count += 1
        self.puts += 1
        self.paid_chunks += proof is not None
        self.on_stored(ChunkStored(address, len(content), put.copies_to))
        return PutAck(address)

    def get(self, address: bytes, with_proof: bool = False) -> Message:
        self.gets += 1
        record = self.database.get_chunk(address)
        if record is None:
            return NotFound(address)
        content = self._checked_content(record)
        if content is None:
            return NotFound(address)
        if record.kind is ChunkKind.CACHE:
            self.cache_hits += 1
            self.cache.touch(address)
        return Chunk(address, content, self._proof_of(address) if with_proof else None)

    def _proof_of(self, address: bytes) -> PaymentProof | None:
        encoded = self.database.get_proof(address)
        if encoded is None:
            return None
        try:
            proof: PaymentProof = _proof_decoder.decode(encoded)
        except msgspec.DecodeError as exc:
            log.warning("the proof kept with %s cannot be read: %s", address.hex()[:16], exc)
            return None
        return proof

    def answer_challenge(self, peer_id: bytes, challenge: StorageChallenge) -> Message:
        """Prove to ``peer_id`` that this node holds the challenged chunks (within the
        gate's budget): a proof per chunk held intact, else missing or declined."""
        addresses = challenge.addresses
        records = {a: self.database.get_chunk(a) for a in set(addresses)}
        sizes = {a: r.size for a, r in records.items() if r is not None}
        responsible = _Responsible(self.own_id, self.known_peers)
        refusal = self.gate.admit(
            peer_id, challenge.nonce, addresses, sizes, responsible, time.time()
        )
        if refusal is not None:
            log.info("storage challenge from %s refused: %s", peer_id.hex()[:16], refusal.value)
            return Error(*REFUSAL_ERRORS[refusal])

        def content_of(address: bytes) -> bytes | None:
            record = records.get(address)
            return None if record is None else self._checked_content(record)

        return StorageAnswers(
            answer(challenge.nonce, self.own_id, addresses, content_of, responsible)
        )

    def expected_proofs(
        self, nonce: bytes, peer: bytes, addresses: tuple[bytes, ...]
    ) -> dict[bytes, bytes]:
        """What ``peer`` should answer for the chunks this node holds intact: the answers
        this node would give in its place, proofs only."""

        def content_of(address: bytes) -> bytes | None:
            record = self.database.get_chunk(address)
            return None if record is None else self._checked_content(record)

        answers = answer(nonce, peer, addresses, content_of, responsible=())
        return {
            address: proof
            for address, proof in zip(addresses, answers, strict=True)
            if len(proof) == STORAGE_PROOF_BYTES
        }

    def claim(self, address: bytes) -> bool:
        """This node is responsible for ``address``: promote a cached copy; whether it is held."""
        record = self.database.get_chunk(address)
        if record is None:
            return False
        if record.kind is ChunkKind.RESPONSIBLE:
            return True
        if self.bytes_stored + record.size > self.max_storage:
            return True  # no room to promote it: fetching it again would not help either
        if self._checked_content(record) is None:
            return False
        self._promote(record)
        self.database.mark_verified(address, time.time())
        self.on_stored(ChunkStored(address, record.size))
        return True

    def demote(self, addresses: tuple[bytes, ...]) -> int:
        """Keep these responsible chunks as cache (evicting past the bound); how many."""
        demoted = 0
        for address in addresses:
            record = self.database.get_chunk(address)
            if record is None or record.kind is not ChunkKind.RESPONSIBLE:
                continue
            self.database.set_chunk_kind(address, ChunkKind.CACHE)
            self.chunk_count -= 1
            self.bytes_stored -= record.size
            self.demoted += 1
            demoted += 1
            self._evict(self.cache.admit(address, record.size))
        return demoted

    def _promote(self, record: ChunkRecord) -> None:
        """A cached chunk becomes a responsible one (its bytes were just checked)."""
        self.database.set_chunk_kind(record.address, ChunkKind.RESPONSIBLE)
        self.cache.remove(record.address)
        self.chunk_count += 1
        self.bytes_stored += record.size
        self.promoted += 1

    def _evict(self, addresses: list[bytes]) -> None:
        """Delete cached chunks the cache no longer counts (row first: a file left by a
        crash in between is an orphan, never a row pointing at nothing)."""
        for address in addresses:
            self.database.delete_chunk(address)
            try:
                self.files.delete(address)
            except ChunkFileError as exc:
                log.warning("cannot delete the evicted chunk %s: %s", address.hex()[:16], exc)
            self.evicted += 1

    def _checked_content(self, record: ChunkRecord) -> bytes | None:
        """The chunk's bytes if its file is there and hashes to its address; else the
        chunk is quarantined and forgotten (``_lose``) and None."""
        content = self.files.read(record.address)
        if content is not None and is_valid_chunk(record.address, content):
            return content
        self._lose(record, "missing" if content is None else "corrupted")
        return None

    def _lose(self, record: ChunkRecord, why: str) -> None:
        """Quarantine a bad chunk and forget it; a responsible one is fetched again."""
        address = record.address
        responsible = record.kind is ChunkKind.RESPONSIBLE
        log.warning(
            "chunk %s is %s: quarantined%s",
            address.hex()[:16],
            why,
            ", will be fetched again" if responsible else " (it was only cached)",
        )
        self.files.quarantine(address)
        if self.database.delete_chunk(address):
            if responsible:
                self.bytes_stored -= record.size
                self.chunk_count -= 1
            else:
                self.cache.remove(address)
        if responsible:
            self.on_lost(ChunkLost(address))

    def _reconcile(self, now: float) -> None:
        """After a restart (perhaps a crash), make metadata and files agree: a row without
        its file is forgotten and the chunk fetched again; a file without a row is adopted
        if it hashes to its name, else quarantined."""
        on_disk = set(self.files.iter_addresses())
        for address in self.database.list_chunk_addresses():
            if address in on_disk:
                on_disk.discard(address)
                continue
            record = self.database.get_chunk(address)
            self.database.delete_chunk(address)
            if record is not None and record.kind is ChunkKind.RESPONSIBLE:
                self._lost_at_start.append(address)
            self.reconciled["missing"] += 1
        for address in on_disk:
            content = self.files.read(address)
            if content is not None and is_valid_chunk(address, content):
                self.database.add_chunk(address, len(content), ChunkKind.RESPONSIBLE, now)
                self.reconciled["adopted"] += 1
            else:
                self.files.quarantine(address)
                self.reconciled["removed"] += 1
        if any(self.reconciled.values()):
            log.warning("chunk files and metadata reconciled: %s", self.reconciled)

    def scrub(self, now: float) -> None:
        """Re-check the bytes of a few chunks not verified for a while (this node's own
        integrity check; peers' storage audits are the Auditor's)."""
        for record in self.database.chunks_due_for_audit(now - SCRUB_INTERVAL_SECONDS, SCRUB_BATCH):
            if self._checked_content(record) is not None:
                self.database.mark_verified(record.address, now)
