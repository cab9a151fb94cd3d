"""Payments against a real local chain (anvil) and real node processes.

One paid testnet of ten nodes serves the module (ten, not seven: with seven every node
is within the places a PUT is accepted from, so no node would be "far" from a chunk).
Every refused PUT is checked twice: the node's error, and that no node stored the chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.client import Client, ClientError, PutReport
from cli.control import request
from cli.testnet import NodeEntry, add_nodes, read_manifest, replica_counts, start, stop
from evm.local_chain import read_evm_json, stop_local_chain
from evm.rpc import RpcClient
from evm.vault import PaymentVaultReader
from evm.wallet import Wallet
from protocol.chunks import CLOSE_GROUP_SIZE, chunk_address
from protocol.errors import RemoteError
from protocol.identity import Identity, load_or_create
from protocol.lookup import Contact
from protocol.payments import PROOF_ERRORS, ProofVerdict, make_quote, payment_for
from protocol.self_encryption import StreamEncryptor
from protocol.wire import (
    Chunk,
    Error,
    ErrorCode,
    GetChunk,
    GetQuote,
    Message,
    PaymentProof,
    PutChunk,
    Quote,
    QuoteReply,
)
from protocol.xor import closest
from tests.system.conftest import NODE_ARGS

pytestmark = pytest.mark.system

CLI = [sys.executable, "-m", "cli"]
NODES = 10
POOR_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
"""anvil's development account #2: gas, but none of the testnet's tokens."""
ASK_TIMEOUT = 30.0


@dataclass
class PaidNet:
    """The shared paid testnet, its chain, and a paying client."""

    dir: Path
    nodes: list[NodeEntry]
    chain: dict[str, Any]
    rpc: RpcClient
    reader: PaymentVaultReader
    wallet: Wallet
    client: Client
    stored: list[bytes] = field(default_factory=list)
    """Chunks stored (paid) by the tests so far."""

    def new_wallet(self, key: str) -> Wallet:
        return Wallet(self.rpc, key, self.chain["token_address"], self.chain["vault_address"])

    def chain_earned(self) -> int:
        return sum(self.reader.earned(n.rewards_address) for n in self.nodes)

    def by_id(self, peer_id: bytes) -> NodeEntry:
        return next(n for n in self.nodes if bytes.fromhex(n.peer_id) == peer_id)

    def ranked(self, address: bytes) -> list[NodeEntry]:
        """Every node, closest to ``address`` first."""
        ids = [bytes.fromhex(n.peer_id) for n in self.nodes]
        return [self.by_id(p) for p in closest(address, ids, len(ids))]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaidNet]:
    directory = tmp_path_factory.mktemp("paidnet")
    nodes = start(directory, NODES, timeout=180, extra_args=NODE_ARGS, payments=True)
    try:
        # The closeness checks judge by each node's routing table: let every node know
        # every other before the tests ask them to judge.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            node_status(n).get("routing_table_size", 0) < NODES - 1 for n in nodes
        ):
            time.sleep(0.2)
        chain = read_evm_json(directory)
        rpc = RpcClient(chain["rpc_url"], timeout=10.0)
        wallet = Wallet(
            rpc, chain["client_private_key"], chain["token_address"], chain["vault_address"]
        )
        reader = PaymentVaultReader(rpc, chain["vault_address"], chain["token_address"])
        with Client([n.multiaddr for n in nodes[:8]], wallet=wallet) as client:
            yield PaidNet(directory, nodes, chain, rpc, reader, wallet, client)
    finally:
        stop(directory)


# -- helpers --------------------------------------------------------------------------


def ask(client: Client, contact: Contact | NodeEntry, message: Any) -> Message:
    """Send any wire message to a node; its reply (an ``Error`` too)."""
    addrs: tuple[str, ...]
    if isinstance(contact, NodeEntry):
        peer_id, addrs = bytes.fromhex(contact.peer_id), (contact.multiaddr,)
    else:
        peer_id, addrs = contact.peer_id, contact.addrs
    try:
        reply: Message = client.transport.request(peer_id, message, ASK_TIMEOUT, addrs).get(
            timeout=ASK_TIMEOUT + 5
        )
    except RemoteError as exc:  # the transport raises a wire Error: back to the message
        return Error(exc.code, exc.message)
    return reply


def ask_all(client: Client, contacts: Sequence[Contact | NodeEntry], message: Any) -> list[Message]:
    """Send one message to several nodes at once; their replies, in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(contacts))) as pool:
        return list(pool.map(lambda contact: ask(client, contact, message), contacts))


def quotes_for(client: Client, content: bytes) -> tuple[bytes, list[Contact], list[Quote]]:
    """A fresh chunk's address, close group, and the quotes its members give."""
    address = chunk_address(content)
    group = client.closest_peers(address, CLOSE_GROUP_SIZE)
    replies = ask_all(client, group, GetQuote(address, len(content)))
    quotes = [r.quote for r in replies if isinstance(r, QuoteReply)]
    assert len(quotes) == len(group) == CLOSE_GROUP_SIZE, replies
    return address, group, quotes


def pay(wallet: Wallet, quotes: Sequence[Quote], *, short_by: int = 0) -> int:
    claim = payment_for(quotes)
    amount = claim.amount - short_by
    wallet.pay_for_quotes([("0x" + claim.rewards_address.hex(), amount, claim.quote_hash)])
    return amount


def refused(
    net: PaidNet,
    targets: Sequence[Contact | NodeEntry],
    content: bytes,
    proof: PaymentProof | None,
    code: ErrorCode,
    text: str,
) -> None:
    """PUT ``content`` with ``proof`` to each target: every one refuses with ``code`` and a
    message containing ``text``, and no node of the testnet holds the chunk."""
    address = chunk_address(content)
    replies = ask_all(net.client, targets, PutChunk(address, content, proof))
    for reply in replies:
        assert isinstance(reply, Error), reply
        assert reply.code == code, reply
        assert text in reply.message, reply
    assert_not_stored(net.nodes, [address])


def assert_not_stored(nodes: Sequence[NodeEntry], addresses: Sequence[bytes]) -> None:
    assert replica_counts(nodes, addresses, timeout=30) == [0] * len(addresses)


def chunks_of(path: Path) -> list[bytes]:
    with path.open("rb") as source:
        return [c.address for c in StreamEncryptor(source).chunks()]


def node_status(node: NodeEntry) -> dict[str, Any]:
    status: dict[str, Any] = request(Path(node.root_dir), "status", timeout=30)
    return status


def stored_proof(net: PaidNet, address: bytes) -> PaymentProof:
    """The proof a holder keeps with a chunk."""
    for contact in net.client.closest_peers(address, CLOSE_GROUP_SIZE):
        reply = ask(net.client, contact, GetChunk(address, with_proof=True))
        if isinstance(reply, Chunk) and reply.proof is not None:
            return reply.proof
    raise AssertionError(f"no holder of {address.hex()[:16]} gave its proof")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def random_file(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


# -- a paid put ------------------------------------------------------------------------


def test_a_put_pays_three_times_the_median_and_a_second_put_pays_nothing(
    net: PaidNet, tmp_path: Path
) -> None:
    source = random_file(tmp_path, "paid.bin", 300_000)
    balance = net.wallet.token_balance()
    earned = net.chain_earned()

    report = net.client.upload_file(source)

    chunks = chunks_of(source)
    net.stored += chunks
    assert report.chunks == len(chunks) and report.already_stored == 0
    assert report.paid > 0 and report.transactions
    # What was paid: 3x the median quote of each chunk, to its node, under its hash.
    expected = 0
    for address in chunks:
        proof = stored_proof(net, address)
        claim = payment_for(proof.quotes)
        paid_to, amount = net.reader.completed_payment(claim.quote_hash)
        assert (paid_to, amount) == ("0x" + claim.rewards_address.hex(), claim.amount)
        prices = sorted(q.price for q in proof.quotes)
        assert claim.amount == 3 * prices[len(prices) // 2]
        expected += claim.amount
    assert report.paid == expected
    assert net.wallet.token_balance() == balance - report.paid
    assert net.chain_earned() == earned + report.paid

    out = tmp_path / "back.bin"
    net.client.get_file(report.address, out)
    assert out.read_bytes() == source.read_bytes()

    again = net.client.upload_file(source)
    assert (again.paid, again.already_stored, again.chunks) == (0, len(chunks), len(chunks))
    assert again.transactions == []
    assert net.wallet.token_balance() == balance - report.paid


def test_a_put_interrupted_after_paying_does_not_pay_twice(net: PaidNet, tmp_path: Path) -> None:
    from actors.client import _Placement

    source = random_file(tmp_path, "interrupted.bin", 200_000)
    receipts = tmp_path / "receipts"
    peers = [n.multiaddr for n in net.nodes[:8]]
    balance = net.wallet.token_balance()
    with Client(peers, wallet=net.wallet, receipts_dir=receipts) as first:
        # The first run quotes and pays for every chunk, then dies before uploading.
        with source.open("rb") as handle:
            encrypted = list(StreamEncryptor(handle).chunks())
        placements = [
            _Placement(c, first.closest_peers(c.address, CLOSE_GROUP_SIZE)) for c in encrypted
        ]
        paid = PutReport()
        first._pay(placements, paid, False, True, len(encrypted))
    assert paid.paid > 0
    assert net.wallet.token_balance() == balance - paid.paid
    assert_not_stored(net.nodes, [c.address for c in encrypted])
    assert len(list(receipts.rglob("*"))) >= len(encrypted)

    with Client(peers, wallet=net.wallet, receipts_dir=receipts) as second:
        report = second.upload_file(source)
    net.stored += [c.address for c in encrypted]
    assert report.paid == 0
    assert report.reused_proofs == len(encrypted) == report.chunks
    assert net.wallet.token_balance() == balance - paid.paid
    out = tmp_path / "back.bin"
    net.client.get_file(report.address, out)
    assert out.read_bytes() == source.read_bytes()


# -- refused PUTs -----------------------------------------------------------------------


def test_a_put_without_a_proof_is_refused(net: PaidNet) -> None:
    content = os.urandom(5000)
    group = net.client.closest_peers(chunk_address(content), CLOSE_GROUP_SIZE)
    refused(net, group, content, None, ErrorCode.PAYMENT_REQUIRED, "PaymentRequired")


def test_a_quote_changed_after_signing_is_refused_even_if_paid(net: PaidNet) -> None:
    content = os.urandom(5000)
    _, group, quotes = quotes_for(net.client, content)
    # Forged cheaper quotes, and the forged median paid on chain.
    forged = [msgspec.structs.replace(q, price=1) for q in quotes]
    assert pay(net.wallet, forged) == 3
    refused(
        net,
        group,
        content,
        PaymentProof(forged),
        ErrorCode.PAYMENT_INVALID,
        PROOF_ERRORS[ProofVerdict.BAD_SIGNATURE],
    )


def test_quotes_of_nodes_far_from_the_address_are_refused(net: PaidNet) -> None:
    content = os.urandom(5000)
    address = chunk_address(content)
    ranked = net.ranked(address)
    close, far = ranked[:CLOSE_GROUP_SIZE], ranked[-3:]
    replies = ask_all(net.client, close[:2], GetQuote(address, len(content)))
    real = [r.quote for r in replies if isinstance(r, QuoteReply)]
    assert len(real) == 2
    # A far node will not quote for the address: its quotes are made with its own key.
    top = max(q.price for q in real)
    crafted = [
        make_quote(
            load_or_create(Path(node.root_dir))[0],
            address,
            len(content),
            top + price_rank,
            time.time(),
            bytes.fromhex(node.rewards_address.removeprefix("0x")),
        )
        for node, price_rank in zip(far, (3, 2, 1), strict=True)
    ]
    # The median (the one paid) is the farthest node's.
    quotes = real + crafted
    assert payment_for(quotes).rewards_address.hex() == far[-1].rewards_address.removeprefix("0x")
    pay(net.wallet, quotes)
    refused(
        net,
        close,
        content,
        PaymentProof(quotes),
        ErrorCode.PAYMENT_INVALID,
        PROOF_ERRORS[ProofVerdict.NOT_CLOSE],
    )


def test_valid_quotes_never_paid_are_refused(net: PaidNet) -> None:
    content = os.urandom(5000)
    _, group, quotes = quotes_for(net.client, content)
    refused(net, group, content, PaymentProof(quotes), ErrorCode.PAYMENT_INVALID, "not paid")


def test_an_underpaid_quote_is_refused(net: PaidNet) -> None:
    content = os.urandom(5000)
    _, group, quotes = quotes_for(net.client, content)
    pay(net.wallet, quotes, short_by=1)
    refused(net, group, content, PaymentProof(quotes), ErrorCode.PAYMENT_INVALID, "less")


def test_a_paid_proof_is_refused_for_another_chunk(net: PaidNet) -> None:
    assert net.stored, "runs after a paid put"
    proof = stored_proof(net, net.stored[0])
    content = os.urandom(5000)
    group = net.client.closest_peers(chunk_address(content), CLOSE_GROUP_SIZE)
    refused(
        net,
        group,
        content,
        proof,
        ErrorCode.PAYMENT_INVALID,
        PROOF_ERRORS[ProofVerdict.WRONG_ADDRESS],
    )


def test_a_nodes_own_quote_older_than_an_hour_is_refused(net: PaidNet) -> None:
    content = os.urandom(5000)
    address = chunk_address(content)
    group = net.client.closest_peers(address, CLOSE_GROUP_SIZE)
    target, others = group[0], group[1:]
    replies = ask_all(net.client, others, GetQuote(address, len(content)))
    quotes = [r.quote for r in replies if isinstance(r, QuoteReply)]
    node = net.by_id(target.peer_id)
    identity: Identity = load_or_create(Path(node.root_dir))[0]
    assert identity.peer_id == target.peer_id
    old = make_quote(
        identity,
        address,
        len(content),
        quotes[0].price,
        time.time() - 4000,
        bytes.fromhex(node.rewards_address.removeprefix("0x")),
    )
    quotes.append(old)
    pay(net.wallet, quotes)  # paid in full: only the age is wrong
    refused(net, [target], content, PaymentProof(quotes), ErrorCode.PAYMENT_INVALID, "expired")


def test_a_client_without_tokens_pays_and_uploads_nothing(net: PaidNet, tmp_path: Path) -> None:
    poor = net.new_wallet(POOR_KEY)
    assert poor.token_balance() == 0 and poor.gas_balance() > 0
    nonce = net.rpc.get_transaction_count(poor.address, "latest")
    source = random_file(tmp_path, "unaffordable.bin", 100_000)
    with (
        Client([n.multiaddr for n in net.nodes[:8]], wallet=poor) as client,
        pytest.raises(ClientError, match="not enough tokens"),
    ):
        client.upload_file(source)
    assert net.rpc.get_transaction_count(poor.address, "latest") == nonce
    assert poor.token_balance() == 0
    assert_not_stored(net.nodes, chunks_of(source))


# -- the command line -----------------------------------------------------------------


def test_cli_estimate_put_and_balance(net: PaidNet, tmp_path: Path) -> None:
    source = random_file(tmp_path, "cli.bin", 150_000)
    testnet = str(net.dir)
    balance = net.wallet.token_balance()

    estimate = json.loads(
        run_cli("put", str(source), "--testnet", testnet, "--json", "--estimate").stdout
    )
    assert isinstance(estimate["paid"], int) and estimate["paid"] > 0
    assert net.wallet.token_balance() == balance
    assert_not_stored(net.nodes, chunks_of(source))

    put = json.loads(run_cli("put", str(source), "--testnet", testnet, "--json").stdout)
    net.stored += chunks_of(source)
    with source.open("rb") as handle:
        encryptor = StreamEncryptor(handle)
        list(encryptor.chunks())
    assert put["address"] == encryptor.data_address.hex()
    assert put["chunks"] == len(chunks_of(source)) and put["already_stored"] == 0
    assert isinstance(put["paid"], int) and put["paid"] > 0
    assert net.wallet.token_balance() == balance - put["paid"]
    # The estimate was the price of the same quotes' medians (nodes barely filled since).
    assert abs(put["paid"] - estimate["paid"]) <= estimate["paid"] // 100

    shown = run_cli("wallet", "balance", net.wallet.address, "--testnet", testnet).stdout
    assert str(balance - put["paid"]) in shown


def test_a_testnet_without_payments_stores_for_free(tmp_path: Path) -> None:
    directory = tmp_path / "free"
    run_cli(
        "testnet", "start", "--nodes", "3", "--dir", str(directory), "--no-payments", timeout=120
    )
    try:
        assert not (directory / "evm.json").exists()
        assert all(n.rewards_address == "" for n in read_manifest(directory))
        source = random_file(tmp_path, "free.bin", 50_000)
        put = json.loads(run_cli("put", str(source), "--testnet", str(directory), "--json").stdout)
        assert put["paid"] == 0 and put["chunks"] == len(chunks_of(source))
    finally:
        run_cli("testnet", "stop", "--dir", str(directory))


# -- what nodes earned, and replicas with their proofs ---------------------------------


def test_nodes_report_what_the_chain_paid_them(net: PaidNet) -> None:
    on_chain = net.chain_earned()
    assert on_chain > 0
    deadline = time.monotonic() + 40
    reported = -1
    while time.monotonic() < deadline:
        reported = sum(node_status(n)["payments"]["earned"] for n in net.nodes)
        if reported == on_chain:
            break
        time.sleep(1)
    assert reported == on_chain


def test_replicas_travel_with_their_proofs(net: PaidNet) -> None:
    assert net.stored, "runs after paid puts"
    added = add_nodes(net.dir, 3, extra_args=NODE_ARGS)
    nodes = [*net.nodes, *added]
    ids = [bytes.fromhex(n.peer_id) for n in nodes]
    new_ids = {bytes.fromhex(n.peer_id): n for n in added}
    expected: dict[str, set[bytes]] = {n.peer_id: set() for n in added}
    for address in net.stored:
        for peer in closest(address, ids, CLOSE_GROUP_SIZE):
            if peer in new_ids:
                expected[new_ids[peer].peer_id].add(address)
    assert any(expected.values()), "no newcomer is in any stored chunk's close group"

    deadline = time.monotonic() + 60
    missing: dict[str, int] = {}
    counts: list[int] = []
    while time.monotonic() < deadline:
        missing = {}
        for node in added:
            want = sorted(expected[node.peer_id])
            if want:
                held = request(
                    Path(node.root_dir), "holds", timeout=30, addresses=[a.hex() for a in want]
                )
                missing[node.peer_id[:12]] = held.count(False)
        counts = replica_counts(nodes, net.stored, timeout=30)
        if not any(missing.values()) and min(counts) >= CLOSE_GROUP_SIZE:
            break
        time.sleep(1)
    assert not any(missing.values()), f"chunks the newcomers lack: {missing}"
    assert min(counts) >= CLOSE_GROUP_SIZE, counts
    for node in added:
        payments = node_status(node)["payments"]
        # Everything a newcomer holds came as a replica, stored only with its proof.
        assert payments["paid_chunks"] >= len(expected[node.peer_id])
        assert payments["payment_rejections"] == {}


# -- the chain down or slow -------------------------------------------------------------


@pytest.fixture
def small_paid_net(tmp_path: Path) -> Iterator[tuple[Path, list[NodeEntry]]]:
    directory = tmp_path / "smallnet"
    nodes = start(directory, 4, timeout=120, extra_args=NODE_ARGS, payments=True)
    try:
        yield directory, nodes
    finally:
        with contextlib.suppress(ProcessLookupError, OSError):
            pid = read_evm_json(directory)["anvil_pid"]
            os.kill(pid, signal.SIGCONT)
        stop(directory)


def test_a_put_fails_in_bounded_time_while_the_chain_is_slow_or_down(
    small_paid_net: tuple[Path, list[NodeEntry]],
) -> None:
    directory, nodes = small_paid_net
    chain = read_evm_json(directory)
    wallet = Wallet(
        RpcClient(chain["rpc_url"]),
        chain["client_private_key"],
        chain["token_address"],
        chain["vault_address"],
    )
    with Client([n.multiaddr for n in nodes], wallet=wallet) as client:
        before = os.urandom(5000)
        address = client.put_chunk(before)
        assert client.get_chunk(address) == before

        def valid_looking_put() -> tuple[bytes, list[Message], float]:
            content = os.urandom(5000)
            address = chunk_address(content)
            group = client.closest_peers(address, CLOSE_GROUP_SIZE)
            replies = ask_all(client, group, GetQuote(address, len(content)))
            proof = PaymentProof([r.quote for r in replies if isinstance(r, QuoteReply)])
            assert len(proof.quotes) == len(nodes)
            started = time.monotonic()
            answers = ask_all(client, group[:1], PutChunk(address, content, proof))
            return address, answers, time.monotonic() - started

        # Slow: anvil frozen, so connections are accepted and never answered.
        os.kill(chain["anvil_pid"], signal.SIGSTOP)
        try:
            result: list[tuple[bytes, list[Message], float]] = []
            putter = threading.Thread(target=lambda: result.append(valid_looking_put()))
            putter.start()
            time.sleep(1)
            got_at = time.monotonic()
            assert client.get_chunk(address) == before  # GETs are served meanwhile
            assert time.monotonic() - got_at < 5
            putter.join(60)
            ((slow_address, answers, took),) = result
        finally:
            os.kill(chain["anvil_pid"], signal.SIGCONT)
        assert [(a.code if isinstance(a, Error) else a) for a in answers] == [
            ErrorCode.CHAIN_UNAVAILABLE
        ]
        assert took < 20  # the node's chain timeout (10 s) and some slack

        # Down: anvil stopped, the connections refused.
        assert stop_local_chain(directory)
        down_address, answers, took = valid_looking_put()
        assert isinstance(answers[0], Error) and answers[0].code == ErrorCode.CHAIN_UNAVAILABLE
        assert "chain" in answers[0].message
        assert took < 15
        assert client.get_chunk(address) == before
        assert_not_stored(nodes, [slow_address, down_address])
        errors = [request(Path(n.root_dir), "status")["payments"]["chain_errors"] for n in nodes]
        assert sum(errors) >= 2
