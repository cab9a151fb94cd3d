"""The node's root directory: checked, created, and locked against a second node."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

import platformdirs

LOCK_FILE_NAME: Final = "node.lock"


class RootDirError(Exception):
    """The root directory cannot be used: missing parent, not writable, or in use."""


class RootDirLock:
    """An exclusive ``flock`` on ``ROOT/node.lock``, held while the node runs.

    The kernel releases it when the process dies, so a ``kill -9`` never leaves a
    stale lock behind; the file keeps the holder's pid for the error message.
    """

    def __init__(self, root_dir: Path) -> None:
        self.root_dir = root_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        path = self.root_dir / LOCK_FILE_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RootDirError(f"cannot open lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RootDirError(
                f"another node is already running on {self.root_dir} (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def default_root_dir() -> Path:
    """The root dir when none is given: ``<user data dir>/nodes/<peer id>``.

    The one node dir there is reused; with none, a new one is made (its name is fixed
    once the identity exists, see ``name_root_dir_by_peer_id``); with several, the
    user must choose.
    """
    nodes = Path(platformdirs.user_data_dir("autonomi-actors")) / "nodes"
    existing = (
        sorted(p for p in nodes.glob("*") if (p / "identity.key").exists())
        if nodes.is_dir()
        else []
    )
    if len(existing) == 1:
        return existing[0]
    if len(existing) > 1:
        names = ", ".join(p.name[:16] for p in existing)
        raise RootDirError(
            f"several nodes live under {nodes} ({names}); choose one with --root-dir"
        )
    return nodes / NEW_NODE_DIR_NAME


NEW_NODE_DIR_NAME = "new"
"""A fresh default root dir, renamed to the PeerId once the identity exists."""


def name_root_dir_by_peer_id(root_dir: Path, peer_id_hex: str) -> Path:
    """Rename a fresh default root dir after its PeerId (before anything holds it open)."""
    if root_dir.name != NEW_NODE_DIR_NAME:
        return root_dir
    target = root_dir.with_name(peer_id_hex)
    os.rename(root_dir, target)
    return target


def prepare_root_dir(root_dir: Path) -> Path:
    """Create ``root_dir`` (owner-only) if its parent exists; check it is a writable directory."""
    root_dir = root_dir.expanduser().absolute()
    if root_dir.exists() and not root_dir.is_dir():
        raise RootDirError(f"root dir {root_dir} exists and is not a directory")
    if not root_dir.exists():
        try:
            root_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise RootDirError(f"cannot create root dir {root_dir}: {exc.strerror}") from exc
    if not os.access(root_dir, os.W_OK | os.X_OK):
        raise RootDirError(f"root dir {root_dir} is not writable")
    return root_dir
