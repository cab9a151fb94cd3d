import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import xor

addresses = st.binary(min_size=32, max_size=32)


@given(addresses)
def test_distance_to_self_is_zero(a: bytes) -> None:
    assert xor.distance(a, a) == 0


@given(addresses, addresses)
def test_distance_is_symmetric_and_positive_between_distinct(a: bytes, b: bytes) -> None:
    assert xor.distance(a, b) == xor.distance(b, a)
    assert (xor.distance(a, b) == 0) == (a == b)


@given(addresses, addresses, addresses)
def test_triangle_inequality(a: bytes, b: bytes, c: bytes) -> None:
    assert xor.distance(a, c) <= xor.distance(a, b) + xor.distance(b, c)


@given(addresses, addresses, addresses)
def test_unidirectional(a: bytes, b: bytes, c: bytes) -> None:
    # For a point and a distance there is exactly one point at that distance.
    if b != c:
        assert xor.distance(a, b) != xor.distance(a, c)


@given(addresses, addresses)
def test_bucket_index_is_255_minus_leading_zeros(a: bytes, b: bytes) -> None:
    if a == b:
        return
    d = xor.distance(a, b)
    leading_zeros = 256 - d.bit_length()
    assert xor.bucket_index(a, b) == 255 - leading_zeros
    assert xor.bucket_index(a, b) == xor.bucket_index(b, a)


def test_bucket_extremes() -> None:
    own = bytes(32)
    assert xor.bucket_index(own, b"\x80" + bytes(31)) == 255
    assert xor.bucket_index(own, bytes(31) + b"\x01") == 0


def test_own_address_has_no_bucket() -> None:
    own = xor.random_address()
    try:
        xor.bucket_index(own, own)
    except ValueError:
        return
    raise AssertionError("expected ValueError")


@given(addresses, st.lists(addresses, max_size=30))
def test_sort_by_distance_orders_and_keeps_all(target: bytes, items: list[bytes]) -> None:
    ordered = xor.sort_by_distance(target, items)
    assert sorted(ordered) == sorted(items)
    dists = [xor.distance(target, a) for a in ordered]
    assert dists == sorted(dists)
    assert xor.closest(target, items, 5) == ordered[:5]


@given(addresses, st.integers(min_value=0, max_value=255))
def test_random_address_in_bucket_lands_there(own: bytes, index: int) -> None:
    assert xor.bucket_index(own, xor.random_address_in_bucket(own, index)) == index


def test_hex_round_trip_and_errors() -> None:
    a = xor.random_address()
    assert xor.from_hex(xor.to_hex(a)) == a
    for bad in ["00", "zz" * 32, "0" * 65]:
        try:
            xor.from_hex(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 400),
    count=st.integers(1, 25),
    prefix_bytes=st.integers(0, 31),
    pick_member=st.booleans(),
)
def test_closest_in_sorted_equals_brute_force(
    seed: int, size: int, count: int, prefix_bytes: int, pick_member: bool
) -> None:
    rng = random.Random(seed)
    stem = rng.randbytes(prefix_bytes)  # many ids share a long prefix: deep narrowing
    ids = sorted(
        {
            int.from_bytes(
                (stem if rng.random() < 0.5 else rng.randbytes(prefix_bytes))
                + rng.randbytes(32 - prefix_bytes),
                "big",
            )
            for _ in range(size)
        }
    )
    if pick_member and ids:
        target = rng.choice(ids)
    else:
        target = int.from_bytes(stem + rng.randbytes(32 - prefix_bytes), "big")
    brute = sorted(ids, key=lambda i: i ^ target)[:count]
    assert xor.closest_in_sorted(ids, target, count) == brute
