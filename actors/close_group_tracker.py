"""CloseGroupTracker: the node's own close group, and its changes announced to subscribers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from actors.base import NodeActor
from actors.messages import (
    CloseGroupChanged,
    RoutingChanged,
    StatusQuery,
    SubscribeCloseGroup,
)
from protocol.close_group import CloseGroupView

log = logging.getLogger(__name__)


class CloseGroupTracker(NodeActor):
    name = "CloseGroupTracker"

    def __init__(self, own_id: bytes, close_group_size: int = 5) -> None:
        super().__init__()
        self.view = CloseGroupView(own_id, close_group_size)
        self.subscribers: list[Callable[[CloseGroupChanged], None]] = []

    def on_receive(self, message: Any) -> Any:
        match message:
            case RoutingChanged(peers=peers):
                change = self.view.apply(peers)
                if change is not None:
                    event = CloseGroupChanged(change.added, change.removed, change.group)
                    log.info(
                        "close group changed: +%d -%d, now %s",
                        len(change.added),
                        len(change.removed),
                        [p.hex()[:8] for p in change.group],
                    )
                    for notify in self.subscribers:
                        notify(event)
                return None
            case SubscribeCloseGroup(notify=notify):
                self.subscribers.append(notify)
                if self.view.group:
                    notify(CloseGroupChanged(self.view.group, (), self.view.group))
                return None
            case StatusQuery():
                return {"close_group": [p.hex() for p in self.view.group]}
        return super().on_receive(message)
