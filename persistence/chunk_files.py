"""Chunk bytes as files: ``root_dir/chunks/<2 hex>/<64 hex>``, written atomically.

A write goes to a temporary file in the final directory (``.<64 hex>.<random>.tmp``),
is fsynced, renamed over the final name, and the directory is fsynced. A reader
therefore sees either no file or the whole chunk, even after a crash or a full disk.
Temporary files left by a crash are found by ``scan`` and removed by
``remove_stale_temp_files`` (call it at start, before any write).

This module stores bytes; it does not check that an address is the hash of its
content (the ChunkKeeper does). Any thread may call it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from persistence.errors import ChunkFileError, StorageFull
from protocol.xor import ADDRESS_BYTES, check_address

CHUNKS_DIRNAME: Final = "chunks"
QUARANTINE_DIRNAME: Final = "quarantine"
TEMP_SUFFIX: Final = ".tmp"

_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChunkFileScan:
    """What is under ``chunks/``: chunk files, temporary files of unfinished writes,
    and anything else (neither is ever reported as a chunk)."""

    addresses: tuple[bytes, ...]
    stray_temp_files: tuple[Path, ...]
    unrecognised: tuple[Path, ...]


class ChunkFiles:
    """The chunk files of the node rooted at ``root_dir`` (which must exist)."""

    def __init__(self, root_dir: Path) -> None:
        self.root_dir = Path(root_dir)
        self.chunks_dir = self.root_dir / CHUNKS_DIRNAME
        self.quarantine_dir = self.root_dir / QUARANTINE_DIRNAME
        for directory in (self.chunks_dir, self.quarantine_dir):
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise _error(f"cannot create the directory {directory}", exc) from exc

    def path_of(self, address: bytes) -> Path:
        """The final path of a chunk file."""
        name = check_address(address).hex()
        return self.chunks_dir / name[:2] / name

    def write(self, address: bytes, content: bytes | bytearray | memoryview) -> None:
        """Store ``content`` under ``address`` atomically (replacing any previous file).

        Raises ``StorageFull`` when the device or quota is full and ``ChunkFileError``
        on any other failure; in both cases no temporary file remains and nothing
        partial exists under the final name.
        """
        final = self.path_of(address)
        directory = final.parent
        self._make_fan_out_dir(directory)
        try:
            fd, temp_name = tempfile.mkstemp(
                prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=directory
            )
        except OSError as exc:
            raise _error(f"cannot create a temporary file for chunk {final.name}", exc) from exc
        try:
            try:
                view = memoryview(content).cast("B")
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_name, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            if isinstance(exc, OSError):
                raise _error(f"cannot write chunk {final.name}", exc) from exc
            raise
        _fsync_directory(directory)

    def read(self, address: bytes) -> bytes | None:
        """The bytes of a chunk, or None if there is no file for it."""
        path = self.path_of(address)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(f"cannot read chunk {path.name}", exc) from exc

    def exists(self, address: bytes) -> bool:
        """Whether a file for the chunk exists."""
        return self.path_of(address).is_file()

    def delete(self, address: bytes) -> bool:
        """Remove a chunk file; False if there was none. (Not fsynced: a file that
        comes back after a crash is found when reconciling with the metadata.)"""
        path = self.path_of(address)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error(f"cannot delete chunk {path.name}", exc) from exc
        return True

    def quarantine(self, address: bytes) -> Path | None:
        """Move a bad chunk file to ``quarantine/`` for inspection; its new path, or None
        if there was no file. An earlier quarantined copy is never overwritten."""
        source = self.path_of(address)
        if not source.exists():
            return None
        target = self.quarantine_dir / source.name
        counter = 0
        while target.exists():
            counter += 1
            target = self.quarantine_dir / f"{source.name}.{counter}"
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(f"cannot quarantine chunk {source.name}", exc) from exc
        _fsync_directory(self.quarantine_dir)
        _fsync_directory(source.parent)
        return target

    def iter_addresses(self) -> Iterator[bytes]:
        """Addresses of every chunk file, in no particular order. Temporary files and
        unknown files are skipped and logged as warnings."""
        for kind, path in self._walk():
            if kind == "chunk":
                yield bytes.fromhex(path.name)
            elif kind == "temp":
                logger.warning("stray temporary chunk file (unfinished write): %s", path)
            else:
                logger.warning("unrecognised file among the chunks: %s", path)

    def scan(self) -> ChunkFileScan:
        """Everything under ``chunks/``, sorted into chunks, temporary files and others."""
        addresses: list[bytes] = []
        temps: list[Path] = []
        others: list[Path] = []
        for kind, path in self._walk():
            if kind == "chunk":
                addresses.append(bytes.fromhex(path.name))
            elif kind == "temp":
                temps.append(path)
            else:
                others.append(path)
        return ChunkFileScan(tuple(addresses), tuple(temps), tuple(others))

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove the temporary files of unfinished writes; the paths removed.

        Any write in progress would lose its temporary file: call this at start only.
        """
        removed = []
        for kind, path in self._walk():
            if kind == "temp":
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed

    def _walk(self) -> Iterator[tuple[Literal["chunk", "temp", "other"], Path]]:
        try:
            fan_out_dirs = sorted(os.scandir(self.chunks_dir), key=lambda entry: entry.name)
        except OSError as exc:
            raise _error(f"cannot list {self.chunks_dir}", exc) from exc
        for fan_out in fan_out_dirs:
            if not (fan_out.is_dir(follow_symlinks=False) and _is_hex(fan_out.name, 2)):
                yield "other", Path(fan_out.path)
                continue
            try:
                entries = list(os.scandir(fan_out.path))
            except OSError as exc:
                raise _error(f"cannot list {fan_out.path}", exc) from exc
            for entry in entries:
                path = Path(entry.path)
                if not entry.is_file(follow_symlinks=False):
                    yield "other", path
                elif _is_hex(entry.name, ADDRESS_BYTES * 2) and entry.name[:2] == fan_out.name:
                    yield "chunk", path
                elif entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    yield "temp", path
                else:
                    yield "other", path

    def _make_fan_out_dir(self, directory: Path) -> None:
        try:
            directory.mkdir()
        except FileExistsError:
            return
        except OSError as exc:
            raise _error(f"cannot create the directory {directory}", exc) from exc
        _fsync_directory(self.chunks_dir)


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and _HEX_DIGITS.issuperset(name)


def _fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _error(f"cannot sync the directory {directory}", exc) from exc


def _error(what: str, exc: OSError) -> ChunkFileError:
    """``StorageFull`` for a full device or quota, else ``ChunkFileError``."""
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE_ERRNOS:
        return StorageFull(f"{what}: {reason} (no space left for chunk files)")
    return ChunkFileError(f"{what}: {reason}")
