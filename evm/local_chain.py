"""A local chain for the testnet and the tests: anvil (Foundry's dev chain), with the ANT
token and the PaymentVault deployed and a funded client wallet.

anvil is a binary inside the npm package ``@foundry-rs/anvil-linux-<arch>`` that
``make install`` puts under ``contracts/node_modules`` (``ANVIL_BIN`` overrides the path).
It runs in its own session, so it outlives the command that started it;
`stop_local_chain` ends it by the pid written in ``<directory>/evm.json``.

Everything here is local only: the keys are anvil's well-known development keys (from
its default mnemonic), which must never hold anything of value.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from evm.abi import encode_address, encode_transfer, encode_uint, normalize_address, to_hex
from evm.networks import EvmSettings
from evm.rpc import ChainError, RpcClient

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
CONTRACTS_DIR: Final = REPO_ROOT / "contracts"
BUILD_DIR: Final = CONTRACTS_DIR / "build"
EVM_JSON: Final = "evm.json"

# anvil's default mnemonic ("test test ... junk"): accounts 0 and 1. Local chains only.
DEPLOYER_KEY: Final = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEPLOYER_ADDRESS: Final = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
CLIENT_KEY: Final = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
CLIENT_ADDRESS: Final = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"

ANT: Final = 10**18  # one token in its smallest unit (18 decimals)
TOTAL_SUPPLY: Final = 1_200_000_000 * ANT
CLIENT_TOKENS: Final = 1_000_000 * ANT
CHAIN_ID: Final = 31337

_READY_TIMEOUT: Final = 15.0


class LocalChainError(ChainError):
    """The local chain could not be started, set up or found (one line)."""


@dataclass
class LocalChain:
    """A running anvil with the contracts deployed; `stop` ends it."""

    directory: Path
    rpc_url: str
    chain_id: int
    token_address: str
    vault_address: str
    client_private_key: str
    client_address: str
    anvil_pid: int
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def settings(self) -> EvmSettings:
        return EvmSettings(
            rpc_url=self.rpc_url,
            chain_id=self.chain_id,
            token_address=self.token_address,
            vault_address=self.vault_address,
            network="local",
        )

    def rpc(self, *, timeout: float = 10.0) -> RpcClient:
        return RpcClient(self.rpc_url, timeout=timeout)

    def stop(self) -> None:
        """Ends this anvil (SIGTERM, then SIGKILL); quiet if it is already gone."""
        if self.process is not None:
            _terminate(self.anvil_pid, self.process)
        else:
            stop_local_chain(self.directory)


def anvil_binary() -> Path:
    """Where anvil is: ``$ANVIL_BIN``, else inside the npm package for this machine."""
    override = os.environ.get("ANVIL_BIN")
    if override:
        return Path(override)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return CONTRACTS_DIR / "node_modules" / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"


def load_artifact(name: str) -> dict[str, Any]:
    """A compiled contract from ``contracts/build`` (abi and bytecode)."""
    path = BUILD_DIR / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LocalChainError(f"cannot read the compiled contract {path}: {e}") from None
    return artifact


def new_rewards_address() -> str:
    """A random lowercase 0x address (a testnet node's rewards address; nobody holds its key)."""
    return to_hex(secrets.token_bytes(20))


def read_evm_json(directory: Path) -> dict[str, Any]:
    """The chain facts a started local chain wrote; LocalChainError if there are none."""
    path = Path(directory) / EVM_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalChainError(f"no local chain in {directory} (no {EVM_JSON})") from None
    except (OSError, ValueError) as e:
        raise LocalChainError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise LocalChainError(f"{path} is not a JSON object")
    return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _launch(binary: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(CHAIN_ID),
        "--quiet",
    ]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `testnet start`; stopped by pid
        )


def _wait_ready(process: subprocess.Popen[bytes], rpc: RpcClient, log_path: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise LocalChainError(f"anvil exited with code {process.returncode}: {tail[0][:200]}")
        try:
            rpc.chain_id()
        except ChainError:
            time.sleep(0.02)
            continue
        return
    raise LocalChainError(f"anvil did not answer within {_READY_TIMEOUT:g} s")


def _send(rpc: RpcClient, tx: dict[str, str]) -> dict[str, Any]:
    """A transaction from anvil's unlocked development account #0; its receipt as a dict."""
    tx_hash = rpc.request("eth_sendTransaction", [{"from": DEPLOYER_ADDRESS, **tx}])
    receipt = rpc.wait_for_receipt(str(tx_hash), timeout=30.0)
    return {"contract_address": receipt.contract_address, "gas_used": receipt.gas_used}


def _deploy(rpc: RpcClient, client_tokens: int) -> tuple[str, str]:
    token_code = load_artifact("Token")["bytecode"]
    vault_code = load_artifact("PaymentVault")["bytecode"]
    token = _send(
        rpc,
        {"data": token_code + (encode_address(DEPLOYER_ADDRESS) + encode_uint(TOTAL_SUPPLY)).hex()},
    )["contract_address"]
    if token is None:
        raise LocalChainError("the token deployment created no contract")
    vault = _send(rpc, {"data": vault_code + encode_address(token).hex()})["contract_address"]
    if vault is None:
        raise LocalChainError("the vault deployment created no contract")
    _send(rpc, {"to": token, "data": to_hex(encode_transfer(CLIENT_ADDRESS, client_tokens))})
    return token, vault


def _set_up(
    directory: Path,
    binary: Path,
    rpc: RpcClient,
    process: subprocess.Popen[bytes],
    port: int,
    client_tokens: int,
) -> LocalChain:
    chain_id = rpc.chain_id()
    token, vault = _deploy(rpc, client_tokens)
    chain = LocalChain(
        directory=directory,
        rpc_url=rpc.url,
        chain_id=chain_id,
        token_address=normalize_address(token),
        vault_address=normalize_address(vault),
        client_private_key=CLIENT_KEY,
        client_address=CLIENT_ADDRESS,
        anvil_pid=process.pid,
        port=port,
        process=process,
    )
    facts = {
        "rpc_url": chain.rpc_url,
        "chain_id": chain.chain_id,
        "token_address": chain.token_address,
        "vault_address": chain.vault_address,
        "client_private_key": chain.client_private_key,
        "client_address": chain.client_address,
        "anvil_pid": chain.anvil_pid,
        "port": chain.port,
        "anvil_binary": str(binary),
    }
    path = directory / EVM_JSON
    temporary = path.with_suffix(".json.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a key
    with os.fdopen(fd, "w") as f:
        json.dump(facts, f, indent=2)
        f.write("\n")
    temporary.replace(path)
    return chain


def start_local_chain(
    directory: Path, *, port: int | None = None, client_tokens: int = CLIENT_TOKENS
) -> LocalChain:
    """Starts anvil on 127.0.0.1 (``port``, or a free one), deploys the token and the vault,
    gives the client wallet (anvil account #1) ``client_tokens`` (it has gas already), and
    writes ``directory/evm.json``. LocalChainError if anvil is missing or will not start."""
    directory = Path(directory)
    binary = anvil_binary()
    if not binary.is_file():
        raise LocalChainError(f"anvil not found at {binary} (run make install)")
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "anvil.log"
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else _free_port()
        process = _launch(binary, chosen, log_path)
        rpc = RpcClient(f"http://127.0.0.1:{chosen}", timeout=5.0)
        try:
            _wait_ready(process, rpc, log_path)
            break
        except LocalChainError:
            _terminate(process.pid, process)
            if attempt == attempts - 1:
                raise
    try:
        chain = _set_up(directory, binary, rpc, process, chosen, client_tokens)
    except BaseException as e:
        _terminate(process.pid, process)
        if isinstance(e, ChainError) and not isinstance(e, LocalChainError):
            raise LocalChainError(f"setting up the local chain failed: {e}") from None
        raise
    return chain


def _is_anvil(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"anvil" in cmdline.split(b"\0", 1)[0]


def _gone(pid: int, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        return process.poll() is not None
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return not _is_anvil(pid)  # a zombie or a reused pid no longer runs anvil


def _terminate(
    pid: int, process: subprocess.Popen[bytes] | None = None, *, grace: float = 3.0
) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; quiet if it is already gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if _gone(pid, process):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid, process):
                return
            time.sleep(0.02)


def stop_local_chain(directory: Path) -> bool:
    """Stops the anvil that ``directory/evm.json`` names; False if none was running there."""
    try:
        facts = read_evm_json(directory)
    except LocalChainError:
        return False
    pid = facts.get("anvil_pid")
    if not isinstance(pid, int) or pid <= 0 or not _is_anvil(pid):
        return False
    _terminate(pid)
    return True
