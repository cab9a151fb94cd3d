"""A real local chain (anvil) per test module, stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evm.local_chain import LocalChain, start_local_chain
from evm.rpc import RpcClient
from evm.vault import PaymentVaultReader
from evm.wallet import Wallet


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalChain]:
    started = start_local_chain(tmp_path_factory.mktemp("chain"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def rpc(chain: LocalChain) -> RpcClient:
    return RpcClient(chain.rpc_url, timeout=5.0)


@pytest.fixture
def wallet(chain: LocalChain, rpc: RpcClient) -> Wallet:
    return Wallet(rpc, chain.client_private_key, chain.token_address, chain.vault_address)


@pytest.fixture
def reader(chain: LocalChain, rpc: RpcClient) -> PaymentVaultReader:
    return PaymentVaultReader(rpc, chain.vault_address, chain.token_address)
