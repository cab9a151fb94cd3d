"""A flood of half-open QUIC connections against one node, on loopback.

    .venv/bin/python -m bench.bench_half_open [--count 1000] [--hold 15] [--stack qh3]
                                              [--sources 1] [--node-root DIR]

Three processes: the measured node (a Transport and a Handshake actor serving one
1 KiB chunk from memory), a flooder and this one (an honest client). The flooder
opens ``--count`` QUIC connections from one address (127.0.0.1) that finish TLS but
never start the identity handshake, and keeps them ``--hold`` seconds (longer than
the node's 10 s handshake deadline) before it closes them. Prints:

- the node's RSS before, at its peak during the flood and after it, and the growth;
- how many flood connections finished TLS, and how many the node closed itself;
- honest 1 KiB GetChunk p50/p95 on a warm connection, before and during the flood;
- a fresh dial + Ping from another source address (127.0.0.2) during the flood;
- the node's half-open counters (when it has them).

``--sources N`` spreads the flood over N source addresses (127.0.1.1, 127.0.1.2, ...):
the node's total cap and its Retry come into play.

``--node-root DIR`` runs the node from another checkout (e.g. a worktree of an older
commit) while the flooder and the client come from this one: figures before and after
a change, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, and its tests/

from bench._timing import percentiles
from protocol.wire import Chunk, GetChunk, Ping, Pong
from tests.actors.quic_tools import RawConn
from tests.actors.transport_nodes import LiveNode, start_node

ROOT = Path(__file__).resolve().parents[1]
HONEST_HOST = "127.0.0.2"

# The node: run with ``python -c`` from the node root (so an older checkout, which
# has no copy of this file, works too). Commands on stdin: "stats", "quit".
NODE_SCRIPT = r"""
import json, os, sys
import msgspec
from blake3 import blake3
from tests.actors.transport_nodes import ChunkStore, start_node
store = ChunkStore()
content = os.urandom(1024)
address = blake3(content).digest()
store.chunks[address] = content
node = start_node(stack=sys.argv[1], dispatch=store)
print("READY", node.handle.listen_addrs()[0], address.hex(), flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        stats = msgspec.structs.asdict(node.handle.stats())
        stats["handshake_in_progress"] = node.handshake_stats().in_progress
        print("STATS", json.dumps(stats), flush=True)
    elif line.strip() == "quit":
        break
node.stop()
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- child: the flooder ------------------------------------------------------------------


def flood(target: str, count: int, hold: float, stack: str, sources: int) -> None:
    """Child mode: ``count`` connections that never start the identity handshake."""
    from tests.actors.quic_tools import RawEndpoint

    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    hosts = ["127.0.0.1"] if sources == 1 else [f"127.0.1.{1 + i}" for i in range(sources)]
    raws = [RawEndpoint(stack, host=h) for h in hosts]  # type: ignore[arg-type]
    print("FLOODING", flush=True)
    started = time.monotonic()
    batch = 50
    for i in range(0, count, batch):
        size = min(batch, count - i)
        for j in range(size):
            raws[(i + j) % len(raws)].open(addr)
        time.sleep(0.01)
    opened = time.monotonic() - started

    def tally(predicate: Callable[[RawConn], bool]) -> int:
        return sum(raw.count(predicate) for raw in raws)

    peak_tls = 0
    while time.monotonic() - started < hold:
        time.sleep(0.5)
        live = tally(lambda c: c.tls_done.is_set() and not c.closed.is_set())
        peak_tls = max(peak_tls, live)
    tls_done = tally(lambda c: c.tls_done.is_set())
    closed_by_node = tally(lambda c: c.tls_done.is_set() and c.closed.is_set())
    for raw in raws:
        raw.close()
    print(
        "FLOODED",
        json.dumps(
            {
                "opened": count,
                "open_seconds": round(opened, 2),
                "tls_done": tls_done,
                "peak_tls_open": peak_tls,
                "closed_by_node": closed_by_node,
            }
        ),
        flush=True,
    )


# -- parent: the measurements ------------------------------------------------------------


def get_latencies(
    node: LiveNode, peer_id: bytes, address: bytes, stop: threading.Event | int
) -> list[float]:
    samples: list[float] = []
    while (len(samples) < stop) if isinstance(stop, int) else not stop.is_set():
        started = time.perf_counter()
        reply = node.handle.request(peer_id, GetChunk(address), timeout=10).get(timeout=10)
        samples.append(time.perf_counter() - started)
        assert isinstance(reply, Chunk) and len(reply.content) == 1024
        time.sleep(0.002)
    return samples


def fresh_dials(peer_addr: str, count: int) -> tuple[list[float], int]:
    """Dial + Ping from another source address, ``count`` times; (times, failures)."""
    times: list[float] = []
    failures = 0
    client = start_node(host=HONEST_HOST)
    try:
        for i in range(count):
            started = time.perf_counter()
            try:
                peer_id = client.handle.dial(peer_addr).get(timeout=15)
                reply = client.handle.request(peer_id, Ping(nonce=i)).get(timeout=10)
                assert isinstance(reply, Pong)
                times.append(time.perf_counter() - started)
                client.handle.disconnect(peer_id)
            except Exception:
                failures += 1
            time.sleep(0.2)
    finally:
        client.stop()
    return times, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--stack", default="qh3", choices=("qh3", "aioquic"))
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--node-root", type=Path, default=ROOT)
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        flood(args.flood, args.count, args.hold, args.stack, args.sources)
        return

    node_root = args.node_root.resolve()
    server = subprocess.Popen(
        [sys.executable, "-c", NODE_SCRIPT, args.stack],
        cwd=node_root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(node_root)},
    )
    assert server.stdout is not None and server.stdin is not None
    line = server.stdout.readline().split()
    assert line[:1] == ["READY"], line
    peer_addr, address = line[1], bytes.fromhex(line[2])
    target = peer_addr.split("/")[2] + ":" + peer_addr.split("/")[4]

    def node_stats() -> dict[str, int]:
        assert server.stdout is not None and server.stdin is not None
        server.stdin.write("stats\n")
        server.stdin.flush()
        reply = server.stdout.readline().split(" ", 1)
        stats: dict[str, int] = json.loads(reply[1])
        return stats

    client = start_node(stack=args.stack)
    try:
        peer_id = client.handle.dial(peer_addr).get(timeout=10)
        get_latencies(client, peer_id, address, 300)  # warm up
        before = get_latencies(client, peer_id, address, 500)
        fresh_dials(peer_addr, 3)  # warm the fresh-dial path up
        time.sleep(1.0)
        rss_before = rss_mb(server.pid)

        flooder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bench_half_open",
                "--flood",
                target,
                "--count",
                str(args.count),
                "--hold",
                str(args.hold),
                "--stack",
                args.stack,
                "--sources",
                str(args.sources),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert flooder.stdout is not None
        assert flooder.stdout.readline().strip() == "FLOODING"
        stop = threading.Event()
        peak = [rss_before]
        peak_stats: dict[str, int] = {}

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        during: list[float] = []
        getter = threading.Thread(
            target=lambda: during.extend(get_latencies(client, peer_id, address, stop)),
            daemon=True,
        )
        getter.start()
        time.sleep(2.0)
        dial_times, dial_failures = fresh_dials(peer_addr, 5)
        peak_stats = node_stats()
        result = flooder.stdout.readline().split(" ", 1)
        flooder.wait(30)
        stop.set()
        getter.join(15)
        sampler.join(5)
        flood_figures = json.loads(result[1]) if result[0] == "FLOODED" else {}
        time.sleep(3.0)  # closed connections linger 2 s
        rss_after = rss_mb(server.pid)
        after_stats = node_stats()
    finally:
        client.stop()
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(15)

    b50, b95 = percentiles(before)
    d50, d95 = percentiles(during) if during else (float("nan"), float("nan"))
    where = "127.0.0.1" if args.sources == 1 else f"{args.sources} addresses 127.0.1.x"
    print(
        f"node: {node_root} ({args.stack}); flood: {args.count} half-open connections"
        f" from {where}, held {args.hold:.0f} s"
    )
    print(f"RSS before the flood          {rss_before:8.1f} MB")
    print(f"RSS at peak during the flood  {peak[0]:8.1f} MB")
    print(f"RSS after the flood (+3 s)    {rss_after:8.1f} MB")
    print(f"RSS growth at peak            {peak[0] - rss_before:+8.1f} MB")
    print(f"RSS growth after              {rss_after - rss_before:+8.1f} MB")
    print(
        f"flood connections: {flood_figures.get('tls_done', '?')} finished TLS "
        f"(at most {flood_figures.get('peak_tls_open', '?')} seen open at once), "
        f"{flood_figures.get('closed_by_node', '?')} seen closed by the node "
        "(the flooder sees a close after its draining period); "
        f"all {args.count} started in {flood_figures.get('open_seconds', '?')} s"
    )
    print(
        f"honest GET 1 KiB p50 before   {b50 * 1000:8.2f} ms (p95 {b95 * 1000:.2f}, n={len(before)})"
    )
    print(
        f"honest GET 1 KiB p50 during   {d50 * 1000:8.2f} ms (p95 {d95 * 1000:.2f}, n={len(during)})"
    )
    if dial_times:
        p50, _ = percentiles(dial_times)
        print(
            f"fresh dial + Ping from {HONEST_HOST} during the flood: p50 {p50 * 1000:.1f} ms, "
            f"{len(dial_times)} ok, {dial_failures} failed"
        )
    else:
        print(f"fresh dial + Ping from {HONEST_HOST} during the flood: {dial_failures} failed")
    keys = (
        "half_open",
        "half_open_peak",
        "half_open_refused",
        "retries_sent",
        "handshake_timeouts",
    )
    for label, stats in (("during", peak_stats), ("after", after_stats)):
        shown = {
            k: stats[k]
            for k in (*keys, "connections_accepted", "setup_timeouts", "handshake_in_progress")
            if k in stats
        }
        print(f"node counters {label}: {shown}")


if __name__ == "__main__":
    main()
