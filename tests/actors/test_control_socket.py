"""The node's control socket, served for real on a Unix socket and asked by ``cli.control``."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.control_socket import (
    MAX_REQUEST_BYTES,
    ControlServer,
    control_socket_path,
    short_socket_path,
)
from cli.control import ControlError, request


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    def echo(req: dict[str, Any]) -> Any:
        return {"echo": req.get("value")}

    def broken(_req: dict[str, Any]) -> Any:
        raise ValueError("the handler failed")

    control = ControlServer(tmp_path, {"echo": echo, "broken": broken})
    control.start()
    yield control
    control.stop()


def test_a_command_is_answered_and_the_socket_is_owner_only(
    server: ControlServer, tmp_path: Path
) -> None:
    assert request(tmp_path, "echo", value=7) == {"echo": 7}
    assert stat.S_IMODE(control_socket_path(tmp_path).stat().st_mode) == 0o600


def test_unknown_commands_and_failing_handlers_are_errors_not_crashes(
    server: ControlServer, tmp_path: Path
) -> None:
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        request(tmp_path, "nope")
    with pytest.raises(ControlError, match="ValueError: the handler failed"):
        request(tmp_path, "broken")
    assert request(tmp_path, "echo", value="still served") == {"echo": "still served"}


def test_an_oversized_request_is_refused(server: ControlServer, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(control_socket_path(tmp_path)))
        try:
            sock.sendall(json.dumps({"command": "echo", "value": "x" * MAX_REQUEST_BYTES}).encode())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return  # the server closed the connection before reading it all: refused too
        reply = json.loads(sock.recv(65536))
    assert reply["ok"] is False
    assert "larger than" in reply["error"]


def test_a_root_dir_too_deep_for_a_unix_socket_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with short_socket_path(control_socket_path(deep)) as short:
        assert len(short) < 108
    control = ControlServer(deep, {"ping": lambda _req: "pong"})
    control.start()
    try:
        assert request(deep, "ping") == "pong"
    finally:
        control.stop()


def test_no_node_running_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no node is running"):
        request(tmp_path, "status")
