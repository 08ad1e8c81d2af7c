"""Call outcomes (`Status`) and stream reset codes (`ResetCode`), and the mapping between them.

`Status` mirrors the 17 gRPC status codes, same names and numbers. `ResetCode` is the
application error code this protocol puts on a stream reset / STOP_SENDING (see
docs/PROTOCOL.md, "Reset codes").
"""

from __future__ import annotations

import enum

__all__ = ["ResetCode", "Status", "reset_code_for_status", "status_for_reset_code"]


class Status(enum.IntEnum):
    """The outcome of a call: the 17 gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ResetCode(enum.IntEnum):
    """Application error codes carried by stream resets and STOP_SENDING."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    """Also what the transports use when a stream handler failed."""
    REFUSED_STREAM = 0x2
    """Also what the transports use for a stream no one will serve (e.g. while stopping)."""
    INTERNAL_ERROR = 0x3
    CANCEL = 0x4
    DEADLINE_EXCEEDED = 0x5
    SHUTDOWN = 0x6
    MESSAGE_TOO_LARGE = 0x7
    STATUS_BASE = 0x100
    """``STATUS_BASE + n`` carries status ``n`` (raw calls, which have no trailer)."""


_STATUS_BY_RESET: dict[int, Status] = {
    ResetCode.NO_ERROR: Status.INTERNAL,
    ResetCode.PROTOCOL_ERROR: Status.INTERNAL,
    ResetCode.INTERNAL_ERROR: Status.INTERNAL,
    ResetCode.REFUSED_STREAM: Status.UNAVAILABLE,
    ResetCode.CANCEL: Status.CANCELLED,
    ResetCode.DEADLINE_EXCEEDED: Status.DEADLINE_EXCEEDED,
    ResetCode.SHUTDOWN: Status.UNAVAILABLE,
    ResetCode.MESSAGE_TOO_LARGE: Status.RESOURCE_EXHAUSTED,
}


def status_for_reset_code(code: int) -> Status:
    """The status a call ends with when the peer resets its stream with ``code``."""
    status = _STATUS_BY_RESET.get(code)
    if status is not None:
        return status
    offset = code - ResetCode.STATUS_BASE
    if 0 < offset <= Status.UNAUTHENTICATED:
        return Status(offset)
    return Status.UNKNOWN


def reset_code_for_status(status: Status) -> int:
    """The reset code that conveys ``status`` when no trailer can be sent (raw calls)."""
    if status is Status.CANCELLED:
        return ResetCode.CANCEL
    if status is Status.DEADLINE_EXCEEDED:
        return ResetCode.DEADLINE_EXCEEDED
    return ResetCode.STATUS_BASE + int(status)
