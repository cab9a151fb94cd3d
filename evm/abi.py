"""Just enough Ethereum ABI for the token and the PaymentVault, standard library only.

Node processes import this, so it stays tiny: the function selectors and the event topic
are hard-coded (a test recomputes each with keccak), and the encoders and decoders handle
exactly the calls we make. Addresses are strings ("0x" + 40 hex digits; returned
lowercase), amounts are ints, quote hashes are 32 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

WORD: Final = 32

# Function selectors: the first 4 bytes of keccak256(signature).
PAY_FOR_QUOTES: Final = bytes.fromhex("b6c2141b")  # payForQuotes((address,uint256,bytes32)[])
COMPLETED_PAYMENTS: Final = bytes.fromhex("fe3c806e")  # completedPayments(bytes32)
MAX_BATCH_FN: Final = bytes.fromhex("950bff9f")  # MAX_BATCH()
BALANCE_OF: Final = bytes.fromhex("70a08231")  # balanceOf(address)
APPROVE: Final = bytes.fromhex("095ea7b3")  # approve(address,uint256)
ALLOWANCE: Final = bytes.fromhex("dd62ed3e")  # allowance(address,address)
TRANSFER: Final = bytes.fromhex("a9059cbb")  # transfer(address,uint256)

SELECTORS: Final[dict[str, bytes]] = {
    "payForQuotes((address,uint256,bytes32)[])": PAY_FOR_QUOTES,
    "completedPayments(bytes32)": COMPLETED_PAYMENTS,
    "MAX_BATCH()": MAX_BATCH_FN,
    "balanceOf(address)": BALANCE_OF,
    "approve(address,uint256)": APPROVE,
    "allowance(address,address)": ALLOWANCE,
    "transfer(address,uint256)": TRANSFER,
}

# keccak256("DataPaymentMade(address,uint256,bytes32)"): topic 0 of the vault's event.
DATA_PAYMENT_MADE_TOPIC: Final = bytes.fromhex(
    "f998960b1c6f0e0e89b7bbe6b6fbf3e03e6f08eee5b8430877d8adb8e149d580"
)
EVENT_SIGNATURES: Final[dict[str, bytes]] = {
    "DataPaymentMade(address,uint256,bytes32)": DATA_PAYMENT_MADE_TOPIC,
}

# The vault's batch limit (PaymentVault.MAX_BATCH).
MAX_BATCH: Final = 256

ERROR_STRING: Final = bytes.fromhex("08c379a0")  # Error(string)
PANIC: Final = bytes.fromhex("4e487b71")  # Panic(uint256)

# Custom errors we can name: selector -> (signature, argument types).
CUSTOM_ERRORS: Final[dict[bytes, tuple[str, tuple[str, ...]]]] = {
    bytes.fromhex("6b093aad"): ("ZeroTokenAddress()", ()),
    bytes.fromhex("50e980cc"): ("BatchEmpty()", ()),
    bytes.fromhex("bb1cb70b"): ("BatchTooLarge(uint256,uint256)", ("uint256", "uint256")),
    bytes.fromhex("a37c4894"): ("ZeroRewardsAddress(uint256)", ("uint256",)),
    bytes.fromhex("0f6e6185"): ("QuoteAlreadyPaid(bytes32)", ("bytes32",)),
    bytes.fromhex("08083b2a"): ("AmountTooLarge(uint256)", ("uint256",)),
    # OpenZeppelin's ERC-20 and SafeERC20 errors, which a payment may hit.
    bytes.fromhex("e450d38c"): (
        "ERC20InsufficientBalance(address,uint256,uint256)",
        ("address", "uint256", "uint256"),
    ),
    bytes.fromhex("fb8f41b2"): (
        "ERC20InsufficientAllowance(address,uint256,uint256)",
        ("address", "uint256", "uint256"),
    ),
    bytes.fromhex("5274afe7"): ("SafeERC20FailedOperation(address)", ("address",)),
    bytes.fromhex("ec442f05"): ("ERC20InvalidReceiver(address)", ("address",)),
    bytes.fromhex("96c6fd1e"): ("ERC20InvalidSender(address)", ("address",)),
    bytes.fromhex("94280d62"): ("ERC20InvalidSpender(address)", ("address",)),
    bytes.fromhex("e602df05"): ("ERC20InvalidApprover(address)", ("address",)),
}

_PANICS: Final[dict[int, str]] = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x22: "bad storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an invalid function",
}

_UINT256_MAX: Final = (1 << 256) - 1


class AbiError(ValueError):
    """Data that does not decode as the ABI says, or a value that cannot be encoded."""


# -- hex and addresses ------------------------------------------------------------------


def to_hex(data: bytes) -> str:
    """``b"\\x12\\xab"`` -> ``"0x12ab"``."""
    return "0x" + data.hex()


def from_hex(text: str) -> bytes:
    """``"0x12ab"`` (or without 0x) -> bytes; AbiError if it is not hex."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if len(body) % 2:
        body = "0" + body
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise AbiError(f"not hex: {text[:80]!r}") from None


def normalize_address(address: str) -> str:
    """A 20-byte address as lowercase ``0x`` + 40 hex digits; AbiError otherwise."""
    body = address[2:] if address[:2] in ("0x", "0X") else address
    if len(body) != 40:
        raise AbiError(f"not an address (want 0x and 40 hex digits): {address[:80]!r}")
    try:
        bytes.fromhex(body)
    except ValueError:
        raise AbiError(f"not an address (want 0x and 40 hex digits): {address[:80]!r}") from None
    return "0x" + body.lower()


ZERO_ADDRESS: Final = "0x" + "00" * 20


# -- encoding ---------------------------------------------------------------------------


def encode_uint(value: int) -> bytes:
    if not 0 <= value <= _UINT256_MAX:
        raise AbiError(f"not a uint256: {value}")
    return value.to_bytes(WORD, "big")


def encode_address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(normalize_address(address)[2:])


def encode_bytes32(value: bytes) -> bytes:
    if len(value) != WORD:
        raise AbiError(f"want 32 bytes, got {len(value)}")
    return bytes(value)


def address_topic(address: str) -> str:
    """The log topic of an indexed address argument, as hex."""
    return to_hex(encode_address(address))


def encode_pay_for_quotes(payments: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Call data of ``payForQuotes(DataPayment[])``: (rewards address, amount, quote hash)."""
    parts = [PAY_FOR_QUOTES, encode_uint(WORD), encode_uint(len(payments))]
    for rewards_address, amount, quote_hash in payments:
        parts += [encode_address(rewards_address), encode_uint(amount), encode_bytes32(quote_hash)]
    return b"".join(parts)


def encode_completed_payments(quote_hash: bytes) -> bytes:
    return COMPLETED_PAYMENTS + encode_bytes32(quote_hash)


def encode_max_batch() -> bytes:
    return MAX_BATCH_FN


def encode_balance_of(owner: str) -> bytes:
    return BALANCE_OF + encode_address(owner)


def encode_approve(spender: str, amount: int) -> bytes:
    return APPROVE + encode_address(spender) + encode_uint(amount)


def encode_allowance(owner: str, spender: str) -> bytes:
    return ALLOWANCE + encode_address(owner) + encode_address(spender)


def encode_transfer(to: str, amount: int) -> bytes:
    return TRANSFER + encode_address(to) + encode_uint(amount)


# -- decoding ---------------------------------------------------------------------------


def _word(data: bytes, index: int) -> bytes:
    start = index * WORD
    if len(data) < start + WORD:
        raise AbiError(f"want at least {start + WORD} bytes, got {len(data)}")
    return data[start : start + WORD]


def decode_uint(data: bytes, index: int = 0) -> int:
    """The uint256 in word ``index`` (e.g. the result of balanceOf or allowance)."""
    return int.from_bytes(_word(data, index), "big")


def decode_address(data: bytes, index: int = 0) -> str:
    word = _word(data, index)
    if any(word[:12]):
        raise AbiError(f"not an address word: {to_hex(word)}")
    return to_hex(word[12:])


def decode_bool(data: bytes) -> bool:
    """The result of approve or transfer (an empty answer counts as true, as SafeERC20 does)."""
    if not data:
        return True
    value = decode_uint(data)
    if value > 1:
        raise AbiError(f"not a bool: {value}")
    return value == 1


def decode_completed_payment(data: bytes) -> tuple[str, int]:
    """The result of ``completedPayments(bytes32)``: (rewards address, amount)."""
    return decode_address(data, 0), decode_uint(data, 1)


def decode_data_payment_made(topics: Sequence[bytes]) -> tuple[str, int, bytes]:
    """A DataPaymentMade log (all three arguments are indexed): (address, amount, quote hash)."""
    if len(topics) != 4 or topics[0] != DATA_PAYMENT_MADE_TOPIC:
        raise AbiError("not a DataPaymentMade log")
    return decode_address(topics[1]), decode_uint(topics[2]), bytes(topics[3])


def _decode_string(data: bytes) -> str:
    offset = decode_uint(data, 0)
    if offset % WORD:
        raise AbiError("bad string offset")
    length = decode_uint(data, offset // WORD)
    start = offset + WORD
    if len(data) < start + length:
        raise AbiError("string runs past the data")
    return data[start : start + length].decode("utf-8", errors="replace")


def _format_arg(kind: str, data: bytes, index: int) -> str:
    if kind == "address":
        return decode_address(data, index)
    if kind == "bytes32":
        return to_hex(_word(data, index))
    return str(decode_uint(data, index))


def decode_revert(data: bytes) -> str:
    """Revert data as one readable line: ``Error(string)``'s message, a panic, or the
    vault's (or OpenZeppelin's) custom error with its arguments."""
    if not data:
        return "reverted without a reason"
    selector, body = data[:4], data[4:]
    try:
        if selector == ERROR_STRING:
            return " ".join(_decode_string(body).split()) or "reverted with an empty reason"
        if selector == PANIC:
            code = decode_uint(body)
            return f"panic 0x{code:02x} ({_PANICS.get(code, 'unknown panic')})"
        known = CUSTOM_ERRORS.get(selector)
        if known is not None:
            signature, kinds = known
            name = signature.split("(", 1)[0]
            args = ", ".join(_format_arg(kind, body, i) for i, kind in enumerate(kinds))
            return f"{name}({args})"
    except AbiError:
        pass
    return f"reverted with unknown error data {to_hex(data[:36])}{'...' if len(data) > 36 else ''}"
