"""The supervisor: start, wire, stop; no thread left behind; one node per root dir."""

import os
import threading
import time
from pathlib import Path

import pykka
import pytest

from actors.base import NodeActor
from actors.messages import Tick
from actors.node import Node, NodeConfig, release_free_heap
from cli.control import request
from persistence.root_dir import RootDirError

EXPECTED_ACTORS = {
    "Transport",
    "Handshake",
    "NatTraverser",
    "BucketManager",
    "CloseGroupTracker",
    "ChunkKeeper",
    "Replicator",
}


def test_twenty_nodes_start_and_stop_leaving_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    nodes = [Node(NodeConfig(root_dir=tmp_path / f"n{i}", local=True)) for i in range(20)]
    for node in nodes:
        node.start()
    assert len(pykka.ActorRegistry.get_all()) >= 20 * len(EXPECTED_ACTORS)
    assert len({n.identity.peer_id for n in nodes if n.identity}) == 20
    for node in nodes:
        node.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leftover:
            break
        time.sleep(0.05)
    assert leftover == []
    assert pykka.ActorRegistry.get_all() == []


def test_status_over_control_socket_reports_mailboxes(tmp_path: Path) -> None:
    node = Node(NodeConfig(root_dir=tmp_path / "n", tick_interval=0.05))
    node.start()
    try:
        time.sleep(0.3)
        status = request(tmp_path / "n", "status")
        assert node.identity is not None
        assert status["peer_id"] == node.identity.peer_id_hex
        assert bytes.fromhex(status["public_key"]) == node.identity.public_key
        assert set(status["actors"]) >= EXPECTED_ACTORS
        figures = status["actors"]["CloseGroupTracker"]
        assert figures["processed"] >= 2  # ticks, at least
        assert figures["last_message"] in {"Tick", "StatusQuery"}
        assert set(figures) >= {"depth", "processed", "rate", "mean_ms", "last_message"}
        sock = tmp_path / "n" / "control.sock"
        assert sock.stat().st_mode & 0o077 == 0
    finally:
        node.stop()


def test_second_node_on_same_root_dir_is_refused(tmp_path: Path) -> None:
    first = Node(NodeConfig(root_dir=tmp_path))
    first.start()
    try:
        with pytest.raises(RootDirError, match="already running"):
            Node(NodeConfig(root_dir=tmp_path)).start()
        assert request(tmp_path, "status")["peer_id"]  # the first one still answers
    finally:
        first.stop()
    again = Node(NodeConfig(root_dir=tmp_path))
    again.start()  # the lock is free once the first stopped
    again.stop()


def test_missing_parent_of_root_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    with pytest.raises(RootDirError, match="not a directory"):
        Node(NodeConfig(root_dir=tmp_path / "file")).start()


class _Fragile(NodeActor):
    name = "Fragile"

    def on_receive(self, message: object) -> object:
        if isinstance(message, Tick):
            raise RuntimeError("boom")
        if message == "ping":
            return "pong"
        return super().on_receive(message)


def test_a_failing_event_handler_does_not_kill_the_actor() -> None:
    ref = _Fragile.start()
    try:
        ref.tell(Tick(0.0))
        assert ref.ask("ping", timeout=2) == "pong"
        with pytest.raises(TypeError):
            ref.ask("unknown", timeout=2)
        meter = ref.proxy().meter.get()
        figures = meter.figures()
        assert figures.failures == 2
        assert figures.processed == 4  # Tick, ping, unknown, and the proxy read of .meter
    finally:
        ref.stop()


def test_restored_peers_keep_their_ip_and_its_limits(tmp_path: Path) -> None:
    """Three saved peers of one bucket at one IP: the table restores two (the per-IP
    limit), because the IP survives the restart (migration 0003)."""
    from persistence.database import StoredPeer, open_database
    from protocol.identity import Identity

    identity = Identity.from_seed(bytes(32))
    flipped = bytes([identity.peer_id[0] ^ 0x80])  # the far half: bucket 255
    peers = [
        StoredPeer(flipped + bytes([i]) * 31, (f"/ip4/198.51.100.7/udp/{i}/quic-v1",), float(i))
        for i in range(1, 4)
    ]
    with open_database(tmp_path) as database:
        database.save_peers(
            StoredPeer(p.peer_id, p.addrs, p.last_seen, ip="198.51.100.7") for p in peers
        )
    node = Node(NodeConfig(root_dir=tmp_path, identity=identity, control_socket=False))
    node.start()
    try:
        assert node.status()["routing_table_restored"] == 2
    finally:
        node.stop()


def test_every_request_a_node_serves_has_its_replies_declared() -> None:
    from actors.node import _SERVED_BY
    from protocol.wire import REPLIES

    assert set(_SERVED_BY) <= set(REPLIES)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_release_free_heap_gives_freed_pages_back_to_the_os() -> None:
    size = 2048  # a variable: a constant product would be folded into one shared object
    blocks = [b"x" * size for _ in range(20_000)]  # 40 MB from malloc (not Python's arenas)
    pinned = b"y" * size  # allocated last: the heap's top stays in use, so free() alone
    del blocks  # cannot shrink the heap past it
    before = _rss_bytes()
    assert release_free_heap()
    assert _rss_bytes() < before - 20 * 1024 * 1024
    assert pinned
