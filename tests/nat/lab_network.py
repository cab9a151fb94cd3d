"""Real node processes in the NAT lab: two public nodes and one node behind each home
router (a, b: port-preserving NAT; s: symmetric NAT). Used by the lab tests and by
``bench/bench_nat.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from cli.control import ControlError, request
from tests.nat.lab import PUNCH_TTL, LabHost, NatLab

NODE_PORT: Final = 9000
PUBLIC: Final = ("pub1", "pub2")
HOMES: Final = ("a", "b", "s")


@dataclass
class LabNode:
    name: str
    host: LabHost
    root_dir: Path
    process: subprocess.Popen[bytes]
    peer_id: str = ""

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host.address}/udp/{NODE_PORT}/quic-v1/p2p/{self.peer_id}"

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = request(self.root_dir, "status", timeout=10)
        return result

    def connect(
        self, peer_id: str, fresh: bool = True, addrs: Sequence[str] = ()
    ) -> dict[str, Any]:
        result: dict[str, Any] = request(
            self.root_dir,
            "connect",
            timeout=70,
            peer_id=peer_id,
            fresh=fresh,
            addrs=list(addrs),
            timeout_s=60,
        )
        return result


class LabNetwork:
    """Start with ``start()``; ``stop()`` ends every node (the lab's stop kills leftovers)."""

    def __init__(self, lab: NatLab, directory: Path, node_args: Sequence[str] = ()) -> None:
        self.lab = lab
        self.dir = directory
        self.node_args = tuple(node_args)
        self.nodes: dict[str, LabNode] = {}

    def start(self, timeout: float = 60.0) -> LabNetwork:
        first = self._launch("pub1", ["--first"])
        self._wait(lambda: self._peer_id(first), timeout, "pub1 to start")
        for name in ("pub2", *HOMES):
            self._launch(name, ["--peer", first.multiaddr])
        for node in self.nodes.values():
            self._wait(partial(self._peer_id, node), timeout, f"{node.name} to start")
        self._wait(self._settled, timeout, "public nodes public, home nodes relayed")
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes.values():
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                node.process.kill()

    def logs(self, name: str) -> str:
        path = self.nodes[name].root_dir / "logs" / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals -------------------------------------------------------------------

    def _launch(self, name: str, extra: list[str]) -> LabNode:
        host = self.lab.hosts[name]
        root_dir = self.dir / name
        argv = [
            sys.executable,
            "-m",
            "cli",
            "run",
            "--root-dir",
            str(root_dir),
            "--host",
            host.address,
            "--port",
            str(NODE_PORT),
            "--liveness-interval",
            "2",
            "--refresh-interval",
            "10",
            "--punch-ttl",
            str(PUNCH_TTL),
            *self.node_args,
            *extra,
        ]
        log = (self.dir / f"{name}.out").open("wb")
        process = host.popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=Path.cwd())
        node = LabNode(name, host, root_dir, process)
        self.nodes[name] = node
        return node

    def _peer_id(self, node: LabNode) -> bool:
        if node.process.poll() is not None:
            out = (self.dir / f"{node.name}.out").read_text(errors="replace")
            raise RuntimeError(f"node {node.name} exited ({node.process.returncode}):\n{out}")
        try:
            node.peer_id = str(node.status()["peer_id"])
        except ControlError:
            return False
        return True

    def _settled(self) -> bool:
        for name, node in self.nodes.items():
            nat = node.status().get("nat", {})
            if name in PUBLIC and nat.get("reachability") != "public":
                return False
            if name in HOMES and (nat.get("reachability") != "private" or not nat.get("relay")):
                return False
        return True

    @staticmethod
    def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def run_client(host: LabHost, argv: Sequence[str], timeout: float = 120.0) -> dict[str, Any]:
    """Run ``autonomi-actors put|get ... --json`` inside ``host``; its JSON result."""
    completed = host.run([sys.executable, "-m", "cli", *argv, "--json", "--quiet"], timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result
