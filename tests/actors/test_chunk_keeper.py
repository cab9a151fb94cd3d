"""ChunkKeeper against a real SQLite file and real chunk files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.messages import (
    ChunkLost,
    ChunkStored,
    RoutingChanged,
    StatusQuery,
    Tick,
)
from persistence.chunk_files import ChunkFiles
from protocol.chunks import chunk_address
from protocol.wire import Chunk, Error, ErrorCode, GetChunk, NotFound, PutAck, PutChunk
from tests.actors.keeper_harness import KeeperHarness
from tests.conftest import MountTmpfs


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[KeeperHarness]:
    harness = KeeperHarness(tmp_path)
    yield harness
    harness.close()


def test_put_then_get_round_trip_and_idempotent(keeper: KeeperHarness) -> None:
    content = os.urandom(1000)
    address = chunk_address(content)
    assert keeper.request(PutChunk(address, content)) == PutAck(address)
    assert keeper.request(PutChunk(address, content)) == PutAck(address)
    assert keeper.request(GetChunk(address)) == Chunk(address, content)
    assert keeper.stored == [ChunkStored(address, 1000)], "stored once, acknowledged twice"
    status: dict[str, int] = keeper.ref.ask(StatusQuery(), block=True, timeout=5)
    assert status["chunks"] == 1 and status["bytes_stored"] == 1000


def test_wrong_hash_is_refused_and_nothing_is_written(keeper: KeeperHarness) -> None:
    content = os.urandom(100)
    wrong = chunk_address(b"something else")
    reply = keeper.request(PutChunk(wrong, content))
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_CHUNK
    assert not keeper.files.exists(wrong)
    assert keeper.request(GetChunk(wrong)) == NotFound(wrong)


def test_storage_limit_gives_storage_full(tmp_path: Path) -> None:
    harness = KeeperHarness(tmp_path, max_storage=1500)
    try:
        first = os.urandom(1000)
        assert isinstance(harness.request(PutChunk(chunk_address(first), first)), PutAck)
        second = os.urandom(1000)
        reply = harness.request(PutChunk(chunk_address(second), second))
        assert isinstance(reply, Error) and reply.code is ErrorCode.STORAGE_FULL
        assert "StorageFull" in reply.message
        assert not harness.files.exists(chunk_address(second))
        assert harness.request(GetChunk(chunk_address(first))) == Chunk(chunk_address(first), first)
    finally:
        harness.close()


def test_not_responsible_when_many_peers_are_closer(keeper: KeeperHarness) -> None:
    content = os.urandom(64)
    address = chunk_address(content)
    # Peers that share a longer prefix with the address than OWN (all zeros) can.
    closer = [address[:4] + os.urandom(28) for _ in range(10)]
    keeper.ref.tell(RoutingChanged(tuple(closer), (), frozenset(closer)))
    reply = keeper.request(PutChunk(address, content))
    assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_RESPONSIBLE


def test_corrupted_file_is_never_served_and_is_quarantined(keeper: KeeperHarness) -> None:
    content = os.urandom(4096)
    address = chunk_address(content)
    assert isinstance(keeper.request(PutChunk(address, content)), PutAck)
    path = keeper.files.path_of(address)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert keeper.request(GetChunk(address)) == NotFound(address)
    assert keeper.lost == [ChunkLost(address)]
    assert not path.exists()
    assert (keeper.files.quarantine_dir / address.hex()).read_bytes() == bytes(damaged)
    assert keeper.database.get_chunk(address) is None
    status: dict[str, int] = keeper.ref.ask(StatusQuery(), block=True, timeout=5)
    assert status["chunks"] == 0 and status["bytes_stored"] == 0
    # and it can be stored again, from a good replica
    assert isinstance(keeper.request(PutChunk(address, content)), PutAck)


def test_scrub_finds_a_chunk_damaged_at_rest(keeper: KeeperHarness) -> None:
    content = os.urandom(512)
    address = chunk_address(content)
    assert isinstance(keeper.request(PutChunk(address, content)), PutAck)
    keeper.files.path_of(address).write_bytes(b"rot")
    keeper.ref.proxy().scrub(1e12).get(timeout=5)  # far in the future: every chunk is due
    assert keeper.lost == [ChunkLost(address)]


def test_restart_reconciles_metadata_with_files(tmp_path: Path) -> None:
    harness = KeeperHarness(tmp_path)
    kept, gone = os.urandom(300), os.urandom(400)
    for content in (kept, gone):
        assert isinstance(harness.request(PutChunk(chunk_address(content), content)), PutAck)
    harness.close()
    # While the node was down: one file lost, one valid file appeared, one bad file appeared.
    files = ChunkFiles(tmp_path)
    files.path_of(chunk_address(gone)).unlink()
    stray = os.urandom(500)
    files.write(chunk_address(stray), stray)
    forged = chunk_address(b"something")
    files.write(forged, b"not that")

    again = KeeperHarness(tmp_path)
    try:
        status: dict[str, Any] = again.ref.ask(StatusQuery(), block=True, timeout=5)
        assert status["reconciled_at_start"] == {"missing": 1, "adopted": 1, "removed": 1}
        assert status["chunks"] == 2 and status["bytes_stored"] == 800
        assert again.request(GetChunk(chunk_address(stray))) == Chunk(chunk_address(stray), stray)
        assert again.request(GetChunk(chunk_address(kept))) == Chunk(chunk_address(kept), kept)
        assert not files.exists(forged)
        again.ref.tell(Tick(0.0))
        again.ref.ask(StatusQuery(), timeout=5)
        assert again.lost == [ChunkLost(chunk_address(gone))], "the lost chunk is fetched again"
    finally:
        again.close()


def test_a_full_disk_fails_the_put_cleanly(tmp_path: Path, mount_tmpfs: MountTmpfs) -> None:
    """A real full file system under the node (not its storage limit): the PUT is refused
    with StorageFull, nothing is half-written, and what was stored before is intact."""
    root = mount_tmpfs(size="2m")
    harness = KeeperHarness(
        root, max_storage=100 * 2**20
    )  # the limit would allow it; the disk does not
    try:
        stored = []
        for _ in range(20):
            content = os.urandom(256 * 1024)
            reply = harness.request(PutChunk(chunk_address(content), content))
            if isinstance(reply, Error):
                assert reply.code is ErrorCode.STORAGE_FULL, reply
                assert not harness.files.exists(chunk_address(content))
                assert harness.database.get_chunk(chunk_address(content)) is None
                break
            stored.append(content)
        else:
            raise AssertionError("a 2 MiB disk took 5 MiB of chunks")
        assert stored, "some chunks fit before the disk filled"
        assert not list(root.rglob("*.tmp")), "no temporary file is left behind"
        for content in stored:
            assert harness.request(GetChunk(chunk_address(content))) == Chunk(
                chunk_address(content), content
            )
    finally:
        harness.close()
