"""NAT status: the addresses peers observe for this node, and whether it is reachable.

Peers report the address a connection from this node came from. One peer's word
is not enough (it could lie, or see a relay): an address counts as confirmed
when ``CONFIRMATIONS`` distinct peers reported it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

CONFIRMATIONS: Final = 2
MAX_TRACKED_ADDRESSES: Final = 16


class Reachability(enum.StrEnum):
    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass
class _Observation:
    reporters: set[bytes] = field(default_factory=set)
    last_seen: float = 0.0


class NatStatus:
    """Observed external addresses and the reachability verdict of this node."""

    def __init__(self, listen_addrs: tuple[str, ...] = ()) -> None:
        self.listen_addrs = listen_addrs
        self.reachability = Reachability.UNKNOWN
        self._observed: dict[str, _Observation] = {}

    def observe(self, address: str, reporter: bytes, now: float) -> bool:
        """Record that ``reporter`` saw this node at ``address``; True if it became confirmed now."""
        obs = self._observed.get(address)
        if obs is None:
            if len(self._observed) >= MAX_TRACKED_ADDRESSES:
                oldest = min(self._observed, key=lambda a: self._observed[a].last_seen)
                del self._observed[oldest]
            obs = self._observed[address] = _Observation()
        before = len(obs.reporters)
        obs.reporters.add(reporter)
        obs.last_seen = now
        return before < CONFIRMATIONS <= len(obs.reporters)

    def confirmed(self) -> list[str]:
        """Addresses reported by enough distinct peers, most recent first."""
        items = [
            (o.last_seen, a) for a, o in self._observed.items() if len(o.reporters) >= CONFIRMATIONS
        ]
        return [a for _, a in sorted(items, reverse=True)]

    def dial_back_result(self, succeeded: bool) -> None:
        """A peer we never contacted tried to dial our observed address: the verdict."""
        self.reachability = Reachability.PUBLIC if succeeded else Reachability.PRIVATE

    def as_status(self) -> dict[str, object]:
        return {
            "reachability": str(self.reachability),
            "observed_addrs": {a: len(o.reporters) for a, o in self._observed.items()},
            "confirmed_addrs": self.confirmed(),
        }
