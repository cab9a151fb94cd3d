from protocol.nat import MAX_TRACKED_ADDRESSES, NatStatus, Reachability


def test_address_confirmed_by_two_distinct_peers() -> None:
    nat = NatStatus()
    addr = "/ip4/203.0.113.7/udp/4000/quic-v1"
    assert not nat.observe(addr, b"a" * 32, 1.0)
    assert not nat.observe(addr, b"a" * 32, 2.0), "the same reporter twice is one vote"
    assert nat.confirmed() == []
    assert nat.observe(addr, b"b" * 32, 3.0)
    assert nat.confirmed() == [addr]
    assert not nat.observe(addr, b"c" * 32, 4.0), "confirmed only once"


def test_tracked_addresses_are_bounded() -> None:
    nat = NatStatus()
    for i in range(MAX_TRACKED_ADDRESSES * 3):
        nat.observe(f"/ip4/198.51.100.{i}/udp/1/quic-v1", b"x" * 32, float(i))
    assert len(nat.as_status()["observed_addrs"]) == MAX_TRACKED_ADDRESSES  # type: ignore[arg-type]


def test_reachability_verdict() -> None:
    nat = NatStatus()
    assert nat.reachability is Reachability.UNKNOWN
    nat.dial_back_result(False)
    assert nat.as_status()["reachability"] == "private"
    nat.dial_back_result(True)
    assert nat.as_status()["reachability"] == Reachability.PUBLIC
