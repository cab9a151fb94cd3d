"""The Kademlia routing table: 256 k-buckets with liveness checks before eviction.

A pure state machine. It never sends anything: when a decision needs the network
(ping the least-recently-seen peer of a full bucket before evicting it), the
method returns an event dataclass that tells the owner what to do, and the owner
reports the outcome back (``ping_result``). Every method that depends on time
takes ``now`` (seconds, any monotonic origin).

Rules:

- bucket ``i`` holds peers whose XOR distance from the own id has its highest set
  bit at ``i`` (``protocol.xor.bucket_index``); at most ``k`` peers per bucket,
  least-recently-seen first;
- a peer seen alive (``observe``) moves to the tail of its bucket, or is added;
  when the bucket is full the newcomer waits in the bucket's replacement cache and
  the owner is asked to ping the least-recently-seen peer (``PingNeeded``);
  ``ping_result`` resolves it: alive -> that peer moves to the tail, dead -> it is
  evicted and the freshest replacement takes its place;
- one missed reply never drops a peer: ``record_failure`` counts consecutive
  failures and evicts only at ``failure_threshold``; any sign of life resets it;
- diversity: at most ``MAX_PEERS_PER_IP`` peers with the same IP address and
  ``MAX_PEERS_PER_SUBNET`` in the same /24 (IPv6: /48) per bucket, unless the table
  is ``local`` (loopback testnets). Peers whose IP is unknown (``None``) are not
  counted.

``view()`` is an immutable ``RoutingView`` of the peers and their addresses, and of
the shunned peers: the owner publishes it, so that other threads answer ``FindNode``
from it without touching the table. A new view is built only after the peers, their
addresses or the shunned set changed (not when a known peer is merely seen again).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from protocol.wire import MAX_SHUNNED_PER_REPLY, Nodes, PeerRecord
from protocol.xor import ADDRESS_BYTES, BUCKET_COUNT, bucket_index, closest

K: Final = 20
"""Peers per bucket (and the size of a lookup's result)."""
FAILURE_THRESHOLD: Final = 3
"""Consecutive failures after which ``record_failure`` evicts a peer."""
MAX_PEERS_PER_IP: Final = 2
MAX_PEERS_PER_SUBNET: Final = 5
EVICTION_PING_SECONDS: Final = 30.0
"""A ping-before-evict still unresolved after this long no longer blocks a new one."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A peer in the table (an immutable snapshot; the table replaces it on change)."""

    peer_id: bytes
    addrs: tuple[str, ...]
    ip: str | None
    last_seen: float
    failures: int = 0


@dataclass(frozen=True, slots=True)
class StoredPeer:
    """A plain record of a table entry, for persistence (``export_entries``/``import_entries``)."""

    peer_id: bytes
    addrs: tuple[str, ...]
    last_seen: float
    failures: int = 0
    ip: str | None = None


# --- events returned to the owner -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Added:
    """The peer entered the table."""

    peer_id: bytes
    bucket: int


@dataclass(frozen=True, slots=True)
class Updated:
    """A peer already in the table was seen alive: it moved to the tail of its bucket."""

    peer_id: bytes
    bucket: int


@dataclass(frozen=True, slots=True)
class PingNeeded:
    """The bucket is full: ping ``peer_id`` (its least-recently-seen peer) and call
    ``ping_result``. ``candidate`` waits in the replacement cache meanwhile."""

    peer_id: bytes
    addrs: tuple[str, ...]
    bucket: int
    candidate: bytes


@dataclass(frozen=True, slots=True)
class Cached:
    """The bucket is full and a ping is already pending: the peer waits in the
    replacement cache."""

    peer_id: bytes
    bucket: int


RejectReason = Literal["invalid_id", "own_id", "ip_limit", "subnet_limit", "shunned"]


@dataclass(frozen=True, slots=True)
class NotAdded:
    """The peer was not taken (the table is unchanged)."""

    peer_id: bytes
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class FailureRecorded:
    """A failure was counted; the peer stays (``failures`` consecutive so far)."""

    peer_id: bytes
    failures: int


@dataclass(frozen=True, slots=True)
class Evicted:
    """The peer left the table; ``replaced_by`` was promoted from the replacement cache."""

    peer_id: bytes
    bucket: int
    replaced_by: bytes | None


ObserveResult = Added | Updated | PingNeeded | Cached | NotAdded
PingOutcome = Updated | Evicted | FailureRecorded


@functools.lru_cache(maxsize=65536)
def subnet_of(ip: str) -> str:
    """The diversity subnet of an IP address: its /24 (IPv4) or /48 (IPv6).

    Raises ``ValueError`` for a string that is not an IP address.
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class RoutingView:
    """An immutable snapshot of a routing table (``RoutingTable.view``): safe to read
    from any thread while the owner goes on changing the table."""

    own_id: bytes
    buckets: Mapping[int, tuple[PeerEntry, ...]]
    """The non-empty buckets by index."""
    shunned_until: Mapping[bytes, float]

    def closest(
        self, target: bytes, count: int = K, exclude: Collection[bytes] = ()
    ) -> list[PeerEntry]:
        """As ``RoutingTable.closest``, on this snapshot."""
        own = int.from_bytes(self.own_id, "big")
        return _closest_in(self.buckets, own, target, count, exclude)

    def shunned(self, now: float) -> list[bytes]:
        """Every peer shunned at ``now``."""
        return [p for p, until in self.shunned_until.items() if now < until]

    def find_node_answer(self, target: bytes, requester: bytes, now: float) -> Nodes:
        """The answer to ``requester``'s ``FindNode(target)``: the ``K`` peers closest to
        the target (the requester left out) and the shunned peers closest to it."""
        entries = self.closest(target, K, exclude=(requester,))
        shunned = closest(target, self.shunned(now), MAX_SHUNNED_PER_REPLY)
        return Nodes([PeerRecord(e.peer_id, list(e.addrs)) for e in entries], shunned)


def _closest_in(
    buckets: Mapping[int, Collection[PeerEntry]],
    own_int: int,
    target: bytes,
    count: int,
    exclude: Collection[bytes],
) -> list[PeerEntry]:
    """The ``count`` entries of the (non-empty) ``buckets`` closest to ``target``.

    Each bucket is a contiguous run of the whole table sorted by distance to
    ``target``, so the buckets are visited in that order (``_buckets_by_distance``)
    and only the buckets needed are sorted.
    """
    if count <= 0:
        return []
    t = int.from_bytes(target, "big")
    found: list[PeerEntry] = []
    for index in _buckets_by_distance(sorted(buckets), own_int ^ t):
        entries = list(buckets[index])
        if exclude:
            entries = [e for e in entries if e.peer_id not in exclude]
        entries.sort(key=lambda e: int.from_bytes(e.peer_id, "big") ^ t)
        found.extend(entries[: count - len(found)])
        if len(found) >= count:
            break
    return found


def _buckets_by_distance(indices: list[int], offset: int) -> list[int]:
    """The bucket ``indices`` (sorted) ordered by the distance of their peers to the
    target at XOR ``offset`` from the own id.

    A peer of bucket ``j`` is at ``offset ^ x`` from the target, with ``x`` in
    ``[2**j, 2**(j+1))``. With ``b`` the top bit of ``offset``: bucket ``b`` comes
    first (distances below ``2**b``); then the buckets ``j < b``, where those with
    bit ``j`` of ``offset`` set come from the highest ``j`` down and the others after
    them from the lowest ``j`` up; then the buckets above ``b`` in increasing order
    (distances at least ``2**j``).
    """
    top = offset.bit_length() - 1  # -1 when the target is the own id
    split = bisect.bisect_left(indices, top)
    has_top = split < len(indices) and indices[split] == top
    below = indices[:split]
    ordered = [top] if has_top else []
    ordered.extend(j for j in reversed(below) if offset >> j & 1)
    ordered.extend(j for j in below if not offset >> j & 1)
    ordered.extend(indices[split + 1 :] if has_top else indices[split:])
    return ordered


class _Bucket:
    __slots__ = ("peers", "pending", "replacements")

    def __init__(self) -> None:
        self.peers: dict[bytes, PeerEntry] = {}
        """Insertion order is least-recently-seen first."""
        self.replacements: dict[bytes, PeerEntry] = {}
        """Oldest first; the freshest is promoted first."""
        self.pending: tuple[bytes, float] | None = None
        """(peer being pinged, when the ping was asked for)."""


class RoutingTable:
    """256 k-buckets seen from ``own_id``. See the module docstring for the rules."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = K,
        local: bool = False,
        failure_threshold: int = FAILURE_THRESHOLD,
        replacement_size: int | None = None,
        ping_timeout: float = EVICTION_PING_SECONDS,
    ) -> None:
        if len(own_id) != ADDRESS_BYTES:
            raise ValueError(f"an id is {ADDRESS_BYTES} bytes, got {len(own_id)}")
        if k < 1 or failure_threshold < 1:
            raise ValueError("k and failure_threshold must be at least 1")
        self.own_id = own_id
        self.k = k
        self.local = local
        self.failure_threshold = failure_threshold
        self.replacement_size = k if replacement_size is None else replacement_size
        self.ping_timeout = ping_timeout
        self._own_int = int.from_bytes(own_id, "big")
        """The own id as an integer, for ``closest``."""
        self._buckets: dict[int, _Bucket] = {}
        self._refreshed: dict[int, float] = {}
        self._size = 0
        self._shunned: dict[bytes, float] = {}
        """Peers kept out of the table, with when that ends (``shun``)."""
        self._view: RoutingView | None = None
        """The last ``view()``; None once the peers, an address or the shunned set changed."""

    # --- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, bytes) and self.get(peer_id) is not None

    def bucket_of(self, peer_id: bytes) -> int:
        """Bucket index of ``peer_id`` (``ValueError`` for the own id or a bad length)."""
        if len(peer_id) != ADDRESS_BYTES:
            raise ValueError(f"an id is {ADDRESS_BYTES} bytes, got {len(peer_id)}")
        return bucket_index(self.own_id, peer_id)

    def get(self, peer_id: bytes) -> PeerEntry | None:
        """The entry of ``peer_id`` if it is in the table (not the replacement cache)."""
        if len(peer_id) != ADDRESS_BYTES or peer_id == self.own_id:
            return None
        bucket = self._buckets.get(self.bucket_of(peer_id))
        return None if bucket is None else bucket.peers.get(peer_id)

    def peers(self) -> list[PeerEntry]:
        """Every entry, by bucket index, least-recently-seen first within a bucket."""
        return [e for i in sorted(self._buckets) for e in self._buckets[i].peers.values()]

    def bucket_peers(self, index: int) -> list[PeerEntry]:
        """The entries of one bucket, least-recently-seen first."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else list(bucket.peers.values())

    def bucket_sizes(self) -> dict[int, int]:
        """Peers per non-empty bucket (for status)."""
        return {i: len(b.peers) for i, b in sorted(self._buckets.items()) if b.peers}

    def replacement_count(self) -> int:
        """Peers waiting in all replacement caches."""
        return sum(len(b.replacements) for b in self._buckets.values())

    def closest(
        self, target: bytes, count: int = K, exclude: Collection[bytes] = ()
    ) -> list[PeerEntry]:
        """The ``count`` peers closest to ``target``, closest first (``exclude`` left out)."""
        buckets = {i: b.peers.values() for i, b in self._buckets.items() if b.peers}
        return _closest_in(buckets, self._own_int, target, count, exclude)

    def view(self) -> RoutingView:
        """The table's peers and shunned peers as they are now, immutable (see the module
        docstring); the same object until they change."""
        if self._view is None:
            buckets = {i: tuple(b.peers.values()) for i, b in self._buckets.items() if b.peers}
            self._view = RoutingView(self.own_id, buckets, dict(self._shunned))
        return self._view

    # --- liveness ------------------------------------------------------------------

    def observe(
        self, peer_id: bytes, addrs: Sequence[str], ip: str | None, now: float
    ) -> ObserveResult:
        """``peer_id`` was seen alive (handshake or any reply).

        Empty ``addrs`` or ``ip=None`` keep what is known for a peer already in the
        table. Returns what happened; on ``PingNeeded`` the owner pings and calls
        ``ping_result``.
        """
        if len(peer_id) != ADDRESS_BYTES:
            return NotAdded(peer_id, "invalid_id")
        if peer_id == self.own_id:
            return NotAdded(peer_id, "own_id")
        if self.is_shunned(peer_id, now):
            return NotAdded(peer_id, "shunned")
        index = self.bucket_of(peer_id)
        bucket = self._buckets.get(index)
        known = None if bucket is None else bucket.peers.get(peer_id)
        if bucket is not None and known is not None:
            new_ip = known.ip if ip is None else ip
            if new_ip != known.ip:
                reason = self._diversity_violation(bucket, new_ip, ignore=peer_id)
                if reason is not None:
                    return NotAdded(peer_id, reason)
            new_addrs = tuple(addrs) if addrs else known.addrs
            if new_addrs != known.addrs:
                self._view = None
            del bucket.peers[peer_id]
            bucket.peers[peer_id] = PeerEntry(peer_id, new_addrs, new_ip, now, 0)
            if bucket.pending is not None and bucket.pending[0] == peer_id:
                bucket.pending = None
            return Updated(peer_id, index)

        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        reason = self._diversity_violation(bucket, ip, ignore=None)
        if reason is not None:
            if not bucket.peers and not bucket.replacements:
                del self._buckets[index]
            return NotAdded(peer_id, reason)
        waiting = bucket.replacements.pop(peer_id, None)
        entry = PeerEntry(
            peer_id,
            tuple(addrs) if addrs else (waiting.addrs if waiting else ()),
            ip if ip is not None else (waiting.ip if waiting else None),
            now,
            0,
        )
        if len(bucket.peers) < self.k:
            self._insert(bucket, entry)
            return Added(peer_id, index)

        # Full: the newcomer waits; ask for a ping of the least-recently-seen peer.
        self._cache_replacement(bucket, entry)
        if bucket.pending is not None and now - bucket.pending[1] < self.ping_timeout:
            return Cached(peer_id, index)
        oldest = next(iter(bucket.peers.values()))
        bucket.pending = (oldest.peer_id, now)
        return PingNeeded(oldest.peer_id, oldest.addrs, index, peer_id)

    def ping_result(self, peer_id: bytes, alive: bool, now: float) -> PingOutcome | None:
        """Resolve a ping asked for by ``PingNeeded`` (or any liveness probe).

        alive: the peer moves to the tail (``Updated``); the candidate stays cached.
        dead, after a ``PingNeeded`` for this peer: it is evicted and the freshest
        replacement is promoted (``Evicted``). dead, for a peer no ping was pending
        for: counted like ``record_failure``. Returns ``None`` for a peer not in the
        table. ``alive=False`` should be reported only when the owner's ping attempts
        are exhausted.
        """
        if self.get(peer_id) is None:
            return None
        if alive:
            result = self.observe(peer_id, (), None, now)
            assert isinstance(result, Updated)
            return result
        pending = self._buckets[self.bucket_of(peer_id)].pending
        if pending is not None and pending[0] == peer_id:
            return self._evict(peer_id)
        return self.record_failure(peer_id, now)

    def record_failure(self, peer_id: bytes, now: float) -> FailureRecorded | Evicted | None:
        """A request to ``peer_id`` failed (timeout, refused, unreachable).

        The peer keeps its place until ``failure_threshold`` consecutive failures,
        then it is evicted and the freshest replacement promoted. A peer that is
        only in a replacement cache is dropped from it (``None``); ``None`` also for
        an unknown peer.
        """
        del now  # failures are counted, not timed; kept for a uniform API
        if len(peer_id) != ADDRESS_BYTES or peer_id == self.own_id:
            return None
        index = self.bucket_of(peer_id)
        bucket = self._buckets.get(index)
        if bucket is None:
            return None
        entry = bucket.peers.get(peer_id)
        if entry is None:
            bucket.replacements.pop(peer_id, None)
            return None
        failures = entry.failures + 1
        if failures >= self.failure_threshold:
            return self._evict(peer_id)
        # Keep its position: replacing a dict value does not reorder it.
        bucket.peers[peer_id] = PeerEntry(peer_id, entry.addrs, entry.ip, entry.last_seen, failures)
        return FailureRecorded(peer_id, failures)

    def remove(self, peer_id: bytes) -> Evicted | None:
        """Drop ``peer_id`` (e.g. it failed authentication) from the table and the
        replacement caches; the freshest replacement takes its place."""
        if len(peer_id) != ADDRESS_BYTES or peer_id == self.own_id:
            return None
        bucket = self._buckets.get(self.bucket_of(peer_id))
        if bucket is None:
            return None
        bucket.replacements.pop(peer_id, None)
        if peer_id not in bucket.peers:
            return None
        return self._evict(peer_id)

    def shun(self, peer_id: bytes, until: float) -> Evicted | None:
        """Keep ``peer_id`` out of the table until ``until`` (it failed storage audits):
        it is removed now (``Evicted`` if it was in), and ``observe`` rejects it."""
        if len(peer_id) != ADDRESS_BYTES or peer_id == self.own_id:
            return None
        self._shunned[peer_id] = until
        self._view = None
        return self.remove(peer_id)

    def is_shunned(self, peer_id: bytes, now: float) -> bool:
        until = self._shunned.get(peer_id)
        if until is None:
            return False
        if now >= until:
            del self._shunned[peer_id]
            return False
        return True

    def shunned(self, now: float) -> list[bytes]:
        """Every peer shunned at ``now``."""
        return [p for p in list(self._shunned) if self.is_shunned(p, now)]

    # --- refresh -------------------------------------------------------------------

    def buckets_to_refresh(self, now: float, interval: float) -> list[int]:
        """Buckets that no lookup touched for ``interval`` seconds, farthest last.

        Considered: every bucket from the lowest non-empty one up to 255 (the
        buckets below the nearest known peer are empty in any network of
        realistic size). A bucket never marked counts as quiet. Refresh one with a
        lookup of ``random_address_in_bucket(own_id, index)`` and ``mark_refreshed``.
        """
        non_empty = [i for i, b in self._buckets.items() if b.peers]
        if not non_empty:
            return []
        return [
            i
            for i in range(min(non_empty), BUCKET_COUNT)
            if now - self._refreshed.get(i, -math.inf) >= interval
        ]

    def mark_refreshed(self, index: int, now: float) -> None:
        """A lookup touched bucket ``index`` (its target fell in it) at ``now``."""
        if not 0 <= index < BUCKET_COUNT:
            raise ValueError(f"bucket index out of range: {index}")
        self._refreshed[index] = now

    # --- persistence ---------------------------------------------------------------

    def export_entries(self) -> list[StoredPeer]:
        """Plain records of every table entry (not the replacement caches)."""
        return [StoredPeer(e.peer_id, e.addrs, e.last_seen, e.failures, e.ip) for e in self.peers()]

    def import_entries(self, records: Iterable[StoredPeer]) -> int:
        """Load records (e.g. after a restart), oldest first, under the normal rules:
        invalid ids, the own id, duplicates and diversity violations are skipped;
        records that do not fit a full bucket go to its replacement cache. No ping
        is asked for. Returns how many entered the table."""
        added = 0
        for record in sorted(records, key=lambda r: r.last_seen):
            peer_id = record.peer_id
            if len(peer_id) != ADDRESS_BYTES or peer_id == self.own_id:
                continue
            if self.get(peer_id) is not None:
                continue
            index = self.bucket_of(peer_id)
            bucket = self._buckets.setdefault(index, _Bucket())
            if self._diversity_violation(bucket, record.ip, ignore=None) is not None:
                continue
            entry = PeerEntry(
                peer_id, tuple(record.addrs), record.ip, record.last_seen, record.failures
            )
            if len(bucket.peers) < self.k:
                self._insert(bucket, entry)
                added += 1
            else:
                self._cache_replacement(bucket, entry)
        for index in [i for i, b in self._buckets.items() if not b.peers and not b.replacements]:
            del self._buckets[index]
        return added

    # --- internals -----------------------------------------------------------------

    def _diversity_violation(
        self, bucket: _Bucket, ip: str | None, ignore: bytes | None
    ) -> RejectReason | None:
        if self.local or ip is None:
            return None
        subnet = subnet_of(ip)
        same_ip = same_subnet = 0
        for entry in bucket.peers.values():
            if entry.ip is None or entry.peer_id == ignore:
                continue
            if entry.ip == ip:
                same_ip += 1
            if subnet_of(entry.ip) == subnet:
                same_subnet += 1
        if same_ip >= MAX_PEERS_PER_IP:
            return "ip_limit"
        if same_subnet >= MAX_PEERS_PER_SUBNET:
            return "subnet_limit"
        return None

    def _insert(self, bucket: _Bucket, entry: PeerEntry) -> None:
        """Add ``entry`` keeping least-recently-seen order (normally at the tail)."""
        peers = bucket.peers
        if peers and next(reversed(peers.values())).last_seen > entry.last_seen:
            ordered = sorted([*peers.values(), entry], key=lambda e: e.last_seen)
            peers.clear()
            peers.update((e.peer_id, e) for e in ordered)
        else:
            peers[entry.peer_id] = entry
        self._size += 1
        self._view = None

    def _cache_replacement(self, bucket: _Bucket, entry: PeerEntry) -> None:
        """Put ``entry`` in the bucket's replacement cache as its freshest member,
        forgetting the oldest beyond ``replacement_size``."""
        bucket.replacements.pop(entry.peer_id, None)
        bucket.replacements[entry.peer_id] = entry
        while len(bucket.replacements) > self.replacement_size:
            del bucket.replacements[next(iter(bucket.replacements))]

    def _evict(self, peer_id: bytes) -> Evicted:
        """Drop a table entry (and any ping pending for it); promote the freshest
        replacement that passes the diversity limits."""
        index = self.bucket_of(peer_id)
        bucket = self._buckets[index]
        del bucket.peers[peer_id]
        self._size -= 1
        self._view = None
        if bucket.pending is not None and bucket.pending[0] == peer_id:
            bucket.pending = None
        replaced_by: bytes | None = None
        for candidate in reversed(list(bucket.replacements.values())):
            if self._diversity_violation(bucket, candidate.ip, ignore=None) is None:
                del bucket.replacements[candidate.peer_id]
                self._insert(bucket, candidate)
                replaced_by = candidate.peer_id
                break
        if not bucket.peers and not bucket.replacements:
            del self._buckets[index]
        return Evicted(peer_id, index, replaced_by)
