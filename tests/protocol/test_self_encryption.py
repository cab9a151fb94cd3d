"""Self-encryption: round trips, convergence, chunk limits, tampering, streaming memory."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from typing import BinaryIO, cast

import msgspec
import pytest
import zstandard
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.self_encryption import (
    CHUNK_OVERHEAD_BYTES,
    DATA_MAP_MAGIC,
    DATA_MAP_VERSION,
    MAX_PIECE_BYTES,
    MIN_PIECE_BYTES,
    BadDataMap,
    ChunkInfo,
    CorruptChunk,
    DataMap,
    EncryptedChunk,
    MissingChunk,
    SelfEncryptionError,
    SourceChanged,
    StreamEncryptor,
    decode_data_map,
    decrypt,
    decrypt_bytes,
    decrypt_chunk,
    encode_data_map,
    encrypt_bytes,
    fetch_data_map,
    piece_keys,
    piece_sizes,
)
from protocol.wire import MAX_CHUNK_BYTES

P = MAX_PIECE_BYTES
SMALL_PIECE = MIN_PIECE_BYTES


def noise(size: int, seed: bytes = b"noise") -> bytes:
    """Deterministic incompressible bytes."""
    return blake3(seed).digest(length=size) if size else b""


def text(size: int) -> bytes:
    """Deterministic compressible bytes."""
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf"]
    stream = noise(size // 4 + 16, b"text")
    out = b" ".join(words[byte % len(words)] for byte in stream)
    return out[:size]


def store_of(chunks: list[EncryptedChunk]) -> dict[bytes, bytes]:
    return {chunk.address: chunk.content for chunk in chunks}


def assert_valid_chunks(chunks: list[EncryptedChunk]) -> None:
    for chunk in chunks:
        assert len(chunk.content) <= MAX_CHUNK_BYTES
        assert chunk.address == blake3(chunk.content).digest()


def round_trip(data: bytes, **limits: int) -> tuple[bytes, list[EncryptedChunk]]:
    address, chunks = encrypt_bytes(data, **limits)
    assert_valid_chunks(chunks)
    assert chunks[-1].address == address
    store = store_of(chunks)
    assert decrypt_bytes(address, store.get) == data
    data_map = fetch_data_map(address, store.get)
    assert data_map.child_level > 0 or data_map.file_size == len(data)
    return address, chunks


# --- pieces ----------------------------------------------------------------------------


@given(st.integers(0, 40 * SMALL_PIECE), st.integers(SMALL_PIECE, 4 * SMALL_PIECE))
def test_piece_sizes_cover_the_file_in_at_least_three_bounded_pieces(
    size: int, max_piece: int
) -> None:
    sizes = piece_sizes(size, max_piece)
    assert sum(sizes) == size
    assert len(sizes) >= 3
    assert all(0 <= piece <= max_piece for piece in sizes)
    if size >= 3 * max_piece:
        assert all(piece == max_piece for piece in sizes[:-1])
        assert sizes[-1] >= 1
    else:
        assert len(sizes) == 3
        assert max(sizes) - min(sizes) <= 1


def test_piece_sizes_at_the_boundaries() -> None:
    assert piece_sizes(0) == [0, 0, 0]
    assert piece_sizes(1) == [0, 0, 1]
    assert piece_sizes(2) == [0, 1, 1]
    assert piece_sizes(3 * P - 1) == [P - 1, P, P]
    assert piece_sizes(3 * P) == [P, P, P]
    assert piece_sizes(3 * P + 1) == [P, P, P, 1]
    with pytest.raises(ValueError):
        piece_sizes(10, MIN_PIECE_BYTES - 1)
    with pytest.raises(ValueError):
        piece_sizes(10, MAX_CHUNK_BYTES)


def test_the_largest_piece_still_fits_a_chunk() -> None:
    assert MAX_PIECE_BYTES + CHUNK_OVERHEAD_BYTES <= MAX_CHUNK_BYTES


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000])
def test_tiny_files_round_trip_as_three_chunks(size: int) -> None:
    address, chunks = round_trip(noise(size))
    data_map = fetch_data_map(address, store_of(chunks).get)
    assert len(data_map.chunks) == 3
    assert data_map.child_level == 0
    assert [info.size for info in data_map.chunks] == piece_sizes(size)


@pytest.mark.parametrize("size", [P - 1, P, P + 1, 3 * P - 1, 3 * P, 3 * P + 1])
def test_sizes_at_the_piece_boundaries_round_trip(size: int) -> None:
    address, chunks = round_trip(noise(size))
    data_map = fetch_data_map(address, store_of(chunks).get)
    assert [info.size for info in data_map.chunks] == piece_sizes(size)
    if size >= 3 * P:
        # Incompressible full pieces are stored raw: the largest a chunk ever gets.
        assert max(len(chunk.content) for chunk in chunks) == P + CHUNK_OVERHEAD_BYTES


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=12 * SMALL_PIECE))
def test_small_random_files_round_trip_with_small_pieces(data: bytes) -> None:
    round_trip(data, max_piece_bytes=SMALL_PIECE)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=4096))
def test_small_random_files_round_trip_with_default_pieces(data: bytes) -> None:
    round_trip(data)


@pytest.mark.parametrize("size", [5 * SMALL_PIECE + 17, 3 * 1024 * 1024 + 5])
def test_random_sizes_round_trip(size: int) -> None:
    round_trip(noise(size, b"random sizes"))
    round_trip(text(size), max_piece_bytes=SMALL_PIECE * 7)


def test_compressible_pieces_shrink_and_round_trip() -> None:
    data = text(3 * 200_000)
    _, chunks = round_trip(data)
    content_chunks = chunks[:-1]
    assert all(len(chunk.content) < 200_000 // 2 for chunk in content_chunks)


def test_stream_encryptor_starts_at_the_current_position() -> None:
    prefix, body = b"header-not-part-of-the-file", text(5000)
    source = io.BytesIO(prefix + body)
    source.seek(len(prefix))
    encryptor = StreamEncryptor(source)
    chunks = list(encryptor.chunks())
    assert encryptor.file_size == len(body)
    assert encryptor.data_map.file_size == len(body)
    assert decrypt_bytes(encryptor.data_address, store_of(chunks).get) == body


def test_results_are_only_available_after_one_full_iteration() -> None:
    encryptor = StreamEncryptor(io.BytesIO(b"abc"))
    with pytest.raises(RuntimeError):
        _ = encryptor.data_address
    chunks = list(encryptor.chunks())
    assert encryptor.data_address == chunks[-1].address
    with pytest.raises(RuntimeError):
        list(encryptor.chunks())


def test_decrypt_reports_the_size_and_announces_each_level_to_prefetch() -> None:
    data = noise(10 * SMALL_PIECE)
    address, chunks = encrypt_bytes(data, max_piece_bytes=SMALL_PIECE)
    store = store_of(chunks)
    announced: list[list[bytes]] = []
    fetched: list[bytes] = []

    def fetch(chunk_address: bytes) -> bytes | None:
        fetched.append(chunk_address)
        return store.get(chunk_address)

    parts: list[bytes] = []
    assert decrypt(address, fetch, parts.append, prefetch=announced.append) == len(data)
    assert b"".join(parts) == data
    data_map = fetch_data_map(address, store.get)
    assert announced == [[info.post_hash for info in data_map.chunks]]
    assert fetched == [address, *announced[0]]


# --- convergence and keying ------------------------------------------------------------


def test_same_input_gives_the_same_chunks_and_address() -> None:
    data = noise(3 * SMALL_PIECE * 4 + 5)
    first = encrypt_bytes(data, max_piece_bytes=SMALL_PIECE)
    second = encrypt_bytes(bytes(data), max_piece_bytes=SMALL_PIECE)
    assert first == second


def test_different_input_gives_a_different_address() -> None:
    data = noise(5000)
    changed = bytearray(data)
    changed[2500] ^= 1
    address, chunks = encrypt_bytes(data)
    other_address, other_chunks = encrypt_bytes(bytes(changed))
    assert address != other_address
    assert {c.address for c in chunks}.isdisjoint({c.address for c in other_chunks})


@pytest.mark.parametrize(("changed_piece", "expected_changed"), [(4, {4, 5, 6}), (9, {9, 0, 1})])
def test_a_piece_keys_itself_and_its_two_successors(
    changed_piece: int, expected_changed: set[int]
) -> None:
    data = noise(10 * SMALL_PIECE)
    changed = bytearray(data)
    changed[changed_piece * SMALL_PIECE + 7] ^= 0x80
    maps = []
    for variant in (data, bytes(changed)):
        address, chunks = encrypt_bytes(variant, max_piece_bytes=SMALL_PIECE)
        maps.append(fetch_data_map(address, store_of(chunks).get))
    differing = {
        index
        for index, (before, after) in enumerate(zip(maps[0].chunks, maps[1].chunks, strict=True))
        if before.post_hash != after.post_hash
    }
    assert differing == expected_changed


def test_equal_pieces_with_equal_neighbours_deduplicate() -> None:
    address, chunks = encrypt_bytes(b"")
    data_map = fetch_data_map(address, store_of(chunks).get)
    assert len({info.post_hash for info in data_map.chunks}) == 1
    assert len(chunks) == 2  # one content chunk, yielded once, and the root data map
    assert decrypt_bytes(address, store_of(chunks).get) == b""


# --- data maps -------------------------------------------------------------------------


def test_the_root_data_map_is_a_plain_chunk_at_the_data_address() -> None:
    data = text(10_000)
    address, chunks = encrypt_bytes(data)
    root = chunks[-1]
    assert root.address == address
    assert root.content.startswith(DATA_MAP_MAGIC)
    data_map = decode_data_map(root.content)
    assert data_map.version == DATA_MAP_VERSION
    assert data_map.file_size == len(data)
    assert [info.index for info in data_map.chunks] == [0, 1, 2]
    assert [info.post_hash for info in data_map.chunks] == [c.address for c in chunks[:-1]]
    pieces = [data[:3333], data[3333:6666], data[6666:]]
    assert [info.pre_hash for info in data_map.chunks] == [blake3(p).digest() for p in pieces]
    assert encode_data_map(data_map) == root.content


def test_large_data_maps_are_self_encrypted_into_child_levels() -> None:
    data = noise(1024 * SMALL_PIECE + 3)
    limits = {"max_piece_bytes": SMALL_PIECE, "max_data_map_bytes": 1024}
    address, chunks = round_trip(data, **limits)
    root = chunks[-1]
    assert len(root.content) <= 1024
    data_map = fetch_data_map(address, store_of(chunks).get)
    assert data_map.child_level == 2
    assert encrypt_bytes(data, **limits) == (address, chunks)


def test_child_levels_must_descend_one_by_one() -> None:
    data = noise(64 * SMALL_PIECE)
    address, chunks = encrypt_bytes(data, max_piece_bytes=SMALL_PIECE, max_data_map_bytes=1024)
    store = store_of(chunks)
    root = fetch_data_map(address, store.get)
    assert root.child_level == 1
    forged = msgspec.structs.replace(root, child_level=2)
    forged_content = encode_data_map(forged)
    store[blake3(forged_content).digest()] = forged_content
    with pytest.raises(BadDataMap, match="level 2 map points to a level 0 map"):
        decrypt_bytes(blake3(forged_content).digest(), store.get)


# --- tampering and errors --------------------------------------------------------------


class Recorder:
    """A decrypt target that keeps what was written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, piece: bytes) -> None:
        self.parts.append(piece)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def encrypted_example() -> tuple[bytes, bytes, dict[bytes, bytes], DataMap]:
    data = text(8 * SMALL_PIECE)
    address, chunks = encrypt_bytes(data, max_piece_bytes=SMALL_PIECE)
    store = store_of(chunks)
    return data, address, store, fetch_data_map(address, store.get)


@pytest.mark.parametrize("victim", [0, 3, 7])
def test_a_tampered_chunk_raises_corrupt_chunk_after_writing_only_a_correct_prefix(
    victim: int,
) -> None:
    data, address, store, data_map = encrypted_example()
    target = data_map.chunks[victim].post_hash
    tampered = bytearray(store[target])
    tampered[len(tampered) // 2] ^= 1
    store[target] = bytes(tampered)
    recorder = Recorder()
    with pytest.raises(CorruptChunk) as raised:
        decrypt(address, store.get, recorder.write)
    assert raised.value.address == target
    assert "hash" in raised.value.reason
    assert recorder.data == data[: victim * SMALL_PIECE]


def test_a_wrong_chunk_returned_by_fetch_raises_corrupt_chunk() -> None:
    data, address, store, data_map = encrypted_example()
    wanted, other = data_map.chunks[2].post_hash, data_map.chunks[5].post_hash
    recorder = Recorder()

    def lying_fetch(chunk_address: bytes) -> bytes | None:
        return store[other] if chunk_address == wanted else store.get(chunk_address)

    with pytest.raises(CorruptChunk):
        decrypt(address, lying_fetch, recorder.write)
    assert recorder.data == data[: 2 * SMALL_PIECE]


def test_a_missing_chunk_raises_missing_chunk() -> None:
    _, address, store, data_map = encrypted_example()
    gone = data_map.chunks[4].post_hash
    del store[gone]
    with pytest.raises(MissingChunk) as raised:
        decrypt_bytes(address, store.get)
    assert raised.value.address == gone
    with pytest.raises(MissingChunk):
        decrypt_bytes(blake3(b"nothing here").digest(), store.get)


def test_a_tampered_root_or_a_content_address_is_rejected() -> None:
    _, address, store, data_map = encrypted_example()
    store_with_bad_root = dict(store)
    store_with_bad_root[address] = store[address][:-1] + bytes((store[address][-1] ^ 1,))
    with pytest.raises(CorruptChunk):
        decrypt_bytes(address, store_with_bad_root.get)
    with pytest.raises(BadDataMap, match="not a data map"):
        decrypt_bytes(data_map.chunks[0].post_hash, store.get)
    with pytest.raises(BadDataMap):
        decrypt_bytes(address[:16], store.get)


def put(store: dict[bytes, bytes], content: bytes) -> bytes:
    address = blake3(content).digest()
    store[address] = content
    return address


def test_malformed_and_inconsistent_data_maps_raise_bad_data_map() -> None:
    _, _, store, data_map = encrypted_example()
    replace = msgspec.structs.replace
    info = data_map.chunks
    forgeries: list[bytes] = [
        DATA_MAP_MAGIC + b"\x93garbage",
        DATA_MAP_MAGIC + msgspec.msgpack.encode([1, 2, 3]),
        encode_data_map(replace(data_map, version=99)),
        encode_data_map(replace(data_map, file_size=data_map.file_size + 1)),
        encode_data_map(replace(data_map, chunks=info[:2])),
        encode_data_map(replace(data_map, chunks=[info[1], info[0], *info[2:]])),
        encode_data_map(replace(data_map, child_level=99)),
    ]
    for forged in forgeries:
        with pytest.raises(BadDataMap):
            decrypt_bytes(put(store, forged), store.get)


def test_a_data_map_with_wrong_hashes_fails_to_decrypt() -> None:
    data, _, store, data_map = encrypted_example()
    chunks = list(data_map.chunks)
    chunks[1] = msgspec.structs.replace(chunks[1], pre_hash=blake3(b"wrong").digest())
    forged = put(store, encode_data_map(msgspec.structs.replace(data_map, chunks=chunks)))
    recorder = Recorder()
    with pytest.raises(CorruptChunk, match="key"):
        decrypt(forged, store.get, recorder.write)
    # Piece 0 is keyed by pieces 0, 7 and 6 only, so it still decrypts; piece 1 does not.
    assert recorder.data == data[:SMALL_PIECE]


def craft_chunk(pre_hashes: list[bytes], index: int, body: bytes) -> bytes:
    enc_key, _ = piece_keys(index, pre_hashes)
    nonce = b"\x01" * 12
    return nonce + AESGCM(enc_key).encrypt(nonce, body, None)


def test_a_forged_chunk_whose_frame_lies_about_its_size_is_corrupt() -> None:
    """An uploader who knows the keys cannot make decrypt allocate more than the map says."""
    claimed = b"x" * 100
    pre_hashes = [blake3(claimed).digest()] * 3
    bomb = bytes((1,)) + zstandard.ZstdCompressor().compress(b"x" * 10_000_000)
    content = craft_chunk(pre_hashes, 0, bomb)
    info = ChunkInfo(0, pre_hashes[0], blake3(content).digest(), len(claimed))
    with pytest.raises(CorruptChunk, match="declares"):
        decrypt_chunk(info, content, pre_hashes)
    unknown_codec = craft_chunk(pre_hashes, 0, b"\x07" + claimed)
    info = ChunkInfo(0, pre_hashes[0], blake3(unknown_codec).digest(), len(claimed))
    with pytest.raises(CorruptChunk, match="codec"):
        decrypt_chunk(info, unknown_codec, pre_hashes)


def test_errors_share_one_base_class() -> None:
    for error in (CorruptChunk, MissingChunk, BadDataMap, SourceChanged):
        assert issubclass(error, SelfEncryptionError)


# --- streaming -------------------------------------------------------------------------


class GeneratedFile(io.RawIOBase):
    """A seekable file of ``size`` pseudo-random bytes computed on demand (BLAKE3 XOF).

    Reads return at most ``max_read`` bytes, like a pipe or socket-backed raw file would.
    """

    def __init__(self, size: int, seed: bytes = b"generated", max_read: int = 1 << 20) -> None:
        self.size = size
        self.position = 0
        self.max_read = max_read
        self.hasher = blake3(seed)
        self.passes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        if self.position == 0:
            self.passes += 1
        return self.position

    def content(self, offset: int, length: int) -> bytes:
        return self.hasher.digest(length=length, seek=offset) if length else b""

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        length = max(0, min(len(buffer), self.max_read, self.size - self.position))
        buffer[:length] = self.content(self.position, length)
        self.position += length
        return length


def test_short_reads_are_completed() -> None:
    source = GeneratedFile(5 * SMALL_PIECE + 3, max_read=100)
    encryptor = StreamEncryptor(cast(BinaryIO, source), max_piece_bytes=SMALL_PIECE)
    chunks = list(encryptor.chunks())
    expected = source.content(0, source.size)
    assert decrypt_bytes(encryptor.data_address, store_of(chunks).get) == expected


class ChangingFile(GeneratedFile):
    """Its content changes after the first pass."""

    def content(self, offset: int, length: int) -> bytes:
        data = super().content(offset, length)
        return data if self.passes <= 1 else bytes(length)


def test_a_source_that_changes_between_passes_raises_source_changed() -> None:
    source = ChangingFile(4 * SMALL_PIECE)
    with pytest.raises(SourceChanged):
        list(StreamEncryptor(cast(BinaryIO, source), max_piece_bytes=SMALL_PIECE).chunks())


def test_a_source_that_shrinks_raises_source_changed() -> None:
    source = GeneratedFile(4 * SMALL_PIECE)
    encryptor = StreamEncryptor(cast(BinaryIO, source), max_piece_bytes=SMALL_PIECE)
    source.size -= 1
    with pytest.raises(SourceChanged):
        list(encryptor.chunks())


def traced_peak(action: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_files_stream_with_bounded_memory() -> None:
    size = 96 * 1024 * 1024 + 12345
    source = GeneratedFile(size)
    encryptor = StreamEncryptor(cast(BinaryIO, source))
    store: dict[bytes, bytes] = {}
    stored_elsewhere: list[bytes] = []

    def encrypt_all() -> None:
        for chunk in encryptor.chunks():
            assert len(chunk.content) <= MAX_CHUNK_BYTES
            stored_elsewhere.append(chunk.address)  # the content is not kept while traced

    encrypt_peak = traced_peak(encrypt_all)
    assert encrypt_peak < 8 * MAX_PIECE_BYTES < size // 3

    # Encrypt once more untraced to fill a store, then trace decryption into a hash.
    again = StreamEncryptor(cast(BinaryIO, GeneratedFile(size)))
    store.update(store_of(list(again.chunks())))
    assert list(store) == stored_elsewhere
    hasher = blake3()
    written = [0]

    def decrypt_all() -> None:
        def write(piece: bytes) -> None:
            hasher.update(piece)
            written[0] += len(piece)

        decrypt(encryptor.data_address, store.get, write)

    decrypt_peak = traced_peak(decrypt_all)
    assert decrypt_peak < 8 * MAX_PIECE_BYTES
    assert written[0] == size
    expected = blake3()
    for offset in range(0, size, 1 << 24):
        expected.update(source.content(offset, min(1 << 24, size - offset)))
    assert hasher.digest() == expected.digest()
