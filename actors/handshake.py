"""Handshake: runs the identity handshake of every new connection and judges the peer.

The Transport tells it ``BeginHandshake`` once TLS is up on a connection, then every
``HandshakeFrame`` the peer sends on its handshake stream. The actor drives one
``protocol.handshake.IdentityHandshake`` per connection, signs and verifies here (an
ML-DSA-65 signature costs about 1.5 ms: never on the Transport's loop), and answers
through the ``HandshakeSink`` it was given: frames to send, then ``Accepted`` or
``Rejected``. It owns the replay cache and counts every outcome by reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.base import NodeActor
from actors.messages import (
    BeginHandshake,
    HandshakeClosed,
    HandshakeFrame,
    HandshakeSink,
    HandshakeTimer,
    StatusQuery,
)
from protocol.handshake import (
    DEFAULT_TIMEOUT,
    Accepted,
    IdentityHandshake,
    Output,
    Rejected,
    RejectReason,
    ReplayCache,
    Role,
    Send,
)
from protocol.identity import Identity
from protocol.wire import encode_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandshakeStatsQuery:
    """Ask: the ``HandshakeStats``."""


class HandshakeStats(msgspec.Struct):
    started: int = 0
    accepted: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    """Rejections by ``RejectReason`` value."""
    in_progress: int = 0


@dataclass(frozen=True)
class HandshakeConfig:
    replay_cache_size: int = 65536
    replay_ttl: float = 3600.0


_Key = tuple[int, int]  # (id of the sink, connection id)


def start_handshake(
    begin: BeginHandshake, signer: Identity, replay_cache: ReplayCache, now: float
) -> tuple[IdentityHandshake, list[Output]]:
    """The identity handshake ``begin`` asks for, started: the machine and what it first
    outputs (without the Hello when the Transport already sent it)."""
    machine = IdentityHandshake(
        signer=signer,
        role=begin.role,
        cert_hash=begin.cert_hash,
        now=now,
        expected_peer_id=begin.expected_peer_id,
        listen_addrs=begin.listen_addrs,
        instance=begin.instance,
        replay_cache=replay_cache,
        timeout=max(0.0, begin.deadline - now),
        nonce=begin.nonce,
    )
    outputs = machine.start()
    if begin.hello_sent:
        outputs = [o for o in outputs if not isinstance(o, Send)]
    return machine, outputs


class Handshake(NodeActor):
    name = "Handshake"

    def __init__(self, identity: Identity, config: HandshakeConfig | None = None) -> None:
        super().__init__()
        self.identity = identity
        config = config or HandshakeConfig()
        self.replay_cache = ReplayCache(config.replay_cache_size, config.replay_ttl)
        self.stats = HandshakeStats()
        self._machines: dict[_Key, tuple[IdentityHandshake, BeginHandshake]] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case HandshakeFrame(conn_id=conn_id, message=frame, sink=sink):
                entry = self._machines.get((id(sink), conn_id))
                if entry is not None:
                    self._apply(entry, entry[0].receive(frame, time.monotonic()))
                return None
            case BeginHandshake():
                self._begin(message)
                return None
            case HandshakeTimer(conn_id=conn_id, now=now, sink=sink):
                entry = self._machines.get((id(sink), conn_id))
                if entry is not None:
                    self._apply(entry, entry[0].handle_timer(max(now, time.monotonic())))
                return None
            case HandshakeClosed(conn_id=conn_id, detail=detail, sink=sink):
                entry = self._machines.get((id(sink), conn_id))
                if entry is not None:
                    self._apply(entry, entry[0].connection_lost(detail), notify=False)
                return None
            case HandshakeStatsQuery():
                return self._stats()
            case StatusQuery():
                return {"handshake": msgspec.structs.asdict(self._stats())}
        return super().on_receive(message)

    def _begin(self, begin: BeginHandshake) -> None:
        machine, outputs = start_handshake(
            begin, self.identity, self.replay_cache, time.monotonic()
        )
        entry = (machine, begin)
        self._machines[(id(begin.sink), begin.conn_id)] = entry
        self.stats.started += 1
        self._apply(entry, outputs)

    def _apply(
        self,
        entry: tuple[IdentityHandshake, BeginHandshake],
        outputs: list[Output],
        notify: bool = True,
    ) -> None:
        machine, begin = entry
        for output in outputs:
            match output:
                case Send(message=message):
                    begin.sink.handshake_send(begin.conn_id, encode_frame(message))
                case Accepted(peer_id=peer_id):
                    self.stats.accepted += 1
                    log.debug("peer %s at %s accepted", peer_id.hex()[:12], begin.remote)
                    begin.sink.handshake_finished(begin.conn_id, output)
                case Rejected(reason=reason, detail=detail):
                    self.stats.rejected[reason.value] = self.stats.rejected.get(reason.value, 0) + 1
                    # a connection closed mid-handshake is routine (e.g. the losing
                    # connection of a simultaneous dial), and so is an inbound one that
                    # never finished (the Transport counts those, and a flood of them
                    # must not flood the log); anything else is suspicious
                    routine = reason is RejectReason.CONNECTION_LOST or (
                        reason is RejectReason.STALLED and begin.role is Role.SERVER
                    )
                    level = logging.INFO if routine else logging.WARNING
                    log.log(
                        level,
                        "handshake with %s (%s) rejected: %s: %s",
                        begin.remote,
                        begin.role.other.value,
                        reason.value,
                        detail,
                    )
                    if notify:
                        begin.sink.handshake_finished(begin.conn_id, output)
        if machine.done:
            del self._machines[(id(begin.sink), begin.conn_id)]

    def _stats(self) -> HandshakeStats:
        return HandshakeStats(
            started=self.stats.started,
            accepted=self.stats.accepted,
            rejected=dict(self.stats.rejected),
            in_progress=len(self._machines),
        )


__all__ = [
    "DEFAULT_TIMEOUT",
    "BeginHandshake",
    "Handshake",
    "HandshakeClosed",
    "HandshakeConfig",
    "HandshakeFrame",
    "HandshakeSink",
    "HandshakeStats",
    "HandshakeStatsQuery",
    "HandshakeTimer",
]
