"""A 25-node testnet of real processes: close groups, lookups, and nodes killed with -9."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cli.control import request
from protocol.xor import closest
from tests.system.conftest import Testnet


def _status(root: str) -> dict[str, Any]:
    result: dict[str, Any] = request(Path(root), "status")
    return result


def _wrong_close_groups(testnet: Testnet) -> list[str]:
    ids = [bytes.fromhex(n.peer_id) for n in testnet.alive]
    wrong = []
    for node in testnet.alive:
        me = bytes.fromhex(node.peer_id)
        truth = [p.hex() for p in closest(me, [i for i in ids if i != me], 5)]
        if _status(node.root_dir)["close_group"] != truth:
            wrong.append(node.peer_id[:12])
    return wrong


def _wait_until_exact(testnet: Testnet, timeout: float) -> float:
    started = time.monotonic()
    wrong: list[str] = []
    while time.monotonic() - started < timeout:
        wrong = _wrong_close_groups(testnet)
        if not wrong:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"close groups not exact after {timeout} s: {wrong}")


def test_every_close_group_is_the_true_five_closest(testnet_25: Testnet) -> None:
    _wait_until_exact(testnet_25, timeout=20)
    for node in testnet_25.nodes:
        status = _status(node.root_dir)
        assert status["routing_table_size"] == 24
        assert all(c["pq"] for c in status["connections"])


def test_lookups_from_every_node_find_the_exact_five_closest(testnet_25: Testnet) -> None:
    ids = [bytes.fromhex(n.peer_id) for n in testnet_25.alive]
    misses = []
    for node in testnet_25.alive:
        me = bytes.fromhex(node.peer_id)
        targets = [os.urandom(32) for _ in range(50)]
        results = request(
            Path(node.root_dir), "lookup", timeout=120, targets=[t.hex() for t in targets]
        )
        for target, result in zip(targets, results, strict=True):
            truth = [p.hex() for p in closest(target, [i for i in ids if i != me], 5)]
            if result["peers"][:5] != truth:
                misses.append((node.peer_id[:8], target.hex()[:8]))
    assert misses == [], f"{len(misses)} of {len(ids) * 50} lookups missed the exact 5 closest"


def test_killed_nodes_leave_every_close_group_within_one_refresh_period(
    testnet_25: Testnet,
) -> None:
    refresh_period = 10.0
    for node in testnet_25.nodes[5:10]:
        testnet_25.kill(node)
    took = _wait_until_exact(testnet_25, timeout=refresh_period)
    dead = {n.peer_id for n in testnet_25.killed}
    for node in testnet_25.alive:
        status = _status(node.root_dir)
        assert dead.isdisjoint(status["close_group"])
    print(f"close groups exact again {took:.1f} s after killing 5 nodes")
