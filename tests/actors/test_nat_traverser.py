"""NatTraverser with real in-process nodes on loopback: dial-back reachability, a relay
reservation and its circuit address, ``connect`` relayed and punched, the Transport's
own cascade, and what relays and coordinators refuse.

The module network (built once, in stages):

- ``relay``: public (found so by dial-back), serves relays;
- ``helper``: public, but ``serve_relay=False`` (so ``private`` can only take ``relay``);
- ``private``: reachability forced PRIVATE: reserves on ``relay``, announces its circuit;
- ``relayed_dialer`` (``punch=False``) and ``punching_dialer`` (``punch=True``): they
  announce no address (as clients), so ``private`` never dials them directly on its own
  (its lookups would, racing the connections these tests make and check).

On loopback there is no NAT: a "private" node is reachable directly, so the tests make
sure nobody knows its direct address, and a punch always succeeds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from actors.futures import NotifyingFuture
from actors.handshake import Handshake
from actors.messages import BeginHandshake, ConnectPeer, RoutingSnapshot
from actors.nat_traverser import CascadeResult
from actors.node import Node, NodeConfig
from protocol.errors import PeerRejected, PeerUnreachable, RemoteError
from protocol.handshake import RejectReason
from protocol.multiaddr import parse_multiaddr
from protocol.nat import Reachability
from protocol.wire import (
    DialBack,
    ErrorCode,
    FindNode,
    Message,
    Nodes,
    Ok,
    Ping,
    Pong,
    PunchRequest,
    RelayCircuit,
    RelayConnect,
    RelayIncoming,
    RelayReserve,
    RelayReserved,
)

T = TypeVar("T")

WAIT = 15.0
"""Seconds a condition may take before a test fails (a deadline, not a measurement)."""


def _wait_for(what: str, probe: Callable[[], T], timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.05)


def _start(root: Path, **options: Any) -> Node:
    node = Node(
        NodeConfig(
            root_dir=root,
            local=True,
            tick_interval=0.2,
            # liveness pings would make the private node dial its dialers directly
            # (they are public), racing the connections these tests make to it
            liveness_interval=60.0,
            control_socket=False,
            **options,
        )
    )
    node.start()
    return node


def _id(node: Node) -> bytes:
    assert node.identity is not None
    return node.identity.peer_id


def _nat(node: Node) -> dict[str, Any]:
    nat = node.status()["nat"]
    assert isinstance(nat, dict)
    return nat


def _connections_to(node: Node, peer: Node) -> list[dict[str, Any]]:
    hex_id = _id(peer).hex()
    return [c for c in node.status()["connections"] if c["peer_id"] == hex_id]


def _listen_addr(node: Node) -> str:
    assert node.transport is not None
    return node.transport.listen_addrs()[0]


def _known_addrs(node: Node, peer_id: bytes) -> tuple[str, ...] | None:
    """The addresses ``node``'s routing table holds for ``peer_id`` (None: not in it)."""
    snapshot = node.refs["BucketManager"].ask(RoutingSnapshot(), timeout=5)
    assert isinstance(snapshot, list)
    for known_id, addrs in snapshot:
        if known_id == peer_id:
            return tuple(addrs)
    return None


def _is_public(node: Node) -> bool:
    return bool(_nat(node)["reachability"] == "public")


def _knows_at_most(node: Node, peer_id: bytes, addr: str) -> bool:
    """``node`` knows no address of the peer but ``addr`` (or does not know the peer)."""
    return _known_addrs(node, peer_id) in (None, (addr,))


def _remote_code(future: Any) -> ErrorCode:
    with pytest.raises(RemoteError) as caught:
        future.get(timeout=WAIT)
    code = caught.value.code
    assert isinstance(code, ErrorCode)
    return code


@dataclass
class Net:
    relay: Node
    helper: Node
    private: Node
    relayed_dialer: Node
    punching_dialer: Node

    @property
    def circuit_addr(self) -> str:
        return f"{_listen_addr(self.relay)}/p2p-circuit/p2p/{_id(self.private).hex()}"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    base = tmp_path_factory.mktemp("nat")
    started: list[Node] = []

    def start(name: str, **options: Any) -> Node:
        node = _start(base / name, **options)
        started.append(node)
        return node

    try:
        relay = start("relay", first=True)
        helper = start("helper", peers=(_listen_addr(relay),), serve_relay=False)
        for node in (relay, helper):
            _wait_for(f"{node.root_dir.name} to find itself public", partial(_is_public, node))
        private = start("private", peers=(_listen_addr(relay),), reachability=Reachability.PRIVATE)
        circuit = f"{_listen_addr(relay)}/p2p-circuit/p2p/{_id(private).hex()}"
        _wait_for(
            "the private node to announce its circuit",
            lambda: _nat(private)["announced_addrs"] == [circuit],
        )
        for node in (relay, helper):  # what newcomers will learn of the private node
            _wait_for(
                f"{node.root_dir.name} to know only the circuit address of the private node",
                partial(_knows_at_most, node, _id(private), circuit),
            )
        dialers = [
            start(f"{name}_dialer", punch=punch, reachability=Reachability.PUBLIC)
            for name, punch in (("relayed", False), ("punching", True))
        ]
        for dialer in dialers:  # before it connects anywhere: its Hellos carry no address
            assert dialer.transport is not None
            dialer.transport.set_announced([])
        relayed_dialer, punching_dialer = dialers
        yield Net(relay, helper, private, relayed_dialer, punching_dialer)
    finally:
        for node in reversed(started):
            node.stop()


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``isolated(**options)``: a node that joins nothing (it never met the private node),
    stopped at teardown. Its reachability is forced PUBLIC: it sends no dial-backs."""
    nodes: list[Node] = []

    def start(**options: Any) -> Node:
        options.setdefault("reachability", Reachability.PUBLIC)
        node = _start(tmp_path / f"iso{len(nodes)}", **options)
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


# -- a, b: reachability and the reservation ----------------------------------------------


def test_public_nodes_find_themselves_public_by_dial_back(net: Net) -> None:
    for node in (net.relay, net.helper):
        nat = _nat(node)
        assert nat["reachability"] == "public"
        assert nat["relay"] is None
        assert node.transport is not None
        assert nat["announced_addrs"] == node.transport.listen_addrs()
    assert _nat(net.private)["reachability"] == "private", "forced: no check overrides it"


def test_private_node_reserves_a_relay_and_announces_only_its_circuit(net: Net) -> None:
    nat = _nat(net.private)
    assert nat["relay"] == _id(net.relay).hex()
    assert nat["announced_addrs"] == [net.circuit_addr]
    parsed = parse_multiaddr(net.circuit_addr)
    assert parsed.relay_id == _id(net.relay)
    assert parsed.peer_id == _id(net.private)
    relaying = _nat(net.relay)["relaying"]
    assert relaying["reservations"] == 1
    assert _nat(net.helper)["relaying"]["reservations"] == 0, "serve_relay=False"
    assert _known_addrs(net.relay, _id(net.private)) == (net.circuit_addr,)
    assert _knows_at_most(net.helper, _id(net.private), net.circuit_addr)


# -- c, d: connect ------------------------------------------------------------------------


def test_connect_relayed_then_a_request_travels_through_the_relay(net: Net) -> None:
    dialer, private = net.relayed_dialer, net.private
    result = dialer._control_connect(
        {
            "peer_id": _id(private).hex(),
            "addrs": [net.circuit_addr],
            "fresh": True,
            "timeout_s": WAIT,
        }
    )
    assert result["connected"] is True, result
    assert result["how"] == "relayed"
    assert result["error"] is None
    assert [a["step"] for a in result["attempts"]] == ["relay"]
    assert result["attempts"][0]["via"] == _listen_addr(net.relay)
    assert result["attempts"][0]["outcome"] == "connected"
    assert result["rtt_ms"] is not None
    assert result["connect_ms"] > 0

    before = _nat(net.relay)["relaying"]["bytes_relayed"]
    assert dialer.transport is not None
    reply = dialer.transport.request(_id(private), FindNode(os.urandom(32)), 10.0).get(timeout=WAIT)
    assert isinstance(reply, Nodes)
    assert {p.peer_id for p in reply.peers} >= {_id(net.relay), _id(net.helper)}
    assert _nat(net.relay)["relaying"]["bytes_relayed"] > before

    [ours] = _connections_to(dialer, private)
    assert ours["how"] == "relayed"
    assert ours["direction"] == "outbound"
    assert ours["remote_addr"] == f"/p2p/{_id(net.relay).hex()}/p2p-circuit"
    [theirs] = _wait_for(
        "the private node to see the relayed connection",
        lambda: [c for c in _connections_to(private, dialer) if c["how"] == "relayed"],
    )
    assert theirs["direction"] == "inbound"
    assert _nat(dialer)["cascades"]["relayed"] >= 1


def test_connect_punched_on_loopback(net: Net) -> None:
    dialer, private = net.punching_dialer, net.private
    result = dialer._control_connect(
        {
            "peer_id": _id(private).hex(),
            "addrs": [net.circuit_addr],
            "fresh": True,
            "timeout_s": WAIT,
        }
    )
    assert result["connected"] is True, result
    assert result["how"] == "punched"
    assert [a["step"] for a in result["attempts"]] == ["punch"]
    assert result["attempts"][0]["via"] == _listen_addr(net.relay), "the relay coordinates"

    [ours] = _connections_to(dialer, private)
    assert ours["how"] == "punched"
    assert ours["direction"] == "outbound"
    assert dialer.transport is not None and private.transport is not None
    assert ours["remote_addr"] == _listen_addr(private).split("/p2p/")[0]
    [theirs] = _wait_for(
        "the private node to see the punched connection",
        lambda: [c for c in _connections_to(private, dialer) if c["how"] == "punched"],
    )
    assert theirs["direction"] == "inbound"
    reply = dialer.transport.request(_id(private), Ping(7), 10.0).get(timeout=WAIT)
    assert isinstance(reply, Pong)


def test_connect_when_connected_measures_the_existing_connection(net: Net) -> None:
    dialer, private = net.relayed_dialer, net.private
    first = dialer._control_connect(
        {"peer_id": _id(private).hex(), "addrs": [net.circuit_addr], "timeout_s": WAIT}
    )
    assert first["connected"] is True, first
    again = dialer._control_connect(
        {"peer_id": _id(private).hex(), "addrs": [net.circuit_addr], "timeout_s": WAIT}
    )
    assert again["connected"] is True
    assert again["attempts"] == [], "no cascade: the connection was there"
    assert again["how"] == first["how"]
    assert again["rtt_ms"] is not None


def test_repeated_fresh_connects_do_not_use_up_the_relay(net: Net) -> None:
    """Each ``connect --fresh`` opens a new circuit; the relay must not run out of
    circuits to the private node (``max_circuits_per_client``) because of old ones."""
    dialer, private = net.relayed_dialer, net.private
    assert dialer.transport is not None
    limit = dialer.transport.relay_limits.max_circuits_per_client
    for attempt in range(limit + 2):
        result = dialer._control_connect(
            {
                "peer_id": _id(private).hex(),
                "addrs": [net.circuit_addr],
                "fresh": True,
                "timeout_s": WAIT,
            }
        )
        assert result["connected"] is True, (attempt, result)
        assert result["how"] == "relayed"


# -- e: the Transport's own cascade -------------------------------------------------------


@pytest.mark.parametrize(("punch", "how"), [(False, "relayed"), (True, "punched")])
def test_transport_reaches_a_private_peer_through_the_cascade(
    net: Net, isolated: Callable[..., Node], punch: bool, how: str
) -> None:
    stranger = isolated(punch=punch)
    assert stranger.transport is not None
    assert _id(net.private) not in stranger.transport.connected_peers()
    reply = stranger.transport.request(
        _id(net.private), FindNode(os.urandom(32)), 10.0, addrs=[net.circuit_addr]
    ).get(timeout=WAIT)
    assert isinstance(reply, Nodes)
    [conn] = _connections_to(stranger, net.private)
    assert conn["how"] == how
    cascades = _nat(stranger)["cascades"]
    assert cascades["cascades"] == 1
    assert cascades[how] == 1
    assert cascades["failed"] == 0


def test_transport_cascade_failure_fails_the_request(
    net: Net, isolated: Callable[..., Node]
) -> None:
    stranger = isolated(punch=True)
    assert stranger.transport is not None
    nobody = os.urandom(32)
    circuit = f"{_listen_addr(net.relay)}/p2p-circuit/p2p/{nobody.hex()}"
    future = stranger.transport.request(nobody, Ping(1), 10.0, addrs=[circuit])
    with pytest.raises(PeerUnreachable):
        future.get(timeout=WAIT)
    assert _nat(stranger)["cascades"]["failed"] == 1


def test_a_request_during_connect_does_not_block_later_cascades(
    net: Net, isolated: Callable[..., Node]
) -> None:
    """A ``connect`` and a request of the Transport to the same peer at the same time
    share one cascade; afterwards the Transport must still be able to start another."""
    stranger = isolated(punch=False)
    transport = stranger.transport
    assert transport is not None
    private_id = _id(net.private)
    done: NotifyingFuture[CascadeResult] = NotifyingFuture()
    stranger.refs["NatTraverser"].tell(ConnectPeer(private_id, (net.circuit_addr,), done.set))
    request = transport.request(private_id, Ping(1), 10.0, addrs=[net.circuit_addr])
    assert isinstance(request.get(timeout=WAIT), Pong)
    assert done.get(timeout=WAIT).connected

    transport.disconnect(private_id)
    _wait_for(
        "the disconnection",
        lambda: private_id not in transport.connected_peers(),
    )
    again = transport.request(private_id, Ping(2), 10.0, addrs=[net.circuit_addr])
    assert isinstance(again.get(timeout=WAIT), Pong)


def test_a_request_during_a_failing_connect_fails_with_it(
    net: Net, isolated: Callable[..., Node]
) -> None:
    """The shared cascade fails: the Transport's request fails at once (not at its
    deadline)."""
    stranger = isolated(punch=False)
    assert stranger.transport is not None
    nobody = os.urandom(32)
    circuit = f"{_listen_addr(net.relay)}/p2p-circuit/p2p/{nobody.hex()}"
    done: NotifyingFuture[CascadeResult] = NotifyingFuture()
    stranger.refs["NatTraverser"].tell(ConnectPeer(nobody, (circuit,), done.set))
    request = stranger.transport.request(nobody, Ping(1), 10.0, addrs=[circuit])
    assert not done.get(timeout=WAIT).connected
    with pytest.raises(PeerUnreachable):
        request.get(timeout=WAIT)


# -- f: refusals ---------------------------------------------------------------------------


def test_relay_requests_refused(net: Net) -> None:
    dialer = net.relayed_dialer
    assert dialer.transport is not None
    request = dialer.transport.request
    private_id, relay_id, helper_id = _id(net.private), _id(net.relay), _id(net.helper)
    to_private, to_relay = [net.circuit_addr], [_listen_addr(net.relay)]
    to_helper = [_listen_addr(net.helper)]
    # a node that is not public (forced PRIVATE), or does not serve relays
    reserve = RelayReserve()
    assert _remote_code(request(private_id, reserve, 10.0, to_private)) is ErrorCode.REFUSED
    assert _remote_code(request(helper_id, reserve, 10.0, to_helper)) is ErrorCode.REFUSED
    # "a circuit for you" from a peer that is not the node's relay
    incoming = RelayIncoming(_id(dialer), 7)
    assert _remote_code(request(private_id, incoming, 10.0, to_private)) is ErrorCode.REFUSED
    # a circuit to a peer without a reservation, a punch with a peer not connected
    no_reservation = RelayConnect(helper_id)
    assert _remote_code(request(relay_id, no_reservation, 10.0, to_relay)) is ErrorCode.REFUSED
    stranger_punch = PunchRequest(os.urandom(32))
    assert _remote_code(request(relay_id, stranger_punch, 10.0, to_relay)) is (
        ErrorCode.UNREACHABLE
    )
    # the relay still serves the private node
    assert _nat(net.relay)["relaying"]["reservations"] == 1
    assert _nat(net.private)["relay"] == relay_id.hex()


def test_a_public_relay_grants_a_reservation(net: Net, isolated: Callable[..., Node]) -> None:
    client = isolated()
    assert client.transport is not None
    relay_id = _id(net.relay)
    reply = client.transport.request(
        relay_id, RelayReserve(), 10.0, addrs=[_listen_addr(net.relay)]
    ).get(timeout=WAIT)
    limits = client.transport.relay_limits
    assert isinstance(reply, RelayReserved)
    assert reply.seconds == limits.reservation_seconds
    assert reply.bytes_per_second == limits.bytes_per_second
    assert _nat(net.relay)["relaying"]["reservations"] == 2
    client.stop()
    _wait_for(
        "the relay to forget the stopped client's reservation",
        lambda: _nat(net.relay)["relaying"]["reservations"] == 1,
    )


def test_dial_backs_are_rate_limited_per_peer(net: Net, isolated: Callable[..., Node]) -> None:
    asker = isolated()
    assert asker.transport is not None
    helper = _id(net.helper)
    addrs = [_listen_addr(net.helper)]
    first: Message = asker.transport.request(helper, DialBack(b"n" * 16), 10.0, addrs).get(
        timeout=WAIT
    )
    assert isinstance(first, Ok)
    second = asker.transport.request(helper, DialBack(b"m" * 16), 10.0, addrs)
    assert _remote_code(second) is ErrorCode.BUSY


# -- g: unreachable peers --------------------------------------------------------------------


def test_connect_to_an_unknown_peer_gives_up(net: Net) -> None:
    result = net.relayed_dialer._control_connect(
        {"peer_id": os.urandom(32).hex(), "timeout_s": WAIT}
    )
    assert result["connected"] is False
    assert result["how"] is None
    assert result["error"] == "no address to dial"
    assert result["attempts"] == []


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connect_to_a_dead_address_fails_fast(net: Net) -> None:
    nobody = os.urandom(32).hex()
    dead = f"/ip4/127.0.0.1/udp/{_closed_udp_port()}/quic-v1/p2p/{nobody}"
    result = net.relayed_dialer._control_connect(
        {"peer_id": nobody, "addrs": [dead], "timeout_s": WAIT}
    )
    assert result["connected"] is False
    assert [(a["step"], a["via"]) for a in result["attempts"]] == [("direct", dead)]
    assert result["error"].startswith("direct: ")


def test_the_whole_cascade_fails_for_a_peer_the_relay_does_not_know(net: Net) -> None:
    nobody = os.urandom(32).hex()
    circuit = f"{_listen_addr(net.relay)}/p2p-circuit/p2p/{nobody}"
    result = net.punching_dialer._control_connect(
        {"peer_id": nobody, "addrs": [circuit], "timeout_s": WAIT}
    )
    assert result["connected"] is False
    assert [a["step"] for a in result["attempts"]] == ["punch", "relay"]
    assert "unreachable" in result["attempts"][0]["outcome"]
    assert "refused" in result["attempts"][1]["outcome"]


# -- announcing -----------------------------------------------------------------------------


def test_an_address_change_during_a_handshake_reaches_that_peer(
    isolated: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hello carries the addresses of the moment; a node that takes a relay while a
    handshake is running must still tell that peer its new (circuit) address."""
    peer = isolated()
    mover = isolated()
    assert mover.transport is not None
    mover_id = _id(mover)
    hello_sent, release = threading.Event(), threading.Event()
    original = Handshake.on_receive

    def held_on_receive(self: Handshake, message: Any) -> Any:
        if isinstance(message, BeginHandshake) and self.identity.peer_id == mover_id:
            hello_sent.set()  # the endpoint sent the Hello before telling the actor
            release.wait(WAIT)
        return original(self, message)

    monkeypatch.setattr(Handshake, "on_receive", held_on_receive)
    dialled = mover.transport.dial(_listen_addr(peer))
    assert hello_sent.wait(WAIT)
    circuit = (
        f"/ip4/127.0.0.1/udp/9/quic-v1/p2p/{os.urandom(32).hex()}/p2p-circuit/p2p/{mover_id.hex()}"
    )
    mover.transport.set_announced([circuit])
    release.set()
    assert dialled.get(timeout=WAIT) == _id(peer)
    _wait_for(
        "the peer to learn the new address",
        lambda: _known_addrs(peer, mover_id) == (circuit,),
    )


def test_a_circuit_binds_the_identity_the_dialer_expects(net: Net) -> None:
    """The relay only forwards ciphertext: a dialer expecting another PeerId than the
    node at the circuit's far end gets a rejected handshake, not a connection."""
    dialer = net.relayed_dialer
    assert dialer.transport is not None
    opened = dialer.transport.request(
        _id(net.relay), RelayConnect(_id(net.private)), WAIT, addrs=[_listen_addr(net.relay)]
    ).get(timeout=WAIT)
    assert isinstance(opened, RelayCircuit)
    impostor = os.urandom(32)  # what a lying relay would claim sits behind the circuit
    with pytest.raises(PeerRejected) as rejected:
        dialer.transport.dial_circuit(_id(net.relay), opened.circuit, impostor, WAIT).get(
            timeout=WAIT + 5
        )
    assert rejected.value.reason == RejectReason.UNEXPECTED_PEER_ID
