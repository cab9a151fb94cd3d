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
- at most ``alpha`` queries are outstanding (``k`` once the lookup is *stalled*:
  ``alpha`` answers in a row named no peer closer than the closest known, as in
  the Kademlia paper's final phase), not counting *slow* ones: a query
  unanswered after ``query_timeout`` is marked slow and its slot goes to the next
  candidate; a late answer is still used. After ``give_up_after`` an unanswered
  query counts as failed even if the owner never calls ``on_failure``;
- the lookup is done when the ``k`` closest candidates have all answered (or no
  candidate is left);
- defences: replies from peers not queried (or already resolved) are ignored;
  only the first ``reply_scan_limit`` entries of a reply are read; entries with
  an invalid id, our own id or a duplicate id are dropped, and only the ``k``
  closest to the target of what remains are kept. The shortlist is bounded
  (``_trim``: the ``shortlist_size`` closest candidates not yet answered, as many
  farther corroborated ones, and those that answered). A reply of garbage or of
  far-away peers therefore cannot push a closer candidate aside. A responder
  that named ``distrust_after`` peers that then failed (invented ids close to
  the target, say) is distrusted: the candidates only it named and not yet
  asked are forgotten and its later answers ignored (it still counts as having
  answered).
- shunned peers: ``skip`` names peers never to take (the owner shuns them), and a
  peer that ``shun_reports`` responders report shunned (``Nodes.shunned``: it
  failed their storage audits) is dropped, even from the result. One responder
  alone cannot exclude an honest peer.

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

from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.routing import K
from protocol.wire import MAX_ADDRS_PER_PEER
from protocol.xor import ADDRESS_BYTES, closest

ALPHA: Final = 3
SLOW_QUERY_SECONDS: Final = 1.0
"""Seconds after which an unanswered query is slow and frees its slot."""
FIND_NODE_TIMEOUT: Final = 5.0
"""Seconds a FIND_NODE request may take before the owner reports it failed."""
REPLY_SCAN_LIMIT: Final = 64
"""Entries read from one reply (the wire allows at most 64 anyway)."""
MAX_ADDRS: Final = MAX_ADDRS_PER_PEER
DISTRUST_AFTER: Final = 3
"""Failed peers a responder may name before its answers are ignored."""
SHUN_REPORTS: Final = 2
"""Responders that must report a peer shunned before the lookup drops it."""


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
    sources: tuple[bytes, ...] = ()
    """The peers whose answers named this one (empty for a seed)."""
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
        query_timeout: float = SLOW_QUERY_SECONDS,
        give_up_after: float | None = None,
        retries: int = 0,
        shortlist_size: int | None = None,
        reply_scan_limit: int = REPLY_SCAN_LIMIT,
        distrust_after: int = DISTRUST_AFTER,
        skip: Iterable[bytes] = (),
        shun_reports: int = SHUN_REPORTS,
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
        self.distrust_after = distrust_after
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
        self._bad_introductions: dict[bytes, int] = {}
        self._distrusted: set[bytes] = set()
        self._skipped: set[bytes] = set(skip)
        self._shun_reports: dict[bytes, set[bytes]] = {}
        self.shun_reports = shun_reports
        self._done = False
        self._no_progress = 0
        self._add(self._clean(seeds, limit=None), depth=0, source=None)
        self._update_done(now)

    # --- state ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the ``k`` closest candidates have all answered (it stays true)."""
        return self._done

    @property
    def stalled(self) -> bool:
        """``alpha`` answers in a row brought no closer peer: the remaining candidates
        among the ``k`` closest are queried all at once (up to ``k`` outstanding)."""
        return self._no_progress >= self.alpha

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
        return closest(self.target, ids, size)

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
        limit = self.k if self.stalled else self.alpha
        out: list[Contact] = []
        for _, peer_id in itertools.islice(self._order, self.k):
            if active >= limit:
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

    def on_reply(
        self,
        peer_id: bytes,
        peers: Iterable[PeerLike],
        now: float,
        shunned: Iterable[bytes] = (),
    ) -> bool:
        """``peer_id`` answered with ``peers`` (and the peers it shuns). Returns False if
        the reply was ignored (not queried, already resolved, or the lookup is done)."""
        candidate = self._in_flight.pop(peer_id, None)
        if candidate is None or self._done:
            return False
        if peer_id not in self._distrusted:
            self._note_shunned(peer_id, shunned)
        candidate.state = _State.ANSWERED
        self.replies += 1
        depth = candidate.depth + 1
        self.rounds = max(self.rounds, depth)
        order = self._order
        closest_before = order[0][0] if order else None
        short_before = len(order) < self.k
        if peer_id not in self._distrusted:
            self._add(self._clean(peers, limit=self.reply_scan_limit), depth, source=peer_id)
        progress = bool(order) and (
            closest_before is None or order[0][0] < closest_before or short_before
        )
        self._no_progress = 0 if progress else self._no_progress + 1
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

    @property
    def skipped(self) -> frozenset[bytes]:
        """Peers left out because they are shunned."""
        return frozenset(self._skipped)

    # --- internals -----------------------------------------------------------------

    def _note_shunned(self, responder: bytes, shunned: Iterable[bytes]) -> None:
        for peer_id in itertools.islice(shunned, self.reply_scan_limit):
            if type(peer_id) is not bytes or peer_id in self._skipped:
                continue
            reporters = self._shun_reports.setdefault(peer_id, set())
            reporters.add(responder)
            # a responder distrusted since its report no longer vouches for it
            if len(reporters - self._distrusted) >= self.shun_reports:
                self._skipped.add(peer_id)
                self._in_flight.pop(peer_id, None)
                candidate = self._candidates.get(peer_id)
                if candidate is not None:
                    self._drop(candidate)

    def _clean(
        self, peers: Iterable[PeerLike], limit: int | None
    ) -> list[tuple[int, bytes, PeerLike]]:
        """(distance, id, entry) of valid, distinct, not-own entries, closest first;
        at most ``k`` of them when ``limit`` is set (a reply), all for the seeds."""
        seen: set[bytes] = set()
        cleaned: list[tuple[int, bytes, PeerLike]] = []
        t = self._target_int
        own = self.own_id
        try:
            entries = peers if limit is None else itertools.islice(peers, limit)
            for entry in entries:
                peer_id = getattr(entry, "peer_id", None)
                if type(peer_id) is not bytes or len(peer_id) != ADDRESS_BYTES:
                    continue
                if peer_id == own or peer_id in seen or peer_id in self._skipped:
                    continue
                seen.add(peer_id)
                cleaned.append((int.from_bytes(peer_id, "big") ^ t, peer_id, entry))
        except TypeError:
            pass  # not iterable: keep what was read
        if limit is None or len(cleaned) <= self.k:
            cleaned.sort(key=_first)
            return cleaned
        return heapq.nsmallest(self.k, cleaned, key=_first)

    def _add(
        self, cleaned: list[tuple[int, bytes, PeerLike]], depth: int, source: bytes | None
    ) -> None:
        candidates = self._candidates
        order = self._order
        sources = () if source is None else (source,)
        for distance, peer_id, entry in cleaned:
            known = candidates.get(peer_id)
            if known is not None:
                known.depth = min(known.depth, depth)
                if known.sources and source is not None and source not in known.sources:
                    known.sources += sources
                elif source is None:
                    known.sources = ()  # a seed is trusted whoever else named it
                if not known.contact.addrs:
                    addrs = _clean_addrs(getattr(entry, "addrs", ()))
                    if addrs:
                        known.contact = Contact(peer_id, addrs)
                continue
            if peer_id in self._queried:
                continue  # failed, or dropped from the shortlist after it was queried
            if len(order) >= self.shortlist_size and distance > order[-1][0]:
                continue
            contact = Contact(peer_id, _clean_addrs(getattr(entry, "addrs", ())))
            candidates[peer_id] = _Candidate(contact, distance, depth, sources)
            bisect.insort(order, (distance, peer_id))
        if len(order) > self.shortlist_size:
            self._trim()

    def _trim(self) -> None:
        """Bound the shortlist: keep the ``shortlist_size`` closest candidates not yet
        answered, plus up to as many farther ones that are corroborated (seeds, or
        named by two or more responders), plus every one that answered (bounded by
        the queries sent; the result is made of them). Invented ids from one liar
        thus cannot push well-known real peers out. An in-flight query whose peer
        is dropped can still be answered."""
        order = self._order
        kept: list[tuple[int, bytes]] = []
        near = corroborated = 0
        for item in order:
            candidate = self._candidates[item[1]]
            if candidate.state is _State.ANSWERED:
                kept.append(item)
            elif near < self.shortlist_size:
                near += 1
                kept.append(item)
            elif corroborated < self.shortlist_size and len(candidate.sources) != 1:
                corroborated += 1
                kept.append(item)
            else:
                del self._candidates[item[1]]
        order[:] = kept

    def _fail(self, candidate: _Candidate) -> None:
        self.failures += 1
        if candidate.attempts <= self.retries:
            candidate.state = _State.FRESH
            return
        self._drop(candidate)
        for source in candidate.sources:
            bad = self._bad_introductions.get(source, 0) + 1
            self._bad_introductions[source] = bad
            if bad >= self.distrust_after and source not in self._distrusted:
                self._distrust(source)

    def _distrust(self, source: bytes) -> None:
        """``source`` named ``distrust_after`` peers that failed: forget the peers only
        it named and not yet asked, and ignore what it says from now on."""
        self._distrusted.add(source)
        for peer_id in [p for _, p in self._order]:
            candidate = self._candidates[peer_id]
            if (
                candidate.state is _State.FRESH
                and candidate.sources
                and all(s in self._distrusted for s in candidate.sources)
            ):
                self._drop(candidate)

    def _drop(self, candidate: _Candidate) -> None:
        peer_id = candidate.contact.peer_id
        if self._candidates.get(peer_id) is candidate:
            del self._candidates[peer_id]
            index = bisect.bisect_left(self._order, (candidate.distance, peer_id))
            del self._order[index]

    def _expire(self, now: float) -> None:
        # Compare moments, not durations, so that next_timeout() is exact.
        for peer_id, candidate in list(self._in_flight.items()):
            if now >= candidate.sent_at + self.give_up_after:
                del self._in_flight[peer_id]
                self._fail(candidate)
            elif (
                candidate.state is _State.WAITING and now >= candidate.sent_at + self.query_timeout
            ):
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


def _first(item: tuple[int, bytes, PeerLike]) -> int:
    return item[0]


def _clean_addrs(addrs: object) -> tuple[str, ...]:
    """At most ``MAX_ADDRS`` strings of ``addrs``; anything else is dropped."""
    if type(addrs) is tuple or type(addrs) is list:
        items = addrs[:MAX_ADDRS]
        if all(type(a) is str for a in items):
            return tuple(items)
        return tuple(a for a in items if isinstance(a, str))
    return ()
