import os

from protocol.chunks import (
    PutContext,
    PutVerdict,
    check_put,
    chunk_address,
    is_responsible,
    is_valid_chunk,
)
from protocol.wire import MAX_CHUNK_BYTES
from protocol.xor import sort_by_distance

OWN = bytes(32)


def ctx(**overrides: object) -> PutContext:
    base: dict[str, object] = {
        "own_id": OWN,
        "held": False,
        "bytes_stored": 0,
        "max_storage": 10 * MAX_CHUNK_BYTES,
        "known_peers": [],
    }
    base.update(overrides)
    return PutContext(**base)  # type: ignore[arg-type]


def test_valid_chunk_is_stored() -> None:
    content = b"hello"
    assert is_valid_chunk(chunk_address(content), content)
    assert check_put(chunk_address(content), content, ctx()) is PutVerdict.STORE


def test_checks_run_in_order() -> None:
    big = bytes(MAX_CHUNK_BYTES + 1)
    # too large wins over everything else, even a wrong hash and a full disk
    assert check_put(bytes(32), big, ctx(held=True, max_storage=0)) is PutVerdict.TOO_LARGE
    content = os.urandom(100)
    # a wrong hash wins over held/full
    assert check_put(bytes(32), content, ctx(held=True, max_storage=0)) is PutVerdict.HASH_MISMATCH
    address = chunk_address(content)
    # already held is acknowledged even when full (idempotent)
    assert check_put(address, content, ctx(held=True, max_storage=0)) is PutVerdict.ALREADY_HELD
    assert check_put(address, content, ctx(max_storage=99)) is PutVerdict.STORAGE_FULL


def test_responsibility_with_margin() -> None:
    content = os.urandom(64)
    address = chunk_address(content)
    peers = [os.urandom(32) for _ in range(50)]
    ranked = sort_by_distance(address, [*peers, OWN])
    rank = ranked.index(OWN)
    verdict = check_put(address, content, ctx(known_peers=peers))
    expected = PutVerdict.STORE if rank < 7 else PutVerdict.NOT_RESPONSIBLE
    assert verdict is expected


def test_is_responsible_counts_closer_peers() -> None:
    address = bytes(31) + b"\x10"
    closer = [bytes(31) + bytes([b]) for b in (0x11, 0x12, 0x13)]
    own = bytes(31) + b"\x30"
    assert is_responsible(own, address, closer, 4)
    assert not is_responsible(own, address, closer, 3)
    assert is_responsible(closer[0], address, [own], 1)
