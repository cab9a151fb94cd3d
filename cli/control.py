"""The control socket: how ``status``, ``top`` and ``connect`` talk to a running node.

A Unix stream socket ``ROOT/control.sock`` (owner-only). One JSON request per
connection, ``{"command": NAME, ...}``, answered by one JSON document
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

CONTROL_SOCKET_NAME: Final = "control.sock"
MAX_REQUEST_BYTES: Final = 64 * 1024

Handler = Callable[[dict[str, Any]], Any]
log = logging.getLogger(__name__)


class ControlError(Exception):
    """No node answers on the control socket, or it answered with an error."""


def control_socket_path(root_dir: Path) -> Path:
    return root_dir / CONTROL_SOCKET_NAME


class ControlServer:
    """Serves control requests from a thread; each connection is handled in its own thread."""

    def __init__(self, root_dir: Path, handlers: dict[str, Handler]) -> None:
        self.path = control_socket_path(root_dir)
        self._handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a node that was killed; the root-dir lock proves it is dead
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with _short_path(self.path) as short:
                sock.bind(short)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._answer, args=(conn,), name="control-request", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                request = json.loads(_read_all(conn, MAX_REQUEST_BYTES))
                handler = self._handlers.get(str(request.get("command")))
                if handler is None:
                    reply: dict[str, Any] = {
                        "ok": False,
                        "error": f"unknown command {request.get('command')!r}",
                    }
                else:
                    reply = {"ok": True, "result": handler(request)}
            except Exception as exc:
                log.warning("control request failed: %s", exc)
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode())


MAX_UNIX_PATH = 100
"""Unix socket paths are limited to 107 bytes; a root dir may be deeper than that."""


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for a Unix socket: itself, or the same name reached
    through ``/proc/self/fd/N`` of its open directory (Linux)."""
    if len(os.fsencode(path)) <= MAX_UNIX_PATH:
        yield str(path)
        return
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise FileNotFoundError(str(path)) from None
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


def _read_all(conn: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > limit:
            raise ControlError(f"control message larger than {limit} bytes")
        chunks.append(data)


def request(root_dir: Path, command: str, timeout: float = 10.0, **params: Any) -> Any:
    """Ask the node running on ``root_dir``; returns its result or raises ``ControlError``."""
    path = control_socket_path(root_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _short_path(path) as short:
                sock.connect(short)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no node is running on {root_dir} (no answer on {path})") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the node on {path}: {exc.strerror}") from None
        sock.sendall(json.dumps({"command": command, **params}).encode())
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = json.loads(_read_all(sock, 64 * 1024 * 1024))
        except (TimeoutError, ValueError) as exc:
            raise ControlError(f"the node on {root_dir} gave no valid answer: {exc}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply.get("result")
