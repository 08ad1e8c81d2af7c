"""The RPC client: opens one stream per call on any StreamOpener.

Call objects follow grpc.aio's shapes: a unary call is awaitable; streaming calls are
async iterators and/or have ``write``/``done_writing``; every call has
``initial_metadata()``, ``trailing_metadata()``, ``code()``, ``details()``, ``cancel()``.
Cancelling the task that awaits a call, or ``call.cancel()``, resets the stream with
CANCEL; the deadline resets it with DEADLINE_EXCEEDED.

A call the server refused before processing it (the stream could not be opened, or was
reset with REFUSED_STREAM before any response byte) is sent again on a new stream from
the opener, transparently, when its request can be replayed
(``RPCClientConfig.transparent_retries``, 1 by default; the deadline bounds it all).
One that is not gets :class:`~quic_rpc.rpc.errors.CallRefusedError`, an UNAVAILABLE
:class:`RPCError`. An opener can take part through an optional
``stream_refused(stream, error) -> bool`` method (see :mod:`quic_rpc.rpc.call_base`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, overload

from ..streams import (
    StreamOpener,
)
from .call_base import ClientCall
from .calls import ClientStreamingCall, DuplexCall, RawCall, ServerStreamingCall, UnaryCall
from .config import RPCClientConfig
from .frames import CallKind
from .metadata import MetadataLike
from .middleware import Middleware, MiddlewareStack

__all__ = [
    "ClientCall",
    "ClientStreamingCall",
    "DuplexCall",
    "MethodCallable",
    "RPCClient",
    "RawCall",
    "ServerStreamingCall",
    "UnaryCall",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class MethodCallable(Generic[Req, Resp]):
    """A method bound to a client, kind and (de)serializers; calling it starts a call."""

    def __init__(
        self,
        client: RPCClient,
        name: str,
        kind: CallKind,
        request_serializer: Callable[[Req], bytes] | None,
        response_deserializer: Callable[[bytes], Resp] | None,
    ) -> None:
        self.client = client
        self.name = name
        self.kind = kind
        self.request_serializer = request_serializer
        self.response_deserializer = response_deserializer

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
    ) -> ClientCall[Any]:
        """Start a call. ``request``: the request (unary/server-streaming), the request
        iterable (client-streaming/duplex, optional), unused for raw."""
        kwargs: dict[str, Any] = {
            "timeout": timeout,
            "metadata": metadata,
            "request_serializer": self.request_serializer,
            "response_deserializer": self.response_deserializer,
        }
        c = self.client
        kind = self.kind
        if kind is CallKind.UNARY:
            return UnaryCall(c, self.name, request, **kwargs)
        if kind is CallKind.SERVER_STREAMING:
            return ServerStreamingCall(c, self.name, request, **kwargs)
        if kind is CallKind.CLIENT_STREAMING:
            return ClientStreamingCall(c, self.name, request, **kwargs)
        if kind is CallKind.DUPLEX:
            return DuplexCall(c, self.name, request, **kwargs)
        return RawCall(
            c,
            self.name,
            timeout=timeout,
            metadata=metadata,
            request_serializer=None,
            response_deserializer=None,
        )


class RPCClient:
    """Makes calls over a transport's :class:`StreamOpener` (one stream per call; a
    refused call may take another, see the module docstring)."""

    def __init__(
        self,
        opener: StreamOpener,
        *,
        middleware: Sequence[Middleware] = (),
        config: RPCClientConfig | None = None,
    ) -> None:
        self._opener = opener
        self._mw = MiddlewareStack(middleware)
        self.config = config if config is not None else RPCClientConfig()

    @property
    def opener(self) -> StreamOpener:
        return self._opener

    @overload
    def unary(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: None = None,
    ) -> UnaryCall[bytes]: ...

    @overload
    def unary(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp],
    ) -> UnaryCall[Resp]: ...

    def unary(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp] | None = None,
    ) -> UnaryCall[Resp]:
        """Start a unary call; ``await`` the result for the response."""
        return UnaryCall(
            self,
            method,
            request,
            timeout=timeout,
            metadata=metadata,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )

    @overload
    def server_streaming(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: None = None,
    ) -> ServerStreamingCall[bytes]: ...

    @overload
    def server_streaming(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp],
    ) -> ServerStreamingCall[Resp]: ...

    def server_streaming(
        self,
        method: str,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp] | None = None,
    ) -> ServerStreamingCall[Resp]:
        """Start a server-streaming call; iterate the result for the responses."""
        return ServerStreamingCall(
            self,
            method,
            request,
            timeout=timeout,
            metadata=metadata,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )

    @overload
    def client_streaming(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: None = None,
    ) -> ClientStreamingCall[bytes]: ...

    @overload
    def client_streaming(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp],
    ) -> ClientStreamingCall[Resp]: ...

    def client_streaming(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp] | None = None,
    ) -> ClientStreamingCall[Resp]:
        """Start a client-streaming call (from ``requests``, or via ``write``)."""
        return ClientStreamingCall(
            self,
            method,
            requests,
            timeout=timeout,
            metadata=metadata,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )

    @overload
    def duplex(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: None = None,
    ) -> DuplexCall[bytes]: ...

    @overload
    def duplex(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp],
    ) -> DuplexCall[Resp]: ...

    def duplex(
        self,
        method: str,
        requests: AsyncIterable[Req] | Iterable[Req] | None = None,
        *,
        timeout: float | None = None,
        metadata: MetadataLike = None,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp] | None = None,
    ) -> DuplexCall[Resp]:
        """Start a duplex call."""
        return DuplexCall(
            self,
            method,
            requests,
            timeout=timeout,
            metadata=metadata,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )

    def raw(
        self, method: str, *, timeout: float | None = None, metadata: MetadataLike = None
    ) -> RawCall:
        """Start a raw call: ``async with client.raw(m) as call: await call.send(...)``."""
        return RawCall(
            self,
            method,
            timeout=timeout,
            metadata=metadata,
            request_serializer=None,
            response_deserializer=None,
        )

    @overload
    def method(
        self,
        name: str,
        kind: CallKind,
        request_serializer: None = None,
        response_deserializer: None = None,
    ) -> MethodCallable[Any, bytes]: ...

    @overload
    def method(
        self,
        name: str,
        kind: CallKind,
        request_serializer: Callable[[Req], bytes],
        response_deserializer: None = None,
    ) -> MethodCallable[Req, bytes]: ...

    @overload
    def method(
        self,
        name: str,
        kind: CallKind,
        request_serializer: Callable[[Req], bytes] | None,
        response_deserializer: Callable[[bytes], Resp],
    ) -> MethodCallable[Req, Resp]: ...

    def method(
        self,
        name: str,
        kind: CallKind,
        request_serializer: Callable[[Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], Resp] | None = None,
    ) -> MethodCallable[Req, Resp]:
        """A reusable callable for one method (what grpc-style stubs are built on)."""
        return MethodCallable(self, name, CallKind(kind), request_serializer, response_deserializer)
