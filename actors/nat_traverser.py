"""NatTraverser: what the network sees of this node, and whether it can be reached directly."""

from __future__ import annotations

import time
from typing import Any

from actors.base import NodeActor
from actors.messages import AddressObserved, StatusQuery
from protocol.nat import NatStatus


class NatTraverser(NodeActor):
    name = "NatTraverser"

    def __init__(self, listen_addrs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.nat = NatStatus(listen_addrs)

    def on_receive(self, message: Any) -> Any:
        match message:
            case AddressObserved(address=address, reporter=reporter):
                self.nat.observe(address, reporter, time.time())
                return None
            case StatusQuery():
                return {"nat": self.nat.as_status()}
        return super().on_receive(message)
