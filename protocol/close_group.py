"""The close group: the peers closest to an address, and how a node's own group changes."""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from protocol.chunks import CLOSE_GROUP_SIZE
from protocol.xor import closest


@dataclass(frozen=True, slots=True)
class CloseGroupChange:
    """The node's own close group moved: who joined it, who left, and the group now."""

    added: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    group: tuple[bytes, ...]


class CloseGroupView:
    """The peers a node knows, and its own close group among them (closest first)."""

    def __init__(self, own_id: bytes, size: int = CLOSE_GROUP_SIZE) -> None:
        self.own_id = own_id
        self.size = size
        self._peers: frozenset[bytes] = frozenset()
        self.group: tuple[bytes, ...] = ()

    @property
    def peers(self) -> frozenset[bytes]:
        return self._peers

    def apply(self, peers: Set[bytes]) -> CloseGroupChange | None:
        """Take the peers the node now knows; return the change of its group, if any."""
        self._peers = frozenset(peers) - {self.own_id}
        new_group = tuple(closest(self.own_id, self._peers, self.size))
        if new_group == self.group:
            return None
        old, new = set(self.group), set(new_group)
        change = CloseGroupChange(
            added=tuple(p for p in new_group if p not in old),
            removed=tuple(p for p in self.group if p not in new),
            group=new_group,
        )
        self.group = new_group
        return change

    def close_group_of(
        self, address: bytes, count: int | None = None, include_self: bool = False
    ) -> list[bytes]:
        """The ``count`` known peers closest to ``address`` (optionally counting this node)."""
        candidates: Iterable[bytes] = self._peers | {self.own_id} if include_self else self._peers
        return closest(address, candidates, self.size if count is None else count)
