"""Files in a 25-node testnet of real processes: put, get, kill -9 of eight nodes, newcomers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.control import request
from cli.testnet import NodeEntry, add_nodes, replica_counts
from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.self_encryption import StreamEncryptor
from protocol.xor import closest
from tests.system.conftest import NODE_ARGS, Testnet

CLI = [sys.executable, "-m", "cli"]
FILE_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def stored(
    testnet_25: Testnet, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, list[bytes]]:
    """A 20 MiB file put through one entry node; its data address and every chunk address."""
    source = tmp_path_factory.mktemp("files") / "twenty.bin"
    source.write_bytes(os.urandom(FILE_BYTES))
    put = subprocess.run(
        [*CLI, "put", str(source), "--peer", testnet_25.nodes[3].multiaddr, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    address = put.stdout.strip().splitlines()[-1]
    with source.open("rb") as handle:
        encryptor = StreamEncryptor(handle)
        chunks = [c.address for c in encryptor.chunks()]
    assert encryptor.data_address.hex() == address
    return source, address, chunks


def _get(entry: NodeEntry, address: str, out: Path) -> None:
    subprocess.run(
        [*CLI, "get", address, "-o", str(out), "--peer", entry.multiaddr, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def _wait_for_replicas(testnet: Testnet, chunks: list[bytes], want: int, timeout: float) -> float:
    started = time.monotonic()
    counts: list[int] = []
    while time.monotonic() - started < timeout:
        counts = replica_counts(testnet.alive, chunks, timeout=30)
        if min(counts) >= want:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"replicas per chunk after {timeout} s: {sorted(counts)}")


def test_a_file_put_through_one_node_is_got_back_from_another(
    testnet_25: Testnet, stored: tuple[Path, str, list[bytes]], tmp_path: Path
) -> None:
    source, address, chunks = stored
    out = tmp_path / "back.bin"
    _get(testnet_25.nodes[17], address, out)
    assert out.read_bytes() == source.read_bytes()
    _wait_for_replicas(testnet_25, chunks, want=5, timeout=30)


def test_after_eight_kill_9_everything_is_gettable_and_back_to_five_replicas(
    testnet_25: Testnet, stored: tuple[Path, str, list[bytes]], tmp_path: Path
) -> None:
    source, address, chunks = stored
    ids = [bytes.fromhex(n.peer_id) for n in testnet_25.nodes]
    # Kill holders first: the nodes closest to the chunks, so replicas really are lost;
    # but never every holder of a chunk (eight kills 1 s apart can outrun any repair;
    # five replicas promise to survive four losses, not five at once).
    holders = {c: set(closest(c, ids, CLOSE_GROUP_SIZE)) for c in chunks}
    victims = {p for c in chunks for p in closest(c, ids, 2)}
    candidates = [n for n in testnet_25.alive if n is not testnet_25.nodes[0]]
    candidates.sort(key=lambda n: bytes.fromhex(n.peer_id) not in victims)  # holders first
    doomed: list[NodeEntry] = []
    for node in candidates:
        dead = {bytes.fromhex(n.peer_id) for n in [*doomed, node]}
        if len(doomed) < 8 and all(h - dead for h in holders.values()):
            doomed.append(node)
    for node in doomed:
        testnet_25.kill(node)
        time.sleep(1.0)
    took = _wait_for_replicas(testnet_25, chunks, want=5, timeout=90)
    print(f"5 replicas of every chunk again {took:.1f} s after the eighth kill")
    out = tmp_path / "after-kills.bin"
    _get(testnet_25.alive[-1], address, out)
    assert out.read_bytes() == source.read_bytes()


def test_new_nodes_receive_the_chunks_they_are_now_responsible_for(
    testnet_25: Testnet, stored: tuple[Path, str, list[bytes]]
) -> None:
    _, _, chunks = stored
    newcomers = add_nodes(testnet_25.dir, 6, extra_args=NODE_ARGS)
    testnet_25.nodes.extend(newcomers)
    alive_ids = [bytes.fromhex(n.peer_id) for n in testnet_25.alive]
    deadline = time.monotonic() + 60
    missing: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        missing = []
        for node in newcomers:
            me = bytes.fromhex(node.peer_id)
            mine = [c for c in chunks if me in closest(c, alive_ids, 5)]
            held = request(Path(node.root_dir), "holds", addresses=[c.hex() for c in mine])
            missing += [
                (node.peer_id[:8], c.hex()[:8]) for c, h in zip(mine, held, strict=True) if not h
            ]
        if not missing:
            break
        time.sleep(0.5)
    assert missing == []
