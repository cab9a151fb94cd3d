"""ChunkKeeper: chunk files and their metadata, capacity, and integrity.

A PUT is judged by ``protocol.chunks.check_put`` (size, hash, already held,
capacity, responsibility, in that order) and stored file-first, metadata second:
a crash between the two leaves a file without a row, which the restart
reconciliation adopts after re-checking its hash. A GET re-verifies the bytes; a
chunk that fails is quarantined, forgotten, and reported so it is fetched again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from actors.base import NodeActor
from actors.messages import (
    ChunkLost,
    ChunkStored,
    HeldChunks,
    HoldsChunk,
    InboundRequest,
    RoutingChanged,
    StatusQuery,
    StoreChunk,
    Tick,
)
from persistence.chunk_files import ChunkFiles
from persistence.database import Database
from persistence.errors import ChunkFileError, StorageFull
from persistence.models import ChunkKind
from protocol.chunks import PutContext, PutVerdict, check_put, is_valid_chunk
from protocol.wire import Chunk, Error, ErrorCode, GetChunk, Message, NotFound, PutAck, PutChunk

log = logging.getLogger(__name__)

AUDIT_INTERVAL_SECONDS = 6 * 3600.0
"""A stored chunk is re-checked when it was last verified longer ago than this."""
AUDIT_BATCH = 4
"""Chunks re-checked per tick: slow on purpose, the audit must not compete with traffic."""

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
    ) -> None:
        super().__init__()
        self.own_id = own_id
        self.database = database
        self.files = files
        self.max_storage = max_storage
        self.on_stored = on_stored
        self.on_lost = on_lost
        self.known_peers: set[bytes] = set()
        self.bytes_stored = 0
        self.chunk_count = 0
        self.cached_count = 0
        self.puts = 0
        self.gets = 0
        self.rejected = 0

    def on_start(self) -> None:
        totals = self.database.chunk_totals()
        self.bytes_stored = sum(t.total_bytes for t in totals.values())
        self.chunk_count = totals[ChunkKind.RESPONSIBLE].count
        self.cached_count = totals[ChunkKind.CACHE].count

    def on_receive(self, message: Any) -> Any:
        match message:
            case InboundRequest(message=PutChunk(address=address, content=content), reply=reply):
                reply(self.put(address, content))
            case InboundRequest(message=GetChunk(address=address), reply=reply):
                reply(self.get(address))
            case StoreChunk(address=address, content=content):
                return self.put(address, content)
            case RoutingChanged(added=added, removed=removed):
                self.known_peers.difference_update(removed)
                self.known_peers.update(added)
            case HoldsChunk(address=address):
                return self.database.get_chunk(address) is not None
            case HeldChunks():
                return self.database.list_chunk_addresses(ChunkKind.RESPONSIBLE)
            case Tick(now=now):
                self.audit(now)
            case StatusQuery():
                return {
                    "chunks": self.chunk_count,
                    "bytes_stored": self.bytes_stored,
                    "cached_chunks": self.cached_count,
                    "max_storage": self.max_storage,
                    "puts": self.puts,
                    "gets": self.gets,
                    "puts_rejected": self.rejected,
                }
            case _:
                return super().on_receive(message)
        return None

    def put(self, address: bytes, content: bytes) -> Message:
        held = self.database.get_chunk(address)
        verdict = check_put(
            address,
            content,
            PutContext(
                own_id=self.own_id,
                held=held is not None and held.kind is ChunkKind.RESPONSIBLE,
                bytes_stored=self.bytes_stored,
                max_storage=self.max_storage,
                known_peers=tuple(self.known_peers),
            ),
        )
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
        if held is not None:  # a cached copy becomes a responsible one
            self.database.set_chunk_kind(address, ChunkKind.RESPONSIBLE)
            self.cached_count -= 1
        else:
            self.database.add_chunk(address, len(content), ChunkKind.RESPONSIBLE, now)
            self.bytes_stored += len(content)
        self.chunk_count += 1
        self.database.mark_verified(address, now)
        self.puts += 1
        self.on_stored(ChunkStored(address, len(content)))
        return PutAck(address)

    def get(self, address: bytes) -> Message:
        self.gets += 1
        record = self.database.get_chunk(address)
        if record is None:
            return NotFound(address)
        content = self.files.read(address)
        if content is not None and is_valid_chunk(address, content):
            return Chunk(address, content)
        self._lose(address, "missing" if content is None else "corrupted")
        return NotFound(address)

    def _lose(self, address: bytes, why: str) -> None:
        """Quarantine a bad chunk, forget it, and have it fetched again."""
        log.warning("chunk %s is %s: quarantined, will be fetched again", address.hex()[:16], why)
        record = self.database.get_chunk(address)
        self.files.quarantine(address)
        if self.database.delete_chunk(address) and record is not None:
            self.bytes_stored -= record.size
            if record.kind is ChunkKind.RESPONSIBLE:
                self.chunk_count -= 1
            else:
                self.cached_count -= 1
        self.on_lost(ChunkLost(address))

    def audit(self, now: float) -> None:
        """Re-check a few chunks not verified for a while."""
        for record in self.database.chunks_due_for_audit(now - AUDIT_INTERVAL_SECONDS, AUDIT_BATCH):
            content = self.files.read(record.address)
            if content is not None and is_valid_chunk(record.address, content):
                self.database.mark_verified(record.address, now)
            else:
                self._lose(record.address, "missing" if content is None else "corrupted")
