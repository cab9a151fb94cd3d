"""Asking a running node through its control socket (``actors.control_socket``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Final

from actors.control_socket import (
    MessageTooLarge,
    control_socket_path,
    read_all,
    short_socket_path,
)

MAX_REPLY_BYTES: Final = 64 * 1024 * 1024


class ControlError(Exception):
    """No node answers on the control socket, or it answered with an error."""


def request(root_dir: Path, command: str, timeout: float = 10.0, **params: Any) -> Any:
    """Ask the node running on ``root_dir``; returns its result or raises ``ControlError``."""
    path = control_socket_path(root_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with short_socket_path(path) as short:
                sock.connect(short)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no node is running on {root_dir} (no answer on {path})") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the node on {path}: {exc.strerror}") from None
        sock.sendall(json.dumps({"command": command, **params}).encode())
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = json.loads(read_all(sock, MAX_REPLY_BYTES))
        except (TimeoutError, ValueError, MessageTooLarge) as exc:
            raise ControlError(f"the node on {root_dir} gave no valid answer: {exc}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply.get("result")
