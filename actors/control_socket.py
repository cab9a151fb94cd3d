"""The node's control socket: how ``status``, ``top`` and ``connect`` reach a running node.

A Unix stream socket ``ROOT/control.sock`` (owner-only). One JSON request per
connection, ``{"command": NAME, ...}``, answered by one JSON document
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. The node
serves it (``ControlServer``); the command line asks it (``cli.control.request``).
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


class MessageTooLarge(Exception):
    """A control message longer than its limit."""


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
            with short_socket_path(self.path) as short:
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
                request = json.loads(read_all(conn, MAX_REQUEST_BYTES))
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
def short_socket_path(path: Path) -> Iterator[str]:
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


def read_all(conn: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > limit:
            raise MessageTooLarge(f"control message larger than {limit} bytes")
        chunks.append(data)
