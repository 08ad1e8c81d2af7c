"""The exceptions a failed call raises on the client, grpc-shaped.

``InactiveRpcError`` (sync API) is a ``grpc.RpcError``, a ``grpc.Call`` and a ``grpc.Future``,
like grpcio's own ``_InactiveRpcError``; ``AioRpcError`` (aio API) is a
``grpc.aio.AioRpcError`` and a ``grpc.Call``. With grpcio installed the bases are grpcio's
classes, so existing ``except grpc.RpcError`` clauses keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._compat import AioRpcErrorBase, Call, Future, RpcError, StatusCode
from ._metadata import MetadataTuple

__all__ = ["AbortError", "AioRpcError", "InactiveRpcError", "UsageError"]


class UsageError(RuntimeError):
    """The adapter's API was misused (e.g. a call on a closed channel)."""


class AbortError(Exception):
    """Raised inside a servicer by ``context.abort``; ends the call with the given status."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"RPC aborted with {code}: {details}")
        self.code = code
        self.details = details


def _debug_string(code: StatusCode, details: str | None) -> str:
    return f"QUIC call failed: status={code.name}, details={details!r}"


class InactiveRpcError(RpcError, Call, Future):
    """A finished, failed call: the exception the sync API raises and its future resolves to."""

    def __init__(
        self,
        code: StatusCode,
        details: str | None,
        initial_metadata: MetadataTuple = (),
        trailing_metadata: MetadataTuple = (),
    ) -> None:
        super().__init__()
        self._code = code
        self._details = details
        self._initial_metadata = initial_metadata
        self._trailing_metadata = trailing_metadata

    # grpc.Call
    def initial_metadata(self) -> MetadataTuple:
        return self._initial_metadata

    def trailing_metadata(self) -> MetadataTuple:
        return self._trailing_metadata

    def code(self) -> StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def debug_error_string(self) -> str:
        return _debug_string(self._code, self._details)

    # grpc.RpcContext
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __str__(self) -> str:
        return (
            f"<{type(self).__name__} of RPC that terminated with:\n"
            f'\tstatus = {self._code}\n\tdetails = "{self._details}"\n'
            f'\tdebug_error_string = "{self.debug_error_string()}"\n>'
        )

    __repr__ = __str__


class AioRpcError(AioRpcErrorBase, Call):
    """A finished, failed aio call (``grpc.aio.AioRpcError`` and ``grpc.Call``)."""

    def __init__(
        self,
        code: StatusCode,
        initial_metadata: Any = None,
        trailing_metadata: Any = None,
        details: str | None = None,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(
            code,
            initial_metadata,
            trailing_metadata,
            details,
            debug_error_string if debug_error_string is not None else _debug_string(code, details),
        )

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False
