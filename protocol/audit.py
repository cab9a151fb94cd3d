"""Storage audits: close-group peers prove to each other that they keep what they hold.

An auditor sends a peer a ``StorageChallenge``: a fresh random nonce and a sample of
chunk addresses that both are responsible for and that the auditor holds itself.
The peer answers each address with ``storage_proof(nonce, its id, address, bytes)``,
which only the full bytes can produce and which is bound to this challenge and this
peer (no replay, no copying another peer's answer); the auditor computes the same
from its own copy and compares. An answer is one of:

- a 32-byte proof;
- ``MISSING`` (empty): "I should hold it and do not" (the auditor offers it back);
- ``DECLINED`` (one byte): "it is not mine" (more than the responsibility margin of
  peers I know are closer).

Two kinds of challenge share the machinery (``AuditPlanner``):

- *audits*: every ``interval`` (randomised) each peer sharing chunks with this
  node is asked about a sample of about the square root of what they share;
- *possession checks*: ``possession_delay`` after a chunk was stored or repaired,
  the member of its close group closest to it checks that every other member holds
  it, one batched challenge per peer. A chunk a peer answered missing and was
  offered back is checked again the same way: still missing then is a failure.

A newcomer is not challenged during its ``grace`` (it is still fetching what it is
responsible for), and an unanswered or "busy" challenge is no evidence (the peer
may be slow or restarting). What the answers mean for trust is in ``judge``.

The answering side is bounded by ``ChallengeGate``: well-formedness, a byte budget
per challenger and in total (token buckets charged with the bytes to hash), and
nonces never seen before.
"""

from __future__ import annotations

import enum
import math
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from blake3 import blake3

from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.rate import TokenBucket
from protocol.replication import offers
from protocol.trust import TrustEvent
from protocol.wire import (
    CHALLENGE_NONCE_BYTES,
    MAX_CHALLENGE_ADDRESSES,
    STORAGE_PROOF_BYTES,
    ErrorCode,
)
from protocol.xor import closest

DEFAULT_AUDIT_INTERVAL: Final = 900.0
"""Seconds between two audits of the same peer, on average."""
POSSESSION_DELAY: Final = 180.0
"""Seconds after a store (or an offer back, then at least ``REFETCH_SECONDS``) before
the chunk's holders are checked; at most half the audit interval, so that a peer that
lacks what it was offered back is failed within two audit periods."""
PROOF_CONTEXT: Final = b"autonomi-actors/storage-proof/v1"
MISSING: Final = b""
DECLINED: Final = b"\x00"
PLAUSIBLE_DECLINE_RANK: Final = CLOSE_GROUP_SIZE - 1
"""A peer may decline an address only if the auditor ranks it this far or farther
(0 = closest): routing tables disagree by a place, rarely by the whole margin."""
CHALLENGED_PER_SECOND: Final = 16.0
"""Addresses this node challenges per second at most, on average (each costs it a read and
a hash of its own copy, and the same at the peer); ``CHALLENGE_BURST`` at once."""
CHALLENGE_BURST: Final = 4 * MAX_CHALLENGE_ADDRESSES
MAX_BACKLOG_PER_PEER: Final = 4 * MAX_CHALLENGE_ADDRESSES
"""Possession checks waiting for one peer; past it, a random few are dropped (the
periodic audits still sample every shared chunk)."""
REFETCH_SECONDS: Final = 10.0
"""An owed chunk is checked again no sooner than this after it was offered back, however
short the audit interval: an offer, a claim and a fetch take seconds on a slow link or a
loaded machine (a test network audits every few seconds)."""
IN_FLIGHT_SECONDS: Final = 120.0
"""A challenge not reported ``done`` after this long is taken as lost (the owner's
answer timeout is shorter): the peer can be challenged again."""


def storage_proof(nonce: bytes, peer_id: bytes, address: bytes, content: bytes) -> bytes:
    """The answer to a challenge for ``address``: BLAKE3 binding the challenge's nonce, the
    answering peer, the address and the chunk's full bytes."""
    h = blake3(PROOF_CONTEXT)
    h.update(nonce)
    h.update(peer_id)
    h.update(address)
    h.update(content)
    return h.digest()


def sample_size(shared: int) -> int:
    """Addresses to sample out of ``shared``: about the square root, at least one, at most
    what a challenge may carry."""
    if shared <= 0:
        return 0
    return min(shared, MAX_CHALLENGE_ADDRESSES, max(1, math.isqrt(shared - 1) + 1))


# --- the auditor's side -------------------------------------------------------------


class ChallengeKind(enum.Enum):
    AUDIT = "audit"
    POSSESSION = "possession"


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge to send: ``StorageChallenge(nonce, addresses)`` to ``peer``."""

    peer: bytes
    nonce: bytes = field(repr=False)
    addresses: tuple[bytes, ...]
    kind: ChallengeKind
    owed: frozenset[bytes] = frozenset()
    """Addresses the peer answered missing before and was offered back."""
    close: frozenset[bytes] = frozenset()
    """Addresses where the auditor ranks the peer too close to decline them."""

    def narrowed(self, addresses: Iterable[bytes]) -> Challenge:
        """The same challenge for only ``addresses`` (those the auditor could prove itself)."""
        wanted = set(addresses)
        keep = tuple(a for a in self.addresses if a in wanted)
        return Challenge(self.peer, self.nonce, keep, self.kind, self.owed, self.close)


class AuditOutcome(enum.Enum):
    PASSED = "passed"
    INCOMPLETE = "incomplete"
    """Some chunks were missing for the first time: offered back, no failure yet."""
    FAILED = "failed"
    REFUSED = "refused"
    UNANSWERED = "unanswered"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What one challenge showed, and what to do about it."""

    peer: bytes
    kind: ChallengeKind
    outcome: AuditOutcome
    events: tuple[TrustEvent, ...] = ()
    """Evidence for ``protocol.trust``."""
    offer_back: tuple[bytes, ...] = ()
    """Chunks the peer should hold and lacks: offer them to it."""
    proven: int = 0
    missing: int = 0
    wrong: int = 0
    declined: int = 0


def judge(
    challenge: Challenge, expected: Mapping[bytes, bytes], answers: Sequence[bytes]
) -> AuditReport:
    """Judge a peer's ``answers`` to ``challenge`` against the proofs the auditor expects.

    Failed: a forged proof (the worst: only a liar sends one), a malformed answer, or a
    chunk still missing after it was offered back. Declining an address the auditor ranks the peer close to is a refusal.
    A first-time missing chunk is offered back (a small mark against the peer).
    """
    kind, peer = challenge.kind, challenge.peer
    if len(answers) != len(challenge.addresses):
        return AuditReport(peer, kind, AuditOutcome.FAILED, (TrustEvent.AUDIT_FAILED,))
    proven = wrong = forged = declined = implausible = 0
    missing: list[bytes] = []
    still_missing = 0
    for address, answer in zip(challenge.addresses, answers, strict=True):
        if len(answer) == STORAGE_PROOF_BYTES:
            if answer == expected.get(address):
                proven += 1
            else:
                wrong += 1
                forged += address in expected
        elif answer == MISSING:
            missing.append(address)
            still_missing += address in challenge.owed
        elif answer == DECLINED:
            declined += 1
            implausible += address in challenge.close
        else:
            wrong += 1
    counts = {"proven": proven, "missing": len(missing), "wrong": wrong, "declined": declined}
    events: list[TrustEvent] = []
    if wrong or still_missing:
        events.append(TrustEvent.PROOF_FORGED if forged else TrustEvent.AUDIT_FAILED)
        outcome = AuditOutcome.FAILED
    elif missing:
        events.append(TrustEvent.CHUNK_MISSING)
        outcome = AuditOutcome.INCOMPLETE
    elif implausible:
        outcome = AuditOutcome.REFUSED
    else:
        outcome = AuditOutcome.PASSED
        if proven:
            events.append(TrustEvent.AUDIT_PASSED)
    if implausible:
        events.append(TrustEvent.CHECK_REFUSED)
    return AuditReport(peer, kind, outcome, tuple(events), tuple(missing), **counts)


_NO_EVIDENCE: Final = frozenset({ErrorCode.BUSY, ErrorCode.INTERNAL})


def judge_error(challenge: Challenge, code: ErrorCode | None) -> AuditReport:
    """The peer answered ``Error(code)``, or nothing (``code`` None: timeout, unreachable).
    Busy, internal (also what a stream reset by a peer shutting down reads as) or no
    answer is no evidence; any other refusal is."""
    if code is None or code in _NO_EVIDENCE:
        return AuditReport(challenge.peer, challenge.kind, AuditOutcome.UNANSWERED)
    return AuditReport(
        challenge.peer, challenge.kind, AuditOutcome.REFUSED, (TrustEvent.CHECK_REFUSED,)
    )


class AuditPlanner:
    """When to challenge whom about what (see the module docstring).

    The owner tells it which peers it knows (``peer_joined``/``peer_left``) and which
    chunks were stored (``chunk_stored``); when ``wants_held(now)`` it calls
    ``plan(now, held, peers)`` with the chunks it holds as responsible (when only
    ``has_checks(now)``, ``plan(now, None, peers)``), sends the challenges returned,
    and reports each answer to ``done``.
    """

    def __init__(
        self,
        own_id: bytes,
        *,
        interval: float = DEFAULT_AUDIT_INTERVAL,
        possession_delay: float | None = None,
        grace: float | None = None,
        rng: random.Random | None = None,
        make_nonce: Callable[[], bytes] = lambda: secrets.token_bytes(CHALLENGE_NONCE_BYTES),
        addresses_per_second: float = CHALLENGED_PER_SECOND,
    ) -> None:
        self.own_id = own_id
        self._budget = TokenBucket(addresses_per_second, CHALLENGE_BURST)
        """Addresses this node may still challenge: the auditor's side of the cost bound."""
        self.interval = interval
        self.possession_delay = (
            min(POSSESSION_DELAY, interval / 2) if possession_delay is None else possession_delay
        )
        self.grace = 2 * interval if grace is None else grace
        """A newcomer is not challenged for this long after it joined."""
        self.rng = rng if rng is not None else random.SystemRandom()
        self.make_nonce = make_nonce
        self._joined: dict[bytes, float] = {}
        self._next_audit: dict[bytes, float] = {}
        self._stored: dict[bytes, float] = {}
        """Chunks waiting for their possession check: when it is due."""
        self._backlog: dict[bytes, set[bytes]] = {}
        """Per peer: chunks whose possession check is due."""
        self._owed: dict[bytes, dict[bytes, float]] = {}
        """Per peer: chunks it answered missing and was offered, with when to check again."""
        self._in_flight: dict[bytes, float] = {}
        """Peers with a challenge out, and since when (one lost on the way is forgotten
        after ``IN_FLIGHT_SECONDS``: the peer is challenged again)."""

    # -- what the owner tells it ----------------------------------------------------

    def peer_joined(self, peer: bytes, now: float) -> None:
        if peer in self._joined:
            return
        self._joined[peer] = now
        self._next_audit[peer] = now + self.grace + self.rng.uniform(0, self.interval)

    def peer_left(self, peer: bytes) -> None:
        """Forget a peer that left (or was shunned): a returning peer is a newcomer again."""
        self._joined.pop(peer, None)
        self._next_audit.pop(peer, None)
        self._backlog.pop(peer, None)
        self._owed.pop(peer, None)

    def chunk_stored(self, address: bytes, now: float) -> None:
        """A chunk was stored here (a PUT or a repair): check its close group later."""
        self._stored.setdefault(address, now + self.possession_delay)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Possession checks not yet sent (stored chunks and per-peer backlogs)."""
        return len(self._stored) + sum(len(b) for b in self._backlog.values())

    def wants_held(self, now: float) -> bool:
        """An audit is due (within the budget): call ``plan`` with the held chunks."""
        if self._budget.available(now) < 1:
            return False
        return any(due <= now and self._ready(peer, now) for peer, due in self._next_audit.items())

    def has_checks(self, now: float) -> bool:
        """Possession checks are due (within the budget): call ``plan``; the held chunks
        are not needed for them (``held=None``)."""
        if self._budget.available(now) < 1:
            return False
        if any(due <= now for due in self._stored.values()) or any(self._backlog.values()):
            return True
        return any(due <= now for owed in self._owed.values() for due in owed.values())

    # -- planning -------------------------------------------------------------------

    def plan(
        self, now: float, held: Sequence[bytes] | None, peers: Iterable[bytes]
    ) -> list[Challenge]:
        """The challenges to send now, at most one in flight per peer; audits only when
        ``held`` (the chunks held as responsible) is given."""
        known = [p for p in peers if p != self.own_id]
        self._queue_possession_checks(now, known)
        ready = {p for p in known if self._ready(p, now)}
        challenges: list[Challenge] = []
        for peer in sorted(ready):  # possession checks (and owed chunks) first
            room = int(min(self._budget.available(now), MAX_CHALLENGE_ADDRESSES))
            if room < 1:
                break
            addresses = self._take_backlog(peer, now, room)
            if addresses:
                self._budget.take(len(addresses), now)
                challenges.append(
                    self._challenge(peer, addresses, ChallengeKind.POSSESSION, known, now)
                )
        ready -= {c.peer for c in challenges}
        due = [p for p in ready if self._next_audit.get(p, float("inf")) <= now]
        if due and held is not None:
            shared = offers(held, self.own_id, known, only_to=due)
            for peer in due:
                mine = shared.get(peer, [])
                count = sample_size(len(mine))
                if count and not self._budget.take(count, now):
                    continue  # over the budget: still due, audited on a later plan
                self._next_audit[peer] = now + self.interval * self.rng.uniform(0.5, 1.5)
                if not mine:
                    continue
                sample = self.rng.sample(mine, count)
                challenges.append(self._challenge(peer, sample, ChallengeKind.AUDIT, known, now))
        return challenges

    def done(self, report: AuditReport, now: float) -> None:
        """The answer to a challenge was judged: remember what was offered back."""
        self._in_flight.pop(report.peer, None)
        if report.offer_back and report.peer in self._joined:
            owed = self._owed.setdefault(report.peer, {})
            due = now + max(self.possession_delay, REFETCH_SECONDS)
            for address in report.offer_back:
                owed.setdefault(address, due)  # an earlier due stands

    def failed(self, peer: bytes) -> None:
        """A challenge could not be sent (e.g. the auditor's own copies were all bad)."""
        self._in_flight.pop(peer, None)

    def _ready(self, peer: bytes, now: float) -> bool:
        joined = self._joined.get(peer)
        if joined is None or now - joined < self.grace:
            return False
        since = self._in_flight.get(peer)
        return since is None or now - since >= IN_FLIGHT_SECONDS

    def _queue_possession_checks(self, now: float, known: list[bytes]) -> None:
        due = [a for a, at in self._stored.items() if at <= now]
        if not due:
            return
        for address in due:
            del self._stored[address]
        group = offers(due, self.own_id, known)
        for peer, addresses in group.items():
            if peer not in self._joined:
                continue
            for address in addresses:
                if self._leads(address, known):
                    self._backlog.setdefault(peer, set()).add(address)
            backlog = self._backlog.get(peer)
            if backlog is not None and len(backlog) > MAX_BACKLOG_PER_PEER:
                for dropped in self.rng.sample(
                    sorted(backlog), len(backlog) - MAX_BACKLOG_PER_PEER
                ):
                    backlog.discard(dropped)

    def _leads(self, address: bytes, known: list[bytes]) -> bool:
        """This node is the closest of the chunk's close group: it checks the others."""
        return closest(address, [self.own_id, *known], 1) == [self.own_id]

    def _take_backlog(self, peer: bytes, now: float, limit: int) -> list[bytes]:
        """Up to ``limit`` of the peer's due possession checks, owed chunks first."""
        owed = self._owed.get(peer, {})
        picked = [a for a, due in owed.items() if due <= now][:limit]
        backlog = self._backlog.get(peer, set())
        room = limit - len(picked)
        if backlog and room > 0:
            chosen = self.rng.sample(sorted(backlog), min(room, len(backlog)))
            backlog.difference_update(chosen)
            picked += [a for a in chosen if a not in picked]
        if not backlog:
            self._backlog.pop(peer, None)
        return picked

    def _challenge(
        self,
        peer: bytes,
        addresses: Sequence[bytes],
        kind: ChallengeKind,
        known: list[bytes],
        now: float,
    ) -> Challenge:
        self._in_flight[peer] = now
        owed_now = self._owed.get(peer, {})
        # Only an owed chunk whose time to arrive is up is held against the peer: an audit
        # that samples it sooner is an ordinary one (its offer may still be on the way).
        owed = frozenset(a for a in addresses if a in owed_now and owed_now[a] <= now)
        for address in owed:
            del owed_now[address]
        members = [self.own_id, *known]
        close = frozenset(
            a for a in addresses if peer in closest(a, members, PLAUSIBLE_DECLINE_RANK)
        )
        return Challenge(peer, self.make_nonce(), tuple(addresses), kind, owed, close)


# --- the answering side -------------------------------------------------------------


class Refusal(enum.Enum):
    MALFORMED = "malformed"
    BUSY = "busy"
    REPLAYED = "replayed"
    NOT_RESPONSIBLE = "not_responsible"


REFUSAL_ERRORS: Final[dict[Refusal, tuple[ErrorCode, str]]] = {
    Refusal.MALFORMED: (ErrorCode.MALFORMED, "a storage challenge names an address twice"),
    Refusal.BUSY: (ErrorCode.BUSY, "too many storage challenges: try again later"),
    Refusal.REPLAYED: (ErrorCode.REPLAYED, "this storage challenge's nonce was used before"),
    Refusal.NOT_RESPONSIBLE: (
        ErrorCode.NOT_RESPONSIBLE,
        "none of the challenged chunks is held by or the responsibility of this node",
    ),
}


@dataclass(frozen=True)
class GateLimits:
    """What answering challenges may cost: bytes to hash per second and at once."""

    per_peer_bytes_per_second: float = 4 * 1024 * 1024
    per_peer_burst_bytes: float = MAX_CHALLENGE_ADDRESSES * 4 * 1024 * 1024 + 16 * 1024 * 1024
    total_bytes_per_second: float = 16 * 1024 * 1024
    total_burst_bytes: float = 1024 * 1024 * 1024
    bytes_per_challenge: int = 1024 * 1024
    """Charged for each challenge on top of its chunks, so floods of cheap ones are bounded."""
    nonce_memory: int = 100_000
    nonce_seconds: float = 3600.0
    max_peers: int = 4096
    """Challengers whose budgets are remembered (the least recent are forgotten)."""


class ChallengeGate:
    """Decides whether to answer an inbound challenge, cheapest checks first."""

    def __init__(self, limits: GateLimits | None = None) -> None:
        self.limits = limits or GateLimits()
        self._total = TokenBucket(self.limits.total_bytes_per_second, self.limits.total_burst_bytes)
        self._peers: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self.refused: dict[str, int] = {r.value: 0 for r in Refusal}
        self.answered = 0

    def admit(
        self,
        challenger: bytes,
        nonce: bytes,
        addresses: Sequence[bytes],
        sizes: Mapping[bytes, int],
        responsible: Container[bytes],
        now: float,
    ) -> Refusal | None:
        """None: answer it. ``sizes``: the held chunks among ``addresses`` and their sizes;
        ``responsible``: the addresses this node is responsible for."""
        if len(set(addresses)) != len(addresses) or len(nonce) != CHALLENGE_NONCE_BYTES:
            return self._refuse(Refusal.MALFORMED)
        cost = self.limits.bytes_per_challenge + sum(sizes.values())
        bucket = self._bucket(challenger)
        if bucket.available(now) < cost or self._total.available(now) < cost:
            return self._refuse(Refusal.BUSY)
        self._forget_nonces(now)
        if nonce in self._nonces:
            return self._refuse(Refusal.REPLAYED)
        if not sizes and not any(a in responsible for a in addresses):
            return self._refuse(Refusal.NOT_RESPONSIBLE)
        bucket.take(cost, now)
        self._total.take(cost, now)
        self._nonces[nonce] = now
        self.answered += 1
        return None

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.refused[refusal.value] += 1
        return refusal

    def _bucket(self, challenger: bytes) -> TokenBucket:
        bucket = self._peers.get(challenger)
        if bucket is None:
            limits = self.limits
            bucket = TokenBucket(limits.per_peer_bytes_per_second, limits.per_peer_burst_bytes)
            self._peers[challenger] = bucket
            if len(self._peers) > limits.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(challenger)
        return bucket

    def _forget_nonces(self, now: float) -> None:
        nonces = self._nonces
        while nonces and (
            len(nonces) >= self.limits.nonce_memory
            or next(iter(nonces.values())) < now - self.limits.nonce_seconds
        ):
            nonces.popitem(last=False)


def answer(
    nonce: bytes,
    own_id: bytes,
    addresses: Sequence[bytes],
    content_of: Callable[[bytes], bytes | None],
    responsible: Container[bytes],
) -> list[bytes]:
    """This node's answers: a proof for each chunk it holds intact (``content_of`` returns
    its checked bytes, else None), ``MISSING`` for one it should hold, ``DECLINED`` else."""
    answers: list[bytes] = []
    for address in addresses:
        content = content_of(address)
        if content is not None:
            answers.append(storage_proof(nonce, own_id, address, content))
        elif address in responsible:
            answers.append(MISSING)
        else:
            answers.append(DECLINED)
    return answers
