"""A dishonest node for the storage-audit system tests and benchmark: the shipped node,
monkeypatched in this process only, then started by the CLI's own ``main``.

    python tests/system/dishonest_node.py run --root-dir DIR --local --peer ADDR ...
    python -m tests.system.dishonest_node run ...

Everything after the script name is the ``autonomi-actors`` command line. The shipped
code has no switch for any of this; the behaviour is chosen by environment variables:

- ``DISHONEST_DROP`` (default 1.0): the fraction of chunks whose bytes are dropped.
  A PUT or a replica is acknowledged and its metadata row kept, but no file is written
  (``dropped(address, fraction)`` decides, the same way every time, so a test can
  tell which chunks are gone).
- ``DISHONEST_MODE``: how the loss is hidden when the node is challenged.
  ``liar`` (default): a made-up 32-byte proof for each dropped chunk.
  ``lazy``: ``MISSING``, and chunks it is offered back are acknowledged, never fetched.

In both modes the node never notices or repairs the loss (``ChunkKeeper._lose`` keeps
the row and fetches nothing) and serves ``NotFound`` for a dropped chunk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.testnet import NodeEntry

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("liar", "lazy")


def dropped(address: bytes, fraction: float) -> bool:
    """Whether a node dropping ``fraction`` of its chunks drops this one (the address is
    a hash already: its last byte is uniform)."""
    return address[-1] < round(fraction * 256)


def patch(mode: str, fraction: float) -> None:
    """Make the shipped node of this process dishonest (see the module docstring)."""
    if mode not in MODES:
        raise SystemExit(f"DISHONEST_MODE must be one of {MODES}, not {mode!r}")
    from actors import chunk_keeper, replicator
    from persistence.chunk_files import ChunkFiles
    from protocol.audit import MISSING, answer
    from protocol.wire import STORAGE_PROOF_BYTES

    honest_write = ChunkFiles.write

    def write(self: ChunkFiles, address: bytes, content: Any) -> None:
        if dropped(address, fraction):
            return  # acknowledged, metadata kept, bytes gone
        honest_write(self, address, content)

    def lose(self: Any, record: Any, why: str) -> None:
        del self, record, why  # pretend nothing happened: no quarantine, no refetch

    ChunkFiles.write = write  # type: ignore[method-assign]
    chunk_keeper.ChunkKeeper._lose = lose  # type: ignore[method-assign]

    if mode == "liar":

        def lying_answer(
            nonce: bytes,
            own_id: bytes,
            addresses: Sequence[bytes],
            content_of: Callable[[bytes], bytes | None],
            responsible: Container[bytes],
        ) -> list[bytes]:
            answers = answer(nonce, own_id, addresses, content_of, responsible)
            return [os.urandom(STORAGE_PROOF_BYTES) if a == MISSING else a for a in answers]

        chunk_keeper.answer = lying_answer  # type: ignore[attr-defined]
    else:

        def claimed(self: Any, peer_id: bytes, missing: Sequence[bytes]) -> int:
            del self, peer_id
            return len(missing)  # "yes, I will fetch them": and never does

        replicator.Replicator._claimed = claimed  # type: ignore[method-assign]
    print(
        f"dishonest node: mode {mode}, dropping {fraction:.0%} of the chunks",
        file=sys.stderr,
        flush=True,
    )


def spawn(root: Path, mode: str, drop: float, bootstrap: str, args: Sequence[str]) -> NodeEntry:
    """Start this script as a node process in ``root`` that joins through ``bootstrap``
    (with the node flags ``args``); its entry once it has joined."""
    from cli.testnet import _wait_joined

    root.mkdir(parents=True)
    log = (root / "node.out").open("ab")
    env = {**os.environ, "DISHONEST_MODE": mode, "DISHONEST_DROP": str(drop)}
    proc = subprocess.Popen(
        [
            *(sys.executable, __file__, "run", "--root-dir", str(root), "--local"),
            *("--peer", bootstrap, *args),
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    return _wait_joined(proc, root, need_peers=True, deadline=time.monotonic() + 60)


def main(argv: Sequence[str] | None = None) -> int:
    patch(os.environ.get("DISHONEST_MODE", "liar"), float(os.environ.get("DISHONEST_DROP", "1")))
    from cli.main import main as cli_main

    return cli_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
