"""Services bound straight from their protobuf ``ServiceDescriptor`` — no grpcio needed.

The quic-only stage has no ``*_pb2_grpc.py`` (it imports grpcio), only ``*_pb2.py`` and
its ``DESCRIPTOR.services_by_name[...]``. From that descriptor this module builds:

* :func:`generic_handler` / :func:`add_servicer_to_server` — the handlers the generated
  ``add_XServicer_to_server`` would register, for the adapter's sync or aio servers;
* :func:`native_manifest` — a quic_rpc-native manifest for :class:`quic_rpc.rpc.RPCServer`
  that runs a ``grpc.aio``-style servicer (``async def Method(request, context)``) with a
  grpc-shaped context (:class:`NativeServicerContext`) over quic_rpc's ``ServerCallContext``;
* :func:`stub_class` — a class like the generated ``XStub``: constructed on a grpc-style
  channel (the adapter's or grpcio's) it has multicallables, constructed on a
  :class:`quic_rpc.rpc.RPCClient` it has quic_rpc method callables.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from quic_rpc.rpc import CallKind, Handler, RPCError, ServerCallContext, Status
from quic_rpc.rpc.metadata import Metadata
from quic_rpc.streams import PeerInfo

from . import _peer
from ._compat import StatusCode
from ._handlers import DictionaryGenericHandler, MethodHandler
from ._metadata import MetadataTuple, normalize_metadata, validate_metadata
from ._status import code_number, to_status_code

__all__ = [
    "MethodShape",
    "NativeServicerContext",
    "add_servicer_to_server",
    "describe_service",
    "generic_handler",
    "merge_manifests",
    "method_handlers",
    "native_manifest",
    "stub_class",
]


@dataclass(frozen=True, slots=True)
class MethodShape:
    """One method of a service, as both stacks need it."""

    name: str
    path: str
    request_class: Any
    response_class: Any
    request_streaming: bool
    response_streaming: bool

    @property
    def kind(self) -> CallKind:
        return {
            (False, False): CallKind.UNARY,
            (False, True): CallKind.SERVER_STREAMING,
            (True, False): CallKind.CLIENT_STREAMING,
            (True, True): CallKind.DUPLEX,
        }[(self.request_streaming, self.response_streaming)]

    @property
    def channel_factory(self) -> str:
        """The grpc channel method that makes this method's multicallable."""
        return {
            (False, False): "unary_unary",
            (False, True): "unary_stream",
            (True, False): "stream_unary",
            (True, True): "stream_stream",
        }[(self.request_streaming, self.response_streaming)]

    def serialize_request(self, message: Any) -> bytes:
        data: bytes = message.SerializeToString()
        return data

    def serialize_response(self, message: Any) -> bytes:
        data: bytes = message.SerializeToString()
        return data


def _shape(service: ServiceDescriptor, method: MethodDescriptor) -> MethodShape:
    return MethodShape(
        name=method.name,
        path=f"/{service.full_name}/{method.name}",
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
        request_streaming=bool(method.client_streaming),
        response_streaming=bool(method.server_streaming),
    )


def describe_service(service: ServiceDescriptor) -> tuple[MethodShape, ...]:
    """The methods of ``service`` (``pb2.DESCRIPTOR.services_by_name["Name"]``)."""
    if not isinstance(service, ServiceDescriptor):
        raise TypeError(f"expected a protobuf ServiceDescriptor, got {type(service).__name__}")
    return tuple(_shape(service, method) for method in service.methods)


def _method_handler(shape: MethodShape, behavior: Callable[..., Any]) -> MethodHandler:
    behaviours: list[Callable[..., Any] | None] = [None, None, None, None]
    behaviours[
        [(False, False), (False, True), (True, False), (True, True)].index(
            (shape.request_streaming, shape.response_streaming)
        )
    ] = behavior
    return MethodHandler(
        shape.request_streaming,
        shape.response_streaming,
        shape.request_class.FromString,
        shape.serialize_response,
        *behaviours,
    )


def method_handlers(service: ServiceDescriptor, servicer: Any) -> dict[str, MethodHandler]:
    """``{method name: handler}`` for every method ``servicer`` implements."""
    handlers: dict[str, MethodHandler] = {}
    for shape in describe_service(service):
        behavior = getattr(servicer, shape.name, None)
        if callable(behavior):
            handlers[shape.name] = _method_handler(shape, behavior)
    return handlers


def generic_handler(service: ServiceDescriptor, servicer: Any) -> DictionaryGenericHandler:
    """What the generated ``add_XServicer_to_server`` registers, built from the descriptor."""
    return DictionaryGenericHandler(service.full_name, method_handlers(service, servicer))


def add_servicer_to_server(service: ServiceDescriptor, servicer: Any, server: Any) -> None:
    """``add_XServicer_to_server(servicer, server)`` without the generated grpc module."""
    handlers = method_handlers(service, servicer)
    server.add_generic_rpc_handlers((DictionaryGenericHandler(service.full_name, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(service.full_name, handlers)


def stub_class(service: ServiceDescriptor) -> type:
    """A class like the generated ``XStub`` for ``service``.

    ``Stub(channel)`` on a grpc-style channel binds multicallables (so the result is used
    exactly like a generated stub); ``Stub(rpc_client)`` on a quic_rpc ``RPCClient`` binds
    its method callables instead.
    """
    shapes = describe_service(service)

    def __init__(self: Any, channel: Any) -> None:
        for shape in shapes:
            if hasattr(channel, "unary_unary"):
                factory = getattr(channel, shape.channel_factory)
                bound = factory(
                    shape.path,
                    request_serializer=shape.serialize_request,
                    response_deserializer=shape.response_class.FromString,
                    _registered_method=True,
                )
            elif hasattr(channel, "method"):
                bound = channel.method(
                    shape.path,
                    shape.kind,
                    shape.serialize_request,
                    shape.response_class.FromString,
                )
            else:
                raise TypeError(
                    "a descriptor-bound stub needs a grpc-style channel or a quic_rpc RPCClient"
                )
            setattr(self, shape.name, bound)

    return type(
        f"{service.name}Stub",
        (),
        {
            "__init__": __init__,
            "__doc__": f"Client stub for {service.full_name}, bound from its descriptor.",
            "__module__": __name__,
        },
    )


# --------------------------------------------------------------------------- native


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF: Any = _Eof()


class NativeServicerContext:
    """A ``grpc.aio.ServicerContext``-shaped view of quic_rpc's ``ServerCallContext``."""

    def __init__(self, ctx: ServerCallContext, requests: AsyncIterator[Any] | None = None) -> None:
        self._ctx = ctx
        self._requests = requests
        self._code: StatusCode | None = None
        self._details: str | None = None
        self._trailing: MetadataTuple = ()

    @property
    def native(self) -> ServerCallContext:
        """The underlying quic_rpc context."""
        return self._ctx

    def invocation_metadata(self) -> MetadataTuple:
        return normalize_metadata(tuple(self._ctx.invocation_metadata))

    def peer(self) -> str:
        return _peer.format_peer(self._ctx.peer_info)

    def peer_info(self) -> PeerInfo | None:
        return self._ctx.peer_info

    def peer_identities(self) -> Any:
        return _peer.peer_identities(self._ctx.peer_info)

    def peer_identity_key(self) -> str | None:
        return _peer.peer_identity_key(self._ctx.peer_info)

    def auth_context(self) -> dict[str, list[bytes]]:
        return _peer.auth_context(self._ctx.peer_info)

    def time_remaining(self) -> float | None:
        return self._ctx.time_remaining()

    async def send_initial_metadata(self, initial_metadata: Iterable[Any]) -> None:
        await self._ctx.send_initial_metadata(Metadata(validate_metadata(initial_metadata)))

    def set_trailing_metadata(self, trailing_metadata: Iterable[Any]) -> None:
        self._trailing = validate_metadata(trailing_metadata)
        self._ctx.set_trailing_metadata(Metadata(self._trailing))

    def trailing_metadata(self) -> MetadataTuple:
        return self._trailing

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Iterable[Any] = ()
    ) -> NoReturn:
        status = to_status_code(code)
        if status is StatusCode.OK:
            status = StatusCode.UNKNOWN
        trailing = validate_metadata(trailing_metadata) if trailing_metadata else self._trailing
        raise RPCError(Status(code_number(status)), details or "", Metadata(trailing))

    def set_code(self, code: Any) -> None:
        self._code = to_status_code(code)
        self._apply_status()

    def set_details(self, details: str | None) -> None:
        self._details = details
        self._apply_status()

    def _apply_status(self) -> None:
        code = self._code if self._code is not None else StatusCode.OK
        self._ctx.set_status(Status(code_number(code)), self._details or "")

    def code(self) -> StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    async def write(self, message: Any) -> None:
        await self._ctx.write(message)

    async def read(self) -> Any:
        if self._requests is None:
            raise RuntimeError("read() is for request-streaming methods")
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return EOF

    def cancelled(self) -> bool:
        return self._ctx.cancelled.is_set()

    def done(self) -> bool:
        return self._ctx.cancelled.is_set()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._ctx.cancelled.add_done_callback(lambda *_args: callback(self))

    def set_compression(self, compression: Any) -> None:
        """Accepted for compatibility; calls are not compressed."""

    def disable_next_message_compression(self) -> None:
        """Accepted for compatibility; calls are not compressed."""


def _native_handler(shape: MethodShape, behavior: Callable[..., Any]) -> Handler[Any, Any]:
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        raise TypeError(
            f"{shape.path}: native quic_rpc serving needs async servicer methods "
            "(async def or async generator)"
        )
    fn: Callable[..., Any]
    if shape.request_streaming:

        def call_streaming(requests: AsyncIterator[Any], ctx: ServerCallContext) -> Any:
            return behavior(requests, NativeServicerContext(ctx, requests))

        fn = call_streaming
    else:

        def call_single(request: Any, ctx: ServerCallContext) -> Any:
            return behavior(request, NativeServicerContext(ctx))

        fn = call_single
    return Handler(shape.kind, fn, shape.request_class.FromString, shape.serialize_response)


def native_manifest(service: ServiceDescriptor, servicer: Any) -> dict[str, Handler[Any, Any]]:
    """A quic_rpc ``RPCServer`` manifest serving ``servicer``'s implemented methods."""
    manifest: dict[str, Handler[Any, Any]] = {}
    for shape in describe_service(service):
        behavior = getattr(servicer, shape.name, None)
        if callable(behavior):
            manifest[shape.path] = _native_handler(shape, behavior)
    return manifest


def merge_manifests(*manifests: Mapping[str, Handler[Any, Any]]) -> dict[str, Handler[Any, Any]]:
    """One manifest from several services' (paths must not collide)."""
    merged: dict[str, Handler[Any, Any]] = {}
    for manifest in manifests:
        for path, handler in manifest.items():
            if path in merged:
                raise ValueError(f"method {path} is in more than one manifest")
            merged[path] = handler
    return merged
