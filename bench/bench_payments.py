"""What payments cost: a paid and a free local testnet of the same size, same workload.

The two testnets run at the same time and get the same workload in turn, step by step
(each step on one, then on the other, the order alternating), so a change in the
machine's load (other processes) falls on both alike. Each has one client (the paid
one with the testnet's funded wallet and a receipts dir, as ``put`` uses): 30 PUTs
each of fresh random 1 KiB and 1 MiB chunks, 30 PUTs of already paid 1 KiB chunks, a
batch of 64 distinct 1 KiB chunks, then the same three 64 MiB random files. Prints:

1. quote round trip p50/p95 (GetQuote to one close-group member over an open connection);
2. proof verification p50: in process (``check_proof`` of 5 real ML-DSA quotes plus the
   ``completedPayments`` eth_call to a real anvil, uncached; ``known_paid=True``
   from the ``ProofCache``, cached); and end to end, the PUT phase alone (the chunk
   already quoted and paid) of a paid chunk (every node checks a fresh proof on chain)
   vs a free one;
3. gas and tokens for a batch of 64 chunks paid in one transaction (64 distinct 1 KiB
   chunks through the client's batch path, ``Client._store_batch``: a 64 MiB file
   self-encrypts into only ~17 chunks), with and without the token approval;
4. upload throughput of a 64 MiB random file, paid vs free (median of 3 runs);
5. 1 KiB and 1 MiB ``put_chunk`` p50, paid vs free (quotes and payment included);
6. node RSS (VmRSS) after the workload, paid vs free.

Run: .venv/bin/python -m bench.bench_payments [--nodes 25] [--rounds 30] [--file-runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.client import Client, PutReport, _Placement
from bench._timing import percentiles
from cli.control import ControlError, request
from cli.testnet import NodeEntry, start, stop
from evm.local_chain import read_evm_json
from evm.rpc import RpcClient
from evm.vault import PaymentVaultReader
from evm.wallet import Wallet
from protocol.chunks import CLOSE_GROUP_SIZE, chunk_address
from protocol.identity import Identity
from protocol.payments import (
    BASE_PRICE,
    ProofCache,
    ProofContext,
    ProofVerdict,
    check_payment,
    check_proof,
    make_quote,
    payment_for,
    proof_key,
)
from protocol.self_encryption import EncryptedChunk
from protocol.wire import GetQuote, PaymentProof, QuoteReply

FILE_MIB = 64
BATCH_CHUNKS = 64
SETTLE_SECONDS = 10.0
"""Wait after the workload before reading RSS (replication finishes meanwhile)."""


@dataclass
class Batch:
    chunks: int = 0
    seconds: float = 0.0
    gas_total: int = 0
    """Every transaction of the batch: the approval and payForQuotes."""
    gas_pay: int = 0
    """payForQuotes alone."""
    transactions: int = 0
    paid: int = 0
    fee_wei: int = 0
    """Native balance spent on gas (approval included)."""


@dataclass
class NetFigures:
    paid: bool
    start_seconds: float = 0.0
    put_p50: dict[str, float] = field(default_factory=dict)
    put_p95: dict[str, float] = field(default_factory=dict)
    put_phase: tuple[float, float] = (0.0, 0.0)
    """PUT phase alone of a 1 KiB chunk (already quoted and paid): p50, p95 ms."""
    quote_rtt: tuple[float, float] | None = None
    batch: Batch = field(default_factory=Batch)
    file_mbps: list[float] = field(default_factory=list)
    file_reports: list[PutReport] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class ProofFigures:
    off_chain: list[float] = field(default_factory=list)
    eth_call: list[float] = field(default_factory=list)
    uncached: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    verdicts: set[str] = field(default_factory=set)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def timed(fn: Callable[[], object], samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        out.append(ms_since(started))
    return out


def put_random(client: Client, size: int) -> None:
    client.put_chunk(os.urandom(size))


def quote_round_trip(client: Client, samples: int) -> tuple[float, float]:
    """GetQuote to the closest member of one close group, over the connection opened by a
    first (untimed) request; every sample is a fresh signed quote."""
    address = os.urandom(32)
    member = client.closest_peers(address, CLOSE_GROUP_SIZE)[0]
    refused = 0

    def ask() -> None:
        nonlocal refused
        reply = client.transport.request(
            member.peer_id, GetQuote(address, 1024), 10.0, member.addrs
        ).get(timeout=15)
        refused += not isinstance(reply, QuoteReply)

    ask()
    latencies = timed(ask, samples)
    if refused:
        print(f"  warning: {refused} GetQuote answered with something else than a quote")
    return percentiles(latencies)


def paid_placements(client: Client, rounds: int) -> list[_Placement]:
    """1 KiB chunks with their close group found and (paid network) their quotes paid in
    one transaction: what is left to time is the PUT itself and the nodes' proof checks."""
    chunks = [os.urandom(1024) for _ in range(rounds)]
    placements = [
        _Placement(
            EncryptedChunk(chunk_address(c), c),
            client.closest_peers(chunk_address(c), CLOSE_GROUP_SIZE),
        )
        for c in chunks
    ]
    if client.wallet is not None:
        placements = client._pay(placements, PutReport(), False, False, 0)
    return placements


def batch_of_64(client: Client, rpc: RpcClient | None) -> Batch:
    """64 distinct 1 KiB chunks through the client's batch path: one payment transaction."""
    chunks = [os.urandom(1024) for _ in range(BATCH_CHUNKS)]
    report = PutReport()
    wallet = client.wallet
    balance_before = wallet.gas_balance() if wallet is not None else 0
    started = time.perf_counter()
    client._store_batch([EncryptedChunk(chunk_address(c), c) for c in chunks], report, None)
    batch = Batch(chunks=report.chunks, seconds=time.perf_counter() - started)
    if wallet is not None and rpc is not None:
        batch.fee_wei = balance_before - wallet.gas_balance()
        batch.gas_total = report.gas_used
        batch.transactions = len(report.transactions)
        batch.paid = report.paid
        for tx_hash in report.transactions:
            receipt = rpc.get_transaction_receipt(tx_hash)
            batch.gas_pay += receipt.gas_used if receipt is not None else 0
    return batch


def node_counters(nodes: list[NodeEntry]) -> dict[str, int]:
    """Payment counters summed over the nodes (their ``status``)."""
    totals: dict[str, int] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, int):
            totals[name] = totals.get(name, 0) + value

    for node in nodes:
        try:
            status: dict[str, Any] = request(Path(node.root_dir), "status", timeout=10)
        except ControlError:
            continue
        payments = status.get("payments", {})
        for name in ("quotes_given", "paid_chunks", "proof_cache_hits", "chain_calls"):
            add(name, payments.get(name))
        for verdict, count in payments.get("proof_verdicts", {}).items():
            add(f"chain verdict {verdict}", count)
        for verdict, count in payments.get("payment_rejections", {}).items():
            add(f"rejected {verdict}", count)
    return totals


@dataclass
class Net:
    """One running testnet, its client and its figures."""

    figures: NetFigures
    directory: Path
    nodes: list[NodeEntry]
    client: Client
    rpc: RpcClient | None

    @property
    def label(self) -> str:
        return "paid" if self.figures.paid else "free"


def start_network(paid: bool, nodes: int, tmp: Path, stack: contextlib.ExitStack) -> Net:
    label = "paid" if paid else "free"
    directory = tmp / label
    figures = NetFigures(paid)
    print(f"[{label}] starting {nodes} nodes ...", flush=True)
    started = time.monotonic()
    entries = start(directory, nodes, timeout=600, payments=paid)
    stack.callback(stop, directory)
    figures.start_seconds = time.monotonic() - started
    print(f"[{label}] testnet started in {figures.start_seconds:.1f} s", flush=True)
    wallet = rpc = None
    if paid:
        chain = read_evm_json(directory)
        rpc = RpcClient(str(chain["rpc_url"]))
        wallet = Wallet(
            rpc,
            str(chain["client_private_key"]),
            str(chain["token_address"]),
            str(chain["vault_address"]),
        )
    time.sleep(3)  # let the joins' refresh lookups settle
    client = Client(
        [n.multiaddr for n in entries[:8]],
        host="127.0.0.1",
        wallet=wallet,
        receipts_dir=directory / "client-receipts" if paid else None,
    )
    stack.callback(client.close)
    return Net(figures, directory, entries, client, rpc)


def in_turn(nets: list[Net], index: int) -> list[Net]:
    """Both networks, the first one first on even steps and last on odd ones (so that
    a drift in the machine's load falls on both alike)."""
    return nets if index % 2 == 0 else nets[::-1]


def run_workload(nets: list[Net], args: argparse.Namespace, files: list[Path]) -> None:
    """The same workload on every network, step by step in turn."""
    for net in nets:
        for _ in range(5):  # warm the connections (and the wallet's first approval)
            net.client.put_chunk(os.urandom(1024))
        if net.figures.paid:
            net.figures.quote_rtt = quote_round_trip(net.client, args.quotes)
    print("quote round trips done", flush=True)
    for size, name in ((1024, "1 KiB"), (1024 * 1024, "1 MiB")):
        samples: dict[str, list[float]] = {net.label: [] for net in nets}
        for index in range(args.rounds):
            for net in in_turn(nets, index):
                samples[net.label] += timed(partial(put_random, net.client, size), 1)
        for net in nets:
            net.figures.put_p50[name], net.figures.put_p95[name] = percentiles(samples[net.label])
    print("chunk PUTs done", flush=True)
    placements = {net.label: paid_placements(net.client, args.rounds) for net in nets}
    phases: dict[str, list[float]] = {net.label: [] for net in nets}
    for index in range(args.rounds):
        for net in in_turn(nets, index):
            placement = placements[net.label][index]
            phases[net.label] += timed(partial(net.client._put, placement), 1)
    for net in nets:
        net.figures.put_phase = percentiles(phases[net.label])
        net.figures.batch = batch_of_64(net.client, net.rpc)
    print("PUT phases and 64-chunk batches done", flush=True)
    size_mb = FILE_MIB * 1024 * 1024 / 1e6
    for index, source in enumerate(files):
        for net in in_turn(nets, index):
            started = time.monotonic()
            report = net.client.upload_file(source)
            seconds = time.monotonic() - started
            net.figures.file_mbps.append(size_mb / seconds)
            net.figures.file_reports.append(report)
            print(
                f"[{net.label}] {FILE_MIB} MiB file {index + 1}: {size_mb / seconds:.2f} MB/s"
                f" ({seconds:.1f} s, {report.chunks} chunks, gas {report.gas_used},"
                f" paid {report.paid})",
                flush=True,
            )
    time.sleep(SETTLE_SECONDS)
    for net in nets:
        net.figures.rss = [rss_mb(n.pid) for n in net.nodes]
        net.figures.counters = node_counters(net.nodes)


def proof_verification(samples: int, tmp: Path) -> ProofFigures:
    """``check_proof`` on 5 real ML-DSA quotes and a ``completedPayments`` eth_call, as a
    node does on a fresh proof; and the cached path. Against a fresh local anvil with the
    proof's claim paid, so the call reads a real payment."""
    from evm.local_chain import start_local_chain

    chain = start_local_chain(tmp / "chain")
    try:
        rpc = chain.rpc()
        wallet = Wallet(rpc, chain.client_private_key, chain.token_address, chain.vault_address)
        reader = PaymentVaultReader(
            RpcClient(chain.rpc_url), chain.vault_address, chain.token_address
        )
        identities = [Identity.generate() for _ in range(CLOSE_GROUP_SIZE)]
        address = os.urandom(32)
        quotes = [
            make_quote(identity, address, 1024, BASE_PRICE + i, time.time(), os.urandom(20))
            for i, identity in enumerate(identities)
        ]
        proof = PaymentProof(quotes)
        claim = payment_for(quotes)
        wallet.pay_for_quotes(
            [("0x" + claim.rewards_address.hex(), claim.amount, claim.quote_hash)]
        )
        context = ProofContext(
            identities[0].peer_id, [i.peer_id for i in identities[1:]], time.time()
        )
        cache = ProofCache()
        figures = ProofFigures()
        for _ in range(samples + 1):  # the first is a warm-up
            started = time.perf_counter()
            key = proof_key(proof)
            check = check_proof(address, proof, context, known_paid=cache.get(key) is not None)
            off_chain = ms_since(started)
            middle = time.perf_counter()
            verdict = check.verdict
            if check.claim is not None and verdict is ProofVerdict.CHECK_CHAIN:
                paid_to, amount = reader.completed_payment(check.claim.quote_hash)
                verdict = check_payment(
                    check.claim, bytes.fromhex(paid_to.removeprefix("0x")), amount
                )
            figures.off_chain.append(off_chain)
            figures.eth_call.append(ms_since(middle))
            figures.uncached.append(ms_since(started))
            figures.verdicts.add(verdict.value)
        cache.add(proof_key(proof), claim)
        for _ in range(samples + 1):
            started = time.perf_counter()
            key = proof_key(proof)
            check = check_proof(address, proof, context, known_paid=cache.get(key) is not None)
            figures.cached.append(ms_since(started))
            figures.verdicts.add(check.verdict.value)
        for series in (figures.off_chain, figures.eth_call, figures.uncached, figures.cached):
            del series[0]
        return figures
    finally:
        chain.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(free: NetFigures, paid: NetFigures, proofs: ProofFigures, nodes: int) -> None:
    print()
    print(
        f"==== payment figures: {nodes} nodes per testnet, both at once, same workload in turn ===="
    )
    if paid.quote_rtt is not None:
        p50, p95 = paid.quote_rtt
        print(
            f"1. quote round trip (GetQuote, open connection): p50 {p50:.2f} ms, p95 {p95:.2f} ms"
        )
    print(
        "2. proof verification p50, in process (5 ML-DSA-65 quotes, anvil eth_call):"
        f" uncached {median(proofs.uncached):.2f} ms"
        f" (off-chain checks {median(proofs.off_chain):.2f} ms"
        f" + completedPayments call {median(proofs.eth_call):.2f} ms),"
        f" cached {median(proofs.cached) * 1000:.1f} us"
        f"  [verdicts seen: {', '.join(sorted(proofs.verdicts))}]"
    )
    print(
        "   end to end, PUT phase alone of a paid-for 1 KiB chunk (quorum 3 of 5; each node"
        " checks a fresh proof on chain):"
        f" paid p50 {paid.put_phase[0]:.1f} ms vs free p50 {free.put_phase[0]:.1f} ms"
        f" ({paid.put_phase[0] - free.put_phase[0]:+.1f} ms);"
        " the cached path runs only for replicas between nodes"
        f" (node proof-cache hits: {paid.counters.get('proof_cache_hits', 0)},"
        f" chain calls: {paid.counters.get('chain_calls', 0)})"
    )
    batch = paid.batch
    if batch.chunks:
        approve = batch.gas_total - batch.gas_pay
        print(
            f"3. batch of {batch.chunks} chunks (64 distinct 1 KiB chunks via Client._store_batch),"
            f" {batch.transactions} payForQuotes tx + approval:"
            f" gas {batch.gas_total} with the approval ({approve} of it),"
            f" {batch.gas_pay} without; per chunk {batch.gas_total / batch.chunks:.0f}"
            f" with, {batch.gas_pay / batch.chunks:.0f} without;"
            f" tokens paid {batch.paid} units ({batch.paid / 1e18:.6f} ANT,"
            f" {batch.paid // batch.chunks} per chunk); gas fee {batch.fee_wei / 1e18:.6f} ETH;"
            f" batch stored in {batch.seconds:.2f} s (free: {free.batch.seconds:.2f} s)"
        )
        file_gas = [r.gas_used for r in paid.file_reports]
        file_paid = [r.paid for r in paid.file_reports]
        if file_gas:
            chunks = paid.file_reports[0].chunks
            print(
                f"   (a {FILE_MIB} MiB file is {chunks} chunks: gas {int(median([float(g) for g in file_gas]))},"
                f" tokens {int(median([float(p) for p in file_paid]))} units per upload, median)"
            )
    paid_mbps, free_mbps = median(paid.file_mbps), median(free.file_mbps)
    ratio = paid_mbps / free_mbps if free_mbps else 0.0
    print(
        f"4. {FILE_MIB} MiB file upload, median of {len(paid.file_mbps)}:"
        f" paid {paid_mbps:.2f} MB/s, free {free_mbps:.2f} MB/s, ratio {ratio:.2f} (goal >= 0.8);"
        f" vs the 20 MB/s goal: paid {paid_mbps / 20:.0%}, free {free_mbps / 20:.0%}"
        f"  [runs paid {', '.join(f'{v:.2f}' for v in paid.file_mbps)};"
        f" free {', '.join(f'{v:.2f}' for v in free.file_mbps)}]"
    )
    for name in ("1 KiB", "1 MiB"):
        p, f = paid.put_p50.get(name, 0.0), free.put_p50.get(name, 0.0)
        print(
            f"5. {name} put_chunk p50: paid {p:.1f} ms (p95 {paid.put_p95.get(name, 0.0):.1f}),"
            f" free {f:.1f} ms (p95 {free.put_p95.get(name, 0.0):.1f}), {p - f:+.1f} ms"
        )
    paid_rss, free_rss = median(paid.rss), median(free.rss)
    paid_mean = sum(paid.rss) / len(paid.rss) if paid.rss else 0.0
    free_mean = sum(free.rss) / len(free.rss) if free.rss else 0.0
    print(
        f"6. node RSS after the workload: paid mean {paid_mean:.1f} MB (max {max(paid.rss, default=0):.1f}),"
        f" free mean {free_mean:.1f} MB (max {max(free.rss, default=0):.1f}),"
        f" difference {paid_mean - free_mean:+.1f} MB (goal <= +5 MB);"
        f" medians {paid_rss:.1f} vs {free_rss:.1f} MB"
    )
    print(
        f"   testnet start: paid {paid.start_seconds:.1f} s (with anvil and the contracts),"
        f" free {free.start_seconds:.1f} s"
    )
    counters = ", ".join(f"{k} {v}" for k, v in sorted(paid.counters.items()))
    print(f"   paid nodes' counters: {counters}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=30, help="PUTs per chunk size")
    parser.add_argument("--quotes", type=int, default=100, help="quote round trips")
    parser.add_argument("--proofs", type=int, default=100, help="proof verifications")
    parser.add_argument("--file-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = []
        for index in range(args.file_runs):
            source = tmp / f"file-{index}.bin"
            with source.open("wb") as handle:
                for _ in range(FILE_MIB):
                    handle.write(os.urandom(1024 * 1024))
            files.append(source)
        proofs = proof_verification(args.proofs, tmp)
        print("in-process proof verification done", flush=True)
        with contextlib.ExitStack() as stack:
            nets = [start_network(paid, args.nodes, tmp, stack) for paid in (False, True)]
            run_workload(nets, args, files)
        report(nets[0].figures, nets[1].figures, proofs, args.nodes)


if __name__ == "__main__":
    main()
