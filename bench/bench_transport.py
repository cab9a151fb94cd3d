"""Transport figures on loopback, qh3 and aioquic side by side.

    .venv/bin/python -m bench.bench_transport [--quick]

Prints, per QUIC stack:
- connection setup including the identity handshake, p50/p95 (goal p50 <= 10 ms);
- Ping round trip on a warm connection, p50 (goal <= 1 ms);
- throughput of 4 MiB chunk messages over one connection (goal >= 60 MB/s);
- full handshakes per second with both ends on one core.

The measured node runs in this process, its peer in a child process on another core
(when the machine has two), so the two ends do not share a GIL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, and its tests/

from actors.transport import QuicStack
from bench._timing import percentiles
from protocol.wire import MAX_CHUNK_BYTES, Chunk, GetChunk, Ping, Pong, PutAck, PutChunk
from tests.actors.transport_nodes import ChunkStore, LiveNode, start_node

ROOT = Path(__file__).resolve().parents[1]
STACKS: tuple[QuicStack, ...] = ("qh3", "aioquic")


def pin(cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


# -- child: the peer ---------------------------------------------------------------------


def serve(stack: QuicStack) -> None:
    """Child mode: one node holding one 4 MiB chunk, until stdin closes."""
    pin(1)
    store = ChunkStore()
    content = os.urandom(MAX_CHUNK_BYTES)
    address = blake3(content).digest()
    store.chunks[address] = content
    node = start_node(stack=stack, dispatch=store)
    print("READY", node.handle.listen_addrs()[0], address.hex(), flush=True)
    sys.stdin.read()
    node.stop()


def handshake_rate(stack: QuicStack, seconds: float) -> None:
    """Child mode: full handshakes per second with both ends in this process, on one core."""
    pin(0)
    server = start_node(stack=stack)
    clients = [start_node(stack=stack) for _ in range(8)]
    addr = server.handle.listen_addrs()[0]
    stop_at = time.monotonic() + 0.5  # warm-up
    done = 0

    def run(client: LiveNode) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            client.handle.dial(addr).get(timeout=30)
            client.handle.disconnect(server.handle.peer_id)
            done += 1

    def round_of(duration: float) -> float:
        nonlocal stop_at, done
        done = 0
        before = server.handshake_stats().accepted
        started = time.monotonic()
        stop_at = started + duration
        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        return (server.handshake_stats().accepted - before) / elapsed

    round_of(0.5)
    rate = round_of(seconds)
    print(f"RATE {rate:.1f}", flush=True)
    for node in [server, *clients]:
        node.stop()


# -- parent: the measurements ------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_transport", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def measure(stack: QuicStack, quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    child = spawn("--serve", stack)
    assert child.stdout is not None and child.stdin is not None
    line = child.stdout.readline().split()
    assert line[:1] == ["READY"], line
    peer_addr, chunk_address = line[1], bytes.fromhex(line[2])
    pin(0)
    node = start_node(stack=stack)
    try:
        handle = node.handle
        peer_id = handle.dial(peer_addr).get(timeout=10)  # warm both ends up
        handle.disconnect(peer_id)
        time.sleep(0.05)

        setups: list[float] = []
        first_replies: list[float] = []
        for i in range(30 if quick else 150):
            started = time.perf_counter()
            handle.dial(peer_addr).get(timeout=10)
            setups.append(time.perf_counter() - started)
            reply = handle.request(peer_id, Ping(nonce=i)).get(timeout=10)
            assert isinstance(reply, Pong)
            first_replies.append(time.perf_counter() - started)
            handle.disconnect(peer_id)
            time.sleep(0.01)
        p50, p95 = percentiles(setups)
        figures["setup_p50_ms"], figures["setup_p95_ms"] = p50 * 1000, p95 * 1000
        figures["setup_first_reply_p50_ms"] = statistics.median(first_replies) * 1000

        handle.dial(peer_addr).get(timeout=10)
        for i in range(200):
            handle.request(peer_id, Ping(nonce=i)).get(timeout=10)
        rtts: list[float] = []
        for i in range(500 if quick else 3000):
            started = time.perf_counter()
            handle.request(peer_id, Ping(nonce=i)).get(timeout=10)
            rtts.append(time.perf_counter() - started)
        p50, p95 = percentiles(rtts)
        figures["ping_p50_ms"], figures["ping_p95_ms"] = p50 * 1000, p95 * 1000

        count = 5 if quick else 20
        handle.request(peer_id, GetChunk(chunk_address), timeout=30).get(timeout=30)
        for in_flight in (1, 4):
            started = time.perf_counter()
            pending = [
                handle.request(peer_id, GetChunk(chunk_address), timeout=60)
                for _ in range(in_flight)
            ]
            fetched = 0
            while pending:
                reply = pending.pop(0).get(timeout=60)
                assert isinstance(reply, Chunk) and len(reply.content) == MAX_CHUNK_BYTES
                fetched += 1
                if fetched + len(pending) < count:
                    pending.append(handle.request(peer_id, GetChunk(chunk_address), timeout=60))
            elapsed = time.perf_counter() - started
            figures[f"get_4mib_x{in_flight}_MBps"] = count * MAX_CHUNK_BYTES / elapsed / 1e6
        content = os.urandom(MAX_CHUNK_BYTES)
        put = PutChunk(blake3(content).digest(), content)
        handle.request(peer_id, put, timeout=30).get(timeout=30)
        started = time.perf_counter()
        for _ in range(count):
            assert isinstance(handle.request(peer_id, put, timeout=60).get(timeout=60), PutAck)
        figures["put_4mib_x1_MBps"] = (
            count * MAX_CHUNK_BYTES / (time.perf_counter() - started) / 1e6
        )
        (conn,) = handle.connections()
        figures["pq"] = float(conn.pq)
    finally:
        node.stop()
        child.stdin.close()
        child.wait(10)

    rate_child = spawn("--handshake-rate", stack, "--seconds", "2" if quick else "5")
    assert rate_child.stdout is not None
    output = rate_child.stdout.read().split()
    rate_child.wait(60)
    figures["handshakes_per_s_one_core"] = float(output[output.index("RATE") + 1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--handshake-rate", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.handshake_rate:
        handshake_rate(args.handshake_rate, args.seconds)
        return

    results = {stack: measure(stack, args.quick) for stack in STACKS}
    rows = [
        ("connection setup + identity handshake p50 (ms)", "setup_p50_ms", "goal <= 10"),
        ("connection setup + identity handshake p95 (ms)", "setup_p95_ms", ""),
        ("setup + first Ping reply p50 (ms)", "setup_first_reply_p50_ms", ""),
        ("Ping round trip, warm connection p50 (ms)", "ping_p50_ms", "goal <= 1"),
        ("Ping round trip, warm connection p95 (ms)", "ping_p95_ms", ""),
        ("GetChunk 4 MiB, 1 in flight (MB/s)", "get_4mib_x1_MBps", "goal >= 60"),
        ("GetChunk 4 MiB, 4 in flight (MB/s)", "get_4mib_x4_MBps", ""),
        ("PutChunk 4 MiB, 1 in flight (MB/s)", "put_4mib_x1_MBps", ""),
        ("full handshakes/s, both ends on one core", "handshakes_per_s_one_core", ""),
        ("post-quantum key exchange (1 = X25519MLKEM768)", "pq", ""),
    ]
    print(f"{'figure':52} {'qh3':>10} {'aioquic':>10}  goal")
    for label, key, goal in rows:
        values = "".join(f" {results[s][key]:>10.2f}" for s in STACKS)
        print(f"{label:52}{values}  {goal}")


if __name__ == "__main__":
    main()
