"""The identity handshake state machine, pumped in memory between two sides."""

from __future__ import annotations

import hashlib

import pytest

from protocol.handshake import (
    Accepted,
    IdentityHandshake,
    Output,
    Rejected,
    RejectReason,
    ReplayCache,
    Role,
    Send,
    signed_payload,
    transcript_hash,
)
from protocol.identity import Identity
from protocol.wire import Hello, Message, Ping, Proof, WireError, decode_frame, encode_frame

ALICE = Identity.from_seed(bytes([1]) * 32)
BOB = Identity.from_seed(bytes([2]) * 32)
MALLORY = Identity.from_seed(bytes([3]) * 32)
CERT = hashlib.sha256(b"server certificate").digest()
OTHER_CERT = hashlib.sha256(b"man in the middle's certificate").digest()


def machine(
    signer: Identity,
    role: Role,
    cert_hash: bytes = CERT,
    *,
    now: float = 0.0,
    expected: bytes | None = None,
    cache: ReplayCache | None = None,
    nonce: bytes | None = None,
    timeout: float = 10.0,
) -> IdentityHandshake:
    return IdentityHandshake(
        signer=signer,
        role=role,
        cert_hash=cert_hash,
        now=now,
        expected_peer_id=expected,
        listen_addrs=(f"/ip4/127.0.0.1/udp/1/quic-v1/p2p/{signer.peer_id_hex}",),
        replay_cache=cache,
        timeout=timeout,
        nonce=nonce,
    )


def sent(outputs: list[Output]) -> list[Message]:
    """The messages to send, through a real encode/decode round trip."""
    return [decode_frame(encode_frame(o.message)) for o in outputs if isinstance(o, Send)]


def results(outputs: list[Output]) -> list[Accepted | Rejected]:
    return [o for o in outputs if isinstance(o, Accepted | Rejected)]


def pump(client: IdentityHandshake, server: IdentityHandshake, now: float = 1.0) -> None:
    """Run both sides to completion, delivering every message in order."""
    to_server = sent(client.start())
    to_client = sent(server.start())
    while (to_server or to_client) and not (client.done and server.done):
        next_to_client: list[Message] = []
        next_to_server: list[Message] = []
        for message in to_server:
            next_to_client += sent(server.receive(message, now))
        for message in to_client:
            next_to_server += sent(client.receive(message, now))
        to_server, to_client = next_to_server, next_to_client


def test_both_sides_accept_each_other() -> None:
    client = machine(ALICE, Role.CLIENT, expected=BOB.peer_id)
    server = machine(BOB, Role.SERVER)
    pump(client, server)
    assert isinstance(client.result, Accepted)
    assert isinstance(server.result, Accepted)
    assert client.result.peer_id == BOB.peer_id
    assert client.result.public_key == BOB.public_key
    assert server.result.peer_id == ALICE.peer_id
    assert server.result.listen_addrs == (f"/ip4/127.0.0.1/udp/1/quic-v1/p2p/{ALICE.peer_id_hex}",)


def test_hello_and_proof_have_the_expected_shape() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER)
    (hello,) = sent(client.start())
    assert isinstance(hello, Hello)
    assert hello.peer_id == ALICE.peer_id and hello.cert_hash == CERT
    server.start()
    (proof,) = sent(server.receive(hello, 0.5))
    assert isinstance(proof, Proof)
    # The server signed its role and the transcript of this connection.
    transcript = transcript_hash(CERT, hello.nonce, server.nonce, ALICE.public_key, BOB.public_key)
    from protocol.identity import verify

    assert verify(BOB.public_key, proof.signature, signed_payload(Role.SERVER, transcript))
    assert not verify(BOB.public_key, proof.signature, signed_payload(Role.CLIENT, transcript))


def test_a_forged_signature_is_rejected() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER)
    (hello_c,) = sent(client.start())
    (hello_s,) = sent(server.start())
    server.receive(hello_c, 0.1)
    client.receive(hello_s, 0.1)
    forged = Proof(signature=bytes(3309))
    assert results(client.receive(forged, 0.2)) == [
        Rejected(RejectReason.BAD_SIGNATURE, "the transcript signature does not verify")
    ]


def test_a_signature_by_another_key_is_rejected() -> None:
    """Mallory claims Bob's key but can only sign with her own."""

    class Impostor:
        peer_id = BOB.peer_id
        public_key = BOB.public_key

        def sign(self, message: bytes) -> bytes:
            return MALLORY.sign(message)

    client = machine(ALICE, Role.CLIENT, expected=BOB.peer_id)
    server = IdentityHandshake(signer=Impostor(), role=Role.SERVER, cert_hash=CERT, now=0.0)
    pump(client, server)
    assert isinstance(client.result, Rejected)
    assert client.result.reason is RejectReason.BAD_SIGNATURE


def test_a_reflected_signature_of_the_other_role_is_rejected() -> None:
    """A proof made for the client role does not pass as the server's."""

    class WrongRole:
        peer_id = BOB.peer_id
        public_key = BOB.public_key

        def sign(self, message: bytes) -> bytes:
            return BOB.sign(message.replace(b"/server/", b"/client/"))

    client = machine(ALICE, Role.CLIENT)
    server = IdentityHandshake(signer=WrongRole(), role=Role.SERVER, cert_hash=CERT, now=0.0)
    pump(client, server)
    assert isinstance(client.result, Rejected)
    assert client.result.reason is RejectReason.BAD_SIGNATURE


def test_a_peer_id_that_is_not_the_hash_of_the_key_is_rejected() -> None:
    server = machine(BOB, Role.SERVER)
    server.start()
    hello = Hello(
        peer_id=MALLORY.peer_id,
        public_key=ALICE.public_key,
        nonce=bytes(32),
        cert_hash=CERT,
        instance=bytes(16),
    )
    (rejected,) = results(server.receive(hello, 0.1))
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectReason.PEER_ID_NOT_KEY_HASH


def test_a_peer_other_than_the_one_dialled_is_rejected() -> None:
    client = machine(ALICE, Role.CLIENT, expected=MALLORY.peer_id)
    server = machine(BOB, Role.SERVER)
    pump(client, server)
    assert isinstance(client.result, Rejected)
    assert client.result.reason is RejectReason.UNEXPECTED_PEER_ID


def test_a_relaying_man_in_the_middle_fails_the_channel_binding() -> None:
    """Alice sees Mallory's certificate, Bob his own: the hashes differ."""
    client = machine(ALICE, Role.CLIENT, OTHER_CERT, expected=BOB.peer_id)
    server = machine(BOB, Role.SERVER, CERT)
    pump(client, server)
    assert isinstance(client.result, Rejected)
    assert isinstance(server.result, Rejected)
    assert client.result.reason is RejectReason.CHANNEL_BINDING_MISMATCH
    assert server.result.reason is RejectReason.CHANNEL_BINDING_MISMATCH


def test_a_man_in_the_middle_that_rewrites_the_cert_hash_fails_the_signature() -> None:
    """Rewriting the claimed hash gets past the cheap check, never past the signatures."""
    alice = machine(ALICE, Role.CLIENT, OTHER_CERT, expected=BOB.peer_id)
    bob = machine(BOB, Role.SERVER, CERT)
    (hello_a,) = sent(alice.start())
    (hello_b,) = sent(bob.start())
    assert isinstance(hello_a, Hello) and isinstance(hello_b, Hello)
    to_bob = sent(bob.receive(_with_cert(hello_a, CERT), 0.1))
    to_alice = sent(alice.receive(_with_cert(hello_b, OTHER_CERT), 0.1))
    for message in to_alice:
        alice.receive(message, 0.2)
    for message in to_bob:
        bob.receive(message, 0.2)
    assert isinstance(alice.result, Rejected) and isinstance(bob.result, Rejected)
    assert alice.result.reason is RejectReason.BAD_SIGNATURE
    assert bob.result.reason is RejectReason.BAD_SIGNATURE


def _with_cert(hello: Hello, cert_hash: bytes) -> Hello:
    return Hello(
        hello.peer_id, hello.public_key, hello.nonce, cert_hash, hello.instance, hello.listen_addrs
    )


def test_a_replayed_handshake_is_rejected() -> None:
    """Frames recorded from one handshake, replayed into a new one with the same cache."""
    cache = ReplayCache()
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER, cache=cache)
    (hello_c,) = sent(client.start())
    (hello_s,) = sent(server.start())
    (proof_s,) = sent(server.receive(hello_c, 0.1))
    (proof_c,) = sent(client.receive(hello_s, 0.1))
    client.receive(proof_s, 0.2)
    assert isinstance(results(server.receive(proof_c, 0.2))[0], Accepted)

    replay_target = machine(BOB, Role.SERVER, cache=cache, now=5.0)
    replay_target.start()
    (rejected,) = results(replay_target.receive(hello_c, 5.1))
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectReason.REPLAYED


def test_a_replay_without_the_cache_still_fails_on_the_fresh_nonce() -> None:
    """Even a server that forgot the nonce rejects: the old proof signs an old transcript."""
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER)
    (hello_c,) = sent(client.start())
    (hello_s,) = sent(server.start())
    server.receive(hello_c, 0.1)
    (proof_c,) = sent(client.receive(hello_s, 0.1))

    fresh = machine(BOB, Role.SERVER)
    fresh.start()
    fresh.receive(hello_c, 1.0)
    (rejected,) = results(fresh.receive(proof_c, 1.0))
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectReason.BAD_SIGNATURE


def test_an_echoed_nonce_is_rejected_as_a_replay() -> None:
    server = machine(BOB, Role.SERVER, nonce=bytes([7]) * 32)
    server.start()
    hello = Hello(ALICE.peer_id, ALICE.public_key, bytes([7]) * 32, CERT, bytes(16))
    (rejected,) = results(server.receive(hello, 0.1))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.REPLAYED


def test_a_connection_to_itself_is_rejected() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(ALICE, Role.SERVER)
    pump(client, server)
    assert isinstance(client.result, Rejected)
    assert client.result.reason is RejectReason.SELF_CONNECTION


def test_a_peer_that_stalls_is_rejected_at_the_deadline() -> None:
    server = machine(BOB, Role.SERVER, now=100.0, timeout=2.0)
    server.start()
    assert server.deadline == 102.0
    assert server.handle_timer(101.9) == []
    (rejected,) = results(server.handle_timer(102.0))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.STALLED
    assert vars(server)["deadline"] is None
    assert server.handle_timer(200.0) == []


def test_a_late_message_after_the_deadline_is_a_stall() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER, timeout=1.0)
    (hello_c,) = sent(client.start())
    server.start()
    (rejected,) = results(server.receive(hello_c, 1.5))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.STALLED


@pytest.mark.parametrize("first", [Proof(signature=bytes(3309)), Ping(nonce=1)])
def test_messages_out_of_order_are_a_protocol_violation(first: Message) -> None:
    server = machine(BOB, Role.SERVER)
    server.start()
    (rejected,) = results(server.receive(first, 0.1))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.PROTOCOL_VIOLATION


def test_a_second_hello_is_a_protocol_violation() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER)
    (hello_c,) = sent(client.start())
    server.start()
    server.receive(hello_c, 0.1)
    (rejected,) = results(server.receive(hello_c, 0.2))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.PROTOCOL_VIOLATION


def test_connection_lost_before_the_end() -> None:
    server = machine(BOB, Role.SERVER)
    server.start()
    (rejected,) = results(server.connection_lost("reset"))
    assert isinstance(rejected, Rejected) and rejected.reason is RejectReason.CONNECTION_LOST
    assert server.connection_lost() == []


def test_nothing_happens_after_the_result() -> None:
    client = machine(ALICE, Role.CLIENT)
    server = machine(BOB, Role.SERVER)
    pump(client, server)
    assert client.receive(Proof(signature=bytes(3309)), 2.0) == []
    assert client.start() == []


def test_the_replay_cache_is_bounded_and_expires() -> None:
    cache = ReplayCache(capacity=3, ttl=10.0)
    for i in range(5):
        assert cache.remember(bytes([i]) * 32, now=0.0)
    assert len(cache) == 3
    assert cache.remember(bytes([0]) * 32, now=1.0)  # forgotten: the oldest went first
    assert not cache.remember(bytes([4]) * 32, now=1.0)
    assert cache.remember(bytes([4]) * 32, now=11.0)  # expired


@pytest.mark.parametrize(
    "field",
    ["peer_id", "public_key", "nonce", "cert_hash", "instance"],
)
def test_a_hello_with_a_field_of_the_wrong_size_does_not_decode(field: str) -> None:
    good = Hello(ALICE.peer_id, ALICE.public_key, bytes(32), CERT, bytes(16))
    values = {name: getattr(good, name) for name in good.__struct_fields__}
    values[field] = values[field] + b"\x00"
    with pytest.raises(WireError):
        decode_frame(encode_frame(Hello(**values)))


def test_a_proof_of_the_wrong_size_does_not_decode() -> None:
    with pytest.raises(WireError):
        decode_frame(encode_frame(Proof(signature=bytes(3308))))
