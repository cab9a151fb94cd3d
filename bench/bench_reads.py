"""Read latency: 1 KiB GET p50 in a 25-node testnet, against bmuller/kademlia in the same run.

Both networks are N real processes on loopback. For autonomi-actors the client is the
``Client`` API (QUIC, ML-DSA identities, the chunk verified against its address); it
joins through 8 nodes and learns the rest from its lookups, as ``put``/``get`` do. For
bmuller/kademlia (``kademlia`` on PyPI: asyncio, msgpack over plain UDP, no
authentication, no encryption) a writer stores the values and a reader (a
``kademlia.network.Server`` that stores nothing itself) joins through the same number
of nodes; its ``get`` is an iterative value lookup.

Prints for each: GET p50/p95 of 1 KiB values (warm: every key read once before), and
the client's lookup p50 (autonomi-actors: ``closest_peers`` of a random address).

Run: .venv/bin/python bench/bench_reads.py [--nodes 25] [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.client import Client
from bench._timing import percentiles
from cli.testnet import start, stop
from protocol.xor import random_address

KADEMLIA_NODE = """
import asyncio, sys
from kademlia.network import Server
async def main(port, bootstrap):
    server = Server()
    await server.listen(port, interface="127.0.0.1")
    if bootstrap:
        await server.bootstrap([("127.0.0.1", bootstrap)])
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def bench_ours(nodes: int, rounds: int, tmp: Path) -> None:
    directory = tmp / "testnet"
    started = time.monotonic()
    testnet = start(directory, nodes, timeout=600, payments=False)
    print(f"autonomi-actors: {nodes} nodes started in {time.monotonic() - started:.1f} s")
    try:
        time.sleep(3)
        with Client([n.multiaddr for n in testnet[:8]], host="127.0.0.1") as client:
            values = [os.urandom(1024) for _ in range(rounds)]
            addresses = [client.put_chunk(v) for v in values]
            for address in addresses:  # warm: connections and what the client knows
                client.get_chunk(address)
            gets = []
            for address, value in zip(addresses, values, strict=True):
                began = time.perf_counter()
                got = client.get_chunk(address)
                gets.append((time.perf_counter() - began) * 1000)
                if got != value:
                    raise SystemExit("autonomi-actors returned wrong bytes")
            lookups = []
            for _ in range(rounds):
                began = time.perf_counter()
                client.closest_peers(random_address(), 5)
                lookups.append((time.perf_counter() - began) * 1000)
        get_p50, get_p95 = percentiles(gets)
        look_p50, _ = percentiles(lookups)
        print(
            f"autonomi-actors: 1 KiB GET p50 {get_p50:.2f} ms (p95 {get_p95:.2f}),"
            f" client lookup p50 {look_p50:.2f} ms"
        )
    finally:
        stop(directory)


async def _kademlia_client(ports: list[int], rounds: int) -> tuple[list[float], int]:
    from kademlia.network import Server
    from kademlia.storage import ForgetfulStorage

    class KeepsNothing(ForgetfulStorage):  # type: ignore[misc]
        """The reader's storage: nodes push values to a newcomer; it must read remotely."""

        def __setitem__(self, key: bytes, value: object) -> None:
            pass

    writer, client = Server(), Server(storage=KeepsNothing())
    await writer.listen(ports[-1] + 1, interface="127.0.0.1")
    await client.listen(ports[-1] + 2, interface="127.0.0.1")
    try:
        await writer.bootstrap([("127.0.0.1", p) for p in ports[:8]])
        keys = [os.urandom(16).hex() for _ in range(rounds)]
        values = {k: os.urandom(512).hex() for k in keys}  # 1 KiB as text: msgpack-safe
        for key in keys:
            await writer.set(key, values[key])
        await client.bootstrap([("127.0.0.1", p) for p in ports[:8]])  # after: holds none
        wrong = 0
        for key in keys:
            await client.get(key)
        gets = []
        for key in keys:
            began = time.perf_counter()
            got = await client.get(key)
            gets.append((time.perf_counter() - began) * 1000)
            wrong += got != values[key]
        return gets, wrong
    finally:
        client.stop()
        writer.stop()


def bench_kademlia(nodes: int, rounds: int) -> None:
    base = 47000
    ports = [base + i for i in range(nodes)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, port in enumerate(ports):
            bootstrap = 0 if i == 0 else base
            proc = subprocess.Popen(
                [sys.executable, "-c", KADEMLIA_NODE, str(port), str(bootstrap)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            proc.stdout.readline()
        time.sleep(2)
        gets, wrong = asyncio.run(_kademlia_client(ports, rounds))
        p50, p95 = percentiles(gets)
        print(
            f"bmuller/kademlia: 1 KiB GET p50 {p50:.2f} ms (p95 {p95:.2f});"
            f" {wrong} of {rounds} reads wrong or missing"
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    try:
        import kademlia  # noqa: F401
    except ImportError:
        raise SystemExit("bench_reads needs bmuller/kademlia: make install (dev extra)") from None
    with tempfile.TemporaryDirectory() as tmp:
        bench_ours(args.nodes, args.rounds, Path(tmp))
    bench_kademlia(args.nodes, args.rounds)


if __name__ == "__main__":
    main()
