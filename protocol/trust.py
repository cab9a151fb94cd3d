"""How far this node trusts each peer to keep what it holds, and whom it shuns.

Each peer has a score, 0 for a peer nothing is known about. Evidence moves it
(``WEIGHTS``): a passed storage audit raises it, a chunk found missing lowers it a
little (an honest node can lose a disk; the chunk is offered back to it), a failed
audit (a wrong proof, or a chunk still missing after it was offered back), a refused
check or wrong bytes served lower it more. Scores decay towards 0 with a half-life,
so old evidence fades, and good behaviour cannot be banked past ``MAX_SCORE``.

A peer whose score falls to ``SHUN_THRESHOLD`` or below is *shunned* for
``SHUN_SECONDS``: out of the routing table and the close groups this node computes.
Only evidence moves a score: a peer that is slow, restarting or unreachable gives
none (the auditor counts such a check as unanswered), and a newcomer is not audited
while it is still fetching what it is responsible for (``protocol.audit``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final


class TrustEvent(enum.Enum):
    AUDIT_PASSED = "audit_passed"
    CHUNK_MISSING = "chunk_missing"
    """The peer answered "not held" for a chunk it should hold (first time)."""
    AUDIT_FAILED = "audit_failed"
    """A malformed answer, or a chunk still missing after it was offered back."""
    PROOF_FORGED = "proof_forged"
    """A proof that does not match the chunk: an honest node checks its bytes before it
    answers and says "missing" when they are bad, so only a liar sends one."""
    CHECK_REFUSED = "check_refused"
    """The peer refused a storage check (other than "busy")."""
    WRONG_BYTES = "wrong_bytes"
    """The peer served bytes that do not hash to the chunk's address."""


WEIGHTS: Final[dict[TrustEvent, float]] = {
    TrustEvent.AUDIT_PASSED: 1.0,
    TrustEvent.CHUNK_MISSING: -1.0,
    TrustEvent.AUDIT_FAILED: -5.0,
    TrustEvent.PROOF_FORGED: -12.0,
    TrustEvent.CHECK_REFUSED: -2.0,
    TrustEvent.WRONG_BYTES: -5.0,
}
MAX_SCORE: Final = 5.0
SHUN_THRESHOLD: Final = -5.5
"""A missing chunk then a failed audit (or three refusals) shun a peer; one slip does not;
a forged proof does at once, whatever the peer's trust. Not -6.0 (the sum of the
weights): the failure comes a possession delay after the missing chunk, and by then the
-1 has decayed a little, which would never reach -6."""
HALF_LIFE_SECONDS: Final = 3600.0
SHUN_SECONDS: Final = 24 * 3600.0


@dataclass(slots=True)
class PeerTrust:
    """What is known of one peer; ``score`` as of ``updated_at`` (it decays after)."""

    peer_id: bytes
    score: float = 0.0
    updated_at: float = 0.0
    passed: int = 0
    failed: int = 0
    shunned_until: float | None = None


def decayed(score: float, elapsed: float, half_life: float = HALF_LIFE_SECONDS) -> float:
    """``score`` after ``elapsed`` seconds of decay towards 0."""
    if elapsed <= 0:
        return score
    return float(score * 0.5 ** (elapsed / half_life))


class TrustBook:
    """Trust of every peer with evidence; ``record`` returns True when it shuns a peer."""

    def __init__(self, half_life: float = HALF_LIFE_SECONDS, shun_seconds: float = SHUN_SECONDS):
        self.half_life = half_life
        self.shun_seconds = shun_seconds
        self._peers: dict[bytes, PeerTrust] = {}
        self._dirty: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._peers)

    def load(self, records: Iterable[PeerTrust]) -> None:
        """Take what was persisted (before any new evidence)."""
        for record in records:
            self._peers[record.peer_id] = record

    def record(self, peer_id: bytes, event: TrustEvent, now: float) -> bool:
        """Apply one piece of evidence; True if the peer became shunned by it."""
        trust = self._peers.get(peer_id)
        if trust is None:
            trust = self._peers[peer_id] = PeerTrust(peer_id, updated_at=now)
        trust.score = min(MAX_SCORE, self.score(peer_id, now) + WEIGHTS[event])
        trust.updated_at = now
        if event is TrustEvent.AUDIT_PASSED:
            trust.passed += 1
        elif event is not TrustEvent.CHUNK_MISSING:
            trust.failed += 1
        self._dirty.add(peer_id)
        if trust.score <= SHUN_THRESHOLD and not self.is_shunned(peer_id, now):
            trust.shunned_until = now + self.shun_seconds
            return True
        return False

    def score(self, peer_id: bytes, now: float) -> float:
        trust = self._peers.get(peer_id)
        if trust is None:
            return 0.0
        return decayed(trust.score, now - trust.updated_at, self.half_life)

    def is_shunned(self, peer_id: bytes, now: float) -> bool:
        trust = self._peers.get(peer_id)
        return trust is not None and trust.shunned_until is not None and now < trust.shunned_until

    def shunned(self, now: float) -> dict[bytes, float]:
        """Every peer shunned at ``now``, with when its shunning ends."""
        return {
            p: t.shunned_until
            for p, t in self._peers.items()
            if t.shunned_until is not None and now < t.shunned_until
        }

    def peers(self) -> list[PeerTrust]:
        return list(self._peers.values())

    def take_changed(self) -> list[PeerTrust]:
        """The records changed since the last call (to persist them)."""
        changed = [self._peers[p] for p in self._dirty if p in self._peers]
        self._dirty.clear()
        return changed

    def forget_faded(self, now: float, below: float = 0.05) -> list[bytes]:
        """Drop peers whose score has faded to about 0 and who are not shunned; their ids."""
        faded = [
            p
            for p, t in self._peers.items()
            if abs(self.score(p, now)) < below and not self.is_shunned(p, now)
        ]
        for peer_id in faded:
            del self._peers[peer_id]
            self._dirty.discard(peer_id)
        return faded
