"""The base of every node actor: a pykka ThreadingActor with an instrumented mailbox.

Actors talk with typed messages (frozen dataclasses, one module of them per
actor): ``ref.tell(msg)`` for events, ``ref.ask(msg, block=False)`` for a reply
future. Every message handled is timed and counted by the actor's
``MailboxMeter``, which any thread may read while the actor runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any, ClassVar

import msgspec
import pykka

from actors.messages import Event, InboundRequest
from protocol.wire import Error, ErrorCode

log = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 5.0


class MailboxFigures(msgspec.Struct, frozen=True):
    """What the TUI and ``status`` show of one mailbox."""

    depth: int
    processed: int
    rate: float
    """Messages handled per second over the last few seconds."""
    mean_ms: float
    """Mean handling time of a message, in milliseconds, since start."""
    last_message: str
    failures: int


class MailboxMeter:
    """Counters of one actor's mailbox; written by the actor, read from anywhere."""

    def __init__(self, inbox: Any) -> None:
        self._inbox = inbox
        self._lock = threading.Lock()
        self._processed = 0
        self._failures = 0
        self._busy_seconds = 0.0
        self._last_message = "-"
        self._recent: deque[float] = deque()

    def record(self, message_type: str, started: float, finished: float, failed: bool) -> None:
        with self._lock:
            self._processed += 1
            self._failures += failed
            self._busy_seconds += finished - started
            self._last_message = message_type
            self._recent.append(finished)
            self._trim(finished)

    def _trim(self, now: float) -> None:
        horizon = now - RATE_WINDOW_SECONDS
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()

    def figures(self, now: float | None = None) -> MailboxFigures:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            processed = self._processed
            return MailboxFigures(
                depth=self._inbox.qsize(),
                processed=processed,
                rate=len(self._recent) / RATE_WINDOW_SECONDS,
                mean_ms=(self._busy_seconds / processed * 1000.0) if processed else 0.0,
                last_message=self._last_message,
                failures=self._failures,
            )


def message_name(message: Any) -> str:
    """A readable name for a message: its class, or the method a proxy call names."""
    attr_path = getattr(message, "attr_path", None)
    if attr_path:
        return ".".join(attr_path)
    return type(message).__name__


class NodeActor(pykka.ThreadingActor):
    """An actor of the node. Subclasses set ``name`` and implement ``on_receive``."""

    name: ClassVar[str] = "actor"

    def __init__(self) -> None:
        super().__init__()
        self.meter = MailboxMeter(self.actor_inbox)

    def _handle_receive(self, message: Any) -> Any:
        started = time.monotonic()
        failed = True
        try:
            result = super()._handle_receive(message)
            failed = False
            return result
        except Exception:
            if not isinstance(message, Event):
                raise  # an ask: the caller's future gets the exception
            log.exception("%s failed on %s", self.name, type(message).__name__)
            if isinstance(message, InboundRequest):
                message.reply(Error(ErrorCode.INTERNAL, f"{self.name} failed"))
            return None
        finally:
            self.meter.record(message_name(message), started, time.monotonic(), failed)

    def on_receive(self, message: Any) -> Any:
        """Events nobody here cares about are ignored; any other unknown message is an error."""
        if isinstance(message, Event):
            return None
        raise TypeError(f"{self.name} does not handle {type(message).__name__}")

    def tell_self(self, message: Event) -> None:
        """Tell this actor ``message`` from any thread (quietly skipped once it stopped):
        how a callback brings a result back into the actor's own mailbox."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)
