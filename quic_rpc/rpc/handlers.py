"""Handlers: the five call kinds, their signatures, and the method manifest.

Handler shapes (``ctx`` is a :class:`ServerCallContext`):

* unary:            ``async def fn(request, ctx) -> response``
* server-streaming: ``async def fn(request, ctx)`` that yields responses (an async
  generator), or a coroutine that sends with ``await ctx.write(response)``
* client-streaming: ``async def fn(requests: AsyncIterator, ctx) -> response``
* duplex:           ``async def fn(requests: AsyncIterator, ctx)`` that yields responses,
  or a coroutine that uses ``ctx.write``
* raw:              ``async def fn(stream: RawStream, ctx) -> None``; the stream is the
  call's byte stream after its header

A manifest maps method paths (e.g. ``"/pkg.Service/Method"``) to :class:`Handler` s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .context import ServerCallContext
from .frames import CallKind
from .serializers import serializer_for

if TYPE_CHECKING:
    from .raw_stream import RawStream

__all__ = [
    "ClientStreamingFn",
    "DuplexFn",
    "Handler",
    "Manifest",
    "RawFn",
    "ServerStreamingFn",
    "UnaryFn",
    "client_streaming",
    "duplex",
    "raw",
    "server_streaming",
    "unary",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

UnaryFn = Callable[[Req, ServerCallContext], Awaitable[Resp]]
ServerStreamingFn = Callable[[Req, ServerCallContext], AsyncIterator[Resp] | Awaitable[None]]
ClientStreamingFn = Callable[[AsyncIterator[Req], ServerCallContext], Awaitable[Resp]]
DuplexFn = Callable[[AsyncIterator[Req], ServerCallContext], AsyncIterator[Resp] | Awaitable[None]]
RawFn = Callable[["RawStream", ServerCallContext], Awaitable[None]]


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True, slots=True)
class Handler(Generic[Req, Resp]):
    """One method: its kind, function, (de)serializers and optional timeout (seconds).

    ``request_deserializer`` / ``response_serializer`` are plain callables, so grpc-style
    functions plug in as they are.
    """

    kind: CallKind
    fn: Callable[..., Any]
    request_deserializer: Callable[[bytes], Req]
    response_serializer: Callable[[Resp], bytes]
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CallKind):
            raise TypeError(f"Handler.kind must be a CallKind, got {self.kind!r}")
        if not callable(self.fn):
            raise TypeError(f"Handler.fn must be callable, got {self.fn!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"Handler.timeout must be positive, got {self.timeout!r}")


Manifest = Mapping[str, Handler[Any, Any]]


def _make(
    kind: CallKind, fn: Callable[..., Any], request: Any, response: Any, timeout: float | None
) -> Handler[Any, Any]:
    req = serializer_for(request)
    resp = serializer_for(response)
    return Handler(kind, fn, req.deserialize, resp.serialize, timeout)


def unary(
    fn: UnaryFn[Any, Any],
    *,
    request: Any = None,
    response: Any = None,
    timeout: float | None = None,
) -> Handler[Any, Any]:
    """A unary handler. ``request``/``response``: a Serializer, a protobuf class or None
    (bytes)."""
    return _make(CallKind.UNARY, fn, request, response, timeout)


def server_streaming(
    fn: ServerStreamingFn[Any, Any],
    *,
    request: Any = None,
    response: Any = None,
    timeout: float | None = None,
) -> Handler[Any, Any]:
    """A server-streaming handler (async generator, or coroutine using ``ctx.write``)."""
    return _make(CallKind.SERVER_STREAMING, fn, request, response, timeout)


def client_streaming(
    fn: ClientStreamingFn[Any, Any],
    *,
    request: Any = None,
    response: Any = None,
    timeout: float | None = None,
) -> Handler[Any, Any]:
    """A client-streaming handler."""
    return _make(CallKind.CLIENT_STREAMING, fn, request, response, timeout)


def duplex(
    fn: DuplexFn[Any, Any],
    *,
    request: Any = None,
    response: Any = None,
    timeout: float | None = None,
) -> Handler[Any, Any]:
    """A duplex (bidirectional streaming) handler."""
    return _make(CallKind.DUPLEX, fn, request, response, timeout)


def raw(fn: RawFn, *, timeout: float | None = None) -> Handler[bytes, bytes]:
    """A raw handler: it gets the call's byte stream after the header."""
    return Handler(CallKind.RAW, fn, _identity, _identity, timeout)
