"""The transport core's relay circuits: inner connections carried in DATAGRAM frames
of a connection to a relay, datagrams this node relays for others, control datagrams
and announced addresses. Functions of the ``TransportCore`` they are given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors._quic.backend import SocketAddress
from actors._quic.model import ControlReceived
from actors._quic.state import (
    MAX_CIRCUIT_PAYLOAD,
    _addresses,
    _Conn,
    _remember_addr,
)
from protocol.errors import (
    PeerUnreachable,
    TransportClosed,
)
from protocol.nat import (
    ControlKind,
    How,
    parse_control_datagram,
)
from protocol.relay import pack, unpack

if TYPE_CHECKING:
    from actors._quic.core import TransportCore


def circuit_address(core: TransportCore, relay_id: bytes, circuit: int) -> SocketAddress:
    """The virtual address of a circuit (made on first use)."""
    key = (relay_id, circuit)
    addr = core._circuit_addr.get(key)
    if addr is None:
        n = next(core._virtual_ids) % (1 << 24) or 1
        addr = (f"0.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1)
        core._circuit_addr[key] = addr
        core._circuit_of[addr] = key
    return addr


def forget_circuit(core: TransportCore, addr: SocketAddress) -> None:
    key = core._circuit_of.pop(addr, None)
    if key is not None:
        core._circuit_addr.pop(key, None)


def dial_circuit(
    core: TransportCore,
    relay_id: bytes,
    circuit: int,
    expected: bytes,
    dial_id: int,
    wait: float,
) -> None:
    if core._closed:
        core._dial_done(dial_id, error=TransportClosed("the transport is closed"))
        return
    relay = core._peers.get(relay_id)
    if relay is None or relay.conn is None or relay.conn.state != "ready":
        core._dial_done(dial_id, error=PeerUnreachable("not connected to the relay"))
        return
    peer = core._peer(expected)
    if peer.conn is not None:
        core._dial_done(dial_id, expected)
        return
    addr = circuit_address(core, relay_id, circuit)
    conn = core._open(addr, expected, [dial_id], wait, how=How.RELAYED)
    conn.circuit = (relay_id, circuit)


def send_circuit(core: TransportCore, data: bytes, addr: SocketAddress) -> None:
    """Send an inner connection's datagram on its circuit, in a DATAGRAM frame."""
    key = core._circuit_of.get(addr)
    if key is None:
        core.stats.datagrams_dropped += 1
        return
    relay = core._peers.get(key[0])
    conn = None if relay is None else relay.conn
    payload = pack(key[1], data)
    if conn is None or conn.state != "ready" or len(payload) > MAX_CIRCUIT_PAYLOAD:
        core.stats.datagrams_dropped += 1
        return
    conn.quic.send_datagram(payload)
    core._touch(conn)


def on_datagram_frame(core: TransportCore, conn: _Conn, payload: bytes) -> None:
    """A DATAGRAM frame: a circuit datagram for an inner connection of this node,
    or one this node relays."""
    unpacked = unpack(payload)
    if unpacked is None or conn.state != "ready" or conn.peer_id is None:
        core.stats.datagrams_dropped += 1
        return
    circuit, inner = unpacked
    now = core._now
    vaddr = core._circuit_addr.get((conn.peer_id, circuit))
    if vaddr is not None:
        target = core._route(inner, vaddr, now)
        if target is not None:
            core._deliver(target, vaddr, [inner], now)
        return
    to_peer = core.relay.route(conn.peer_id, circuit, len(payload), now)
    peer = None if to_peer is None else core._peers.get(to_peer)
    out = None if peer is None else peer.conn
    if out is None or out.state != "ready":
        core.stats.datagrams_dropped += 1
        return
    out.quic.send_datagram(payload)
    core._touch(out)


def on_control_datagram(core: TransportCore, data: bytes, addr: SocketAddress) -> None:
    parsed = parse_control_datagram(data)
    if parsed is None:
        core.stats.datagrams_dropped += 1
        return
    kind, nonce = parsed
    if kind is ControlKind.DIAL_BACK:
        core._events.append(ControlReceived(kind, nonce, addr))


def on_announce(core: TransportCore, conn: _Conn, listen_addrs: list[str]) -> None:
    """The peer's addresses changed: remember them and tell the routing table."""
    assert conn.peer_id is not None
    conn.listen_addrs = tuple(listen_addrs)
    peer = core._peer(conn.peer_id)
    direct, peer.relayed = _addresses(listen_addrs, conn.peer_id)
    for addr in direct:
        _remember_addr(peer, addr)
    if peer.conn is conn:
        core._emit_connected(conn)
