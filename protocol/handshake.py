"""The identity handshake: each side of a QUIC connection proves its ML-DSA-65 key.

TLS (a throw-away self-signed certificate per process) gives the encrypted channel;
this handshake, run on the first unidirectional stream of each side, tells who is at
the other end. It is symmetric and takes two frames per side, sent in parallel::

    client                                   server
      Hello(peer_id, key, nonce_c, cert_hash) ->
                   <- Hello(peer_id, key, nonce_s, cert_hash)
      (on the peer's Hello, each side signs its role and the transcript)
      Proof(sig_c)                            ->
                   <- Proof(sig_s)

transcript = SHA-256(CONTEXT, cert_hash, nonce_c, nonce_s, key_c, key_s), where
``cert_hash`` is the SHA-256 of the server's certificate (DER) as *this* connection
saw it (tls-server-end-point channel binding). A relaying man in the middle
terminates TLS with its own certificate, so the two ends see different hashes and
no signature verifies. A peer is accepted when its PeerId is BLAKE3 of its key,
equals the PeerId that was dialled (if any), its nonce was never seen before, and
its signature verifies.

This module is sans-IO (aioquic/h11 style): ``IdentityHandshake`` consumes messages
and the current time and returns outputs as data (``Send``, ``Accepted``,
``Rejected``); the caller moves bytes and runs timers.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from protocol.identity import PUBLIC_KEY_BYTES, peer_id_of, verify
from protocol.wire import HANDSHAKE_NONCE_BYTES, INSTANCE_ID_BYTES, Hello, Message, Proof

CONTEXT: Final = b"autonomi-actors identity handshake v1"
DEFAULT_TIMEOUT: Final = 10.0


class Role(enum.StrEnum):
    """The side of the QUIC connection: the client dialled, the server accepted."""

    CLIENT = "client"
    SERVER = "server"

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class RejectReason(enum.StrEnum):
    """Why a handshake failed (logged, counted, and sent as the close reason)."""

    BAD_SIGNATURE = "bad_signature"
    PEER_ID_NOT_KEY_HASH = "peer_id_not_key_hash"
    UNEXPECTED_PEER_ID = "unexpected_peer_id"
    REPLAYED = "replayed"
    CHANNEL_BINDING_MISMATCH = "channel_binding_mismatch"
    """The peer saw another TLS certificate than this side: a man in the middle."""
    SELF_CONNECTION = "self_connection"
    STALLED = "stalled"
    PROTOCOL_VIOLATION = "protocol_violation"
    CONNECTION_LOST = "connection_lost"


class Signer(Protocol):
    """What the handshake needs of the local identity (``protocol.identity.Identity``)."""

    @property
    def peer_id(self) -> bytes: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


Verifier = Callable[[bytes, bytes, bytes], bool]
"""``verify(public_key, signature, message) -> bool``."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message to the peer on the handshake stream."""

    message: Hello | Proof


@dataclass(frozen=True, slots=True)
class Accepted:
    """The peer proved its identity."""

    peer_id: bytes
    public_key: bytes = field(repr=False)
    listen_addrs: tuple[str, ...]
    instance: bytes = field(repr=False)
    """The peer's per-process instance id (changes when it restarts)."""
    transcript: bytes = field(repr=False)
    """The transcript hash, equal on both sides: a symmetric tie-breaker."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The handshake failed; close the connection."""

    reason: RejectReason
    detail: str = ""


Output = Send | Accepted | Rejected


def hello_message(
    signer: Signer,
    nonce: bytes,
    cert_hash: bytes,
    instance: bytes,
    listen_addrs: tuple[str, ...],
) -> Hello:
    """The Hello a side sends first (it needs no signature, so a caller may send it
    before the state machine runs; ``IdentityHandshake.start`` builds the same one)."""
    return Hello(
        peer_id=signer.peer_id,
        public_key=signer.public_key,
        nonce=nonce,
        cert_hash=cert_hash,
        instance=instance,
        listen_addrs=list(listen_addrs),
    )


def transcript_hash(
    cert_hash: bytes, client_nonce: bytes, server_nonce: bytes, client_key: bytes, server_key: bytes
) -> bytes:
    """SHA-256 of the context string and every value both sides must agree on."""
    digest = hashlib.sha256(CONTEXT)
    for part in (cert_hash, client_nonce, server_nonce, client_key, server_key):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()


def signed_payload(role: Role, transcript: bytes) -> bytes:
    """What the side playing ``role`` signs: a server signature never passes as a client's."""
    return CONTEXT + b"/" + role.value.encode() + b"/" + transcript


class ReplayCache:
    """A bounded memory of handshake nonces already seen (oldest forgotten first).

    A nonce is 32 random bytes, so a repeat means a recorded handshake is being
    replayed (or reflected back at its sender).
    """

    def __init__(self, capacity: int = 65536, ttl: float = 3600.0) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, nonce: bytes, now: float) -> bool:
        """Record ``nonce``; False if it was already seen (a replay)."""
        self._expire(now)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + self._ttl
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            nonce, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[nonce]


class State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    AWAIT_PROOF = "await_proof"
    DONE = "done"


class IdentityHandshake:
    """One side of the identity handshake on one connection (sans-IO).

    ``cert_hash`` is the SHA-256 of the server's TLS certificate (DER): for the server
    its own, for the client the one it received on this connection.
    """

    def __init__(
        self,
        *,
        signer: Signer,
        role: Role,
        cert_hash: bytes,
        now: float,
        expected_peer_id: bytes | None = None,
        listen_addrs: tuple[str, ...] = (),
        instance: bytes | None = None,
        replay_cache: ReplayCache | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        nonce: bytes | None = None,
        verifier: Verifier = verify,
    ) -> None:
        if len(cert_hash) != 32:
            raise ValueError("cert_hash is a SHA-256 digest (32 bytes)")
        self.role = role
        self.state = State.START
        self.result: Accepted | Rejected | None = None
        self.deadline: float | None = now + timeout
        self._signer = signer
        self._cert_hash = cert_hash
        self._expected_peer_id = expected_peer_id
        self._listen_addrs = listen_addrs
        self._instance = instance if instance is not None else os.urandom(INSTANCE_ID_BYTES)
        self._replay_cache = replay_cache
        self._nonce = nonce if nonce is not None else os.urandom(HANDSHAKE_NONCE_BYTES)
        self._verify = verifier
        self._peer_hello: Hello | None = None
        self._transcript = b""

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def nonce(self) -> bytes:
        return self._nonce

    def start(self) -> list[Output]:
        """Begin: the Hello to send."""
        if self.state is not State.START:
            return []
        self.state = State.AWAIT_HELLO
        hello = hello_message(
            self._signer, self._nonce, self._cert_hash, self._instance, self._listen_addrs
        )
        return [Send(hello)]

    def receive(self, message: Message, now: float) -> list[Output]:
        """Feed one message the peer sent on its handshake stream."""
        if self.state is State.DONE:
            return []
        if self.deadline is not None and now >= self.deadline:
            return self._reject(RejectReason.STALLED, "the handshake took too long")
        if self.state is State.START:
            return self._reject(RejectReason.PROTOCOL_VIOLATION, "message before start")
        if isinstance(message, Hello) and self.state is State.AWAIT_HELLO:
            return self._on_hello(message, now)
        if isinstance(message, Proof) and self.state is State.AWAIT_PROOF:
            return self._on_proof(message)
        return self._reject(
            RejectReason.PROTOCOL_VIOLATION,
            f"unexpected {type(message).__name__} while in {self.state.value}",
        )

    def handle_timer(self, now: float) -> list[Output]:
        """Reject with ``STALLED`` once the deadline has passed."""
        if self.state is State.DONE or self.deadline is None or now < self.deadline:
            return []
        return self._reject(RejectReason.STALLED, f"no complete handshake in {self.state.value}")

    def connection_lost(self, detail: str = "") -> list[Output]:
        """The connection closed before the handshake finished."""
        if self.state is State.DONE:
            return []
        return self._reject(RejectReason.CONNECTION_LOST, detail)

    # -- transitions ---------------------------------------------------------------

    def _on_hello(self, hello: Hello, now: float) -> list[Output]:
        if (
            len(hello.public_key) != PUBLIC_KEY_BYTES
            or peer_id_of(hello.public_key) != hello.peer_id
        ):
            return self._reject(
                RejectReason.PEER_ID_NOT_KEY_HASH,
                f"claimed {hello.peer_id.hex()[:16]} is not BLAKE3 of its key",
            )
        if hello.public_key == self._signer.public_key:
            return self._reject(RejectReason.SELF_CONNECTION, "the peer has this node's own key")
        if self._expected_peer_id is not None and hello.peer_id != self._expected_peer_id:
            return self._reject(
                RejectReason.UNEXPECTED_PEER_ID,
                f"dialled {self._expected_peer_id.hex()[:16]}, found {hello.peer_id.hex()[:16]}",
            )
        if hello.cert_hash != self._cert_hash:
            return self._reject(
                RejectReason.CHANNEL_BINDING_MISMATCH,
                "the peer saw another TLS certificate on this connection (man in the middle?)",
            )
        if hello.nonce == self._nonce:
            return self._reject(RejectReason.REPLAYED, "the peer echoed this side's nonce")
        if self._replay_cache is not None and not self._replay_cache.remember(hello.nonce, now):
            return self._reject(RejectReason.REPLAYED, "the peer's nonce was seen before")
        self._peer_hello = hello
        if self.role is Role.CLIENT:
            client_nonce, server_nonce = self._nonce, hello.nonce
            client_key, server_key = self._signer.public_key, hello.public_key
        else:
            client_nonce, server_nonce = hello.nonce, self._nonce
            client_key, server_key = hello.public_key, self._signer.public_key
        self._transcript = transcript_hash(
            self._cert_hash, client_nonce, server_nonce, client_key, server_key
        )
        signature = self._signer.sign(signed_payload(self.role, self._transcript))
        self.state = State.AWAIT_PROOF
        return [Send(Proof(signature=signature))]

    def _on_proof(self, proof: Proof) -> list[Output]:
        hello = self._peer_hello
        assert hello is not None
        payload = signed_payload(self.role.other, self._transcript)
        if not self._verify(hello.public_key, proof.signature, payload):
            return self._reject(
                RejectReason.BAD_SIGNATURE, "the transcript signature does not verify"
            )
        accepted = Accepted(
            hello.peer_id,
            hello.public_key,
            tuple(hello.listen_addrs),
            hello.instance,
            self._transcript,
        )
        self._finish(accepted)
        return [accepted]

    def _reject(self, reason: RejectReason, detail: str) -> list[Output]:
        rejected = Rejected(reason, detail)
        self._finish(rejected)
        return [rejected]

    def _finish(self, result: Accepted | Rejected) -> None:
        self.state = State.DONE
        self.result = result
        self.deadline = None
