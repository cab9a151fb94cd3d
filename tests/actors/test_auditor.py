"""Storage audits between real in-process nodes over loopback QUIC: honest nodes pass,
the answering side refuses floods, replays and junk, a lost chunk is answered missing
and fetched again, and a shunned peer leaves the routing table, for good (persisted)."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.auditor import Auditor
from actors.futures import NotifyingFuture
from actors.messages import (
    ExpectProofs,
    HeldChunks,
    OfferChunks,
    PeerMisbehaved,
    RoutingChanged,
    RoutingSnapshot,
    StatusQuery,
    StoreChunk,
    Tick,
)
from actors.node import Node, NodeConfig
from persistence.chunk_files import ChunkFiles
from protocol.audit import MISSING, Refusal, storage_proof
from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN, chunk_address, is_responsible
from protocol.errors import RemoteError
from protocol.trust import TrustEvent
from protocol.wire import (
    Error,
    ErrorCode,
    FindNode,
    Message,
    Nodes,
    PutAck,
    StorageAnswers,
    StorageChallenge,
)
from protocol.xor import closest

NODES = 9
CHUNKS = 4
PLACES = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN


def _config(root: Path, peers: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig(
        root_dir=root,
        local=True,
        first=not peers,
        peers=peers,
        control_socket=False,
        tick_interval=0.1,
        repair_interval=1.0,
        audit_interval=1.0,
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def _id(node: Node) -> bytes:
    assert node.identity is not None
    return node.identity.peer_id


def _request(sender: Node, receiver: Node, message: Message, timeout: float = 10.0) -> Message:
    assert sender.transport is not None and receiver.transport is not None
    future = sender.transport.request(
        _id(receiver), message, timeout, addrs=receiver.transport.listen_addrs()
    )
    return _reply_of(future, timeout + 5)


def _reply_of(future: Any, timeout: float = 30.0) -> Message:
    """The reply, or the wire ``Error`` the Transport raised as ``RemoteError``."""
    try:
        reply: Message = future.get(timeout=timeout)
    except RemoteError as exc:
        return Error(exc.code, exc.message)
    return reply


def _audits(node: Node) -> dict[str, Any]:
    audits: dict[str, Any] = node.status()["audits"]
    return audits


def _routing_ids(node: Node) -> set[bytes]:
    snapshot: list[tuple[bytes, Any]] = node.refs["BucketManager"].ask(
        RoutingSnapshot(), block=True, timeout=5
    )
    return {peer for peer, _ in snapshot}


class Net:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes: list[Node] = []
        self.contents: dict[bytes, bytes] = {}
        self.holders: dict[bytes, list[Node]] = {}

    @property
    def bootstrap(self) -> tuple[str, ...]:
        transport = self.nodes[0].transport
        assert transport is not None
        return (transport.listen_addrs()[0],)

    def start(self, count: int) -> None:
        first = Node(_config(self.base / "n0"))
        first.start()
        self.nodes.append(first)
        for i in range(1, count):
            node = Node(_config(self.base / f"n{i}", self.bootstrap))
            node.start()
            self.nodes.append(node)
        _wait(
            lambda: all(n.status()["routing_table_size"] == count - 1 for n in self.nodes),
            30.0,
            "every routing table holds every other node",
        )

    def store(self, count: int) -> None:
        """Chunks stored on the close group of each (as a client's PUTs would)."""
        by_id = {_id(n): n for n in self.nodes}
        for _ in range(count):
            content = os.urandom(3000)
            address = chunk_address(content)
            group = [by_id[p] for p in closest(address, list(by_id), CLOSE_GROUP_SIZE)]
            for node in group:
                answer: NotifyingFuture[Message] = NotifyingFuture()
                node.refs["ChunkKeeper"].tell(StoreChunk(address, content, reply=answer.set))
                assert answer.get(timeout=5) == PutAck(address)
            self.contents[address] = content
            self.holders[address] = group

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """One network for the tests that leave it honest (the shunning test has its own)."""
    network = Net(tmp_path_factory.mktemp("audits"))
    try:
        network.start(NODES)
        network.store(CHUNKS)
        yield network
    finally:
        network.stop()


def test_honest_nodes_audit_each_other_and_pass(net: Net) -> None:
    def passed() -> int:
        return sum(_audits(n)["passed"] for n in net.nodes)

    # the first audits wait for the newcomers' grace (two intervals)
    _wait(lambda: passed() >= 2 * NODES, 60.0, "audits passed")
    for node in net.nodes:
        audits = _audits(node)
        assert audits["enabled"] is True
        assert audits["failed"] == 0 and audits["peer_refused"] == 0, audits
        assert audits["refused"] == {r.value: 0 for r in Refusal}, "the ChunkKeeper's refusals"
        assert audits["shunned"] == []
        assert all(t["score"] >= 0 and t["failed"] == 0 for t in audits["trust"].values())
    answered = sum(_audits(n)["answered"] for n in net.nodes)
    assert answered >= passed() // 2
    assert all(len(_routing_ids(n)) == NODES - 1 for n in net.nodes), "nobody shunned"


def _held_by(net: Net, node: Node) -> list[bytes]:
    return [a for a, group in net.holders.items() if node in group]


def test_a_flood_of_challenges_from_one_peer_is_refused_busy(net: Net) -> None:
    # The flood comes from the last node, which no other test challenges from; the
    # target holds a chunk (with 4 chunks, some node may be in no close group).
    flooder, other = net.nodes[-1], net.nodes[-2]
    target = next(n for n in net.nodes[:-2] if _held_by(net, n))
    held = _held_by(net, target)
    assert target.transport is not None and flooder.transport is not None
    addrs = target.transport.listen_addrs()
    replies: list[Message] = []
    # Each challenge costs at least 1 MiB of the 272 MiB per-peer burst (4 MiB/s refill).
    for _ in range(8):
        futures = [
            flooder.transport.request(
                _id(target), StorageChallenge(secrets.token_bytes(32), held[:1]), 20.0, addrs=addrs
            )
            for _ in range(50)
        ]
        replies += [_reply_of(f) for f in futures]
    answers = [r for r in replies if isinstance(r, StorageAnswers)]
    busy = [r for r in replies if isinstance(r, Error) and r.code is ErrorCode.BUSY]
    assert len(answers) + len(busy) == len(replies), {type(r).__name__ for r in replies}
    assert answers and busy
    assert replies.index(busy[0]) >= 250, "the burst is answered first"
    # another peer is still answered
    reply = _request(other, target, StorageChallenge(secrets.token_bytes(32), held[:1]))
    assert isinstance(reply, StorageAnswers)
    assert _audits(target)["refused"]["busy"] >= len(busy)


def test_a_replayed_nonce_duplicates_and_foreign_addresses_are_refused(net: Net) -> None:
    # a target holding a chunk, challenged by nodes the flood test did not use
    target = next(n for n in net.nodes[:-2] if _held_by(net, n))
    challenger, bystander = [n for n in net.nodes[:-2] if n is not target][:2]
    address = _held_by(net, target)[0]
    nonce = secrets.token_bytes(32)
    first = _request(challenger, target, StorageChallenge(nonce, [address]))
    assert isinstance(first, StorageAnswers)
    content = net.contents[address]
    assert first.answers == [storage_proof(nonce, _id(target), address, content)]

    again = _request(challenger, target, StorageChallenge(nonce, [address]))
    assert isinstance(again, Error) and again.code is ErrorCode.REPLAYED
    stranger = _request(bystander, target, StorageChallenge(nonce, [address]))
    assert isinstance(stranger, Error) and stranger.code is ErrorCode.REPLAYED

    twice = _request(challenger, target, StorageChallenge(secrets.token_bytes(32), [address] * 2))
    assert isinstance(twice, Error) and twice.code is ErrorCode.MALFORMED

    known = [_id(n) for n in net.nodes if n is not target]
    foreign = next(
        a
        for a in iter(lambda: os.urandom(32), None)
        if not is_responsible(_id(target), a, known, PLACES)
    )
    reply = _request(challenger, target, StorageChallenge(secrets.token_bytes(32), [foreign]))
    assert isinstance(reply, Error) and reply.code is ErrorCode.NOT_RESPONSIBLE

    refused = _audits(target)["refused"]
    assert refused["replayed"] >= 2 and refused["malformed"] >= 1
    assert refused["not_responsible"] >= 1


def test_a_deleted_chunk_is_answered_missing_and_fetched_again(net: Net) -> None:
    address, group = next(iter(net.holders.items()))
    victim = group[-1]
    challenger = next(n for n in net.nodes if n is not victim)
    files = ChunkFiles(victim.root_dir)
    path = files.path_of(address)
    assert path.exists()
    path.unlink()
    reply = _request(challenger, victim, StorageChallenge(secrets.token_bytes(32), [address]))
    assert reply == StorageAnswers([MISSING])
    _wait(
        lambda: path.exists() and path.read_bytes() == net.contents[address],
        30.0,
        "the lost chunk is fetched again",
    )
    nonce = secrets.token_bytes(32)
    reply = _request(challenger, victim, StorageChallenge(nonce, [address]))
    assert reply == StorageAnswers(
        [storage_proof(nonce, _id(victim), address, net.contents[address])]
    )


# --- the Auditor alone: what each kind of answer means ------------------------------------


class _Keeper(pykka.ThreadingActor):
    """Holds one chunk; computes the proofs a peer should give for it."""

    def __init__(self, content: bytes) -> None:
        super().__init__()
        self.content = content
        self.address = chunk_address(content)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, HeldChunks):
            message.reply([self.address])
        elif isinstance(message, ExpectProofs):
            message.reply(
                {
                    a: storage_proof(message.nonce, message.peer, a, self.content)
                    for a in message.addresses
                    if a == self.address
                }
            )
        return None


class _ScriptedRemote:
    """Answers each challenge with the next scripted reply (a message, or an exception)."""

    def __init__(self, script: list[Callable[[StorageChallenge], Message | Exception]]) -> None:
        self.script = script
        self.sent: list[StorageChallenge] = []

    def request(
        self, peer_id: bytes, message: Message, timeout: float | None = None, addrs: Any = ()
    ) -> pykka.Future[Message]:
        assert isinstance(message, StorageChallenge)
        self.sent.append(message)
        future: NotifyingFuture[Message] = NotifyingFuture()
        reply = self.script.pop(0)(message) if self.script else None
        if isinstance(reply, Exception):
            try:
                raise reply
            except Exception:
                future.set_exception(sys.exc_info())
        elif reply is not None:
            future.set(reply)
        return future  # no script left: never answered

    def dial(self, addr: str, expected_peer_id: bytes | None = None, timeout: Any = None) -> Any:
        raise AssertionError("the Auditor dials nobody")


def test_the_auditor_judges_proofs_refusals_busy_and_missing() -> None:
    own, peer = bytes([1]) * 32, bytes([2]) * 32
    keeper = _Keeper.start(os.urandom(500))
    content = keeper.proxy().content.get()

    def honest(c: StorageChallenge) -> Message:
        return StorageAnswers([storage_proof(c.nonce, peer, a, content) for a in c.addresses])

    script: list[Callable[[StorageChallenge], Message | Exception]] = [
        honest,
        lambda _c: RemoteError(ErrorCode.BUSY, "later"),
        lambda _c: RemoteError(ErrorCode.INTERNAL, "stream reset"),
        lambda _c: RemoteError(ErrorCode.REPLAYED, "refused"),
        lambda c: StorageAnswers([MISSING] * len(c.addresses)),
    ]
    remote = _ScriptedRemote(script)
    offers: list[OfferChunks] = []
    ref = Auditor.start(
        own,
        remote,
        keeper,
        None,
        on_shun=lambda _m: None,
        on_offer=offers.append,
        interval=0.05,
        grace=0.0,
    )
    try:
        ref.tell(RoutingChanged((peer,), (), frozenset({peer})))

        def status() -> dict[str, Any]:
            ref.tell(Tick(time.time()))
            result: dict[str, Any] = ref.ask(StatusQuery(), block=True, timeout=5)["audits"]
            return result

        outcomes = ("passed", "incomplete", "failed", "peer_refused", "unanswered")
        judged: list[dict[str, Any]] = []

        def five_judged() -> bool:
            judged.append(status())
            total: int = sum(judged[-1][o] for o in outcomes)
            return total >= 5

        _wait(five_judged, 20.0, "5 audits judged")
        audits = judged[-1]
        assert audits["passed"] == 1
        assert audits["unanswered"] == 2, "busy or reset: no evidence"
        assert audits["peer_refused"] == 1, "a refusal sent as a wire Error counts"
        assert audits["incomplete"] == 1 and audits["missing"] == 1
        assert offers == [OfferChunks(peer, (keeper.proxy().address.get(),))]
        trust = audits["trust"][peer.hex()]
        assert (trust["passed"], trust["failed"]) == (1, 1)
        assert trust["score"] < 0
        assert all(len(c.nonce) == 32 for c in remote.sent)
        assert len({c.nonce for c in remote.sent}) == len(remote.sent), "fresh nonces"
    finally:
        ref.stop()
        keeper.stop()


# --- shunning ------------------------------------------------------------------------------


def test_a_shunned_peer_leaves_the_routing_table_and_stays_out_after_a_restart(
    tmp_path: Path,
) -> None:
    network = Net(tmp_path)
    restarted: Node | None = None
    try:
        network.start(6)
        judge, cheat, asker = network.nodes[1], network.nodes[2], network.nodes[3]
        cheat_id = _id(cheat)
        auditor = judge.refs["Auditor"]
        auditor.tell(PeerMisbehaved(cheat_id, TrustEvent.WRONG_BYTES))
        assert cheat_id.hex() not in _audits(judge)["shunned"], "one slip does not shun"
        auditor.tell(PeerMisbehaved(cheat_id, TrustEvent.WRONG_BYTES))
        _wait(lambda: cheat_id.hex() in _audits(judge)["shunned"], 10.0, "shunned")
        _wait(lambda: cheat_id not in _routing_ids(judge), 10.0, "out of the routing table")
        assert judge.status()["shunned_in_routing"] == 1
        assert _audits(judge)["trust"][cheat_id.hex()]["failed"] == 2

        # asked for the peers close to it, the judge names it shunned
        reply = _request(asker, judge, FindNode(cheat_id))
        assert isinstance(reply, Nodes)
        assert reply.shunned == [cheat_id]
        assert cheat_id not in {r.peer_id for r in reply.peers}
        # the others do not shun it
        reply = _request(asker, network.nodes[4], FindNode(cheat_id))
        assert isinstance(reply, Nodes) and reply.shunned == []

        # the cheat keeps talking to the judge: still kept out
        _request(cheat, judge, FindNode(cheat_id))
        time.sleep(0.5)
        assert cheat_id not in _routing_ids(judge)

        # restarted on the same root dir: the trust is read back, still shunned
        judge.stop()
        network.nodes.remove(judge)
        restarted = Node(_config(network.base / "n1", network.bootstrap))
        restarted.start()
        assert _id(restarted) == _id(judge)
        assert cheat_id.hex() in _audits(restarted)["shunned"]
        others = {_id(n) for n in network.nodes} - {cheat_id}
        _wait(lambda: others <= _routing_ids(restarted), 30.0, "the restarted node rejoined")
        _wait(lambda: restarted.status()["shunned_in_routing"] == 1, 10.0, "shun reapplied")
        _request(cheat, restarted, FindNode(cheat_id))
        time.sleep(0.5)
        assert cheat_id not in _routing_ids(restarted)
        reply = _request(asker, restarted, FindNode(cheat_id))
        assert isinstance(reply, Nodes) and reply.shunned == [cheat_id]
    finally:
        if restarted is not None:
            restarted.stop()
        network.stop()
