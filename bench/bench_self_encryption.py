"""Self-encryption throughput: prints encrypt and decrypt MB/s (1 MB = 10**6 bytes).

    .venv/bin/python -m bench.bench_self_encryption [--mib 256] [--piece-kib 4092 1024] [--repeat 3]

Inputs are generated deterministically: ``random`` bytes (incompressible) and ``text``
(words of a fixed vocabulary, compressible about 3x). Encryption reads from an in-memory
file object and keeps the chunks in a dict; decryption fetches from that dict and hashes
what it writes, to check the round trip without keeping a second copy. Each figure is
the best of ``--repeat`` runs (the machine is shared; the best is the least disturbed).
"""

from __future__ import annotations

import argparse
import io
import random
import time
from collections.abc import Callable

from blake3 import blake3

from protocol.self_encryption import MAX_PIECE_BYTES, StreamEncryptor, decrypt

MB = 1_000_000


TEXT_BLOCK_BYTES = 8 * 1024 * 1024


def random_input(size: int) -> bytes:
    """Incompressible bytes: the BLAKE3 output stream of a fixed seed."""
    return blake3(b"bench_self_encryption random").digest(length=size)


def text_input(size: int) -> bytes:
    """Compressible text: an 8 MiB block of random words, repeated with shifting rotations.

    Repeats are 8 MiB apart, beyond zstd-1's window and never piece-aligned, so every piece
    compresses like fresh text and no two pieces are equal.
    """
    rng = random.Random(2)
    vocabulary = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 10)))
        for _ in range(5000)
    ]
    lines: list[str] = []
    length = 0
    while length < TEXT_BLOCK_BYTES:
        line = " ".join(rng.choices(vocabulary, k=12)) + ".\n"
        lines.append(line)
        length += len(line)
    block = "".join(lines).encode()[:TEXT_BLOCK_BYTES]
    parts: list[bytes] = []
    for turn in range(-(-size // TEXT_BLOCK_BYTES)):
        shift = (turn * 1_000_003) % TEXT_BLOCK_BYTES
        parts.append(block[shift:] + block[:shift])
    return b"".join(parts)[:size]


def run(name: str, data: bytes, max_piece_bytes: int, repeat: int) -> None:
    """Encrypt and decrypt ``repeat`` times; print the best throughput of each."""
    encrypt_seconds = decrypt_seconds = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        encryptor = StreamEncryptor(io.BytesIO(data), max_piece_bytes=max_piece_bytes)
        store = {chunk.address: chunk.content for chunk in encryptor.chunks()}
        encrypt_seconds = min(encrypt_seconds, time.perf_counter() - started)

        hasher = blake3()
        write: Callable[[bytes], object] = hasher.update
        started = time.perf_counter()
        size = decrypt(encryptor.data_address, store.get, write)
        decrypt_seconds = min(decrypt_seconds, time.perf_counter() - started)
        if size != len(data) or hasher.digest() != blake3(data).digest():
            raise SystemExit(f"{name}: round trip failed")
    stored = sum(len(content) for content in store.values())
    print(
        f"{name:7s} piece {max_piece_bytes / 1024:6.0f} KiB  {len(data) / MB:6.0f} MB -> "
        f"{len(store):4d} chunks, {stored / len(data):5.3f} of input | "
        f"encrypt {len(data) / MB / encrypt_seconds:6.0f} MB/s | "
        f"decrypt {len(data) / MB / decrypt_seconds:6.0f} MB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="input size in MiB (default 256)")
    parser.add_argument(
        "--piece-kib",
        type=int,
        nargs="+",
        default=[MAX_PIECE_BYTES // 1024, 1024],
        help="max piece sizes to compare, in KiB",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; best is shown")
    arguments = parser.parse_args()
    size = arguments.mib * 1024 * 1024
    inputs = {"random": random_input(size), "text": text_input(size)}
    for name, data in inputs.items():
        for piece_kib in arguments.piece_kib:
            run(name, data, piece_kib * 1024, arguments.repeat)


if __name__ == "__main__":
    main()
