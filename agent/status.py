"""RPC status codes for agent code, with or without grpcio installed.

``StatusCode.NAME`` is the ``grpc.StatusCode`` member when grpcio is loaded, so a
servicer's ``context.abort(StatusCode.NOT_FOUND, ...)`` works unchanged on grpc.aio.
Without grpcio loaded (the quic-only stage) it is a :class:`FallbackStatusCode` member, an enum with the same member
names and the same ``(number, "name")`` values as grpc's, so a grpc-compatible context
can map it by ``.name`` or ``.value[0]``. :func:`status_number` gives the wire number of
either.
"""

from __future__ import annotations

import enum
import sys
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


class _StatusCodes:
    """Resolves ``StatusCode.NAME`` at the moment it is used.

    ``grpc.StatusCode`` when grpcio is already loaded in this process (the legacy stack
    imported it, so its contexts need its own members), else :class:`FallbackStatusCode`.
    Looking the module up in ``sys.modules`` instead of importing it keeps a quic-only
    agent free of grpcio even where grpcio is installed.
    """

    def __getattr__(self, name: str) -> Any:
        grpc = sys.modules.get("grpc")
        codes: Any = getattr(grpc, "StatusCode", None) if grpc is not None else None
        if codes is None:
            codes = FallbackStatusCode
        try:
            return codes[name]
        except KeyError:
            raise AttributeError(f"no status code named {name!r}") from None


StatusCode: Any = _StatusCodes()


def status_number(code: Any) -> int:
    """The wire number (0..16) of a ``grpc.StatusCode`` or :class:`FallbackStatusCode`."""
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return value[0]
    raise TypeError(f"not a status code: {code!r}")
