"""Every error of `autonomi-actors`, tried as a new user would: one line, exit 1, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.testnet import start, stop

CLI = [sys.executable, "-m", "cli"]
PREFIX = "autonomi-actors: error:"
SOME_ID = "ab" * 32
DEAD_PEER = f"/ip4/127.0.0.1/udp/9/quic-v1/p2p/{SOME_ID}"
"""A well-formed multiaddr nobody listens on (UDP port 9, discard: ICMP unreachable)."""


def run_cli(*args: str | Path, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def error_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """The one error line of a failed command, checked to name each of ``names``."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("testnet")
    start(directory, 3, timeout=60, payments=False)  # a get pays nothing: no chain needed
    try:
        yield directory
    finally:
        stop(directory)


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """The multiaddr of a UDP port that takes packets and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"/ip4/127.0.0.1/udp/{sock.getsockname()[1]}/quic-v1/p2p/{SOME_ID}"


def test_get_of_an_address_nobody_stores(testnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("get", SOME_ID, "-o", out, "--testnet", testnet, "--quiet")
    error_line(done, "nothing is stored", SOME_ID)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "no partial file left behind"


def test_get_into_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "folder" / "file"
    started = time.monotonic()
    done = run_cli("get", SOME_ID, "-o", out, "--peer", DEAD_PEER)
    error_line(done, str(out.parent), "does not exist")
    assert time.monotonic() - started < 10, "checked before contacting the network"


def test_get_into_a_directory(tmp_path: Path) -> None:
    done = run_cli("get", SOME_ID, "-o", tmp_path, "--peer", DEAD_PEER)
    error_line(done, str(tmp_path), "is a directory")


def test_get_of_a_malformed_address(tmp_path: Path) -> None:
    done = run_cli("get", "xyz", "-o", tmp_path / "out", "--peer", DEAD_PEER)
    error_line(done, "bad data address", "'xyz'")


@pytest.mark.parametrize("verb", ["put", "get"])
def test_peer_that_is_not_a_multiaddr(verb: str, tmp_path: Path) -> None:
    target = ["/etc/hostname"] if verb == "put" else [SOME_ID, "-o", str(tmp_path / "out")]
    done = run_cli(verb, *target, "--peer", "not-a-multiaddr")
    error_line(done, "--peer", "not-a-multiaddr")


def test_put_through_an_unreachable_peer(tmp_path: Path) -> None:
    source = tmp_path / "file"
    source.write_bytes(b"x" * 1000)
    done = run_cli("put", source, "--peer", DEAD_PEER)
    error_line(done, "no peer answered", DEAD_PEER)


def test_put_through_a_silent_peer_gives_up_in_time(tmp_path: Path, silent_peer: str) -> None:
    source = tmp_path / "file"
    source.write_bytes(b"x" * 1000)
    started = time.monotonic()
    done = run_cli("put", source, "--peer", silent_peer)
    error_line(done, "no peer answered", silent_peer)
    assert time.monotonic() - started < 20


def test_put_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    done = run_cli("put", missing, "--peer", DEAD_PEER)
    error_line(done, str(missing), "no such file")


def test_put_of_a_directory(tmp_path: Path) -> None:
    done = run_cli("put", tmp_path, "--peer", DEAD_PEER)
    error_line(done, str(tmp_path), "is a directory")


def test_put_through_a_testnet_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    done = run_cli("put", "/etc/hostname", "--testnet", not_a_dir)
    error_line(done, str(not_a_dir), "not a directory")


@pytest.mark.parametrize("command", [["status"], ["top"], ["connect", SOME_ID]])
def test_node_commands_without_a_node(command: list[str], tmp_path: Path) -> None:
    done = run_cli(*command, "--root-dir", tmp_path)
    error_line(done, "no node is running", str(tmp_path))


@pytest.mark.parametrize("action", ["status", "stop"])
def test_testnet_commands_on_an_empty_dir(action: str, tmp_path: Path) -> None:
    done = run_cli("testnet", action, "--dir", tmp_path)
    error_line(done, "no testnet", str(tmp_path))


def test_testnet_start_where_no_dir_can_be(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    done = run_cli("testnet", "start", "--nodes", "1", "--dir", not_a_dir)
    error_line(done, str(not_a_dir), "not a directory")
    done = run_cli("testnet", "start", "--nodes", "1", "--dir", not_a_dir / "below")
    error_line(done, "cannot create testnet dir", str(not_a_dir / "below"))


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--peer", "garbage"], ["--peer", "garbage"]),
        (["--host", "nothost"], ["--host", "nothost"]),
        (["--port", "99999"], ["--port", "99999"]),
    ],
)
def test_run_with_a_bad_flag(flags: list[str], names: list[str], tmp_path: Path) -> None:
    done = run_cli("run", "--root-dir", tmp_path / "node", *flags)
    error_line(done, *names)
    assert not (tmp_path / "node").exists(), "nothing is created before the flags are checked"


def test_run_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        done = run_cli("run", "--root-dir", tmp_path / "node", "--port", port)
    error_line(done, f"127.0.0.1:{port}", "in use")
