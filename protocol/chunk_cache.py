"""Accounting of a node's chunk cache: a bound in bytes and least-recently-used eviction.

A node keeps chunks it is no longer responsible for as a *cache*, apart from the
chunks it is responsible for, so popular reads end sooner. ``ChunkCache`` is only
the bookkeeping (which cached chunks exist, their sizes, their order of last use);
the ChunkKeeper deletes the files and rows of what ``admit`` and ``load`` say to
evict. Cached bytes count against the cache's capacity, never against the node's
storage limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

DEFAULT_CACHE_BYTES: Final = 512 * 1024**2
"""The default capacity of a node's chunk cache (``run --cache-size``)."""


class ChunkCache:
    """Cached chunks within ``capacity`` bytes, the least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"a cache capacity cannot be negative: {capacity}")
        self.capacity = capacity
        self._sizes: OrderedDict[bytes, int] = OrderedDict()  # least recently used first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, address: object) -> bool:
        return address in self._sizes

    @property
    def total_bytes(self) -> int:
        """The bytes of every cached chunk."""
        return self._bytes

    def order(self) -> list[bytes]:
        """The cached addresses, least recently used first (the next to be evicted first)."""
        return list(self._sizes)

    def admit(self, address: bytes, size: int) -> list[bytes]:
        """Cache ``address`` (``size`` bytes) as the most recently used; what to evict.

        The least recently used chunks are evicted until the cache fits its capacity.
        A chunk larger than the whole capacity is not cached: the answer is then
        ``[address]`` itself and nothing else is evicted. Admitting a chunk already
        cached refreshes it. Evicted addresses are no longer counted.
        """
        if size < 0:
            raise ValueError(f"a chunk size cannot be negative: {size}")
        self.remove(address)
        if size > self.capacity:
            return [address]
        self._sizes[address] = size
        self._bytes += size
        evicted: list[bytes] = []
        while self._bytes > self.capacity:
            oldest, oldest_size = self._sizes.popitem(last=False)
            self._bytes -= oldest_size
            evicted.append(oldest)
        return evicted

    def load(self, entries: Iterable[tuple[bytes, int]]) -> list[bytes]:
        """Admit ``(address, size)`` pairs known at start, least recently used first;
        what to evict (some, when the capacity is now smaller than what is cached)."""
        evicted: dict[bytes, None] = {}
        for address, size in entries:
            evicted.update(dict.fromkeys(self.admit(address, size)))
        return [address for address in evicted if address not in self._sizes]

    def touch(self, address: bytes) -> bool:
        """Mark a cached chunk as just used; False if it is not cached."""
        if address not in self._sizes:
            return False
        self._sizes.move_to_end(address)
        return True

    def remove(self, address: bytes) -> int | None:
        """Stop counting a chunk (promoted, lost or deleted); its size, or None if not cached."""
        size = self._sizes.pop(address, None)
        if size is not None:
            self._bytes -= size
        return size
