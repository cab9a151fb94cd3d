"""Fixtures that start real node processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.testnet import NodeEntry, start, stop

NODE_ARGS = ("--refresh-interval", "10", "--liveness-interval", "1", "--repair-interval", "5")
"""Short periods, so churn is seen and repaired within a test's patience."""


class Testnet:
    __test__ = False
    """A running testnet of real node processes and what the tests need of it."""

    def __init__(self, directory: Path, nodes: list[NodeEntry]) -> None:
        self.dir = directory
        self.nodes = nodes
        self.killed: list[NodeEntry] = []

    @property
    def alive(self) -> list[NodeEntry]:
        return [n for n in self.nodes if n not in self.killed]

    def kill(self, node: NodeEntry) -> None:
        os.kill(node.pid, signal.SIGKILL)
        os.waitpid(node.pid, 0)
        self.killed.append(node)


@pytest.fixture(scope="module")
def testnet_25(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testnet]:
    directory = tmp_path_factory.mktemp("testnet")
    nodes = start(directory, 25, timeout=240, extra_args=NODE_ARGS, payments=False)
    try:
        yield Testnet(directory, nodes)
    finally:
        stop(directory)
