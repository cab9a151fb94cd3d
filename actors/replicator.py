"""Replicator: keeps every held chunk on all of its close group, through churn.

- A chunk stored here is offered to the other members of its close group.
- When the node's own close group changes, each new member is offered the held
  chunks it is now responsible for.
- An inbound ``Offer`` queues fetches of what this node lacks and is responsible
  for; a chunk lost to corruption is fetched again from its close group.
- When peers leave the routing table (gone, or shunned for failing audits), the held
  chunks whose close group they were in are offered to the members that take their
  places.
- The Auditor asks for chunks a peer lacks to be offered to it (``OfferChunks``).
- A periodic repair pass re-offers every held chunk, covering what events missed.
- A held chunk this node is no longer responsible for (pushed out of its close
  group, with the margin a PUT is accepted within) is handed over: offered to the
  whole close group and, once every member acknowledged, demoted to the
  ChunkKeeper's bounded cache (``DemoteChunks``), where it still serves reads.

Fetches go through ``protocol.replication.FetchQueue`` (bounded concurrency and
bandwidth). A fetched chunk is stored through ChunkKeeper, which re-checks its
hash: a source that serves wrong bytes is skipped, reported (``on_misbehaved``) and
the next one is tried. The Replicator never waits on the ChunkKeeper: what it asks
(the held chunks, claims) comes back as messages.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.base import NodeActor
from actors.bucket_manager import RemoteCalls
from actors.futures import Outcome, tell_when_done
from actors.messages import (
    ChunkLost,
    ChunkStored,
    ClaimChunks,
    CloseGroupChanged,
    DemoteChunks,
    Event,
    HeldChunks,
    InboundRequest,
    OfferChunks,
    PeerMisbehaved,
    RoutingChanged,
    StatusQuery,
    StoreChunk,
    Tick,
)
from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN
from protocol.replication import FetchQueue, Handover, holders, no_longer_responsible, offers
from protocol.trust import TrustEvent
from protocol.wire import (
    MAX_OFFER_ADDRESSES,
    Chunk,
    Error,
    ErrorCode,
    GetChunk,
    Message,
    Offer,
    OfferAck,
    PutAck,
)

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 30.0
OFFER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class _Fetched(Event):
    address: bytes
    source: bytes
    outcome: Outcome[Message]


@dataclass(frozen=True, slots=True)
class _Stored(Event):
    """The ChunkKeeper's answer to storing a fetched replica."""

    address: bytes
    source: bytes
    size: int
    reply: Message


@dataclass(frozen=True, slots=True)
class _Held(Event):
    """The ChunkKeeper's list of held chunks, for a repair pass."""

    held: tuple[bytes, ...]
    only_to: tuple[bytes, ...] | None
    departed: frozenset[bytes] = frozenset()
    """Peers that left: offer only what their departure moved to someone else."""


@dataclass(frozen=True, slots=True)
class _Claimed(Event):
    """The offered chunks the ChunkKeeper does not hold (to fetch), and whom to answer."""

    peer_id: bytes
    missing: tuple[bytes, ...]
    reply: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class _HandoverOffered(Event):
    peer: bytes
    addresses: tuple[bytes, ...]
    outcome: Outcome[Message]


class Replicator(NodeActor):
    name = "Replicator"

    def __init__(
        self,
        own_id: bytes,
        remote: RemoteCalls,
        keeper: pykka.ActorRef[Any],
        *,
        repair_interval: float = 120.0,
        max_in_flight: int = 4,
        bytes_per_second: float = 32 * 1024 * 1024,
        on_misbehaved: Callable[[PeerMisbehaved], None] = lambda _event: None,
    ) -> None:
        super().__init__()
        self.own_id = own_id
        self.on_misbehaved = on_misbehaved
        self._departed: set[bytes] = set()
        """Peers that left the routing table since the last tick."""
        self.remote = remote
        self.keeper = keeper
        self.repair_interval = repair_interval
        self.peers: frozenset[bytes] = frozenset()
        """The routing table's peers, as the BucketManager last announced them."""
        self.queue = FetchQueue(max_in_flight=max_in_flight, bytes_per_second=bytes_per_second)
        self.handover = Handover()
        self._repaired_at = time.time()
        self.offers_sent = 0
        self.offers_received = 0
        self.bad_sources = 0

    def on_receive(self, message: Any) -> Any:
        now = time.time()
        match message:
            case RoutingChanged(added=added, removed=removed, peers=peers):
                self.peers = peers
                self._departed.update(removed)
                self._departed.difference_update(added)
            case ChunkStored(address=address, copies_to=copies_to):
                plan = offers([address], self.own_id, self.peers)
                for peer in copies_to:  # the client stored it there itself
                    plan.pop(peer, None)
                self._offer(plan)
            case CloseGroupChanged(added=added):
                if added:
                    self._ask_held(only_to=tuple(added))
            case _Held(held=held, only_to=only_to, departed=departed):
                if departed:
                    self._replace_departed(held, departed)
                else:
                    self._repair(held, only_to=only_to)
            case ChunkLost(address=address):
                self.queue.want(address, self._sources(address))
            case OfferChunks(peer_id=peer_id, addresses=addresses):
                self._offer({peer_id: list(addresses)})
            case InboundRequest(peer_id=peer_id, message=Offer(addresses=addresses), reply=reply):
                self._take_offer(peer_id, addresses, reply)
            case _Claimed(peer_id=peer_id, missing=missing, reply=reply):
                reply(OfferAck(self._claimed(peer_id, missing)))
            case _Fetched(address=address, source=source, outcome=outcome):
                self._fetched(address, source, outcome)
            case _Stored(address=address, source=source, size=size, reply=reply):
                self._stored(address, source, size, reply)
            case _HandoverOffered(peer=peer, addresses=addresses, outcome=outcome):
                self._handover_offered(peer, addresses, outcome)
            case Tick(now=tick_now):
                if tick_now - self._repaired_at >= self.repair_interval:
                    self._repaired_at = tick_now
                    self._departed.clear()
                    self._ask_held(only_to=None)
                elif self._departed:
                    departed = frozenset(self._departed)
                    self._departed.clear()
                    self._ask_held(only_to=None, departed=departed)
            case StatusQuery():
                return {
                    "replication": {
                        "queued": len(self.queue),
                        "in_flight": self.queue.in_flight,
                        "fetched": self.queue.fetched,
                        "failed": self.queue.failed,
                        "offers_sent": self.offers_sent,
                        "offers_received": self.offers_received,
                        "bad_sources": self.bad_sources,
                        "handing_over": len(self.handover),
                        "handed_over": self.handover.completed,
                    }
                }
            case _:
                return super().on_receive(message)
        self._start_fetches(now)
        return None

    def _ask_held(
        self, only_to: tuple[bytes, ...] | None, departed: frozenset[bytes] = frozenset()
    ) -> None:
        """Ask the ChunkKeeper for the held chunks; a repair pass follows (``_Held``)."""

        def reply(held: list[bytes]) -> None:
            self.tell_self(_Held(tuple(held), only_to, departed))

        self.keeper.tell(HeldChunks(reply=reply))

    def _replace_departed(self, held: Sequence[bytes], departed: frozenset[bytes]) -> None:
        """Offer the chunks whose close group lost a departed peer to the members that
        took its place (only those: the others hold them already)."""
        before = offers(held, self.own_id, self.peers | departed)
        after = offers(held, self.own_id, self.peers)
        plan: dict[bytes, list[bytes]] = {}
        for peer, addresses in after.items():
            had = set(before.get(peer, ()))
            new = [a for a in addresses if a not in had]
            if new:
                plan[peer] = new
        if plan:
            log.info(
                "%d peer(s) left: offering %d chunk(s) to the members that replace them",
                len(departed),
                sum(len(a) for a in plan.values()),
            )
        self._offer(plan)

    def _repair(self, held: Sequence[bytes], only_to: Sequence[bytes] | None = None) -> None:
        """Offer held chunks to their close group (or only to ``only_to``); hand over
        the ones this node is no longer responsible for."""
        leaving = set(no_longer_responsible(held, self.own_id, self.peers))
        staying = [a for a in held if a not in leaving]
        self._offer(offers(staying, self.own_id, self.peers, only_to=only_to))
        self._hand_over([a for a in held if a in leaving and a not in self.handover])

    def _hand_over(self, addresses: list[bytes]) -> None:
        """Offer chunks to their whole close group; demote each once all acknowledged."""
        if not addresses:
            return
        plan = offers(addresses, self.own_id, self.peers)
        offered_to: dict[bytes, list[bytes]] = {}
        for peer, batch in plan.items():
            for address in batch:
                offered_to.setdefault(address, []).append(peer)
        for address in addresses:
            self.handover.start(address, offered_to.get(address, ()))
        for peer, part in _offer_batches(plan):
            future = self.remote.request(peer, Offer(part), OFFER_TIMEOUT)
            self.offers_sent += 1
            tell_when_done(
                future, self.actor_ref, functools.partial(_HandoverOffered, peer, tuple(part))
            )

    def _handover_offered(
        self, peer: bytes, addresses: tuple[bytes, ...], outcome: Outcome[Message]
    ) -> None:
        if isinstance(outcome.value, OfferAck):
            ready = self.handover.acknowledged(peer, addresses)
            if ready:
                log.info("handed over %d chunks: kept as cache from now on", len(ready))
                self.keeper.tell(DemoteChunks(tuple(ready)))
        else:
            self.handover.failed(peer, addresses)

    def _offer(self, plan: dict[bytes, list[bytes]]) -> None:
        for peer, part in _offer_batches(plan):
            self.remote.request(peer, Offer(part), OFFER_TIMEOUT)
            self.offers_sent += 1

    def _take_offer(
        self, peer_id: bytes, addresses: Sequence[bytes], reply: Callable[[Message], None]
    ) -> None:
        """Claim the offered chunks this node should hold (the ChunkKeeper answers which it
        lacks, ``_Claimed``); chunks already being fetched only gain a source."""
        self.offers_received += 1
        not_mine = set(no_longer_responsible(addresses, self.own_id, self.peers))
        to_claim: list[bytes] = []
        for address in addresses:
            if address in self.queue:
                self.queue.want(address, [peer_id])
            elif address not in not_mine:
                to_claim.append(address)
        if not to_claim:
            reply(OfferAck(0))
            return
        offered = tuple(to_claim)

        def claimed(missing: list[bytes]) -> None:
            self.tell_self(_Claimed(peer_id, tuple(missing), reply))

        self.keeper.tell(ClaimChunks(offered, claimed))

    def _claimed(self, peer_id: bytes, missing: Sequence[bytes]) -> int:
        """Queue the claimed chunks not held here (the others were promoted from the cache
        or are held already); how many."""
        wanted = 0
        for address in missing:
            if self.queue.want(address, [peer_id]):
                wanted += 1
        return wanted

    def _start_fetches(self, now: float) -> None:
        for fetch in self.queue.next_fetches(now):
            future = self.remote.request(
                fetch.source, GetChunk(fetch.address, with_proof=True), FETCH_TIMEOUT
            )
            tell_when_done(
                future, self.actor_ref, functools.partial(_Fetched, fetch.address, fetch.source)
            )

    def _fetched(self, address: bytes, source: bytes, outcome: Outcome[Message]) -> None:
        reply = outcome.value
        if isinstance(reply, Chunk) and reply.address != address:
            self._wrong_bytes(source)
        if isinstance(reply, Chunk) and reply.address == address:
            size = len(reply.content)
            self.keeper.tell(
                StoreChunk(
                    address,
                    reply.content,
                    reply.proof,
                    lambda stored: self.tell_self(_Stored(address, source, size, stored)),
                )
            )
            return
        self._fetch_failed(address)

    def _stored(self, address: bytes, source: bytes, size: int, reply: Message) -> None:
        if isinstance(reply, PutAck):
            self.queue.done(address, ok=True, size=size)
            return
        self.bad_sources += 1
        log.warning(
            "replica of %s from %s rejected: %s", address.hex()[:16], source.hex()[:16], reply
        )
        if isinstance(reply, Error) and reply.code is ErrorCode.BAD_CHUNK:
            self._wrong_bytes(source)
        self._fetch_failed(address)

    def _wrong_bytes(self, source: bytes) -> None:
        self.on_misbehaved(PeerMisbehaved(source, TrustEvent.WRONG_BYTES))

    def _fetch_failed(self, address: bytes) -> None:
        self.queue.done(address, ok=False)
        if address in self.queue:
            # ask the rest of the close group too, in case the offerer was the only source
            self.queue.want(address, self._sources(address))

    def _sources(self, address: bytes) -> list[bytes]:
        """The peers that may hold ``address``: its close group and the margin past it
        within which a PUT is accepted, closest first."""
        places = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
        return [p for p in holders(address, self.own_id, self.peers, places) if p != self.own_id]


def _offer_batches(plan: dict[bytes, list[bytes]]) -> Iterator[tuple[bytes, list[bytes]]]:
    """Each ``(peer, addresses)`` of an offer plan, split to fit one ``Offer`` message."""
    for peer, addresses in plan.items():
        for start in range(0, len(addresses), MAX_OFFER_ADDRESSES):
            yield peer, addresses[start : start + MAX_OFFER_ADDRESSES]
