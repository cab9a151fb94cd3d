"""BucketManager: the routing table, iterative lookups, liveness, refresh, persistence.

The rules live in ``protocol.routing`` and ``protocol.lookup``; this actor feeds
them events and carries out what they ask. Remote calls go through a
``RemoteCalls`` (the Transport's handle) and come back into this mailbox through
``NotifyingFuture`` callbacks, so the actor never blocks on the network.

Only authenticated peers enter the table: peers named in a lookup reply are
merely candidates until a connection to them passes the identity handshake.

It publishes the table's immutable view (``on_view``) whenever the peers, their
addresses or the shunned peers change; the node answers ``FindNode`` from that view on
the transport's thread, so those requests never wait in this mailbox.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka

from actors.base import NodeActor
from actors.futures import Outcome, tell_when_done
from actors.messages import (
    AddressObserved,
    Event,
    FindClosest,
    PeerConnected,
    RoutingChanged,
    RoutingSnapshot,
    ShunPeer,
    StatusQuery,
    Tick,
)
from persistence.database import Database
from persistence.database import StoredPeer as PersistedPeer
from protocol.lookup import FIND_NODE_TIMEOUT, Contact, Lookup
from protocol.routing import (
    Added,
    Evicted,
    K,
    ObserveResult,
    PingNeeded,
    PingOutcome,
    RoutingTable,
    RoutingView,
    StoredPeer,
    Updated,
)
from protocol.wire import FindNode, Message, Nodes, Ping, Pong
from protocol.xor import BUCKET_COUNT, bucket_index, random_address_in_bucket

log = logging.getLogger(__name__)

PING_TIMEOUT = 3.0
SAVE_DEBOUNCE = 5.0
"""Seconds between two saves of the routing table at most."""


class RemoteCalls(Protocol):
    """What BucketManager needs of the Transport."""

    def request(
        self,
        peer_id: bytes,
        message: Message,
        timeout: float | None = None,
        addrs: Sequence[str] = (),
    ) -> pykka.Future[Message]: ...

    def dial(
        self, addr: str, expected_peer_id: bytes | None = None, timeout: float | None = None
    ) -> pykka.Future[bytes]: ...


@dataclass(frozen=True, slots=True)
class _QueryDone(Event):
    lookup_id: int
    peer_id: bytes
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _PingDone(Event):
    peer_id: bytes
    evict_check: bool
    """True: the ping-before-evict of a full bucket; False: a liveness check."""
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _Dialled(Event):
    addr: str
    outcome: Outcome[bytes]


@dataclass(frozen=True, slots=True)
class _Wake(Event):
    """A lookup query may have become slow: look again."""


@dataclass
class _Job:
    lookup: Lookup
    callbacks: list[Callable[[list[Contact]], None]] = field(default_factory=list)
    count: int = K
    purpose: str = "lookup"


class BucketManager(NodeActor):
    name = "BucketManager"

    def __init__(
        self,
        own_id: bytes,
        remote: RemoteCalls,
        database: Database | None,
        on_routing_changed: Callable[[RoutingChanged], None],
        *,
        on_address_observed: Callable[[AddressObserved], None] = lambda _event: None,
        on_view: Callable[[RoutingView], None] = lambda _view: None,
        local: bool = False,
        bootstrap: Sequence[str] = (),
        refresh_interval: float = 300.0,
        liveness_interval: float = 15.0,
        close_peers_checked: int = 8,
    ) -> None:
        super().__init__()
        self.own_id = own_id
        self.remote = remote
        self.database = database
        self.on_routing_changed = on_routing_changed
        self.on_address_observed = on_address_observed
        self.on_view = on_view
        self.table = RoutingTable(own_id, local=local)
        self._published: RoutingView | None = None
        self.bootstrap = tuple(bootstrap)
        self.refresh_interval = refresh_interval
        self.liveness_interval = liveness_interval
        self.close_peers_checked = close_peers_checked
        self.jobs: dict[int, _Job] = {}
        self._job_ids = itertools.count(1)
        self._dirty = False
        self._saved_at = 0.0
        self._liveness_at = 0.0
        self._bootstrapped = False
        self._dialled_at = 0.0
        self._wake: threading.Timer | None = None
        self._wake_at = float("inf")
        self._pinging: set[bytes] = set()
        """Peers with a liveness ping outstanding."""
        self.lookups_done = 0
        self.restored = 0

    # -- lifecycle -----------------------------------------------------------------

    def on_start(self) -> None:
        if self.database is not None:
            records = self.database.load_peers()
            self.restored = self.table.import_entries(
                StoredPeer(p.peer_id, p.addrs, p.last_seen, p.failures, p.ip)
                for p in records
                if p.in_routing_table
            )
            if self.restored:
                log.info("restored %d peers of the routing table; revalidating them", self.restored)
                self._announce(added=tuple(e.peer_id for e in self.table.peers()))
        for addr in self.bootstrap:
            self._dial(addr)
        if not self.bootstrap and len(self.table):
            self._bootstrap_lookups()  # rejoin through the persisted peers
        self._publish_view()

    def on_stop(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self._save(time.time(), force=True)

    # -- messages ------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        try:
            return self._receive(message)
        finally:
            self._publish_view()

    def _publish_view(self) -> None:
        """Hand the table's view to ``on_view`` when it changed: the node answers
        ``FindNode`` from it on the transport's thread, without a hop to this actor."""
        view = self.table.view()
        if view is not self._published:
            self._published = view
            self.on_view(view)

    def _receive(self, message: Any) -> Any:
        now = time.time()
        match message:
            case PeerConnected(peer_id=peer_id, listen_addrs=addrs, remote_host=host):
                if addrs:  # a peer that announces no address is a client, not a node
                    self._handle_observe(self.table.observe(peer_id, addrs, host, now), now)
            case ShunPeer(peer_id=peer_id, until=until):
                evicted = self.table.shun(peer_id, until)
                if evicted is not None:
                    log.warning("peer %s shunned: out of the routing table", peer_id.hex()[:16])
                    self._handle_outcome(evicted)
            case FindClosest(target=target, on_done=on_done, count=count):
                self.start_lookup(target, on_done, count)
            case _QueryDone(lookup_id=job_id, peer_id=peer_id, outcome=outcome):
                self._query_done(job_id, peer_id, outcome, now)
            case _PingDone(peer_id=peer_id, evict_check=evict_check, outcome=outcome):
                pong = outcome.value if isinstance(outcome.value, Pong) else None
                self._ping_done(peer_id, pong is not None, evict_check, now)
                if pong is not None and pong.observed_addr:
                    self.on_address_observed(AddressObserved(pong.observed_addr, peer_id))
            case _Dialled(addr=addr, outcome=outcome):
                if outcome.error is not None:
                    log.warning("cannot reach bootstrap peer %s: %s", addr, outcome.error)
                elif not self._bootstrapped:
                    self._bootstrap_lookups()
            case _Wake():
                self._wake_at = float("inf")
                for job_id in list(self.jobs):
                    self._pump(job_id, now)
            case Tick(now=tick_now):
                self._tick(tick_now)
            case RoutingSnapshot():
                return [(e.peer_id, e.addrs) for e in self.table.peers()]
            case StatusQuery():
                return {
                    "routing_table_size": len(self.table),
                    "buckets": {str(i): n for i, n in sorted(self.table.bucket_sizes().items())},
                    "lookups_running": len(self.jobs),
                    "lookups_done": self.lookups_done,
                    "routing_table_restored": self.restored,
                    "shunned_in_routing": len(self.table.shunned(now)),
                }
            case _:
                return super().on_receive(message)
        return None

    # -- lookups -------------------------------------------------------------------

    def start_lookup(
        self,
        target: bytes,
        on_done: Callable[[list[Contact]], None] | None = None,
        count: int = K,
        purpose: str = "lookup",
    ) -> None:
        now = time.time()
        seeds = self.table.closest(target, K)
        job_id = next(self._job_ids)
        lookup = Lookup(self.own_id, target, seeds, skip=self.table.shunned(now), now=now)
        job = _Job(lookup, count=count, purpose=purpose)
        if on_done is not None:
            job.callbacks.append(on_done)
        self.jobs[job_id] = job
        self._pump(job_id, now)

    def _pump(self, job_id: int, now: float) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        target = job.lookup.target
        for contact in job.lookup.next_queries(now):
            future = self.remote.request(
                contact.peer_id, FindNode(target), FIND_NODE_TIMEOUT, contact.addrs
            )
            tell_when_done(
                future, self.actor_ref, functools.partial(_QueryDone, job_id, contact.peer_id)
            )
        if job.lookup.done:
            del self.jobs[job_id]
            self.lookups_done += 1
            result = job.lookup.result()[: job.count]
            for callback in job.callbacks:
                callback(result)
            return
        wake_at = job.lookup.next_timeout()
        if wake_at is not None and wake_at < self._wake_at:
            self._schedule_wake(wake_at, now)

    def _schedule_wake(self, when: float, now: float) -> None:
        """Wake this actor at ``when`` (a query turns slow), sooner than the next tick."""
        if self._wake is not None:
            self._wake.cancel()
        ref = self.actor_ref
        self._wake_at = when

        def wake() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_Wake())

        self._wake = threading.Timer(max(0.0, when - now), wake)
        self._wake.daemon = True
        self._wake.start()

    def _query_done(
        self, job_id: int, peer_id: bytes, outcome: Outcome[Message], now: float
    ) -> None:
        job = self.jobs.get(job_id)
        value = outcome.value
        if outcome.error is None and isinstance(value, Nodes):
            self._handle_observe(self.table.observe(peer_id, (), None, now), now)
            if job is not None:
                job.lookup.on_reply(peer_id, value.peers, now, value.shunned)
        else:
            log.debug("FIND_NODE to %s failed: %r", peer_id.hex()[:16], outcome.error or value)
            self._suspect(peer_id)
            if job is not None:
                job.lookup.on_failure(peer_id, now)
        self._pump(job_id, now)

    def _bootstrap_lookups(self) -> None:
        """Join: look up the own id, then refresh every bucket farther than the closest peer."""
        self._bootstrapped = True
        self.start_lookup(self.own_id, self._after_self_lookup, purpose="bootstrap")

    def _after_self_lookup(self, found: list[Contact]) -> None:
        if not found:
            return
        nearest = min(bucket_index(self.own_id, c.peer_id) for c in found)
        now = time.time()
        for index in range(nearest + 1, BUCKET_COUNT):
            self._refresh_bucket(index, now)

    def _refresh_bucket(self, index: int, now: float) -> None:
        """Look up a random address of bucket ``index``, to fill it and keep it fresh."""
        self.table.mark_refreshed(index, now)
        self.start_lookup(random_address_in_bucket(self.own_id, index), purpose="refresh")

    def _dial(self, addr: str) -> None:
        self._dialled_at = time.time()
        tell_when_done(
            self.remote.dial(addr, None, 10.0), self.actor_ref, functools.partial(_Dialled, addr)
        )

    # -- liveness ------------------------------------------------------------------

    def _handle_observe(self, result: ObserveResult, now: float) -> None:
        if isinstance(result, Added):
            self._announce(added=(result.peer_id,))
        elif isinstance(result, PingNeeded):
            self._ping(result.peer_id, result.addrs, evict_check=True)
        if isinstance(result, Added | Updated):
            self._dirty = True

    def _suspect(self, peer_id: bytes) -> None:
        """A request to a table peer failed: check it with a ping. One incident may fail many
        requests at once; only failed pings, one at a time per peer, count as failures."""
        entry = self.table.get(peer_id)
        if entry is not None:
            self._ping(peer_id, entry.addrs, evict_check=False)

    def _ping(self, peer_id: bytes, addrs: Sequence[str], evict_check: bool) -> None:
        if peer_id in self._pinging and not evict_check:
            return
        self._pinging.add(peer_id)
        future = self.remote.request(
            peer_id, Ping(int(time.monotonic_ns() & (2**63 - 1))), PING_TIMEOUT, addrs
        )
        tell_when_done(future, self.actor_ref, functools.partial(_PingDone, peer_id, evict_check))

    def _ping_done(self, peer_id: bytes, alive: bool, evict_check: bool, now: float) -> None:
        self._pinging.discard(peer_id)
        if evict_check:
            self._handle_outcome(self.table.ping_result(peer_id, alive, now))
        elif alive:
            self._handle_observe(self.table.observe(peer_id, (), None, now), now)
        else:
            self._failure(peer_id, now)

    def _failure(self, peer_id: bytes, now: float) -> None:
        self._handle_outcome(self.table.record_failure(peer_id, now))

    def _handle_outcome(self, outcome: PingOutcome | None) -> None:
        if isinstance(outcome, Evicted):
            log.info("peer %s left the routing table", outcome.peer_id.hex()[:16])
            added = (outcome.replaced_by,) if outcome.replaced_by is not None else ()
            self._announce(added=added, removed=(outcome.peer_id,))
        if outcome is not None:
            self._dirty = True

    def _announce(self, added: tuple[bytes, ...] = (), removed: tuple[bytes, ...] = ()) -> None:
        self._dirty = True
        peers = frozenset(e.peer_id for e in self.table.peers())
        self.on_routing_changed(RoutingChanged(added, removed, peers))

    # -- periodic work -------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for job_id in list(self.jobs):
            self._pump(job_id, now)
        if now - self._liveness_at >= self.liveness_interval:
            self._liveness_at = now
            for entry in self.table.closest(self.own_id, self.close_peers_checked):
                self._ping(entry.peer_id, entry.addrs, evict_check=False)
        if self.bootstrap and not self._bootstrapped and now - self._dialled_at >= 5.0:
            for addr in self.bootstrap:  # none answered yet: keep trying
                self._dial(addr)
        if self._bootstrapped or not self.bootstrap:
            for index in self.table.buckets_to_refresh(now, self.refresh_interval):
                self._refresh_bucket(index, now)
        self._save(now)

    def _save(self, now: float, force: bool = False) -> None:
        if self.database is None or not self._dirty:
            return
        if not force and now - self._saved_at < SAVE_DEBOUNCE:
            return
        self.database.save_peers(
            PersistedPeer(e.peer_id, e.addrs, e.last_seen, e.failures, ip=e.ip)
            for e in self.table.export_entries()
        )
        self._dirty = False
        self._saved_at = now
