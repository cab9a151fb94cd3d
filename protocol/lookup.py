"""Iterative FIND_NODE lookup as a pure state machine.

The owner drives it::

    lookup = Lookup(own_id, target, table.closest(target), now=now)
    for contact in lookup.next_queries(now):      # send FindNode(target) to each
        ...
    lookup.on_reply(peer_id, reply.peers, now)    # a Nodes reply arrived
    lookup.on_failure(peer_id, now)               # the request failed
    # call next_queries(now) after every event, and again at next_timeout()
    if lookup.done:
        lookup.result()                           # the k closest that answered

Rules:

- candidates are queried strictly closest-first, and only while they rank among
  the ``k`` closest live candidates (failed peers are dropped from the ranking);
- at most ``alpha`` queries are outstanding, not counting *slow* ones: a query
  unanswered after ``query_timeout`` is marked slow and its slot goes to the next
  candidate; a late answer is still used. After ``give_up_after`` an unanswered
  query counts as failed even if the owner never calls ``on_failure``;
- the lookup is done when the ``k`` closest candidates have all answered (or no
  candidate is left);
- defences: replies from peers not queried (or already resolved) are ignored;
  only the first ``reply_scan_limit`` entries of a reply are read, entries with an
  invalid id, our own id or a duplicate id are dropped, and only the ``k`` closest
  to the target of what remains are kept; the shortlist holds at most
  ``shortlist_size`` candidates (the farthest are dropped). A reply of garbage or
  of far-away peers therefore cannot push a closer candidate aside.

``rounds`` is the length of the longest chain of dependent queries that were
answered: a query to a seed is round 1, a query to a peer first learnt from an
answer to a round-``r`` query is round ``r + 1`` (when several answers name the
same peer, the earliest round counts).
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from protocol.xor import ADDRESS_BYTES

ALPHA: Final = 3
K: Final = 20
CLOSE_GROUP_SIZE: Final = 5
QUERY_TIMEOUT: Final = 1.0
"""Seconds after which an unanswered query is slow and frees its slot."""
REPLY_SCAN_LIMIT: Final = 64
"""Entries read from one reply (the wire allows at most 64 anyway)."""
MAX_ADDRS: Final = 8


class PeerLike(Protocol):
    """Anything with a peer id and its multiaddrs: ``wire.PeerRecord``,
    ``routing.PeerEntry``, ``Contact``."""

    @property
    def peer_id(self) -> bytes: ...

    @property
    def addrs(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Contact:
    """A peer to query or a member of the result."""

    peer_id: bytes
    addrs: tuple[str, ...] = ()


class _State(enum.Enum):
    FRESH = "fresh"
    WAITING = "waiting"
    SLOW = "slow"
    ANSWERED = "answered"


@dataclass(slots=True)
class _Candidate:
    contact: Contact
    distance: int
    depth: int
    """Round of the query whose answer first named this peer (0 for a seed)."""
    state: _State = _State.FRESH
    sent_at: float = 0.0
    attempts: int = 0


class Lookup:
    """Find the ``k`` peers closest to ``target``. See the module docstring."""

    def __init__(
        self,
        own_id: bytes,
        target: bytes,
        seeds: Iterable[PeerLike],
        *,
        alpha: int = ALPHA,
        k: int = K,
        query_timeout: float = QUERY_TIMEOUT,
        give_up_after: float | None = None,
        retries: int = 0,
        shortlist_size: int | None = None,
        reply_scan_limit: int = REPLY_SCAN_LIMIT,
        now: float,
    ) -> None:
        if len(target) != ADDRESS_BYTES or len(own_id) != ADDRESS_BYTES:
            raise ValueError(f"ids are {ADDRESS_BYTES} bytes")
        if alpha < 1 or k < 1 or retries < 0:
            raise ValueError("alpha and k must be at least 1, retries at least 0")
        self.own_id = own_id
        self.target = target
        self.alpha = alpha
        self.k = k
        self.query_timeout = query_timeout
        self.give_up_after = 5 * query_timeout if give_up_after is None else give_up_after
        self.retries = retries
        self.shortlist_size = max(k, 4 * k if shortlist_size is None else shortlist_size)
        self.reply_scan_limit = reply_scan_limit
        self.started_at = now
        self.finished_at: float | None = None
        """When ``done`` first became true."""
        self.rounds = 0
        self.messages_sent = 0
        self.replies = 0
        self.failures = 0
        self._target_int = int.from_bytes(target, "big")
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []
        """(distance, peer id) of every live candidate, closest first."""
        self._in_flight: dict[bytes, _Candidate] = {}
        self._queried: set[bytes] = set()
        self._done = False
        self._add(self._clean(seeds, limit=None), depth=0)
        self._update_done(now)

    # --- state ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the ``k`` closest candidates have all answered (it stays true)."""
        return self._done

    @property
    def in_flight(self) -> int:
        """Queries sent and not yet resolved (slow ones included)."""
        return len(self._in_flight)

    def result(self) -> list[Contact]:
        """The ``k`` closest peers that answered, closest first."""
        found: list[Contact] = []
        for _, peer_id in self._order:
            candidate = self._candidates[peer_id]
            if candidate.state is _State.ANSWERED:
                found.append(candidate.contact)
                if len(found) == self.k:
                    break
        return found

    def close_group(self, size: int = CLOSE_GROUP_SIZE, include_self: bool = True) -> list[bytes]:
        """The ``size`` ids closest to the target among those that answered, and the
        own id when ``include_self`` (a node belongs to the close groups it is in).
        Run the lookup with the default ``k`` (larger than ``size``) for an exact
        answer: the margin absorbs peers that fail or answer late."""
        ids = [c.peer_id for c in self.result()]
        if include_self:
            ids.append(self.own_id)
        t = self._target_int
        return heapq.nsmallest(size, ids, key=lambda p: int.from_bytes(p, "big") ^ t)

    def next_timeout(self) -> float | None:
        """When ``next_queries`` should be called again if nothing else happens."""
        if self._done or not self._in_flight:
            return None
        moments = [
            c.sent_at + (self.query_timeout if c.state is _State.WAITING else self.give_up_after)
            for c in self._in_flight.values()
        ]
        return min(moments)

    # --- events --------------------------------------------------------------------

    def next_queries(self, now: float) -> list[Contact]:
        """Peers to send ``FindNode(target)`` to now (may be empty)."""
        self._expire(now)
        if self._done:
            return []
        active = sum(1 for c in self._in_flight.values() if c.state is _State.WAITING)
        out: list[Contact] = []
        for _, peer_id in itertools.islice(self._order, self.k):
            if active >= self.alpha:
                break
            candidate = self._candidates[peer_id]
            if candidate.state is _State.FRESH:
                candidate.state = _State.WAITING
                candidate.sent_at = now
                candidate.attempts += 1
                self._in_flight[peer_id] = candidate
                self._queried.add(peer_id)
                self.messages_sent += 1
                active += 1
                out.append(candidate.contact)
        self._update_done(now)
        return out

    def on_reply(self, peer_id: bytes, peers: Iterable[PeerLike], now: float) -> bool:
        """``peer_id`` answered with ``peers``. Returns False if the reply was ignored
        (not queried, already resolved, or the lookup is done)."""
        candidate = self._in_flight.pop(peer_id, None)
        if candidate is None or self._done:
            return False
        candidate.state = _State.ANSWERED
        self.replies += 1
        depth = candidate.depth + 1
        self.rounds = max(self.rounds, depth)
        self._add(self._clean(peers, limit=self.reply_scan_limit), depth=depth)
        self._update_done(now)
        return True

    def on_failure(self, peer_id: bytes, now: float) -> bool:
        """The query to ``peer_id`` failed. Returns False if it was not outstanding."""
        candidate = self._in_flight.pop(peer_id, None)
        if candidate is None or self._done:
            return False
        self._fail(candidate)
        self._update_done(now)
        return True

    # --- internals -----------------------------------------------------------------

    def _clean(self, peers: Iterable[PeerLike], limit: int | None) -> list[tuple[int, Contact]]:
        """Valid, distinct, not-own entries, at most ``k`` of them, closest first."""
        seen: dict[bytes, tuple[int, Contact]] = {}
        t = self._target_int
        try:
            entries = peers if limit is None else itertools.islice(peers, limit)
            for entry in entries:
                peer_id = getattr(entry, "peer_id", None)
                if not isinstance(peer_id, bytes) or len(peer_id) != ADDRESS_BYTES:
                    continue
                if peer_id == self.own_id or peer_id in seen:
                    continue
                seen[peer_id] = (
                    int.from_bytes(peer_id, "big") ^ t,
                    Contact(peer_id, _clean_addrs(getattr(entry, "addrs", ()))),
                )
        except TypeError:
            pass  # not iterable: keep what was read
        cleaned = list(seen.values())
        if limit is None:
            cleaned.sort(key=lambda item: item[0])
            return cleaned
        return heapq.nsmallest(self.k, cleaned, key=lambda item: item[0])

    def _add(self, cleaned: list[tuple[int, Contact]], depth: int) -> None:
        for distance, contact in cleaned:
            known = self._candidates.get(contact.peer_id)
            if known is not None:
                known.depth = min(known.depth, depth)
                if not known.contact.addrs and contact.addrs:
                    known.contact = contact
                continue
            if contact.peer_id in self._queried:
                continue  # failed, or dropped from the shortlist after it was queried
            if len(self._order) >= self.shortlist_size and distance > self._order[-1][0]:
                continue
            self._candidates[contact.peer_id] = _Candidate(contact, distance, depth)
            bisect.insort(self._order, (distance, contact.peer_id))
        while len(self._order) > self.shortlist_size:
            _, dropped = self._order.pop()
            del self._candidates[dropped]  # an in-flight query can still be answered

    def _fail(self, candidate: _Candidate) -> None:
        self.failures += 1
        if candidate.attempts <= self.retries:
            candidate.state = _State.FRESH
            return
        peer_id = candidate.contact.peer_id
        if self._candidates.pop(peer_id, None) is not None:
            index = bisect.bisect_left(self._order, (candidate.distance, peer_id))
            del self._order[index]

    def _expire(self, now: float) -> None:
        for peer_id, candidate in list(self._in_flight.items()):
            waited = now - candidate.sent_at
            if waited >= self.give_up_after:
                del self._in_flight[peer_id]
                self._fail(candidate)
            elif waited >= self.query_timeout and candidate.state is _State.WAITING:
                candidate.state = _State.SLOW

    def _update_done(self, now: float) -> None:
        if self._done:
            return
        for _, peer_id in itertools.islice(self._order, self.k):
            if self._candidates[peer_id].state is not _State.ANSWERED:
                return
        self._done = True
        self.finished_at = now
        self._in_flight.clear()


def _clean_addrs(addrs: object) -> tuple[str, ...]:
    if isinstance(addrs, str) or not isinstance(addrs, Sequence):
        return ()
    return tuple(a for a in addrs[:MAX_ADDRS] if isinstance(a, str))
