"""The asyncio side of the Transport: one UDP socket, QUIC connections of either stack.

Private to ``actors.transport``; other code uses ``actors.transport`` and
``protocol.errors``.
"""
