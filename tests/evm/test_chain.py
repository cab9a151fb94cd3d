"""Payments on a real local chain (anvil): deploy, pay, read back, earnings, reverts."""

from __future__ import annotations

import json
import os
import time

import pytest

from evm import abi
from evm.local_chain import (
    ANT,
    CLIENT_ADDRESS,
    CLIENT_TOKENS,
    LocalChain,
    new_rewards_address,
    read_evm_json,
)
from evm.rpc import ChainReverted, RpcClient
from evm.vault import PaymentVaultReader
from evm.wallet import InsufficientFunds, Wallet

# anvil's development account #2: gas but no tokens.
POOR_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"


def quote_hash() -> bytes:
    return os.urandom(32)


def test_deployed_and_described_in_evm_json(chain: LocalChain, rpc: RpcClient) -> None:
    facts = read_evm_json(chain.directory)
    for key in (
        "rpc_url",
        "chain_id",
        "token_address",
        "vault_address",
        "client_private_key",
        "anvil_pid",
    ):
        assert key in facts
    assert facts["rpc_url"] == chain.rpc_url
    assert facts["chain_id"] == rpc.chain_id() == 31337
    assert facts["anvil_pid"] == chain.anvil_pid
    assert (chain.directory / "evm.json").stat().st_mode & 0o077 == 0
    for address in (chain.token_address, chain.vault_address):
        assert len(abi.from_hex(rpc.request("eth_getCode", [address, "latest"]))) > 100
    max_batch = rpc.call(chain.vault_address, abi.encode_max_batch())
    assert abi.decode_uint(max_batch) == abi.MAX_BATCH == 256
    assert (
        json.loads((chain.directory / "evm.json").read_text())["client_address"] == CLIENT_ADDRESS
    )


def test_pay_a_batch_then_read_it_back(wallet: Wallet, reader: PaymentVaultReader) -> None:
    nodes = [new_rewards_address() for _ in range(3)]
    payments = [(nodes[i % 3], (i + 1) * ANT, quote_hash()) for i in range(6)]
    before = wallet.token_balance()
    result = wallet.pay_for_quotes(payments)
    assert len(result.tx_hashes) == 1
    assert result.amount_paid == 21 * ANT
    assert result.gas_used > 0
    assert wallet.token_balance() == before - 21 * ANT
    for address, amount, quote in payments:
        assert reader.completed_payment(quote) == (address, amount)
    assert reader.completed_payment(quote_hash()) == (abi.ZERO_ADDRESS, 0)
    assert reader.earned(nodes[0]) == (1 + 4) * ANT
    assert reader.earned(nodes[1]) == (2 + 5) * ANT
    assert reader.token_balance(nodes[2]) == (3 + 6) * ANT
    # Earnings grow incrementally: a second payment to nodes[0] adds to the remembered sum.
    again = wallet.pay_for_quotes([(nodes[0], 10 * ANT, quote_hash())])
    assert again.approve_tx_hash is None, "the first approval covered the whole balance"
    assert reader.earned(nodes[0]) == 15 * ANT
    assert reader.earned(nodes[0]) == 15 * ANT
    # A fresh reader (from block 0) agrees.
    fresh = PaymentVaultReader(reader.rpc, reader.vault_address, reader.token_address)
    assert fresh.earned(nodes[0].upper().replace("0X", "0x")) == 15 * ANT
    assert fresh.earned(new_rewards_address()) == 0
    chunked = PaymentVaultReader(
        reader.rpc, reader.vault_address, reader.token_address, log_block_range=2
    )
    assert chunked.earned(nodes[0]) == 15 * ANT
    # From the head on (a node on a public chain): only what is paid after its first reading.
    from_now = PaymentVaultReader(
        reader.rpc, reader.vault_address, reader.token_address, from_block=-1
    )
    assert from_now.earned(nodes[0]) == 0
    wallet.pay_for_quotes([(nodes[0], 2 * ANT, quote_hash())])
    assert from_now.earned(nodes[0]) == 2 * ANT


def test_large_payments_split_into_batches(wallet: Wallet, reader: PaymentVaultReader) -> None:
    node = new_rewards_address()
    payments = [(node, 1, quote_hash()) for _ in range(abi.MAX_BATCH + 4)]
    result = wallet.pay_for_quotes(payments)
    assert len(result.tx_hashes) == 2
    assert reader.earned(node) == abi.MAX_BATCH + 4
    assert reader.completed_payment(payments[-1][2]) == (node, 1)


def test_gas_of_pay_for_quotes(chain: LocalChain, wallet: Wallet) -> None:
    """payForQuotes alone (the allowance set beforehand); figures for the design notes."""
    wallet.send_transaction(chain.token_address, abi.encode_approve(chain.vault_address, 10**30))
    gas = {}
    for count in (1, 64):
        payments = [(new_rewards_address(), ANT, quote_hash()) for _ in range(count)]
        result = wallet.pay_for_quotes(payments)
        assert result.approve_tx_hash is None
        gas[count] = result.gas_used
    print(f"\npayForQuotes gas: 1 payment {gas[1]}, 64 payments {gas[64]}")
    assert gas[1] < 120_000
    assert gas[64] < 64 * 60_000


def raw_revert(wallet: Wallet, chain: LocalChain, payments: list[tuple[str, int, bytes]]) -> str:
    """Sends a payForQuotes that the chain will mine and revert (fixed gas, no estimate)."""
    with pytest.raises(ChainReverted) as caught:
        wallet.send_transaction(
            chain.vault_address, abi.encode_pay_for_quotes(payments), gas=2_000_000
        )
    assert caught.value.tx_hash is not None
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.reason in message
    return caught.value.reason


def test_reverts_read_clearly(chain: LocalChain, wallet: Wallet) -> None:
    wallet.send_transaction(chain.token_address, abi.encode_approve(chain.vault_address, 10**30))
    node = new_rewards_address()
    assert raw_revert(wallet, chain, []) == "BatchEmpty()"
    many = [(node, 1, quote_hash()) for _ in range(abi.MAX_BATCH + 1)]
    assert raw_revert(wallet, chain, many) == "BatchTooLarge(257, 256)"
    zero = [(node, 1, quote_hash()), (abi.ZERO_ADDRESS, 1, quote_hash())]
    assert raw_revert(wallet, chain, zero) == "ZeroRewardsAddress(1)"
    huge = [(node, 1, quote_hash()), (node, 2**96, quote_hash())]
    assert raw_revert(wallet, chain, huge) == "AmountTooLarge(1)"
    twice = quote_hash()
    assert raw_revert(wallet, chain, [(node, 1, twice), (node, 2, twice)]) == (
        f"QuoteAlreadyPaid({abi.to_hex(twice)})"
    )


def test_a_quote_paid_before_is_refused_before_sending(
    chain: LocalChain, wallet: Wallet, rpc: RpcClient
) -> None:
    node = new_rewards_address()
    paid = quote_hash()
    wallet.pay_for_quotes([(node, ANT, paid)])
    nonce = rpc.get_transaction_count(wallet.address)
    with pytest.raises(
        ChainReverted, match=r"QuoteAlreadyPaid\(0x[0-9a-f]{64}\); nothing was sent"
    ):
        wallet.pay_for_quotes([(node, ANT, paid)])
    assert rpc.get_transaction_count(wallet.address) == nonce
    # eth_call reverts decode too.
    with pytest.raises(ChainReverted, match=r"BatchEmpty\(\)"):
        rpc.call(chain.vault_address, abi.encode_pay_for_quotes([]), sender=wallet.address)


def test_bad_payments_are_refused_before_any_call(wallet: Wallet) -> None:
    node = new_rewards_address()
    same = quote_hash()
    with pytest.raises(ValueError, match="nothing to pay"):
        wallet.pay_for_quotes([])
    with pytest.raises(ValueError, match="zero address"):
        wallet.pay_for_quotes([(abi.ZERO_ADDRESS, 1, quote_hash())])
    with pytest.raises(ValueError, match="given twice"):
        wallet.pay_for_quotes([(node, 1, same), (node, 1, same)])
    with pytest.raises(ValueError, match=r"in \[0, 2\^96\)"):
        wallet.pay_for_quotes([(node, 2**96, quote_hash())])
    with pytest.raises(ValueError, match="32 bytes"):
        wallet.pay_for_quotes([(node, 1, b"short")])


def test_insufficient_balance_is_refused_before_any_transaction(
    chain: LocalChain, rpc: RpcClient
) -> None:
    poor = Wallet(rpc, POOR_KEY, chain.token_address, chain.vault_address)
    nonce = rpc.get_transaction_count(poor.address)
    with pytest.raises(
        InsufficientFunds, match=r"short of the 1000000000000000000 .*nothing was sent"
    ):
        poor.pay_for_quotes([(new_rewards_address(), ANT, quote_hash())])
    assert rpc.get_transaction_count(poor.address) == nonce
    rich = Wallet(rpc, chain.client_private_key, chain.token_address, chain.vault_address)
    nonce = rpc.get_transaction_count(rich.address)
    with pytest.raises(InsufficientFunds):
        rich.pay_for_quotes([(new_rewards_address(), CLIENT_TOKENS + 1, quote_hash())])
    assert rpc.get_transaction_count(rich.address) == nonce


def test_waiting_for_an_unknown_transaction_times_out(rpc: RpcClient) -> None:
    from evm.rpc import ChainTimeout

    started = time.monotonic()
    with pytest.raises(ChainTimeout, match=r"not mined within 0\.3 s"):
        rpc.wait_for_receipt("0x" + "00" * 32, timeout=0.3)
    assert time.monotonic() - started < 1.5
