"""Timers of the sans-IO transport core: a heap of deadlines, no clock of its own.

The core schedules its rules' timers here (``call_at``) and its owner asks for the
earliest deadline (``next_deadline``) and runs what is due (``run_due(now)``): one
timer in the shell stands for all of them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Timer:
    """A scheduled callback; ``cancel()`` keeps it from running."""

    __slots__ = ("_args", "_callback", "_owner", "_when", "cancelled")

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        owner: Timers | None = None,
    ) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._owner = owner
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._args = ()
            if self._owner is not None:
                self._owner._cancelled_one()

    def _run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._owner = None
            self._callback(*self._args)


class Timers:
    """Deadlines in order; cancelled ones are dropped lazily (all at once when they
    are most of the heap, as asyncio does)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled = max(0, self._cancelled - 1)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every timer due at ``now`` (also those a callback schedules for now or
        earlier); the number run."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            _when, _seq, timer = heapq.heappop(heap)
            if timer.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                timer._run()
                ran += 1
        return ran

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)
