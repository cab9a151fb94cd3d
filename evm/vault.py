"""What nodes read from the chain: completed payments, their earnings, token balances.

Light on purpose (standard library only, through `evm.rpc` and `evm.abi`): every node
process imports this.
"""

from __future__ import annotations

import threading

from evm.abi import (
    DATA_PAYMENT_MADE_TOPIC,
    AbiError,
    address_topic,
    decode_completed_payment,
    decode_data_payment_made,
    decode_uint,
    encode_balance_of,
    encode_completed_payments,
    normalize_address,
    to_hex,
)
from evm.rpc import ChainBadAnswer, RpcClient


class PaymentVaultReader:
    """Read-only view of one PaymentVault (and its token) through an `RpcClient`.

    `earned` sums the ``DataPaymentMade`` logs to a rewards address; it remembers how far it
    has read for each address and reads only the newer blocks next time. ``from_block`` is
    where the vault was deployed (0 on a local chain), or -1: from the head block at the
    first reading on (a node on a public chain counts what it earns while it runs, without
    reading the chain's whole history); ``log_block_range`` splits log
    queries into spans of that many blocks, for public RPCs that limit ``eth_getLogs``.
    """

    def __init__(
        self,
        rpc: RpcClient,
        vault_address: str,
        token_address: str,
        *,
        from_block: int = 0,
        log_block_range: int | None = None,
    ) -> None:
        if log_block_range is not None and log_block_range < 1:
            raise ValueError("log_block_range must be at least 1")
        self.rpc = rpc
        self.log_block_range = log_block_range
        self.vault_address = normalize_address(vault_address)
        self.token_address = normalize_address(token_address)
        self._from_block = from_block
        self._earned: dict[str, tuple[int, int]] = {}  # address -> (next block, total)
        self._lock = threading.Lock()

    def completed_payment(self, quote_hash: bytes) -> tuple[str, int]:
        """(rewards address, amount) paid for a quote hash; the zero address and 0 if unpaid."""
        data = self.rpc.call(self.vault_address, encode_completed_payments(quote_hash))
        try:
            return decode_completed_payment(data)
        except AbiError as e:
            raise ChainBadAnswer(f"bad answer from completedPayments: {e}") from None

    def token_balance(self, address: str) -> int:
        """The token balance of an address, in the token's smallest unit."""
        data = self.rpc.call(self.token_address, encode_balance_of(address))
        try:
            return decode_uint(data)
        except AbiError as e:
            raise ChainBadAnswer(f"bad answer from balanceOf: {e}") from None

    def earned(self, rewards_address: str) -> int:
        """Everything the vault has paid to ``rewards_address`` (sum of its DataPaymentMade
        amounts), reading only the blocks not read before."""
        address = normalize_address(rewards_address)
        head = self.rpc.block_number()
        with self._lock:
            if self._from_block < 0:  # "from now on": past the head at the first reading
                self._from_block = head + 1
            next_block, total = self._earned.get(address, (self._from_block, 0))
        if head < next_block:
            return total
        topics: list[str | None] = [to_hex(DATA_PAYMENT_MADE_TOPIC), address_topic(address)]
        span = self.log_block_range or head - next_block + 1
        added = 0
        for start in range(next_block, head + 1, span):
            logs = self.rpc.get_logs(
                self.vault_address, topics, from_block=start, to_block=min(head, start + span - 1)
            )
            for log in logs:
                try:
                    paid_to, amount, _quote_hash = decode_data_payment_made(log.topics)
                except AbiError as e:
                    raise ChainBadAnswer(f"bad DataPaymentMade log: {e}") from None
                if paid_to == address:
                    added += amount
        with self._lock:
            # Another thread may have read the same range meanwhile: keep the further one.
            current = self._earned.get(address, (self._from_block, 0))
            if current[0] <= next_block:
                self._earned[address] = (head + 1, total + added)
                return total + added
            return current[1]
