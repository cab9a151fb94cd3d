"""Typed failures of remote calls, and the QUIC application error codes behind them.

A remote call (``TransportHandle.request``) returns a future; when it fails, the
future raises one of the ``TransportError`` subclasses below, whatever QUIC stack
carried it. Callers catch ``TransportError`` for "the remote call did not work" and a
subclass when the reason matters.
"""

from __future__ import annotations

import enum

from protocol.wire import ErrorCode


class AppErrorCode(enum.IntEnum):
    """Application error codes this node puts in QUIC RESET_STREAM, STOP_SENDING and
    CONNECTION_CLOSE frames. Chosen outside the transport (0x00-0x10) and crypto
    (0x100-0x1ff) ranges so a receiver cannot confuse them."""

    NO_ERROR = 0
    FRAME_ERROR = 0xA101
    """A malformed, oversized or unexpected frame on a stream."""
    STREAM_TIMEOUT = 0xA102
    """A request stream was not complete before its read deadline."""
    CANCELLED = 0xA103
    """The requester gave up (timeout) and cancelled the stream."""
    BUSY = 0xA104
    """Too many requests in flight from this peer; try again later."""
    PROTOCOL_VIOLATION = 0xA105
    """A stream of a kind this protocol does not use."""
    HANDSHAKE_REJECTED = 0xA110
    """The identity handshake failed; the reason phrase says why."""
    DUPLICATE = 0xA111
    """Another connection to the same peer was kept instead of this one."""
    SHUTDOWN = 0xA112
    """The node is stopping."""
    UNREACHABLE = 0xA113
    """The peer's address reported the port unreachable (ICMP)."""
    UNRESPONSIVE = 0xA114
    """The peer acknowledged nothing (not even PINGs) for too long."""
    INTERNAL_ERROR = 0xA115
    """This node's QUIC stack failed on the connection, which is given up."""


class TransportError(Exception):
    """A remote call or dial that did not produce a reply."""


class RequestTimeout(TransportError):
    """No reply before the request's deadline (the stream was cancelled)."""


class PeerRejected(TransportError):
    """The identity handshake failed: bad proof, wrong PeerId, man in the middle, stall,
    or the peer rejected this node."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class PeerUnreachable(TransportError):
    """No connection could be made (no address known, no answer, port unreachable)."""


class ConnectionLost(TransportError):
    """The connection closed while the request was in flight (the peer died or left)."""


class TransportClosed(TransportError):
    """This node's transport is stopping or stopped."""


class RemoteError(TransportError):
    """The peer answered with a wire ``Error``, or refused the request stream."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.message = message


def error_code_of_reset(code: int) -> ErrorCode:
    """The wire ``ErrorCode`` a requester reports when the peer reset its stream."""
    if code == AppErrorCode.FRAME_ERROR:
        return ErrorCode.MALFORMED
    if code == AppErrorCode.BUSY:
        return ErrorCode.BUSY
    if code == AppErrorCode.PROTOCOL_VIOLATION:
        return ErrorCode.UNSUPPORTED
    return ErrorCode.INTERNAL
