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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final

import pykka

from actors._quic.endpoint import TransportConfig
from actors.futures import Outcome, when_done
from actors.handshake import Handshake
from actors.nat_traverser import NatConfig, NatTraverser, nat_hooks
from actors.transport import Transport, TransportHandle
from protocol.chunks import CLOSE_GROUP_SIZE, chunk_address, is_valid_chunk
from protocol.errors import TransportError
from protocol.identity import Identity
from protocol.lookup import Contact, Lookup
from protocol.routing import K
from protocol.self_encryption import StreamEncryptor, decrypt
from protocol.wire import Chunk, Error, FindNode, GetChunk, Message, Nodes, PutAck, PutChunk
from protocol.xor import closest

log = logging.getLogger(__name__)

QUERY_TIMEOUT: Final = 5.0
LOOKUP_MARGIN: Final = 3
PUT_QUORUM: Final = 3
"""Acknowledgements a PUT needs (of the close group's 5) to count as stored."""

Progress = Callable[[int], None]
"""Called with a number of bytes just handled (for progress bars)."""


class ClientError(Exception):
    """A put or get that could not be completed; the message says why."""


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
    ) -> None:
        if not peers:
            raise ClientError("a client needs at least one peer address to start from")
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
                    contact.peer_id, FindNode(target), QUERY_TIMEOUT, contact.addrs
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
                lookup.on_reply(peer_id, outcome.value.peers, now)
                for record in outcome.value.peers:
                    self._learn(record.peer_id, [str(a) for a in record.addrs][:4])
            else:
                lookup.on_failure(peer_id, now)
                with self._known_lock:
                    self._known.pop(peer_id, None)
        return lookup.result()[:count]

    # -- chunks ----------------------------------------------------------------------

    def put_chunk(self, content: bytes) -> bytes:
        """Store one chunk on its close group; returns its address."""
        address = chunk_address(content)
        self._put(address, content)
        return address

    def _put(self, address: bytes, content: bytes) -> int:
        group = self.closest_peers(address, CLOSE_GROUP_SIZE)
        if not group:
            raise ClientError("no node found to store the chunk on")
        futures = [
            self.transport.request(
                c.peer_id, PutChunk(address, content), self.request_timeout, c.addrs
            )
            for c in group
        ]
        acks = 0
        problems = []
        for contact, future in zip(group, futures, strict=True):
            try:
                reply = future.get(timeout=self.request_timeout + 5)
            except (TransportError, pykka.Timeout) as exc:
                problems.append(f"{contact.peer_id.hex()[:12]}: {exc}")
                continue
            if isinstance(reply, PutAck):
                acks += 1
            elif isinstance(reply, Error):
                problems.append(f"{contact.peer_id.hex()[:12]}: {reply.code}: {reply.message}")
        if acks < min(PUT_QUORUM, len(group)):
            raise ClientError(
                f"chunk {address.hex()[:16]} stored on {acks} of {len(group)} nodes: "
                + "; ".join(problems)
            )
        return acks

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
        with path.open("rb") as source:
            encryptor = StreamEncryptor(source)
            self._put_all(encryptor.chunks(), progress)
            return encryptor.data_address

    def put_bytes(self, data: bytes) -> bytes:
        """Self-encrypt ``data`` and store it; returns the data address."""
        encryptor = StreamEncryptor(io.BytesIO(data))
        self._put_all(encryptor.chunks(), None)
        return encryptor.data_address

    def _put_all(self, chunks: Iterator[Any], progress: Progress | None) -> None:
        """Store chunks ``parallel`` at a time; the last one (the data map) only after
        every other is stored, so a data address never points at missing chunks."""
        pending: list[Future[int]] = []
        held_back = None
        for chunk in chunks:
            if held_back is not None:
                pending.append(
                    self._pool.submit(
                        self._put_counted, held_back.address, held_back.content, progress
                    )
                )
            held_back = chunk
            while len(pending) >= self.parallel:
                pending.pop(0).result()
        for future in pending:
            future.result()
        if held_back is not None:
            self._put_counted(held_back.address, held_back.content, progress)

    def _put_counted(self, address: bytes, content: bytes, progress: Progress | None) -> int:
        acks = self._put(address, content)
        if progress is not None:
            progress(len(content))
        return acks

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


def _deliver(
    answers: queue.Queue[tuple[bytes, Outcome[Message]]], peer_id: bytes, outcome: Outcome[Message]
) -> None:
    answers.put((peer_id, outcome))
