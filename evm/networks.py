"""Which chain to pay on: an RPC URL, the chain id, the token and the vault.

Presets:

- ``local``: the testnet's own anvil chain. Its RPC URL and addresses are not known in
  advance: they come from the testnet directory's ``evm.json`` (see `evm.local_chain`)
  or from overrides.
- ``arbitrum-one`` (chain 42161) and ``arbitrum-sepolia`` (chain 421614): the public RPC
  URLs and Autonomi's published ANT token and data-payments vault addresses, as
  Autonomi's evmlib lists them. Our client speaks the ``payForQuotes`` /
  ``completedPayments`` / ``DataPaymentMade`` interface of this project's vault; we have not
  checked those deployed contracts' ABI byte for byte (Autonomi's newer vaults add
  functions), so a real deployment should check it before it pays.

Nothing here talks to a chain; `resolve_settings` only fills in and checks the values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from evm.abi import AbiError, normalize_address


class EvmSettingsError(ValueError):
    """The settings lack something needed, or hold something malformed (one line)."""


@dataclass(frozen=True, slots=True)
class EvmSettings:
    rpc_url: str
    chain_id: int | None
    token_address: str
    vault_address: str
    network: str = "custom"


PRESETS: Final[dict[str, EvmSettings]] = {
    "local": EvmSettings(
        rpc_url="", chain_id=31337, token_address="", vault_address="", network="local"
    ),
    "arbitrum-one": EvmSettings(
        rpc_url="https://arb1.arbitrum.io/rpc",
        chain_id=42161,
        token_address="0xa78d8321b20c4ef90ecd72f2588aa985a4bdb684",
        vault_address="0xb1b5219f8aaa18037a2506626dd0406a46f70bcc",
        network="arbitrum-one",
    ),
    "arbitrum-sepolia": EvmSettings(
        rpc_url="https://sepolia-rollup.arbitrum.io/rpc",
        chain_id=421614,
        token_address="0x4bc1ace0e66170375462cb4e6af42ad4d5ec689c",
        vault_address="0x7f0842a78f7d4085d975ba91d630d680f91b1295",
        network="arbitrum-sepolia",
    ),
}


def resolve_settings(
    network: str = "local",
    *,
    rpc_url: str | None = None,
    chain_id: int | None = None,
    token_address: str | None = None,
    vault_address: str | None = None,
) -> EvmSettings:
    """The preset named ``network`` ("local", "arbitrum-one", "arbitrum-sepolia", or
    "custom" for none) with the given overrides; EvmSettingsError if the RPC URL, the token
    or the vault is still missing, or an address or URL is malformed."""
    if network == "custom":
        base = EvmSettings(rpc_url="", chain_id=None, token_address="", vault_address="")
    elif network in PRESETS:
        base = PRESETS[network]
    else:
        known = ", ".join([*PRESETS, "custom"])
        raise EvmSettingsError(f"unknown EVM network {network!r} (known: {known})")
    settings = replace(
        base,
        rpc_url=rpc_url if rpc_url is not None else base.rpc_url,
        chain_id=chain_id if chain_id is not None else base.chain_id,
        token_address=token_address if token_address is not None else base.token_address,
        vault_address=vault_address if vault_address is not None else base.vault_address,
    )
    missing = [
        flag
        for flag, value in (
            ("an RPC URL", settings.rpc_url),
            ("the token address", settings.token_address),
            ("the vault address", settings.vault_address),
        )
        if not value
    ]
    if missing:
        hint = " (start the local chain, or read them from the testnet's evm.json)"
        raise EvmSettingsError(
            f"EVM network {network!r} needs {' and '.join(missing)}"
            + (hint if network == "local" else "")
        )
    if not settings.rpc_url.startswith(("http://", "https://")):
        raise EvmSettingsError(f"RPC URL must be http:// or https://: {settings.rpc_url!r}")
    try:
        token = normalize_address(settings.token_address)
        vault = normalize_address(settings.vault_address)
    except AbiError as e:
        raise EvmSettingsError(str(e)) from None
    return replace(settings, token_address=token, vault_address=vault)
