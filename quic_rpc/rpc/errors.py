"""The exception hierarchy of `quic_rpc.rpc`: one base, protocol faults, call outcomes.

* :class:`LocalProtocolError` — you misused the API (sent after the trailer, bad metadata).
* :class:`RemoteProtocolError` — the peer sent something malformed; subclasses say what.
* :class:`RPCError` — a call ended with a non-OK :class:`~quic_rpc.rpc.status.Status`.
* :class:`CallRefusedError` — an :class:`RPCError` (UNAVAILABLE) for a call the server
  refused before processing it: nothing of it ran there, so it is safe to send again.

Every class carries a stable class-level ``error_code``: the :class:`ResetCode` a stream is
reset with when the error ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from .status import ResetCode, Status

if TYPE_CHECKING:
    from .metadata import Metadata, MetadataValue

__all__ = [
    "CallRefusedError",
    "HeaderTooLargeError",
    "InvalidMetadataError",
    "LocalProtocolError",
    "MessageTooLargeError",
    "ProtocolError",
    "QuicRPCError",
    "RPCError",
    "RemoteProtocolError",
    "SerializationError",
    "UnsupportedVersionError",
]


class QuicRPCError(Exception):
    """Base of every error raised by `quic_rpc.rpc`."""

    error_code: ClassVar[int] = ResetCode.INTERNAL_ERROR


class ProtocolError(QuicRPCError):
    """A violation of the wire protocol or of the call state machine."""

    status: ClassVar[Status] = Status.INTERNAL


class LocalProtocolError(ProtocolError):
    """Our side misused the API (e.g. sent a message after the trailer)."""

    error_code: ClassVar[int] = ResetCode.INTERNAL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or frames this protocol does not allow."""

    error_code: ClassVar[int] = ResetCode.PROTOCOL_ERROR


class UnsupportedVersionError(RemoteProtocolError):
    """The stream does not start with a protocol version this implementation speaks."""


class MessageTooLargeError(RemoteProtocolError):
    """A MESSAGE frame is larger than the receive limit."""

    error_code: ClassVar[int] = ResetCode.MESSAGE_TOO_LARGE
    status: ClassVar[Status] = Status.RESOURCE_EXHAUSTED

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"received message larger than max ({size} vs. {limit})")


class HeaderTooLargeError(RemoteProtocolError):
    """A header or trailer frame (or its metadata) exceeds the configured limits."""

    error_code: ClassVar[int] = ResetCode.MESSAGE_TOO_LARGE
    status: ClassVar[Status] = Status.RESOURCE_EXHAUSTED


class InvalidMetadataError(QuicRPCError, ValueError):
    """A metadata key or value is malformed or reserved."""

    error_code: ClassVar[int] = ResetCode.INTERNAL_ERROR


class SerializationError(QuicRPCError):
    """A message could not be serialized or deserialized (the call ends INTERNAL)."""

    error_code: ClassVar[int] = ResetCode.INTERNAL_ERROR


class RPCError(QuicRPCError):
    """A call ended with a non-OK status.

    Raise it from a handler to end the call with that status; callers get it back with
    the same status, details (any Unicode, exactly), trailing metadata and rich details.
    """

    error_code: ClassVar[int] = ResetCode.INTERNAL_ERROR

    def __init__(
        self,
        status: Status,
        details: str = "",
        trailing_metadata: Metadata | Iterable[tuple[str, MetadataValue]] = (),
        rich_details: bytes | None = None,
    ) -> None:
        from .metadata import Metadata  # deferred: metadata imports this module

        self.status = Status(status)
        self.details = details
        self.trailing_metadata = Metadata.coerce(trailing_metadata)
        self.rich_details = rich_details
        super().__init__(self.status, details)

    def __str__(self) -> str:
        return f"{self.status.name}: {self.details}" if self.details else self.status.name

    def __repr__(self) -> str:
        return f"RPCError({self.status.name}, {self.details!r})"


class CallRefusedError(RPCError):
    """A call the server refused before processing it (status UNAVAILABLE).

    Raised when the call's stream could not be opened, or was refused (reset with
    REFUSED_STREAM, or its connection closed as refusing) before any byte of the
    response arrived — and the client's transparent retries
    (``RPCClientConfig.transparent_retries``) did not get it through. The server never
    ran the call, so sending it again is safe. Code that handles ``RPCError`` /
    UNAVAILABLE needs no change.
    """

    def __init__(
        self,
        details: str = "",
        trailing_metadata: Metadata | Iterable[tuple[str, MetadataValue]] = (),
        rich_details: bytes | None = None,
    ) -> None:
        super().__init__(Status.UNAVAILABLE, details, trailing_metadata, rich_details)

    def __repr__(self) -> str:
        return f"CallRefusedError({self.details!r})"
