"""Node identity: an ML-DSA-65 keypair and the PeerId derived from it.

PeerId = BLAKE3(raw 1952-byte ML-DSA-65 public key). The private key is kept as its
32-byte seed in a small key file with a magic header and a checksum, so a truncated,
tampered or foreign file is recognised and reported, never silently replaced.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_KEY_BYTES: Final = 1952
SIGNATURE_BYTES: Final = 3309
SEED_BYTES: Final = 32
PEER_ID_BYTES: Final = 32

KEY_FILE_NAME: Final = "identity.key"
_KEY_MAGIC: Final = b"AAKEY\x00\x01\n"  # format name and version 1
_CHECKSUM_BYTES: Final = 32
_KEY_FILE_BYTES: Final = len(_KEY_MAGIC) + SEED_BYTES + PEER_ID_BYTES + _CHECKSUM_BYTES


class IdentityError(Exception):
    """A key file that cannot be used as this node's identity."""


def peer_id_of(public_key: bytes) -> bytes:
    """PeerId of a raw ML-DSA-65 public key: its BLAKE3 hash (32 bytes)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"an ML-DSA-65 public key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    return blake3(public_key).digest()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid ML-DSA-65 signature of ``message`` by ``public_key``."""
    try:
        key = mldsa.MLDSA65PublicKey.from_public_bytes(public_key)
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """An ML-DSA-65 keypair and its PeerId."""

    seed: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    peer_id: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity derived deterministically from a 32-byte seed (fixed ids in tests)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an ML-DSA-65 seed is {SEED_BYTES} bytes, got {len(seed)}")
        key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(seed=seed, public_key=public_key, peer_id=peer_id_of(public_key))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls.from_seed(os.urandom(SEED_BYTES))

    @property
    def peer_id_hex(self) -> str:
        return self.peer_id.hex()

    def sign(self, message: bytes) -> bytes:
        """ML-DSA-65 signature of ``message``."""
        return self._private_key().sign(message)

    def _private_key(self) -> mldsa.MLDSA65PrivateKey:
        cached: mldsa.MLDSA65PrivateKey | None = self.__dict__.get("_key")
        if cached is None:
            cached = mldsa.MLDSA65PrivateKey.from_seed_bytes(self.seed)
            object.__setattr__(self, "_key", cached)
        return cached


def encode_key_file(identity: Identity) -> bytes:
    """The key file bytes: magic, seed, PeerId, BLAKE3 checksum of all before it."""
    body = _KEY_MAGIC + identity.seed + identity.peer_id
    return body + blake3(body).digest()


def decode_key_file(data: bytes, source: str = "key file") -> Identity:
    """Parse key file bytes; raises ``IdentityError`` naming what is wrong."""
    if not data.startswith(_KEY_MAGIC[:5]):
        raise IdentityError(f"{source} is not an autonomi-actors key file (foreign format)")
    if not data.startswith(_KEY_MAGIC):
        raise IdentityError(f"{source} has an unsupported key file version")
    if len(data) != _KEY_FILE_BYTES:
        raise IdentityError(
            f"{source} is {len(data)} bytes, expected {_KEY_FILE_BYTES} (truncated or padded)"
        )
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if blake3(body).digest() != checksum:
        raise IdentityError(f"{source} fails its checksum (tampered or corrupted)")
    start = len(_KEY_MAGIC)
    seed = body[start : start + SEED_BYTES]
    stored_peer_id = body[start + SEED_BYTES :]
    identity = Identity.from_seed(seed)
    if identity.peer_id != stored_peer_id:
        raise IdentityError(f"{source}: the key does not produce the PeerId recorded with it")
    return identity


def load_or_create(root_dir: Path) -> tuple[Identity, bool]:
    """Load the identity of ``root_dir``, creating it (owner-only) on first start.

    Returns the identity and whether it was created now. An existing file that is
    unreadable, damaged, or readable by others raises ``IdentityError``; it is
    never overwritten.
    """
    path = root_dir / KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path), False
    except OSError as exc:
        raise IdentityError(f"cannot create key file {path}: {exc.strerror}") from exc
    identity = Identity.generate()
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encode_key_file(identity))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise IdentityError(f"cannot write key file {path}: {exc.strerror}") from exc
    return identity, True


def _load(path: Path) -> Identity:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o});"
                " run: chmod 600 " + str(path)
            )
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from exc
    return decode_key_file(data, source=f"key file {path}")
