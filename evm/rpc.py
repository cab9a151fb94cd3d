"""A small Ethereum JSON-RPC client over ``urllib``, standard library only.

Node processes import this (through `evm.vault`), so no web3, eth-account or eth-abi here.
Every failure is a `ChainError` with a one-line message; every request is bounded by the
client's timeout, so a slow or silent chain fails in bounded time.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from evm.abi import AbiError, decode_revert, from_hex, normalize_address, to_hex

DEFAULT_TIMEOUT: Final = 10.0


class ChainError(Exception):
    """Anything that went wrong talking to the chain, as one line."""


class ChainUnreachable(ChainError):
    """Nothing answers at the RPC URL (refused, no route, bad host)."""


class ChainTimeout(ChainError):
    """The chain did not answer in time."""


class ChainReverted(ChainError):
    """A call or transaction reverted; ``reason`` is the decoded revert, one line."""

    def __init__(self, message: str, *, reason: str, tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.tx_hash = tx_hash


class ChainBadAnswer(ChainError):
    """The chain answered something we could not use (an RPC error or malformed JSON)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    address: str
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    status: bool
    block_number: int
    gas_used: int
    effective_gas_price: int
    logs: tuple[LogEntry, ...]
    contract_address: str | None


@dataclass(frozen=True, slots=True)
class FeeData:
    """What to offer for gas: ``base_fee`` is None on a chain without EIP-1559."""

    gas_price: int
    base_fee: int | None
    max_priority_fee: int

    @property
    def max_fee(self) -> int:
        """A max fee per gas that survives the base fee doubling, plus the tip."""
        if self.base_fee is None:
            return self.gas_price
        return 2 * self.base_fee + self.max_priority_fee


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quantity(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainBadAnswer(f"bad answer: {what} is not a hex quantity: {str(value)[:80]!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise ChainBadAnswer(f"bad answer: {what} is not a hex quantity: {value[:80]!r}") from None


def _data(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ChainBadAnswer(f"bad answer: {what} is not hex data: {str(value)[:80]!r}")
    try:
        return from_hex(value)
    except AbiError:
        raise ChainBadAnswer(f"bad answer: {what} is not hex data: {value[:80]!r}") from None


def _revert_data(error: dict[str, Any]) -> bytes | None:
    """The revert data inside a JSON-RPC error, where nodes put it (``data`` as hex, or
    nested as ``data.data``), or None when there is none."""
    data = error.get("data")
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return from_hex(data)
        except AbiError:
            return None
    return None


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RpcClient:
    """JSON-RPC over HTTP to one chain. Thread-safe (no shared mutable state but a counter)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RPC URL must be http:// or https://: {url!r}")
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.is_loopback = _is_loopback(url)
        """A chain on this machine (a testnet's): no proxy, and its whole history is short."""
        handlers: list[urllib.request.BaseHandler] = []
        if self.is_loopback:
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy a local chain
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"RpcClient({self.url!r}, timeout={self.timeout})"

    # -- transport ---------------------------------------------------------------------

    def request(self, method: str, params: Sequence[Any], *, timeout: float | None = None) -> Any:
        """One JSON-RPC call; its ``result``, or ChainError."""
        limit = self.timeout if timeout is None else max(0.001, timeout)
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        ).encode()
        http_request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with self._opener.open(http_request, timeout=limit) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise ChainBadAnswer(
                f"chain at {self.url} answered {method} with HTTP {e.code} {_one_line(e.reason)}"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ChainTimeout(
                    f"chain at {self.url} did not answer {method} within {limit:g} s"
                ) from None
            raise ChainUnreachable(
                f"chain at {self.url} unreachable: {_one_line(str(e.reason))}"
            ) from None
        except TimeoutError:
            raise ChainTimeout(
                f"chain at {self.url} did not answer {method} within {limit:g} s"
            ) from None
        except OSError as e:
            raise ChainUnreachable(
                f"chain at {self.url} unreachable: {_one_line(str(e))}"
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ChainBadAnswer(
                f"chain at {self.url} answered {method} with non-JSON: {_one_line(raw[:80].decode(errors='replace'))}"
            ) from None
        if not isinstance(answer, dict):
            raise ChainBadAnswer(
                f"chain at {self.url} answered {method} with {type(answer).__name__}"
            )
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ChainBadAnswer(f"{method} failed: {_one_line(str(error))}")
            message = _one_line(str(error.get("message", "")))
            revert = _revert_data(error)
            if revert is not None or "revert" in message.lower():
                reason = decode_revert(revert) if revert is not None else message
                raise ChainReverted(f"{method} reverted: {reason}", reason=reason)
            raise ChainBadAnswer(f"{method} failed: {message} (code {error.get('code')})")
        if "result" not in answer:
            raise ChainBadAnswer(f"chain at {self.url} answered {method} without a result")
        return answer["result"]

    # -- reads -------------------------------------------------------------------------

    def chain_id(self) -> int:
        return _quantity(self.request("eth_chainId", []), "chain id")

    def block_number(self) -> int:
        return _quantity(self.request("eth_blockNumber", []), "block number")

    def get_balance(self, address: str, block: str = "latest") -> int:
        """The native (gas) balance of an address, in wei."""
        result = self.request("eth_getBalance", [normalize_address(address), block])
        return _quantity(result, "balance")

    def call(
        self, to: str, data: bytes, *, sender: str | None = None, block: str | int = "latest"
    ) -> bytes:
        """``eth_call``: the return data, or ChainReverted with the decoded reason."""
        tx: dict[str, str] = {"to": normalize_address(to), "data": to_hex(data)}
        if sender is not None:
            tx["from"] = normalize_address(sender)
        tag = hex(block) if isinstance(block, int) else block
        return _data(self.request("eth_call", [tx, tag]), "call result")

    def get_logs(
        self,
        address: str,
        topics: Sequence[str | None],
        from_block: int = 0,
        to_block: int | str = "latest",
    ) -> list[LogEntry]:
        """``eth_getLogs`` for one contract; ``topics`` as hex strings, None for any."""
        query = {
            "address": normalize_address(address),
            "topics": list(topics),
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block) if isinstance(to_block, int) else to_block,
        }
        result = self.request("eth_getLogs", [query])
        if not isinstance(result, list):
            raise ChainBadAnswer("bad answer: eth_getLogs did not return a list")
        return [self._log(entry) for entry in result]

    def get_transaction_count(self, address: str, block: str = "pending") -> int:
        result = self.request("eth_getTransactionCount", [normalize_address(address), block])
        return _quantity(result, "nonce")

    def gas_price(self) -> int:
        return _quantity(self.request("eth_gasPrice", []), "gas price")

    def fee_data(self) -> FeeData:
        """Gas price, base fee (None without EIP-1559) and a priority fee to offer."""
        gas_price = self.gas_price()
        block = self.request("eth_getBlockByNumber", ["latest", False])
        base_fee = None
        if isinstance(block, dict) and block.get("baseFeePerGas") is not None:
            base_fee = _quantity(block["baseFeePerGas"], "base fee")
        if base_fee is None:
            return FeeData(gas_price=gas_price, base_fee=None, max_priority_fee=0)
        try:
            tip = _quantity(self.request("eth_maxPriorityFeePerGas", []), "priority fee")
        except ChainBadAnswer:
            tip = max(0, gas_price - base_fee)
        return FeeData(gas_price=gas_price, base_fee=base_fee, max_priority_fee=tip)

    def estimate_gas(self, tx: dict[str, Any]) -> int:
        """``eth_estimateGas``; ChainReverted with the decoded reason if it would revert."""
        return _quantity(self.request("eth_estimateGas", [tx]), "gas estimate")

    # -- writes ------------------------------------------------------------------------

    def send_raw_transaction(self, raw: bytes) -> str:
        """Sends a signed transaction; its hash as hex."""
        result = self.request("eth_sendRawTransaction", [to_hex(raw)])
        if not isinstance(result, str):
            raise ChainBadAnswer("bad answer: eth_sendRawTransaction gave no hash")
        return result

    def get_transaction_receipt(
        self, tx_hash: str, *, timeout: float | None = None
    ) -> Receipt | None:
        result = self.request("eth_getTransactionReceipt", [tx_hash], timeout=timeout)
        if result is None:
            return None
        if not isinstance(result, dict):
            raise ChainBadAnswer("bad answer: a receipt is not an object")
        contract = result.get("contractAddress")
        return Receipt(
            tx_hash=str(result.get("transactionHash", tx_hash)),
            status=_quantity(result.get("status"), "receipt status") == 1,
            block_number=_quantity(result.get("blockNumber"), "receipt block"),
            gas_used=_quantity(result.get("gasUsed"), "gas used"),
            effective_gas_price=_quantity(result.get("effectiveGasPrice", "0x0"), "gas price"),
            logs=tuple(self._log(entry) for entry in result.get("logs") or []),
            contract_address=normalize_address(contract) if isinstance(contract, str) else None,
        )

    def wait_for_receipt(
        self, tx_hash: str, timeout: float = 60.0, *, poll_interval: float = 0.05
    ) -> Receipt:
        """Polls until the transaction is mined; ChainTimeout after ``timeout`` seconds and
        ChainReverted (with the decoded reason when the chain tells it) if it reverted."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChainTimeout(f"transaction {tx_hash} not mined within {timeout:g} s")
            receipt = self.get_transaction_receipt(tx_hash, timeout=min(self.timeout, remaining))
            if receipt is not None:
                break
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 1.0)
        if not receipt.status:
            reason = self._revert_reason(tx_hash, receipt.block_number)
            raise ChainReverted(
                f"transaction {tx_hash} reverted: {reason}", reason=reason, tx_hash=tx_hash
            )
        return receipt

    def _revert_reason(self, tx_hash: str, block_number: int) -> str:
        """Why a mined transaction reverted, by replaying it as a call on its block's parent
        state (best effort: 'reason unknown' if the chain will not say)."""
        try:
            tx = self.request("eth_getTransactionByHash", [tx_hash])
            if not isinstance(tx, dict) or not isinstance(tx.get("to"), str):
                return "reason unknown"
            call = {key: tx[key] for key in ("from", "to", "input", "value", "gas") if key in tx}
            if "input" in call:
                call["data"] = call.pop("input")
            self.request("eth_call", [call, hex(max(0, block_number - 1))])
        except ChainReverted as e:
            return e.reason
        except ChainError:
            return "reason unknown"
        return "reason unknown (the replay did not revert)"

    @staticmethod
    def _log(entry: Any) -> LogEntry:
        if not isinstance(entry, dict):
            raise ChainBadAnswer("bad answer: a log is not an object")
        return LogEntry(
            address=normalize_address(str(entry.get("address", ""))),
            topics=tuple(_data(topic, "log topic") for topic in entry.get("topics") or []),
            data=_data(entry.get("data", "0x"), "log data"),
            block_number=_quantity(entry.get("blockNumber"), "log block"),
            tx_hash=str(entry.get("transactionHash", "")),
            log_index=_quantity(entry.get("logIndex"), "log index"),
        )
