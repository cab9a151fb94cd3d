"""`autonomi-actors run` and `status` as a user runs them: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``autonomi-actors ARGS`` run to its end, its output captured."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)


def wait_for_status(root: Path, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        done = run_cli("status", "--root-dir", str(root), "--json")
        if done.returncode == 0:
            status: dict[str, object] = json.loads(done.stdout)
            return status
        last = done.stderr
        time.sleep(0.2)
    raise AssertionError(f"node never answered status: {last}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_answers_status_and_stops_on_signal(tmp_path: Path, signum: int) -> None:
    root = tmp_path / "node"
    proc = subprocess.Popen(
        [*CLI, "run", "--root-dir", str(root), "--first"], stderr=subprocess.PIPE, text=True
    )
    try:
        status = wait_for_status(root)
        peer_id = str(status["peer_id"])
        assert len(peer_id) == 64
        assert "actors" in status and "public_key" in status
        human = run_cli("status", "--root-dir", str(root))
        assert human.returncode == 0
        assert peer_id in human.stdout and "actors" in human.stdout
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert peer_id in log
        assert not (root / "control.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Restarting reuses the identity.
    again = subprocess.Popen([*CLI, "run", "--root-dir", str(root)], stderr=subprocess.DEVNULL)
    try:
        assert wait_for_status(root)["peer_id"] == peer_id
    finally:
        again.terminate()
        again.wait(timeout=10)


def test_status_without_a_node_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli("status", "--root-dir", str(tmp_path))
    assert done.returncode == 1
    assert "no node is running" in done.stderr
    assert "Traceback" not in done.stderr


def test_unwritable_root_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/autonomi-actors-test")  # not creatable even for root
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "node"
    done = run_cli("run", "--root-dir", str(target), "--first")
    assert done.returncode == 1
    assert "cannot create root dir" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli("run", "--root-dir", str(tmp_path), "--max-storage", "lots")
    assert done.returncode == 2
    assert "not a size" in done.stderr


def test_cache_size_is_parsed_like_max_storage(tmp_path: Path) -> None:
    from cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "--root-dir", str(tmp_path), "--cache-size", "64MiB"])
    assert args.cache_size == 64 * 1024**2
    assert parser.parse_args(["run", "--root-dir", str(tmp_path)]).cache_size == 512 * 1024**2
    done = run_cli("run", "--root-dir", str(tmp_path), "--cache-size", "big")
    assert done.returncode == 2 and "not a size" in done.stderr


def test_corrupt_database_is_a_clear_error_and_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir(mode=0o700)
    garbage = b"this is not a database" * 500
    (root / "node.sqlite3").write_bytes(garbage)
    done = run_cli("run", "--root-dir", str(root), "--first")
    assert done.returncode == 1
    assert "node.sqlite3" in done.stderr and "Traceback" not in done.stderr
    assert (root / "node.sqlite3").read_bytes() == garbage


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_json_logs_rotating_file_metrics_and_default_root_dir(tmp_path: Path) -> None:
    import urllib.request

    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "AUTONOMI_ACTORS_LOG_FORMAT": "json",
    }
    port = _free_port()
    proc = subprocess.Popen(
        [*CLI, "run", "--first", "--metrics-port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        nodes_dir = tmp_path / "data" / "autonomi-actors" / "nodes"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(nodes_dir.glob("*/control.sock")):
            time.sleep(0.1)
        (root,) = [p.parent for p in nodes_dir.glob("*/control.sock")]
        status = wait_for_status(root)
        assert root.name == status["peer_id"], "the default root dir is named after the PeerId"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'autonomi_mailbox_processed_total{actor="BucketManager"}' in text
        lines = (root / "logs" / "node.log").read_text().splitlines()
        first = json.loads(lines[0])
        assert {"time", "level", "logger", "message"} <= set(first)
        assert any(status["peer_id"] in json.loads(line)["message"] for line in lines)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # Started again with no --root-dir, it finds its node dir and keeps its identity.
    again = subprocess.Popen([*CLI, "run"], stderr=subprocess.DEVNULL, env=env)
    try:
        assert wait_for_status(root)["peer_id"] == root.name
    finally:
        again.terminate()
        again.wait(timeout=10)


def test_config_file_settings_apply(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    root = tmp_path / "from-config"
    config.write_text(f'root-dir = "{root}"\nfirst = true\nmax-storage = "123MB"\n')
    proc = subprocess.Popen([*CLI, "run", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        assert wait_for_status(root)["max_storage"] == 123_000_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = tmp_path / "bad.toml"
    bad.write_text('colour = "blue"\n')
    done = run_cli("run", "--config", str(bad))
    assert done.returncode == 1 and "unknown setting 'colour'" in done.stderr
    assert "Traceback" not in done.stderr
