"""Storage audits in a testnet of real node processes (issue 12).

Ten honest nodes audit each other every few seconds; a dishonest node (the shipped
node monkeypatched by ``tests/system/dishonest_node.py``, in its own process) joins,
acknowledges PUTs and drops the bytes. Shown here:

- a liar that dropped everything is shunned by the honest nodes sharing chunks with it,
  its chunks are back at five honest nodes and the data reads back;
- a lazy node that keeps only half (answers missing, fetches nothing it is offered) is
  shunned too;
- an honest node whose chunk files vanish while it runs is found out by the audits,
  gets its chunks back and is shunned by nobody;
- kill -9, restarts and newcomers while audits run shun no honest node.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.client import Client
from cli.control import ControlError, request
from cli.testnet import (
    NodeEntry,
    add_nodes,
    replica_counts,
    restart_node,
    start,
    stop,
    write_manifest,
)
from persistence.chunk_files import CHUNKS_DIRNAME
from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.self_encryption import StreamEncryptor
from protocol.xor import closest
from tests.system import dishonest_node
from tests.system.conftest import Testnet
from tests.system.dishonest_node import dropped

pytestmark = pytest.mark.system

AUDIT_INTERVAL = 3.0
NODE_ARGS = (
    "--refresh-interval",
    "10",
    "--liveness-interval",
    "1",
    "--repair-interval",
    "5",
    "--audit-interval",
    str(AUDIT_INTERVAL),
)
HONEST = 10


class AuditNet(Testnet):
    __test__ = False

    def __init__(self, directory: Path, nodes: list[NodeEntry]) -> None:
        super().__init__(directory, nodes)
        self.dishonest: list[NodeEntry] = []
        self.files: list[tuple[bytes, bytes, list[bytes]]] = []
        """(data, data address, chunk addresses) of every file put."""

    @property
    def honest(self) -> list[NodeEntry]:
        return [n for n in self.alive if n not in self.dishonest]

    def replace(self, old: NodeEntry, new: NodeEntry) -> None:
        self.nodes[self.nodes.index(old)] = new
        write_manifest(self.dir, self.nodes)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditNet]:
    directory = tmp_path_factory.mktemp("audits")
    nodes = start(directory, HONEST, timeout=120, extra_args=NODE_ARGS, payments=False)
    try:
        yield AuditNet(directory, nodes)
    finally:
        stop(directory)


# --- helpers --------------------------------------------------------------------------


def status(node: NodeEntry) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = request(Path(node.root_dir), "status", timeout=10)
    except ControlError:
        return {}
    return answer


def shunned_by(node: NodeEntry) -> set[str]:
    return set(status(node).get("audits", {}).get("shunned", []))


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> float:
    """Seconds until ``check()`` is truthy; fails after ``timeout`` with its last value."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        last = check()
        if last:
            return time.monotonic() - started
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def spawn_dishonest(net: AuditNet, mode: str, drop: float) -> NodeEntry:
    root = net.dir / f"dishonest-{len(net.dishonest)}"
    entry = dishonest_node.spawn(root, mode, drop, net.nodes[0].multiaddr, NODE_ARGS)
    net.nodes.append(entry)
    net.dishonest.append(entry)
    write_manifest(net.dir, net.nodes)  # so that ``stop`` ends it too
    return entry


def files_for(
    members: list[bytes], target: bytes, at_least: int, want: Callable[[bytes], bool]
) -> list[tuple[bytes, list[bytes]]]:
    """Random files (data, chunk addresses) whose chunks put ``target`` in the close group
    of at least ``at_least`` chunks that satisfy ``want``."""
    files: list[tuple[bytes, list[bytes]]] = []
    count = 0
    while count < at_least:
        data = os.urandom(random.randint(150_000, 250_000))
        encryptor = StreamEncryptor(io.BytesIO(data))
        chunks = [c.address for c in encryptor.chunks()]
        mine = [c for c in chunks if target in closest(c, members, CLOSE_GROUP_SIZE) and want(c)]
        if mine:
            files.append((data, chunks))
            count += len(mine)
    return files


def put_files(net: AuditNet, files: list[tuple[bytes, list[bytes]]]) -> None:
    with Client([n.multiaddr for n in net.honest[:5]], host="127.0.0.1") as client:
        for data, chunks in files:
            net.files.append((data, client.put_bytes(data), chunks))


def read_back(net: AuditNet) -> None:
    with Client([n.multiaddr for n in net.honest[-4:]], host="127.0.0.1") as client:
        for data, address, _ in net.files:
            assert client.get_bytes(address) == data


def all_chunks(net: AuditNet) -> list[bytes]:
    return [c for _, _, chunks in net.files for c in chunks]


def honest_shunned_anywhere(net: AuditNet) -> dict[str, set[str]]:
    """For each alive node that shuns an honest node: those honest nodes (short ids)."""
    honest = {n.peer_id for n in net.nodes if n not in net.dishonest}
    found: dict[str, set[str]] = {}
    for node in net.alive:
        wrong = shunned_by(node) & honest
        if wrong:
            found[node.peer_id[:8]] = {p[:8] for p in wrong}
    return found


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "drop"), [("liar", 1.0), ("lazy", 0.5)], ids=["liar-all", "lazy-half"]
)
def test_a_node_that_drops_what_it_stores_is_shunned_and_its_chunks_restored(
    net: AuditNet, mode: str, drop: float
) -> None:
    cheat = spawn_dishonest(net, mode, drop)
    cheat_id = bytes.fromhex(cheat.peer_id)
    members = [bytes.fromhex(n.peer_id) for n in net.alive]
    # Honest nodes learn of the newcomer (it looks itself up through them).
    wait_for(
        "the dishonest node knows the network",
        lambda: status(cheat).get("routing_table_size", 0) >= len(net.honest) - 1,
        timeout=30,
        every=0.5,
    )
    files = files_for(members, cheat_id, at_least=4, want=lambda c: dropped(c, drop))
    first_file = len(net.files)
    put_files(net, files)
    put_at = time.monotonic()
    mine = [
        c
        for _, _, chunks in net.files[first_file:]
        for c in chunks
        if cheat_id in closest(c, members, CLOSE_GROUP_SIZE)
    ]
    held = request(Path(cheat.root_dir), "holds", addresses=[c.hex() for c in mine])
    assert all(held), "the dishonest node acknowledged and claims to hold its chunks"
    lost = [
        c
        for c in mine
        if not (Path(cheat.root_dir) / CHUNKS_DIRNAME / c.hex()[:2] / c.hex()).exists()
    ]
    assert len(lost) >= 4 if drop == 1.0 else len(lost) >= 1

    by_id = {bytes.fromhex(n.peer_id): n for n in net.honest}
    sharers = [
        by_id[p]
        for p in {p for c in mine for p in closest(c, members, CLOSE_GROUP_SIZE)}
        if p in by_id
    ]

    def shunning() -> list[str]:
        return [n.peer_id[:8] for n in sharers if cheat.peer_id in shunned_by(n)]

    took = wait_for(
        f"a majority of the {len(sharers)} honest sharers shun the {mode} node",
        lambda: len(shunning()) * 2 > len(sharers) and shunning(),
        timeout=60,
    )
    print(
        f"{mode} dropping {drop:.0%}: shunned by {len(shunning())}/{len(sharers)} sharers"
        f" {took:.1f} s after the put ({took / AUDIT_INTERVAL:.1f} audit periods)"
    )
    chunks = [c for _, _, cs in net.files[first_file:] for c in cs]

    def five_honest() -> bool:
        return min(replica_counts(net.honest, chunks, timeout=30)) >= CLOSE_GROUP_SIZE

    wait_for("5 honest replicas of every chunk", five_honest, timeout=60)
    print(f"5 honest replicas of every chunk {time.monotonic() - put_at:.1f} s after the put")
    # A client told by the nodes that the peer is shunned leaves it out of the close
    # groups it finds, so it never asks it for a quote or sends it a chunk: even one
    # that knows the peer (joins through it) and so starts its lookup with it.
    with Client([cheat.multiaddr, *(n.multiaddr for n in sharers)], host="127.0.0.1") as client:
        group = [c.peer_id for c in client.closest_peers(mine[0], CLOSE_GROUP_SIZE + 2)]
    assert cheat_id not in group
    assert len(group) == CLOSE_GROUP_SIZE + 2
    read_back(net)
    assert honest_shunned_anywhere(net) == {}
    net.kill(cheat)


def test_an_honest_node_losing_its_files_gets_them_back_and_is_not_shunned(
    net: AuditNet,
) -> None:
    chunks = all_chunks(net)
    members = [bytes.fromhex(n.peer_id) for n in net.honest]
    # The honest node responsible for the most chunks (not the bootstrap node).
    victim = max(
        net.honest[1:],
        key=lambda n: sum(
            bytes.fromhex(n.peer_id) in closest(c, members, CLOSE_GROUP_SIZE) for c in chunks
        ),
    )
    chunks_dir = Path(victim.root_dir) / CHUNKS_DIRNAME
    wait_for(
        "the victim holds its chunks as files",
        lambda: sum(1 for p in chunks_dir.glob("*/*") if p.is_file()) >= 4,
        timeout=30,
    )
    fetched_before = status(victim)["replication"]["fetched"]
    gone = [p for p in chunks_dir.glob("*/*") if p.is_file()]
    for path in gone:
        path.unlink()
    print(f"deleted {len(gone)} chunk files of {victim.peer_id[:8]}")

    def restored() -> list[str]:
        missing = [p.name[:8] for p in gone if not p.is_file()]
        return [] if missing else ["all back"]

    took = wait_for(f"the {len(gone)} deleted chunk files are back", restored, timeout=90)
    print(f"{len(gone)} deleted chunk files fetched again within {took:.1f} s")
    assert all(request(Path(victim.root_dir), "holds", addresses=[p.name for p in gone]))
    # Fetched again from its close group (not found on disk: the files were gone).
    assert status(victim)["replication"]["fetched"] - fetched_before >= len(gone)
    time.sleep(2 * AUDIT_INTERVAL)
    assert all(victim.peer_id not in shunned_by(n) for n in net.alive)
    assert honest_shunned_anywhere(net) == {}


def test_churn_with_audits_running_shuns_no_honest_node(net: AuditNet) -> None:
    rng = random.Random(12)
    started = time.monotonic()
    restarts = newcomers = 0
    while time.monotonic() - started < 70:
        victim = rng.choice(net.honest[1:])
        net.kill(victim)
        time.sleep(rng.uniform(2, 6))
        root = Path(victim.root_dir)
        back = restart_node(root, net.nodes[0].multiaddr, NODE_ARGS)
        net.killed.remove(victim)
        net.replace(victim, back)
        restarts += 1
        if restarts % 2 == 0:
            net.nodes.extend(add_nodes(net.dir, 1, extra_args=NODE_ARGS))
            newcomers += 1
        time.sleep(rng.uniform(3, 8))
    print(f"churn: {restarts} kill -9 and restarts, {newcomers} newcomers in 70 s")
    time.sleep(3 * AUDIT_INTERVAL)  # audits of the last comers
    assert honest_shunned_anywhere(net) == {}
    sent = sum(status(n).get("audits", {}).get("sent", 0) for n in net.honest)
    assert sent > 0
    read_back(net)
