"""The committed contract build matches a fresh compile, and node processes stay light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from evm.local_chain import BUILD_DIR, CONTRACTS_DIR

REPO = Path(__file__).parents[2]


def test_committed_build_matches_a_fresh_compile(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed (apt-get install nodejs npm)"
    assert (CONTRACTS_DIR / "node_modules" / "solc").is_dir(), "run make install"
    result = subprocess.run(
        [node, str(CONTRACTS_DIR / "compile.js"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == ["PaymentVault.json", "Token.json"]
    for name in built:
        assert (tmp_path / name).read_bytes() == (BUILD_DIR / name).read_bytes(), (
            f"contracts/build/{name} is stale: run node contracts/compile.js and commit it"
        )


def test_node_side_modules_import_no_heavy_ethereum_libraries() -> None:
    code = (
        "import sys\n"
        "import evm.abi, evm.rpc, evm.vault, evm.networks, evm.local_chain, evm.wallet\n"
        "heavy = ('eth_account', 'eth_abi', 'eth_utils', 'eth_keys', 'eth_hash', 'pydantic', 'web3')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
