"""Discrete-event simulation of the Kademlia core (``RoutingTable`` + ``Lookup``).

Drives the real protocol classes for N simulated nodes: no sockets, no threads,
one event queue, simulated time. Every FIND_NODE travels with a random one-way
latency; a lost message is either retransmitted after a probe timeout (QUIC
streams are reliable: loss costs time) or, with ``--loss-model drop``, lost for
good (the requester sees a failure at its request timeout). A node that left
never answers. Answering nodes ``observe`` the requester and requesters
``observe`` the responder; full buckets ask for pings, which are simulated too;
failed requests are ``record_failure``-d.

Network build (``--build``):

- ``join``: nodes join one by one, the Kademlia way: contact a random bootstrap
  node, look up the own id, then refresh (one lookup of a random address in it)
  every bucket from the nearest neighbour's outwards that holds fewer than k
  peers. All through the simulated network.
- ``converged``: the tables a long-running network converges to with bucket
  refresh: every node's bucket i receives up to k peers drawn at random from the
  ids that really fall in it (via ``RoutingTable.observe``, diversity limits on).
  Much faster; used by ``auto`` above 3000 nodes.

Then: many lookups for random targets from random nodes (figures: rounds,
messages, latency, share whose 5 closest equal the exact 5 closest of the live
id list), then the same while nodes leave (stop answering) and new nodes join.

    .venv/bin/python bench/simulate.py --nodes 1000
    .venv/bin/python bench/simulate.py --nodes 10000
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import ipaddress
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.chunks import CLOSE_GROUP_SIZE as CLOSE_GROUP
from protocol.lookup import Lookup
from protocol.routing import PeerEntry, PingNeeded, RoutingTable
from protocol.xor import ADDRESS_BITS, ADDRESS_BYTES, closest_in_sorted

YOUNG = 10.0
LossModel = Literal["retransmit", "drop"]
Build = Literal["join", "converged", "auto"]


# --- exact answers -------------------------------------------------------------------


def is_exact(result: Sequence[bytes], exact: Sequence[int], count: int = CLOSE_GROUP) -> bool:
    """Do the first ``count`` ids of a lookup result equal the exact ``count`` closest?"""
    return [int.from_bytes(p, "big") for p in result[:count]] == list(exact[:count])


# --- figures -------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


@dataclass(slots=True)
class LookupRecord:
    """The outcome of one measured lookup."""

    origin: bytes
    target: bytes
    result: tuple[bytes, ...]
    rounds: int
    messages: int
    latency: float
    exact5: bool
    exact_k: bool
    """The whole result equals the exact k closest."""
    miss_reason: str = ""
    """For an inexact 5: "young" (a missed node joined after the build, less than
    ``YOUNG`` s before the lookup started or during it), "departed" (the result holds a node that has
    left), else "other"."""


@dataclass
class PhaseStats:
    name: str
    records: list[LookupRecord] = field(default_factory=list)
    abandoned: int = 0
    """Lookups whose own node left before they finished (not measured)."""
    left: int = 0
    joined: int = 0

    def summary(self) -> dict[str, float]:
        r = self.records
        if not r:
            return {"lookups": 0}
        return {
            "lookups": len(r),
            "rounds_median": percentile([x.rounds for x in r], 0.5),
            "rounds_p95": percentile([x.rounds for x in r], 0.95),
            "rounds_max": max(x.rounds for x in r),
            "messages_median": percentile([x.messages for x in r], 0.5),
            "messages_p95": percentile([x.messages for x in r], 0.95),
            "latency_ms_p50": 1000 * percentile([x.latency for x in r], 0.5),
            "latency_ms_p95": 1000 * percentile([x.latency for x in r], 0.95),
            "exact5_share": sum(x.exact5 for x in r) / len(r),
            "exact_k_share": sum(x.exact_k for x in r) / len(r),
        }


# --- the simulated network -----------------------------------------------------------


@dataclass
class SimConfig:
    nodes: int = 1000
    lookups: int = 2000
    churn_lookups: int = 1000
    churn: float = 0.05
    """Share of the nodes that leave, and (as many) that join, during the churn phase."""
    churn_duration: float = 60.0
    """Simulated seconds over which the churn phase's lookups, leaves and joins spread."""
    alpha: int = 3
    k: int = 20
    latency_min: float = 0.005
    latency_max: float = 0.080
    loss: float = 0.01
    loss_model: LossModel = "retransmit"
    retransmit_after: float = 0.25
    """QUIC probe timeout before a lost packet is sent again (retransmit model)."""
    query_timeout: float = 0.3
    """A query unanswered this long is slow: the lookup moves on."""
    request_timeout: float = 1.0
    """The transport gives up on a request after this long (failure)."""
    retries: int = 0
    build: Build = "auto"
    seed: int = 1
    lookup_interval: float = 0.02
    """Simulated seconds between the starts of two measured lookups."""


class SimNode:
    __slots__ = ("addrs", "alive", "created", "id", "ip", "joined", "table")

    def __init__(self, node_id: bytes, ip: str, k: int, created: float) -> None:
        self.id = node_id
        self.created = created
        """When the node came up (it answers from then on)."""
        self.ip = ip
        self.addrs = (f"/ip4/{ip}/udp/12000/quic-v1",)
        self.table = RoutingTable(node_id, k=k)
        self.alive = True
        self.joined = False


class _Run:
    __slots__ = ("finished", "lookup", "node", "on_done")

    def __init__(self, node: SimNode, lookup: Lookup, on_done: Callable[[_Run], None]) -> None:
        self.node = node
        self.lookup = lookup
        self.on_done = on_done
        self.finished = False


Event = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class Simulation:
    """A network of ``SimNode`` driven by one discrete-event queue."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self._queue: list[Event] = []
        self._seq = 0
        self.nodes: dict[bytes, SimNode] = {}
        self.alive_sorted: list[int] = []
        self.messages = 0
        self.pings = 0
        self._used_ips: set[int] = set()
        self._measured: set[_Run] = set()
        """Measured lookups still running whose node is alive."""
        self.built_at = 0.0
        """Simulated time at which the network was built."""

    # --- event queue -----------------------------------------------------------------

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action, args))

    def run_until(self, stop: Callable[[], bool] | None = None, until: float | None = None) -> None:
        """Process events until ``stop()`` is true, time passes ``until``, or none are left."""
        queue = self._queue
        while queue:
            if stop is not None and stop():
                return
            if until is not None and queue[0][0] > until:
                self.now = until
                return
            when, _, action, args = heapq.heappop(queue)
            self.now = when
            action(*args)

    # --- nodes -----------------------------------------------------------------------

    def new_node(self) -> SimNode:
        node_id = self.rng.randbytes(ADDRESS_BYTES)
        while node_id in self.nodes:
            node_id = self.rng.randbytes(ADDRESS_BYTES)
        raw = self.rng.getrandbits(24)
        while raw in self._used_ips:
            raw = self.rng.getrandbits(24)
        self._used_ips.add(raw)
        ip = str(ipaddress.IPv4Address((10 << 24) | raw))
        node = SimNode(node_id, ip, self.config.k, self.now)
        self.nodes[node_id] = node
        bisect.insort(self.alive_sorted, int.from_bytes(node_id, "big"))
        return node

    def leave(self, node: SimNode) -> None:
        node.alive = False
        index = bisect.bisect_left(self.alive_sorted, int.from_bytes(node.id, "big"))
        del self.alive_sorted[index]

    def exact_for(self, target: bytes, count: int, excluding: bytes) -> list[int]:
        """The exact ``count`` live ids closest to ``target``, ``excluding`` left out
        (a lookup never returns the node that runs it)."""
        leave_out = int.from_bytes(excluding, "big")
        found = closest_in_sorted(self.alive_sorted, int.from_bytes(target, "big"), count + 1)
        return [i for i in found if i != leave_out][:count]

    def _miss_reason(self, lookup: Lookup, result: Sequence[bytes], exact: list[int]) -> str:
        if is_exact(result, exact, CLOSE_GROUP):
            return ""
        found = {int.from_bytes(p, "big") for p in result[:CLOSE_GROUP]}
        missed = [i.to_bytes(ADDRESS_BYTES, "big") for i in exact[:CLOSE_GROUP] if i not in found]
        young_since = max(self.built_at, lookup.started_at - YOUNG)
        if any(self.nodes[p].created > young_since for p in missed):
            return "young"
        if any(not self.nodes[p].alive for p in result[:CLOSE_GROUP]):
            return "departed"
        return "other"

    def random_alive(self, joined_only: bool = True) -> SimNode:
        while True:
            node_int = self.alive_sorted[self.rng.randrange(len(self.alive_sorted))]
            node = self.nodes[node_int.to_bytes(ADDRESS_BYTES, "big")]
            if node.joined or not joined_only:
                return node

    # --- messages --------------------------------------------------------------------

    def _delays(self) -> tuple[float | None, float | None]:
        """One-way delays of a request and its reply (``None``: lost for good)."""
        return self._delay(), self._delay()

    def _delay(self) -> float | None:
        c = self.config
        rng = self.rng
        delay = rng.uniform(c.latency_min, c.latency_max)
        while rng.random() < c.loss:
            if c.loss_model == "drop":
                return None
            delay += c.retransmit_after + rng.uniform(c.latency_min, c.latency_max)
        return delay

    def observe(self, node: SimNode, peer: SimNode) -> None:
        """``node`` saw ``peer`` alive; carry out a ping-before-evict if asked."""
        action = node.table.observe(peer.id, peer.addrs, peer.ip, self.now)
        if isinstance(action, PingNeeded):
            self._ping(node, action.peer_id)

    def _ping(self, node: SimNode, peer_id: bytes) -> None:
        self.pings += 1
        sent = self.now
        d1, d2 = self._delays()
        peer = self.nodes[peer_id]
        timeout = self.config.request_timeout
        if d1 is None or d2 is None or d1 + d2 > timeout:
            self.at(sent + timeout, self._ping_done, node, peer, False)
        else:
            self.at(sent + d1, self._ping_arrive, node, peer, sent + d1 + d2, sent)

    def _ping_arrive(self, node: SimNode, peer: SimNode, reply_at: float, sent: float) -> None:
        if not peer.alive:
            self.at(sent + self.config.request_timeout, self._ping_done, node, peer, False)
            return
        # The pinged node answers but does not add the pinger (that would set off a
        # chain of pings across the network); the pinger observes the answer.
        self.at(reply_at, self._ping_done, node, peer, True)

    def _ping_done(self, node: SimNode, peer: SimNode, alive: bool) -> None:
        if node.alive:
            node.table.ping_result(peer.id, alive, self.now)

    # --- lookups ---------------------------------------------------------------------

    def start_lookup(self, node: SimNode, target: bytes, on_done: Callable[[_Run], None]) -> _Run:
        c = self.config
        seeds = node.table.closest(target, c.k)
        lookup = Lookup(
            node.id,
            target,
            seeds,
            alpha=c.alpha,
            k=c.k,
            query_timeout=c.query_timeout,
            give_up_after=2 * c.request_timeout,
            retries=c.retries,
            now=self.now,
        )
        run = _Run(node, lookup, on_done)
        if target != node.id:
            node.table.mark_refreshed(node.table.bucket_of(target), self.now)
        self._pump(run)
        return run

    def _pump(self, run: _Run) -> None:
        if run.finished or not run.node.alive:
            return
        for contact in run.lookup.next_queries(self.now):
            self._query(run, contact.peer_id)
        if run.lookup.done:
            run.finished = True
            run.on_done(run)

    def _query(self, run: _Run, peer_id: bytes) -> None:
        self.messages += 1
        c = self.config
        sent = self.now
        d1, d2 = self._delays()
        peer = self.nodes[peer_id]
        if d1 is None or d2 is None:
            self.at(sent + c.request_timeout, self._query_failed, run, peer_id)
            self.at(sent + c.query_timeout, self._pump, run)
            return
        self.at(sent + d1, self._query_arrive, run, peer, sent, d2)
        if d1 + d2 >= c.query_timeout:
            self.at(sent + c.query_timeout, self._pump, run)

    def _query_arrive(self, run: _Run, peer: SimNode, sent: float, d2: float) -> None:
        timeout = self.config.request_timeout
        if not peer.alive:
            self.at(sent + timeout, self._query_failed, run, peer.id)
            return
        requester = run.node
        if requester.alive:
            self.observe(peer, requester)
        if self.now + d2 - sent > timeout:
            self.at(sent + timeout, self._query_failed, run, peer.id)
            return
        peers = peer.table.closest(run.lookup.target, self.config.k, exclude=(requester.id,))
        self.at(self.now + d2, self._query_reply, run, peer, peers)

    def _query_reply(self, run: _Run, peer: SimNode, peers: list[PeerEntry]) -> None:
        if run.finished or not run.node.alive:
            return
        self.observe(run.node, peer)
        if run.lookup.on_reply(peer.id, peers, self.now):
            self._pump(run)

    def _query_failed(self, run: _Run, peer_id: bytes) -> None:
        if not run.node.alive:
            return
        run.node.table.record_failure(peer_id, self.now)
        if not run.finished and run.lookup.on_failure(peer_id, self.now):
            self._pump(run)

    # --- building the network ----------------------------------------------------------

    def join(self, node: SimNode, bootstrap: SimNode, on_joined: Callable[[], None]) -> None:
        """Kademlia join: bootstrap contact, self-lookup, refresh of non-full buckets."""
        node.table.observe(bootstrap.id, bootstrap.addrs, bootstrap.ip, self.now)
        pending = 0

        def refreshed(_run: _Run) -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                node.joined = True
                on_joined()

        def self_lookup_done(_run: _Run) -> None:
            nonlocal pending
            table = node.table
            sizes = table.bucket_sizes()
            indices = [
                i
                for i in table.buckets_to_refresh(self.now, 0.0)
                if sizes.get(i, 0) < self.config.k
            ]
            pending = len(indices) + 1
            for index in indices:
                self.start_lookup(node, self._address_in_bucket(node.id, index), refreshed)
            refreshed(_run)

        self.start_lookup(node, node.id, self_lookup_done)

    def _address_in_bucket(self, own: bytes, index: int) -> bytes:
        """``xor.random_address_in_bucket``, drawn from the seeded generator."""
        offset = (1 << index) | self.rng.getrandbits(index)
        return (int.from_bytes(own, "big") ^ offset).to_bytes(ADDRESS_BYTES, "big")

    def build_by_joining(self, count: int, progress: bool) -> None:
        """Nodes join one after another, each through a random node already joined."""
        first = self.new_node()
        first.joined = True
        started = time.perf_counter()
        for n in range(1, count):
            node = self.new_node()
            self.join(node, self.random_alive(), lambda: None)
            self._run_until_joined(node)
            if progress and n % 1000 == 0:
                print(f"  joined {n} nodes ({time.perf_counter() - started:.0f} s)", flush=True)
        self.run_until(until=self.now + 2 * self.config.request_timeout)

    def _run_until_joined(self, node: SimNode) -> None:
        self.run_until(stop=lambda: node.joined)

    def build_converged(self) -> None:
        """Fill every bucket with up to k peers drawn from the ids that fall in it."""
        for _ in range(self.config.nodes):
            self.new_node()
        ids = self.alive_sorted
        k = self.config.k
        rng = self.rng
        for node in self.nodes.values():
            own = int.from_bytes(node.id, "big")
            for index in range(ADDRESS_BITS - 1, -1, -1):
                # Bucket ``index``: same bits as ``own`` above ``index``, the other bit at it.
                low = ((own >> index) ^ 1) << index
                start = bisect.bisect_left(ids, low)
                end = bisect.bisect_left(ids, low + (1 << index))
                if end > start:
                    chosen = ids[start:end] if end - start <= k else rng.sample(ids[start:end], k)
                    rng.shuffle(chosen)
                    for peer_int in chosen:
                        peer = self.nodes[peer_int.to_bytes(ADDRESS_BYTES, "big")]
                        node.table.observe(peer.id, peer.addrs, peer.ip, self.now)
                # Nothing shares more than ``ADDRESS_BITS - index`` leading bits: stop.
                mine = bisect.bisect_left(ids, (own >> index) << index)
                rest = bisect.bisect_left(ids, ((own >> index) + 1) << index)
                if rest - mine <= 1:
                    break
            node.joined = True
            self.now += 1e-6

    # --- measuring -------------------------------------------------------------------

    def measure(self, phase: PhaseStats, count: int, churn: bool) -> None:
        """Start ``count`` lookups, evenly spread; with ``churn``, nodes leave and join
        meanwhile (over ``churn_duration``). Returns when every lookup has finished
        or lost its node."""
        c = self.config
        runs: list[_Run] = []
        self._measured.clear()

        def finished(run: _Run) -> None:
            self._measured.discard(run)
            lookup = run.lookup
            result = tuple(contact.peer_id for contact in lookup.result())
            exact = self.exact_for(lookup.target, max(c.k, CLOSE_GROUP), excluding=run.node.id)
            phase.records.append(
                LookupRecord(
                    origin=run.node.id,
                    target=lookup.target,
                    result=result,
                    rounds=lookup.rounds,
                    messages=lookup.messages_sent,
                    latency=self.now - lookup.started_at,
                    exact5=is_exact(result, exact, CLOSE_GROUP),
                    exact_k=is_exact(result, exact, c.k),
                    miss_reason=self._miss_reason(lookup, result, exact),
                )
            )

        def start() -> None:
            node = self.random_alive()
            run = self.start_lookup(node, self.rng.randbytes(ADDRESS_BYTES), finished)
            runs.append(run)
            if not run.finished:
                self._measured.add(run)

        begin = self.now
        interval = c.churn_duration / count if churn else c.lookup_interval
        for n in range(count):
            self.at(begin + n * interval, start)
        if churn:
            for _ in range(round(c.churn * c.nodes)):
                self.at(begin + self.rng.uniform(0, c.churn_duration), self._churn_leave, phase)
                self.at(begin + self.rng.uniform(0, c.churn_duration), self._churn_join, phase)

        def all_done() -> bool:
            return len(runs) == count and not self._measured

        self.run_until(stop=all_done)
        phase.abandoned = sum(1 for r in runs if not r.finished)

    def _churn_leave(self, phase: PhaseStats) -> None:
        node = self.random_alive(joined_only=False)
        self.leave(node)
        self._measured -= {run for run in self._measured if run.node is node}
        phase.left += 1

    def _churn_join(self, phase: PhaseStats) -> None:
        node = self.new_node()
        self.join(node, self.random_alive(), lambda: None)
        phase.joined += 1


# --- command line ----------------------------------------------------------------------


@dataclass
class RunReport:
    static: PhaseStats
    churn: PhaseStats
    build: str
    build_seconds: float
    """Wall time of building the network."""
    table_sizes: tuple[float, int, int]
    """Mean, min and max routing-table size after the build."""


def run(config: SimConfig, progress: bool = False) -> RunReport:
    """Build the network, then measure a static phase and a churn phase."""
    sim = Simulation(config)
    build = config.build
    if build == "auto":
        build = "join" if config.nodes <= 3000 else "converged"
    started = time.perf_counter()
    if build == "join":
        sim.build_by_joining(config.nodes, progress)
    else:
        sim.build_converged()
    build_seconds = time.perf_counter() - started
    sim.built_at = sim.now
    sizes = [len(node.table) for node in sim.nodes.values()]
    static = PhaseStats("static")
    sim.measure(static, config.lookups, churn=False)
    churn = PhaseStats("churn")
    if config.churn_lookups:
        sim.measure(churn, config.churn_lookups, churn=True)
    return RunReport(
        static,
        churn,
        build,
        build_seconds,
        (sum(sizes) / len(sizes), min(sizes), max(sizes)),
    )


def _print_phase(phase: PhaseStats, k: int) -> None:
    s = phase.summary()
    if not phase.records:
        print(f"{phase.name}: no lookups")
        return
    print(
        f"{phase.name}: {s['lookups']:.0f} lookups"
        + (f", {phase.left} left, {phase.joined} joined" if phase.left or phase.joined else "")
        + (f", {phase.abandoned} abandoned (own node left)" if phase.abandoned else "")
    )
    print(
        f"  rounds/lookup    median {s['rounds_median']:.0f}  p95 {s['rounds_p95']:.0f}"
        f"  max {s['rounds_max']:.0f}"
    )
    print(f"  messages/lookup  median {s['messages_median']:.0f}  p95 {s['messages_p95']:.0f}")
    print(f"  latency (sim ms) p50 {s['latency_ms_p50']:.0f}  p95 {s['latency_ms_p95']:.0f}")
    exact5 = sum(r.exact5 for r in phase.records)
    exact_k = sum(r.exact_k for r in phase.records)
    print(
        f"  exact 5 closest  {100 * s['exact5_share']:.2f} % ({exact5}/{len(phase.records)})"
        f"   exact {k} closest {100 * s['exact_k_share']:.2f} % ({exact_k}/{len(phase.records)})"
    )
    reasons = Counter(r.miss_reason for r in phase.records if r.miss_reason)
    if reasons:
        print(
            "  inexact 5: "
            + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            + f"  (young: a missed node came up < {YOUNG:g} s before the lookup;"
            " departed: the result holds a node that left)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    d = SimConfig()
    parser.add_argument("--nodes", type=int, default=d.nodes)
    parser.add_argument("--lookups", type=int, default=d.lookups)
    parser.add_argument("--churn-lookups", type=int, default=d.churn_lookups)
    parser.add_argument("--churn", type=float, default=d.churn, help="share leaving and joining")
    parser.add_argument("--churn-duration", type=float, default=d.churn_duration)
    parser.add_argument("--alpha", type=int, default=d.alpha)
    parser.add_argument("-k", type=int, default=d.k)
    parser.add_argument("--loss", type=float, default=d.loss)
    parser.add_argument("--loss-model", choices=["retransmit", "drop"], default=d.loss_model)
    parser.add_argument("--retries", type=int, default=d.retries)
    parser.add_argument("--query-timeout", type=float, default=d.query_timeout)
    parser.add_argument("--request-timeout", type=float, default=d.request_timeout)
    parser.add_argument("--build", choices=["join", "converged", "auto"], default=d.build)
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    config = SimConfig(
        nodes=args.nodes,
        lookups=args.lookups,
        churn_lookups=args.churn_lookups,
        churn=args.churn,
        churn_duration=args.churn_duration,
        alpha=args.alpha,
        k=args.k,
        loss=args.loss,
        loss_model=args.loss_model,
        retries=args.retries,
        query_timeout=args.query_timeout,
        request_timeout=args.request_timeout,
        build=args.build,
        seed=args.seed,
    )
    started = time.perf_counter()
    report = run(config, progress=True)
    static, churn = report.static, report.churn
    wall = time.perf_counter() - started
    c = config
    mean, low, high = report.table_sizes
    print(
        f"nodes {c.nodes}, build {report.build} ({report.build_seconds:.1f} s wall; routing"
        f" tables hold {mean:.0f} peers on average, {low}-{high}), alpha {c.alpha}, k {c.k},"
        f" latency "
        f"{1000 * c.latency_min:.0f}-{1000 * c.latency_max:.0f} ms one way, loss "
        f"{100 * c.loss:g} % ({c.loss_model}), query timeout {c.query_timeout} s, "
        f"request timeout {c.request_timeout} s, retries {c.retries}, seed {c.seed}"
    )
    _print_phase(static, c.k)
    if c.churn_lookups:
        print(
            f"(churn: {100 * c.churn:g} % of the nodes leave and as many join"
            f" in {c.churn_duration:g} simulated s)"
        )
        _print_phase(churn, c.k)
    print(f"wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
