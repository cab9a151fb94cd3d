"""Figures of the persistence layer: chunk-metadata inserts and atomic chunk file writes.

    .venv/bin/python bench/bench_persistence.py [--dir DIR] [--seconds S]

Runs in a fresh temporary directory under DIR (default: the system temp directory;
the file system matters, fsync costs what the device costs) and removes it after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from persistence.chunk_files import ChunkFiles
from persistence.database import open_database
from persistence.models import ChunkKind

BATCH_SIZE = 1000


def rate(operation: Callable[[int], int], seconds: float) -> tuple[float, int]:
    """Run ``operation(i)`` (it returns how many items it did) for about ``seconds``;
    items per second and the number of items."""
    done = 0
    i = 0
    start = time.perf_counter()
    while True:
        done += operation(i)
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done


def filesystem_of(path: Path) -> str:
    result = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=False
    )
    lines = result.stdout.split()
    return lines[-1] if result.returncode == 0 and lines else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temp dir")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per figure")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-persistence-", dir=arguments.dir) as name:
        root = Path(name)
        print(f"directory: {root} ({filesystem_of(root)})")
        seconds = arguments.seconds

        with open_database(root) as db:
            counter = iter(range(1 << 62))

            def one_insert(_i: int) -> int:
                key = next(counter).to_bytes(32, "big")
                db.add_chunk(key, 1024, ChunkKind.RESPONSIBLE, now=time.time())
                return 1

            def batch_insert(_i: int) -> int:
                batch = [
                    (next(counter).to_bytes(32, "big"), 1024, ChunkKind.RESPONSIBLE)
                    for _ in range(BATCH_SIZE)
                ]
                db.add_chunks(batch, now=time.time())
                return BATCH_SIZE

            per_second, count = rate(one_insert, seconds)
            print(f"chunk metadata, one insert per transaction: {per_second:10,.0f} /s ({count})")
            per_second, count = rate(batch_insert, seconds)
            print(
                f"chunk metadata, batches of {BATCH_SIZE}:          "
                f"{per_second:10,.0f} /s ({count})"
            )

            def due_query(_i: int) -> int:
                db.chunks_due_for_audit(before=time.time(), limit=100)
                return 1

            total = db.chunk_totals()[ChunkKind.RESPONSIBLE].count
            per_second, _ = rate(due_query, seconds / 2)
            print(f"chunks_due_for_audit(limit=100) on {total:,} rows: {per_second:8,.0f} /s")

        files = ChunkFiles(root)
        for label, size in (("1 KiB", 1024), ("1 MiB", 1024 * 1024)):
            content = os.urandom(size)
            written: list[bytes] = []

            def write_one(i: int, content: bytes = content, written: list[bytes] = written) -> int:
                key = os.urandom(32)
                files.write(key, content)
                written.append(key)
                return 1

            per_second, count = rate(write_one, seconds)
            mib_per_second = per_second * size / (1024 * 1024)
            print(
                f"atomic chunk file writes, {label}: {per_second:10,.0f} /s "
                f"({mib_per_second:,.1f} MiB/s, {count})"
            )
            for key in written:
                files.delete(key)


if __name__ == "__main__":
    main()
