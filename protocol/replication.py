"""Replication rules: who should hold a chunk, what to offer whom, and a bounded fetch queue.

A chunk lives on the close group of its address: the ``CLOSE_GROUP_SIZE`` nodes
closest to it. Nodes keep each other complete by *offers*: a holder tells a member
"you should hold these", and the member fetches what it lacks. Fetches run through
``FetchQueue``, which bounds how many run at once and how many bytes per second
start, so churn cannot turn into a storm.

A holder pushed out of a chunk's close group (more than ``CLOSE_GROUP_SIZE +
RESPONSIBILITY_MARGIN`` known peers are closer, the margin a PUT is accepted
within) *hands it over*: it offers the chunk to the close group, and once every
member offered to has acknowledged, it keeps the chunk only as cache
(``Handover``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN, is_responsible
from protocol.rate import TokenBucket
from protocol.xor import ADDRESS_BYTES, closest, closest_in_sorted


def holders(
    address: bytes, own_id: bytes, peers: Iterable[bytes], size: int = CLOSE_GROUP_SIZE
) -> list[bytes]:
    """The close group of ``address`` among ``peers`` and this node, closest first."""
    return closest(address, {own_id, *peers}, size)


def offers(
    addresses: Iterable[bytes],
    own_id: bytes,
    peers: Iterable[bytes],
    only_to: Iterable[bytes] | None = None,
    size: int = CLOSE_GROUP_SIZE,
) -> dict[bytes, list[bytes]]:
    """For each peer (other than this node), the held ``addresses`` whose close group it is in.

    ``only_to`` restricts the offers to some peers (e.g. the ones that just joined).
    The ids are sorted once and each close group is found by ``closest_in_sorted``
    (the answer of ``holders``, without sorting every peer again for each chunk).
    """
    own = int.from_bytes(own_id, "big")
    members = sorted({own, *(int.from_bytes(p, "big") for p in peers)})
    targets = None if only_to is None else set(only_to)
    result: dict[bytes, list[bytes]] = {}
    for address in addresses:
        for member in closest_in_sorted(members, int.from_bytes(address, "big"), size):
            if member == own:
                continue
            peer = member.to_bytes(ADDRESS_BYTES, "big")
            if targets is None or peer in targets:
                result.setdefault(peer, []).append(address)
    return result


def no_longer_responsible(
    addresses: Iterable[bytes],
    own_id: bytes,
    peers: Iterable[bytes],
    places: int = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN,
) -> list[bytes]:
    """The ``addresses`` this node is not responsible for among ``peers``: at least
    ``places`` of them are closer (the same rule and margin as a PUT's acceptance)."""
    known = tuple(peers)
    return [a for a in addresses if not is_responsible(own_id, a, known, places)]


class Handover:
    """Chunks being handed over to their close group before this node demotes them.

    ``start`` records whom a chunk was offered to; ``acknowledged`` returns the
    chunks every one of them has now acknowledged (ready to be demoted to cache); a
    failed offer abandons the chunk (the next repair pass starts again).
    """

    def __init__(self) -> None:
        self._waiting: dict[bytes, set[bytes]] = {}
        self.completed = 0
        self.abandoned = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, address: object) -> bool:
        return address in self._waiting

    def start(self, address: bytes, offered_to: Iterable[bytes]) -> bool:
        """Wait for ``offered_to`` to acknowledge ``address``; False if there is nobody
        (the chunk cannot be handed over and stays as it is)."""
        peers = set(offered_to)
        if not peers:
            return False
        self._waiting[address] = peers
        return True

    def acknowledged(self, peer: bytes, addresses: Iterable[bytes]) -> list[bytes]:
        """``peer`` acknowledged the offer of ``addresses``; the chunks now fully handed over."""
        ready: list[bytes] = []
        for address in addresses:
            waiting = self._waiting.get(address)
            if waiting is None:
                continue
            waiting.discard(peer)
            if not waiting:
                del self._waiting[address]
                self.completed += 1
                ready.append(address)
        return ready

    def failed(self, peer: bytes, addresses: Iterable[bytes]) -> None:
        """The offer of ``addresses`` to ``peer`` failed: abandon those that waited for it."""
        for address in addresses:
            waiting = self._waiting.get(address)
            if waiting is not None and peer in waiting:
                del self._waiting[address]
                self.abandoned += 1


@dataclass(slots=True)
class _Wanted:
    sources: list[bytes]
    tried: set[bytes] = field(default_factory=set)
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """Fetch ``address`` from ``source`` now."""

    address: bytes
    source: bytes


class FetchQueue:
    """Chunks to fetch, each with candidate sources; bounded concurrency and bandwidth.

    ``bytes_per_second`` is a token bucket on the expected size of fetches started
    (``expected_chunk_bytes`` each, corrected by the real size when they finish).
    """

    def __init__(
        self,
        max_in_flight: int = 4,
        bytes_per_second: float = 32 * 1024 * 1024,
        expected_chunk_bytes: int = 1024 * 1024,
        max_queued: int = 100_000,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.bytes_per_second = bytes_per_second
        self.expected_chunk_bytes = expected_chunk_bytes
        self.max_queued = max_queued
        self._wanted: OrderedDict[bytes, _Wanted] = OrderedDict()
        self._in_flight = 0
        self._budget = TokenBucket(bytes_per_second, bytes_per_second)
        self.fetched = 0
        self.failed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._wanted)

    def __contains__(self, address: object) -> bool:
        return address in self._wanted

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def want(self, address: bytes, sources: Iterable[bytes]) -> bool:
        """Queue ``address`` (or add sources to it); False when the queue is full."""
        entry = self._wanted.get(address)
        if entry is None:
            if len(self._wanted) >= self.max_queued:
                self.dropped += 1
                return False
            entry = self._wanted[address] = _Wanted([])
        for source in sources:
            if source not in entry.sources:
                entry.sources.append(source)
        return True

    def next_fetches(self, now: float) -> list[Fetch]:
        """Fetches to start now, within the concurrency and bandwidth limits."""
        out: list[Fetch] = []
        for address, entry in list(self._wanted.items()):
            if self._in_flight >= self.max_in_flight:
                break
            if self._budget.available(now) < self.expected_chunk_bytes:
                break
            if entry.in_flight:
                continue
            source = next((s for s in entry.sources if s not in entry.tried), None)
            if source is None:
                del self._wanted[address]  # every source failed: the periodic repair retries
                self.failed += 1
                continue
            entry.tried.add(source)
            entry.in_flight = True
            self._in_flight += 1
            self._budget.take(self.expected_chunk_bytes, now)
            out.append(Fetch(address, source))
        return out

    def done(self, address: bytes, ok: bool, size: int = 0) -> None:
        """A fetch finished; on failure the next source is tried later."""
        entry = self._wanted.get(address)
        if entry is None or not entry.in_flight:
            return
        entry.in_flight = False
        self._in_flight -= 1
        if ok:
            del self._wanted[address]
            self.fetched += 1
            self._budget.adjust(self.expected_chunk_bytes - size)  # the real size
