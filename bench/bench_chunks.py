"""Figures for chunks and files in a local testnet of real node processes.

Prints: PUT (with its 5 replicas) and GET p50 of 1 KiB and 1 MiB chunks; put and get
throughput of a large file; time to restore 5 replicas after killing 20 % of the nodes.

Run: .venv/bin/python bench/bench_chunks.py [--nodes 25] [--file-mib 256]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.client import Client
from bench._timing import percentiles
from cli.testnet import replica_counts, start, stop
from protocol.self_encryption import StreamEncryptor

NODE_ARGS = ("--liveness-interval", "1", "--repair-interval", "5", "--refresh-interval", "10")


def chunk_latencies(client: Client, size: int, rounds: int) -> tuple[float, float]:
    puts, gets = [], []
    for _ in range(rounds):
        data = os.urandom(size)
        started = time.perf_counter()
        address = client.put_chunk(data)
        puts.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert client.get_chunk(address) == data
        gets.append((time.perf_counter() - started) * 1000)
    return percentiles(puts)[0], percentiles(gets)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "testnet"
        nodes = start(directory, args.nodes, timeout=600, extra_args=NODE_ARGS, payments=False)
        try:
            time.sleep(3)
            with Client([n.multiaddr for n in nodes[:8]], host="127.0.0.1") as client:
                chunk_latencies(client, 1024, 5)  # warm the connections
                for size, label in ((1024, "1 KiB"), (1024 * 1024, "1 MiB")):
                    put_p50, get_p50 = chunk_latencies(client, size, args.rounds)
                    print(
                        f"{label} chunk: PUT with 5 replicas p50 {put_p50:.1f} ms, GET p50 {get_p50:.1f} ms"
                    )
                source = Path(tmp) / "big.bin"
                with source.open("wb") as handle:
                    for _ in range(args.file_mib):
                        handle.write(os.urandom(1024 * 1024))
                size_mb = args.file_mib * 1024 * 1024 / 1e6
                started = time.monotonic()
                address = client.put_file(source)
                put_s = time.monotonic() - started
                started = time.monotonic()
                client.get_file(address, Path(tmp) / "back.bin")
                get_s = time.monotonic() - started
                print(
                    f"{args.file_mib} MiB file: put {size_mb / put_s:.1f} MB/s ({put_s:.1f} s), get {size_mb / get_s:.1f} MB/s ({get_s:.1f} s)"
                )
            with source.open("rb") as handle:
                encryptor = StreamEncryptor(handle)
                chunks = [c.address for c in encryptor.chunks()]
            time.sleep(6)
            victims = nodes[1 : 1 + args.nodes // 5]
            for node in victims:
                os.kill(node.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            alive = [n for n in nodes if n not in victims]
            while min(replica_counts(alive, chunks)) < 5:
                time.sleep(0.5)
            print(
                f"full replication ({len(chunks)} chunks x 5) restored {time.monotonic() - killed_at:.1f} s after killing {len(victims)} of {args.nodes} nodes"
            )
        finally:
            stop(directory)


if __name__ == "__main__":
    main()
