"""ReachPlanner: the one dial cascade of the node (direct, then a hole punch, then a
relay), planned with ``protocol.nat.DialCascade`` and its step timeouts.

Every way of reaching a peer goes through here: a request to a peer without a
connection (the core's per-peer queue waits for the outcome) and an explicit
``reach`` (the ``connect`` command). One cascade per peer at a time; whoever asks
while one runs joins it. The planner decides and keeps the record; the core
(``ReachActions``) carries the steps out and reports back: a step's dial failed, a
relay answered, a connection to the peer became ready (by whatever route).

It owns no socket and no clock: ``now`` comes with every call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from actors._quic.backend import SocketAddress
from actors._quic.model import ReachResult
from protocol.errors import PeerUnreachable, TransportError
from protocol.multiaddr import MultiaddrError, parse_multiaddr
from protocol.nat import (
    CascadeAction,
    CascadeTimeouts,
    Connected,
    DialCascade,
    DialDirect,
    GaveUp,
    How,
    PunchVia,
    RelayVia,
)
from protocol.wire import Message, PunchReply, PunchRequest, RelayCircuit, RelayConnect

Answer = Callable[[Message | None, Exception | None, float], None]
"""Called with the reply or the error, and the time."""


class ReachActions(Protocol):
    """What the planner asks of the transport core."""

    own_id: bytes

    def reach_dial(
        self, peer_id: bytes, addr: SocketAddress, timeout: float, how: How, token: tuple[int, int]
    ) -> None:
        """Dial ``addr`` expecting ``peer_id``; report its failure with ``token``."""

    def reach_ask(
        self, relay_id: bytes, message: Message, timeout: float, via: str, answer: Answer
    ) -> None:
        """Send ``message`` to the relay (dialling ``via`` if need be); ``answer`` later."""

    def reach_circuit(
        self, relay_id: bytes, circuit: int, peer_id: bytes, timeout: float, token: tuple[int, int]
    ) -> str | None:
        """Connect through the relay's circuit; the reason if it cannot start."""

    def reach_openers(self, addr: SocketAddress) -> None:
        """Open this side's NAT mapping toward ``addr``."""

    def reach_finished(
        self, peer_id: bytes, result: ReachResult, failure: TransportError | None
    ) -> None:
        """The cascade ended: release (or fail, with ``failure``) what waits for the peer."""


@dataclass(eq=False)
class _Job:
    id: int
    peer_id: bytes
    cascade: DialCascade
    started: float
    counted: bool
    waiters: list[int] = field(default_factory=list)
    """``reach`` ids to answer with the result."""
    last_error: TransportError | None = None

    @property
    def step(self) -> int:
        return len(self.cascade.attempts)


class ReachPlanner:
    """The cascades in progress, one per peer."""

    def __init__(self, actions: ReachActions) -> None:
        self._actions = actions
        self.timeouts = CascadeTimeouts()
        self.punch = True
        """Try hole punching before a relay (off behind a symmetric NAT, or by config)."""
        self._jobs: dict[bytes, _Job] = {}
        self._ids = itertools.count(1)
        self.finished: list[tuple[list[int], ReachResult]] = []
        """Results for ``reach`` waiters, taken by the core."""
        self.figures = {"cascades": 0, "direct": 0, "punched": 0, "relayed": 0, "failed": 0}

    def running(self, peer_id: bytes) -> bool:
        return peer_id in self._jobs

    def start(
        self,
        peer_id: bytes,
        direct: list[str],
        relayed: list[str],
        now: float,
        *,
        counted: bool,
        reach_id: int | None = None,
    ) -> None:
        """Start a cascade to the peer (or join the running one)."""
        job = self._jobs.get(peer_id)
        if job is not None:
            if reach_id is not None:
                job.waiters.append(reach_id)
            return
        cascade = DialCascade(direct, relayed, now, self.timeouts, punch=self.punch)
        job = _Job(next(self._ids), peer_id, cascade, now, counted)
        if reach_id is not None:
            job.waiters.append(reach_id)
        self._jobs[peer_id] = job
        if counted:
            self.figures["cascades"] += 1
        self._perform(job, cascade.start(now), now)

    def step_failed(self, token: tuple[int, int], error: TransportError, now: float) -> None:
        """The dial of step ``token`` failed."""
        job = self._current(token)
        if job is not None:
            job.last_error = error
            self._perform(job, job.cascade.failed(_why(error), now), now)

    def connected(self, peer_id: bytes, how: How, now: float) -> None:
        """A connection to the peer is ready (the cascade's or another route's)."""
        job = self._jobs.get(peer_id)
        if job is None:
            return
        if job.cascade.current is not None:
            job.cascade.succeeded(now)
        self._finish(job, str(how), None, now)

    def close(self, error: TransportError, now: float) -> None:
        for job in list(self._jobs.values()):
            job.last_error = error
            self._finish(job, None, str(error), now)

    # -- the steps -------------------------------------------------------------------------

    def _current(self, token: tuple[int, int]) -> _Job | None:
        """The job if step ``token`` is still its running step (late news is ignored)."""
        job_id, step = token
        for job in self._jobs.values():
            if job.id == job_id:
                return job if job.step == step and job.cascade.current is not None else None
        return None

    def _perform(self, job: _Job, action: CascadeAction, now: float) -> None:
        token = (job.id, job.step)
        match action:
            case DialDirect(via=via, timeout=timeout):
                try:
                    addr = parse_multiaddr(via).socket_address
                except MultiaddrError as exc:
                    self._perform(job, job.cascade.failed(f"bad address: {exc}", now), now)
                    return
                self._actions.reach_dial(job.peer_id, addr, timeout, How.DIRECT, token)
            case PunchVia(via=via, timeout=timeout) | RelayVia(via=via, timeout=timeout):
                relay_id = _peer_of(via)
                if relay_id is None or relay_id == self._actions.own_id:
                    self._perform(job, job.cascade.failed("no relay to ask", now), now)
                    return
                ask: Message = (
                    PunchRequest(job.peer_id)
                    if isinstance(action, PunchVia)
                    else RelayConnect(job.peer_id)
                )

                def answer(reply: Message | None, error: Exception | None, at: float) -> None:
                    self._relay_answered(token, relay_id, reply, error, at)

                self._actions.reach_ask(relay_id, ask, timeout, via, answer)
            case Connected(how=how):
                self._finish(job, str(how), None, now)
            case GaveUp(reason=reason):
                self._finish(job, None, reason, now)

    def _relay_answered(
        self,
        token: tuple[int, int],
        relay_id: bytes,
        reply: Message | None,
        error: Exception | None,
        now: float,
    ) -> None:
        """The relay answered a punch or circuit request: dial what it said."""
        job = self._current(token)
        if job is None:
            return
        action = job.cascade.current
        match action, reply:
            case PunchVia(timeout=timeout), PunchReply(addr=addr):
                try:
                    target = parse_multiaddr(addr).socket_address
                except MultiaddrError as exc:
                    self._perform(job, job.cascade.failed(f"bad punch address: {exc}", now), now)
                    return
                self._actions.reach_openers(target)
                self._actions.reach_dial(job.peer_id, target, timeout, How.PUNCHED, token)
            case RelayVia(timeout=timeout), RelayCircuit(circuit=circuit):
                why = self._actions.reach_circuit(relay_id, circuit, job.peer_id, timeout, token)
                if why is not None:
                    self._perform(job, job.cascade.failed(why, now), now)
            case _:
                if isinstance(error, TransportError):
                    job.last_error = error
                why = _why(error) if error is not None else "unexpected reply"
                self._perform(job, job.cascade.failed(why, now), now)

    def _finish(self, job: _Job, how: str | None, error: str | None, now: float) -> None:
        if self._jobs.get(job.peer_id) is job:
            del self._jobs[job.peer_id]
        connected = how is not None
        if job.counted:
            self.figures[how if how is not None else "failed"] += 1
        result = ReachResult(
            job.peer_id,
            connected,
            how,
            tuple(job.cascade.attempts),
            round(now - job.started, 4),
            error,
        )
        failure: TransportError | None = None
        if not connected:
            only_direct = all(a.step == "direct" for a in job.cascade.attempts)
            if job.last_error is not None and only_direct:
                failure = job.last_error  # as the dial itself failed (rejected, unreachable)
            else:
                failure = PeerUnreachable(error or "unreachable")
        if job.waiters:
            self.finished.append((job.waiters, result))
        self._actions.reach_finished(job.peer_id, result, failure)


def _why(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _peer_of(text: str) -> bytes | None:
    try:
        return parse_multiaddr(text).peer_id
    except MultiaddrError:
        return None
