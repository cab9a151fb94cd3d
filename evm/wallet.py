"""The client's wallet: pays nodes' quotes through the PaymentVault.

Client side only. Signing needs eth-account, which is heavy (about +20 MB), so it is
imported inside the functions that sign, never at module import: importing this module
costs no more than `evm.rpc`.

Keys come from a key file (`load_private_key`), never from the command line.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evm.abi import (
    MAX_BATCH,
    ZERO_ADDRESS,
    AbiError,
    decode_uint,
    encode_allowance,
    encode_approve,
    encode_balance_of,
    encode_pay_for_quotes,
    normalize_address,
    to_hex,
)
from evm.rpc import ChainBadAnswer, ChainError, ChainReverted, Receipt, RpcClient

# secp256k1's group order: a private key is an integer in [1, N).
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# The vault keeps an amount in 96 bits (one storage slot per paid quote).
MAX_AMOUNT = (1 << 96) - 1

# Gas limit = estimate x this (estimates can be a little short when state moves).
GAS_MARGIN = 1.25


class WalletKeyError(ValueError):
    """A key file that is missing, unreadable or not a private key (one line, no key)."""


class InsufficientFunds(ChainError):
    """The wallet holds too few tokens (or no gas) for the payment; nothing was sent."""


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """What a payment did: the payForQuotes transactions (one per batch), the approval
    sent first if the allowance was short, the gas all of them used and the tokens paid."""

    tx_hashes: tuple[str, ...]
    approve_tx_hash: str | None
    gas_used: int
    amount_paid: int


def parse_private_key(text: str, *, source: str = "key") -> str:
    """A private key as ``0x`` + 64 lowercase hex digits; WalletKeyError if malformed."""
    body = "".join(text.split())
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    problem = f"{source}: not a private key (want 64 hex digits, 0x optional)"
    if len(body) != 64:
        raise WalletKeyError(problem)
    try:
        value = int(body, 16)
    except ValueError:
        raise WalletKeyError(problem) from None
    if not 0 < value < _SECP256K1_N:
        raise WalletKeyError(f"{source}: private key out of range")
    return "0x" + body.lower()


def load_private_key(path: Path | str) -> str:
    """Reads a key file (hex, 0x optional, whitespace tolerated): ``0x`` + 64 hex digits."""
    key_path = Path(path)
    try:
        text = key_path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise WalletKeyError(f"key file {key_path}: {e.strerror or e}") from None
    return parse_private_key(text, source=f"key file {key_path}")


def address_of(private_key: str) -> str:
    """The lowercase address of a private key."""
    from eth_account import Account

    return normalize_address(Account.from_key(parse_private_key(private_key)).address)


class Wallet:
    """A funded account that pays quotes: approves the vault when needed, pays in batches of
    at most ``MAX_BATCH`` payments, signs locally, sends raw transactions and waits for them.

    One payment at a time per wallet (a lock keeps nonces in order)."""

    def __init__(
        self,
        rpc: RpcClient,
        private_key: str,
        token_address: str,
        vault_address: str,
        *,
        chain_id: int | None = None,
        legacy: bool = False,
        receipt_timeout: float = 120.0,
    ) -> None:
        self.rpc = rpc
        self._key = parse_private_key(private_key)
        self.address = address_of(self._key)
        self.token_address = normalize_address(token_address)
        self.vault_address = normalize_address(vault_address)
        self._chain_id = chain_id
        self._legacy = legacy
        self.receipt_timeout = receipt_timeout
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"Wallet({self.address}, rpc={self.rpc.url!r})"

    # -- reads -------------------------------------------------------------------------

    def token_balance(self) -> int:
        return self._read_uint(self.token_address, encode_balance_of(self.address), "balanceOf")

    def allowance(self) -> int:
        """How much the vault may still move from this wallet."""
        data = encode_allowance(self.address, self.vault_address)
        return self._read_uint(self.token_address, data, "allowance")

    def gas_balance(self) -> int:
        return self.rpc.get_balance(self.address)

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.rpc.chain_id()
        return self._chain_id

    # -- payments ----------------------------------------------------------------------

    def pay_for_quotes(self, payments: Sequence[tuple[str, int, bytes]]) -> PaymentResult:
        """Pays each (rewards address, amount, 32-byte quote hash).

        Checked before anything is sent: the payments themselves (ValueError), the token
        balance and some gas (InsufficientFunds). Then an approval if the allowance is
        short, and one payForQuotes per batch; each is estimated first, so a payment the
        vault would refuse (a quote already paid) fails before it is sent (ChainReverted).
        """
        checked = _check_payments(payments)
        total = sum(amount for _address, amount, _hash in checked)
        with self._lock:
            chain_id = self.chain_id()
            balance = self.token_balance()
            if balance < total:
                raise InsufficientFunds(
                    f"wallet {self.address} holds {balance} token units, short of the "
                    f"{total} these {len(checked)} payments need; nothing was sent"
                )
            if self.gas_balance() == 0:
                raise InsufficientFunds(
                    f"wallet {self.address} has no gas (native balance 0); nothing was sent"
                )
            nonce = self.rpc.get_transaction_count(self.address, "pending")
            gas_used = 0
            approve_hash = None
            if self.allowance() < total:
                # Allow the vault the whole balance at once: later batches need no approval
                # (one transaction and its wait less each). The vault only ever moves tokens
                # of the sender of a payForQuotes, to the rewards addresses it names.
                receipt = self._transact(
                    self.token_address,
                    encode_approve(self.vault_address, max(total, balance)),
                    nonce,
                    chain_id,
                )
                approve_hash, nonce = receipt.tx_hash, nonce + 1
                gas_used += receipt.gas_used
            hashes = []
            for start in range(0, len(checked), MAX_BATCH):
                batch = checked[start : start + MAX_BATCH]
                receipt = self._transact(
                    self.vault_address, encode_pay_for_quotes(batch), nonce, chain_id
                )
                hashes.append(receipt.tx_hash)
                nonce += 1
                gas_used += receipt.gas_used
            return PaymentResult(
                tx_hashes=tuple(hashes),
                approve_tx_hash=approve_hash,
                gas_used=gas_used,
                amount_paid=total,
            )

    def send_transaction(self, to: str, data: bytes, *, gas: int | None = None) -> Receipt:
        """Signs and sends one call to a contract and waits for it (no checks: the
        chain's revert reason comes back as ChainReverted). ``gas`` skips the estimate."""
        with self._lock:
            nonce = self.rpc.get_transaction_count(self.address, "pending")
            return self._transact(normalize_address(to), data, nonce, self.chain_id(), gas=gas)

    # -- internals ---------------------------------------------------------------------

    def _read_uint(self, to: str, data: bytes, what: str) -> int:
        try:
            return decode_uint(self.rpc.call(to, data))
        except AbiError as e:
            raise ChainBadAnswer(f"bad answer from {what}: {e}") from None

    def _transact(
        self, to: str, data: bytes, nonce: int, chain_id: int, *, gas: int | None = None
    ) -> Receipt:
        if gas is None:
            try:
                estimate = self.rpc.estimate_gas(
                    {"from": self.address, "to": to, "data": to_hex(data), "value": "0x0"}
                )
            except ChainReverted as e:
                raise ChainReverted(
                    f"the chain refuses the transaction to {to}: {e.reason}; nothing was sent",
                    reason=e.reason,
                ) from None
            gas = int(estimate * GAS_MARGIN) + 1
        tx: dict[str, Any] = {
            "chainId": chain_id,
            "nonce": nonce,
            "to": to,
            "value": 0,
            "data": to_hex(data),
            "gas": gas,
        }
        fees = self.rpc.fee_data()
        if self._legacy or fees.base_fee is None:
            tx["gasPrice"] = fees.gas_price
        else:
            tx["type"] = 2
            tx["maxFeePerGas"] = fees.max_fee
            tx["maxPriorityFeePerGas"] = fees.max_priority_fee
        raw = _sign(tx, self._key)
        tx_hash = self.rpc.send_raw_transaction(raw)
        return self.rpc.wait_for_receipt(tx_hash, self.receipt_timeout)


def _sign(tx: dict[str, Any], key: str) -> bytes:
    from eth_account import Account
    from eth_utils.address import to_checksum_address

    signed = Account.sign_transaction({**tx, "to": to_checksum_address(tx["to"])}, key)
    return bytes(signed.raw_transaction)


def _check_payments(payments: Sequence[tuple[str, int, bytes]]) -> list[tuple[str, int, bytes]]:
    if not payments:
        raise ValueError("nothing to pay: no payments given")
    checked = []
    seen: set[bytes] = set()
    for index, (rewards_address, amount, quote_hash) in enumerate(payments):
        try:
            address = normalize_address(rewards_address)
        except AbiError as e:
            raise ValueError(f"payment {index}: {e}") from None
        if address == ZERO_ADDRESS:
            raise ValueError(f"payment {index}: the rewards address is the zero address")
        if not isinstance(amount, int) or not 0 <= amount <= MAX_AMOUNT:
            raise ValueError(f"payment {index}: amount must be in [0, 2^96), got {amount!r}")
        if len(quote_hash) != 32:
            raise ValueError(f"payment {index}: a quote hash is 32 bytes, got {len(quote_hash)}")
        if quote_hash in seen:
            raise ValueError(f"payment {index}: quote hash {to_hex(quote_hash)} given twice")
        seen.add(bytes(quote_hash))
        checked.append((address, amount, bytes(quote_hash)))
    return checked
