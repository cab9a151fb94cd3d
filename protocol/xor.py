"""The 256-bit XOR address space shared by peers and chunks.

An address is 32 bytes. The distance between two addresses is their XOR read as
an unsigned big-endian integer; the bucket of a peer, seen from a node, is the
index of the highest set bit of that distance (255 for the far half of the space,
0 for the nearest neighbour).
"""

from __future__ import annotations

import bisect
import heapq
import secrets
from collections.abc import Iterable, Sequence
from typing import Final

ADDRESS_BYTES: Final = 32
ADDRESS_BITS: Final = ADDRESS_BYTES * 8
BUCKET_COUNT: Final = ADDRESS_BITS


def check_address(address: bytes) -> bytes:
    """Return ``address`` if it is exactly 32 bytes, else raise ``ValueError``."""
    if len(address) != ADDRESS_BYTES:
        raise ValueError(f"an address is {ADDRESS_BYTES} bytes, got {len(address)}")
    return address


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two addresses, as a non-negative integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """Bucket of ``other`` in the table of ``own``: 255 - leading zero bits of the distance.

    Raises ``ValueError`` for ``own == other``: a node is in none of its own buckets.
    """
    d = distance(own, other)
    if d == 0:
        raise ValueError("an address has no bucket in its own table")
    return d.bit_length() - 1


def sort_by_distance(target: bytes, addresses: Iterable[bytes]) -> list[bytes]:
    """The addresses ordered from closest to farthest from ``target``."""
    t = int.from_bytes(target, "big")
    return sorted(addresses, key=lambda a: int.from_bytes(a, "big") ^ t)


def closest(target: bytes, addresses: Iterable[bytes], count: int) -> list[bytes]:
    """The ``count`` addresses closest to ``target``, closest first."""
    return sort_by_distance(target, addresses)[:count]


def closest_in_sorted(sorted_ids: Sequence[int], target: int, count: int) -> list[int]:
    """The ``count`` ids of ``sorted_ids`` (distinct, ascending ints) XOR-closest to
    ``target``, closest first: ``closest`` for many targets over one set of ids.

    The ids sharing the longest prefix with ``target`` form a contiguous range of
    the sorted list; narrow it bit by bit while it still holds ``count`` ids. Every
    id outside the final range differs from ``target`` at a higher bit than every
    id inside, so the answer lies inside.
    """
    lo, hi = 0, len(sorted_ids)
    for bits in range(1, ADDRESS_BITS + 1):
        shift = ADDRESS_BITS - bits
        prefix = target >> shift
        start = bisect.bisect_left(sorted_ids, prefix << shift, lo, hi)
        end = bisect.bisect_left(sorted_ids, (prefix + 1) << shift, lo, hi)
        if end - start < count:
            break
        lo, hi = start, end
    return heapq.nsmallest(count, sorted_ids[lo:hi], key=lambda i: i ^ target)


def random_address() -> bytes:
    """A uniformly random address."""
    return secrets.token_bytes(ADDRESS_BYTES)


def random_address_in_bucket(own: bytes, index: int) -> bytes:
    """A random address whose bucket, seen from ``own``, is ``index`` (for bucket refresh)."""
    if not 0 <= index < BUCKET_COUNT:
        raise ValueError(f"bucket index out of range: {index}")
    noise = int.from_bytes(secrets.token_bytes(ADDRESS_BYTES), "big") & ((1 << index) - 1)
    d = (1 << index) | noise
    return (int.from_bytes(own, "big") ^ d).to_bytes(ADDRESS_BYTES, "big")


def to_hex(address: bytes) -> str:
    """The 64-hex-character form of an address."""
    return address.hex()


def from_hex(text: str) -> bytes:
    """Parse a 64-hex-character address; raises ``ValueError`` on anything else."""
    if len(text) != ADDRESS_BYTES * 2:
        raise ValueError(f"an address is {ADDRESS_BYTES * 2} hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"not a hex address: {text!r}") from None
