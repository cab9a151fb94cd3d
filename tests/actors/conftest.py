"""Shared fixtures: a small network of in-process nodes on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from actors.node import Node, NodeConfig

HONEST = 10


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    base = tmp_path_factory.mktemp("net")
    first = Node(NodeConfig(root_dir=base / "n0", local=True, first=True, control_socket=False))
    first.start()
    assert first.transport is not None
    bootstrap = first.transport.listen_addrs()[0]
    nodes = [first]
    try:
        for i in range(1, HONEST):
            node = Node(
                NodeConfig(
                    root_dir=base / f"n{i}", local=True, peers=(bootstrap,), control_socket=False
                )
            )
            node.start()
            nodes.append(node)
        _wait_until_everyone_knows_everyone(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _wait_until_everyone_knows_everyone(nodes: list[Node], timeout: float = 20.0) -> None:
    """A node that joined a moment ago is not known yet; the tests start once joins settled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [n.status()["routing_table_size"] for n in nodes]
        if all(size == len(nodes) - 1 for size in sizes):
            return
        time.sleep(0.05)
    raise AssertionError(f"routing tables never filled: {sizes}")
