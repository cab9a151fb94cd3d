"""The ``autonomi-actors`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("autonomi-actors: not yet wired", file=sys.stderr)
    return 2
