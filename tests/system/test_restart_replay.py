"""kill -9 a node while files are being put, restart it on the same root dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.bucket_manager import SAVE_DEBOUNCE
from actors.client import Client, ClientError
from cli.control import request
from cli.testnet import NodeEntry, start, stop
from protocol.chunks import is_valid_chunk
from tests.system.conftest import NODE_ARGS

CLI = [sys.executable, "-m", "cli"]


def _held_chunks_are_valid(root: Path) -> int:
    """Every chunk the node's metadata lists exists and hashes to its address; how many."""
    with sqlite3.connect(root / "node.sqlite3") as db:
        addresses = [bytes(row[0]) for row in db.execute("select address from chunks")]
    for address in addresses:
        hexed = address.hex()
        content = (root / "chunks" / hexed[:2] / hexed).read_bytes()
        assert is_valid_chunk(address, content), f"chunk {hexed[:16]} is damaged"
    return len(addresses)


@pytest.fixture(scope="module")
def small_testnet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, list[NodeEntry]]]:
    directory = tmp_path_factory.mktemp("replay")
    nodes = start(directory, 12, timeout=240, extra_args=NODE_ARGS, payments=False)
    yield directory, nodes
    stop(directory)


def test_kill_9_during_puts_then_restart_replays_state(
    small_testnet: tuple[Path, list[NodeEntry]],
) -> None:
    _, nodes = small_testnet
    victim = nodes[5]
    root = Path(victim.root_dir)
    acknowledged: list[bytes] = []
    contents: dict[bytes, bytes] = {}
    stop_putting = threading.Event()

    def put_continuously() -> None:
        with Client([n.multiaddr for n in nodes[:3]], host="127.0.0.1") as client:
            while not stop_putting.is_set():
                data = os.urandom(64 * 1024)
                try:
                    address = client.put_chunk(data)
                except ClientError:
                    continue  # not acknowledged: nothing is promised for it
                acknowledged.append(address)
                contents[address] = data

    deadline = time.monotonic() + 30
    while (
        request(root, "status")["routing_table_size"] < len(nodes) - 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    time.sleep(SAVE_DEBOUNCE + 1.5)  # the table is saved at most every few seconds
    putter = threading.Thread(target=put_continuously)
    putter.start()
    try:
        time.sleep(4)
        os.kill(victim.pid, signal.SIGKILL)
        os.waitpid(victim.pid, 0)
        time.sleep(2)
    finally:
        stop_putting.set()
        putter.join(timeout=120)
    assert len(acknowledged) > 10

    # Restarted with no --peer: it must rejoin from the peers it persisted.
    proc = subprocess.Popen(
        [*CLI, "run", "--root-dir", str(root), "--local", *NODE_ARGS], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                status = request(root, "status")
                break
            except Exception:
                time.sleep(0.1)
        assert status["peer_id"] == victim.peer_id, "same identity"
        assert (
            isinstance(status["routing_table_size"], int) and status["routing_table_size"] >= 5
        ), "routing table restored from the database, before any new contact"
        assert _held_chunks_are_valid(root) > 0
        with Client([nodes[0].multiaddr], host="127.0.0.1") as client:
            for address in acknowledged:
                assert client.get_chunk(address) == contents[address], (
                    "nothing acknowledged is lost"
                )
    finally:
        proc.terminate()
        proc.wait(timeout=15)
