"""Futures that can notify: how an actor learns that a remote call finished without
blocking on it.

``NotifyingFuture`` is a pykka ``ThreadingFuture`` (so ``.get()`` works as usual)
that also runs callbacks when it completes, on the thread that completes it. A
callback must be quick and must not block: it should only ``tell`` an actor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pykka
from pykka._types import OptExcInfo

T = TypeVar("T")
log = logging.getLogger(__name__)


class Outcome(Generic[T]):
    """A finished call: its value, or the exception it failed with."""

    __slots__ = ("error", "value")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class NotifyingFuture(pykka.ThreadingFuture[T]):
    """A ThreadingFuture that runs ``add_done_callback`` callbacks on completion."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[Outcome[T]], None]] = []
        self._outcome: Outcome[T] | None = None
        self._callback_lock = threading.Lock()

    def add_done_callback(self, callback: Callable[[Outcome[T]], None]) -> None:
        """Call ``callback(outcome)`` once the future completes (at once if it has)."""
        with self._callback_lock:
            outcome = self._outcome
            if outcome is None:
                self._callbacks.append(callback)
                return
        _run(callback, outcome)

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        self._finish(Outcome(value=value))

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        super().set_exception(exc_info)
        error = self._result.exc_info[1] if self._result and self._result.exc_info else None
        self._finish(Outcome(error=error or RuntimeError("future failed")))

    def _finish(self, outcome: Outcome[T]) -> None:
        with self._callback_lock:
            self._outcome = outcome
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run(callback, outcome)


def _run(callback: Callable[[Outcome[T]], None], outcome: Outcome[T]) -> None:
    try:
        callback(outcome)
    except pykka.ActorDeadError:
        pass  # the actor that was to hear of it has stopped: nobody is waiting
    except Exception:
        log.exception("future callback failed")


def when_done(future: pykka.Future[T], callback: Callable[[Outcome[T]], None]) -> None:
    """Run ``callback`` when ``future`` completes; it must be a ``NotifyingFuture``."""
    if not isinstance(future, NotifyingFuture):
        raise TypeError(
            f"cannot watch a {type(future).__name__} without blocking; use NotifyingFuture"
        )
    future.add_done_callback(callback)


def tell_when_done(
    future: pykka.Future[T], actor_ref: pykka.ActorRef[Any], message: Callable[[Outcome[T]], Any]
) -> None:
    """When ``future`` completes, tell ``actor_ref`` the ``message(outcome)``: how an actor
    hears of a remote call's result in its own mailbox (an actor that stopped meanwhile
    is skipped quietly)."""
    when_done(future, lambda outcome: actor_ref.tell(message(outcome)))
