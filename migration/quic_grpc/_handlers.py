"""Method handlers and generic handlers in grpcio's shapes.

The server accepts handler objects made by real grpcio (``grpc.unary_unary_rpc_method_handler``,
``grpc.method_handlers_generic_handler``) as well as the equivalents here: anything with
grpcio's ``RpcMethodHandler`` attributes and any object with a ``service(details)`` method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ._compat import GenericRpcHandler, HandlerCallDetails, RpcMethodHandler
from ._metadata import MetadataTuple

__all__ = [
    "CallDetails",
    "DictionaryGenericHandler",
    "MethodHandler",
    "method_handlers_generic_handler",
    "stream_stream_rpc_method_handler",
    "stream_unary_rpc_method_handler",
    "unary_stream_rpc_method_handler",
    "unary_unary_rpc_method_handler",
]

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


class _MethodHandlerFields(NamedTuple):
    request_streaming: bool
    response_streaming: bool
    request_deserializer: Deserializer | None
    response_serializer: Serializer | None
    unary_unary: Callable[..., Any] | None
    unary_stream: Callable[..., Any] | None
    stream_unary: Callable[..., Any] | None
    stream_stream: Callable[..., Any] | None


class MethodHandler(_MethodHandlerFields, RpcMethodHandler):
    """One RPC method's implementation (a ``grpc.RpcMethodHandler``)."""


class _CallDetailsFields(NamedTuple):
    method: str
    invocation_metadata: MetadataTuple


class CallDetails(_CallDetailsFields, HandlerCallDetails):
    """``grpc.HandlerCallDetails``: the method path and the client's metadata."""


def unary_unary_rpc_method_handler(
    behavior: Callable[..., Any],
    request_deserializer: Deserializer | None = None,
    response_serializer: Serializer | None = None,
) -> MethodHandler:
    return MethodHandler(
        False, False, request_deserializer, response_serializer, behavior, None, None, None
    )


def unary_stream_rpc_method_handler(
    behavior: Callable[..., Any],
    request_deserializer: Deserializer | None = None,
    response_serializer: Serializer | None = None,
) -> MethodHandler:
    return MethodHandler(
        False, True, request_deserializer, response_serializer, None, behavior, None, None
    )


def stream_unary_rpc_method_handler(
    behavior: Callable[..., Any],
    request_deserializer: Deserializer | None = None,
    response_serializer: Serializer | None = None,
) -> MethodHandler:
    return MethodHandler(
        True, False, request_deserializer, response_serializer, None, None, behavior, None
    )


def stream_stream_rpc_method_handler(
    behavior: Callable[..., Any],
    request_deserializer: Deserializer | None = None,
    response_serializer: Serializer | None = None,
) -> MethodHandler:
    return MethodHandler(
        True, True, request_deserializer, response_serializer, None, None, None, behavior
    )


class DictionaryGenericHandler(GenericRpcHandler):
    """Serves one service's methods from a ``{method name: handler}`` mapping."""

    def __init__(self, service: str, method_handlers: Mapping[str, Any]) -> None:
        self._name = service
        self._method_handlers = {
            f"/{service}/{method}": handler for method, handler in method_handlers.items()
        }

    def service_name(self) -> str:
        return self._name

    def service(self, handler_call_details: Any) -> Any:
        return self._method_handlers.get(handler_call_details.method)


def method_handlers_generic_handler(
    service: str, method_handlers: Mapping[str, Any]
) -> DictionaryGenericHandler:
    return DictionaryGenericHandler(service, method_handlers)


def check_method_handler(handler: Any, method: str) -> None:
    """Raise TypeError unless ``handler`` has grpcio's RpcMethodHandler attributes."""
    for attr in (
        "request_streaming",
        "response_streaming",
        "request_deserializer",
        "response_serializer",
    ):
        if not hasattr(handler, attr):
            raise TypeError(f"handler for {method} is not an RpcMethodHandler (no {attr})")
    if behavior_of(handler) is None:
        raise TypeError(f"handler for {method} has no behaviour for its kind")


def behavior_of(handler: Any) -> Callable[..., Any] | None:
    """The business-logic callable matching the handler's streaming kind."""
    name = {
        (False, False): "unary_unary",
        (False, True): "unary_stream",
        (True, False): "stream_unary",
        (True, True): "stream_stream",
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    behavior: Callable[..., Any] | None = getattr(handler, name, None)
    return behavior
