"""Atomic chunk files on real file systems, including a real full disk (tmpfs)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from persistence.chunk_files import ChunkFiles
from persistence.errors import ChunkFileError, PersistenceError, StorageFull
from tests.conftest import MountTmpfs


def address(n: int) -> bytes:
    return n.to_bytes(32, "big")


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_chunks_round_trip_under_fan_out_directories(tmp_path: Path) -> None:
    files = ChunkFiles(tmp_path)
    key = bytes.fromhex("ab" + "01" * 31)
    files.write(key, b"hello")
    assert files.path_of(key) == tmp_path / "chunks" / "ab" / key.hex()
    assert files.path_of(key).read_bytes() == b"hello"
    assert files.read(key) == b"hello"
    assert files.exists(key)
    assert all_files(tmp_path) == [f"chunks/ab/{key.hex()}"]  # no temp file left

    files.write(key, bytearray(b"hello again"))  # a rewrite replaces atomically
    assert files.read(key) == b"hello again"
    files.write(address(2), memoryview(b"x" * 10_000))
    assert files.read(address(2)) == b"x" * 10_000
    files.write(address(3), b"")
    assert files.read(address(3)) == b""

    assert files.delete(key) is True
    assert files.delete(key) is False
    assert files.read(key) is None
    assert not files.exists(key)


def test_bad_addresses_are_refused(tmp_path: Path) -> None:
    files = ChunkFiles(tmp_path)
    with pytest.raises(ValueError, match="32 bytes"):
        files.write(b"short", b"x")
    with pytest.raises(ValueError, match="32 bytes"):
        files.read(b"")


def _fail(error_number: int) -> Callable[..., NoReturn]:
    def failing(*_args: object, **_kwargs: object) -> NoReturn:
        raise OSError(error_number, os.strerror(error_number))

    return failing


@pytest.mark.parametrize("step", ["fsync", "replace", "close"])
def test_a_failure_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    files = ChunkFiles(tmp_path)
    files.write(address(1), b"old content")
    monkeypatch.setattr(os, step, _fail(errno.EIO))
    with pytest.raises(ChunkFileError, match="cannot write chunk") as caught:
        files.write(address(2), b"new chunk")
    monkeypatch.undo()
    assert not isinstance(caught.value, StorageFull)
    assert all_files(tmp_path) == [f"chunks/00/{address(1).hex()}"]
    assert files.read(address(1)) == b"old content"


def test_a_failed_rewrite_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ChunkFiles(tmp_path)
    files.write(address(1), b"complete")
    monkeypatch.setattr(os, "fsync", _fail(errno.EIO))
    with pytest.raises(ChunkFileError):
        files.write(address(1), b"replacement")
    monkeypatch.undo()
    assert files.read(address(1)) == b"complete"
    assert all_files(tmp_path) == [f"chunks/00/{address(1).hex()}"]


def test_a_partial_write_then_enospc_is_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ChunkFiles(tmp_path)
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StorageFull, match="no space"):
        files.write(address(5), b"y" * 1000)
    monkeypatch.undo()
    assert calls == [1000, 500]
    assert all_files(tmp_path) == []


def test_quota_exceeded_is_storage_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ChunkFiles(tmp_path)
    monkeypatch.setattr(os, "fsync", _fail(errno.EDQUOT))
    with pytest.raises(StorageFull):
        files.write(address(5), b"y")
    monkeypatch.undo()
    assert all_files(tmp_path) == []


def test_a_real_full_disk_raises_storage_full_and_keeps_earlier_chunks(
    mount_tmpfs: MountTmpfs,
) -> None:
    root = mount_tmpfs(size="512k")
    files = ChunkFiles(root)
    earlier = {address(n): bytes([n]) * 100_000 for n in range(1, 4)}
    for key, content in earlier.items():
        files.write(key, content)

    too_big = os.urandom(300 * 1024)
    with pytest.raises(StorageFull) as caught:
        files.write(address(9), too_big)
    assert isinstance(caught.value, PersistenceError)
    assert not files.exists(address(9))
    scan = files.scan()
    assert scan.stray_temp_files == ()
    assert sorted(scan.addresses) == sorted(earlier)
    for key, content in earlier.items():
        assert files.read(key) == content
    # The space of the failed write was given back: a chunk that fits still goes in.
    files.write(address(10), b"z" * 50_000)
    assert files.read(address(10)) == b"z" * 50_000


def test_scanning_separates_chunks_from_temp_and_stray_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = ChunkFiles(tmp_path)
    keys = [address(1), bytes.fromhex("ff" * 32)]
    for key in keys:
        files.write(key, b"data")
    temp = tmp_path / "chunks" / "00" / f".{address(7).hex()}.abc123.tmp"
    temp.write_bytes(b"half")
    misplaced = tmp_path / "chunks" / "00" / ("ff" * 32)  # wrong fan-out directory
    misplaced.write_bytes(b"x")
    stray = tmp_path / "chunks" / "notes.txt"
    stray.write_text("x")

    with caplog.at_level(logging.WARNING, logger="persistence.chunk_files"):
        assert sorted(files.iter_addresses()) == sorted(keys)
    assert str(temp) in caplog.text
    assert str(stray) in caplog.text

    scan = files.scan()
    assert sorted(scan.addresses) == sorted(keys)
    assert scan.stray_temp_files == (temp,)
    assert set(scan.unrecognised) == {misplaced, stray}

    assert files.remove_stale_temp_files() == [temp]
    assert not temp.exists()
    assert misplaced.exists() and stray.exists()
    assert files.remove_stale_temp_files() == []


def test_quarantine_moves_bad_files_aside_without_overwriting(tmp_path: Path) -> None:
    files = ChunkFiles(tmp_path)
    key = address(3)
    files.write(key, b"bad copy 1")
    first = files.quarantine(key)
    assert first == tmp_path / "quarantine" / key.hex()
    assert first.read_bytes() == b"bad copy 1"
    assert not files.exists(key)

    files.write(key, b"bad copy 2")
    second = files.quarantine(key)
    assert second is not None and second != first
    assert second.read_bytes() == b"bad copy 2"
    assert first.read_bytes() == b"bad copy 1"
    assert files.quarantine(key) is None
    assert list(files.iter_addresses()) == []


def test_a_read_only_root_gives_a_clear_error(mount_tmpfs: MountTmpfs) -> None:
    read_only = mount_tmpfs(size="64k", read_only=True)
    with pytest.raises(ChunkFileError, match="cannot create the directory"):
        ChunkFiles(read_only)
