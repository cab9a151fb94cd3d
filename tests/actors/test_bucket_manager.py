"""BucketManager over real QUIC on loopback: joining, exact lookups, and lying peers."""

from __future__ import annotations

import os
from typing import Any

import pykka
import pytest

from actors.handshake import Handshake
from actors.messages import InboundRequest
from actors.node import Node
from actors.transport import Transport, TransportConfig
from protocol.identity import Identity
from protocol.wire import FindNode, Nodes, PeerRecord
from protocol.xor import closest

REAL_LIARS: set[bytes] = set()
"""Liars are real, authenticated peers: they may sit in tables; invented ids may not."""


def _ids(nodes: list[Node]) -> list[bytes]:
    return [n.identity.peer_id for n in nodes if n.identity is not None]


def test_lookups_find_the_exact_closest(network: list[Node]) -> None:
    ids = _ids(network)
    for node in network:
        assert node.identity is not None
        me = node.identity.peer_id
        for _ in range(5):
            target = os.urandom(32)
            found = [c.peer_id for c in node.lookup(target).get(timeout=20)]
            assert found[:5] == closest(target, [i for i in ids if i != me], 5)


def _liar_answer(mode: str, target: bytes) -> Nodes:
    if mode == "far":  # real-looking peers, all far from the target
        far = bytes(b ^ 0xFF for b in target)
        peers = [
            PeerRecord(far[:-1] + bytes([i]), ["/ip4/127.0.0.1/udp/9/quic-v1"]) for i in range(20)
        ]
    elif mode == "invented":  # invented ids right next to the target, at a dead address
        peers = [
            PeerRecord(target[:-1] + bytes([i]), ["/ip4/127.0.0.1/udp/9/quic-v1"])
            for i in range(20)
        ]
    else:  # "flood": 10,000 entries, far beyond what a reply may carry
        peers = [PeerRecord(os.urandom(32), []) for _ in range(10_000)]
    return Nodes(peers)


@pytest.mark.parametrize("mode", ["far", "invented", "flood"])
def test_a_lying_peer_cannot_poison_the_table_or_stall_lookups(
    network: list[Node], mode: str
) -> None:
    liar_identity = Identity.generate()
    REAL_LIARS.add(liar_identity.peer_id)

    def dispatch(request: InboundRequest) -> None:
        if isinstance(request.message, FindNode):
            request.reply(_liar_answer(mode, request.message.target))

    handshake: pykka.ActorRef[Any] = Handshake.start(liar_identity)
    transport: pykka.ActorRef[Any] = Transport.start(
        liar_identity, handshake, TransportConfig(), dispatch=dispatch
    )
    try:
        liar = Transport.handle_of(transport)
        for node in network:  # the liar gets into every routing table
            assert node.transport is not None
            liar.dial(node.transport.listen_addrs()[0]).get(timeout=10)
        honest = _ids(network)
        for node in network[:4]:
            assert node.identity is not None
            me = node.identity.peer_id
            for _ in range(3):
                target = os.urandom(32)
                found = [c.peer_id for c in node.lookup(target).get(timeout=30)]
                # The liar may or may not count as having answered; every honest peer must be found.
                found_honest = [p for p in found if p not in REAL_LIARS]
                assert found_honest[:5] == closest(target, [i for i in honest if i != me], 5)
        for node in network:
            table = node.refs["BucketManager"].proxy().table.get()
            assert {e.peer_id for e in table.peers()} <= {*honest, *REAL_LIARS}
    finally:
        transport.stop()
        handshake.stop()
