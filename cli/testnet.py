"""A local network of real node processes on 127.0.0.1, and its manifest.

``start`` launches node 0 with ``--first`` and the others with ``--peer`` pointing
at it, all in ``--local`` mode, and returns once every node has joined (its
routing table is not empty). ``manifest.json`` in the testnet dir records them.

A testnet is paid by default: ``start`` first starts a local chain (anvil) in the
testnet dir, deploys the token and the vault and funds a client wallet
(``evm.json``), and gives every node a rewards address of its own. ``stop`` stops
the chain too. With ``payments=False`` nodes store for free.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

from actors.control_socket import control_socket_path
from cli.control import ControlError, request

EVM_JSON = "evm.json"

MANIFEST_NAME = "manifest.json"


class TestnetError(Exception):
    """The testnet could not be started, found or stopped."""


@dataclass(frozen=True)
class NodeEntry:
    peer_id: str
    multiaddr: str
    root_dir: str
    pid: int
    control_socket: str
    rewards_address: str = ""
    """The node's rewards address ("" on a free testnet)."""


def default_testnet_dir() -> Path:
    return Path(platformdirs.user_data_dir("autonomi-actors")) / "testnet"


def manifest_path(testnet_dir: Path) -> Path:
    return testnet_dir / MANIFEST_NAME


def read_manifest(testnet_dir: Path) -> list[NodeEntry]:
    path = manifest_path(testnet_dir)
    try:
        data = json.loads(path.read_text())
        return [NodeEntry(**node) for node in data["nodes"]]
    except FileNotFoundError:
        raise TestnetError(f"no testnet in {testnet_dir} (no {MANIFEST_NAME})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TestnetError(f"{path} is not a testnet manifest: {exc}") from None


def write_manifest(testnet_dir: Path, nodes: list[NodeEntry]) -> None:
    path = manifest_path(testnet_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=2))
    os.replace(tmp, path)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(root_dir: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    root_dir.mkdir(parents=True, exist_ok=True)
    log = (root_dir / "node.out").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--root-dir", str(root_dir), "--local", *extra],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the launching shell does not reach the nodes
    )


def _payment_args(testnet_dir: Path) -> list[str]:
    """A node's payment flags on this testnet: a fresh rewards address and the local
    chain of ``evm.json``; none on a free testnet (no ``evm.json``)."""
    if not (testnet_dir / EVM_JSON).exists():
        return []
    from evm.local_chain import new_rewards_address, read_evm_json

    chain = read_evm_json(testnet_dir)
    return [
        "--rewards-address",
        new_rewards_address(),
        "--evm-network",
        "local",
        "--rpc-url",
        str(chain["rpc_url"]),
        "--token-address",
        str(chain["token_address"]),
        "--vault-address",
        str(chain["vault_address"]),
    ]


def _wait_joined(
    proc: subprocess.Popen[bytes], root_dir: Path, need_peers: bool, deadline: float
) -> NodeEntry:
    """The node's manifest entry, once it listens (and, with ``need_peers``, knows a peer)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestnetError(
                f"node in {root_dir} exited with {proc.returncode}; see {root_dir / 'node.out'}"
            )
        if control_socket_path(root_dir).exists():
            try:
                status: dict[str, Any] = request(root_dir, "status", timeout=5)
            except ControlError:
                status = {}
            if status.get("listen_addrs") and (
                not need_peers or status.get("routing_table_size", 0) > 0
            ):
                return NodeEntry(
                    peer_id=status["peer_id"],
                    multiaddr=status["listen_addrs"][0],
                    root_dir=str(root_dir),
                    pid=proc.pid,
                    control_socket=str(control_socket_path(root_dir)),
                    rewards_address=status.get("payments", {}).get("rewards_address", ""),
                )
        time.sleep(0.05)
    raise TestnetError(f"node in {root_dir} did not join in time; see {root_dir / 'node.out'}")


def start(
    testnet_dir: Path,
    nodes: int,
    timeout: float = 120.0,
    extra_args: tuple[str, ...] = (),
    *,
    payments: bool = True,
) -> list[NodeEntry]:
    """Start ``nodes`` node processes (and, with ``payments``, the local chain first)
    and return their manifest entries."""
    if nodes < 1:
        raise TestnetError("a testnet needs at least one node")
    testnet_dir.mkdir(parents=True, exist_ok=True)
    try:
        running = [n for n in read_manifest(testnet_dir) if is_alive(n.pid)]
    except TestnetError:
        running = []
    if running:
        raise TestnetError(
            f"a testnet is already running in {testnet_dir} ({len(running)} nodes); stop it first"
        )
    deadline = time.monotonic() + timeout
    _stop_chain(testnet_dir)  # a chain left by a testnet that was not stopped
    (testnet_dir / EVM_JSON).unlink(missing_ok=True)
    if payments:
        from evm.local_chain import start_local_chain

        start_local_chain(testnet_dir)
    first_root = testnet_dir / "node-00"
    try:
        first = _spawn(first_root, ["--first", *_payment_args(testnet_dir), *extra_args])
    except BaseException:
        _stop_chain(testnet_dir)
        raise
    try:
        entries = [_wait_joined(first, first_root, need_peers=False, deadline=deadline)]
        entries += _start_joiners(
            testnet_dir, 1, nodes - 1, entries[0].multiaddr, extra_args, deadline
        )
    except BaseException:
        first.kill()
        _stop_chain(testnet_dir)
        raise
    write_manifest(testnet_dir, entries)
    return entries


def add_nodes(
    testnet_dir: Path, count: int, timeout: float = 120.0, extra_args: tuple[str, ...] = ()
) -> list[NodeEntry]:
    """Start ``count`` more nodes joining through the first one; returns the new entries."""
    entries = read_manifest(testnet_dir)
    deadline = time.monotonic() + timeout
    added = _start_joiners(
        testnet_dir, len(entries), count, entries[0].multiaddr, extra_args, deadline
    )
    write_manifest(testnet_dir, entries + added)
    return added


def _start_joiners(
    testnet_dir: Path,
    first_index: int,
    count: int,
    bootstrap: str,
    extra_args: tuple[str, ...],
    deadline: float,
) -> list[NodeEntry]:
    """Start nodes ``node-<first_index>`` on, all joining through ``bootstrap``, and wait
    until each has joined; on any failure every one of them is killed."""
    roots = [testnet_dir / f"node-{first_index + i:02d}" for i in range(count)]
    procs = [
        _spawn(root, ["--peer", bootstrap, *_payment_args(testnet_dir), *extra_args])
        for root in roots
    ]
    try:
        return [
            _wait_joined(proc, root, need_peers=True, deadline=deadline)
            for proc, root in zip(procs, roots, strict=True)
        ]
    except BaseException:
        for proc in procs:
            proc.kill()
        raise


def _stop_chain(testnet_dir: Path) -> None:
    if (testnet_dir / EVM_JSON).exists():
        from evm.local_chain import stop_local_chain

        stop_local_chain(testnet_dir)


def stop(testnet_dir: Path, grace: float = 10.0) -> int:
    """SIGTERM every node, SIGKILL those still running after ``grace`` seconds, then stop
    the local chain; returns how many nodes ran."""
    try:
        nodes = read_manifest(testnet_dir)
    except TestnetError:
        _stop_chain(testnet_dir)
        raise
    alive = [n.pid for n in nodes if is_alive(n.pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_reaped_or_alive(pid) for pid in alive):
        time.sleep(0.05)
    for pid in alive:
        if _reaped_or_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reaped_or_alive(pid)
    _stop_chain(testnet_dir)
    return len(alive)


def _reaped_or_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; when this process started it (tests) and it has exited,
    it is collected first, so it does not linger as a zombie that counts as alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return is_alive(pid)


def replica_counts(
    nodes: Iterable[NodeEntry], addresses: Sequence[bytes], timeout: float = 60.0
) -> list[int]:
    """For each of ``addresses``, how many of ``nodes`` hold it (asked with ``holds``)."""
    counts = [0] * len(addresses)
    hexed = [a.hex() for a in addresses]
    for node in nodes:
        held = request(Path(node.root_dir), "holds", timeout=timeout, addresses=hexed)
        counts = [n + int(h) for n, h in zip(counts, held, strict=True)]
    return counts


def status(testnet_dir: Path) -> list[dict[str, Any]]:
    """The manifest with each node's liveness."""
    return [{**asdict(n), "alive": is_alive(n.pid)} for n in read_manifest(testnet_dir)]
