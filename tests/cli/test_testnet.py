"""`cli.testnet`: a small local testnet of real node processes, started, grown and stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cli import testnet
from cli.testnet import add_nodes, is_alive, read_manifest, start, stop
from tests.cli.test_run_and_status import run_cli


def test_start_add_status_and_stop(tmp_path: Path) -> None:
    directory = tmp_path / "testnet"
    nodes = start(directory, 3, timeout=60)
    try:
        assert [Path(n.root_dir).name for n in nodes] == ["node-00", "node-01", "node-02"]
        assert len({n.peer_id for n in nodes}) == 3
        assert all(n.multiaddr.endswith(f"/p2p/{n.peer_id}") for n in nodes)
        assert read_manifest(directory) == nodes
        chain = json.loads((directory / "evm.json").read_text())
        assert {
            "rpc_url",
            "chain_id",
            "token_address",
            "vault_address",
            "client_private_key",
        } <= set(chain)
        assert is_alive(chain["anvil_pid"])
        rewards = {n.rewards_address for n in nodes}
        assert len(rewards) == 3 and all(r.startswith("0x") and len(r) == 42 for r in rewards)
        with pytest.raises(testnet.TestnetError, match="already running"):
            start(directory, 1)

        (added,) = add_nodes(directory, 1, timeout=60)
        assert Path(added.root_dir).name == "node-03"
        assert read_manifest(directory) == [*nodes, added]

        shown = run_cli("testnet", "status", "--dir", str(directory), "--json")
        assert shown.returncode == 0, shown.stderr
        listed = json.loads(shown.stdout)["nodes"]
        assert [n["peer_id"] for n in listed] == [n.peer_id for n in [*nodes, added]]
        assert all(n["alive"] for n in listed)
        for node in [*nodes, added]:  # without docstrings: ~3 MB less per node
            assert b"PYTHONOPTIMIZE=2" in Path(f"/proc/{node.pid}/environ").read_bytes().split(
                b"\0"
            )
    finally:
        started = time.monotonic()
        stopped = stop(directory)
        took = time.monotonic() - started
    assert stopped == 4
    assert took < 5, "SIGTERM stops every node (and they are reaped) well within the grace"
    assert not any(is_alive(n.pid) for n in read_manifest(directory))
    assert not is_alive(chain["anvil_pid"]), "testnet stop stops the local chain too"
    assert stop(directory) == 0


def test_a_free_testnet_has_no_chain_and_passes_flags_to_every_node(tmp_path: Path) -> None:
    directory = tmp_path / "free"
    done = run_cli(
        "testnet",
        "start",
        "--nodes",
        "2",
        "--dir",
        str(directory),
        "--no-payments",
        "--",
        "--repair-interval",
        "7",
    )
    try:
        assert done.returncode == 0, done.stderr
        assert not (directory / "evm.json").exists()
        for node in read_manifest(directory):
            assert node.rewards_address == ""
            # A node forked by the testnet launcher shows its command line as one string
            # (as setproctitle does), a spawned one as NUL-separated arguments.
            cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().rstrip(b"\0")
            assert cmdline.replace(b"\0", b" ").endswith(b" --repair-interval 7")
            assert b"cli run --root-dir" in cmdline.replace(b"\0", b" ")
    finally:
        stop(directory)
