"""Dial one multiaddr from a fresh process and socket; exit 0 if the identity handshake
completed, 1 if not (the error's class and message on stdout).

    python -m tests.nat.dial_once MULTIADDR TIMEOUT_SECONDS
"""

from __future__ import annotations

import sys

import pykka

from actors.handshake import Handshake
from actors.transport import Transport, TransportConfig
from protocol.errors import TransportError
from protocol.identity import Identity


def main(argv: list[str]) -> int:
    address, timeout = argv[0], float(argv[1])
    identity = Identity.generate()
    handshake = Handshake.start(identity)
    transport = Transport.start(
        identity, handshake, TransportConfig(host="0.0.0.0", announce=False)
    )
    try:
        handle = Transport.handle_of(transport)
        try:
            peer_id = handle.dial(address, timeout=timeout).get(timeout=timeout + 5)
        except (TransportError, pykka.Timeout) as exc:
            print(f"{type(exc).__name__}: {exc}")
            return 1
        print(f"connected to {peer_id.hex()}")
        return 0
    finally:
        transport.stop()
        handshake.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
