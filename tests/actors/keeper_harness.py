"""A ChunkKeeper on a real SQLite file and real chunk files, driven as a peer would."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pykka

from actors.chunk_keeper import ChunkKeeper
from actors.messages import ChunkLost, ChunkStored, InboundRequest
from persistence.chunk_files import ChunkFiles
from persistence.database import Database, open_database
from protocol.chunk_cache import DEFAULT_CACHE_BYTES
from protocol.chunks import chunk_address
from protocol.wire import Message, PutAck, PutChunk

OWN = bytes(32)


class KeeperHarness:
    def __init__(
        self, root: Path, max_storage: int = 10 * 2**20, cache_size: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.database: Database = open_database(root)
        self.files = ChunkFiles(root)
        self.stored: list[ChunkStored] = []
        self.lost: list[ChunkLost] = []
        self.ref: pykka.ActorRef[Any] = ChunkKeeper.start(
            OWN,
            self.database,
            self.files,
            max_storage,
            self.stored.append,
            self.lost.append,
            cache_size=cache_size,
        )

    def request(self, message: Message) -> Message:
        """Send ``message`` as a remote peer's request; its reply."""
        done = threading.Event()
        answer: list[Message] = []

        def reply(m: Message) -> None:
            answer.append(m)
            done.set()

        self.ref.tell(InboundRequest(b"\x01" * 32, message, reply))
        assert done.wait(5)
        return answer[0]

    def put(self, content: bytes) -> bytes:
        address = chunk_address(content)
        assert self.request(PutChunk(address, content)) == PutAck(address)
        return address

    def close(self) -> None:
        self.ref.stop()
        self.database.close()
