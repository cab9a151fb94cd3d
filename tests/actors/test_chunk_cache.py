"""ChunkKeeper's cache of chunks it is no longer responsible for: real SQLite, real files."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.futures import NotifyingFuture
from actors.messages import (
    ChunkStored,
    ClaimChunks,
    DemoteChunks,
    HeldChunks,
    HoldsChunks,
    StatusQuery,
    StoreChunk,
)
from actors.node import Node, NodeConfig
from persistence.models import ChunkKind
from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN, chunk_address
from protocol.identity import Identity
from protocol.wire import Chunk, Error, ErrorCode, GetChunk, Message, NotFound, PutAck, PutChunk
from protocol.xor import closest
from tests.actors.keeper_harness import KeeperHarness


class Keeper(KeeperHarness):
    def __init__(self, root: Path, cache_size: int, max_storage: int = 10 * 2**20) -> None:
        super().__init__(root, max_storage=max_storage, cache_size=cache_size)

    def ask(self, message: Any) -> Any:
        return self.ref.ask(message, block=True, timeout=5)

    def held(self) -> list[bytes]:
        return held_by(self.ref)

    def claim(self, address: bytes) -> bool:
        """Whether the keeper holds ``address`` once it claims it (False: fetch it)."""
        future: NotifyingFuture[list[bytes]] = NotifyingFuture()
        self.ref.tell(ClaimChunks((address,), future.set))
        to_fetch: list[bytes] = future.get(timeout=5)
        return to_fetch == []

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ask(StatusQuery())
        return status

    def kind(self, address: bytes) -> ChunkKind | None:
        record = self.database.get_chunk(address)
        return None if record is None else record.kind


def held_by(keeper: Any) -> list[bytes]:
    """The keeper's responsible chunks, asked the way the actors ask (``reply``)."""
    future: NotifyingFuture[list[bytes]] = NotifyingFuture()
    keeper.tell(HeldChunks(reply=future.set))
    held: list[bytes] = future.get(timeout=5)
    return held


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[Keeper]:
    harness = Keeper(tmp_path, cache_size=2500)
    yield harness
    harness.close()


def totals(status: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        status["chunks"],
        status["bytes_stored"],
        status["cached_chunks"],
        status["cached_bytes"],
    )


def test_demote_serve_evict_promote(keeper: Keeper) -> None:
    a, b, c = (os.urandom(1000) for _ in range(3))
    addr_a, addr_b, addr_c = (keeper.put(x) for x in (a, b, c))
    assert totals(keeper.status()) == (3, 3000, 0, 0)

    # demoted: kept, as cache, out of the responsible totals and of HeldChunks
    assert keeper.ask(DemoteChunks((addr_a,))) == 1
    assert keeper.kind(addr_a) is ChunkKind.CACHE
    assert totals(keeper.status()) == (2, 2000, 1, 1000)
    assert keeper.held() == sorted([addr_b, addr_c])
    assert keeper.ask(HoldsChunks((addr_a,))) == [True]
    assert keeper.ask(DemoteChunks((addr_a,))) == 0, "already cached"

    # served from the cache, and counted
    assert keeper.request(GetChunk(addr_a)) == Chunk(addr_a, a)
    assert keeper.status()["cache_hits"] == 1
    assert keeper.request(GetChunk(addr_c)) == Chunk(addr_c, c)
    assert keeper.status()["cache_hits"] == 1, "a responsible chunk is not a cache hit"

    # past the bound (2500 bytes), the least recently used goes: b, since a was just read
    assert keeper.ask(DemoteChunks((addr_b,))) == 1
    assert keeper.request(GetChunk(addr_a)) == Chunk(addr_a, a)
    assert keeper.ask(DemoteChunks((addr_c,))) == 1
    assert not keeper.files.exists(addr_b)
    assert keeper.database.get_chunk(addr_b) is None
    assert keeper.request(GetChunk(addr_b)) == NotFound(addr_b)
    status = keeper.status()
    assert totals(status) == (0, 0, 2, 2000)
    assert status["cache_evictions"] == 1 and status["cache_size"] == 2500
    assert status["cache_hits"] == 2
    assert keeper.lost == [], "an eviction is not a loss"

    # a PUT of a cached chunk this node is responsible for promotes it
    assert keeper.request(PutChunk(addr_a, a)) == PutAck(addr_a)
    assert keeper.kind(addr_a) is ChunkKind.RESPONSIBLE
    assert totals(keeper.status()) == (1, 1000, 1, 1000)
    assert keeper.held() == [addr_a]
    assert keeper.stored[-1] == ChunkStored(addr_a, 1000)
    assert keeper.request(GetChunk(addr_a)) == Chunk(addr_a, a)
    assert keeper.status()["cache_hits"] == 2
    # the database agrees with the in-memory totals
    db_totals = keeper.database.chunk_totals()
    assert db_totals[ChunkKind.RESPONSIBLE].count == 1
    assert db_totals[ChunkKind.CACHE].total_bytes == 1000


def test_cached_bytes_do_not_count_against_max_storage(tmp_path: Path) -> None:
    keeper = Keeper(tmp_path, cache_size=10_000, max_storage=1500)
    try:
        a = os.urandom(1000)
        addr_a = keeper.put(a)
        keeper.ask(DemoteChunks((addr_a,)))
        keeper.put(os.urandom(1000))  # fits: the cached 1000 bytes are not counted
        reply = keeper.request(PutChunk(addr_a, a))  # promotion needs room too
        assert isinstance(reply, Error) and reply.code is ErrorCode.STORAGE_FULL
        assert keeper.kind(addr_a) is ChunkKind.CACHE
        assert keeper.request(GetChunk(addr_a)) == Chunk(addr_a, a)
        assert totals(keeper.status()) == (1, 1000, 1, 1000)
    finally:
        keeper.close()


def test_a_claim_promotes_a_sound_cached_copy_and_drops_a_bad_one(keeper: Keeper) -> None:
    a, b = os.urandom(700), os.urandom(800)
    addr_a, addr_b = keeper.put(a), keeper.put(b)
    keeper.ask(DemoteChunks((addr_a, addr_b)))
    assert totals(keeper.status()) == (0, 0, 2, 1500)
    stored_before = len(keeper.stored)

    assert keeper.claim(addr_a) is True
    assert keeper.kind(addr_a) is ChunkKind.RESPONSIBLE
    assert keeper.stored[stored_before:] == [ChunkStored(addr_a, 700)], "offered on"
    assert keeper.claim(addr_a) is True

    keeper.files.path_of(addr_b).write_bytes(b"rot")
    assert keeper.claim(addr_b) is False, "fetch it: the cached copy is bad"
    assert keeper.database.get_chunk(addr_b) is None
    assert (keeper.files.quarantine_dir / addr_b.hex()).exists()
    assert keeper.lost == []
    assert keeper.claim(os.urandom(32)) is False
    assert totals(keeper.status()) == (1, 700, 0, 0)


def test_a_corrupted_cached_chunk_is_dropped_and_not_fetched_again(keeper: Keeper) -> None:
    content = os.urandom(600)
    address = keeper.put(content)
    keeper.ask(DemoteChunks((address,)))
    keeper.files.path_of(address).write_bytes(b"X" * 600)
    assert keeper.request(GetChunk(address)) == NotFound(address)
    assert keeper.lost == [], "only responsible chunks are fetched again"
    assert totals(keeper.status()) == (0, 0, 0, 0)
    assert keeper.status()["cache_hits"] == 0


def test_a_zero_cache_deletes_what_is_demoted(tmp_path: Path) -> None:
    keeper = Keeper(tmp_path, cache_size=0)
    try:
        address = keeper.put(os.urandom(100))
        assert keeper.ask(DemoteChunks((address, os.urandom(32)))) == 1
        assert not keeper.files.exists(address)
        assert keeper.database.get_chunk(address) is None
        assert totals(keeper.status()) == (0, 0, 0, 0)
    finally:
        keeper.close()


def test_restart_reloads_the_cache_and_applies_a_smaller_bound(tmp_path: Path) -> None:
    first = Keeper(tmp_path, cache_size=10_000)
    contents = [os.urandom(1000) for _ in range(3)]
    addresses = [first.put(c) for c in contents]  # stored in this order
    responsible = first.put(os.urandom(500))
    first.ask(DemoteChunks(tuple(reversed(addresses))))
    first.close()

    again = Keeper(tmp_path, cache_size=2000)
    try:
        assert totals(again.status()) == (1, 500, 2, 2000)  # answered after on_start
        # the oldest stored is evicted first after a restart (last use is not persisted)
        assert not again.files.exists(addresses[0])
        assert again.database.get_chunk(addresses[0]) is None
        assert again.held() == [responsible]
        for address, content in zip(addresses[1:], contents[1:], strict=True):
            assert again.request(GetChunk(address)) == Chunk(address, content)
        assert again.status()["cache_hits"] == 2
    finally:
        again.close()


# --- in a network: a holder pushed out of a chunk's close group keeps it as cache ---------

ORIGINALS = 6
JOINERS = 4


def _ids_with_top_byte(prefix: int, count: int) -> list[Identity]:
    found: list[Identity] = []
    while len(found) < count:
        identity = Identity.generate()
        if identity.peer_id[0] == prefix:
            found.append(identity)
    return found


def _content_with_top_byte(prefix: int) -> bytes:
    while True:
        content = os.urandom(3000)
        if chunk_address(content)[0] == prefix:
            return content


def _start(root: Path, identity: Identity, peers: tuple[str, ...] = ()) -> Node:
    node = Node(
        NodeConfig(
            root_dir=root,
            local=True,
            first=not peers,
            peers=peers,
            control_socket=False,
            identity=identity,
            tick_interval=0.2,
            repair_interval=1.0,
        )
    )
    node.start()
    return node


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def _wait_until_everyone_knows_everyone(nodes: list[Node]) -> None:
    _wait(
        lambda: all(n.status()["routing_table_size"] == len(nodes) - 1 for n in nodes),
        20.0,
        "every routing table holds every other node",
    )


def _kind(node: Node, address: bytes) -> ChunkKind | None:
    assert node.database is not None
    record = node.database.get_chunk(address)
    return None if record is None else record.kind


def test_a_holder_pushed_out_by_joiners_keeps_the_chunk_as_cache_and_serves_it(
    tmp_path: Path,
) -> None:
    original_ids = [Identity.generate() for _ in range(ORIGINALS)]
    # Joiners share a top byte that no original has: they are closer to every chunk
    # whose address starts with it than any original is.
    prefix = next(p for p in range(256) if all(i.peer_id[0] != p for i in original_ids))
    joiner_ids = _ids_with_top_byte(prefix, JOINERS)
    contents = [_content_with_top_byte(prefix) for _ in range(3)]
    addresses = [chunk_address(c) for c in contents]

    nodes: list[Node] = []
    try:
        nodes.append(_start(tmp_path / "o0", original_ids[0]))
        assert nodes[0].transport is not None
        bootstrap = (nodes[0].transport.listen_addrs()[0],)
        for i, identity in enumerate(original_ids[1:], 1):
            nodes.append(_start(tmp_path / f"o{i}", identity, bootstrap))
        _wait_until_everyone_knows_everyone(nodes)
        originals = list(nodes)
        by_id = {n.identity.peer_id: n for n in originals if n.identity}

        # each chunk on the five originals closest to it
        holders_of: dict[bytes, list[Node]] = {}
        for address, content in zip(addresses, contents, strict=True):
            group = [by_id[p] for p in closest(address, list(by_id), 5)]
            for node in group:
                answer: NotifyingFuture[Message] = NotifyingFuture()
                node.refs["ChunkKeeper"].tell(StoreChunk(address, content, reply=answer.set))
                assert answer.get(timeout=5) == PutAck(address)
            holders_of[address] = group

        for i, identity in enumerate(joiner_ids):
            nodes.append(_start(tmp_path / f"j{i}", identity, bootstrap))
        _wait_until_everyone_knows_everyone(nodes)
        joiners = nodes[ORIGINALS:]

        # Now the four joiners come first: the 4th and 5th closest original holders
        # have 7 closer peers (5 + the margin of 2) and are no longer responsible.
        places = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
        pushed_out = {a: holders_of[a][places - JOINERS :] for a in addresses}
        staying = {a: holders_of[a][: places - JOINERS] for a in addresses}
        assert all(len(pushed_out[a]) == 2 and len(staying[a]) == 3 for a in addresses)

        def settled() -> bool:
            return all(
                all(_kind(n, a) is ChunkKind.RESPONSIBLE for n in joiners)
                and all(_kind(n, a) is ChunkKind.CACHE for n in pushed_out[a])
                for a in addresses
            )

        _wait(settled, 20.0, "joiners hold the chunks and pushed-out holders cache them")
        for address in addresses:
            assert all(_kind(n, address) is ChunkKind.RESPONSIBLE for n in staying[address])
            for node in pushed_out[address]:
                assert address not in held_by(node.refs["ChunkKeeper"])

        # a pushed-out holder still serves its cached copy, over the network
        asker = joiners[0]
        assert asker.transport is not None
        for address, content in zip(addresses, contents, strict=True):
            for node in pushed_out[address]:
                assert node.identity is not None and node.transport is not None
                hits_before = node.status()["cache_hits"]
                future = asker.transport.request(
                    node.identity.peer_id,
                    GetChunk(address),
                    10.0,
                    addrs=node.transport.listen_addrs(),
                )
                assert future.get(timeout=15) == Chunk(address, content)
                status = node.status()
                assert status["cache_hits"] == hits_before + 1
                assert status["cached_bytes"] >= len(content)
                assert status["replication"]["handed_over"] >= 1
    finally:
        for node in nodes:
            node.stop()
