import os
import stat
from pathlib import Path

import pytest
from blake3 import blake3

from protocol import identity as ident
from protocol.identity import Identity, IdentityError

SEED = bytes(range(32))
# Pinned: a fixed seed must always give this PeerId (ML-DSA-65 keygen from seed, then BLAKE3).
PINNED_PEER_ID = "66de1384e0ba89c45e52c0cb2b2072efd63e1137e37007b3bfa8738f20db11eb"


def test_fixed_seed_gives_fixed_peer_id() -> None:
    a, b = Identity.from_seed(SEED), Identity.from_seed(SEED)
    assert a.peer_id == b.peer_id == bytes.fromhex(PINNED_PEER_ID)
    assert len(a.public_key) == ident.PUBLIC_KEY_BYTES
    assert a.peer_id == blake3(a.public_key).digest()
    assert len(a.peer_id_hex) == 64
    assert Identity.from_seed(bytes(32)).peer_id != a.peer_id


def test_sign_and_verify() -> None:
    me = Identity.from_seed(SEED)
    other = Identity.from_seed(bytes(32))
    sig = me.sign(b"transcript")
    assert len(sig) == ident.SIGNATURE_BYTES
    assert ident.verify(me.public_key, sig, b"transcript")
    assert not ident.verify(me.public_key, sig, b"transcripT")
    assert not ident.verify(other.public_key, sig, b"transcript")
    assert not ident.verify(me.public_key[:-1], sig, b"transcript")
    assert not ident.verify(me.public_key, sig[:-1], b"transcript")


def test_key_file_created_owner_only_then_reused(tmp_path: Path) -> None:
    first, created = ident.load_or_create(tmp_path)
    assert created
    path = tmp_path / ident.KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = ident.load_or_create(tmp_path)
    assert not created_again
    assert again.peer_id == first.peer_id


def _expect_error(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / ident.KEY_FILE_NAME
    path.write_bytes(data)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=fragment):
        ident.load_or_create(tmp_path)
    assert path.read_bytes() == data, "a bad key file must never be replaced"


def test_truncated_key_file(tmp_path: Path) -> None:
    good = ident.encode_key_file(Identity.from_seed(SEED))
    _expect_error(tmp_path, good[:-7], "truncated")


def test_tampered_key_file(tmp_path: Path) -> None:
    good = bytearray(ident.encode_key_file(Identity.from_seed(SEED)))
    good[12] ^= 0x01
    _expect_error(tmp_path, bytes(good), "checksum")


def test_foreign_key_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, b"-----BEGIN PRIVATE KEY-----\nMII...\n", "foreign")


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    ident.load_or_create(tmp_path)
    path = tmp_path / ident.KEY_FILE_NAME
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        ident.load_or_create(tmp_path)


def test_missing_root_dir(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot create"):
        ident.load_or_create(tmp_path / "nope")
