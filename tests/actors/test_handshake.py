"""The Handshake actor over real QUIC: who gets in, who does not, and why."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from protocol.errors import AppErrorCode, PeerRejected
from protocol.handshake import Accepted, hello_message
from protocol.identity import Identity
from protocol.wire import Hello, Message, Ping, Pong, Proof, encode_frame
from tests.actors.quic_tools import (
    MitmProxy,
    RawConn,
    RawEndpoint,
    UdpForwarder,
    run_identity_handshake,
    send_raw_handshake,
    wait_until,
)
from tests.actors.transport_nodes import LiveNode, start_node


@pytest.fixture
def node() -> Iterator[LiveNode]:
    started = start_node(handshake_timeout=1.0)
    yield started
    started.stop()


@pytest.fixture
def raw() -> Iterator[RawEndpoint]:
    endpoint = RawEndpoint()
    yield endpoint
    endpoint.close()


def rejected_with(conn: RawConn, reason: str) -> None:
    """The node closed ``conn`` because of ``reason``."""
    assert conn.wait(conn.closed.is_set, timeout=5), "the node did not close the connection"
    assert conn.close_code == AppErrorCode.HANDSHAKE_REJECTED
    assert conn.close_reason == reason


def test_an_honest_peer_is_accepted_and_counted(node: LiveNode, raw: RawEndpoint) -> None:
    conn = raw.connect(node.handle.local_address)
    someone = Identity.generate()
    verdict = run_identity_handshake(conn, someone, expected_peer_id=node.peer_id)
    assert isinstance(verdict, Accepted) and verdict.peer_id == node.peer_id
    assert wait_until(lambda: len(node.connected) == 1)
    assert node.connected[0].peer_id == someone.peer_id
    stats = node.handshake_stats()
    assert (stats.started, stats.accepted, stats.rejected, stats.in_progress) == (1, 1, {}, 0)
    # an accepted peer is served
    stream = conn.new_stream()
    conn.send(stream, encode_frame(Ping(nonce=3)), end=True)
    (pong,) = conn.wait_messages(stream, 1)
    assert isinstance(pong, Pong) and pong.nonce == 3


def test_a_forged_signature_is_rejected(node: LiveNode, raw: RawEndpoint) -> None:
    conn = raw.connect(node.handle.local_address)

    def forge(message: Message) -> Message:
        return Proof(signature=os.urandom(3309)) if isinstance(message, Proof) else message

    run_identity_handshake(conn, Identity.generate(), tamper=forge)
    rejected_with(conn, "bad_signature")
    assert node.handshake_stats().rejected == {"bad_signature": 1}
    assert node.connected == []


def test_a_peer_id_that_is_not_the_hash_of_its_key_is_rejected(
    node: LiveNode, raw: RawEndpoint
) -> None:
    conn = raw.connect(node.handle.local_address)

    def claim_another_id(message: Message) -> Message:
        if isinstance(message, Hello):
            return Hello(
                os.urandom(32),
                message.public_key,
                message.nonce,
                message.cert_hash,
                message.instance,
                message.listen_addrs,
            )
        return message

    run_identity_handshake(conn, Identity.generate(), tamper=claim_another_id)
    rejected_with(conn, "peer_id_not_key_hash")
    assert node.handshake_stats().rejected == {"peer_id_not_key_hash": 1}
    assert node.connected == []


def test_a_replayed_handshake_is_rejected(node: LiveNode, raw: RawEndpoint) -> None:
    """Frames recorded from an accepted handshake, replayed on a new connection."""
    recorded: list[Message] = []

    def record(message: Message) -> Message:
        recorded.append(message)
        return message

    first = raw.connect(node.handle.local_address)
    assert isinstance(run_identity_handshake(first, Identity.generate(), tamper=record), Accepted)
    assert [type(m) for m in recorded] == [Hello, Proof]

    second = raw.connect(node.handle.local_address)
    send_raw_handshake(second, recorded)
    rejected_with(second, "replayed")
    stats = node.handshake_stats()
    assert stats.accepted == 1 and stats.rejected == {"replayed": 1}
    assert len(node.connected) == 1  # only the honest first connection


def test_a_peer_that_stalls_is_rejected(node: LiveNode, raw: RawEndpoint) -> None:
    silent = raw.connect(node.handle.local_address)  # TLS done, then nothing
    half = raw.connect(node.handle.local_address)  # a Hello, then nothing
    hello = hello_message(Identity.generate(), os.urandom(32), half.cert_hash, os.urandom(16), ())
    send_raw_handshake(half, [hello])

    rejected_with(silent, "stalled")
    rejected_with(half, "stalled")
    assert node.handshake_stats().rejected == {"stalled": 2}
    assert node.connected == []


def test_a_frame_that_is_not_a_handshake_frame_is_a_violation(
    node: LiveNode, raw: RawEndpoint
) -> None:
    conn = raw.connect(node.handle.local_address)
    send_raw_handshake(conn, [Ping(nonce=1)])
    rejected_with(conn, "protocol_violation")


def test_a_terminating_man_in_the_middle_is_caught(node: LiveNode) -> None:
    """A relays frames through a proxy with its own TLS certificate: the two ends see
    different certificates, so neither accepts the other."""
    alice = start_node(handshake_timeout=2.0)
    proxy = MitmProxy(node.handle.local_address)
    try:
        mitm_addr = f"/ip4/127.0.0.1/udp/{proxy.address[1]}/quic-v1/p2p/{node.peer_id.hex()}"
        with pytest.raises(PeerRejected) as caught:
            alice.handle.dial(mitm_addr).get(timeout=10)
        assert caught.value.reason == "channel_binding_mismatch"
        # the frames really were relayed both ways, and both ends saw through them
        assert {d for d, m in proxy.relayed if isinstance(m, Hello)} == {"to_server", "to_client"}
        assert wait_until(lambda: node.handshake_stats().in_progress == 0)
        for end in (alice, node):
            stats = end.handshake_stats()
            assert stats.accepted == 0 and stats.rejected == {"channel_binding_mismatch": 1}
        assert alice.connected == [] and node.connected == []
    finally:
        proxy.close()
        alice.stop()


def test_a_man_in_the_middle_that_rewrites_the_hashes_fails_the_signatures(
    node: LiveNode,
) -> None:
    alice = start_node(handshake_timeout=2.0)
    proxy_holder: list[MitmProxy] = []

    def rewrite(message: Message, direction: str) -> Message:
        if not isinstance(message, Hello):
            return message
        proxy = proxy_holder[0]
        claimed = (
            node.handle.certificate_sha256
            if direction == "to_server"
            else proxy.endpoint.certificate.sha256
        )
        return Hello(
            message.peer_id,
            message.public_key,
            message.nonce,
            claimed,
            message.instance,
            message.listen_addrs,
        )

    proxy = MitmProxy(node.handle.local_address, rewrite=rewrite)
    proxy_holder.append(proxy)
    try:
        mitm_addr = f"/ip4/127.0.0.1/udp/{proxy.address[1]}/quic-v1/p2p/{node.peer_id.hex()}"
        with pytest.raises(PeerRejected) as caught:
            alice.handle.dial(mitm_addr).get(timeout=10)
        assert caught.value.reason in ("bad_signature", "rejected_by_peer")
        assert wait_until(lambda: node.handshake_stats().in_progress == 0)
        # each end signed the certificate it saw: the proofs cannot verify at the other
        # (the first to reject may close before the other has checked)
        reasons = set(alice.handshake_stats().rejected) | set(node.handshake_stats().rejected)
        assert "bad_signature" in reasons
        assert reasons <= {"bad_signature", "connection_lost"}
        assert alice.handshake_stats().accepted == 0 and node.handshake_stats().accepted == 0
        assert alice.connected == [] and node.connected == []
    finally:
        proxy.close()
        alice.stop()


def test_a_plain_udp_forwarder_is_just_a_path(node: LiveNode) -> None:
    """The binding is to the TLS session, not to IP addresses: a forwarder that does
    not terminate TLS changes nothing."""
    alice = start_node()
    forwarder = UdpForwarder(node.handle.local_address)
    try:
        via = f"/ip4/127.0.0.1/udp/{forwarder.address[1]}/quic-v1/p2p/{node.peer_id.hex()}"
        assert alice.handle.dial(via).get(timeout=10) == node.peer_id
        pong = alice.handle.request(node.peer_id, Ping(nonce=8)).get(timeout=5)
        assert isinstance(pong, Pong)
        assert wait_until(lambda: len(node.connected) == 1)
        # the node saw alice at the forwarder's outbound address, not at her own
        assert node.connected[0].remote_port != alice.handle.local_address[1]
        (conn,) = alice.handle.connections()
        assert conn.pq is True and conn.remote_addr.endswith(f"/udp/{forwarder.address[1]}/quic-v1")
        assert forwarder.forwarded > 0
    finally:
        alice.stop()
        forwarder.close()
