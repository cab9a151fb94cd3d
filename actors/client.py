"""Client: put and get files on the network, from Python.

A client is a light participant: it has an ephemeral identity, runs its own
Handshake and Transport actors, announces no address (so nodes keep it out of
their routing tables), and finds close groups with the same pure ``Lookup`` the
nodes use::

    from actors.client import Client

    with Client(["/ip4/127.0.0.1/udp/12000/quic-v1/p2p/<peer id>"]) as client:
        address = client.put_file(Path("photo.jpg"))      # self-encrypted chunks
        client.get_file(address, Path("copy.jpg"))        # fetched, verified, decrypted
        chunk_address = client.put_chunk(b"raw bytes")    # one content-addressed chunk
        assert client.get_chunk(chunk_address) == b"raw bytes"

A chunk is stored by sending it to every member of the close group of its
address; a PUT succeeds when a majority acknowledged it (the nodes' Replicators
complete the group). A GET asks the members closest first and re-checks the hash
of what comes back: a member that serves wrong bytes is skipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import pykka

from actors.futures import Outcome, when_done
from actors.handshake import Handshake
from actors.nat_traverser import NatConfig, NatTraverser, nat_hooks
from actors.transport import Transport, TransportConfig, TransportHandle
from evm.rpc import ChainError
from persistence.chunk_files import ChunkFiles
from persistence.errors import ChunkFileError
from protocol.chunks import CLOSE_GROUP_SIZE, chunk_address, is_valid_chunk
from protocol.errors import TransportError
from protocol.identity import Identity
from protocol.lookup import FIND_NODE_TIMEOUT, Contact, Lookup
from protocol.payments import MIN_QUOTES, is_fresh, is_valid_quote, payment_for
from protocol.routing import K
from protocol.self_encryption import EncryptedChunk, StreamEncryptor, decrypt
from protocol.wire import (
    Chunk,
    Error,
    FindNode,
    GetChunk,
    GetQuote,
    Message,
    Nodes,
    PaymentProof,
    PutAck,
    PutChunk,
    QuoteReply,
)
from protocol.xor import closest

if TYPE_CHECKING:
    from evm.wallet import Wallet

log = logging.getLogger(__name__)

QUOTE_TIMEOUT: Final = 5.0
LOOKUP_MARGIN: Final = 3
PUT_QUORUM: Final = 3
"""Acknowledgements a PUT needs (of the close group's 5) to count as stored; also the
holders that make a chunk count as already stored (nothing to pay)."""
PAY_BATCH_CHUNKS: Final = 64
PAY_BATCH_BYTES: Final = 128 * 1024 * 1024
"""A file is quoted, paid (one transaction) and uploaded this many chunks (or bytes) at a
time: memory stays bounded, and a failure costs at most one batch's work."""

Progress = Callable[[int], None]
"""Called with a number of bytes just handled (for progress bars)."""


class ClientError(Exception):
    """A put or get that could not be completed; the message says why."""


@dataclass
class PutReport:
    """What a put did (or, estimated, would do): chunks, what was paid, what was not needed."""

    address: bytes = b""
    chunks: int = 0
    already_stored: int = 0
    """Chunks their close group already held: not paid for, not uploaded."""
    paid: int = 0
    """Token base units paid (or, for an estimate, to pay)."""
    reused_proofs: int = 0
    """Chunks stored with a proof paid by an earlier, interrupted put (not paid again)."""
    gas_used: int = 0
    transactions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address.hex(),
            "chunks": self.chunks,
            "paid": self.paid,
            "already_stored": self.already_stored,
            "reused_proofs": self.reused_proofs,
            "gas_used": self.gas_used,
            "transactions": list(self.transactions),
        }


@dataclass(frozen=True, slots=True)
class _Placement:
    """One chunk of a batch: its close group, and the proof it is stored with."""

    chunk: EncryptedChunk
    group: list[Contact]
    proof: PaymentProof | None = None


class Client:
    """A connection to the network for putting and getting chunks and files."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        quic: str = "qh3",
        host: str = "0.0.0.0",
        request_timeout: float = 60.0,
        parallel: int = 4,
        wallet: Wallet | None = None,
        receipts_dir: Path | None = None,
    ) -> None:
        """``wallet``: pay for what is stored (a paying network); None stores for free.
        ``receipts_dir``: where proofs paid for but not yet stored are kept, so that a put
        run again after a failure never pays twice for a chunk."""
        if not peers:
            raise ClientError("a client needs at least one peer address to start from")
        self.wallet = wallet
        self._receipts = None if receipts_dir is None else _open_receipts(receipts_dir)
        self.identity = Identity.generate()
        self.request_timeout = request_timeout
        self.parallel = parallel
        self._known: dict[bytes, tuple[str, ...]] = {}
        self._known_lock = threading.Lock()
        self._handshake: pykka.ActorRef[Any] = Handshake.start(self.identity)
        # Nodes behind NAT are reached by hole punching or a relay: a NatTraverser
        # that only dials (a client is never a relay and announces nothing).
        nat_ref: list[pykka.ActorRef[Any]] = []

        def tell_nat(message: Any) -> None:
            if nat_ref:
                with contextlib.suppress(pykka.ActorDeadError):
                    nat_ref[0].tell(message)

        try:
            config = TransportConfig(host=host, port=0, quic=quic, announce=False)  # type: ignore[arg-type]
            self._transport_ref: pykka.ActorRef[Any] = Transport.start(
                self.identity, self._handshake, config, **nat_hooks(tell_nat)
            )
        except BaseException:
            self._handshake.stop()
            raise
        self.transport: TransportHandle = Transport.handle_of(self._transport_ref)
        self._nat: pykka.ActorRef[Any] = NatTraverser.start(
            self.transport, NatConfig(announce=False, serve_relay=False)
        )
        nat_ref.append(self._nat)
        self._pool = ThreadPoolExecutor(
            max_workers=max(2, parallel * 2), thread_name_prefix="client"
        )
        try:
            self._join(peers)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for ref in (self._nat, self._transport_ref, self._handshake):
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(timeout=10)

    def _join(self, peers: Sequence[str]) -> None:
        reached = 0
        errors = []
        futures = [(addr, self.transport.dial(addr, timeout=10)) for addr in peers]
        for addr, future in futures:
            try:
                peer_id = future.get(timeout=15)
            except (TransportError, pykka.Timeout) as exc:
                errors.append(f"{addr}: {exc}")
                continue
            self._learn(peer_id, (addr,))
            reached += 1
        if not reached:
            raise ClientError("no peer answered: " + "; ".join(errors))

    def _learn(self, peer_id: bytes, addrs: Sequence[str]) -> None:
        if addrs and peer_id != self.identity.peer_id:
            with self._known_lock:
                self._known[peer_id] = tuple(addrs)

    def _nearest_known(self, target: bytes, count: int) -> list[Contact]:
        """The ``count`` known nodes closest to ``target``, closest first (no lookup)."""
        with self._known_lock:
            return [Contact(p, self._known[p]) for p in closest(target, self._known, count)]

    # -- finding close groups --------------------------------------------------------

    def closest_peers(self, target: bytes, count: int = 20) -> list[Contact]:
        """The nodes closest to ``target``, by an iterative lookup (closest first)."""
        seeds = self._nearest_known(target, K)
        # Ending when the closest count + LOOKUP_MARGIN have answered (not the nodes' k = 20)
        # keeps a close-group lookup short while failed or late peers still have spares.
        lookup = Lookup(
            self.identity.peer_id,
            target,
            seeds,
            k=max(count, CLOSE_GROUP_SIZE + LOOKUP_MARGIN),
            now=time.monotonic(),
        )
        answers: queue.Queue[tuple[bytes, Outcome[Message]]] = queue.Queue()
        while not lookup.done:
            now = time.monotonic()
            for contact in lookup.next_queries(now):
                future = self.transport.request(
                    contact.peer_id, FindNode(target), FIND_NODE_TIMEOUT, contact.addrs
                )
                when_done(future, partial(_deliver, answers, contact.peer_id))
            if lookup.done or lookup.in_flight == 0:
                break
            wake = lookup.next_timeout()
            try:
                peer_id, outcome = answers.get(
                    timeout=None if wake is None else max(0.0, wake - now)
                )
            except queue.Empty:
                continue
            now = time.monotonic()
            if outcome.error is None and isinstance(outcome.value, Nodes):
                lookup.on_reply(peer_id, outcome.value.peers, now, outcome.value.shunned)
                for record in outcome.value.peers:
                    self._learn(record.peer_id, [str(a) for a in record.addrs][:4])
            else:
                lookup.on_failure(peer_id, now)
                with self._known_lock:
                    self._known.pop(peer_id, None)
        with self._known_lock:
            for shunned in lookup.skipped:  # nodes report it fails their storage audits
                self._known.pop(shunned, None)
        return lookup.result()[:count]

    # -- chunks ----------------------------------------------------------------------

    def put_chunk(self, content: bytes) -> bytes:
        """Store one chunk on its close group (paying for it on a paying network);
        returns its address."""
        address = chunk_address(content)
        self._store_batch([EncryptedChunk(address, content)], PutReport(), None)
        return address

    def _put(self, placement: _Placement) -> int:
        """PUT a chunk to every member of its close group; return once ``PUT_QUORUM``
        acknowledged (the rest finish on their own), with how many had."""
        address, content, group = placement.chunk.address, placement.chunk.content, placement.group
        if not group:
            raise ClientError("no node found to store the chunk on")
        others = [c.peer_id for c in group]
        answers: queue.Queue[tuple[bytes, Outcome[Message]]] = queue.Queue()
        for contact in group:
            message = PutChunk(
                address,
                content,
                placement.proof,
                [p for p in others if p != contact.peer_id],
            )
            future = self.transport.request(
                contact.peer_id, message, self.request_timeout, contact.addrs
            )
            when_done(future, partial(_deliver, answers, contact.peer_id))
        acks = 0
        problems = []
        need = min(PUT_QUORUM, len(group))
        for _ in group:
            try:
                peer_id, outcome = answers.get(timeout=self.request_timeout + 5)
            except queue.Empty:
                problems.append("no answer in time")
                break
            reply = outcome.value
            if isinstance(reply, PutAck):
                acks += 1
                if acks >= need:
                    return acks
            elif isinstance(reply, Error):
                problems.append(f"{peer_id.hex()[:12]}: {reply.code}: {reply.message}")
            else:
                problems.append(f"{peer_id.hex()[:12]}: {outcome.error or reply}")
        raise ClientError(
            f"chunk {address.hex()[:16]} stored on {acks} of {len(group)} nodes: "
            + "; ".join(problems)
        )

    def get_chunk(self, address: bytes) -> bytes:
        """Fetch a chunk, verified against its address."""
        content = self._get(address)
        if content is None:
            raise ClientError(f"chunk {address.hex()} not found on its close group")
        return content

    def _get(self, address: bytes) -> bytes | None:
        """Ask the closest known node first (no lookup); if it lacks the chunk, look up the
        close group and ask its members, closest first."""
        nearest = self._nearest_known(address, 1)
        content = self._get_from(address, nearest)
        if content is None:
            group = self.closest_peers(address, CLOSE_GROUP_SIZE + 2)
            content = self._get_from(address, [c for c in group if c not in nearest])
        return content

    def _get_from(self, address: bytes, contacts: Sequence[Contact]) -> bytes | None:
        for contact in contacts:
            try:
                reply = self.transport.request(
                    contact.peer_id, GetChunk(address), self.request_timeout, contact.addrs
                ).get(timeout=self.request_timeout + 5)
            except (TransportError, pykka.Timeout) as exc:
                log.info(
                    "GET %s from %s failed: %s", address.hex()[:12], contact.peer_id.hex()[:12], exc
                )
                continue
            if isinstance(reply, Chunk):
                if reply.address == address and is_valid_chunk(address, reply.content):
                    return reply.content
                log.warning(
                    "node %s served a chunk with a wrong hash: rejected", contact.peer_id.hex()[:16]
                )
        return None

    # -- files -----------------------------------------------------------------------

    def put_file(self, path: Path, progress: Progress | None = None) -> bytes:
        """Self-encrypt the file into chunks, store them, return the data address."""
        return self.upload_file(path, progress).address

    def upload_file(
        self, path: Path, progress: Progress | None = None, *, estimate: bool = False
    ) -> PutReport:
        """Self-encrypt the file into chunks and store them (paying on a paying network);
        with ``estimate``, only ask for quotes: what it would cost, nothing paid or stored."""
        with path.open("rb") as source:
            return self._upload(StreamEncryptor(source), progress, estimate)

    def put_bytes(self, data: bytes) -> bytes:
        """Self-encrypt ``data`` and store it; returns the data address."""
        return self._upload(StreamEncryptor(io.BytesIO(data)), None, False).address

    def _upload(
        self, encryptor: StreamEncryptor, progress: Progress | None, estimate: bool
    ) -> PutReport:
        """Store the chunks a batch at a time; the last one (the data map) only after
        every other is stored, so a data address never points at missing chunks."""
        report = PutReport()
        expected = len(encryptor.piece_sizes) + 1
        batch: list[EncryptedChunk] = []
        batch_bytes = 0
        held_back: EncryptedChunk | None = None
        for chunk in encryptor.chunks():
            if held_back is not None:
                batch.append(held_back)
                batch_bytes += len(held_back.content)
            held_back = chunk
            if len(batch) >= PAY_BATCH_CHUNKS or batch_bytes >= PAY_BATCH_BYTES:
                self._store_batch(batch, report, progress, estimate=estimate, expected=expected)
                batch, batch_bytes = [], 0
        if held_back is not None:
            batch.append(held_back)
        self._store_batch(
            batch, report, progress, estimate=estimate, expected=expected, last_alone=True
        )
        report.address = encryptor.data_address
        return report

    def _store_batch(
        self,
        chunks: list[EncryptedChunk],
        report: PutReport,
        progress: Progress | None,
        *,
        estimate: bool = False,
        expected: int = 0,
        last_alone: bool = False,
    ) -> None:
        """Find each chunk's close group; on a paying network get its quotes, skip what
        is already stored, pay for the rest in one transaction; then store them,
        ``parallel`` at a time (the last one after all others with ``last_alone``)."""
        if not chunks:
            return
        first_batch = report.chunks == 0
        report.chunks += len(chunks)
        groups = list(
            self._pool.map(lambda c: self.closest_peers(c.address, CLOSE_GROUP_SIZE), chunks)
        )
        placements = [_Placement(c, g) for c, g in zip(chunks, groups, strict=True)]
        if self.wallet is not None:
            placements = self._pay(placements, report, estimate, first_batch, expected)
        if estimate:
            return
        tail = placements.pop() if last_alone and placements else None
        pending: list[Future[int]] = []
        for placement in placements:
            pending.append(self._pool.submit(self._put_counted, placement, progress))
            while len(pending) >= self.parallel:
                pending.pop(0).result()
        for future in pending:
            future.result()
        if tail is not None:
            self._put_counted(tail, progress)

    def _put_counted(self, placement: _Placement, progress: Progress | None) -> int:
        acks = self._put(placement)
        if self._receipts is not None and placement.proof is not None:
            with contextlib.suppress(ChunkFileError):
                self._receipts.delete(placement.chunk.address)
        if progress is not None:
            progress(len(placement.chunk.content))
        return acks

    # -- payments ----------------------------------------------------------------------

    def _pay(
        self,
        placements: list[_Placement],
        report: PutReport,
        estimate: bool,
        first_batch: bool,
        expected: int,
    ) -> list[_Placement]:
        """Quote every chunk; drop those already stored; reuse proofs paid before; pay
        for the rest in one transaction. The placements left to store, with their proofs."""
        assert self.wallet is not None
        quoted = list(self._pool.map(self._quotes, placements))
        to_store: list[_Placement] = []
        to_pay: list[_Placement] = []
        now = time.time()
        for placement, (held, quotes) in zip(placements, quoted, strict=True):
            if held >= PUT_QUORUM:
                report.already_stored += 1
                continue
            if len(quotes) < MIN_QUOTES:
                raise ClientError(
                    f"chunk {placement.chunk.address.hex()[:16]}: only {len(quotes)} nodes of "
                    f"its close group gave a valid quote (at least {MIN_QUOTES} are needed)"
                )
            paid_before = self._paid_before(placement.chunk.address, now)
            if paid_before is not None and not estimate:
                report.reused_proofs += 1
                to_store.append(_Placement(placement.chunk, placement.group, paid_before))
            else:
                to_pay.append(_Placement(placement.chunk, placement.group, PaymentProof(quotes)))
        claims = [payment_for(p.proof.quotes) for p in to_pay if p.proof is not None]
        cost = sum(c.amount for c in claims)
        if estimate:
            report.paid += cost
            return []
        if not claims:
            return to_store
        if first_batch:
            self._check_funds(cost, len(placements), expected)
        try:
            result = self.wallet.pay_for_quotes(
                [("0x" + c.rewards_address.hex(), c.amount, c.quote_hash) for c in claims]
            )
        except ChainError as exc:
            raise ClientError(
                f"payment failed, nothing was uploaded in this batch: {exc}"
            ) from None
        report.paid += result.amount_paid
        report.gas_used += result.gas_used
        report.transactions += result.tx_hashes
        for placement in to_pay:
            self._keep_receipt(placement)
        return to_store + to_pay

    def _check_funds(self, batch_cost: int, batch_chunks: int, expected_chunks: int) -> None:
        """Before anything is paid: can the wallet pay for the whole file? (The cost of
        the chunks not quoted yet is estimated from this batch's.)"""
        assert self.wallet is not None
        estimate = batch_cost * max(expected_chunks, batch_chunks) // max(batch_chunks, 1)
        try:
            balance = self.wallet.token_balance()
        except ChainError as exc:
            raise ClientError(f"cannot read the wallet's balance: {exc}") from None
        if balance < batch_cost or balance < estimate:
            raise ClientError(
                f"not enough tokens: storing this costs about {estimate} token units, the "
                f"wallet {self.wallet.address} holds {balance}; nothing was paid or uploaded"
            )

    def _quotes(self, placement: _Placement) -> tuple[int, list[Any]]:
        """Ask the close group for quotes: how many already hold the chunk, and the
        valid quotes of the others."""
        chunk = placement.chunk
        size = len(chunk.content)
        futures = [
            (
                c.peer_id,
                self.transport.request(
                    c.peer_id, GetQuote(chunk.address, size), QUOTE_TIMEOUT, c.addrs
                ),
            )
            for c in placement.group
        ]
        held = 0
        quotes = []
        for peer_id, future in futures:
            try:
                reply = future.get(timeout=QUOTE_TIMEOUT + 5)
            except (TransportError, pykka.Timeout) as exc:
                log.info("no quote from %s: %s", peer_id.hex()[:12], exc)
                continue
            if not isinstance(reply, QuoteReply):
                log.info("no quote from %s: %s", peer_id.hex()[:12], reply)
                continue
            if reply.held:
                held += 1
            elif is_valid_quote(reply.quote, chunk.address, peer_id, size):
                quotes.append(reply.quote)
            else:
                log.warning("node %s gave an invalid quote: skipped", peer_id.hex()[:16])
        return held, quotes

    def _paid_before(self, address: bytes, now: float) -> PaymentProof | None:
        """A proof paid for this chunk by an earlier put that did not finish, if its
        quotes are still young enough for the nodes to accept."""
        if self._receipts is None:
            return None
        try:
            encoded = self._receipts.read(address)
        except ChunkFileError:
            return None
        if encoded is None:
            return None
        try:
            proof = _proof_decoder.decode(encoded)
        except msgspec.DecodeError:
            return None
        return proof if is_fresh(proof, now) else None

    def _keep_receipt(self, placement: _Placement) -> None:
        if self._receipts is not None and placement.proof is not None:
            try:
                self._receipts.write(
                    placement.chunk.address, msgspec.msgpack.encode(placement.proof)
                )
            except ChunkFileError as exc:
                log.warning("cannot keep the receipt of a payment: %s", exc)

    def get_file(self, data_address: bytes, out: Path, progress: Progress | None = None) -> int:
        """Fetch, verify and decrypt the file at ``data_address`` into ``out``; its size.

        Written to a temporary file beside ``out`` and renamed at the end: on any
        error ``out`` is left untouched.
        """
        out = out.absolute()
        temp = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with temp.open("wb") as sink:

                def write(piece: bytes) -> None:
                    sink.write(piece)
                    if progress is not None:
                        progress(len(piece))

                size = self._decrypt(data_address, write)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return size

    def get_bytes(self, data_address: bytes) -> bytes:
        parts: list[bytes] = []
        self._decrypt(data_address, parts.append)
        return b"".join(parts)

    def _decrypt(self, data_address: bytes, write: Callable[[bytes], object]) -> int:
        """Fetch (``parallel * 2`` chunks ahead), verify and decrypt the data at
        ``data_address``, passing its bytes to ``write`` in order; its size."""
        window = _Prefetcher(self._pool, self._get, ahead=self.parallel * 2)
        try:
            return decrypt(data_address, window.fetch, write, prefetch=window.plan)
        finally:
            window.cancel()


class _Prefetcher:
    """Fetches up to ``ahead`` chunks ahead of the decryptor, in its order."""

    def __init__(
        self, pool: ThreadPoolExecutor, get: Callable[[bytes], bytes | None], ahead: int
    ) -> None:
        self._pool = pool
        self._get = get
        self._ahead = ahead
        self._order: list[bytes] = []
        self._next = 0
        self._running: dict[bytes, Future[bytes | None]] = {}

    def plan(self, addresses: list[bytes]) -> None:
        self._order = list(addresses)
        self._next = 0

    def fetch(self, address: bytes) -> bytes | None:
        while self._next < len(self._order) and len(self._running) < self._ahead:
            upcoming = self._order[self._next]
            self._next += 1
            if upcoming not in self._running:
                self._running[upcoming] = self._pool.submit(self._get, upcoming)
        future = self._running.pop(address, None)
        if future is None:
            return self._get(address)
        return future.result()

    def cancel(self) -> None:
        for future in self._running.values():
            future.cancel()
        self._running.clear()


_proof_decoder = msgspec.msgpack.Decoder(PaymentProof)


def _open_receipts(directory: Path) -> ChunkFiles:
    """The receipts store: proofs paid for, by chunk address, written atomically."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return ChunkFiles(directory)
    except (OSError, ChunkFileError) as exc:
        raise ClientError(f"cannot use {directory} for payment receipts: {exc}") from None


def _deliver(
    answers: queue.Queue[tuple[bytes, Outcome[Message]]], peer_id: bytes, outcome: Outcome[Message]
) -> None:
    answers.put((peer_id, outcome))
