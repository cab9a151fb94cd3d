"""Multiaddr strings: direct and circuit addresses, what is refused, splitting a list."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.multiaddr import (
    Multiaddr,
    MultiaddrError,
    format_multiaddr,
    parse_multiaddr,
    split_addrs,
)

PEER = bytes(range(32))
RELAY = bytes(range(32, 64))
OTHER = bytes(range(64, 96))
DIRECT = f"/ip4/203.0.113.2/udp/9000/quic-v1/p2p/{PEER.hex()}"
CIRCUIT = f"/ip4/203.0.113.6/udp/9001/quic-v1/p2p/{RELAY.hex()}/p2p-circuit/p2p/{PEER.hex()}"


def test_a_direct_address() -> None:
    parsed = parse_multiaddr(DIRECT)
    assert parsed == Multiaddr("203.0.113.2", 9000, PEER)
    assert parsed.socket_address == ("203.0.113.2", 9000)
    assert parsed.relay is None
    assert str(parsed) == DIRECT == format_multiaddr("203.0.113.2", 9000, PEER)


def test_a_circuit_address_names_the_relay_and_the_peer() -> None:
    parsed = parse_multiaddr(CIRCUIT)
    assert (parsed.peer_id, parsed.relay_id) == (PEER, RELAY)
    assert parsed.socket_address == ("203.0.113.6", 9001), "packets go to the relay"
    assert parsed.relay == Multiaddr("203.0.113.6", 9001, RELAY)
    assert str(parsed) == CIRCUIT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/ip6/::1/udp/1/quic-v1",
        "/ip4/300.1.1.1/udp/1/quic-v1",
        "/ip4/192.0.2.1/udp/0/quic-v1",
        "/ip4/192.0.2.1/udp/65536/quic-v1",
        "/ip4/192.0.2.1/tcp/1/quic-v1",
        "/ip4/192.0.2.1/udp/1/quic",
        "/ip4/192.0.2.1/udp/1/quic-v1/p2p/zz",
        f"/ip4/192.0.2.1/udp/1/quic-v1/p2p/{PEER.hex()}/extra",
        f"/ip4/192.0.2.1/udp/1/quic-v1/p2p/{RELAY.hex()}/p2p-circuit",
    ],
)
def test_what_is_not_a_multiaddr_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(MultiaddrError):
        parse_multiaddr(text)


@given(st.text(max_size=120))
def test_parsing_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(MultiaddrError):
        parse_multiaddr(text)


def test_split_keeps_the_peers_own_direct_and_circuit_addresses() -> None:
    no_peer = "/ip4/192.0.2.9/udp/7/quic-v1"
    someone_else = f"/ip4/192.0.2.8/udp/7/quic-v1/p2p/{OTHER.hex()}"
    circuit_to_someone_else = CIRCUIT.replace(PEER.hex(), OTHER.hex())
    texts = [DIRECT, "garbage", no_peer, someone_else, CIRCUIT, circuit_to_someone_else]
    direct, relayed = split_addrs(texts, PEER)
    assert [str(m) for m in direct] == [DIRECT, no_peer]
    assert [str(m) for m in relayed] == [CIRCUIT]
    everyone_direct, everyone_relayed = split_addrs(texts)
    assert len(everyone_direct) == 3 and len(everyone_relayed) == 2
