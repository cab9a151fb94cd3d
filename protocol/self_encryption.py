"""Self-encryption: a file becomes convergently encrypted chunks and one data-map chunk.

This follows Autonomi's self-encryption (maidsafe ``self_encryption``) in shape; the
cipher details differ and are explained below. Everything here is pure: the module
opens no file and touches no network; it reads from the binary file object it is
given and fetches/writes through the callables it is given.

Pieces
    The plaintext of ``size`` bytes is split into ``n >= 3`` pieces (``piece_sizes``).
    Below ``3 * max_piece`` bytes there are exactly three pieces of nearly equal size
    (the last ``size % 3`` pieces get one byte more), so 0, 1 or 2-byte files give
    three pieces, some of them empty. From ``3 * max_piece`` bytes on, every piece is
    ``max_piece`` bytes except the last, which holds the rest (at least one byte).

    ``MAX_PIECE_BYTES`` is 4 MiB - 4 KiB. A chunk costs 29 bytes more than its piece at
    worst (12-byte nonce, 1 codec byte, 16-byte tag, no compression gain), so every
    content chunk stays <= ``MAX_CHUNK_BYTES`` (4 MiB) even for incompressible data; the
    rest of the 4 KiB is headroom for a future format without moving piece boundaries.
    Why near 4 MiB rather than 1 MiB: the local cost per byte is the same for both
    (``bench/bench_self_encryption.py`` prints both), but every chunk costs the client a
    lookup and a replicated store on the network, so 4x fewer chunks means 4x fewer
    round trips, and the data map is 4x smaller (recursion starts at ~200 GiB, not 50).
    The price is a working set of a few pieces (measured peak with tracemalloc: ~20 MiB
    encrypting, ~8 MiB decrypting, for any file size), which is fine for a client.
    Measured end to end (bench, 256 MiB, one core): encrypt ~420-500 MB/s incompressible,
    ~120-150 MB/s text; decrypt ~900 MB/s incompressible, ~480 MB/s text.

Keys (convergent)
    ``pre_hash[i] = BLAKE3(piece i)``. As in Autonomi, piece ``i`` is keyed by its own
    pre-hash and those of its two predecessors ``i-1`` and ``i-2`` (wrapping around), so
    the same file always gives the same chunks, and a chunk cannot be decrypted without
    the data map::

        material  = BLAKE3-derive_key(KEY_CONTEXT, pre[i] || pre[i-1] || pre[i-2]), 64 bytes
        enc_key   = material[:32]          AES-256-GCM key
        nonce_key = material[32:]          keys the synthetic nonce below

Chunk content (what is stored and addressed; ``address = BLAKE3(content)``)
    ::

        body    = codec (1 byte: 0 raw, 1 zstd) || payload
        nonce   = BLAKE3-keyed(nonce_key, body)[:12]
        content = nonce || AES-256-GCM(enc_key, nonce, body)   (ciphertext || 16-byte tag)

    The payload is the piece compressed with zstd level 1, or the raw piece if that is
    not smaller. zstd instead of Autonomi's brotli or stdlib zlib: on this machine zstd-1
    compresses text-like data at ~160 MB/s and passes over incompressible data at
    ~2 GB/s, where zlib-1 manages ~60 and ~33 MB/s and would cap the client's put.

    The nonce is synthetic (SIV-style) rather than derived from the pre-hashes alone:
    the key is fixed by the plaintext, but the compressed body is only fixed for one
    zstd version, and two different bodies under one GCM key and nonce would leak their
    XOR and GCM's authentication key. With the nonce a keyed hash of the body, equal
    bodies give equal chunks (convergence) and different bodies get different nonces.
    Autonomi XORs its ciphertext with a pad made of the neighbours' hashes because its
    AES-CBC key comes from one neighbour only; here all three hashes already go into the
    key and the AEAD authenticates, so a pad would add nothing.

Data map
    ``DataMap(version, file_size, child_level, chunks=[ChunkInfo(index, pre_hash,
    post_hash, size)])`` is a msgspec Struct, serialized as ``DATA_MAP_MAGIC`` followed by
    msgpack. If the serialized map is larger than ``max_data_map_bytes`` (default one
    chunk), its bytes are themselves self-encrypted like a file, and the new map has
    ``child_level + 1``; this repeats until the map fits in one chunk (each level is
    ~50000x smaller). The root map is stored as one chunk, in the clear, as Autonomi does
    for public data; its address is the data address the user gets back.

    Security consequence, stated plainly: whoever knows the data address can read the
    file, and that includes the nodes that store the root data-map chunk (they know its
    address because it is the key they store it under). Nodes holding content chunks
    only learn nothing. For private data a client must keep the root ``DataMap`` itself
    (``StreamEncryptor.data_map``, ``encode_data_map``) instead of uploading that chunk.

Order and memory
    ``StreamEncryptor.chunks`` reads the source twice: pass 1 hashes the pieces, pass 2
    re-reads, re-checks each pre-hash (``SourceChanged`` if the file changed) and yields
    the content chunks in piece order, then the chunks of any child maps, and the root
    data-map chunk last, so a root that exists never points at chunks not yet yielded.
    Each distinct chunk is yielded once. Memory: a few pieces plus 32 bytes and one
    ``ChunkInfo`` per piece (the map), whatever the file size.

    ``decrypt`` fetches and checks every chunk (address = BLAKE3(content), then the AEAD
    tag, then size and pre-hash of the plaintext) before writing its piece, in order. On
    an error, what was already written is a correct prefix of the file; the caller
    should discard it. Child data maps are held in memory while decrypting (~80 bytes per
    4 MiB of file, capped at ``MAX_CHILD_MAP_BYTES``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, BinaryIO, Final

import msgspec
import zstandard
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.chunks import chunk_address
from protocol.wire import MAX_CHUNK_BYTES
from protocol.xor import ADDRESS_BYTES

DATA_MAP_VERSION: Final = 1
DATA_MAP_MAGIC: Final = b"AADM"
"""Prefix of a serialized data map (autonomi-actors data map)."""
KEY_CONTEXT: Final = "autonomi-actors 2025 self-encryption v1 piece key"

NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
CODEC_BYTES: Final = 1
CHUNK_OVERHEAD_BYTES: Final = NONCE_BYTES + CODEC_BYTES + TAG_BYTES
"""The most a content chunk can exceed its piece by (incompressible piece)."""
MAX_PIECE_BYTES: Final = MAX_CHUNK_BYTES - 4096
"""Default and largest plaintext piece: 4 MiB - 4 KiB."""
MIN_PIECE_BYTES: Final = 1024
"""Smallest accepted ``max_piece_bytes``: below it data maps would not shrink by recursion."""
MIN_DATA_MAP_BYTES: Final = 1024
MIN_PIECES: Final = 3
MAX_CHILD_LEVEL: Final = 8
MAX_CHILD_MAP_BYTES: Final = 512 * 1024 * 1024
"""Largest child data map ``decrypt`` will assemble in memory (a file of ~25 TiB)."""
ZSTD_LEVEL: Final = 1

_CODEC_RAW: Final = 0
_CODEC_ZSTD: Final = 1

Hash = Annotated[bytes, msgspec.Meta(min_length=ADDRESS_BYTES, max_length=ADDRESS_BYTES)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class SelfEncryptionError(Exception):
    """Base of every error of self-encryption and decryption."""


class CorruptChunk(SelfEncryptionError):
    """A fetched chunk does not hash to its address, or does not decrypt to its piece."""

    def __init__(self, address: bytes, reason: str) -> None:
        super().__init__(f"chunk {address.hex()}: {reason}")
        self.address = address
        self.reason = reason


class MissingChunk(SelfEncryptionError):
    """``fetch`` found no chunk at an address."""

    def __init__(self, address: bytes) -> None:
        super().__init__(f"chunk {address.hex()} not found")
        self.address = address


class BadDataMap(SelfEncryptionError):
    """The data address does not lead to a well-formed, consistent data map."""


class SourceChanged(SelfEncryptionError):
    """The source file changed (size or content) while it was being encrypted."""


class ChunkInfo(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One piece of a data map: where its chunk is and how to check its plaintext."""

    index: _Count
    pre_hash: Hash
    """BLAKE3 of the plaintext piece."""
    post_hash: Hash
    """BLAKE3 of the chunk content: the chunk's address."""
    size: _Count
    """Plaintext bytes of the piece."""


class DataMap(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What it takes to rebuild a file (``child_level == 0``) or a larger data map."""

    version: int
    file_size: _Count
    """Bytes of the file, or of the serialized child data map when ``child_level > 0``."""
    child_level: _Count
    chunks: list[ChunkInfo]

    @property
    def pre_hashes(self) -> list[bytes]:
        return [info.pre_hash for info in self.chunks]


@dataclass(frozen=True, slots=True)
class EncryptedChunk:
    """A chunk to store: ``address == BLAKE3(content)``, ``len(content) <= MAX_CHUNK_BYTES``."""

    address: bytes
    content: bytes


_map_encoder = msgspec.msgpack.Encoder()
_map_decoder = msgspec.msgpack.Decoder(DataMap)


# --- pieces and keys -------------------------------------------------------------------


def piece_sizes(file_size: int, max_piece_bytes: int = MAX_PIECE_BYTES) -> list[int]:
    """Sizes of the plaintext pieces of a file of ``file_size`` bytes (always >= 3 of them)."""
    if file_size < 0:
        raise ValueError("file size must not be negative")
    _check_piece_limit(max_piece_bytes)
    if file_size < MIN_PIECES * max_piece_bytes:
        base, extra = divmod(file_size, MIN_PIECES)
        return [base + (1 if i >= MIN_PIECES - extra else 0) for i in range(MIN_PIECES)]
    full, rest = divmod(file_size, max_piece_bytes)
    return [max_piece_bytes] * full + ([rest] if rest else [])


def neighbour_indices(index: int, count: int) -> tuple[int, int]:
    """The two pieces whose pre-hashes key piece ``index``: ``index-1`` and ``index-2``, wrapped."""
    return (index - 1) % count, (index - 2) % count


def piece_keys(index: int, pre_hashes: Sequence[bytes]) -> tuple[bytes, bytes]:
    """``(enc_key, nonce_key)`` of piece ``index``, from its own and its neighbours' pre-hashes."""
    first, second = neighbour_indices(index, len(pre_hashes))
    material = blake3(
        pre_hashes[index] + pre_hashes[first] + pre_hashes[second],
        derive_key_context=KEY_CONTEXT,
    ).digest(length=64)
    return material[:32], material[32:]


def encrypt_piece(index: int, piece: bytes, pre_hashes: Sequence[bytes]) -> EncryptedChunk:
    """The chunk of piece ``index``; ``pre_hashes`` are those of every piece of the file."""
    enc_key, nonce_key = piece_keys(index, pre_hashes)
    # A fresh (de)compressor per call: they cost microseconds, and a shared one would not
    # be safe for a client that encrypts pieces on several threads.
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(piece) if piece else b""
    if piece and len(compressed) < len(piece):
        body = bytes((_CODEC_ZSTD,)) + compressed
    else:
        del compressed  # an incompressible piece: do not keep a useless copy alive
        body = bytes((_CODEC_RAW,)) + piece
    nonce = blake3(body, key=nonce_key).digest(length=NONCE_BYTES)
    content = nonce + AESGCM(enc_key).encrypt(nonce, body, None)
    return EncryptedChunk(chunk_address(content), content)


def decrypt_chunk(info: ChunkInfo, content: bytes, pre_hashes: Sequence[bytes]) -> bytes:
    """The plaintext piece of a fetched chunk, after every check; raises ``CorruptChunk``."""
    _check_content(info.post_hash, content)
    return _open_chunk(info, content, pre_hashes)


def _check_content(address: bytes, content: bytes) -> None:
    if len(content) > MAX_CHUNK_BYTES:
        raise CorruptChunk(address, f"{len(content)} bytes, more than a chunk may hold")
    if chunk_address(content) != address:
        raise CorruptChunk(address, "content does not hash to its address")


def _open_chunk(info: ChunkInfo, content: bytes, pre_hashes: Sequence[bytes]) -> bytes:
    """Decrypt a chunk already known to hash to ``info.post_hash``."""
    address = info.post_hash
    if len(content) < NONCE_BYTES + TAG_BYTES + CODEC_BYTES:
        raise CorruptChunk(address, "too short to be an encrypted piece")
    enc_key, _ = piece_keys(info.index, pre_hashes)
    nonce = content[:NONCE_BYTES]
    try:
        body = AESGCM(enc_key).decrypt(nonce, memoryview(content)[NONCE_BYTES:], None)
    except InvalidTag:
        raise CorruptChunk(address, "does not decrypt with the data map's key") from None
    codec, payload = body[0], memoryview(body)[1:]
    if codec == _CODEC_RAW:
        piece = payload.tobytes()
    elif codec == _CODEC_ZSTD:
        piece = _decompress(address, payload, info.size)
    else:
        raise CorruptChunk(address, f"unknown codec {codec}")
    if len(piece) != info.size or blake3(piece).digest() != info.pre_hash:
        raise CorruptChunk(address, "plaintext does not match the data map")
    return piece


def _decompress(address: bytes, payload: memoryview, size: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(payload)
        if declared != size:
            raise CorruptChunk(address, f"compressed frame declares {declared} bytes, not {size}")
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as error:
        raise CorruptChunk(address, f"cannot decompress: {error}") from None


# --- data maps -------------------------------------------------------------------------


def encode_data_map(data_map: DataMap) -> bytes:
    """The serialized data map (what the root data-map chunk holds)."""
    return DATA_MAP_MAGIC + _map_encoder.encode(data_map)


def decode_data_map(content: bytes) -> DataMap:
    """Parse and check a serialized data map; raises ``BadDataMap``."""
    if not content.startswith(DATA_MAP_MAGIC):
        raise BadDataMap("not a data map (no data-map prefix)")
    try:
        data_map = _map_decoder.decode(memoryview(content)[len(DATA_MAP_MAGIC) :])
    except msgspec.DecodeError as error:
        raise BadDataMap(f"malformed data map: {error}") from None
    check_data_map(data_map)
    return data_map


def check_data_map(data_map: DataMap) -> None:
    """Raise ``BadDataMap`` unless the map is internally consistent."""
    if data_map.version != DATA_MAP_VERSION:
        raise BadDataMap(f"unsupported data map version {data_map.version}")
    if data_map.child_level > MAX_CHILD_LEVEL:
        raise BadDataMap(f"child level {data_map.child_level} exceeds {MAX_CHILD_LEVEL}")
    if len(data_map.chunks) < MIN_PIECES:
        raise BadDataMap(f"{len(data_map.chunks)} chunks, fewer than {MIN_PIECES}")
    for position, info in enumerate(data_map.chunks):
        if info.index != position:
            raise BadDataMap(f"chunk {position} carries index {info.index}")
        if info.size > MAX_CHUNK_BYTES:
            raise BadDataMap(f"piece {position} of {info.size} bytes cannot fit a chunk")
    if sum(info.size for info in data_map.chunks) != data_map.file_size:
        raise BadDataMap("piece sizes do not add up to the file size")
    if data_map.child_level > 0 and data_map.file_size > MAX_CHILD_MAP_BYTES:
        raise BadDataMap(f"child data map of {data_map.file_size} bytes is too large")


# --- encryption ------------------------------------------------------------------------


class StreamEncryptor:
    """Self-encrypts a readable, seekable binary file object in two passes.

    Iterate ``chunks()`` once and store every chunk; then ``data_address`` is the address
    of the root data-map chunk (the last one yielded) and ``data_map`` the root map.
    """

    def __init__(
        self,
        source: BinaryIO,
        *,
        max_piece_bytes: int = MAX_PIECE_BYTES,
        max_data_map_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        _check_piece_limit(max_piece_bytes)
        if not MIN_DATA_MAP_BYTES <= max_data_map_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(
                f"max_data_map_bytes must be in [{MIN_DATA_MAP_BYTES}, {MAX_CHUNK_BYTES}]"
            )
        self._source = source
        self._start = source.tell()
        self.file_size: Final = source.seek(0, io.SEEK_END) - self._start
        self._max_piece = max_piece_bytes
        self._max_map = max_data_map_bytes
        self.piece_sizes: Final = piece_sizes(self.file_size, max_piece_bytes)
        self._data_map: DataMap | None = None
        self._data_address: bytes | None = None
        self._started = False

    @property
    def data_address(self) -> bytes:
        """The address the user gets back; known once ``chunks()`` is exhausted."""
        if self._data_address is None:
            raise RuntimeError("iterate chunks() to the end first")
        return self._data_address

    @property
    def data_map(self) -> DataMap:
        """The root data map; known once ``chunks()`` is exhausted."""
        if self._data_map is None:
            raise RuntimeError("iterate chunks() to the end first")
        return self._data_map

    def chunks(self) -> Iterator[EncryptedChunk]:
        """Every distinct chunk to store: content, then child data maps, the root last."""
        if self._started:
            raise RuntimeError("chunks() can be iterated only once")
        self._started = True
        seen: set[bytes] = set()
        pre_hashes = [blake3(piece).digest() for piece in self._pieces()]
        infos = yield from _encrypt_pieces(self._pieces(pre_hashes), pre_hashes, seen)
        data_map = DataMap(DATA_MAP_VERSION, self.file_size, 0, infos)
        serialized = encode_data_map(data_map)
        while len(serialized) > self._max_map:
            data_map = yield from _encrypt_child_map(
                serialized, data_map.child_level + 1, self._max_piece, seen
            )
            serialized = encode_data_map(data_map)
        root = EncryptedChunk(chunk_address(serialized), serialized)
        self._data_map = data_map
        self._data_address = root.address
        if root.address not in seen:
            yield root

    def _pieces(self, pre_hashes: Sequence[bytes] = ()) -> Iterator[bytes]:
        """The pieces read from the source; each checked against ``pre_hashes`` if given
        (the second pass)."""
        self._source.seek(self._start)
        for index, size in enumerate(self.piece_sizes):
            piece = _read_exact(self._source, size)
            if len(piece) != size:
                raise SourceChanged(f"source ended early: {self.file_size} bytes expected")
            if pre_hashes and blake3(piece).digest() != pre_hashes[index]:
                raise SourceChanged(f"piece {index} changed between the two passes")
            yield piece
        if self._source.read(1):
            raise SourceChanged(f"source grew beyond {self.file_size} bytes")


def _encrypt_child_map(
    serialized: bytes, level: int, max_piece_bytes: int, seen: set[bytes]
) -> Generator[EncryptedChunk, None, DataMap]:
    """Yield the chunks of a serialized data map; return the map of the level above."""
    sizes = piece_sizes(len(serialized), max_piece_bytes)
    view = memoryview(serialized)
    pieces: list[bytes] = []
    offset = 0
    for size in sizes:
        pieces.append(view[offset : offset + size].tobytes())
        offset += size
    pre_hashes = [blake3(piece).digest() for piece in pieces]
    infos = yield from _encrypt_pieces(pieces, pre_hashes, seen)
    return DataMap(DATA_MAP_VERSION, len(serialized), level, infos)


def _encrypt_pieces(
    pieces: Iterable[bytes], pre_hashes: Sequence[bytes], seen: set[bytes]
) -> Generator[EncryptedChunk, None, list[ChunkInfo]]:
    """Encrypt ``pieces`` in order and yield each chunk not in ``seen`` (then added to
    it); return their ``ChunkInfo`` entries."""
    infos: list[ChunkInfo] = []
    for index, piece in enumerate(pieces):
        chunk = encrypt_piece(index, piece, pre_hashes)
        infos.append(ChunkInfo(index, pre_hashes[index], chunk.address, len(piece)))
        if chunk.address not in seen:
            seen.add(chunk.address)
            yield chunk
    return infos


def encrypt_bytes(
    data: bytes,
    *,
    max_piece_bytes: int = MAX_PIECE_BYTES,
    max_data_map_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[bytes, list[EncryptedChunk]]:
    """``(data_address, chunks)`` of an in-memory file (the root data-map chunk is last)."""
    encryptor = StreamEncryptor(
        io.BytesIO(data), max_piece_bytes=max_piece_bytes, max_data_map_bytes=max_data_map_bytes
    )
    chunks = list(encryptor.chunks())
    return encryptor.data_address, chunks


def _read_exact(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    missing = size - len(data)
    while missing:
        more = source.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _check_piece_limit(max_piece_bytes: int) -> None:
    if not MIN_PIECE_BYTES <= max_piece_bytes <= MAX_PIECE_BYTES:
        raise ValueError(f"max_piece_bytes must be in [{MIN_PIECE_BYTES}, {MAX_PIECE_BYTES}]")


# --- decryption ------------------------------------------------------------------------

Fetch = Callable[[bytes], bytes | None]
"""Returns the content stored at an address, or None if there is none."""
Write = Callable[[bytes], object]


def fetch_data_map(data_address: bytes, fetch: Fetch) -> DataMap:
    """Fetch, verify and parse the root data map at ``data_address``."""
    if len(data_address) != ADDRESS_BYTES:
        raise BadDataMap(f"a data address has {ADDRESS_BYTES} bytes, not {len(data_address)}")
    content = _fetch_verified(data_address, fetch)
    return decode_data_map(content)


def decrypt(
    data_address: bytes,
    fetch: Fetch,
    write: Write,
    *,
    prefetch: Callable[[list[bytes]], object] | None = None,
) -> int:
    """Rebuild the file at ``data_address``, passing its pieces to ``write`` in order.

    Returns the file size. ``prefetch``, if given, is called with the addresses of each
    level's chunks, in the order they will be fetched, before the first of them is, so
    a client can start downloading ahead. Raises ``MissingChunk``, ``CorruptChunk`` or
    ``BadDataMap``; exceptions of ``fetch`` and ``write`` pass through.
    """
    data_map = fetch_data_map(data_address, fetch)
    while data_map.child_level > 0:
        parts: list[bytes] = []
        _decrypt_level(data_map, fetch, parts.append, prefetch)
        child = decode_data_map(b"".join(parts))
        if child.child_level != data_map.child_level - 1:
            raise BadDataMap(
                f"level {data_map.child_level} map points to a level {child.child_level} map"
            )
        data_map = child
    _decrypt_level(data_map, fetch, write, prefetch)
    return data_map.file_size


def decrypt_bytes(data_address: bytes, fetch: Fetch) -> bytes:
    """The whole file at ``data_address``, in memory (for small files and tests)."""
    parts: list[bytes] = []
    decrypt(data_address, fetch, parts.append)
    return b"".join(parts)


def _decrypt_level(
    data_map: DataMap,
    fetch: Fetch,
    write: Write,
    prefetch: Callable[[list[bytes]], object] | None,
) -> None:
    if prefetch is not None:
        prefetch([info.post_hash for info in data_map.chunks])
    pre_hashes = data_map.pre_hashes
    for info in data_map.chunks:
        content = _fetch_verified(info.post_hash, fetch)
        write(_open_chunk(info, content, pre_hashes))


def _fetch_verified(address: bytes, fetch: Fetch) -> bytes:
    content = fetch(address)
    if content is None:
        raise MissingChunk(address)
    content = bytes(content)
    _check_content(address, content)
    return content
