"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rate(fn: Callable[[], object], min_seconds: float = 1.0) -> float:
    """Calls per second of ``fn``, measured over at least ``min_seconds``."""
    fn()
    count = 0
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < min_seconds:
        fn()
        count += 1
        elapsed = time.perf_counter() - started
    return count / elapsed


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p95) of ``samples``."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads), from ``/proc``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
