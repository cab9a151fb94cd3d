"""The NAT lab behaves like real home routers: proven with plain UDP sockets.

Each host runs a small UDP agent (a ``python -c`` script inside its namespace) that
opens sockets, sends (optionally with a small IP TTL) and receives on command, and
answers each command with one JSON line, so a test orders events across hosts exactly.
Negative results ("not delivered") are always paired with a control packet sent after
the one that must not arrive, plus the router's drop counter, so they do not rest on a
timeout alone.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.nat.lab import (
    NFT_TABLE,
    PUNCH_TTL,
    LabError,
    LabHost,
    NatLab,
    is_documentation_address,
    lab_available,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        lab_available() is not None, reason=f"NAT lab unavailable: {lab_available()}"
    ),
]

# Long enough for a packet that will arrive; we never wait this long for one that must not.
ARRIVAL_TIMEOUT = 5.0
# After the control packet has arrived, how long we keep listening for a straggler.
QUIET_PERIOD = 0.3

AGENT_SOURCE = r"""
import ipaddress, json, socket, struct, sys
DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
IP_RECVTTL = 12
sockets = {}
for line in sys.stdin:
    command = json.loads(line)
    op = command["op"]
    try:
        if op == "open":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            sock.bind(("0.0.0.0", command.get("port", 0)))
            sockets[len(sockets)] = sock
            reply = {"sock": len(sockets) - 1, "port": sock.getsockname()[1]}
        elif op == "connect":
            sockets[command["sock"]].connect(tuple(command["to"]))
            reply = {"connected": True}
        elif op == "send":
            host, port = command["to"]
            if not any(ipaddress.ip_address(host) in net for net in DOCUMENTATION):
                raise ValueError(f"refusing to send outside the documentation ranges: {host}")
            sock = sockets[command["sock"]]
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, command.get("ttl") or -1)
            sock.sendto(command["data"].encode(), (host, port))
            reply = {"sent": True}
        elif op == "recv":
            sock = sockets[command["sock"]]
            sock.settimeout(command["timeout"])
            try:
                data, ancillary, _flags, source = sock.recvmsg(65535, socket.CMSG_SPACE(4))
            except TimeoutError:
                reply = {"timeout": True}
            else:
                ttl = None
                for level, kind, value in ancillary:
                    if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
                        ttl = struct.unpack("i", value[:4])[0]
                reply = {"data": data.decode(), "from": list(source), "ttl": ttl}
        else:
            raise ValueError(f"unknown op {op}")
    except Exception as error:
        reply = {"error": repr(error)}
    print(json.dumps(reply), flush=True)
"""


@dataclass(frozen=True)
class Received:
    data: str
    source: tuple[str, int]
    ttl: int | None


class UdpAgent:
    """A UDP agent process inside one lab host, driven over stdin/stdout."""

    def __init__(self, host: LabHost) -> None:
        self.host = host
        self.process = host.popen(
            [sys.executable, "-u", "-c", AGENT_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def call(self, wait: float = ARRIVAL_TIMEOUT, **command: Any) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], wait + 10)
        line = stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"agent on {self.host.name} did not answer {command}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"agent on {self.host.name}: {reply['error']}")
        return reply

    def open(self) -> AgentSocket:
        reply = self.call(op="open")
        return AgentSocket(self, int(reply["sock"]), int(reply["port"]))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class AgentSocket:
    agent: UdpAgent
    sock: int
    port: int

    def send(self, to: tuple[str, int], data: str, ttl: int | None = None) -> None:
        assert is_documentation_address(to[0]), to
        self.agent.call(op="send", sock=self.sock, to=list(to), data=data, ttl=ttl)

    def connect(self, to: tuple[str, int]) -> None:
        """Connect the socket, so an ICMP error for what it sends fails its next recv."""
        assert is_documentation_address(to[0]), to
        self.agent.call(op="connect", sock=self.sock, to=list(to))

    def recv(self, timeout: float = ARRIVAL_TIMEOUT) -> Received | None:
        reply = self.agent.call(wait=timeout, op="recv", sock=self.sock, timeout=timeout)
        if reply.get("timeout"):
            return None
        host, port = reply["from"]
        return Received(reply["data"], (str(host), int(port)), reply["ttl"])

    def expect(self, data: str, timeout: float = ARRIVAL_TIMEOUT) -> Received:
        """Receive the next packet and check it is ``data``."""
        received = self.recv(timeout)
        assert received is not None, f"{data!r} did not arrive at {self.agent.host.name}"
        assert received.data == data, f"expected {data!r}, got {received}"
        return received

    def expect_quiet(self) -> None:
        """Nothing more arrives (used after a control packet that did arrive)."""
        assert self.recv(QUIET_PERIOD) is None


Spawn = Callable[[LabHost], UdpAgent]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    agents: list[UdpAgent] = []

    def start(host: LabHost) -> UdpAgent:
        agents.append(UdpAgent(host))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


def endpoint(host: LabHost, sock: AgentSocket) -> tuple[str, int]:
    """Where to send so a host's own socket receives it (public hosts only)."""
    return (host.address, sock.port)


def observe(via: AgentSocket, probe: AgentSocket, hub: LabHost, label: str) -> tuple[str, int]:
    """``probe`` sends to ``via`` (on public host ``hub``); returns the source ``via`` saw."""
    probe.send(endpoint(hub, via), label)
    return via.expect(label).source


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll until ``condition()`` holds, so an ordering step does not race the kernel.
    (A guard against hangs, not a timed assertion: 5 s is orders of magnitude slack.)"""
    for _ in range(500):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def has_mapping(nat_lab: NatLab, router: str, original: tuple[str, int, str, int]) -> bool:
    return original in {entry.original for entry in nat_lab.conntrack_entries(router)}


def test_every_lab_address_is_in_the_documentation_ranges(nat_lab: NatLab) -> None:
    for host in [*nat_lab.hosts.values(), *nat_lab.routers.values()]:
        assert is_documentation_address(host.address), host
        assert is_documentation_address(host.public_address), host
    assert set(nat_lab.hosts) == {"pub1", "pub2", "a", "b", "s"}
    assert set(nat_lab.routers) == {"core", "a", "b", "s"}
    addresses = nat_lab.hosts["a"].run(["ip", "-o", "address", "show"])
    assert addresses.returncode == 0, addresses.stderr
    assert "inet6" not in addresses.stdout  # IPv6 is off: nothing link-local is sent


def test_public_hosts_reach_each_other_both_ways_through_a_routed_core(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    pub1, pub2 = nat_lab.hosts["pub1"], nat_lab.hosts["pub2"]
    sock1, sock2 = spawn(pub1).open(), spawn(pub2).open()

    sock1.send(endpoint(pub2, sock2), "one-to-two")
    got = sock2.expect("one-to-two")
    assert got.source == (pub1.address, sock1.port)
    assert got.ttl == 63  # sent with 64: core is one routed hop

    sock2.send(got.source, "two-to-one")
    back = sock1.expect("two-to-one")
    assert back.source == (pub2.address, sock2.port)


def test_home_host_is_seen_from_its_router_wan_address_with_its_own_port(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    a, pub1 = nat_lab.hosts["a"], nat_lab.hosts["pub1"]
    assert a.address != a.public_address
    sock_a, sock_pub1 = spawn(a).open(), spawn(pub1).open()

    got = observe(sock_pub1, sock_a, pub1, "hello")
    assert got == (a.public_address, sock_a.port)  # masqueraded, port preserved
    sock_pub1.send(got, "reply")
    reply = sock_a.expect("reply")
    assert reply.source == (pub1.address, sock_pub1.port)
    assert reply.ttl == 62  # pub1 -> core -> router a -> host a
    assert (a.address, sock_a.port, pub1.address, sock_pub1.port) in {
        entry.original for entry in nat_lab.conntrack_entries("a")
    }


def test_port_preserving_nat_maps_one_socket_to_one_port_for_every_destination(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    a = nat_lab.hosts["a"]
    pub1, pub2 = nat_lab.hosts["pub1"], nat_lab.hosts["pub2"]
    sock_a = spawn(a).open()
    sock_pub1, sock_pub2 = spawn(pub1).open(), spawn(pub2).open()
    seen1 = observe(sock_pub1, sock_a, pub1, "to-pub1")
    seen2 = observe(sock_pub2, sock_a, pub2, "to-pub2")
    assert seen1 == seen2 == (a.public_address, sock_a.port)


def test_unsolicited_packets_are_dropped_even_to_a_mapped_port(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    a = nat_lab.hosts["a"]
    pub1, pub2 = nat_lab.hosts["pub1"], nat_lab.hosts["pub2"]
    sock_a = spawn(a).open()
    agent_pub1 = spawn(pub1)
    sock_pub1, other_port_pub1 = agent_pub1.open(), agent_pub1.open()
    sock_pub2 = spawn(pub2).open()
    mapping = observe(sock_pub1, sock_a, pub1, "open-mapping")
    drops_before = nat_lab.wan_drops("a")

    sock_pub2.connect(mapping)  # an ICMP port unreachable would fail its next recv
    sock_pub2.send(mapping, "from-another-address")  # address-dependent filtering
    other_port_pub1.send(mapping, "from-another-port")  # port-dependent filtering
    sock_pub1.send(mapping, "control")  # the mapped peer itself gets through
    sock_a.expect("control")
    wait_for(lambda: nat_lab.wan_drops("a") - drops_before == 2, "router a dropped both")
    sock_a.expect_quiet()
    sock_pub2.expect_quiet()  # dropped silently: no ICMP error came back


def test_symmetric_nat_gives_each_destination_its_own_port(nat_lab: NatLab, spawn: Spawn) -> None:
    s = nat_lab.hosts["s"]
    pub1, pub2 = nat_lab.hosts["pub1"], nat_lab.hosts["pub2"]
    agent_s = spawn(s)
    sock_pub1, sock_pub2 = spawn(pub1).open(), spawn(pub2).open()
    pairs = []
    for attempt in range(4):
        sock_s = agent_s.open()
        seen1 = observe(sock_pub1, sock_s, pub1, f"try{attempt}")
        seen2 = observe(sock_pub2, sock_s, pub2, f"try{attempt}")
        assert seen1[0] == seen2[0] == s.public_address
        pairs.append((seen1[1], seen2[1]))
    # fully-random picks each port at random, so a coincidence is possible but rare.
    assert sum(port1 != port2 for port1, port2 in pairs) >= 3, pairs


def test_a_punch_ttl_packet_opens_the_own_router_but_dies_at_core(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    a, pub1 = nat_lab.hosts["a"], nat_lab.hosts["pub1"]
    agent_a = spawn(a)
    sock_punch, sock_control = agent_a.open(), agent_a.open()
    sock_pub1 = spawn(pub1).open()

    sock_punch.send(endpoint(pub1, sock_pub1), "punch", ttl=PUNCH_TTL)
    sock_control.send(endpoint(pub1, sock_pub1), "one-more-hop", ttl=PUNCH_TTL + 1)
    arrived = sock_pub1.expect("one-more-hop")
    assert arrived.source == (a.public_address, sock_control.port)
    assert arrived.ttl == 1  # exactly two routed hops: router a and core
    # The punch packet did leave router a: its conntrack entry (the mapping) exists ...
    punch_flow = (a.address, sock_punch.port, pub1.address, sock_pub1.port)
    wait_for(lambda: has_mapping(nat_lab, "a", punch_flow), "router a mapped the punch")
    sock_pub1.expect_quiet()  # ... but the packet never arrives
    mappings = {entry.original: entry.reply for entry in nat_lab.conntrack_entries("a")}
    assert mappings[punch_flow] == (pub1.address, sock_pub1.port, a.public_address, sock_punch.port)


def punch_endpoints(
    nat_lab: NatLab, spawn: Spawn
) -> tuple[AgentSocket, AgentSocket, tuple[str, int], tuple[str, int]]:
    """Sockets on hosts a and b and their public endpoints, as observed by pub1."""
    pub1 = nat_lab.hosts["pub1"]
    sock_pub1 = spawn(pub1).open()
    sock_a, sock_b = spawn(nat_lab.hosts["a"]).open(), spawn(nat_lab.hosts["b"]).open()
    public_a = observe(sock_pub1, sock_a, pub1, "who-am-i-a")
    public_b = observe(sock_pub1, sock_b, pub1, "who-am-i-b")
    return sock_a, sock_b, public_a, public_b


def test_hole_punch_between_two_port_preserving_nats(nat_lab: NatLab, spawn: Spawn) -> None:
    sock_a, sock_b, public_a, public_b = punch_endpoints(nat_lab, spawn)
    drops_a = nat_lab.wan_drops("a")

    # b opens its router toward a with a packet that dies at core (router a never sees it).
    sock_b.send(public_a, "opener", ttl=PUNCH_TTL)
    opener_flow = (nat_lab.hosts["b"].address, sock_b.port, *public_a)
    wait_for(lambda: has_mapping(nat_lab, "b", opener_flow), "router b mapped the opener")
    # a sends at full TTL: router b lets it in, it matches b's mapping.
    sock_a.send(public_b, "hello-b")
    got_b = sock_b.expect("hello-b")
    assert got_b.source == public_a
    sock_b.send(got_b.source, "hello-a")
    got_a = sock_a.expect("hello-a")
    assert got_a.source == public_b
    sock_a.expect_quiet()  # the opener never arrived
    assert nat_lab.wan_drops("a") == drops_a


def test_without_opener_the_first_packet_is_dropped_by_the_peer_router(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    """Linux drops the early packet before conntrack confirms it, so it leaves no state
    at router b: b's later outbound flow keeps its port and the punch still works."""
    sock_a, sock_b, public_a, public_b = punch_endpoints(nat_lab, spawn)
    drops_b = nat_lab.wan_drops("b")

    sock_a.send(public_b, "too-early")
    wait_for(lambda: nat_lab.wan_drops("b") - drops_b == 1, "router b dropped it")
    assert not has_mapping(nat_lab, "b", (*public_a, *public_b))  # and kept no state
    sock_b.send(public_a, "b-opens-late")
    got_a = sock_a.expect("b-opens-late")
    assert got_a.source == public_b
    sock_a.send(public_b, "now-in")
    assert sock_b.expect("now-in").source == public_a


def test_early_packet_accepted_by_the_peer_router_moves_the_peer_mapping(
    nat_lab: NatLab, spawn: Spawn
) -> None:
    """The failure mode the punch TTL avoids: a router that lets the early packet reach
    its own stack (here: an input rule accepting that one port) keeps a conntrack entry
    for it, so b's outbound flow to a can no longer keep its port and a's router drops
    b's packets from the unexpected port."""
    sock_a, sock_b, public_a, public_b = punch_endpoints(nat_lab, spawn)
    router_b = nat_lab.routers["b"]
    accept_early = ["iifname", "wan", "udp", "dport", str(public_b[1]), "accept"]
    added = router_b.run(
        ["nft", "-e", "-a", "insert", "rule", "ip", NFT_TABLE, "input", *accept_early]
    )
    assert added.returncode == 0, added.stderr
    handle = added.stdout.rsplit("# handle", 1)[1].strip()
    try:
        drops_a = nat_lab.wan_drops("a")
        sock_a.send(public_b, "too-early")
        early_flow = (*public_a, *public_b)  # a's early packet, as router b sees it
        wait_for(lambda: has_mapping(nat_lab, "b", early_flow), "router b kept the early one")
        sock_b.send(public_a, "b-opens-late")
        sock_b.send(public_a, "b-again")
        # a never gets them: router b had to pick another port, which router a does not know.
        wait_for(lambda: nat_lab.wan_drops("a") - drops_a == 2, "router a dropped both")
        sock_a.expect_quiet()
        host_b = nat_lab.hosts["b"]
        mappings = {entry.original: entry.reply for entry in nat_lab.conntrack_entries("b")}
        outbound = mappings[(host_b.address, sock_b.port, *public_a)]
        assert outbound[:3] == (*public_a, host_b.public_address)
        assert outbound[3] != public_b[1]  # b's mapping toward a moved to another port
    finally:
        router_b.run(["nft", "delete", "rule", "ip", NFT_TABLE, "input", "handle", handle])


def namespaces_present() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def wait_until_inside(pid: int, netns: str) -> None:
    """Wait until ``ip netns exec`` has moved process ``pid`` into ``netns``."""
    target = os.stat(f"/run/netns/{netns}")
    for _ in range(500):
        current = os.stat(f"/proc/{pid}/ns/net")
        if (current.st_dev, current.st_ino) == (target.st_dev, target.st_ino):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never entered {netns}")


def test_stop_removes_every_namespace_even_after_an_exception() -> None:
    lab = NatLab(tag="cleanup")
    names = set(lab.namespaces.values())
    leftover: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert names <= namespaces_present()
        leftover = lab.hosts["a"].popen(["sleep", "60"])
        wait_until_inside(leftover.pid, lab.hosts["a"].netns)
        raise RuntimeError("boom")
    assert not names & namespaces_present()
    assert leftover is not None
    assert leftover.wait(timeout=10) != 0  # the process left inside was killed
    lab.stop()  # idempotent


def test_failed_start_raises_lab_error_and_removes_what_it_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tests.nat.lab as lab_module

    monkeypatch.setattr(
        lab_module, "home_router_ruleset", lambda symmetric: "table ip broken { nonsense }\n"
    )
    lab = NatLab(tag="broken")
    with pytest.raises(LabError, match="nft") as failure:
        lab.start()
    assert "nonsense" in str(failure.value)
    assert not set(lab.namespaces.values()) & namespaces_present()
    assert not lab.started


def test_a_lab_left_running_is_removed_when_its_process_exits() -> None:
    script = (
        "from tests.nat.lab import NatLab\n"
        "lab = NatLab(tag='atexit').start()\n"
        "print(lab.prefix, flush=True)\n"
        "raise SystemExit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    prefix = done.stdout.strip()
    assert prefix.startswith("natlab-atexit-")
    assert not [name for name in namespaces_present() if name.startswith(prefix)]
