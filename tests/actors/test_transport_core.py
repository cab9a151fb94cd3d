"""The transport core without sockets, threads or a real clock.

``TransportCore`` instances are pumped against each other in memory (``core_net``):
their datagrams cross a fake wire, with loss, reordering and peers that vanish, and
time is a number the test moves. What the shell-level tests (``test_transport``)
show over real UDP is shown here as rules: requests and replies, one connection per
pair of peers, deadlines as errors, a dead connection replaced.
"""

from __future__ import annotations

import pytest

from actors._quic.backend import SocketAddress
from actors._quic.model import RequestDone, RequestReceived
from actors._quic.timers import Timers
from protocol.errors import (
    ConnectionLost,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
    TransportError,
)
from protocol.multiaddr import format_multiaddr
from protocol.nat import CascadeTimeouts
from protocol.relay import Reservation
from protocol.wire import ErrorCode, FindNode, Message, Nodes, Ping, Pong
from tests.actors.core_net import CoreNet, CoreNode, serve_as_relay, serve_behind_nat


def _reply(node: CoreNode, request_id: int) -> Message | None:
    done = node.done.get(request_id)
    return None if done is None else done.reply


def _finished(node: CoreNode, *request_ids: int) -> bool:
    return all(r in node.done for r in request_ids)


def _error(done: RequestDone) -> Exception | None:
    return done.error


# -- timers ---------------------------------------------------------------------------


def test_timers_run_in_order_only_when_due_and_never_once_cancelled() -> None:
    timers = Timers()
    ran: list[str] = []
    timers.call_at(5.0, ran.append, "b")
    timers.call_at(2.0, ran.append, "a")
    cancelled = timers.call_at(3.0, ran.append, "never")
    cancelled.cancel()
    assert timers.next_deadline() == 2.0
    assert timers.run_due(1.9) == 0 and ran == []
    assert timers.run_due(4.0) == 1 and ran == ["a"]
    assert timers.next_deadline() == 5.0
    timers.run_due(5.0)
    assert ran == ["a", "b"] and timers.next_deadline() is None


def test_timers_drop_cancelled_entries_when_they_are_most_of_the_heap() -> None:
    timers = Timers()
    kept = timers.call_at(1000.0, lambda: None)
    for i in range(500):
        timers.call_at(float(i), lambda: None).cancel()
    assert len(timers._heap) < 200
    assert len(timers) == 1 and timers.next_deadline() == kept.when()


# -- requests and replies ------------------------------------------------------------------


def test_a_request_dials_the_peer_and_gets_its_reply() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    ping = a.request(b, Ping(nonce=7))
    find = a.request(b, FindNode(bytes(32)))
    assert net.run_until(lambda: _finished(a, ping, find))
    pong = _reply(a, ping)
    assert isinstance(pong, Pong) and pong.nonce == 7
    assert pong.observed_addr.startswith("/ip4/198.51.100.1/udp/4433")  # what b sees of a
    assert _reply(a, find) == Nodes([])
    assert [type(r.message) for r in b.received] == [FindNode]  # Ping answered by b's core
    assert a.ready_connections() == 1 and b.ready_connections() == 1
    assert [e.peer_id for e in a.peer_events] == [b.peer_id]
    assert a.core.stats.requests_sent == 2 and b.core.stats.requests_served == 2


def test_a_reply_given_at_once_leaves_in_the_datagram_that_acknowledges_the_request() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    first = a.request(b, Ping(nonce=1))
    assert net.run_until(lambda: first in a.done)
    net.run_for(1.0)  # the connection is quiet: nothing left to acknowledge
    sent_by_b: list[int] = []
    send = net.send

    def record(source: SocketAddress, target: SocketAddress, data: bytes) -> None:
        if source == b.addr:
            sent_by_b.append(len(data))
        send(source, target, data)

    net.send = record  # type: ignore[method-assign]
    find = a.request(b, FindNode(bytes(32)))  # b's handler answers while it carries it out
    assert net.run_until(lambda: find in a.done)
    assert _reply(a, find) == Nodes([])
    assert len(sent_by_b) == 1, f"b sent {sent_by_b} bytes: an acknowledgement on its own first?"


def test_a_dial_by_multiaddr_authenticates_the_peer() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    dial = a.dial(b)
    assert net.run_until(lambda: dial in a.dialled)
    assert a.dialled[dial].peer_id == b.peer_id and a.dialled[dial].error is None


def test_a_dial_to_the_wrong_peer_id_is_rejected() -> None:
    net = CoreNet()
    a, b, c = net.add(), net.add(), net.add()
    wrong = b.multiaddr.replace(b.peer_id.hex(), c.peer_id.hex())
    dial = a.core.dial(wrong, net.now)
    assert net.run_until(lambda: dial in a.dialled)
    error = a.dialled[dial].error
    assert isinstance(error, TransportError) and "peer" in str(error).lower()
    assert a.ready_connections() == 0


def test_many_requests_over_a_lossy_reordering_wire_all_get_their_replies() -> None:
    net = CoreNet(loss=0.1, jitter=0.02, seed=7)
    a, b = net.add(), net.add()
    requests = [a.request(b, Ping(nonce=i), timeout=60.0) for i in range(40)]
    assert net.run_until(lambda: _finished(a, *requests), limit=60.0)
    nonces = []
    for request_id in requests:
        reply = _reply(a, request_id)
        assert isinstance(reply, Pong), a.done[request_id]
        nonces.append(reply.nonce)
    assert nonces == list(range(40))
    assert net.lost > 0  # the wire did lose datagrams
    assert a.core.stats.request_timeouts == 0


def test_requests_beyond_the_in_flight_limit_wait_in_the_peers_queue() -> None:
    net = CoreNet()
    held: list[RequestReceived] = []

    def hold(_node: CoreNode, request: RequestReceived) -> Message | None:
        held.append(request)
        return None

    a = net.add(max_in_flight_per_peer=2)
    b = net.add(handler=hold)
    requests = [a.request(b, FindNode(bytes(32))) for _ in range(5)]
    net.run_for(1.0)
    assert len(held) == 2 and not a.done  # two in flight, three queued
    answered = 0
    while len(a.done) < 5:
        assert len(held) - answered <= 2  # never more than two in flight
        for request in held[answered:]:
            b.reply(request, Nodes([]))
        answered = len(held)
        net.run_for(1.0)
    assert answered == 5
    assert all(_reply(a, r) == Nodes([]) for r in requests)


# -- deadlines and failures are errors ---------------------------------------------------


def test_a_request_without_a_reply_times_out_as_an_error() -> None:
    net = CoreNet()
    a = net.add()
    b = net.add(handler=lambda _node, _request: None)  # never answers
    request = a.request(b, FindNode(bytes(32)), timeout=3.0)
    started = net.now
    assert net.run_until(lambda: request in a.done)
    assert isinstance(a.done[request].error, RequestTimeout)
    assert 3.0 <= net.now - started < 3.1  # at its deadline, by the fake clock
    assert a.core.stats.request_timeouts == 1
    net.run_for(1.0)
    assert b.core.stats.requests_served == 0 and a.ready_connections() == 1


def test_a_request_to_an_address_where_nobody_listens_fails_unreachable() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    net.remove(b)
    request = a.request(b, Ping(nonce=1), timeout=60.0)
    assert net.run_until(lambda: request in a.done)
    assert isinstance(a.done[request].error, PeerUnreachable)
    assert net.now - 1000.0 < 60.0  # the dial's own timeout, before the request's


def test_a_request_to_itself_or_to_an_unknown_peer_fails_at_once() -> None:
    net = CoreNet()
    a = net.add()
    itself = a.core.request(a.peer_id, Ping(nonce=1), net.now)
    stranger = a.core.request(bytes(32), Ping(nonce=1), net.now)
    net.settle()
    assert isinstance(a.done[itself].error, PeerUnreachable)
    assert isinstance(a.done[stranger].error, PeerUnreachable)


def test_a_peer_that_vanishes_fails_the_requests_in_flight_and_a_new_run_is_dialled() -> None:
    """The peer's machine goes silent mid-request: the liveness probe closes the
    connection (ConnectionLost, before the request's own deadline); the next request,
    once the peer is back (a new process at the same address), dials a new connection
    that replaces the dead one."""
    net = CoreNet()
    a = net.add(probe_interval=1.0, peer_silence_timeout=5.0)
    b = net.add(handler=lambda _node, _request: None)
    first = a.request(b, Ping(nonce=1))
    assert net.run_until(lambda: first in a.done)
    waiting = a.request(b, FindNode(bytes(32)), timeout=60.0)
    net.run_for(0.5)
    net.cut.add(b.addr)  # b's host is unplugged: no packet in or out
    assert net.run_until(lambda: waiting in a.done, limit=30.0)
    assert isinstance(a.done[waiting].error, ConnectionLost)
    assert net.now - 1000.0 < 30.0
    assert a.ready_connections() == 0
    assert [type(e).__name__ for e in a.peer_events] == ["PeerConnected", "PeerDisconnected"]
    # b comes back: a new process with the same identity at the same address
    net.cut.discard(b.addr)
    net.remove(b)
    b2 = net.add_at(b.addr, identity=b.identity)
    again = a.request(b2, FindNode(bytes(32)))
    assert net.run_until(lambda: again in a.done)
    assert _reply(a, again) == Nodes([])
    assert a.ready_connections() == 1
    assert a.core.stats.connections_opened == 2


def test_a_restarted_peer_replaces_the_old_connection_it_left_behind() -> None:
    """The peer restarts without a word (its old connection is dead but open here):
    its new run dials in, and the new connection replaces the old one at once."""
    net = CoreNet()
    a, b = net.add(), net.add()
    first = a.request(b, Ping(nonce=1))
    assert net.run_until(lambda: first in a.done)
    net.remove(b)
    b2 = net.add_at(b.addr, identity=b.identity)
    back = b2.request(a, Ping(nonce=2))
    assert net.run_until(lambda: back in b2.done)
    assert isinstance(_reply(b2, back), Pong)
    assert a.ready_connections() == 1
    after = a.request(b2, FindNode(bytes(32)))
    assert net.run_until(lambda: after in a.done)
    assert _reply(a, after) == Nodes([])


# -- one connection per pair ---------------------------------------------------------------


def test_a_simultaneous_dial_keeps_one_connection_per_pair() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    from_a = a.request(b, Ping(nonce=1))
    from_b = b.request(a, Ping(nonce=2))
    assert net.run_until(lambda: from_a in a.done and from_b in b.done)
    assert isinstance(_reply(a, from_a), Pong) and isinstance(_reply(b, from_b), Pong)
    net.run_for(15.0)  # the loser drains and closes
    assert len(a.core._conns) == 1 and len(b.core._conns) == 1
    (conn_a,) = a.core._conns.values()
    (conn_b,) = b.core._conns.values()
    assert conn_a.role is not conn_b.role  # the same connection, seen from both ends
    assert a.core.stats.duplicate_connections + b.core.stats.duplicate_connections >= 1
    # both sides agree which one won, so nothing dials again
    later = a.request(b, Ping(nonce=3))
    assert net.run_until(lambda: later in a.done)
    assert a.core.stats.connections_opened + a.core.stats.connections_accepted == 2


def test_the_core_has_one_deadline_and_nothing_happens_between_inputs() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    request = a.request(b, Ping(nonce=1))
    assert net.run_until(lambda: request in a.done)
    deadline = a.core.get_timer()
    assert deadline is not None and deadline > net.now
    sent = a.core.stats.datagrams_received
    assert a.core.datagrams_to_send(net.now) == []  # no input, no output
    assert a.core.next_event() is None
    assert a.core.stats.datagrams_received == sent


# -- the dial cascade ----------------------------------------------------------------------


def _private_network(net: CoreNet) -> tuple[CoreNode, CoreNode, str]:
    """A public relay, a private node behind NAT that holds a reservation on it, and
    the private node's circuit address."""
    relay = net.add(handler=serve_as_relay)
    private = net.add(handler=serve_behind_nat)
    net.behind_nat.add(private.addr)
    first = private.request(relay, Ping(nonce=1))
    assert net.run_until(lambda: first in private.done)
    assert isinstance(relay.core.relay_reserve(private.peer_id, net.now), Reservation)
    return relay, private, f"{relay.multiaddr}/p2p-circuit/p2p/{private.peer_id.hex()}"


@pytest.mark.parametrize(("punch", "how"), [(True, "punched"), (False, "relayed")])
def test_the_cascade_tries_direct_then_punch_then_relay_with_the_nat_step_timeouts(
    punch: bool, how: str
) -> None:
    net = CoreNet()
    relay, private, circuit = _private_network(net)
    stranger = net.add()
    stranger.core.set_cascade(punch=punch)
    reach = stranger.core.reach(private.peer_id, [private.multiaddr, circuit], net.now)
    assert net.run_until(lambda: reach in stranger.reached)
    result = stranger.reached[reach]
    assert result.connected and result.how == how, result
    steps = [(a.step, a.via) for a in result.attempts]
    assert steps == [("direct", private.multiaddr), (how[:5], relay.multiaddr)]
    # the direct step gave up at protocol.nat's direct timeout (by the fake clock)
    assert result.attempts[0].seconds == pytest.approx(CascadeTimeouts().direct, abs=0.05)
    [info] = [c for c in stranger.core.connections(net.now) if c.peer_id == private.peer_id.hex()]
    assert info.how == how
    request = stranger.request(private.peer_id, FindNode(bytes(32)))
    assert net.run_until(lambda: request in stranger.done)
    assert _reply(stranger, request) == Nodes([])
    assert stranger.core.stats.cascades == 1
    assert getattr(stranger.core.stats, f"cascades_{how}") == 1
    if punch:
        assert stranger.openers == [private.addr]


def test_a_request_to_a_private_peer_runs_the_cascade_and_waits_for_it() -> None:
    net = CoreNet()
    _relay, private, circuit = _private_network(net)
    stranger = net.add()
    # the request knows only the circuit address: the cascade goes punch, then relay
    request = stranger.core.request(private.peer_id, FindNode(bytes(32)), net.now, 60.0, [circuit])
    assert net.run_until(lambda: request in stranger.done)
    assert _reply(stranger, request) == Nodes([])
    assert stranger.core.stats.cascades == 1 and stranger.core.stats.cascades_punched == 1


@pytest.mark.parametrize("punch", [True, False])
def test_requests_through_a_punched_or_relayed_connection_survive_loss(punch: bool) -> None:
    net = CoreNet(seed=3)
    _relay, private, circuit = _private_network(net)
    net.loss, net.jitter = 0.05, 0.01
    stranger = net.add()
    stranger.core.set_cascade(punch=punch)
    requests = [
        stranger.core.request(private.peer_id, FindNode(bytes(32)), net.now, 60.0, [circuit])
        for _ in range(10)
    ]
    assert net.run_until(lambda: _finished(stranger, *requests), limit=70.0)
    assert all(_reply(stranger, r) == Nodes([]) for r in requests)
    assert net.lost > 0


def test_a_failed_cascade_fails_the_requests_that_waited_for_it() -> None:
    net = CoreNet()
    relay, _private, _circuit = _private_network(net)
    stranger = net.add()
    nobody = bytes(range(32))
    circuit = f"{relay.multiaddr}/p2p-circuit/p2p/{nobody.hex()}"
    request = stranger.core.request(nobody, Ping(nonce=1), net.now, 60.0, [circuit])
    reach = stranger.core.reach(nobody, [circuit], net.now)  # joins the running cascade
    assert net.run_until(lambda: request in stranger.done and reach in stranger.reached)
    assert isinstance(stranger.done[request].error, PeerUnreachable)
    result = stranger.reached[reach]
    assert not result.connected
    assert [a.step for a in result.attempts] == ["punch", "relay"]
    assert "unreachable" in result.attempts[0].outcome
    assert "refused" in result.attempts[1].outcome
    assert net.now - 1000.0 < 60.0  # at once, not at the request's deadline
    assert stranger.core.stats.cascades == 1 and stranger.core.stats.cascades_failed == 1


def test_an_address_learnt_while_the_cascade_runs_is_tried_before_requests_fail() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    dead = format_multiaddr("198.51.100.99", 4433, b.peer_id)
    first = a.core.request(b.peer_id, Ping(nonce=1), net.now, 60.0, [dead])
    net.run_for(1.0)  # the dead address's dial is running
    second = a.request(b, Ping(nonce=2), timeout=60.0)  # this one knows b's address
    assert net.run_until(lambda: _finished(a, first, second))
    assert isinstance(_reply(a, first), Pong) and isinstance(_reply(a, second), Pong)
    assert a.core.stats.connections_opened == 2


def test_a_direct_dial_tries_each_known_address_in_turn() -> None:
    net = CoreNet()
    a, b = net.add(), net.add()
    dead = format_multiaddr("198.51.100.99", 4433, b.peer_id)
    reach = a.core.reach(b.peer_id, [dead, b.multiaddr], net.now)
    assert net.run_until(lambda: reach in a.reached)
    result = a.reached[reach]
    assert result.connected and result.how == "direct"
    assert [(x.step, x.via) for x in result.attempts] == [
        ("direct", dead),
        ("direct", b.multiaddr),
    ]
    assert "PeerUnreachable" in result.attempts[0].outcome
    assert a.core.stats.cascades == 1 and a.core.stats.cascades_direct == 1
    again = a.core.reach(b.peer_id, [dead], net.now)  # connected: no cascade
    net.settle()
    assert a.reached[again].connected and a.reached[again].attempts == ()


# -- keep-alive and limits ----------------------------------------------------------------


def test_an_unused_connection_lapses_while_a_pinned_one_is_kept_alive() -> None:
    net = CoreNet()
    a, b, c = (net.add(idle_timeout=6.0, keepalive_interval=2.0) for _ in range(3))
    to_b, to_c = a.request(b, Ping(nonce=1)), a.request(c, Ping(nonce=2))
    assert net.run_until(lambda: _finished(a, to_b, to_c))
    a.core.pin(c.peer_id)
    net.run_for(40.0)
    assert [info.peer_id for info in a.core.connections(net.now)] == [c.peer_id.hex()]
    assert b.ready_connections() == 0 and c.ready_connections() == 1
    assert [type(e).__name__ for e in b.peer_events] == ["PeerConnected", "PeerDisconnected"]


def test_requests_beyond_the_inbound_limit_are_refused_busy() -> None:
    net = CoreNet()
    a = net.add()
    b = net.add(handler=lambda _node, _request: None, max_inbound_per_peer=2)
    requests = [a.request(b, FindNode(bytes(32))) for _ in range(4)]
    assert net.run_until(lambda: sum(r in a.done for r in requests) == 2, limit=5.0)
    refused = [a.done[r].error for r in requests if r in a.done]
    assert all(isinstance(e, RemoteError) and e.code is ErrorCode.BUSY for e in refused)
    assert len(b.held) == 2 and b.core.stats.busy_rejections == 2
