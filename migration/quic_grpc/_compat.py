"""grpcio when it is importable, our own equivalents of its public base classes when not.

Every grpc-shaped base class the adapter subclasses or hands to users comes from here.
With grpcio installed the names are grpcio's own classes, so ``except grpc.RpcError`` and
``isinstance(x, grpc.Call)`` hold for objects the adapter makes; without grpcio the
fallbacks below carry the same names, abstract methods and enum values.

Type checkers always see the fallbacks: they are the documented shape of grpcio's classes.
"""

from __future__ import annotations

import abc
import collections
import enum
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

__all__ = [
    "GRPC_AVAILABLE",
    "AioClientCallDetailsBase",
    "AioClientInterceptor",
    "AioRpcErrorBase",
    "AioServerInterceptor",
    "AioStreamStreamClientInterceptor",
    "AioStreamUnaryClientInterceptor",
    "AioUnaryStreamClientInterceptor",
    "AioUnaryUnaryClientInterceptor",
    "Call",
    "CallCredentials",
    "ChannelConnectivity",
    "ChannelCredentials",
    "ClientCallDetails",
    "Compression",
    "Future",
    "FutureCancelledError",
    "FutureTimeoutError",
    "GenericRpcHandler",
    "HandlerCallDetails",
    "RpcContext",
    "RpcError",
    "RpcMethodHandler",
    "ServerCredentials",
    "ServerInterceptor",
    "ServiceRpcHandler",
    "ServicerContext",
    "Status",
    "StatusCode",
    "StreamStreamClientInterceptor",
    "StreamUnaryClientInterceptor",
    "UnaryStreamClientInterceptor",
    "UnaryUnaryClientInterceptor",
    "grpc_module",
]


def _import_grpc() -> tuple[ModuleType | None, ModuleType | None]:
    try:
        grpc = importlib.import_module("grpc")
        grpc_aio = importlib.import_module("grpc.aio")
    except ImportError:
        return None, None
    return grpc, grpc_aio


_GRPC, _GRPC_AIO = _import_grpc()
GRPC_AVAILABLE = _GRPC is not None


def grpc_module() -> ModuleType | None:
    """The real ``grpc`` module, or None when grpcio is not installed."""
    return _GRPC


# --------------------------------------------------------------------------- fallbacks


class _StatusCode(enum.Enum):
    """The 17 gRPC status codes, valued ``(number, text)`` exactly like grpcio's."""

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


class _ChannelConnectivity(enum.Enum):
    IDLE = (0, "idle")
    CONNECTING = (1, "connecting")
    READY = (2, "ready")
    TRANSIENT_FAILURE = (3, "transient failure")
    SHUTDOWN = (4, "shutdown")


class _Compression(enum.IntEnum):
    NoCompression = 0
    Deflate = 1
    Gzip = 2


class _FutureTimeoutError(Exception):
    """A future's result was not ready within the given timeout."""


class _FutureCancelledError(Exception):
    """The computation behind a future was cancelled."""


class _Future(abc.ABC):
    @abc.abstractmethod
    def cancel(self) -> bool: ...
    @abc.abstractmethod
    def cancelled(self) -> bool: ...
    @abc.abstractmethod
    def running(self) -> bool: ...
    @abc.abstractmethod
    def done(self) -> bool: ...
    @abc.abstractmethod
    def result(self, timeout: float | None = None) -> Any: ...
    @abc.abstractmethod
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    @abc.abstractmethod
    def traceback(self, timeout: float | None = None) -> Any: ...
    @abc.abstractmethod
    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...


class _Status(abc.ABC):  # noqa: B024 - grpcio's Status is an attribute-only ABC
    """An RPC's final status: ``code``, ``details``, ``trailing_metadata`` attributes."""


class _RpcError(Exception):
    """Raised to indicate a non-OK-status RPC termination."""


class _RpcContext(abc.ABC):
    @abc.abstractmethod
    def is_active(self) -> bool: ...
    @abc.abstractmethod
    def time_remaining(self) -> float | None: ...
    @abc.abstractmethod
    def cancel(self) -> bool | None: ...
    @abc.abstractmethod
    def add_callback(self, callback: Callable[[], None]) -> bool: ...


class _Call(_RpcContext, metaclass=abc.ABCMeta):
    @abc.abstractmethod
    def initial_metadata(self) -> Any: ...
    @abc.abstractmethod
    def trailing_metadata(self) -> Any: ...
    @abc.abstractmethod
    def code(self) -> Any: ...
    @abc.abstractmethod
    def details(self) -> str | None: ...


class _ClientCallDetails(abc.ABC):  # noqa: B024 - attribute-only ABC, as in grpcio
    """method, timeout, metadata, credentials, wait_for_ready, compression."""


class _UnaryUnaryClientInterceptor(abc.ABC):
    @abc.abstractmethod
    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any: ...


class _UnaryStreamClientInterceptor(abc.ABC):
    @abc.abstractmethod
    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any: ...


class _StreamUnaryClientInterceptor(abc.ABC):
    @abc.abstractmethod
    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any: ...


class _StreamStreamClientInterceptor(abc.ABC):
    @abc.abstractmethod
    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any: ...


class _ChannelCredentials:
    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials


class _CallCredentials:
    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials


class _ServerCredentials:
    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials


class _ServicerContext(_RpcContext, metaclass=abc.ABCMeta):
    """grpc.ServicerContext's interface (the adapter's context implements all of it)."""


class _RpcMethodHandler(abc.ABC):  # noqa: B024 - attribute-only ABC, as in grpcio
    """request_streaming, response_streaming, (de)serializers and the four behaviours."""


class _HandlerCallDetails(abc.ABC):  # noqa: B024 - attribute-only ABC, as in grpcio
    """method and invocation_metadata of an RPC that has just arrived."""


class _GenericRpcHandler(abc.ABC):
    @abc.abstractmethod
    def service(self, handler_call_details: Any) -> Any: ...


class _ServiceRpcHandler(_GenericRpcHandler, metaclass=abc.ABCMeta):
    @abc.abstractmethod
    def service_name(self) -> str: ...


class _ServerInterceptor(abc.ABC):
    @abc.abstractmethod
    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any: ...


class _AioRpcError(_RpcError):
    """grpc.aio.AioRpcError's constructor and accessors."""

    def __init__(
        self,
        code: Any,
        initial_metadata: Any = None,
        trailing_metadata: Any = None,
        details: str | None = None,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__()
        self._code = code
        self._details = details
        self._initial_metadata = initial_metadata
        self._trailing_metadata = trailing_metadata
        self._debug_error_string = debug_error_string

    def code(self) -> Any:
        return self._code

    def details(self) -> str | None:
        return self._details

    def initial_metadata(self) -> Any:
        return self._initial_metadata

    def trailing_metadata(self) -> Any:
        return self._trailing_metadata

    def debug_error_string(self) -> str | None:
        return self._debug_error_string

    def __str__(self) -> str:
        return (
            f"<{type(self).__name__} of RPC that terminated with:\n"
            f'\tstatus = {self._code}\n\tdetails = "{self._details}"\n'
            f'\tdebug_error_string = "{self._debug_error_string}"\n>'
        )

    __repr__ = __str__


class _AioServerInterceptor(abc.ABC):
    @abc.abstractmethod
    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any: ...


class _AioClientInterceptor(abc.ABC):  # noqa: B024 - marker base, as in grpcio
    """Base of the four aio client interceptor kinds."""


class _AioUnaryUnaryClientInterceptor(_AioClientInterceptor):
    @abc.abstractmethod
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any: ...


class _AioUnaryStreamClientInterceptor(_AioClientInterceptor):
    @abc.abstractmethod
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any: ...


class _AioStreamUnaryClientInterceptor(_AioClientInterceptor):
    @abc.abstractmethod
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any: ...


class _AioStreamStreamClientInterceptor(_AioClientInterceptor):
    @abc.abstractmethod
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any: ...


class _AioClientCallDetailsFields(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None


# The fallbacks print like grpcio's classes (``StatusCode.NOT_FOUND``, not ``_StatusCode...``).
for _fallback in (
    _StatusCode,
    _ChannelConnectivity,
    _Compression,
    _FutureTimeoutError,
    _FutureCancelledError,
    _RpcError,
    _AioRpcError,
):
    _fallback.__name__ = _fallback.__qualname__ = _fallback.__name__.lstrip("_")

# --------------------------------------------------------------------------- selection

if TYPE_CHECKING:
    StatusCode = _StatusCode
    ChannelConnectivity = _ChannelConnectivity
    Compression = _Compression
    FutureTimeoutError = _FutureTimeoutError
    FutureCancelledError = _FutureCancelledError
    Future = _Future
    Status = _Status
    RpcError = _RpcError
    RpcContext = _RpcContext
    Call = _Call
    ClientCallDetails = _ClientCallDetails
    UnaryUnaryClientInterceptor = _UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = _UnaryStreamClientInterceptor
    StreamUnaryClientInterceptor = _StreamUnaryClientInterceptor
    StreamStreamClientInterceptor = _StreamStreamClientInterceptor
    ChannelCredentials = _ChannelCredentials
    CallCredentials = _CallCredentials
    ServerCredentials = _ServerCredentials
    ServicerContext = _ServicerContext
    RpcMethodHandler = _RpcMethodHandler
    HandlerCallDetails = _HandlerCallDetails
    GenericRpcHandler = _GenericRpcHandler
    ServiceRpcHandler = _ServiceRpcHandler
    ServerInterceptor = _ServerInterceptor
    AioRpcErrorBase = _AioRpcError
    AioServerInterceptor = _AioServerInterceptor
    AioClientInterceptor = _AioClientInterceptor
    AioUnaryUnaryClientInterceptor = _AioUnaryUnaryClientInterceptor
    AioUnaryStreamClientInterceptor = _AioUnaryStreamClientInterceptor
    AioStreamUnaryClientInterceptor = _AioStreamUnaryClientInterceptor
    AioStreamStreamClientInterceptor = _AioStreamStreamClientInterceptor
    AioClientCallDetailsBase = _AioClientCallDetailsFields
elif _GRPC is not None and _GRPC_AIO is not None:
    g, ga = _GRPC, _GRPC_AIO
    StatusCode = g.StatusCode
    ChannelConnectivity = g.ChannelConnectivity
    Compression = g.Compression
    FutureTimeoutError = g.FutureTimeoutError
    FutureCancelledError = g.FutureCancelledError
    Future = g.Future
    Status = g.Status
    RpcError = g.RpcError
    RpcContext = g.RpcContext
    Call = g.Call
    ClientCallDetails = g.ClientCallDetails
    UnaryUnaryClientInterceptor = g.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = g.UnaryStreamClientInterceptor
    StreamUnaryClientInterceptor = g.StreamUnaryClientInterceptor
    StreamStreamClientInterceptor = g.StreamStreamClientInterceptor
    ChannelCredentials = g.ChannelCredentials
    CallCredentials = g.CallCredentials
    ServerCredentials = g.ServerCredentials
    ServicerContext = g.ServicerContext
    RpcMethodHandler = g.RpcMethodHandler
    HandlerCallDetails = _HandlerCallDetails  # grpcio's is a typing.Protocol
    GenericRpcHandler = g.GenericRpcHandler
    ServiceRpcHandler = g.ServiceRpcHandler
    ServerInterceptor = g.ServerInterceptor
    AioRpcErrorBase = ga.AioRpcError
    AioServerInterceptor = ga.ServerInterceptor
    AioClientInterceptor = ga.ClientInterceptor
    AioUnaryUnaryClientInterceptor = ga.UnaryUnaryClientInterceptor
    AioUnaryStreamClientInterceptor = ga.UnaryStreamClientInterceptor
    AioStreamUnaryClientInterceptor = ga.StreamUnaryClientInterceptor
    AioStreamStreamClientInterceptor = ga.StreamStreamClientInterceptor
    AioClientCallDetailsBase = ga.ClientCallDetails
else:
    StatusCode = _StatusCode
    ChannelConnectivity = _ChannelConnectivity
    Compression = _Compression
    FutureTimeoutError = _FutureTimeoutError
    FutureCancelledError = _FutureCancelledError
    Future = _Future
    Status = _Status
    RpcError = _RpcError
    RpcContext = _RpcContext
    Call = _Call
    ClientCallDetails = _ClientCallDetails
    UnaryUnaryClientInterceptor = _UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = _UnaryStreamClientInterceptor
    StreamUnaryClientInterceptor = _StreamUnaryClientInterceptor
    StreamStreamClientInterceptor = _StreamStreamClientInterceptor
    ChannelCredentials = _ChannelCredentials
    CallCredentials = _CallCredentials
    ServerCredentials = _ServerCredentials
    ServicerContext = _ServicerContext
    RpcMethodHandler = _RpcMethodHandler
    HandlerCallDetails = _HandlerCallDetails
    GenericRpcHandler = _GenericRpcHandler
    ServiceRpcHandler = _ServiceRpcHandler
    ServerInterceptor = _ServerInterceptor
    AioRpcErrorBase = _AioRpcError
    AioServerInterceptor = _AioServerInterceptor
    AioClientInterceptor = _AioClientInterceptor
    AioUnaryUnaryClientInterceptor = _AioUnaryUnaryClientInterceptor
    AioUnaryStreamClientInterceptor = _AioUnaryStreamClientInterceptor
    AioStreamUnaryClientInterceptor = _AioStreamUnaryClientInterceptor
    AioStreamStreamClientInterceptor = _AioStreamStreamClientInterceptor
    AioClientCallDetailsBase = collections.namedtuple(
        "ClientCallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready")
    )
