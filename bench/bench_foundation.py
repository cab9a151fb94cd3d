"""Figures for the foundation: PeerId derivation, wire encode/decode rates.

Run: .venv/bin/python bench/bench_foundation.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import rate
from protocol.identity import Identity, peer_id_of
from protocol.wire import Chunk, Nodes, PeerRecord, decode_frame, encode_frame


def main() -> None:
    me = Identity.generate()
    print(
        f"PeerId derivations (BLAKE3 of a 1952-byte key): {rate(lambda: peer_id_of(me.public_key)):,.0f}/s"
    )
    print(
        f"Identity from seed (ML-DSA-65 keygen + PeerId): {rate(lambda: Identity.from_seed(me.seed)):,.0f}/s"
    )

    chunk = Chunk(os.urandom(32), os.urandom(4 * 1024 * 1024))
    frame = encode_frame(chunk)
    mib = len(frame) / 2**20
    enc = rate(lambda: encode_frame(chunk))
    dec = rate(lambda: decode_frame(frame))
    print(
        f"4 MiB Chunk message: encode {enc:,.0f}/s ({enc * mib:,.0f} MiB/s), decode {dec:,.0f}/s ({dec * mib:,.0f} MiB/s)"
    )

    peers = [
        PeerRecord(
            os.urandom(32), [f"/ip4/127.0.0.1/udp/{12000 + i}/quic-v1/p2p/{os.urandom(32).hex()}"]
        )
        for i in range(20)
    ]
    nodes = Nodes(peers)
    nodes_frame = encode_frame(nodes)
    print(
        f"Nodes reply with 20 peers ({len(nodes_frame)} bytes): encode {rate(lambda: encode_frame(nodes)):,.0f}/s, decode {rate(lambda: decode_frame(nodes_frame)):,.0f}/s"
    )


if __name__ == "__main__":
    main()
