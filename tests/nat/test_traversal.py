"""NAT traversal with real node processes behind real NAT routers (network namespaces).

pub1 and pub2 are public; a and b sit behind port-preserving NATs that drop
unsolicited inbound traffic; s sits behind a symmetric NAT (``masquerade
fully-random``). See ``tests/nat/lab.py`` for the addresses and rulesets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nat.lab import NatLab, lab_available
from tests.nat.lab_network import NODE_PORT, LabNetwork, run_client

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(lab_available() is not None, reason=f"NAT lab: {lab_available()}"),
]


@pytest.fixture(scope="module")
def network(nat_lab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabNetwork]:
    net = LabNetwork(nat_lab, tmp_path_factory.mktemp("natnet"))
    try:
        net.start(timeout=90)
        yield net
    except BaseException:
        for name in net.nodes:
            sys.stderr.write(f"--- {name} ---\n{net.logs(name)[-4000:]}\n")
        raise
    finally:
        net.stop()


def test_reachability_is_found_by_dial_back(network: LabNetwork) -> None:
    for name in ("pub1", "pub2"):
        nat = network.nodes[name].status()["nat"]
        assert nat["reachability"] == "public"
    for name in ("a", "b", "s"):
        node = network.nodes[name]
        nat = node.status()["nat"]
        assert nat["reachability"] == "private", name
        # the address peers see is the router's, not the node's own LAN address
        assert any(node.host.public_address in addr for addr in nat["observed_addrs"]), nat
        relay = nat["relay"]
        assert relay in (network.nodes["pub1"].peer_id, network.nodes["pub2"].peer_id)
        assert nat["announced_addrs"] == [
            a for a in nat["announced_addrs"] if f"/p2p/{relay}/p2p-circuit/p2p/" in a
        ]
        assert len(nat["announced_addrs"]) == 1


def test_a_node_behind_nat_cannot_be_dialled_directly(network: LabNetwork) -> None:
    """pub2 dials a's public address:port directly from a fresh socket; the router drops it.
    (pub2's own node may have a NAT mapping from a toward it, so a fresh process dials.)"""
    a = network.nodes["a"]
    address = f"/ip4/{a.host.public_address}/udp/{NODE_PORT}/quic-v1/p2p/{a.peer_id}"
    probe = network.lab.hosts["pub2"].run(
        [sys.executable, "-m", "tests.nat.dial_once", address, "3"], timeout=60
    )
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert "PeerUnreachable" in probe.stdout, probe.stdout
    # the same dial to a public node works (the probe itself is sound)
    pub1 = network.nodes["pub1"]
    reachable = network.lab.hosts["pub2"].run(
        [sys.executable, "-m", "tests.nat.dial_once", pub1.multiaddr, "3"], timeout=60
    )
    assert reachable.returncode == 0, reachable.stdout + reachable.stderr


def test_a_and_b_connect_by_punching(network: LabNetwork) -> None:
    a, b = network.nodes["a"], network.nodes["b"]
    result = a.connect(b.peer_id)
    assert result["connected"], result
    assert result["how"] == "punched", result
    assert result["rtt_ms"] is not None
    seen_by_b = [c for c in b.status()["connections"] if c["peer_id"] == a.peer_id]
    assert [c["how"] for c in seen_by_b] == ["punched"]
    # the connection is end to end: b sees a at a's router's address
    assert a.host.public_address in seen_by_b[0]["remote_addr"]


def test_a_and_s_connect_through_the_relay(network: LabNetwork) -> None:
    a, s = network.nodes["a"], network.nodes["s"]
    result = a.connect(s.peer_id)
    assert result["connected"], result
    assert result["how"] == "relayed", result
    steps = [attempt["step"] for attempt in result["attempts"]]
    assert steps[-1] == "relay" and "punch" in steps, result  # the punch was tried first
    relay = s.status()["nat"]["relay"]
    relay_node = next(n for n in network.nodes.values() if n.peer_id == relay)
    assert relay_node.status()["nat"]["relaying"]["bytes_relayed"] > 0
    seen_by_s = [c for c in s.status()["connections"] if c["peer_id"] == a.peer_id]
    assert [c["how"] for c in seen_by_s] == ["relayed"]


def test_connect_command_prints_how(network: LabNetwork) -> None:
    b, s = network.nodes["b"], network.nodes["s"]
    completed = b.host.run(
        [
            sys.executable,
            "-m",
            "cli",
            "connect",
            "--root-dir",
            str(b.root_dir),
            s.peer_id,
            "--fresh",
        ],
        timeout=90,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "relayed in" in completed.stdout and "rtt" in completed.stdout, completed.stdout


def test_a_file_put_from_behind_a_is_got_from_behind_s(network: LabNetwork, tmp_path: Path) -> None:
    source = tmp_path / "from-a.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    entry = network.nodes["pub1"].multiaddr
    put = run_client(network.lab.hosts["a"], ["put", str(source), "--peer", entry])
    target = tmp_path / "at-s.bin"
    run_client(network.lab.hosts["s"], ["get", put["address"], "-o", str(target), "--peer", entry])
    assert target.read_bytes() == source.read_bytes()
    # the home nodes hold chunks too: the client reached them through their NATs
    held = sum(network.nodes[name].status()["chunks"] for name in ("a", "b", "s"))
    assert held > 0
