"""What needs no running chain: dead and silent chains, key files, network presets, and
starting and stopping a chain without anvil."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evm.local_chain import (
    LocalChainError,
    read_evm_json,
    start_local_chain,
    stop_local_chain,
)
from evm.networks import EvmSettingsError, resolve_settings
from evm.rpc import ChainTimeout, ChainUnreachable, RpcClient
from evm.vault import PaymentVaultReader
from evm.wallet import WalletKeyError, address_of, load_private_key

KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_a_dead_chain_fails_fast_with_one_line() -> None:
    rpc = RpcClient(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    reader = PaymentVaultReader(rpc, "0x" + "11" * 20, "0x" + "22" * 20)
    started = time.monotonic()
    with pytest.raises(
        ChainUnreachable, match=r"^chain at http://127\.0\.0\.1:\d+ unreachable: .*refused"
    ):
        reader.completed_payment(b"\x00" * 32)
    with pytest.raises(ChainUnreachable):
        reader.earned("0x" + "33" * 20)
    assert time.monotonic() - started < 2.0


def test_a_silent_chain_fails_within_the_timeout(silent_server: int) -> None:
    rpc = RpcClient(f"http://127.0.0.1:{silent_server}", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ChainTimeout, match=r"did not answer eth_chainId within 0\.5 s"):
        rpc.chain_id()
    assert time.monotonic() - started < 2.0


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "key"
    for text in (KEY, "0x" + KEY, f"  0x{KEY.upper()}\n", f"{KEY[:30]}\n{KEY[30:]}\n"):
        path.write_text(text)
        assert load_private_key(path) == "0x" + KEY
    assert address_of("0x" + KEY) == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    for bad in ("", KEY[:-1], KEY + "00", "zz" + KEY[2:], "0" * 64):
        path.write_text(bad)
        with pytest.raises(WalletKeyError, match=r"^key file .*key: ") as caught:
            load_private_key(path)
        assert KEY[:10] not in str(caught.value)
    with pytest.raises(WalletKeyError, match="No such file"):
        load_private_key(tmp_path / "missing")


def test_network_presets_and_overrides() -> None:
    one = resolve_settings("arbitrum-one")
    assert one.chain_id == 42161
    assert one.rpc_url.startswith("https://")
    assert one.vault_address.startswith("0x") and len(one.vault_address) == 42
    sepolia = resolve_settings("arbitrum-sepolia", rpc_url="https://example.invalid/rpc")
    assert sepolia.rpc_url == "https://example.invalid/rpc" and sepolia.chain_id == 421614
    local = resolve_settings(
        "local",
        rpc_url="http://127.0.0.1:8545",
        token_address="0x" + "AA" * 20,
        vault_address="0x" + "bb" * 20,
    )
    assert local.token_address == "0x" + "aa" * 20 and local.chain_id == 31337
    with pytest.raises(
        EvmSettingsError, match="needs an RPC URL and the token address and the vault address"
    ):
        resolve_settings("local")
    with pytest.raises(EvmSettingsError, match="unknown EVM network 'mainnet'"):
        resolve_settings("mainnet")
    with pytest.raises(EvmSettingsError, match="not an address"):
        resolve_settings(
            "custom", rpc_url="http://x", token_address="0x12", vault_address="0x" + "bb" * 20
        )
    with pytest.raises(ValueError):
        resolve_settings(
            "custom",
            rpc_url="ftp://x",
            token_address="0x" + "aa" * 20,
            vault_address="0x" + "bb" * 20,
        )


def test_missing_anvil_says_run_make_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANVIL_BIN", str(tmp_path / "no-anvil"))
    with pytest.raises(LocalChainError, match="run make install"):
        start_local_chain(tmp_path / "chain")


def test_stop_tolerates_no_chain_and_a_dead_one(tmp_path: Path) -> None:
    assert stop_local_chain(tmp_path) is False
    with pytest.raises(LocalChainError, match="no local chain"):
        read_evm_json(tmp_path)
    chain = start_local_chain(tmp_path / "chain")
    assert RpcClient(chain.rpc_url).block_number() >= 3
    assert stop_local_chain(tmp_path / "chain") is True
    assert stop_local_chain(tmp_path / "chain") is False
    chain.stop()  # already gone: quiet
    with pytest.raises(ChainUnreachable):
        RpcClient(chain.rpc_url, timeout=1.0).chain_id()
