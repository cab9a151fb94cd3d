"""Replicator: what a stored chunk makes it offer, and to whom.

The Transport is replaced by a recorder of the requests the Replicator sends (its
answers never come): these tests are about which offers leave, not about the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pykka
import pytest

from actors.futures import NotifyingFuture
from actors.messages import ChunkStored, RoutingChanged
from actors.replicator import Replicator
from protocol.replication import holders
from protocol.wire import Message, Offer


class RecordingRemote:
    """Records every request; none is ever answered."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Message]] = []

    def request(
        self,
        peer_id: bytes,
        message: Message,
        timeout: float | None = None,
        addrs: Sequence[str] = (),
    ) -> pykka.Future[Message]:
        self.sent.append((peer_id, message))
        return NotifyingFuture()

    def dial(
        self, addr: str, expected_peer_id: bytes | None = None, timeout: float | None = None
    ) -> pykka.Future[bytes]:
        raise AssertionError("the Replicator dials nobody")


OWN = bytes(32)
PEERS = [bytes([i]) * 32 for i in range(1, 12)]


@pytest.fixture
def replicator() -> Iterator[tuple[pykka.ActorRef[Replicator], RecordingRemote]]:
    remote = RecordingRemote()
    keeper = pykka.ThreadingActor.start()
    ref = Replicator.start(OWN, remote, keeper, repair_interval=3600)
    ref.tell(RoutingChanged(tuple(PEERS), (), frozenset(PEERS)))
    try:
        yield ref, remote
    finally:
        ref.stop()
        keeper.stop()


def offered_to(remote: RecordingRemote, address: bytes) -> set[bytes]:
    return {p for p, m in remote.sent if isinstance(m, Offer) and address in m.addresses}


def settle(ref: pykka.ActorRef[Replicator]) -> None:
    """Wait until the actor handled everything told before (an ask queues behind them)."""
    ref.ask(RoutingChanged((), (), frozenset(PEERS)), timeout=5)
    time.sleep(0.01)


def test_a_stored_chunk_is_offered_to_the_rest_of_its_close_group(
    replicator: tuple[pykka.ActorRef[Replicator], RecordingRemote],
) -> None:
    ref, remote = replicator
    address = bytes([5]) * 32
    group = [p for p in holders(address, OWN, PEERS) if p != OWN]
    ref.tell(ChunkStored(address, 10))
    settle(ref)
    assert offered_to(remote, address) == set(group)


def test_a_chunk_the_client_stored_on_the_whole_group_causes_no_offers(
    replicator: tuple[pykka.ActorRef[Replicator], RecordingRemote],
) -> None:
    ref, remote = replicator
    address = bytes([7]) * 32
    group = [p for p in holders(address, OWN, PEERS) if p != OWN]
    ref.tell(ChunkStored(address, 10, copies_to=tuple(group)))
    settle(ref)
    assert offered_to(remote, address) == set()
    # a client that reached only some of the group leaves the others to be offered
    ref.tell(ChunkStored(address, 10, copies_to=tuple(group[:2])))
    settle(ref)
    assert offered_to(remote, address) == set(group[2:])
