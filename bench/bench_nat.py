"""NAT traversal figures from the lab (network namespaces, nft NAT routers; needs root).

Prints: time to connect direct / punched / relayed (p50, p95), the share of punches
between homes a and b that succeed, and the throughput of chunk transfers through a
relay (a node behind the symmetric NAT s, read from behind a).

    .venv/bin/python -m bench.bench_nat [--attempts 50] [--relay-mib 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.nat.lab import NatLab, lab_available  # noqa: E402
from tests.nat.lab_network import LabNetwork, LabNode  # noqa: E402


def connect_times(
    node: LabNode, target: LabNode, attempts: int, steps: dict[str, list[float]] | None = None
) -> tuple[list[float], dict[str, int]]:
    """Fresh connections from ``node`` to ``target``: their times (ms) and how each was
    made; ``steps`` collects the time of each cascade step that connected."""
    times: list[float] = []
    kinds: dict[str, int] = {}
    for _ in range(attempts):
        result = node.connect(target.peer_id, fresh=True)
        how = str(result["how"]) if result["connected"] else "failed"
        kinds[how] = kinds.get(how, 0) + 1
        if result["connected"]:
            times.append(float(result["connect_ms"]))
            for attempt in result["attempts"]:
                if steps is not None and attempt["outcome"] == "connected":
                    steps.setdefault(attempt["step"], []).append(attempt["seconds"] * 1000.0)
        time.sleep(0.2)  # the far side's close of the old connection lands first
    return times, kinds


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def report(label: str, times: list[float], kinds: dict[str, int]) -> None:
    print(
        f"{label:<9} p50 {statistics.median(times) if times else float('nan'):8.1f} ms"
        f"  p95 {percentile(times, 0.95):8.1f} ms  outcomes {kinds}"
    )


RELAY_PROBE = r"""
import json, os, sys, time
from actors.client import Client
from protocol.wire import GetChunk, Chunk
entry, target, circuit, mib = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with Client([entry]) as client:
    addresses = [client.put_chunk(os.urandom(1024 * 1024)) for _ in range(4)]
    # the first request makes the connection (punch fails against a symmetric NAT: relay)
    first = client.transport.request(target, GetChunk(addresses[0]), 60, addrs=[circuit]).get(timeout=70)
    how = [c.how for c in client.transport.connections() if c.peer_id == target.hex()]
    started = time.monotonic()
    moved = 0
    futures = []
    for i in range(mib):
        futures.append(client.transport.request(target, GetChunk(addresses[i % 4]), 120))
        if len(futures) >= 4:
            reply = futures.pop(0).get(timeout=130)
            assert isinstance(reply, Chunk), reply
            moved += len(reply.content)
    for future in futures:
        reply = future.get(timeout=130)
        assert isinstance(reply, Chunk), reply
        moved += len(reply.content)
    elapsed = time.monotonic() - started
print(json.dumps({"bytes": moved, "seconds": elapsed, "how": how}))
"""


def relay_throughput(net: LabNetwork, mib: int) -> dict[str, object]:
    s = net.nodes["s"]
    circuit = s.status()["nat"]["announced_addrs"][0]
    host = net.lab.hosts["a"]
    completed = host.run(
        [
            sys.executable,
            "-c",
            RELAY_PROBE,
            net.nodes["pub1"].multiaddr,
            s.peer_id,
            circuit,
            str(mib),
        ],
        timeout=600,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stdout + completed.stderr)
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=50)
    parser.add_argument("--relay-mib", type=int, default=32)
    parser.add_argument(
        "--relay-rate", default=None, help="the nodes' --relay-rate (default: theirs, 8MiB)"
    )
    args = parser.parse_args()
    reason = lab_available()
    if reason is not None:
        print(f"NAT lab unavailable: {reason}")
        return 1
    with NatLab(tag="bench") as lab, tempfile.TemporaryDirectory() as tmp:
        extra = [] if args.relay_rate is None else ["--relay-rate", args.relay_rate]
        net = LabNetwork(lab, Path(tmp), extra)
        try:
            started = time.monotonic()
            net.start(timeout=120)
            print(f"lab network of 5 nodes settled in {time.monotonic() - started:.1f} s")
            a, b, s, pub2 = (net.nodes[n] for n in ("a", "b", "s", "pub2"))
            report("direct", *connect_times(a, pub2, min(args.attempts, 20)))
            times, kinds = connect_times(a, b, args.attempts)
            report("punched", times, kinds)
            print(
                f"punch success a<->b: {kinds.get('punched', 0)}/{args.attempts}"
                f" ({100.0 * kinds.get('punched', 0) / args.attempts:.0f} %)"
            )
            steps: dict[str, list[float]] = {}
            report("relayed", *connect_times(a, s, min(args.attempts, 10), steps))
            relay_steps = steps.get("relay", [])
            print(f"  of which the relay step itself: p50 {statistics.median(relay_steps):.1f} ms")
            limit = s.status()["nat"]["relaying"]["bytes_per_second"]
            relay = relay_throughput(net, args.relay_mib)
            rate = float(relay["bytes"]) / float(relay["seconds"]) / 1e6  # type: ignore[arg-type]
            print(
                f"relay throughput a->s GetChunk: {rate:.1f} MB/s over {relay['bytes']} bytes"
                f" (connection {relay['how']}, relay limit {int(limit) / 1e6:.1f} MB/s per client)"
            )
        finally:
            net.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
