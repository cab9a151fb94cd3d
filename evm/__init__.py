"""The EVM side of payments: ABI bits, a light JSON-RPC client, the vault reader used by
nodes, the client's wallet, network presets and a local chain (anvil) for the testnet.

Node processes import only `evm.abi`, `evm.rpc`, `evm.vault` and `evm.networks`, which use
the standard library alone; `evm.wallet` loads eth-account lazily, on the client side.
"""
