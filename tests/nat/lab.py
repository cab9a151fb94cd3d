"""A lab of Linux network namespaces with real NAT routers (``nft`` masquerade).

Importable without pytest (bench code may use it). Every address in the lab comes from
the documentation ranges 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24.

Topology (each box is a network namespace, each line a veth pair; core has only the
connected routes of its five links, so the home LANs are reachable only through NAT)::

    pub1               eth0 203.0.113.2/30   -- to-pub1 203.0.113.1/30  +
    pub2               eth0 203.0.113.6/30   -- to-pub2 203.0.113.5/30  |
    router a            wan 198.51.100.2/30  -- to-a    198.51.100.1/30  |- core
    router b            wan 198.51.100.6/30  -- to-b    198.51.100.5/30  |  (ip_forward)
    router s            wan 198.51.100.10/30 -- to-s    198.51.100.9/30  +

    router a  lan 192.0.2.1/26   -- eth0 192.0.2.2/26    host a
    router b  lan 192.0.2.65/26  -- eth0 192.0.2.66/26   host b
    router s  lan 192.0.2.129/26 -- eth0 192.0.2.130/26  host s

Default routes: pub hosts and home routers via their core address, home hosts via their
router's LAN address. IPv6 is disabled everywhere, rp_filter is 0.

Routers a and b masquerade (port-preserving mapping, address-and-port-dependent
filtering); router s masquerades with ``fully-random`` (a symmetric NAT). All three drop
unsolicited WAN traffic silently. A packet sent with ``IP_TTL = PUNCH_TTL`` by a home
host leaves its router (TTL 2 -> 1) and dies at core.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

PUNCH_TTL: Final = 2
"""The TTL that leaves a home router (which decrements it to 1) and dies at core."""

DOCUMENTATION_NETWORKS: Final = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
)

NETNS_DIR: Final = "/run/netns"
NAMESPACE_PREFIX: Final = "natlab-"
NFT_TABLE: Final = "natlab"
"""The nft table (family ip) of every home router."""

_COMMAND_TIMEOUT: Final = 30.0


class LabError(RuntimeError):
    """Building or tearing down the lab failed; the message names the command and stderr."""


def is_documentation_address(address: str) -> bool:
    """True when ``address`` is inside one of the three IPv4 documentation ranges."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in DOCUMENTATION_NETWORKS)


@dataclass(frozen=True)
class LabHost:
    """One namespace of the lab and how to run a program inside it."""

    name: str
    """Logical name: "pub1", "pub2", "a", "b", "s" (or "core" for the core router)."""
    netns: str
    """The real namespace name (``ip netns list``)."""
    address: str
    """The host's own IP: the LAN address for home hosts and home routers (their
    gateway address), 203.0.113.1 (its address toward pub1) for core."""
    public_address: str
    """What the internet sees: own address for pub hosts, router WAN address for homes."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this namespace (``kwargs`` go to ``subprocess.Popen``)."""
        process: subprocess.Popen[bytes] = subprocess.Popen(self.command(argv), **kwargs)
        return process

    def run(
        self, argv: Sequence[str], timeout: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace to completion: text output captured, no check."""
        options: dict[str, Any] = {"text": True, "capture_output": True, "check": False}
        options.update(kwargs)
        result: subprocess.CompletedProcess[str] = subprocess.run(
            self.command(argv), timeout=timeout, **options
        )
        return result


@dataclass(frozen=True)
class _Veth:
    """A veth pair between two namespaces (by role), with an address on each end."""

    left: str
    left_interface: str
    left_address: str
    right: str
    right_interface: str
    right_address: str


# Roles are the suffixes of the namespace names: core, pub1, pub2, router a/b/s, host a/b/s.
_ROLES: Final = ("core", "pub1", "pub2", "ra", "rb", "rs", "ha", "hb", "hs")
_HOME_ROUTERS: Final = {"a": "ra", "b": "rb", "s": "rs"}
_HOME_HOSTS: Final = {"a": "ha", "b": "hb", "s": "hs"}
_SYMMETRIC_HOMES: Final = frozenset({"s"})
_WAN: Final = "wan"
_LAN: Final = "lan"

_LINKS: Final = (
    _Veth("core", "to-pub1", "203.0.113.1/30", "pub1", "eth0", "203.0.113.2/30"),
    _Veth("core", "to-pub2", "203.0.113.5/30", "pub2", "eth0", "203.0.113.6/30"),
    _Veth("core", "to-a", "198.51.100.1/30", "ra", _WAN, "198.51.100.2/30"),
    _Veth("core", "to-b", "198.51.100.5/30", "rb", _WAN, "198.51.100.6/30"),
    _Veth("core", "to-s", "198.51.100.9/30", "rs", _WAN, "198.51.100.10/30"),
    _Veth("ra", _LAN, "192.0.2.1/26", "ha", "eth0", "192.0.2.2/26"),
    _Veth("rb", _LAN, "192.0.2.65/26", "hb", "eth0", "192.0.2.66/26"),
    _Veth("rs", _LAN, "192.0.2.129/26", "hs", "eth0", "192.0.2.130/26"),
)

_DEFAULT_GATEWAYS: Final = {
    "pub1": "203.0.113.1",
    "pub2": "203.0.113.5",
    "ra": "198.51.100.1",
    "rb": "198.51.100.5",
    "rs": "198.51.100.9",
    "ha": "192.0.2.1",
    "hb": "192.0.2.65",
    "hs": "192.0.2.129",
}

_FORWARDING_ROLES: Final = frozenset({"core", "ra", "rb", "rs"})


def _address_of(role: str, interface: str | None = None) -> str:
    """The bare address a role has on one of its links (the first one when no interface)."""
    for link in _LINKS:
        for end_role, end_interface, end_address in (
            (link.left, link.left_interface, link.left_address),
            (link.right, link.right_interface, link.right_address),
        ):
            if end_role == role and interface in (None, end_interface):
                return end_address.split("/")[0]
    raise KeyError(f"{role} has no interface {interface}")


def _check_topology_addresses() -> None:
    for link in _LINKS:
        for address in (link.left_address, link.right_address):
            if not is_documentation_address(address.split("/")[0]):
                raise LabError(f"lab address {address} is outside the documentation ranges")
    for gateway in _DEFAULT_GATEWAYS.values():
        if not is_documentation_address(gateway):
            raise LabError(f"lab gateway {gateway} is outside the documentation ranges")


_check_topology_addresses()


def home_router_ruleset(symmetric: bool) -> str:
    """The nft ruleset of a home router: masquerade on the WAN side, and drop (silently)
    whatever arrives from the WAN unless it belongs to a connection the LAN opened.

    ``symmetric`` picks ``masquerade fully-random`` (a new random external port for each
    conntrack entry, so for each destination) instead of the port-preserving default.
    Named counters ``wan_input_drops`` / ``wan_forward_drops`` count what was dropped.
    """
    masquerade = "masquerade fully-random" if symmetric else "masquerade"
    return f"""\
table ip {NFT_TABLE} {{
    counter wan_input_drops {{ }}
    counter wan_forward_drops {{ }}

    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{_WAN}" ct state established,related accept
        iifname "{_WAN}" counter name "wan_input_drops" drop
    }}

    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "{_LAN}" oifname "{_WAN}" accept
        iifname "{_WAN}" oifname "{_LAN}" ct state established,related accept
        iifname "{_WAN}" counter name "wan_forward_drops" drop
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{_WAN}" {masquerade}
    }}
}}
"""


def _sysctl_argv(forwarding: bool) -> list[str]:
    settings = [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        f"net.ipv4.ip_forward={1 if forwarding else 0}",
    ]
    return ["sysctl", "-q", "-w", *settings]


def _format_failure(argv: Sequence[str], returncode: int | str, stderr: str, stdin: str) -> str:
    message = f"command failed ({returncode}): {' '.join(argv)}\nstderr: {stderr.strip()}"
    if stdin:
        message += f"\nstdin:\n{stdin}"
    return message


def _run(argv: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a command, raising LabError (with the command and its stderr) on failure."""
    try:
        result = subprocess.run(
            list(argv),
            input=stdin,
            text=True,
            capture_output=True,
            check=False,
            timeout=_COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(_format_failure(argv, type(error).__name__, str(error), stdin)) from error
    if result.returncode != 0:
        raise LabError(_format_failure(argv, result.returncode, result.stderr, stdin))
    return result


def _run_parallel(commands: Sequence[tuple[Sequence[str], str]]) -> None:
    """Run independent commands at once; raise LabError for the first one that failed."""
    processes: list[tuple[Sequence[str], str, subprocess.Popen[str]]] = []
    failure: str | None = None
    for argv, stdin in commands:
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as error:
            failure = failure or _format_failure(argv, type(error).__name__, str(error), stdin)
            break
        processes.append((argv, stdin, process))
    for argv, stdin, process in processes:
        try:
            _, stderr = process.communicate(stdin, timeout=_COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            failure = failure or _format_failure(argv, "timeout", stderr, stdin)
            continue
        if process.returncode != 0:
            failure = failure or _format_failure(argv, process.returncode, stderr, stdin)
    if failure is not None:
        raise LabError(failure)


def _namespace_identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _kill_processes_in(identities: set[tuple[int, int]]) -> None:
    """SIGKILL every process whose network namespace is one of ``identities``
    (processes a test started inside the lab and left running)."""
    if not identities:
        return
    own_pid = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own_pid:
            continue
        if _namespace_identity(f"/proc/{entry}/ns/net") in identities:
            with contextlib.suppress(OSError):  # it may have exited already
                os.kill(int(entry), signal.SIGKILL)


def _delete_namespaces(names: Sequence[str]) -> None:
    """Delete namespaces by name, then kill the processes still inside them (a namespace
    lives on while a process is in it; the name is gone at once either way)."""
    paths = {name: os.path.join(NETNS_DIR, name) for name in names}
    present = [name for name, path in paths.items() if os.path.exists(path)]
    if not present:
        return
    identities = {
        identity
        for identity in (_namespace_identity(paths[name]) for name in present)
        if identity is not None
    }
    batch = "".join(f"netns delete {name}\n" for name in present)
    result = subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input=batch,
        text=True,
        capture_output=True,
        check=False,
        timeout=_COMMAND_TIMEOUT,
    )
    _kill_processes_in(identities)
    left = [name for name in present if os.path.exists(paths[name])]
    if left:
        raise LabError(f"could not delete namespaces {left}: {result.stderr.strip()}")


Flow = tuple[str, int, str, int]
"""(source address, source port, destination address, destination port)."""


@dataclass(frozen=True)
class ConntrackEntry:
    """One conntrack entry: a NAT mapping is ``original`` (as the LAN host sent it)
    against ``reply`` (as the remote answers it; its destination is the mapped
    external address and port)."""

    protocol: str
    original: Flow
    reply: Flow
    line: str

    @classmethod
    def parse(cls, line: str) -> ConntrackEntry:
        """Parse one ``/proc/net/nf_conntrack`` line (ports are 0 for port-less protocols)."""
        fields = line.split()
        flows: list[dict[str, str]] = []
        for item in fields:
            key, _, value = item.partition("=")
            if key == "src":
                flows.append({})
            if flows and key in ("src", "dst", "sport", "dport") and key not in flows[-1]:
                flows[-1][key] = value
        if len(fields) < 3 or len(flows) < 2:
            raise LabError(f"unexpected conntrack line: {line!r}")

        def flow(parts: dict[str, str]) -> Flow:
            return (
                parts["src"],
                int(parts.get("sport", 0)),
                parts["dst"],
                int(parts.get("dport", 0)),
            )

        return cls(fields[2], flow(flows[0]), flow(flows[1]), line)


_LIVE_LABS: set[NatLab] = set()
_LIVE_LABS_LOCK = threading.Lock()


def _stop_live_labs() -> None:
    """atexit backstop: remove the namespaces of labs nobody stopped."""
    with _LIVE_LABS_LOCK:
        labs = list(_LIVE_LABS)
    for lab in labs:
        try:
            lab.stop()
        except LabError as error:
            print(f"natlab: cleanup failed: {error}", file=sys.stderr)


atexit.register(_stop_live_labs)

_TAG_PATTERN: Final = re.compile(r"[a-z0-9]{1,12}")


class NatLab:
    """The whole lab: build it with ``start()`` (or ``with NatLab() as lab:``), tear it
    down with ``stop()``. Namespace names are ``natlab-[TAG-]PID-RANDOM-ROLE``."""

    def __init__(self, tag: str | None = None) -> None:
        if tag is not None and not _TAG_PATTERN.fullmatch(tag):
            raise ValueError("tag must be 1-12 lowercase letters or digits")
        label = f"{tag}-" if tag else ""
        self.prefix = f"{NAMESPACE_PREFIX}{label}{os.getpid()}-{secrets.token_hex(2)}"
        self.namespaces: dict[str, str] = {role: f"{self.prefix}-{role}" for role in _ROLES}
        """Role ("core", "pub1", "pub2", "ra", "rb", "rs", "ha", "hb", "hs") -> netns name."""
        self.hosts: dict[str, LabHost] = {}
        for pub in ("pub1", "pub2"):
            address = _address_of(pub)
            self.hosts[pub] = LabHost(pub, self.namespaces[pub], address, address)
        for home, host_role in _HOME_HOSTS.items():
            wan = _address_of(_HOME_ROUTERS[home], _WAN)
            self.hosts[home] = LabHost(
                home, self.namespaces[host_role], _address_of(host_role), wan
            )
        core_address = _address_of("core", "to-pub1")
        self.routers: dict[str, LabHost] = {
            "core": LabHost("core", self.namespaces["core"], core_address, core_address)
        }
        for home, router_role in _HOME_ROUTERS.items():
            self.routers[home] = LabHost(
                home,
                self.namespaces[router_role],
                _address_of(router_role, _LAN),
                _address_of(router_role, _WAN),
            )
        self._started = False
        self._made: list[str] = []

    def __repr__(self) -> str:
        return f"NatLab({self.prefix!r}, started={self._started})"

    def start(self) -> NatLab:
        """Build every namespace, link, address, route and ruleset. On failure, remove
        what was made and raise LabError naming the failing command and its stderr."""
        if self._started:
            raise LabError(f"{self!r} is already started")
        with _LIVE_LABS_LOCK:
            _LIVE_LABS.add(self)
        try:
            self._build()
        except BaseException:
            try:
                self.stop()
            except LabError as cleanup_error:
                print(f"natlab: cleanup after failed start: {cleanup_error}", file=sys.stderr)
            raise
        self._started = True
        return self

    def _build(self) -> None:
        names = self.namespaces
        self._made = list(names.values())
        _run(["ip", "-batch", "-"], "".join(f"netns add {names[role]}\n" for role in _ROLES))
        # Sysctls before the links exist, so the links inherit them (no IPv6, no rp_filter).
        _run_parallel(
            [
                (
                    ["ip", "netns", "exec", names[role], *_sysctl_argv(role in _FORWARDING_ROLES)],
                    "",
                )
                for role in _ROLES
            ]
        )
        _run(
            ["ip", "-batch", "-"],
            "".join(
                f"link add name {link.left_interface} netns {names[link.left]} type veth "
                f"peer name {link.right_interface} netns {names[link.right]}\n"
                for link in _LINKS
            ),
        )
        per_namespace: dict[str, list[str]] = {role: ["link set lo up"] for role in _ROLES}
        for link in _LINKS:
            for role, interface, address in (
                (link.left, link.left_interface, link.left_address),
                (link.right, link.right_interface, link.right_address),
            ):
                per_namespace[role].append(f"address add {address} dev {interface}")
                per_namespace[role].append(f"link set dev {interface} up")
        for role, gateway in _DEFAULT_GATEWAYS.items():
            per_namespace[role].append(f"route add default via {gateway}")
        commands: list[tuple[Sequence[str], str]] = [
            (["ip", "-n", names[role], "-batch", "-"], "\n".join(lines) + "\n")
            for role, lines in per_namespace.items()
        ]
        commands.extend(
            (
                ["ip", "netns", "exec", names[router_role], "nft", "-f", "-"],
                home_router_ruleset(symmetric=home in _SYMMETRIC_HOMES),
            )
            for home, router_role in _HOME_ROUTERS.items()
        )
        _run_parallel(commands)

    def stop(self) -> None:
        """Remove every namespace this lab made (killing processes left inside them).
        Idempotent; raises LabError only when a namespace could not be removed."""
        made, self._made = self._made, []
        self._started = False
        try:
            _delete_namespaces(made)
        finally:
            with _LIVE_LABS_LOCK:
                _LIVE_LABS.discard(self)

    def __enter__(self) -> NatLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self._started

    def conntrack_count(self, router: str) -> int:
        """Number of conntrack entries in a router's namespace ("core", "a", "b", "s")."""
        result = _run(
            self.routers[router].command(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
        )
        return int(result.stdout.strip())

    def conntrack_entries(self, router: str) -> list[ConntrackEntry]:
        """The conntrack table of a router ("core", "a", "b", "s"), from
        ``/proc/net/nf_conntrack`` in its namespace."""
        result = _run(self.routers[router].command(["cat", "/proc/net/nf_conntrack"]))
        return [ConntrackEntry.parse(line) for line in result.stdout.splitlines() if line.strip()]

    def wan_drops(self, router: str) -> int:
        """Packets a home router ("a", "b", "s") dropped from its WAN side so far."""
        result = _run(self.routers[router].command(["nft", "-j", "list", "counters"]))
        total = 0
        for item in json.loads(result.stdout)["nftables"]:
            counter = item.get("counter")
            if counter is not None and counter.get("table") == NFT_TABLE:
                total += int(counter["packets"])
        return total


_STALE_NAME: Final = re.compile(rf"^{NAMESPACE_PREFIX}(?:[a-z0-9]+-)?(\d+)-[0-9a-f]{{4}}-\w+$")


def remove_stale_namespaces() -> list[str]:
    """Delete lab namespaces whose creating process no longer exists (left by a run that
    was killed with SIGKILL). Returns the names removed. Not called automatically."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    stale = []
    for name in names:
        match = _STALE_NAME.match(name)
        if match is not None and not os.path.exists(f"/proc/{match.group(1)}"):
            stale.append(name)
    _delete_namespaces(stale)
    return stale


_PROBE_RULESET: Final = f"""\
table ip {NFT_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy accept;
        ct state established,related accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{_WAN}" masquerade fully-random
    }}
}}
"""


@functools.cache
def lab_available() -> str | None:
    """None when the lab can run here, else the reason it cannot (cached)."""
    if not sys.platform.startswith("linux"):
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nft)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs `{tool}` on PATH"
    probe = f"{NAMESPACE_PREFIX}probe-{os.getpid()}-{secrets.token_hex(2)}-x"
    try:
        _run(["ip", "netns", "add", probe])
    except LabError as error:
        return f"cannot create a network namespace: {error}"
    reason: str | None = None
    try:
        _run(["ip", "netns", "exec", probe, "nft", "-f", "-"], _PROBE_RULESET)
    except LabError as error:
        reason = f"nft NAT/conntrack does not work in a namespace: {error}"
    try:
        _delete_namespaces([probe])
    except LabError as error:
        reason = reason or f"cannot delete a network namespace: {error}"
    return reason
