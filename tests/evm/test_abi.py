"""The hard-coded ABI constants against keccak, and the encoders against eth-abi."""

from __future__ import annotations

import os

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from evm import abi


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def test_function_selectors_are_keccak_of_their_signatures() -> None:
    assert len(abi.SELECTORS) == 7
    for signature, value in abi.SELECTORS.items():
        assert value == selector(signature), signature


def test_event_topic_is_keccak_of_its_signature() -> None:
    for signature, topic in abi.EVENT_SIGNATURES.items():
        assert topic == keccak(text=signature), signature
    assert keccak(text="DataPaymentMade(address,uint256,bytes32)") == abi.DATA_PAYMENT_MADE_TOPIC


def test_error_selectors_are_keccak_of_their_signatures() -> None:
    assert selector("Error(string)") == abi.ERROR_STRING
    assert selector("Panic(uint256)") == abi.PANIC
    for value, (signature, kinds) in abi.CUSTOM_ERRORS.items():
        assert value == selector(signature), signature
        assert signature.endswith("(" + ",".join(kinds) + ")")


def test_selectors_match_the_compiled_abi() -> None:
    """Every function and error of the committed vault ABI is one abi.py knows."""
    import json
    from pathlib import Path

    artifact = json.loads(
        (Path(__file__).parents[2] / "contracts/build/PaymentVault.json").read_text()
    )

    def signature(entry: dict[str, object]) -> str:
        def kind(item: dict[str, object]) -> str:
            if item["type"] == "tuple[]":
                components = item["components"]
                assert isinstance(components, list)
                return "(" + ",".join(kind(c) for c in components) + ")[]"
            return str(item["type"])

        inputs = entry["inputs"]
        assert isinstance(inputs, list)
        return f"{entry['name']}({','.join(kind(i) for i in inputs)})"

    errors = {sig for sig, _ in abi.CUSTOM_ERRORS.values()}
    for entry in artifact["abi"]:
        if entry["type"] == "function" and entry["name"] != "token":
            assert signature(entry) in abi.SELECTORS
        elif entry["type"] == "error":
            assert signature(entry) in errors
        elif entry["type"] == "event":
            assert signature(entry) in abi.EVENT_SIGNATURES


def test_encoders_match_eth_abi() -> None:
    a, b = "0x" + "11" * 20, "0x" + "Ab" * 20
    hashes = [os.urandom(32) for _ in range(3)]
    payments = [(a, 5, hashes[0]), (b, 2**255, hashes[1]), (a, 0, hashes[2])]
    assert abi.encode_pay_for_quotes(payments) == abi.PAY_FOR_QUOTES + encode(
        ["(address,uint256,bytes32)[]"], [payments]
    )
    assert abi.encode_pay_for_quotes([]) == abi.PAY_FOR_QUOTES + encode(
        ["(address,uint256,bytes32)[]"], [[]]
    )
    assert abi.encode_completed_payments(hashes[0]) == abi.COMPLETED_PAYMENTS + hashes[0]
    assert abi.encode_balance_of(b) == abi.BALANCE_OF + encode(["address"], [b.lower()])
    assert abi.encode_approve(a, 7) == abi.APPROVE + encode(["address", "uint256"], [a, 7])
    assert abi.encode_allowance(a, b) == abi.ALLOWANCE + encode(
        ["address", "address"], [a, b.lower()]
    )
    assert abi.encode_transfer(b, 9) == abi.TRANSFER + encode(
        ["address", "uint256"], [b.lower(), 9]
    )


def test_decoders() -> None:
    a = "0x" + "ab" * 20
    assert abi.decode_completed_payment(encode(["address", "uint256"], [a, 42])) == (a, 42)
    assert abi.decode_uint(encode(["uint256"], [2**200])) == 2**200
    assert abi.decode_bool(encode(["bool"], [True])) is True
    assert abi.decode_bool(b"") is True
    topics = [
        abi.DATA_PAYMENT_MADE_TOPIC,
        encode(["address"], [a]),
        encode(["uint256"], [7]),
        b"\x01" * 32,
    ]
    assert abi.decode_data_payment_made(topics) == (a, 7, b"\x01" * 32)
    with pytest.raises(abi.AbiError):
        abi.decode_uint(b"\x00" * 31)
    with pytest.raises(abi.AbiError):
        abi.decode_data_payment_made(topics[:3])


def test_revert_reasons_read_as_one_line() -> None:
    assert abi.decode_revert(b"") == "reverted without a reason"
    message = abi.ERROR_STRING + encode(["string"], ["not enough\nfunds"])
    assert abi.decode_revert(message) == "not enough funds"
    assert abi.decode_revert(abi.PANIC + encode(["uint256"], [0x11])) == (
        "panic 0x11 (arithmetic overflow)"
    )
    too_large = selector("BatchTooLarge(uint256,uint256)") + encode(
        ["uint256", "uint256"], [300, 256]
    )
    assert abi.decode_revert(too_large) == "BatchTooLarge(300, 256)"
    paid = selector("QuoteAlreadyPaid(bytes32)") + b"\x02" * 32
    assert abi.decode_revert(paid) == "QuoteAlreadyPaid(0x" + "02" * 32 + ")"
    assert abi.decode_revert(selector("BatchEmpty()")) == "BatchEmpty()"
    assert abi.decode_revert(b"\xde\xad\xbe\xef").startswith(
        "reverted with unknown error data 0xdeadbeef"
    )
    # Truncated data for a known error does not raise.
    assert "unknown" in abi.decode_revert(selector("QuoteAlreadyPaid(bytes32)") + b"\x00")


def test_addresses() -> None:
    assert abi.normalize_address("0x" + "AB" * 20) == "0x" + "ab" * 20
    assert abi.normalize_address("ab" * 20) == "0x" + "ab" * 20
    for bad in ("0x1234", "0x" + "zz" * 20, "", "0x" + "ab" * 21):
        with pytest.raises(abi.AbiError, match="not an address"):
            abi.normalize_address(bad)
    with pytest.raises(abi.AbiError):
        abi.encode_uint(-1)
    with pytest.raises(abi.AbiError):
        abi.encode_bytes32(b"short")
