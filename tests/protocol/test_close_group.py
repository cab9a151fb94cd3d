import os

from protocol.close_group import CloseGroupView
from protocol.xor import closest


def test_group_follows_joins_and_departures() -> None:
    own = os.urandom(32)
    view = CloseGroupView(own, size=5)
    peers = [os.urandom(32) for _ in range(30)]
    first = view.apply(set(peers[:10]))
    assert first is not None
    assert list(first.group) == closest(own, peers[:10], 5)
    assert set(first.added) == set(first.group) and first.removed == ()
    assert view.apply(set(peers[:10])) is None

    change = view.apply(set(peers) - {first.group[0]})
    expected = closest(own, [p for p in peers if p != first.group[0]], 5)
    assert change is not None
    assert list(change.group) == expected
    assert first.group[0] in change.removed
    assert set(change.added) == set(expected) - set(first.group)


def test_own_id_never_in_group_and_close_group_of() -> None:
    own = os.urandom(32)
    view = CloseGroupView(own)
    peers = [os.urandom(32) for _ in range(8)]
    view.apply({*peers, own})
    assert own not in view.group
    target = os.urandom(32)
    assert view.close_group_of(target) == closest(target, peers, 5)
    assert view.close_group_of(target, include_self=True) == closest(target, [*peers, own], 5)
