"""The node supervisor: starts the actors in order, wires them together, stops them.

It also owns what is not an actor: the root-dir lock, the identity, the database,
the periodic ticker, and the control socket through which ``status`` asks the
running node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pykka

from actors.auditor import Auditor
from actors.base import MailboxFigures, NodeActor
from actors.bucket_manager import BucketManager
from actors.chunk_keeper import ChunkKeeper, KeeperPayments
from actors.close_group_tracker import CloseGroupTracker
from actors.control_socket import ControlServer
from actors.futures import NotifyingFuture
from actors.handshake import Handshake
from actors.messages import (
    ConnectPeer,
    FindClosest,
    HoldsChunks,
    InboundRequest,
    RoutingChanged,
    RoutingSnapshot,
    StatusQuery,
    SubscribeCloseGroup,
    Tick,
)
from actors.nat_traverser import CascadeResult, NatConfig, NatTraverser, nat_hooks
from actors.replicator import Replicator
from actors.transport import QuicStack, Transport, TransportConfig, TransportHandle
from persistence.chunk_files import ChunkFiles
from persistence.database import Database, open_database
from persistence.root_dir import RootDirLock, prepare_root_dir
from protocol.audit import DEFAULT_AUDIT_INTERVAL
from protocol.chunk_cache import DEFAULT_CACHE_BYTES
from protocol.identity import Identity, load_or_create
from protocol.lookup import Contact
from protocol.nat import Reachability
from protocol.relay import RelayLimits
from protocol.routing import RoutingView
from protocol.wire import (
    DialBack,
    Error,
    ErrorCode,
    FindNode,
    GetChunk,
    GetQuote,
    Message,
    Nodes,
    Offer,
    PunchNotify,
    PunchRequest,
    PutChunk,
    RelayConnect,
    RelayIncoming,
    RelayReserve,
    StorageChallenge,
    is_reply_to,
)
from protocol.xor import from_hex

log = logging.getLogger(__name__)

_SERVED_BY: dict[type[Message], str] = {
    PutChunk: "ChunkKeeper",
    GetChunk: "ChunkKeeper",
    GetQuote: "ChunkKeeper",
    StorageChallenge: "ChunkKeeper",
    Offer: "Replicator",
    DialBack: "NatTraverser",
    PunchRequest: "NatTraverser",
    PunchNotify: "NatTraverser",
    RelayReserve: "NatTraverser",
    RelayConnect: "NatTraverser",
    RelayIncoming: "NatTraverser",
}
"""Which actor answers each kind of remote request (Ping is answered by the Transport,
FindNode by ``Node._dispatch`` from the BucketManager's view)."""

PUBLIC_LOG_BLOCK_RANGE = 10_000
"""Blocks per ``eth_getLogs`` query on a public chain (public RPCs limit the range)."""
DEFAULT_MAX_STORAGE = 10 * 1024**3
LOCAL_HALF_OPEN_PER_SOURCE = 256
"""Half-open connections one address may hold in ``--local`` mode (every peer of a
loopback testnet shares one address)."""
HEAP_TRIM_AFTER_START = 10.0
HEAP_TRIM_INTERVAL = 300.0
"""Seconds after start, then between two returns of the C heap's free pages to the OS."""


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the OS; False where that cannot be done.

    glibc keeps what start-up (imports, schema, TLS) and bursts of chunk transfers
    freed, so an idle node would go on holding megabytes it does not use (1.4 MB of
    62 per node in a 25-node testnet)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False  # not glibc
    trim(0)
    return True


@dataclass(frozen=True)
class NodePayments:
    """A node that is paid to store: where its rewards go, and the chain to check on."""

    rewards_address: bytes
    """20 bytes: the EVM account that receives this node's payments."""
    rpc_url: str
    token_address: str
    vault_address: str
    chain_timeout: float = 10.0
    """Seconds a chain question may take before the PUT fails (and is retried later)."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``run`` decides about a node."""

    root_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    peers: tuple[str, ...] = ()
    first: bool = False
    local: bool = False
    max_storage: int = DEFAULT_MAX_STORAGE
    cache_size: int = DEFAULT_CACHE_BYTES
    """Bytes of chunks kept as cache (not responsible for), apart from max_storage."""
    quic: QuicStack = "qh3"
    tick_interval: float = 1.0
    refresh_interval: float = 300.0
    """Seconds after which a bucket no lookup touched is refreshed."""
    liveness_interval: float = 15.0
    """Seconds between liveness pings of the closest peers."""
    repair_interval: float = 120.0
    """Seconds between two replication repair passes over every held chunk."""
    audit_interval: float = DEFAULT_AUDIT_INTERVAL
    """Seconds between two storage audits of each close-group peer, on average; 0: none."""
    punch_ttl: int = 2
    """TTL of hole-punch openers: must leave the home router and die before the far one."""
    serve_relay: bool = True
    """Relay and coordinate hole punches for peers behind NAT (when public)."""
    reachability: Reachability | None = None
    """Skip the dial-back checks and take this verdict."""
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    """What this node grants peers behind NAT when it relays for them."""
    payments: NodePayments | None = None
    """None: a free network, every valid chunk is stored unpaid."""
    punch: bool = True
    control_socket: bool = True
    identity: Identity | None = field(default=None, repr=False)
    """Use this identity instead of the root dir's key file (tests)."""


def _checked_reply(request: InboundRequest) -> Callable[[Message], None]:
    """``request.reply``, letting through only a reply ``protocol.wire.REPLIES`` declares
    (anything else is a bug of this node: the peer gets an internal error)."""

    def reply(message: Message) -> None:
        if not is_reply_to(request.message, message):
            log.error(
                "%s was answered with %s, not a declared reply",
                type(request.message).__name__,
                type(message).__name__,
            )
            message = Error(ErrorCode.INTERNAL, "the node answered with the wrong message")
        request.reply(message)

    return reply


def _record_time(times: dict[int, float], key: int, _outcome: object) -> None:
    times.setdefault(key, time.monotonic())


class Node:
    """One running node: its actors and the resources they share."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root_dir = config.root_dir
        self.identity: Identity | None = None
        self.database: Database | None = None
        self.transport: TransportHandle | None = None
        self.refs: dict[str, pykka.ActorRef[Any]] = {}
        self._routing_view: RoutingView | None = None
        """The BucketManager's last published view; ``FindNode`` is answered from it."""
        self.meters: dict[str, Any] = {}
        self._lock: RootDirLock | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cleanup: list[Callable[[], None]] = []
        self.started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start everything; on any failure, undo what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.root_dir = prepare_root_dir(self.config.root_dir)
        self._lock = RootDirLock(self.root_dir)
        self._lock.acquire()
        self._cleanup.append(self._lock.release)
        if self.config.identity is not None:
            self.identity = self.config.identity
        else:
            self.identity, created = load_or_create(self.root_dir)
            log.info(
                "%s identity %s", "created" if created else "loaded", self.identity.peer_id_hex
            )
        own_id = self.identity.peer_id
        self.started_at = time.time()

        database = open_database(self.root_dir)
        self._cleanup.append(database.close)
        self.database = database
        files = ChunkFiles(self.root_dir)
        for stray in files.remove_stale_temp_files():
            log.info("removed an unfinished chunk write: %s", stray.name)

        close_groups = self._spawn(CloseGroupTracker, own_id)
        keeper_payments = self._start_payments(self.identity)
        keeper = self._spawn(
            ChunkKeeper,
            own_id,
            database,
            files,
            self.config.max_storage,
            on_stored=self._tell("Replicator", "Auditor"),
            on_lost=self._tell("Replicator"),
            cache_size=self.config.cache_size,
            payments=keeper_payments,
        )
        handshake = self._spawn(Handshake, self.identity)
        transport_config = TransportConfig(
            host=self.config.host,
            port=self.config.port,
            quic=self.config.quic,
            punch_ttl=self.config.punch_ttl,
            relay_limits=self.config.relay_limits,
        )
        if self.config.local:  # a loopback testnet: every peer comes from 127.0.0.1
            transport_config = dataclasses.replace(
                transport_config, half_open_per_source=LOCAL_HALF_OPEN_PER_SOURCE
            )
        transport = self._spawn(
            Transport,
            self.identity,
            handshake,
            transport_config,
            dispatch=self._dispatch,
            on_peer_connected=self._tell("BucketManager"),
            on_peer_disconnected=self._tell("NatTraverser"),
            **nat_hooks(self._tell("NatTraverser")),
        )
        self.transport = Transport.handle_of(transport)
        self._spawn(
            NatTraverser,
            self.transport,
            NatConfig(
                serve_relay=self.config.serve_relay,
                reachability=self.config.reachability,
                punch=self.config.punch,
            ),
        )

        replicator = self._spawn(
            Replicator,
            own_id,
            self.transport,
            keeper,
            repair_interval=self.config.repair_interval,
            on_misbehaved=self._tell("Auditor"),
        )
        close_groups.tell(SubscribeCloseGroup(self._tell("Replicator")))
        if self.config.audit_interval > 0:
            self._spawn(
                Auditor,
                own_id,
                self.transport,
                keeper,
                database,
                on_shun=self._tell("BucketManager"),
                on_offer=self._tell("Replicator"),
                interval=self.config.audit_interval,
            )
        tell_auditor = self._tell("Auditor")

        def routing_changed(event: RoutingChanged) -> None:
            close_groups.tell(event)
            keeper.tell(event)
            replicator.tell(event)
            tell_auditor(event)

        self._spawn(
            BucketManager,
            own_id,
            self.transport,
            database,
            routing_changed,
            on_address_observed=self._tell("NatTraverser"),
            on_view=self._take_routing_view,
            local=self.config.local,
            bootstrap=self.config.peers,
            refresh_interval=self.config.refresh_interval,
            liveness_interval=self.config.liveness_interval,
        )

        self._ticker = threading.Thread(target=self._tick_loop, name="node-ticker", daemon=True)
        self._ticker.start()
        if self.config.control_socket:
            control = ControlServer(
                self.root_dir,
                {
                    "status": lambda _request: self.status(),
                    "lookup": self._control_lookup,
                    "holds": self._control_holds,
                    "connect": self._control_connect,
                },
            )
            control.start()
            self._cleanup.append(control.stop)

    def _start_payments(self, identity: Identity) -> KeeperPayments | None:
        """The PaymentVerifier, on a paying network (the chain client is imported only then)."""
        payments = self.config.payments
        if payments is None:
            return None
        from actors.payment_verifier import PaymentVerifier
        from evm.rpc import RpcClient
        from evm.vault import PaymentVaultReader

        rpc = RpcClient(payments.rpc_url, timeout=payments.chain_timeout)
        local = rpc.is_loopback
        chain = PaymentVaultReader(
            rpc,
            payments.vault_address,
            payments.token_address,
            from_block=0 if local else -1,  # a public chain: what it earns from now on
            log_block_range=None if local else PUBLIC_LOG_BLOCK_RANGE,
        )
        verifier = self._spawn(PaymentVerifier, chain, payments.rewards_address)
        return KeeperPayments(identity, payments.rewards_address, verifier)

    def _tell(self, *names: str) -> Callable[[Any], None]:
        """A callable that tells the named actors, looked up at call time (they may start
        later, or not at all)."""

        def tell(message: Any) -> None:
            for name in names:
                ref = self.refs.get(name)
                if ref is not None:
                    with contextlib.suppress(pykka.ActorDeadError):
                        ref.tell(message)

        return tell

    def _take_routing_view(self, view: RoutingView) -> None:
        self._routing_view = view  # one reference, swapped whole: readers never lock

    def _dispatch(self, request: InboundRequest) -> None:
        """Route a remote peer's request to the actor that serves it (runs on the loop thread).

        ``FindNode`` is answered right here from the BucketManager's published view of
        its table: no hop to another thread, and the reply leaves in the datagram that
        acknowledges the request. All nodes of a 25-node testnet spend a fifth less CPU
        per lookup so (``bench/bench_testnet.py``: 17-18 ms before, 13.5-14.5 ms after)."""
        message = request.message
        if isinstance(message, FindNode):
            view = self._routing_view
            if view is None:
                request.reply(Error(ErrorCode.BUSY, "the routing table is not loaded yet"))
            else:
                request.reply(view.find_node_answer(message.target, request.peer_id, time.time()))
            return
        name = _SERVED_BY.get(type(message))
        ref = self.refs.get(name) if name else None
        if ref is None:
            request.reply(
                Error(ErrorCode.UNSUPPORTED, f"{type(request.message).__name__} is not served here")
            )
            return
        try:
            ref.tell(InboundRequest(request.peer_id, request.message, _checked_reply(request)))
        except pykka.ActorDeadError:
            request.reply(Error(ErrorCode.BUSY, "the node is stopping"))

    def _spawn(
        self, actor_class: type[NodeActor], *args: Any, **kwargs: Any
    ) -> pykka.ActorRef[Any]:
        ref: pykka.ActorRef[Any] = actor_class.start(*args, **kwargs)
        self.refs[actor_class.name] = ref
        self.meters[actor_class.name] = ref.proxy().meter.get()  # read-only from here on
        return ref

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the ticker, the control socket and the actors (last started, first stopped)."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout)
            self._ticker = None
        for name in reversed(list(self.refs)):
            ref = self.refs.pop(name)
            try:
                ref.stop(block=True, timeout=timeout)
            except pykka.ActorDeadError:
                pass
            except Exception:
                log.exception("actor %s did not stop cleanly", name)
        while self._cleanup:
            self._cleanup.pop()()

    def _tick_loop(self) -> None:
        trim_at = time.monotonic() + HEAP_TRIM_AFTER_START
        while not self._stopping.wait(self.config.tick_interval):
            if time.monotonic() >= trim_at:
                trim_at = time.monotonic() + HEAP_TRIM_INTERVAL
                if not release_free_heap():
                    trim_at = float("inf")
            tick = Tick(time.time())
            for ref in list(self.refs.values()):
                try:
                    ref.tell(tick)
                except pykka.ActorDeadError:
                    continue

    # -- inspection ----------------------------------------------------------------

    def mailboxes(self) -> dict[str, MailboxFigures]:
        return {name: meter.figures() for name, meter in self.meters.items()}

    def lookup(self, target: bytes, count: int = 20) -> NotifyingFuture[list[Contact]]:
        """Find the ``count`` peers closest to ``target`` by an iterative lookup."""
        future: NotifyingFuture[list[Contact]] = NotifyingFuture()
        self.refs["BucketManager"].tell(FindClosest(target, future.set, count))
        return future

    def _control_lookup(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """``{"targets": [hex, ...], "count": n}``: run the lookups at once, report each."""
        count = int(request.get("count", 20))
        targets = [from_hex(str(t)) for t in request.get("targets", [])]
        started = time.monotonic()
        done_at: dict[int, float] = {}
        futures = []
        for i, target in enumerate(targets):
            future = self.lookup(target, count)
            future.add_done_callback(partial(_record_time, done_at, i))
            futures.append(future)
        return [
            {
                "target": target.hex(),
                "peers": [c.peer_id.hex() for c in future.get(timeout=60)],
                "seconds": done_at.get(i, time.monotonic()) - started,
            }
            for i, (target, future) in enumerate(zip(targets, futures, strict=True))
        ]

    def _control_connect(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"peer_id": hex, "addrs": [multiaddr, ...]}``: reach the peer through the
        cascade (direct, punch, relay); how, and the round-trip time."""
        peer_id = from_hex(str(request["peer_id"]))
        addrs = [str(a) for a in request.get("addrs", [])]
        known = self.refs["BucketManager"].ask(RoutingSnapshot(), timeout=10)
        assert isinstance(known, list)
        for known_id, known_addrs in known:
            if known_id == peer_id:
                addrs += [a for a in known_addrs if a not in addrs]
        if not addrs:  # not in the routing table: ask the peers this node is connected to
            addrs = self._addresses_of(peer_id)
        result: NotifyingFuture[Any] = NotifyingFuture()
        fresh = bool(request.get("fresh", False))
        self.refs["NatTraverser"].tell(ConnectPeer(peer_id, tuple(addrs), result.set, fresh))
        outcome = result.get(timeout=float(request.get("timeout_s", 60)))
        assert isinstance(outcome, CascadeResult)
        return outcome.as_dict()

    def _addresses_of(self, peer_id: bytes, asked: int = 4) -> list[str]:
        """The peer's addresses as connected peers know them (FindNode of its own id:
        a peer that knows it returns it first)."""
        assert self.transport is not None
        futures = [
            self.transport.request(p, FindNode(peer_id), timeout=5.0)
            for p in self.transport.connected_peers()[:asked]
        ]
        addrs: list[str] = []
        for future in futures:
            try:
                reply = future.get(timeout=10)
            except Exception:
                continue
            if isinstance(reply, Nodes):
                for record in reply.peers:
                    if record.peer_id == peer_id:
                        addrs += [a for a in record.addrs if a not in addrs]
        return addrs

    def _control_holds(self, request: dict[str, Any]) -> list[bool]:
        """``{"addresses": [hex, ...]}``: which of these chunks this node holds."""
        addresses = tuple(from_hex(str(a)) for a in request.get("addresses", []))
        held = self.refs["ChunkKeeper"].ask(HoldsChunks(addresses), timeout=30)
        assert isinstance(held, list)
        return [bool(h) for h in held]

    def status(self) -> dict[str, Any]:
        """The JSON-ready answer to ``status``: identity, actors, and each actor's section."""
        assert self.identity is not None
        result: dict[str, Any] = {
            "peer_id": self.identity.peer_id_hex,
            "public_key": self.identity.public_key.hex(),
            "root_dir": str(self.root_dir),
            "uptime": round(time.time() - self.started_at, 1),
        }
        futures = {name: ref.ask(StatusQuery(), block=False) for name, ref in self.refs.items()}
        for name, future in futures.items():
            try:
                section = future.get(timeout=2.0)
            except Exception as exc:
                log.warning("%s gave no status: %s", name, exc)
                continue
            if isinstance(section, dict):
                for key, value in section.items():  # two actors may fill one section
                    if isinstance(value, dict) and isinstance(result.get(key), dict):
                        result[key].update(value)
                    else:
                        result[key] = value
        result["actors"] = {
            name: {f: getattr(figures, f) for f in figures.__struct_fields__}
            for name, figures in self.mailboxes().items()
        }
        return result
