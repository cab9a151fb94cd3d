"""Rules for accepting, serving and auditing content-addressed chunks.

A chunk's address is BLAKE3 of its content. ``check_put`` applies the checks of a
PUT in their fixed order; the ChunkKeeper only stores what it returns ``STORE`` for.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from blake3 import blake3

from protocol.wire import MAX_CHUNK_BYTES
from protocol.xor import distance

CLOSE_GROUP_SIZE: Final = 5
RESPONSIBILITY_MARGIN: Final = 2
"""Extra places past the close group within which a node still accepts a chunk: routing
tables disagree a little during churn, and a refused replica is worse than a spare one."""


def chunk_address(content: bytes | memoryview) -> bytes:
    """The address of a chunk: BLAKE3 of its content."""
    return blake3(content).digest()


def is_valid_chunk(address: bytes, content: bytes | memoryview) -> bool:
    """True if ``content`` is at most 4 MiB and hashes to ``address``."""
    return len(content) <= MAX_CHUNK_BYTES and chunk_address(content) == address


class PutVerdict(enum.Enum):
    TOO_LARGE = "too_large"
    HASH_MISMATCH = "hash_mismatch"
    ALREADY_HELD = "already_held"
    STORAGE_FULL = "storage_full"
    NOT_RESPONSIBLE = "not_responsible"
    STORE = "store"


@dataclass(frozen=True, slots=True)
class PutContext:
    """What the keeper knows when a PUT arrives."""

    own_id: bytes
    held: bool
    bytes_stored: int
    max_storage: int
    known_peers: Sequence[bytes]
    """Peer ids the node knows (its routing table), to judge responsibility."""
    close_group_size: int = CLOSE_GROUP_SIZE
    margin: int = RESPONSIBILITY_MARGIN


def check_put(address: bytes, content: bytes | memoryview, ctx: PutContext) -> PutVerdict:
    """The verdict on a PUT: size, hash, already held, capacity, responsibility, in that order."""
    if len(content) > MAX_CHUNK_BYTES:
        return PutVerdict.TOO_LARGE
    if chunk_address(content) != address:
        return PutVerdict.HASH_MISMATCH
    if ctx.held:
        return PutVerdict.ALREADY_HELD
    if ctx.bytes_stored + len(content) > ctx.max_storage:
        return PutVerdict.STORAGE_FULL
    if not is_responsible(ctx.own_id, address, ctx.known_peers, ctx.close_group_size + ctx.margin):
        return PutVerdict.NOT_RESPONSIBLE
    return PutVerdict.STORE


def is_responsible(
    own_id: bytes, address: bytes, known_peers: Sequence[bytes], places: int
) -> bool:
    """True if fewer than ``places`` known peers are closer to ``address`` than this node."""
    own = distance(own_id, address)
    closer = 0
    for peer in known_peers:
        if peer != own_id and distance(peer, address) < own:
            closer += 1
            if closer >= places:
                return False
    return True
