"""Sync client interceptors: ``grpc.intercept_channel(channel, *interceptors)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ._compat import (
    ClientCallDetails,
    RpcError,
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)

__all__ = ["InterceptedChannel", "intercept_channel"]


class _DetailsFields(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_DetailsFields, ClientCallDetails):
    """``grpc.ClientCallDetails`` handed to interceptors."""


def _kwargs(details: Any) -> dict[str, Any]:
    return {
        "timeout": getattr(details, "timeout", None),
        "metadata": getattr(details, "metadata", None),
        "credentials": getattr(details, "credentials", None),
        "wait_for_ready": getattr(details, "wait_for_ready", None),
        "compression": getattr(details, "compression", None),
    }


class _Intercepted:
    def __init__(self, method: str, thunk: Callable[[str], Any], interceptor: Any) -> None:
        self._method = method
        self._thunk = thunk
        self._interceptor = interceptor

    def _details(
        self,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> _ClientCallDetails:
        return _ClientCallDetails(
            self._method, timeout, metadata, credentials, wait_for_ready, compression
        )


class _UnaryResponse(_Intercepted):
    _hook = ""

    def _call(self, request: Any, details: _ClientCallDetails, use_future: bool) -> Any:
        def continuation(new_details: Any, new_request: Any) -> Any:
            callable_ = self._thunk(new_details.method)
            if use_future:
                return callable_.future(new_request, **_kwargs(new_details))
            try:
                _response, call = callable_.with_call(new_request, **_kwargs(new_details))
            except RpcError as error:
                return error
            return call

        return getattr(self._interceptor, self._hook)(continuation, details, request)

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        response, _call = self.with_call(
            request, timeout, metadata, credentials, wait_for_ready, compression
        )
        return response

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, Any]:
        details = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        call = self._call(request, details, use_future=False)
        return call.result(), call

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        details = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        return self._call(request, details, use_future=True)


class _UnaryUnary(_UnaryResponse):
    _hook = "intercept_unary_unary"


class _StreamUnary(_UnaryResponse):
    _hook = "intercept_stream_unary"


class _StreamResponse(_Intercepted):
    _hook = ""

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        details = self._details(timeout, metadata, credentials, wait_for_ready, compression)

        def continuation(new_details: Any, new_request: Any) -> Any:
            return self._thunk(new_details.method)(new_request, **_kwargs(new_details))

        return getattr(self._interceptor, self._hook)(continuation, details, request)


class _UnaryStream(_StreamResponse):
    _hook = "intercept_unary_stream"


class _StreamStream(_StreamResponse):
    _hook = "intercept_stream_stream"


class InterceptedChannel:
    """A channel whose calls pass through one interceptor, then the wrapped channel."""

    def __init__(self, channel: Any, interceptor: Any) -> None:
        self._channel = channel
        self._interceptor = interceptor

    def _wrap(
        self,
        kind: str,
        base: type,
        wrapper: type[_Intercepted],
        method: str,
        request_serializer: Any,
        response_deserializer: Any,
        registered: bool | None,
    ) -> Any:
        def thunk(new_method: str) -> Any:
            return getattr(self._channel, kind)(
                new_method, request_serializer, response_deserializer, registered
            )

        if isinstance(self._interceptor, base):
            return wrapper(method, thunk, self._interceptor)
        return thunk(method)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._wrap(
            "unary_unary",
            UnaryUnaryClientInterceptor,
            _UnaryUnary,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._wrap(
            "unary_stream",
            UnaryStreamClientInterceptor,
            _UnaryStream,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._wrap(
            "stream_unary",
            StreamUnaryClientInterceptor,
            _StreamUnary,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return self._wrap(
            "stream_stream",
            StreamStreamClientInterceptor,
            _StreamStream,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InterceptedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_KINDS = (
    UnaryUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    StreamStreamClientInterceptor,
)


def intercept_channel(channel: Any, *interceptors: Any) -> Any:
    """Like ``grpc.intercept_channel``: the first interceptor is the outermost."""
    result = channel
    for interceptor in reversed(interceptors):
        if not isinstance(interceptor, _KINDS):
            raise TypeError(
                "interceptor must be UnaryUnaryClientInterceptor or "
                "UnaryStreamClientInterceptor or StreamUnaryClientInterceptor or "
                "StreamStreamClientInterceptor"
            )
        result = InterceptedChannel(result, interceptor)
    return result
