"""The sync ``grpc.Channel`` over a client transport; I/O runs on the adapter's loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._call_core import EOF, CallCore, CallEnded
from ._compat import (
    Call,
    ChannelConnectivity,
    Future,
    FutureCancelledError,
    FutureTimeoutError,
    StatusCode,
)
from ._errors import InactiveRpcError, UsageError
from ._loop import call_on_loop, io_loop, run_on_loop, submit_on_loop
from ._metadata import MetadataTuple, validate_metadata
from ._status import code_from_number
from ._transport import CallStatus, ClientTransport

__all__ = ["Channel", "channel_ready_future"]

_LOG = logging.getLogger("migration.quic_grpc")


def _error(status: CallStatus, initial: MetadataTuple) -> InactiveRpcError:
    return InactiveRpcError(
        code_from_number(status.code), status.details, initial, status.trailing_metadata
    )


class _CallInfo(Call):
    """grpc.Call accessors over a call core living on the I/O loop."""

    def __init__(self, core: CallCore) -> None:
        self._core = core

    def _status(self) -> CallStatus:
        status = self._core.status
        if status is not None:
            return status
        return run_on_loop(self._core.wait_status())

    def initial_metadata(self) -> MetadataTuple:
        if self._core.initial is not None:
            return self._core.initial
        return run_on_loop(self._core.initial_metadata())

    def trailing_metadata(self) -> MetadataTuple:
        return self._status().trailing_metadata

    def code(self) -> StatusCode:
        return code_from_number(self._status().code)

    def details(self) -> str:
        return self._status().details

    def debug_error_string(self) -> str:
        return f"QUIC call ended: status={self.code().name}"

    def is_active(self) -> bool:
        return not self._core.done()

    def time_remaining(self) -> float | None:
        return self._core.time_remaining()

    def cancel(self) -> bool:
        if self._core.done():
            return False
        return call_on_loop(self._core.cancel)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return call_on_loop(lambda: self._core.add_done_callback(callback))


class _UnaryOutcome(_CallInfo, Future):
    """A unary-response call in flight or done: ``grpc.Call`` and ``grpc.Future``."""

    def __init__(self, core: CallCore, future: concurrent.futures.Future[Any]) -> None:
        super().__init__(core)
        self._future = future

    def cancelled(self) -> bool:
        return self._core.cancelled_locally

    def running(self) -> bool:
        return not self._future.done()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise FutureTimeoutError() from None
        except InactiveRpcError as error:
            if self._core.cancelled_locally:
                raise FutureCancelledError() from None
            raise error from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            error = self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise FutureTimeoutError() from None
        if error is not None and self._core.cancelled_locally:
            raise FutureCancelledError()
        return error

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))


class _StreamingOutcome(_CallInfo, Future):
    """A streaming-response call: an iterator of responses, ``grpc.Call`` and ``grpc.Future``."""

    def __init__(self, core: CallCore) -> None:
        super().__init__(core)
        self._finished = threading.Event()
        self._core.add_done_callback(self._finished.set)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = run_on_loop(self._core.read())
        except CallEnded as ended:
            raise _error(ended.status, self.initial_metadata()) from None
        if message is EOF:
            raise StopIteration
        return message

    def next(self) -> Any:
        return self.__next__()

    def cancelled(self) -> bool:
        return self._core.cancelled_locally

    def running(self) -> bool:
        return not self._core.done()

    def done(self) -> bool:
        return self._core.done()

    def result(self, timeout: float | None = None) -> Any:
        if not self._finished.wait(timeout):
            raise FutureTimeoutError()
        status = self._status()
        if status.code != 0:
            raise _error(status, self.initial_metadata())
        return self

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._finished.wait(timeout):
            raise FutureTimeoutError()
        status = self._status()
        return None if status.code == 0 else _error(status, self.initial_metadata())

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        def call() -> None:
            fn(self)

        if not self.add_callback(call):
            fn(self)


def _pump_requests(core: CallCore, request_iterator: Any) -> None:
    """Feed a (possibly blocking) sync request iterator to the call from its own thread."""

    def pump() -> None:
        try:
            for request in request_iterator:
                if core.done():
                    return
                run_on_loop(core.write(request))
            run_on_loop(core.done_writing())
        except CallEnded:
            return
        except Exception as exc:
            _LOG.exception("request iterator raised")
            status = CallStatus(StatusCode.UNKNOWN.value[0], f"Exception iterating requests: {exc}")
            call_on_loop(lambda: core._end_locally(status))

    threading.Thread(target=pump, name="quic-grpc-requests", daemon=True).start()


class _MultiCallable:
    def __init__(
        self,
        channel: Channel,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer

    _streaming: tuple[bool, bool] = (False, False)

    def _new_core(
        self, timeout: float | None, metadata: Any, wait_for_ready: bool | None = None
    ) -> CallCore:
        channel = self._channel
        if channel.closed:
            raise UsageError("Cannot invoke RPC on closed channel!")
        checked = validate_metadata(metadata)

        async def make() -> CallCore:
            return CallCore(
                channel.transport,
                self._method,
                checked,
                timeout,
                self._serializer,
                self._deserializer,
                streaming=self._streaming,
                max_receive=channel.max_receive,
                max_send=channel.max_send,
                wait_for_ready=bool(wait_for_ready),
            )

        return run_on_loop(make())

    def _unary_response(
        self, core: CallCore, start: Callable[[], None]
    ) -> concurrent.futures.Future[Any]:
        async def run() -> Any:
            try:
                start()
                response = await core.read()
                if response is EOF:
                    raise CallEnded(CallStatus(StatusCode.INTERNAL.value[0], "No response message"))
                end = await core.read()
                if end is not EOF:
                    raise CallEnded(CallStatus(StatusCode.INTERNAL.value[0], "Too many responses"))
                return response
            except CallEnded as ended:
                raise _error(ended.status, await core.initial_metadata()) from None

        return submit_on_loop(run())

    @staticmethod
    def _wait(future: concurrent.futures.Future[Any], core: CallCore) -> Any:
        try:
            return future.result()
        except KeyboardInterrupt:
            io_loop().call_soon_threadsafe(core.cancel)
            raise


class UnaryUnaryMultiCallable(_MultiCallable):
    _streaming = (False, False)

    def _start(
        self, request: Any, timeout: float | None, metadata: Any, wait_for_ready: bool | None
    ) -> _UnaryOutcome:
        core = self._new_core(timeout, metadata, wait_for_ready)

        def start() -> None:
            core.send_unary(request)

        return _UnaryOutcome(core, self._unary_response(core, start))

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        outcome = self._start(request, timeout, metadata, wait_for_ready)
        return self._wait(outcome._future, outcome._core)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, _UnaryOutcome]:
        outcome = self._start(request, timeout, metadata, wait_for_ready)
        return self._wait(outcome._future, outcome._core), outcome

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryOutcome:
        return self._start(request, timeout, metadata, wait_for_ready)


class StreamUnaryMultiCallable(_MultiCallable):
    _streaming = (True, False)

    def _start(
        self,
        request_iterator: Any,
        timeout: float | None,
        metadata: Any,
        wait_for_ready: bool | None,
    ) -> _UnaryOutcome:
        core = self._new_core(timeout, metadata, wait_for_ready)
        outcome = _UnaryOutcome(core, self._unary_response(core, lambda: None))
        _pump_requests(core, request_iterator)
        return outcome

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        outcome = self._start(request_iterator, timeout, metadata, wait_for_ready)
        return self._wait(outcome._future, outcome._core)

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, _UnaryOutcome]:
        outcome = self._start(request_iterator, timeout, metadata, wait_for_ready)
        return self._wait(outcome._future, outcome._core), outcome

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _UnaryOutcome:
        return self._start(request_iterator, timeout, metadata, wait_for_ready)


class UnaryStreamMultiCallable(_MultiCallable):
    _streaming = (False, True)

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _StreamingOutcome:
        core = self._new_core(timeout, metadata, wait_for_ready)

        async def start() -> None:
            core.send_unary(request)

        try:
            run_on_loop(start())
        except CallEnded:
            pass
        return _StreamingOutcome(core)


class StreamStreamMultiCallable(_MultiCallable):
    _streaming = (True, True)

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _StreamingOutcome:
        core = self._new_core(timeout, metadata, wait_for_ready)
        _pump_requests(core, request_iterator)
        return _StreamingOutcome(core)


class Channel:
    """``grpc.Channel`` over a client transport that lives on the adapter's I/O loop."""

    def __init__(
        self,
        make_transport: Callable[[], ClientTransport],
        *,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        from ._server import DEFAULT_MAX_RECEIVE, _limit

        opts = dict(options or ())
        self.max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE))
        self.max_send = _limit(opts.get("grpc.max_send_message_length", -1))

        async def create() -> ClientTransport:
            return make_transport()

        self.transport: ClientTransport = run_on_loop(create())
        self.closed = False
        self._state = ChannelConnectivity.IDLE
        self._subscribers: list[Callable[[Any], None]] = []
        self._lock = threading.Lock()

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

    # ---- connectivity

    def _set_state(self, state: Any) -> None:
        with self._lock:
            if state == self._state:
                return
            self._state = state
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(state)
            except Exception:
                _LOG.exception("connectivity callback failed")

    def _connect(self) -> concurrent.futures.Future[None]:
        async def connect() -> None:
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

        return submit_on_loop(connect())

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        with self._lock:
            self._subscribers.append(callback)
            state = self._state
        callback(state)
        if try_to_connect and state != ChannelConnectivity.READY:
            self._connect()

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        run_on_loop(self.transport.aclose())
        self._set_state(ChannelConnectivity.SHUTDOWN)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            try:
                submit_on_loop(self.transport.aclose())
            except Exception:
                return


class _ReadyFuture(Future):
    def __init__(self, channel: Channel) -> None:
        self._future = channel._connect()

    def cancel(self) -> bool:
        return self._future.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def running(self) -> bool:
        return self._future.running()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> None:
        try:
            self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise FutureCancelledError() from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise FutureTimeoutError() from None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))


def channel_ready_future(channel: Any) -> Future:
    """A future that completes once ``channel`` is ready to carry calls."""
    if not isinstance(channel, Channel):
        inner = getattr(channel, "_channel", None)
        if isinstance(inner, Channel):
            return _ReadyFuture(inner)
        raise TypeError("channel_ready_future needs a migration.quic_grpc channel")
    return _ReadyFuture(channel)
