"""The payment rules of protocol/payments.py: prices, quote hashes, the median rule,
the off-chain checks of a proof and the judgement of what the chain says."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache

import msgspec
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chunks import CLOSE_GROUP_SIZE, RESPONSIBILITY_MARGIN
from protocol.identity import SIGNATURE_BYTES, Identity
from protocol.payments import (
    BASE_PRICE,
    FULLNESS_PRICE,
    MEDIAN_MULTIPLIER,
    MIN_QUOTES,
    PROOF_ERRORS,
    QUOTE_CLOCK_SKEW_SECONDS,
    QUOTE_TTL_SECONDS,
    REPLICA_PLACES,
    PaymentClaim,
    ProofCache,
    ProofCheck,
    ProofContext,
    ProofVerdict,
    check_payment,
    check_proof,
    is_fresh,
    is_valid_quote,
    make_quote,
    paid_quote,
    payment_for,
    proof_key,
    quote_hash,
    quote_price,
    quoter,
)
from protocol.wire import PaymentProof, Quote
from protocol.xor import closest

NOW = 1_700_000_000.0
ADDRESS = blake3(b"a chunk").digest()
OTHER_ADDRESS = blake3(b"another chunk").digest()
SIZE = 1000


@cache
def identity(index: int) -> Identity:
    return Identity.from_seed(bytes([index]) * 32)


PEERS = 30


@cache
def by_distance() -> list[Identity]:
    """The test network's identities, closest to ``ADDRESS`` first."""
    ids = {identity(i).peer_id: identity(i) for i in range(PEERS)}
    return [ids[p] for p in closest(ADDRESS, ids, PEERS)]


def rewards(who: Identity) -> bytes:
    return who.peer_id[:20]


def quote(
    who: Identity,
    *,
    price: int = BASE_PRICE,
    now: float = NOW,
    address: bytes = ADDRESS,
) -> Quote:
    return make_quote(who, address, SIZE, price, now, rewards(who))


def context(own: Identity, *, now: float = NOW, replica: bool = False) -> ProofContext:
    others = [i.peer_id for i in by_distance() if i.peer_id != own.peer_id]
    return ProofContext(own.peer_id, others, now, replica)


def close_quotes(prices: Sequence[int] = (3, 1, 2, 5, 4)) -> list[Quote]:
    """Quotes from the close group of ``ADDRESS`` (closest first)."""
    return [quote(who, price=p * BASE_PRICE) for who, p in zip(by_distance(), prices, strict=False)]


def unsigned(who: Identity, price: int) -> Quote:
    """A quote with a dummy signature (for the rules that never look at it)."""
    return Quote(
        ADDRESS, SIZE, price, int(NOW), rewards(who), who.public_key, bytes(SIGNATURE_BYTES)
    )


# -- prices -----------------------------------------------------------------------------


def test_price_of_an_empty_and_a_full_node() -> None:
    assert quote_price(0, 1000) == BASE_PRICE
    assert quote_price(1000, 1000) == BASE_PRICE + FULLNESS_PRICE
    assert quote_price(5000, 1000) == BASE_PRICE + FULLNESS_PRICE  # past full: capped
    assert quote_price(-5, 1000) == BASE_PRICE
    assert quote_price(0, 0) == BASE_PRICE + FULLNESS_PRICE  # no capacity: the top price


@given(
    capacity=st.integers(1, 10**12),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
)
def test_price_grows_with_fullness(capacity: int, a: float, b: float) -> None:
    low, high = sorted((int(a * capacity), int(b * capacity)))
    assert BASE_PRICE <= quote_price(low, capacity) <= quote_price(high, capacity)
    assert quote_price(high, capacity) <= BASE_PRICE + FULLNESS_PRICE


def test_price_grows_strictly_with_the_square() -> None:
    capacity = 1000
    prices = [quote_price(s, capacity) for s in range(0, capacity + 1, 100)]
    assert prices == sorted(set(prices))
    assert quote_price(500, capacity) == BASE_PRICE + FULLNESS_PRICE // 4


# -- quote hashes and signatures -----------------------------------------------------


def test_a_quote_is_signed_by_its_node_and_names_it() -> None:
    who = identity(1)
    made = quote(who)
    assert quoter(made) == who.peer_id
    assert made.timestamp == int(NOW)
    assert is_valid_quote(made, ADDRESS, who.peer_id, SIZE)
    assert not is_valid_quote(made, OTHER_ADDRESS, who.peer_id, SIZE)
    assert not is_valid_quote(made, ADDRESS, identity(2).peer_id, SIZE)
    assert not is_valid_quote(made, ADDRESS, who.peer_id, SIZE + 1)
    tampered = msgspec.structs.replace(made, price=made.price + 1)
    assert not is_valid_quote(tampered, ADDRESS, who.peer_id, SIZE)


def test_a_rewards_address_must_be_20_bytes() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        make_quote(identity(1), ADDRESS, SIZE, 1, NOW, b"\x01" * 19)


def test_quote_hash_is_stable_and_ignores_the_signature() -> None:
    who = identity(1)
    first, second = quote(who), quote(who)
    assert len(quote_hash(first)) == 32
    assert quote_hash(first) == quote_hash(second)  # same fields, same hash
    forged = msgspec.structs.replace(first, signature=bytes(SIGNATURE_BYTES))
    assert quote_hash(forged) == quote_hash(first)
    # The hash survives the wire.
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(first), type=Quote)
    assert quote_hash(decoded) == quote_hash(first)


@given(
    field=st.sampled_from(["address", "size", "price", "timestamp", "rewards_address"]),
    delta=st.integers(1, 1000),
)
@settings(max_examples=30)
def test_quote_hash_covers_every_signed_field(field: str, delta: int) -> None:
    made = quote(identity(1))
    value = getattr(made, field)
    if isinstance(value, bytes):
        changed = bytes([value[0] ^ (delta % 255 + 1)]) + value[1:]
    else:
        changed = value + delta
    assert quote_hash(msgspec.structs.replace(made, **{field: changed})) != quote_hash(made)


def test_quote_hash_covers_the_public_key() -> None:
    made = quote(identity(1))
    other = msgspec.structs.replace(made, public_key=identity(2).public_key)
    assert quote_hash(other) != quote_hash(made)


# -- the median rule ------------------------------------------------------------------


def test_median_is_by_price() -> None:
    quotes = close_quotes((3, 1, 2, 5, 4))
    median = paid_quote(quotes)
    assert median.price == 3 * BASE_PRICE
    claim = payment_for(quotes)
    assert claim == PaymentClaim(quote_hash(median), median.rewards_address, 9 * BASE_PRICE)
    assert MEDIAN_MULTIPLIER == 3


def test_median_of_an_even_count_is_the_upper_one() -> None:
    quotes = close_quotes((4, 1, 2, 3))
    assert paid_quote(quotes).price == 3 * BASE_PRICE


def test_median_ties_are_broken_by_peer_id() -> None:
    who = [identity(i) for i in range(5)]
    quotes = [unsigned(w, 7) for w in who]
    by_id = sorted(who, key=lambda w: w.peer_id)
    assert quoter(paid_quote(quotes)) == by_id[2].peer_id
    assert quoter(paid_quote(list(reversed(quotes)))) == by_id[2].peer_id


def test_no_quotes_no_median() -> None:
    with pytest.raises(ValueError, match="no quotes"):
        paid_quote([])


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=7), st.randoms())
@settings(max_examples=60)
def test_median_rule_is_order_independent(prices: list[int], rnd: random.Random) -> None:
    quotes = [unsigned(identity(i), p) for i, p in enumerate(prices)]
    shuffled = list(quotes)
    rnd.shuffle(shuffled)
    median = paid_quote(shuffled)
    assert median == paid_quote(quotes)
    ordered = sorted(quotes, key=lambda q: (q.price, quoter(q)))
    assert median == ordered[len(quotes) // 2]
    assert sum(q.price < median.price for q in quotes) <= len(quotes) // 2
    assert sum(q.price > median.price for q in quotes) <= (len(quotes) - 1) // 2
    claim = payment_for(shuffled)
    assert claim.amount == MEDIAN_MULTIPLIER * median.price
    assert claim.rewards_address == median.rewards_address
    assert claim.quote_hash == quote_hash(median)


# -- check_proof ----------------------------------------------------------------------


def own() -> Identity:
    """The checking node: a member of the close group (the 2nd closest)."""
    return by_distance()[1]


def check(
    quotes: list[Quote] | None,
    *,
    address: bytes = ADDRESS,
    replica: bool = False,
    known_paid: bool = False,
) -> ProofCheck:
    """``own()`` checks a PUT of ``address`` with these quotes at ``NOW``."""
    proof = None if quotes is None else PaymentProof(quotes)
    ctx = context(own(), replica=replica)
    return check_proof(address, proof, ctx, known_paid=known_paid)


def test_a_good_proof_asks_the_chain_about_the_median() -> None:
    quotes = close_quotes()
    result = check(quotes)
    assert result.verdict is ProofVerdict.CHECK_CHAIN
    assert result.claim == payment_for(quotes)
    assert result.claim is not None
    assert result.claim.amount == 3 * 3 * BASE_PRICE


def test_missing_proof() -> None:
    assert check(None).verdict is ProofVerdict.MISSING
    assert "PaymentRequired" in PROOF_ERRORS[ProofVerdict.MISSING]


def test_too_few_quotes() -> None:
    assert check(close_quotes()[: MIN_QUOTES - 1]).verdict is ProofVerdict.TOO_FEW_QUOTES
    assert check([]).verdict is ProofVerdict.TOO_FEW_QUOTES
    assert check(close_quotes()[:MIN_QUOTES]).verdict is ProofVerdict.CHECK_CHAIN


def test_a_quote_for_another_address() -> None:
    quotes = close_quotes()
    quotes[3] = quote(by_distance()[3], address=OTHER_ADDRESS)
    assert check(quotes).verdict is ProofVerdict.WRONG_ADDRESS
    # A whole proof for another chunk (a paid proof reused).
    assert check(close_quotes(), address=OTHER_ADDRESS).verdict is ProofVerdict.WRONG_ADDRESS


def test_two_quotes_from_one_node() -> None:
    quotes = close_quotes()
    quotes[4] = quote(by_distance()[0], price=9 * BASE_PRICE)
    assert check(quotes).verdict is ProofVerdict.DUPLICATE_QUOTER


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price", 1),
        ("size", SIZE + 1),
        ("timestamp", int(NOW) - 1),
        ("rewards_address", b"\xee" * 20),
    ],
)
def test_a_field_changed_after_signing_breaks_the_signature(field: str, value: object) -> None:
    quotes = close_quotes()
    quotes[2] = msgspec.structs.replace(quotes[2], **{field: value})
    assert check(quotes).verdict is ProofVerdict.BAD_SIGNATURE


def test_a_signature_by_another_key() -> None:
    quotes = close_quotes()
    impostor = quote(identity(PEERS + 1))
    quotes[0] = msgspec.structs.replace(quotes[0], signature=impostor.signature)
    assert check(quotes).verdict is ProofVerdict.BAD_SIGNATURE


def test_quotes_from_nodes_far_from_the_address() -> None:
    far = by_distance()[-5:]
    assert check([quote(w) for w in far]).verdict is ProofVerdict.NOT_CLOSE


def test_the_paid_quoter_must_be_close_even_if_most_are() -> None:
    group = by_distance()
    # The far node quotes the median price: it is the one paid.
    quotes = [quote(w, price=p) for w, p in zip(group[:4], (1, 2, 4, 5), strict=True)]
    quotes.append(quote(group[-1], price=3))
    assert quoter(paid_quote(quotes)) == group[-1].peer_id
    assert check(quotes).verdict is ProofVerdict.NOT_CLOSE
    # Paid quoter close, one of five far: a majority is close, fine.
    quotes[-1] = quote(group[-1], price=100)
    assert check(quotes).verdict is ProofVerdict.CHECK_CHAIN


def test_a_majority_of_quoters_must_be_close() -> None:
    group = by_distance()
    far = [quote(w, price=p) for w, p in zip(group[-3:], (1, 2, 9), strict=True)]
    quotes = [quote(group[0], price=3), *far, quote(group[1], price=10)]
    # Median: group[0] (close); but only 2 of 5 quoters are close.
    assert quoter(paid_quote(quotes)) == group[0].peer_id
    assert check(quotes).verdict is ProofVerdict.NOT_CLOSE


def test_own_quote_expired() -> None:
    quotes = close_quotes()
    quotes[1] = quote(own(), now=NOW - QUOTE_TTL_SECONDS - 1, price=quotes[1].price)
    assert check(quotes).verdict is ProofVerdict.EXPIRED
    # Just inside the hour is fine.
    quotes[1] = quote(own(), now=NOW - QUOTE_TTL_SECONDS, price=quotes[1].price)
    assert check(quotes).verdict is ProofVerdict.CHECK_CHAIN


def test_only_the_own_quote_expires() -> None:
    quotes = close_quotes()
    quotes[3] = quote(by_distance()[3], now=NOW - 10 * QUOTE_TTL_SECONDS, price=quotes[3].price)
    assert check(quotes).verdict is ProofVerdict.CHECK_CHAIN


def test_a_quote_from_the_future() -> None:
    quotes = close_quotes()
    later = NOW + QUOTE_CLOCK_SKEW_SECONDS + 1
    quotes[4] = quote(by_distance()[4], now=later, price=quotes[4].price)
    assert check(quotes).verdict is ProofVerdict.FROM_THE_FUTURE
    assert check(quotes, replica=True).verdict is ProofVerdict.FROM_THE_FUTURE
    quotes[4] = quote(by_distance()[4], now=NOW + QUOTE_CLOCK_SKEW_SECONDS, price=quotes[4].price)
    assert check(quotes).verdict is ProofVerdict.CHECK_CHAIN


def test_a_replica_skips_the_expiry() -> None:
    quotes = close_quotes()
    quotes[1] = quote(own(), now=NOW - 30 * 24 * 3600, price=quotes[1].price)
    assert check(quotes).verdict is ProofVerdict.EXPIRED
    assert check(quotes, replica=True).verdict is ProofVerdict.CHECK_CHAIN


def test_a_replica_uses_the_looser_closeness() -> None:
    group = by_distance()
    tight = CLOSE_GROUP_SIZE + RESPONSIBILITY_MARGIN
    # Quoters just past the places a client's PUT allows, within the replica's.
    moved_on = group[tight + 1 : tight + 6]
    assert tight + 6 <= REPLICA_PLACES
    quotes = [quote(w) for w in moved_on]
    assert check(quotes).verdict is ProofVerdict.NOT_CLOSE
    result = check(quotes, replica=True)
    assert result.verdict is ProofVerdict.CHECK_CHAIN
    assert result.claim == payment_for(quotes)
    # Past the replica's places too: refused.
    far = [quote(w) for w in group[REPLICA_PLACES + 1 : REPLICA_PLACES + 6]]
    assert check(far, replica=True).verdict is ProofVerdict.NOT_CLOSE


def test_known_paid_skips_signatures_and_chain() -> None:
    quotes = close_quotes()
    assert check(quotes, known_paid=True) == ProofCheck(ProofVerdict.PAID, payment_for(quotes))
    # The signatures are not checked again (they were when it was first found paid)...
    quotes[2] = msgspec.structs.replace(quotes[2], signature=bytes(SIGNATURE_BYTES))
    assert check(quotes, known_paid=True).verdict is ProofVerdict.PAID
    # ...but the checks that depend on the PUT still run.
    assert (
        check(quotes, known_paid=True, address=OTHER_ADDRESS).verdict is ProofVerdict.WRONG_ADDRESS
    )
    stale = close_quotes()
    stale[1] = quote(own(), now=NOW - 2 * QUOTE_TTL_SECONDS, price=stale[1].price)
    assert check(stale, known_paid=True).verdict is ProofVerdict.EXPIRED


def test_every_failed_verdict_has_a_message() -> None:
    judged = set(ProofVerdict) - {ProofVerdict.PAID, ProofVerdict.CHECK_CHAIN}
    assert judged <= PROOF_ERRORS.keys()


# -- check_payment ----------------------------------------------------------------------

CLAIM = PaymentClaim(b"\x01" * 32, b"\x02" * 20, 300)


def test_unpaid() -> None:
    assert check_payment(CLAIM, b"\x00" * 20, 0) is ProofVerdict.UNPAID


def test_paid_to_someone_else() -> None:
    assert check_payment(CLAIM, b"\x03" * 20, 300) is ProofVerdict.WRONG_RECIPIENT


def test_underpaid() -> None:
    assert check_payment(CLAIM, b"\x02" * 20, 299) is ProofVerdict.UNDERPAID


@given(st.integers(300, 2**96))
def test_paid_in_full_or_more(amount: int) -> None:
    assert check_payment(CLAIM, b"\x02" * 20, amount) is ProofVerdict.PAID


@given(st.integers(1, 299))
def test_anything_short_is_underpaid(amount: int) -> None:
    assert check_payment(CLAIM, b"\x02" * 20, amount) is ProofVerdict.UNDERPAID


# -- the cache and freshness ----------------------------------------------------------


def test_proof_cache_drops_the_least_recently_used() -> None:
    cache_ = ProofCache(capacity=2)
    keys = [bytes([i]) * 32 for i in range(3)]
    cache_.add(keys[0], CLAIM)
    cache_.add(keys[1], CLAIM)
    assert cache_.get(keys[0]) == CLAIM  # now keys[1] is the oldest
    cache_.add(keys[2], CLAIM)
    assert len(cache_) == 2
    assert cache_.get(keys[1]) is None
    assert cache_.get(keys[0]) == CLAIM
    assert (cache_.hits, cache_.misses) == (2, 1)


def test_proof_key_is_the_proofs_identity() -> None:
    quotes = close_quotes()
    assert proof_key(PaymentProof(quotes)) == proof_key(PaymentProof(list(quotes)))
    assert proof_key(PaymentProof(quotes)) != proof_key(PaymentProof(quotes[:4]))


def test_a_proof_is_fresh_with_a_margin_left() -> None:
    proof = PaymentProof(close_quotes())
    assert is_fresh(proof, NOW)
    assert is_fresh(proof, NOW + QUOTE_TTL_SECONDS - 301)
    assert not is_fresh(proof, NOW + QUOTE_TTL_SECONDS - 300)
    assert not is_fresh(proof, NOW + QUOTE_TTL_SECONDS - 100, margin=200)


def test_a_refused_proof_answers_with_the_code_that_says_what_to_do() -> None:
    from protocol.payments import refusal
    from protocol.wire import ErrorCode

    assert refusal(ProofVerdict.MISSING).code is ErrorCode.PAYMENT_REQUIRED
    assert "PaymentRequired" in refusal(ProofVerdict.MISSING).message
    assert refusal(ProofVerdict.CHAIN_UNAVAILABLE).code is ErrorCode.CHAIN_UNAVAILABLE
    for verdict in (ProofVerdict.UNPAID, ProofVerdict.BAD_SIGNATURE, ProofVerdict.EXPIRED):
        assert refusal(verdict).code is ErrorCode.PAYMENT_INVALID
        assert refusal(verdict).message == PROOF_ERRORS[verdict]
