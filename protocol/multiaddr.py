"""Multiaddr strings for QUIC peers, as Autonomi writes them.

Direct:  ``/ip4/127.0.0.1/udp/12000/quic-v1/p2p/<64-hex peer id>``
Relayed: ``/ip4/H/udp/P/quic-v1/p2p/<relay id>/p2p-circuit/p2p/<peer id>``
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.xor import from_hex


class MultiaddrError(ValueError):
    """A string that is not a multiaddr this node understands."""


@dataclass(frozen=True, slots=True)
class Multiaddr:
    """A parsed QUIC multiaddr; ``relay_id`` is set for a relayed (circuit) address."""

    host: str
    port: int
    peer_id: bytes | None = None
    relay_id: bytes | None = None

    @property
    def socket_address(self) -> tuple[str, int]:
        """The UDP address to send to (the relay's, for a circuit address)."""
        return (self.host, self.port)

    @property
    def relay(self) -> Multiaddr | None:
        """The relay's own address, for a circuit address (None for a direct one)."""
        return None if self.relay_id is None else Multiaddr(self.host, self.port, self.relay_id)

    def __str__(self) -> str:
        text = f"/ip4/{self.host}/udp/{self.port}/quic-v1"
        if self.relay_id is not None:
            text += f"/p2p/{self.relay_id.hex()}/p2p-circuit"
        if self.peer_id is not None:
            text += f"/p2p/{self.peer_id.hex()}"
        return text


def format_multiaddr(host: str, port: int, peer_id: bytes | None = None) -> str:
    """The direct multiaddr string of ``host:port`` (and ``peer_id`` if given)."""
    return str(Multiaddr(host, port, peer_id))


def split_addrs(
    texts: Iterable[str], peer_id: bytes | None = None
) -> tuple[list[Multiaddr], list[Multiaddr]]:
    """The direct and the circuit addresses among ``texts`` that lead to ``peer_id``
    (any peer when None; a direct address naming no peer counts too). Strings that
    are no multiaddr are skipped."""
    direct: list[Multiaddr] = []
    relayed: list[Multiaddr] = []
    for text in texts:
        try:
            parsed = parse_multiaddr(text)
        except MultiaddrError:
            continue
        if parsed.relay_id is not None:
            if peer_id is None or parsed.peer_id == peer_id:
                relayed.append(parsed)
        elif parsed.peer_id in (None, peer_id) or peer_id is None:
            direct.append(parsed)
    return direct, relayed


def parse_multiaddr(text: str) -> Multiaddr:
    """Parse a multiaddr string; raises ``MultiaddrError`` naming what is wrong."""
    parts = text.split("/")
    if (
        len(parts) < 6
        or parts[0] != ""
        or parts[1] != "ip4"
        or parts[3] != "udp"
        or parts[5] != "quic-v1"
    ):
        raise MultiaddrError(f"expected /ip4/HOST/udp/PORT/quic-v1[/p2p/PEER_ID], got {text!r}")
    try:
        host = str(ipaddress.IPv4Address(parts[2]))
    except ValueError:
        raise MultiaddrError(f"not an IPv4 address in {text!r}: {parts[2]!r}") from None
    if not parts[4].isdigit() or not 0 < int(parts[4]) < 65536:
        raise MultiaddrError(f"not a UDP port in {text!r}: {parts[4]!r}")
    port = int(parts[4])
    rest = parts[6:]
    peer_id: bytes | None = None
    relay_id: bytes | None = None
    if rest[:1] == ["p2p"] and len(rest) >= 2:
        peer_id = _peer_id(rest[1], text)
        rest = rest[2:]
        if rest[:2] == ["p2p-circuit", "p2p"] and len(rest) == 3:
            relay_id, peer_id = peer_id, _peer_id(rest[2], text)
            rest = []
    if rest:
        raise MultiaddrError(f"unexpected trailing components in {text!r}: /{'/'.join(rest)}")
    return Multiaddr(host, port, peer_id, relay_id)


def _peer_id(component: str, text: str) -> bytes:
    try:
        return from_hex(component)
    except ValueError:
        raise MultiaddrError(f"not a 64-hex peer id in {text!r}: {component!r}") from None
