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
from typing import Any, Protocol

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


def _node_environment() -> dict[str, str]:
    """The environment of a testnet's node processes: Python's optimisation level 2
    unless ``PYTHONOPTIMIZE`` says otherwise. A node never reads a docstring, and
    leaving out those of the ~500 modules it imports (SQLAlchemy's are long) saves
    about 3 MB per node (``bench/bench_testnet.py``). The project asserts nothing a
    node relies on: its ``assert``s only narrow types."""
    return {"PYTHONOPTIMIZE": "2", **os.environ}


def _spawn(root_dir: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    root_dir.mkdir(parents=True, exist_ok=True)
    log = (root_dir / "node.out").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--root-dir", str(root_dir), "--local", *extra],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the launching shell does not reach the nodes
        env=_node_environment(),
    )


def restart_node(
    root_dir: Path, bootstrap: str, extra_args: Sequence[str] = (), timeout: float = 60.0
) -> NodeEntry:
    """Start the node of ``root_dir`` again (after a crash), joining through ``bootstrap``;
    its manifest entry once it knows a peer."""
    proc = _spawn(root_dir, ["--peer", bootstrap, *extra_args])
    return _wait_joined(proc, root_dir, need_peers=True, deadline=time.monotonic() + timeout)


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


class _NodeProcess(Protocol):
    """A started node process: a ``Popen`` or one forked by a ``_Launcher``."""

    pid: int
    returncode: Any

    def poll(self) -> Any: ...

    def kill(self) -> None: ...


def _wait_joined(
    proc: _NodeProcess, root_dir: Path, need_peers: bool, deadline: float
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
    launcher = _Launcher.start(testnet_dir) if nodes > 1 else None
    try:
        first_args = ["--first", *_payment_args(testnet_dir), *extra_args]
        forked = launcher.launch(first_root, first_args) if launcher is not None else None
        first: _NodeProcess = forked if forked is not None else _spawn(first_root, first_args)
    except BaseException:
        if launcher is not None:
            launcher.close()
        _stop_chain(testnet_dir)
        raise
    try:
        entries = [_wait_joined(first, first_root, need_peers=False, deadline=deadline)]
        entries += _start_joiners(
            testnet_dir, 1, nodes - 1, entries[0].multiaddr, extra_args, deadline, launcher
        )
    except BaseException:
        first.kill()
        _stop_chain(testnet_dir)
        raise
    finally:
        if launcher is not None:
            launcher.close()
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
    launcher: _Launcher | None = None,
) -> list[NodeEntry]:
    """Start nodes ``node-<first_index>`` on, all joining through ``bootstrap``, and wait
    until each has joined; on any failure every one of them is killed.

    They are forked by ``launcher`` (a fresh one without it) when it works, else spawned
    as new interpreters (``_spawn``)."""
    own_launcher = launcher is None and count > 0
    if own_launcher:
        launcher = _Launcher.start(testnet_dir)
    roots = [testnet_dir / f"node-{first_index + i:02d}" for i in range(count)]
    procs: list[_NodeProcess] = []
    try:
        for root in roots:
            args = ["--peer", bootstrap, *_payment_args(testnet_dir), *extra_args]
            forked = launcher.launch(root, args) if launcher is not None else None
            procs.append(forked if forked is not None else _spawn(root, args))
        if launcher is not None:
            launcher.close()  # the nodes are children of this process from now on
        return [
            _wait_joined(proc, root, need_peers=True, deadline=deadline)
            for proc, root in zip(procs, roots, strict=True)
        ]
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        if own_launcher and launcher is not None:
            launcher.close()


# --- the launcher: nodes forked from one interpreter that has imported them ----------

_LAUNCHER_LOG = "launcher.out"
_LAUNCHER_CODE = "from cli.testnet import serve_launches; serve_launches()"
_TITLE_ROOM = 4096
_NODE_MODULES = (  # what ``cli run`` imports (cli.main.cmd_run): a forked node imports ~nothing
    "cli.main",
    "actors.node",
    "cli.config",
    "cli.logs",
    "evm.networks",  # paid nodes only, but small
    "persistence.root_dir",
    "protocol.identity",
    "protocol.nat",
    "protocol.relay",
)


class _ForkedNode:
    """A node process forked by a ``_Launcher``; once the launcher has exited it is a child
    of this process (see ``_Launcher.close``), reaped here as a ``Popen`` would be."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | str | None = None

    def poll(self) -> int | str | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not adopted (no subreaper): no exit status to read
                if not is_alive(self.pid):
                    self.returncode = "an unknown status"
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class _Launcher:
    """A process that imports once what a node runs (about 0.45 s of CPU) and then forks
    node processes on request, each running ``cli run`` with its own arguments, so the N
    nodes of a testnet do not each import it again (a "zygote", as Android's, or
    gunicorn's preload).

    Requests are JSON lines on its stdin, answered with the node's pid on its stdout. It
    exits when its stdin is closed; this process, a child subreaper meanwhile, adopts the
    nodes, so they are its children exactly as spawned ones are (``os.waitpid`` works).
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.failed = False

    @classmethod
    def start(cls, testnet_dir: Path) -> _Launcher | None:
        """The launcher, or None where it cannot work (no fork, no child subreaper)."""
        if not hasattr(os, "fork") or _child_subreaper(None) is None:
            return None
        try:
            with (testnet_dir / _LAUNCHER_LOG).open("ab") as log:
                proc = subprocess.Popen(
                    # The blank argument is room for the command line of each node it forks.
                    [sys.executable, "-c", _LAUNCHER_CODE, " " * _TITLE_ROOM],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                    env=_node_environment(),
                )
        except OSError:
            return None
        return cls(proc)

    def launch(self, root_dir: Path, args: list[str]) -> _ForkedNode | None:
        """Fork a node in ``root_dir`` with ``cli run`` flags ``args``; None if the
        launcher does not work (the caller spawns the node itself)."""
        if self.failed or self.proc.stdin is None or self.proc.stdout is None:
            return None
        root_dir.mkdir(parents=True, exist_ok=True)
        argv = ["run", "--root-dir", str(root_dir), "--local", *args]
        try:
            line = json.dumps({"root_dir": str(root_dir), "argv": argv}).encode() + b"\n"
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
            reply = json.loads(self.proc.stdout.readline() or b"null")
            return _ForkedNode(int(reply["pid"]))
        except (OSError, ValueError, TypeError, KeyError):
            self.failed = True
            return None

    def close(self) -> None:
        """No more nodes: the launcher exits and this process adopts the nodes it forked."""
        if self.proc.returncode is not None:
            return
        was_subreaper = _child_subreaper(True)
        try:
            for pipe in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    if pipe is not None:
                        pipe.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            if was_subreaper is False:
                _child_subreaper(False)


def _child_subreaper(on: bool | None) -> bool | None:
    """Whether this process adopts its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``);
    with ``on``, set it first and return the previous setting. None: not supported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        previous = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(previous), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return None
        if on is not None and libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return None
    except (OSError, AttributeError):
        return None
    return bool(previous.value)


def serve_launches() -> None:
    """The launcher's main loop (``python -c``, see ``_Launcher``)."""
    import gc
    import importlib

    for module in _NODE_MODULES:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()  # the nodes' collections skip (and do not copy) the imported objects
    for line in sys.stdin.buffer:
        request = json.loads(line)
        root_dir = Path(request["root_dir"])
        log_fd = os.open(root_dir / "node.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pid = os.fork()
        if pid == 0:
            _become_node(log_fd, list(request["argv"]))  # does not return
        os.close(log_fd)
        os.write(sys.stdout.fileno(), json.dumps({"pid": pid}).encode() + b"\n")
    # stdin closed: exit, and the nodes are adopted by the testnet's starter (a subreaper).


def _become_node(log_fd: int, argv: list[str]) -> None:
    """In the forked child: a session of its own, output to ``node.out``, then ``cli run``;
    exits through ``SystemExit`` as ``python -m cli run`` would."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)  # this also closes the pipe to the parent of the launcher
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _set_command_line([sys.executable, "-m", "cli", *argv])
    from cli.main import main

    raise SystemExit(main(argv))


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


def _set_command_line(argv: list[str]) -> None:
    """Show ``argv`` as this process's command line (``ps``, ``/proc/PID/cmdline``), as
    setproctitle does: written over the launcher's own, which has room for it; the
    kernel then reads it up to its first NUL, so it reads as one space-separated line."""
    import ctypes

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of stat
    except (OSError, IndexError, ValueError):
        return
    room = arg_end - arg_start
    title = " ".join(argv).encode()[: room - 1]
    ctypes.memmove(arg_start, title + b"\0" + b" " * (room - len(title) - 1), room)
