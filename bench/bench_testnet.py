"""Figures of a local testnet of real node processes.

Prints: time for ``testnet start``; lookup latency p50/p95 (one lookup at a time,
timed inside the node) and the CPU all nodes spend per lookup; memory (RSS, and PSS, which counts shared pages as a share)
and idle CPU per node process.

Run: .venv/bin/python bench/bench_testnet.py [--nodes 25] [--lookups 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, percentiles
from cli.control import request
from cli.testnet import start, stop


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: pages shared with other processes (libraries, and what the
    testnet launcher imported before forking the node) count as a share only."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.monotonic()
        nodes = start(directory, args.nodes, timeout=600, payments=False)
        print(f"testnet start of {args.nodes} nodes: {time.monotonic() - started:.1f} s")
        try:
            time.sleep(5)  # let the joins' refresh lookups settle
            latencies = []
            cpu_before = sum(cpu_seconds(n.pid) for n in nodes)
            requester_cpu = 0.0
            for _ in range(args.lookups):
                node = random.choice(nodes)
                own_before = cpu_seconds(node.pid)
                result = request(Path(node.root_dir), "lookup", targets=[os.urandom(32).hex()])
                requester_cpu += cpu_seconds(node.pid) - own_before
                latencies.append(result[0]["seconds"] * 1000)
            p50, p95 = percentiles(latencies)
            cpu_per_lookup = (sum(cpu_seconds(n.pid) for n in nodes) - cpu_before) / args.lookups
            per_requester = requester_cpu / args.lookups
            print(f"lookup latency over {args.lookups} lookups: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
            # The latency is CPU-bound (every node on this machine's cores): this figure
            # tells a slower machine (or a busy neighbour) from slower code.
            print(
                f"CPU per lookup, all nodes together: {cpu_per_lookup * 1000:.1f} ms; the"
                f" requesting node {per_requester * 1000:.1f} ms (with its control request),"
                f" each other node {(cpu_per_lookup - per_requester) / (len(nodes) - 1) * 1000:.2f} ms"
            )
            time.sleep(5)
            before = {n.pid: cpu_seconds(n.pid) for n in nodes}
            time.sleep(args.idle_seconds)
            cpu = [(cpu_seconds(n.pid) - before[n.pid]) / args.idle_seconds * 100 for n in nodes]
            rss = [rss_mb(n.pid) for n in nodes]
            pss = [pss_mb(n.pid) for n in nodes]
            print(
                f"RSS per node: mean {sum(rss) / len(rss):.1f} MB, median"
                f" {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB"
            )
            print(
                f"PSS per node: mean {sum(pss) / len(pss):.1f} MB, total of"
                f" {len(pss)} nodes {sum(pss):.0f} MB"
            )
            print(
                f"idle CPU per node over {args.idle_seconds:.0f} s: mean {sum(cpu) / len(cpu):.2f} %, max {max(cpu):.2f} % of a core"
            )
        finally:
            stop(directory)


if __name__ == "__main__":
    main()
