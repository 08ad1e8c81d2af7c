"""RPC status codes for agent code, with or without grpcio installed.

``StatusCode`` is ``grpc.StatusCode`` when grpcio is importable, so a servicer's
``context.abort(StatusCode.NOT_FOUND, ...)`` works unchanged on grpc.aio. Without grpcio
(the quic-only stage) it is :class:`FallbackStatusCode`, an enum with the same member
names and the same ``(number, "name")`` values as grpc's, so a grpc-compatible context
can map it by ``.name`` or ``.value[0]``. :func:`status_number` gives the wire number of
either.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["FallbackStatusCode", "StatusCode", "status_number"]


class FallbackStatusCode(enum.Enum):
    """The 17 gRPC status codes, shaped like ``grpc.StatusCode``."""

    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")


def _load_status_code() -> Any:
    try:
        import grpc
    except ImportError:
        return FallbackStatusCode
    return grpc.StatusCode


StatusCode: Any = _load_status_code()


def status_number(code: Any) -> int:
    """The wire number (0..16) of a ``grpc.StatusCode`` or :class:`FallbackStatusCode`."""
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return value[0]
    raise TypeError(f"not a status code: {code!r}")
