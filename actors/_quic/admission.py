"""Admission of inbound QUIC connections: bounded unauthenticated work.

A connection is *half-open* from the client Initial that creates it until its
identity handshake accepts the peer (or it closes). Each costs the node a QUIC
connection, a TLS key exchange and an identity handshake machine (about 50 KB), all
for a peer that proved nothing yet. This module holds the rules that bound them, with
no I/O and no clock of its own (the caller passes ``now``):

- ``HalfOpenAdmission``: at most ``per_source`` half-open connections per source IP
  and ``total`` in all; an Initial over either cap is refused (dropped: nothing is
  allocated, nothing is sent). Above ``retry_above`` half-open connections in all,
  a client Initial without a valid Retry token gets a QUIC Retry instead of a
  connection (RFC 9000 8.1.2): a spoofed source never sees the token, so it costs
  the node one small datagram and no state.
- ``RetryTokens``: stateless Retry tokens, AES-GCM sealed under a per-process key,
  bound to the client's address, the original destination connection ID and the
  Retry's source connection ID, valid ``TOKEN_LIFETIME`` seconds.
- ``parse_initial`` and ``retry_packet``: the few bytes of the QUIC v1 long header
  the decision needs, and the Retry packet (built by qh3's encoder, whichever stack
  the node runs: the packet format is the stack's business, not ours).

The deadline of a half-open connection is the Transport's ``handshake_timeout``
(its setup timer closes the connection and releases it).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from qh3.quic.packet import encode_quic_retry

QUIC_V1: Final = 0x00000001
TOKEN_LIFETIME: Final = 10.0
"""Seconds a Retry token is accepted (a client echoes it at once)."""
RETRY_CID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_ISSUED = struct.Struct("!Q")

SocketAddress = tuple[str, int]


class Verdict(enum.Enum):
    ADMIT = "admit"
    RETRY = "retry"
    REFUSE = "refuse"


@dataclass(frozen=True)
class HalfOpenLimits:
    per_source: int = 16
    """Half-open connections from one source IP."""
    total: int = 256
    """Half-open connections in all."""
    retry_above: int | None = None
    """From this many half-open connections on, unvalidated clients get a Retry
    (None: half of ``total``; 0: always)."""

    @property
    def retry_threshold(self) -> int:
        return self.total // 2 if self.retry_above is None else self.retry_above


@dataclass
class HalfOpenAdmission:
    """Which inbound connections are half-open, by source; decides on new ones."""

    limits: HalfOpenLimits = field(default_factory=HalfOpenLimits)
    _source_of: dict[int, str] = field(default_factory=dict)
    _per_source: dict[str, int] = field(default_factory=dict)
    peak: int = 0

    @property
    def count(self) -> int:
        return len(self._source_of)

    def from_source(self, host: str) -> int:
        return self._per_source.get(host, 0)

    def decide(self, host: str, validated: bool) -> Verdict:
        """What to do with a client Initial from ``host`` that would open a connection.

        ``validated``: the client proved it owns its address (a valid Retry token) or
        the path cannot be spoofed (a relay circuit)."""
        if self.from_source(host) >= self.limits.per_source or self.count >= self.limits.total:
            return Verdict.REFUSE
        if not validated and self.count >= self.limits.retry_threshold:
            return Verdict.RETRY
        return Verdict.ADMIT

    def opened(self, conn_id: int, host: str) -> None:
        if conn_id in self._source_of:
            return
        self._source_of[conn_id] = host
        self._per_source[host] = self._per_source.get(host, 0) + 1
        self.peak = max(self.peak, self.count)

    def finished(self, conn_id: int) -> bool:
        """The connection is authenticated or closed; False if it was not half-open."""
        host = self._source_of.pop(conn_id, None)
        if host is None:
            return False
        left = self._per_source[host] - 1
        if left:
            self._per_source[host] = left
        else:
            del self._per_source[host]
        return True


# -- the client Initial and the Retry ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitialHeader:
    version: int
    destination_cid: bytes
    source_cid: bytes
    token: bytes


def parse_initial(data: bytes) -> InitialHeader | None:
    """The long header of a QUIC v1 Initial packet; None if ``data`` is not one."""
    if len(data) < 7 or data[0] & 0xF0 != 0xC0:
        return None
    version = int.from_bytes(data[1:5], "big")
    if version != QUIC_V1:
        return None
    at = 5
    dcid_length = data[at]
    at += 1
    if dcid_length > 20 or len(data) < at + dcid_length + 1:
        return None
    dcid = data[at : at + dcid_length]
    at += dcid_length
    scid_length = data[at]
    at += 1
    if scid_length > 20 or len(data) < at + scid_length + 1:
        return None
    scid = data[at : at + scid_length]
    at += scid_length
    prefix = data[at] >> 6
    size = 1 << prefix
    if len(data) < at + size:
        return None
    token_length = int.from_bytes(data[at : at + size], "big") & ((1 << (8 * size - 2)) - 1)
    at += size
    if len(data) < at + token_length:
        return None
    return InitialHeader(version, dcid, scid, data[at : at + token_length])


def retry_packet(header: InitialHeader, retry_cid: bytes, token: bytes) -> bytes:
    """The Retry answering ``header``'s Initial: the client comes back to ``retry_cid``
    with ``token``."""
    return bytes(
        encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
    )


class RetryTokens:
    """Mints and checks stateless Retry tokens (one random key per process)."""

    def __init__(self, key: bytes | None = None, lifetime: float = TOKEN_LIFETIME) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=128))
        self.lifetime = lifetime

    def mint(
        self, addr: SocketAddress, original_dcid: bytes, retry_cid: bytes, now: float
    ) -> bytes:
        plain = (
            _pack_address(addr)
            + bytes([len(original_dcid)])
            + original_dcid
            + _ISSUED.pack(max(0, int(now * 1000)))
        )
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, retry_cid)

    def check(
        self, addr: SocketAddress, destination_cid: bytes, token: bytes, now: float
    ) -> bytes | None:
        """The original destination connection ID sealed in ``token``, if the token is
        this node's, for this address and this connection ID (the Retry's), and fresh."""
        if len(token) <= _NONCE_BYTES:
            return None
        try:
            plain = self._aead.decrypt(token[:_NONCE_BYTES], token[_NONCE_BYTES:], destination_cid)
        except InvalidTag:
            return None
        packed = _pack_address(addr)
        if not plain.startswith(packed) or len(plain) < len(packed) + 1 + _ISSUED.size:
            return None
        at = len(packed)
        length = plain[at]
        original = plain[at + 1 : at + 1 + length]
        if len(plain) != at + 1 + length + _ISSUED.size:
            return None
        (issued_ms,) = _ISSUED.unpack_from(plain, at + 1 + length)
        age = now - issued_ms / 1000
        if age > self.lifetime or age < -1.0:
            return None
        return original


def _pack_address(addr: SocketAddress) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + addr[1].to_bytes(2, "big")
