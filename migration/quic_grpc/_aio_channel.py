"""``grpc.aio`` channel, multicallables and call objects over a client transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any

from ._aio_metadata import Metadata, to_aio_metadata
from ._call_core import EOF, CallCore, CallEnded
from ._compat import AioClientCallDetailsBase, ChannelConnectivity, StatusCode
from ._errors import AioRpcError, UsageError
from ._metadata import validate_metadata
from ._status import code_from_number
from ._transport import CallStatus, ClientTransport

__all__ = [
    "AioChannel",
    "ClientCallDetails",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
]


class ClientCallDetails(AioClientCallDetailsBase):
    """``grpc.aio.ClientCallDetails``: method, timeout, metadata, credentials, wait_for_ready."""


def _error(status: CallStatus, initial: Any) -> AioRpcError:
    return AioRpcError(
        code_from_number(status.code),
        initial,
        to_aio_metadata(status.trailing_metadata),
        status.details,
    )


class _AioCall:
    """The common part of the four aio call kinds (``grpc.aio.Call``)."""

    def __init__(self, core: CallCore) -> None:
        self._core = core

    async def _raise_for(self, ended: CallEnded) -> AioRpcError:
        return _error(ended.status, to_aio_metadata(await self._core.initial_metadata()))

    def cancelled(self) -> bool:
        status = self._core.status
        return status is not None and status.code == StatusCode.CANCELLED.value[0]

    def done(self) -> bool:
        return self._core.done()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if not self._core.add_done_callback(lambda: callback(self)):
            callback(self)

    def time_remaining(self) -> float | None:
        return self._core.time_remaining()

    def cancel(self) -> bool:
        return self._core.cancel()

    async def initial_metadata(self) -> Metadata:
        return to_aio_metadata(await self._core.initial_metadata())

    async def trailing_metadata(self) -> Metadata:
        return to_aio_metadata((await self._core.wait_status()).trailing_metadata)

    async def code(self) -> StatusCode:
        return code_from_number((await self._core.wait_status()).code)

    async def details(self) -> str:
        return (await self._core.wait_status()).details

    async def debug_error_string(self) -> str:
        status = await self._core.wait_status()
        return f"QUIC call ended: status={code_from_number(status.code).name}"

    async def wait_for_connection(self) -> None:
        await self._core.initial_metadata()


class _UnaryResponseMixin(_AioCall):
    _outcome: asyncio.Future[Any] | None = None
    """The response (or error) for every await after the first."""

    async def _response(self) -> Any:
        try:
            response = await self._core.read()
            if response is EOF:
                status = await self._core.wait_status()
                raise CallEnded(
                    CallStatus(StatusCode.INTERNAL.value[0], "No response message", ())
                    if status.code == 0
                    else status
                )
            end = await self._core.read()
            if end is not EOF:
                raise CallEnded(CallStatus(StatusCode.INTERNAL.value[0], "Too many responses"))
            return response
        except CallEnded as ended:
            if self._core.cancelled_locally:
                raise asyncio.CancelledError() from None
            raise await self._raise_for(ended) from None
        except asyncio.CancelledError:
            self._core.cancel()
            raise

    def __await__(self) -> Generator[Any, None, Any]:
        # The first await reads the response in the awaiting task itself (no task of its
        # own: that costs loop turns on every call); later awaits share its outcome.
        # Cancelling the first awaiter cancels the call, as grpc.aio does.
        outcome = self._outcome
        if outcome is None:
            outcome = self._outcome = self._core.loop.create_future()
            try:
                response = yield from self._response().__await__()
            except asyncio.CancelledError:
                outcome.cancel()
                raise
            except BaseException as exc:
                outcome.set_exception(exc)
                outcome.exception()  # seen: raised to the first awaiter
                raise
            outcome.set_result(response)
            return response
        try:
            return (yield from asyncio.shield(outcome).__await__())
        except asyncio.CancelledError:
            if outcome.cancelled() or self._core.cancelled_locally:
                raise
            self._core.cancel()
            raise


class _StreamResponseMixin(_AioCall):
    _iterating = False

    async def read(self) -> Any:
        try:
            return await self._core.read()
        except CallEnded as ended:
            if self._core.cancelled_locally:
                raise asyncio.CancelledError() from None
            raise await self._raise_for(ended) from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is EOF:
                return
            yield message


class _StreamRequestMixin(_AioCall):
    async def write(self, request: Any) -> None:
        try:
            await self._core.write(request)
        except CallEnded as ended:
            raise await self._raise_for(ended) from None

    async def done_writing(self) -> None:
        await self._core.done_writing()


class UnaryUnaryCall(_UnaryResponseMixin):
    """An awaitable unary-unary call."""


class UnaryStreamCall(_StreamResponseMixin):
    """A unary-stream call: ``async for`` the responses or ``await call.read()``."""


class StreamUnaryCall(_StreamRequestMixin, _UnaryResponseMixin):
    """A stream-unary call: awaitable; ``write()`` / ``done_writing()`` without an iterator."""


class StreamStreamCall(_StreamRequestMixin, _StreamResponseMixin):
    """A stream-stream call: ``read()``/``write()`` or iterate."""


class _MultiCallable:
    def __init__(
        self,
        channel: AioChannel,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer

    _streaming: tuple[bool, bool] = (False, False)

    def _core(
        self,
        timeout: float | None,
        metadata: Any,
        wait_for_ready: bool | None = None,
        *,
        unary_request: bool = False,
    ) -> CallCore:
        channel = self._channel
        if channel.closed:
            raise UsageError("Channel is closed.")
        return CallCore(
            channel.transport,
            self._method,
            validate_metadata(tuple(metadata) if metadata is not None else None),
            timeout,
            self._serializer,
            self._deserializer,
            streaming=self._streaming,
            max_receive=channel.max_receive,
            max_send=channel.max_send,
            wait_for_ready=bool(wait_for_ready),
            defer_open=unary_request,
        )

    _intercept = ""
    """The interceptor method for this kind of call (``intercept_unary_unary``, ...)."""
    _call_class: type[_AioCall] = _AioCall

    def _start(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
    ) -> Any:
        details = self._details(timeout, metadata, credentials, wait_for_ready)
        interceptors = self._channel.interceptors_for(self._intercept)
        if interceptors:
            from ._aio_interceptors import InterceptedCall

            return InterceptedCall(interceptors, self._intercept, details, request, self._invoke)
        return self._invoke(details, request)

    def _invoke(self, details: Any, request: Any) -> _AioCall:
        """Start the call: a request, or a request iterator (None: ``write()`` calls)."""
        unary = not self._streaming[0]
        core = self._core(
            details.timeout, details.metadata, details.wait_for_ready, unary_request=unary
        )
        call = self._call_class(core)
        if unary:
            try:
                core.send_unary(request)
            except CallEnded:
                pass
        elif request is not None:
            core.send_async_iterator(request)
        return call

    def _details(
        self, timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: Any
    ) -> ClientCallDetails:
        return ClientCallDetails(
            self._method,
            timeout,
            None if metadata is None else Metadata(*tuple(metadata)),
            credentials,
            wait_for_ready,
        )


class UnaryUnaryMultiCallable(_MultiCallable):
    _streaming = (False, False)
    _intercept = "intercept_unary_unary"
    _call_class = UnaryUnaryCall

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready)


class UnaryStreamMultiCallable(_MultiCallable):
    _streaming = (False, True)
    _intercept = "intercept_unary_stream"
    _call_class = UnaryStreamCall

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready)


class StreamUnaryMultiCallable(_MultiCallable):
    _streaming = (True, False)
    _intercept = "intercept_stream_unary"
    _call_class = StreamUnaryCall

    def __call__(
        self,
        request_iterator: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready)


class StreamStreamMultiCallable(_MultiCallable):
    _streaming = (True, True)
    _intercept = "intercept_stream_stream"
    _call_class = StreamStreamCall

    def __call__(
        self,
        request_iterator: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready)


class AioChannel:
    """``grpc.aio.Channel`` over a client transport (QUIC, or in memory for tests)."""

    def __init__(
        self,
        transport: ClientTransport,
        *,
        options: Sequence[tuple[str, Any]] | None = None,
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        from ._server import DEFAULT_MAX_RECEIVE, _limit

        opts = dict(options or ())
        self.transport = transport
        self.max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE))
        self.max_send = _limit(opts.get("grpc.max_send_message_length", -1))
        self._interceptors = list(interceptors or ())
        for interceptor in self._interceptors:
            if not any(
                hasattr(interceptor, name)
                for name in (
                    "intercept_unary_unary",
                    "intercept_unary_stream",
                    "intercept_stream_unary",
                    "intercept_stream_stream",
                )
            ):
                raise ValueError(
                    f"Interceptor {interceptor} must be one of the aio client interceptor types"
                )
        self.closed = False
        self._state = ChannelConnectivity.IDLE
        self._state_changed = asyncio.Event()

    def interceptors_for(self, name: str) -> list[Any]:
        return [i for i in self._interceptors if hasattr(i, name)]

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> UnaryUnaryMultiCallable:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> UnaryStreamMultiCallable:
        return UnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> StreamUnaryMultiCallable:
        return StreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> StreamStreamMultiCallable:
        return StreamStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def _set_state(self, state: Any) -> None:
        if state != self._state:
            self._state = state
            self._state_changed.set()
            self._state_changed = asyncio.Event()

    async def channel_ready(self) -> None:
        """Wait until the channel can carry calls (connects, retrying, if needed)."""
        while not self.closed:
            self._set_state(ChannelConnectivity.CONNECTING)
            try:
                await self.transport.wait_ready()
            except Exception:
                self._set_state(ChannelConnectivity.TRANSIENT_FAILURE)
                await asyncio.sleep(0.2)
                continue
            self._set_state(ChannelConnectivity.READY)
            return
        raise UsageError("Channel is closed.")

    def get_state(self, try_to_connect: bool = False) -> Any:
        if self.closed:
            return ChannelConnectivity.SHUTDOWN
        return self._state

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        if self.get_state() == last_observed_state:
            await self._state_changed.wait()

    async def close(self, grace: float | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self._set_state(ChannelConnectivity.SHUTDOWN)
        await self.transport.aclose()

    async def __aenter__(self) -> AioChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)
