"""What storage audits cost and how fast they catch a node that dropped its data (issue 12).

Real node processes on loopback, free testnets (no payments), crashes by kill -9. Prints:

1. Audit traffic and CPU per node per hour for a node holding about 1,000 chunks.
   A testnet of ``--nodes`` (8) holds ``--chunks`` random chunks of ``--chunk-kib``
   (1,600 of 64 KiB: 5 replicas over 8 nodes is ~1,000 per node). It is run twice from
   the same root dirs: once without audits (``--audit-interval 0``), once auditing
   every ``--fast-interval`` seconds (2), for ``--window`` seconds each (60). CPU is
   utime + stime of every node from /proc; the audits' share is the difference, per
   challenge sent. Traffic per challenge is the size of the real frames
   (``StorageChallenge`` with the sample the planner takes for what two nodes share
   here, and its ``StorageAnswers``; QUIC and UDP headers not counted). Both are then
   scaled to the challenges a node sends at the default interval (900 s): one per
   sharing peer per interval (each node also answers as many). The hashing part grows
   with chunk size: the same figure is given for 4 MiB chunks from blake3's measured
   speed here.
2. Time from a node dropping its data to its close group shunning it and restoring the
   replicas: ``--trials`` (3) dishonest nodes (``tests/system/dishonest_node.py``,
   liar mode, keeping everything at first) join a testnet of ``--detect-nodes`` (10)
   honest nodes auditing every ``--interval`` seconds (10); data is put; then, one at
   a time, the node's chunk files are deleted (it neither notices nor says so: it
   answers with made-up proofs), after ``--trust-periods`` (6) audit periods in which
   it passed its audits and earned trust. Measured: until every honest node sharing chunks
   with it (a majority, and all) shuns it, and until every chunk it held is at 5 nodes keeping real bytes; in seconds
   and in audit periods (goal: within two).
3. False shunnings in churn: ``--churn-nodes`` (25) honest nodes auditing every
   ``--interval`` seconds, data put, then for ``--duration`` seconds (600) a random
   node is killed with kill -9 every ``--kill-every`` s (20) and restarted from its
   root dir 2-8 s later, and a newcomer joins every ``--join-every`` s (60). Then
   every node's shunned list: honest nodes shunned by anyone (goal: none), and the
   audit outcomes during the run.

Run: .venv/bin/python -m bench.bench_audits [--duration 600] [--skip-cost] [--skip-detect]
     [--skip-churn]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blake3 import blake3

from actors.client import Client, PutReport
from bench._timing import cpu_seconds
from cli.control import ControlError, request
from cli.testnet import (
    NodeEntry,
    add_nodes,
    replica_counts,
    restart_node,
    start,
    stop,
    write_manifest,
)
from persistence.chunk_files import CHUNKS_DIRNAME
from protocol.audit import DEFAULT_AUDIT_INTERVAL, sample_size
from protocol.chunks import CLOSE_GROUP_SIZE, chunk_address
from protocol.replication import offers
from protocol.self_encryption import EncryptedChunk
from protocol.wire import StorageAnswers, StorageChallenge, encode_frame
from protocol.xor import closest
from tests.system import dishonest_node

BASE_ARGS = ("--refresh-interval", "10", "--liveness-interval", "1", "--repair-interval", "10")


def node_args(interval: float) -> tuple[str, ...]:
    return (*BASE_ARGS, "--audit-interval", str(interval))


def status(node: NodeEntry) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = request(Path(node.root_dir), "status", timeout=10)
    except ControlError:
        return {}
    return answer


def audits(node: NodeEntry) -> dict[str, Any]:
    section: dict[str, Any] = status(node).get("audits", {})
    return section


def put_random_chunks(nodes: list[NodeEntry], count: int, size: int) -> list[bytes]:
    with Client([n.multiaddr for n in nodes[:5]], host="127.0.0.1", parallel=8) as client:
        addresses: list[bytes] = []
        while len(addresses) < count:
            batch = [os.urandom(size) for _ in range(min(64, count - len(addresses)))]
            chunks = [EncryptedChunk(chunk_address(c), c) for c in batch]
            client._store_batch(chunks, PutReport(), None)
            addresses += [c.address for c in chunks]
    return addresses


def holds(node: NodeEntry, addresses: list[bytes], batch: int = 200) -> list[bytes]:
    """The ``addresses`` the node holds (asked in batches: a control message is bounded)."""
    held: list[bytes] = []
    for i in range(0, len(addresses), batch):
        part = addresses[i : i + batch]
        answer = request(
            Path(node.root_dir), "holds", timeout=120, addresses=[a.hex() for a in part]
        )
        held += [a for a, h in zip(part, answer, strict=True) if h]
    return held


def wait_until(check: Callable[[], bool], timeout: float, every: float = 1.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(every)
    return None


# --- 1. cost ----------------------------------------------------------------------------


def _cpu(nodes: list[NodeEntry]) -> float:
    return sum(cpu_seconds(n.pid) for n in nodes)


def _sent(nodes: list[NodeEntry]) -> int:
    return sum(int(audits(n).get("sent", 0)) for n in nodes)


def measure_cost(args: argparse.Namespace, work: Path) -> None:
    directory = work / "cost"
    size = args.chunk_kib * 1024
    print(
        f"\n1. audit cost: {args.nodes} nodes, {args.chunks} chunks of {args.chunk_kib} KiB,"
        f" audits every {args.fast_interval:g} s vs none, {args.window:g} s windows"
    )
    nodes = start(directory, args.nodes, extra_args=node_args(0), payments=False)
    try:
        addresses = put_random_chunks(nodes, args.chunks, size)
        time.sleep(15)  # replication settles
        held = {bytes.fromhex(n.peer_id): holds(n, addresses) for n in nodes}
    finally:
        stop(directory)
    per_node = statistics.mean(len(h) for h in held.values())
    ids = list(held)
    shared = [
        len(mine)
        for me, chunks in held.items()
        for peer, mine in offers(chunks, me, [p for p in ids if p != me]).items()
    ]
    sharers = statistics.mean(
        len(offers(chunks, me, [p for p in ids if p != me])) for me, chunks in held.items()
    )
    sample = statistics.mean(sample_size(s) for s in shared)
    print(
        f"   held per node: {per_node:.0f} chunks; peers sharing chunks with a node: {sharers:.1f};"
        f" shared with one peer: {statistics.mean(shared):.0f} chunks -> sample {sample:.1f}"
    )

    figures: dict[float, tuple[float, int]] = {}
    for interval in (0.0, args.fast_interval):
        nodes = start(directory, args.nodes, extra_args=node_args(interval), payments=False)
        try:
            time.sleep(max(15.0, 2 * interval + 10))  # past the newcomers' grace
            cpu0, sent0, t0 = _cpu(nodes), _sent(nodes), time.monotonic()
            time.sleep(args.window)
            cpu1, sent1, t1 = _cpu(nodes), _sent(nodes), time.monotonic()
        finally:
            stop(directory)
        figures[interval] = ((cpu1 - cpu0) / (t1 - t0), sent1 - sent0)
        label = "no audits" if interval == 0 else f"audits every {interval:g} s"
        print(
            f"   {label}: {figures[interval][0] / args.nodes * 100:.1f}% CPU per node,"
            f" {(sent1 - sent0) / (t1 - t0):.1f} challenges/s in all"
        )
    base_cpu, _ = figures[0.0]
    fast_cpu, fast_sent = figures[args.fast_interval]
    per_challenge = max(0.0, fast_cpu - base_cpu) * args.window / max(1, fast_sent)

    k = round(sample)
    challenge = StorageChallenge(os.urandom(32), [os.urandom(32) for _ in range(k)])
    answers = StorageAnswers([os.urandom(32) for _ in range(k)])
    wire = len(encode_frame(challenge)) + len(encode_frame(answers))
    per_hour = sharers * 3600.0 / DEFAULT_AUDIT_INTERVAL  # challenges a node sends
    # Each node answers as many as it sends: traffic both ways, CPU on both sides.
    traffic = 2 * per_hour * wire
    cpu_hour = per_hour * per_challenge
    data = os.urandom(4 * 1024 * 1024)
    started = time.perf_counter()
    for _ in range(20):
        blake3(data).digest()
    hash_speed = 20 * len(data) / (time.perf_counter() - started)
    hashed_per_hour = 2 * per_hour * k * 4 * 1024 * 1024  # answer + expected proof
    print(
        f"   per challenge: {wire} bytes on the wire (challenge + answers, {k} addresses),"
        f" {per_challenge * 1000:.1f} ms CPU (both sides, {args.chunk_kib} KiB chunks)"
    )
    print(
        f"   => per node per hour at the default {DEFAULT_AUDIT_INTERVAL:.0f} s interval,"
        f" ~{per_node:.0f} chunks held: {per_hour:.0f} challenges sent (+ as many answered),"
        f" {traffic / 1024:.1f} KiB audit traffic, {cpu_hour:.2f} s CPU"
        f" ({cpu_hour / 36:.4f}% of a core)"
    )
    print(
        f"   => with 4 MiB chunks the hashing adds {hashed_per_hour / hash_speed:.1f} s CPU"
        f" per hour (blake3 {hash_speed / 1e9:.2f} GB/s here; plus reading"
        f" {hashed_per_hour / 2**30:.1f} GiB from disk)"
    )


# --- 2. detection -----------------------------------------------------------------------


def spawn_dishonest(
    directory: Path, index: int, bootstrap: str, args: tuple[str, ...]
) -> NodeEntry:
    """A liar that keeps everything at first (its files are deleted later)."""
    return dishonest_node.spawn(directory / f"dishonest-{index}", "liar", 0.0, bootstrap, args)


def measure_detection(args: argparse.Namespace, work: Path) -> None:
    directory = work / "detect"
    interval = args.interval
    print(
        f"\n2. detection: {args.detect_nodes} honest nodes + {args.trials} that will drop"
        f" everything (liars), audits every {interval:g} s"
    )
    honest = start(directory, args.detect_nodes, extra_args=node_args(interval), payments=False)
    cheats: list[NodeEntry] = []
    try:
        for i in range(args.trials):
            cheats.append(spawn_dishonest(directory, i, honest[0].multiaddr, node_args(interval)))
        write_manifest(directory, honest + cheats)
        time.sleep(5)
        addresses = put_random_chunks(honest, args.detect_chunks, 16 * 1024)
        members = [bytes.fromhex(n.peer_id) for n in honest + cheats]
        # Stored, checked, the newcomers' grace over, and trust earned: a node that passed
        # audits for a while (up to protocol.trust.MAX_SCORE) then drops its data.
        time.sleep((2 + args.trust_periods) * interval)
        scores = [
            t["score"]
            for n in honest
            for p, t in audits(n).get("trust", {}).items()
            if p in {c.peer_id for c in cheats}
        ]
        print(
            f"   trust of the future droppers before they drop: median"
            f" {statistics.median(scores) if scores else 0:.1f} (max {max(scores, default=0):.1f})"
        )
        seconds: list[float] = []
        restored: list[float] = []
        for cheat in cheats:
            me = bytes.fromhex(cheat.peer_id)
            mine = [a for a in addresses if me in closest(a, members, CLOSE_GROUP_SIZE)]
            alive_honest = list(honest)
            by_id = {bytes.fromhex(n.peer_id): n for n in alive_honest}
            sharers = [
                by_id[p]
                for p in {p for a in mine for p in closest(a, members, CLOSE_GROUP_SIZE)}
                if p in by_id
            ]
            files = [p for p in (Path(cheat.root_dir) / CHUNKS_DIRNAME).glob("*/*") if p.is_file()]
            t0 = time.monotonic()
            for path in files:
                path.unlink()

            def shunning(cheat: NodeEntry = cheat, sharers: list[NodeEntry] = sharers) -> int:
                return sum(cheat.peer_id in audits(n).get("shunned", []) for n in sharers)

            def majority(sharers: list[NodeEntry] = sharers) -> bool:
                return shunning() * 2 > len(sharers)

            def all_shun(sharers: list[NodeEntry] = sharers) -> bool:
                return shunning() == len(sharers)

            # Holders: the honest nodes and the droppers that have not dropped yet (they
            # still keep real bytes and are members of close groups).
            keeping = honest + cheats[cheats.index(cheat) + 1 :]

            def five(mine: list[bytes] = mine, keeping: list[NodeEntry] = keeping) -> bool:
                return not mine or min(replica_counts(keeping, mine)) >= CLOSE_GROUP_SIZE

            most = wait_until(majority, timeout=20 * interval, every=0.5)
            back = wait_until(five, timeout=20 * interval, every=0.5)
            restored_at = time.monotonic() - t0
            took = wait_until(all_shun, timeout=max(1.0, 20 * interval - restored_at), every=0.5)
            if most is None or back is None:
                print(f"   {cheat.peer_id[:8]}: not shunned/restored within {20 * interval:g} s")
            else:
                seconds.append(most)
                restored.append(restored_at)
            everyone = "never" if took is None else f"{restored_at + took:.1f} s"
            print(
                f"   {cheat.peer_id[:8]} dropped {len(files)} chunks ({len(mine)} it was"
                f" responsible for, {len(sharers)} honest sharers): shunned by a majority of"
                f" them in {most or float('nan'):.1f} s ({(most or float('nan')) / interval:.2f}"
                f" periods), by all {everyone}; 5 honest replicas of its chunks after"
                f" {restored_at:.1f} s ({restored_at / interval:.2f} periods)"
            )
            for n in sharers:
                section = audits(n)
                trust = section.get("trust", {}).get(cheat.peer_id, {})
                if cheat.peer_id not in section.get("shunned", []):
                    print(f"     {n.peer_id[:8]} does not shun it: trust {trust} ({n.root_dir})")
        if seconds:
            print(
                f"   => median: shunned {statistics.median(seconds):.1f} s"
                f" ({statistics.median(seconds) / interval:.2f} periods), restored"
                f" {statistics.median(restored):.1f} s"
                f" ({statistics.median(restored) / interval:.2f} periods); goal: 2 periods"
            )
        wrong = {p for n in honest for p in audits(n).get("shunned", [])} - {
            c.peer_id for c in cheats
        }
        print(f"   honest nodes shunned meanwhile: {len(wrong)}")
    finally:
        stop(directory)


# --- 3. churn ---------------------------------------------------------------------------


def measure_churn(args: argparse.Namespace, work: Path) -> None:
    directory = work / "churn"
    extra = node_args(args.interval)
    print(
        f"\n3. churn: {args.churn_nodes} nodes auditing every {args.interval:g} s, kill -9 every"
        f" {args.kill_every:g} s (restart 2-8 s later), a newcomer every {args.join_every:g} s,"
        f" for {args.duration:g} s"
    )
    nodes = start(directory, args.churn_nodes, timeout=240, extra_args=extra, payments=False)
    rng = random.Random(12)
    try:
        addresses = put_random_chunks(nodes, args.churn_chunks, 16 * 1024)
        started = time.monotonic()
        next_kill = started + args.kill_every
        next_join = started + args.join_every
        kills = joins = 0
        while time.monotonic() - started < args.duration:
            now = time.monotonic()
            if now >= next_kill:
                next_kill += args.kill_every
                i = rng.randrange(1, len(nodes))
                victim = nodes[i]
                os.kill(victim.pid, 9)
                os.waitpid(victim.pid, 0)
                time.sleep(rng.uniform(2, 8))
                root = Path(victim.root_dir)
                nodes[i] = restart_node(root, nodes[0].multiaddr, extra)
                write_manifest(directory, nodes)
                kills += 1
            elif now >= next_join:
                next_join += args.join_every
                nodes += add_nodes(directory, 1, extra_args=extra)
                joins += 1
            else:
                time.sleep(0.5)
        time.sleep(2 * args.interval)
        ids = {n.peer_id for n in nodes}
        shunnings = {n.peer_id: set(audits(n).get("shunned", [])) & ids for n in nodes}
        false = sum(len(s) for s in shunnings.values())
        victims = set().union(*shunnings.values())
        totals: dict[str, int] = {}
        for n in nodes:
            section = audits(n)
            for key in ("sent", "passed", "incomplete", "failed", "peer_refused", "unanswered"):
                value = section.get(key, 0)
                totals[key] = totals.get(key, 0) + (value if isinstance(value, int) else 0)
        print(
            f"   {kills} kill -9 + restarts, {joins} newcomers; audits: "
            + ", ".join(f"{k} {v}" for k, v in totals.items())
        )
        print(
            f"   => false shunnings of honest nodes: {false} (of {len(victims)} distinct"
            " nodes); goal: none"
        )
        try:
            counts = replica_counts(nodes, addresses)
            print(
                f"   replicas per chunk after: min {min(counts)},"
                f" median {statistics.median(counts):.0f}"
            )
        except ControlError as exc:
            print(f"   replicas per chunk after: not counted ({exc})")
    finally:
        stop(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=1600)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--fast-interval", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--detect-nodes", type=int, default=10)
    parser.add_argument("--detect-chunks", type=int, default=300)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--trust-periods", type=float, default=6.0)
    parser.add_argument("--churn-nodes", type=int, default=25)
    parser.add_argument("--churn-chunks", type=int, default=500)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--join-every", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the testnets' dirs (logs)")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-detect", action="store_true")
    parser.add_argument("--skip-churn", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audits-") as tmp:
        work = Path(tempfile.mkdtemp(prefix="bench-audits-")) if args.keep else Path(tmp)
        print(f"testnets under {work}")
        if not args.skip_cost:
            measure_cost(args, work)
        if not args.skip_detect:
            measure_detection(args, work)
        if not args.skip_churn:
            measure_churn(args, work)


if __name__ == "__main__":
    main()
