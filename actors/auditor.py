"""Auditor: challenges close-group peers to prove they keep what they hold, and keeps
the trust score of each peer.

The rules are ``protocol.audit`` (whom to challenge about what, and how to judge the
answers) and ``protocol.trust`` (scores and shunning); this actor carries them out:

- it learns the peers from ``RoutingChanged`` and the chunks stored here (PUTs and
  repairs) from ``ChunkStored``;
- when the planner has something due, it asks the ChunkKeeper for the held chunks,
  then for the proofs each challenged peer should give (over its own copies), sends
  the ``StorageChallenge`` and judges the answer, all by messages: it never waits;
- chunks a peer lacks are offered to it (``OfferChunks`` to the Replicator);
- evidence moves the peer's trust; a peer that falls below the threshold is shunned
  (``ShunPeer`` to the BucketManager: out of the routing table, so out of every close
  group this node computes, and its chunks go to the next closest peers).

Trust is persisted (``peer_trust``) and the shunned are shunned again after a restart.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.base import NodeActor
from actors.bucket_manager import RemoteCalls
from actors.futures import Outcome, tell_when_done
from actors.messages import (
    ChunkStored,
    Event,
    ExpectProofs,
    HeldChunks,
    OfferChunks,
    PeerMisbehaved,
    RoutingChanged,
    ShunPeer,
    StatusQuery,
    Tick,
)
from persistence.database import Database, TrustRecord
from protocol.audit import (
    DEFAULT_AUDIT_INTERVAL,
    AuditOutcome,
    AuditPlanner,
    AuditReport,
    Challenge,
    ChallengeKind,
    judge,
    judge_error,
)
from protocol.errors import RemoteError
from protocol.trust import PeerTrust, TrustBook, TrustEvent
from protocol.wire import Message, StorageAnswers, StorageChallenge

log = logging.getLogger(__name__)

CHALLENGE_TIMEOUT = 30.0  # under protocol.audit.IN_FLIGHT_SECONDS
"""Seconds a peer has to answer a challenge (it hashes up to 64 chunks)."""
SAVE_EVERY = 5.0
"""Seconds between two saves of changed trust records at most."""
FORGET_EVERY = 600.0


@dataclass(frozen=True, slots=True)
class _Held(Event):
    held: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class _Expected(Event):
    challenge: Challenge
    expected: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class _Answered(Event):
    challenge: Challenge
    expected: dict[bytes, bytes]
    outcome: Outcome[Message]


class Auditor(NodeActor):
    name = "Auditor"

    def __init__(
        self,
        own_id: bytes,
        remote: RemoteCalls,
        keeper: pykka.ActorRef[Any],
        database: Database | None,
        *,
        on_shun: Callable[[ShunPeer], None],
        on_offer: Callable[[OfferChunks], None],
        interval: float = DEFAULT_AUDIT_INTERVAL,
        grace: float | None = None,
    ) -> None:
        super().__init__()
        self.own_id = own_id
        self.remote = remote
        self.keeper = keeper
        self.database = database
        self.on_shun = on_shun
        self.on_offer = on_offer
        self.planner = AuditPlanner(own_id, interval=interval, grace=grace)
        self.trust = TrustBook()
        self.peers: frozenset[bytes] = frozenset()
        """The routing table's peers (as the BucketManager last announced them) not shunned."""
        self._asked_held = False
        self._shuns_announced = False
        self._saved_at = 0.0
        self._forgotten_at = time.time()
        self.counts = {o.value: 0 for o in AuditOutcome}
        self.sent = 0
        self.possession_checks = 0
        self.missing = 0

    def on_start(self) -> None:
        now = time.time()
        if self.database is not None:
            self.trust.load(
                PeerTrust(r.peer_id, r.score, r.updated_at, r.passed, r.failed, r.shunned_until)
                for r in self.database.load_trust()
            )
        shunned = self.trust.shunned(now)
        if shunned:
            log.info("%d peer(s) still shunned from before the restart", len(shunned))

    def on_stop(self) -> None:
        self._save(time.time(), force=True)

    def on_receive(self, message: Any) -> Any:
        now = time.time()
        match message:
            case RoutingChanged(added=added, removed=removed, peers=peers):
                self.peers = frozenset(p for p in peers if not self.trust.is_shunned(p, now))
                for peer in removed:
                    self.planner.peer_left(peer)
                for peer in added:
                    if peer in self.peers:
                        self.planner.peer_joined(peer, now)
            case ChunkStored(address=address):
                self.planner.chunk_stored(address, now)
            case PeerMisbehaved(peer_id=peer_id, event=event):
                self._evidence(peer_id, event, now)
            case Tick(now=tick_now):
                self._tick(tick_now)
            case _Held(held=held):
                self._asked_held = False
                self._send(self.planner.plan(now, held, self.peers))
            case _Expected(challenge=challenge, expected=expected):
                self._challenge(challenge, expected)
            case _Answered(challenge=challenge, expected=expected, outcome=outcome):
                self._answered(challenge, expected, outcome, now)
            case StatusQuery():
                return {"audits": self.status(now)}
            case _:
                return super().on_receive(message)
        return None

    def _tick(self, now: float) -> None:
        if not self._shuns_announced:  # every actor runs by the first tick
            self._shuns_announced = True
            for peer_id, until in self.trust.shunned(now).items():
                self.on_shun(ShunPeer(peer_id, until))
        if not self._asked_held and self.peers:
            if self.planner.wants_held(now):  # audits need the held chunks: ask first
                self._asked_held = True
                self.keeper.tell(HeldChunks(reply=lambda held: self.tell_self(_Held(tuple(held)))))
            elif self.planner.has_checks(now):
                self._send(self.planner.plan(now, None, self.peers))
        if now - self._forgotten_at >= FORGET_EVERY:
            self._forgotten_at = now
            faded = self.trust.forget_faded(now)
            if faded and self.database is not None:
                self.database.delete_trust(faded)
        self._save(now)

    def _send(self, challenges: list[Challenge]) -> None:
        """Have the ChunkKeeper compute what each peer should answer, from its own copies."""
        for challenge in challenges:

            def expected(proofs: dict[bytes, bytes], challenge: Challenge = challenge) -> None:
                self.tell_self(_Expected(challenge, proofs))

            self.keeper.tell(
                ExpectProofs(challenge.nonce, challenge.peer, challenge.addresses, expected)
            )

    def _challenge(self, challenge: Challenge, expected: dict[bytes, bytes]) -> None:
        challenge = challenge.narrowed(expected)  # chunks this node no longer holds intact
        if not challenge.addresses or challenge.peer not in self.peers:
            self.planner.failed(challenge.peer)
            return
        self.sent += 1
        self.possession_checks += challenge.kind is ChallengeKind.POSSESSION
        future = self.remote.request(
            challenge.peer,
            StorageChallenge(challenge.nonce, list(challenge.addresses)),
            CHALLENGE_TIMEOUT,
        )
        tell_when_done(future, self.actor_ref, functools.partial(_Answered, challenge, expected))

    def _answered(
        self,
        challenge: Challenge,
        expected: dict[bytes, bytes],
        outcome: Outcome[Message],
        now: float,
    ) -> None:
        reply = outcome.value
        report: AuditReport
        if isinstance(reply, StorageAnswers):
            report = judge(challenge, expected, reply.answers)
        elif isinstance(outcome.error, RemoteError):  # the Transport hands a wire Error so
            report = judge_error(challenge, outcome.error.code)
        else:
            report = judge_error(challenge, None)
        self.planner.done(report, now)
        self.counts[report.outcome.value] += 1
        self.missing += report.missing
        if report.outcome is not AuditOutcome.PASSED:
            log.info(
                "%s of %s: %s (%d proven, %d missing, %d wrong, %d declined)",
                report.kind.value,
                challenge.peer.hex()[:16],
                report.outcome.value,
                report.proven,
                report.missing,
                report.wrong,
                report.declined,
            )
        if report.offer_back and challenge.peer in self.peers:
            self.on_offer(OfferChunks(challenge.peer, report.offer_back))
        for event in report.events:
            self._evidence(challenge.peer, event, now)

    def _evidence(self, peer_id: bytes, event: TrustEvent, now: float) -> None:
        if not self.trust.record(peer_id, event, now):
            return
        until = self.trust.shunned(now)[peer_id]
        log.warning(
            "peer %s shunned (trust %.1f after %s): its chunks go to the next closest peers",
            peer_id.hex()[:16],
            self.trust.score(peer_id, now),
            event.value,
        )
        self.peers = self.peers - {peer_id}
        self.planner.peer_left(peer_id)
        self.on_shun(ShunPeer(peer_id, until))
        self._save(now, force=True)

    def _save(self, now: float, force: bool = False) -> None:
        if self.database is None or (not force and now - self._saved_at < SAVE_EVERY):
            return
        changed = self.trust.take_changed()
        if changed:
            self.database.save_trust(
                TrustRecord(t.peer_id, t.score, t.updated_at, t.passed, t.failed, t.shunned_until)
                for t in changed
            )
        self._saved_at = now

    def status(self, now: float) -> dict[str, Any]:
        return {
            "enabled": True,
            "interval": self.planner.interval,
            "sent": self.sent,
            # "refused" is the ChunkKeeper's (challenges it refused, by reason) in the same
            # section of the node's status: the peers' refusals are "peer_refused"
            **{("peer_refused" if k == "refused" else k): n for k, n in self.counts.items()},
            "missing": self.missing,
            "possession_checks": self.possession_checks,
            "waiting": self.planner.waiting,
            "in_flight": self.planner.in_flight,
            "shunned": sorted(p.hex() for p in self.trust.shunned(now)),
            "trust": {
                t.peer_id.hex(): {
                    "score": round(self.trust.score(t.peer_id, now), 2),
                    "passed": t.passed,
                    "failed": t.failed,
                }
                for t in self.trust.peers()
            },
        }
