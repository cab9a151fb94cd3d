"""A child process holding one node with a 4 MiB chunk, for tests that kill it.

Prints ``READY <listen multiaddr> <chunk address hex>`` and serves until killed.
"""

from __future__ import annotations

import os
import sys
import threading

from blake3 import blake3

from actors._quic.backend import QuicStack
from protocol.wire import MAX_CHUNK_BYTES
from tests.actors.transport_nodes import ChunkStore, start_node


def main() -> None:
    stack: QuicStack = "aioquic" if sys.argv[1:] == ["aioquic"] else "qh3"
    store = ChunkStore()
    content = os.urandom(MAX_CHUNK_BYTES)
    address = blake3(content).digest()
    store.chunks[address] = content
    node = start_node(stack=stack, dispatch=store)
    print("READY", node.addr, address.hex(), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
