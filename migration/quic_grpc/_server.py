"""The grpc-shaped servers: ``server()`` (sync, thread pool) and ``aio.server()``.

Both run the same dispatcher on an asyncio loop: find the handler (through the server
interceptors), run the servicer method, and turn its outcome into a status in one place
(:func:`status_for`). The sync server's loop is the process-wide I/O loop; its servicer
methods run in the thread pool it was given. The aio server runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from ._compat import StatusCode
from ._context import (
    EOF,
    AioServicerContext,
    CallState,
    DeserializeError,
    MessageTooLargeError,
    SerializeError,
    ServicerContext,
    serialize,
)
from ._credentials import QUICServerCredentials
from ._errors import AbortError, UsageError
from ._handlers import CallDetails, behavior_of, check_method_handler
from ._loop import io_loop, run_on_loop, submit_on_loop
from ._status import code_number
from ._transport import CallCancelledError, CallStatus, ServerCallIO, ServerDispatch

__all__ = ["AioServer", "PortBinder", "Server", "ServerPort", "aio_server", "server", "status_for"]

_LOG = logging.getLogger("migration.quic_grpc")

DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
"""grpc's default limit on received messages (4 MiB)."""


class ServerPort(Protocol):
    """A bound listening port of some transport."""

    @property
    def port(self) -> int: ...

    async def open(self) -> None:
        """Bind now (the sync server does this in ``add_secure_port``)."""
        ...

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


class PortBinder(Protocol):
    def __call__(
        self,
        address: str,
        credentials: QUICServerCredentials,
        dispatch: ServerDispatch,
        *,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> ServerPort: ...


def _default_binder() -> PortBinder:
    from ._quic import bind_quic_port

    return bind_quic_port


def _limit(value: Any) -> int | None:
    number = int(value)
    return None if number < 0 else number


def status_for(state: CallState, exc: BaseException | None, *, aio: bool) -> CallStatus:
    """The one place where a servicer's outcome becomes the call's status."""
    trailing = state.trailing
    if exc is None:
        code = state.code if state.code is not None else StatusCode.OK
        return CallStatus(code_number(code), state.details or "", trailing)
    if isinstance(exc, AbortError):
        return CallStatus(code_number(exc.code), exc.details, trailing)
    if isinstance(exc, MessageTooLargeError):
        return CallStatus(code_number(StatusCode.RESOURCE_EXHAUSTED), str(exc), trailing)
    if isinstance(exc, DeserializeError | SerializeError):
        return CallStatus(code_number(StatusCode.INTERNAL), str(exc), trailing)
    if state.code is not None and state.code is not StatusCode.OK:
        code = state.code
    else:
        code = StatusCode.UNKNOWN
    if state.details is not None:
        details = state.details
    elif aio:
        details = f"Unexpected {type(exc)}: {exc}"
    else:
        details = f"Exception calling application: {exc}"
    if not isinstance(exc, NotImplementedError):
        _LOG.error("Exception in servicer method: %r", exc, exc_info=exc)
    return CallStatus(code_number(code), details, trailing)


class _Dispatcher:
    """Handler registry, interceptors and per-call execution, shared by both servers."""

    def __init__(
        self,
        *,
        handlers: Iterable[Any] | None,
        interceptors: Sequence[Any] | None,
        options: Sequence[tuple[str, Any]] | None,
        maximum_concurrent_rpcs: int | None,
        aio: bool,
        executor: Executor | None,
    ) -> None:
        self._generic: list[Any] = []
        self._registered: dict[str, Any] = {}
        self._interceptors = list(interceptors or ())
        opts: Mapping[str, Any] = dict(options or ())
        self.max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE))
        self.max_send = _limit(opts.get("grpc.max_send_message_length", -1))
        if maximum_concurrent_rpcs is not None and maximum_concurrent_rpcs < 1:
            raise ValueError("maximum_concurrent_rpcs must be None or positive")
        self._max_concurrent = maximum_concurrent_rpcs
        self._aio = aio
        self._executor = executor
        self.active: set[asyncio.Task[Any]] = set()
        self.stopping = False
        if handlers:
            self.add_generic_rpc_handlers(handlers)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        for handler in generic_rpc_handlers:
            if not callable(getattr(handler, "service", None)):
                raise AttributeError(
                    f'"{handler}" must conform to grpc.GenericRpcHandler type but does not '
                    'have "service" method!'
                )
            self._generic.append(handler)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        for method, handler in method_handlers.items():
            path = f"/{service_name}/{method}"
            check_method_handler(handler, path)
            self._registered[path] = handler

    def _lookup(self, details: CallDetails) -> Any:
        handler = self._registered.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def _lookup_sync(self, details: Any, index: int = 0) -> Any:
        if index == len(self._interceptors):
            return self._lookup(details)
        interceptor = self._interceptors[index]
        return interceptor.intercept_service(lambda d: self._lookup_sync(d, index + 1), details)

    async def _lookup_aio(self, details: Any, index: int = 0) -> Any:
        if index == len(self._interceptors):
            return self._lookup(details)
        interceptor = self._interceptors[index]

        async def continuation(d: Any) -> Any:
            return await self._lookup_aio(d, index + 1)

        result = interceptor.intercept_service(continuation, details)
        if inspect.isawaitable(result):
            result = await result
        return result

    # ---- per call

    async def dispatch(self, io: ServerCallIO) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        try:
            await self._serve(io)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await io.finish(
                    CallStatus(code_number(StatusCode.UNAVAILABLE), "Server shutting down")
                )
            raise
        finally:
            if task is not None:
                self.active.discard(task)

    async def _serve(self, io: ServerCallIO) -> None:
        if self.stopping:
            await io.finish(CallStatus(code_number(StatusCode.UNAVAILABLE), "Server shutting down"))
            return
        if self._max_concurrent is not None and len(self.active) > self._max_concurrent:
            await io.finish(
                CallStatus(
                    code_number(StatusCode.RESOURCE_EXHAUSTED), "Concurrent RPC limit exceeded!"
                )
            )
            return
        loop = asyncio.get_running_loop()
        state = CallState(io, loop, max_receive=self.max_receive, max_send=self.max_send)
        details = CallDetails(io.info.method, state.metadata)
        try:
            if self._aio:
                handler = await self._lookup_aio(details)
            elif self._interceptors:
                handler = await loop.run_in_executor(self._executor, self._lookup_sync, details)
            else:
                handler = self._lookup(details)
        except Exception as exc:
            _LOG.exception("Exception servicing handler")
            await io.finish(
                CallStatus(code_number(StatusCode.UNKNOWN), f"Exception servicing handler: {exc}")
            )
            state.terminate()
            return
        if handler is None:
            await io.finish(CallStatus(code_number(StatusCode.UNIMPLEMENTED), "Method not found!"))
            state.terminate()
            return
        streaming = (bool(handler.request_streaming), bool(handler.response_streaming))
        if io.info.streaming is not None and io.info.streaming != streaming:
            await io.finish(
                CallStatus(
                    code_number(StatusCode.UNIMPLEMENTED),
                    f"{io.info.method} has request/response streaming {streaming}, "
                    f"called as {io.info.streaming}",
                )
            )
            state.terminate()
            return
        timer: asyncio.TimerHandle | None = None
        if io.info.deadline is not None:
            timer = loop.call_at(io.info.deadline, self._on_deadline, state)
        try:
            if self._aio:
                status = await self._run_aio(handler, state)
            else:
                status = await self._run_sync(handler, state)
            if status is not None and not state.terminated and not io.is_cancelled():
                await io.finish(status)
        except CallCancelledError:
            pass
        finally:
            if timer is not None:
                timer.cancel()
            state.terminate()

    def _on_deadline(self, state: CallState) -> None:
        if state.terminated:
            return
        state.deadline_exceeded = True
        task = asyncio.get_running_loop().create_task(
            state.io.finish(
                CallStatus(code_number(StatusCode.DEADLINE_EXCEEDED), "Deadline Exceeded")
            )
        )
        task.add_done_callback(_ignore_result)
        state.terminate()

    # ---- aio servicers

    async def _run_aio(self, handler: Any, state: CallState) -> CallStatus | None:
        context = AioServicerContext(
            state, handler.request_deserializer, handler.response_serializer
        )
        task = asyncio.current_task()
        assert task is not None
        run = _ServicerRun(task)
        context._task = run
        state.add_callback(run.interrupt)
        exc: BaseException | None = None
        try:
            await self._invoke_aio(handler, context)
        except asyncio.CancelledError:
            if not run.interrupted():
                raise
            if not context.cancelled():
                return None
        except CallCancelledError:
            return None
        except Exception as error:
            exc = error
        finally:
            await run.end()
        if state.terminated:
            return None
        if context.cancelled():  # context.cancel(): whatever the servicer did after it
            return CallStatus(code_number(StatusCode.CANCELLED), "Cancelled")
        return status_for(state, exc, aio=True)

    async def _invoke_aio(self, handler: Any, context: AioServicerContext) -> None:
        behavior = behavior_of(handler)
        if behavior is None:
            raise RuntimeError("method handler has no behaviour")
        if handler.request_streaming:
            request: Any = context.request_iterator()
        else:
            request = await context.read()
            if request is EOF:
                raise AbortError(StatusCode.INTERNAL, "Expected a request message")
        result = behavior(request, context)
        if not handler.response_streaming:
            if inspect.isawaitable(result):
                result = await result
            if result is None and context.code() not in (None, StatusCode.OK):
                return
            await context.write(result)
            return
        if hasattr(result, "__aiter__"):
            async for response in result:
                await context.write(response)
        elif inspect.isawaitable(result):
            await result
        elif result is not None:
            for response in result:
                await context.write(response)

    # ---- sync servicers

    async def _run_sync(self, handler: Any, state: CallState) -> CallStatus | None:
        context = ServicerContext(state)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._invoke_sync, handler, context, state
        )

    def _invoke_sync(
        self, handler: Any, context: ServicerContext, state: CallState
    ) -> CallStatus | None:
        def blocking(coro: Awaitable[Any]) -> Any:
            async def run() -> Any:
                return await coro

            return asyncio.run_coroutine_threadsafe(run(), state.loop).result()

        exc: BaseException | None = None
        try:
            behavior = behavior_of(handler)
            if behavior is None:
                raise RuntimeError("method handler has no behaviour")
            if handler.request_streaming:
                request: Any = context._requests(handler.request_deserializer)
            else:
                request = blocking(state.read_message(handler.request_deserializer))
                if request is EOF:
                    raise AbortError(StatusCode.INTERNAL, "Expected a request message")
            result = behavior(request, context)
            if not handler.response_streaming:
                if not (result is None and state.code not in (None, StatusCode.OK)):
                    data = _serialize_or_raise(handler.response_serializer, result)
                    blocking(state.write_bytes(data))
            else:
                for response in result:
                    if not state.is_active():
                        return None
                    data = _serialize_or_raise(handler.response_serializer, response)
                    blocking(state.write_bytes(data))
        except CallCancelledError:
            return None
        except Exception as error:
            exc = error
        if not state.is_active():
            return None
        return status_for(state, exc, aio=False)


def _serialize_or_raise(serializer: Callable[[Any], bytes] | None, message: Any) -> bytes:
    try:
        return serialize(serializer, message)
    except Exception as exc:
        raise SerializeError("Failed to serialize response!") from exc


class _ServicerRun:
    """An aio servicer method running in the task that dispatched its call.

    A task per call only to be able to cancel the servicer alone (on a client cancel, the
    deadline, ``context.cancel()``) costs loop turns on every call. Instead the
    dispatching task is cancelled while the servicer runs, and the cancellation is taken
    back (``uncancel``) once the servicer has ended: any other cancellation of the task
    (server shutdown) still propagates.
    """

    __slots__ = ("_delivered", "_requested", "_running", "_task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._running = True
        self._requested = False
        self._delivered = False

    def done(self) -> bool:
        return not self._running

    def cancel(self) -> bool:
        if not self._running or self._requested:
            return False
        self._requested = True
        self._task.cancel()
        return True

    def interrupt(self) -> None:
        """The call ended (client cancel, deadline, abort): stop the servicer."""
        self.cancel()

    def interrupted(self) -> bool:
        """A CancelledError reached the dispatcher: True if it was ours alone."""
        if not self._requested:
            return False
        self._delivered = True
        return self._task.cancelling() <= 1

    async def end(self) -> None:
        """The servicer ended: take our cancellation back."""
        self._running = False
        if not self._requested:
            return
        if not self._delivered and getattr(self._task, "_must_cancel", True):
            # requested from inside the task (the servicer called context.cancel() and
            # returned before awaiting anything): the pending cancellation would hit the
            # dispatcher's next await, so take it here
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        self._task.uncancel()


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _check_credentials(server_credentials: Any) -> QUICServerCredentials:
    if not isinstance(server_credentials, QUICServerCredentials):
        raise TypeError(
            "add_secure_port needs credentials from migration.quic_grpc.ssl_server_credentials "
            f"(got {type(server_credentials).__name__})"
        )
    return server_credentials


_INSECURE_MESSAGE = (
    "QUIC always runs TLS 1.3: there is no insecure port. Use "
    "add_secure_port(address, quic_grpc.ssl_server_credentials([(key_pem, chain_pem)]))"
)


async def _stop_ports(ports: Sequence[ServerPort], grace: float | None) -> None:
    for port in ports:
        with contextlib.suppress(Exception):
            await port.stop(grace)


async def _drain(dispatcher: _Dispatcher, grace: float | None) -> None:
    dispatcher.stopping = True
    active = set(dispatcher.active)
    if active and grace is not None and grace > 0:
        await asyncio.wait(active, timeout=grace)
    for task in dispatcher.active:
        task.cancel()
    if dispatcher.active:
        await asyncio.wait(set(dispatcher.active), timeout=1.0)


class Server:
    """``grpc.server()`` over QUIC: sync servicers in ``thread_pool``, I/O on a loop thread."""

    def __init__(
        self,
        thread_pool: Executor,
        handlers: Iterable[Any] | None = None,
        interceptors: Sequence[Any] | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        *,
        binder: PortBinder | None = None,
    ) -> None:
        if thread_pool is None:
            raise ValueError("server() needs a thread pool for the servicer methods")
        self._dispatcher = _Dispatcher(
            handlers=handlers,
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            aio=False,
            executor=thread_pool,
        )
        self._binder = binder or _default_binder()
        self._options = options
        self._ports: list[ServerPort] = []
        self._started = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_started = False

    @property
    def dispatch(self) -> ServerDispatch:
        """The per-call entry point, for in-memory transports."""
        return self._dispatcher.dispatch

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        self._dispatcher.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        self._dispatcher.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        raise UsageError(_INSECURE_MESSAGE)

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        if self._started:
            raise UsageError("add ports before start()")
        credentials = _check_credentials(server_credentials)
        dispatch = self._dispatcher.dispatch

        async def bind() -> ServerPort:
            port = self._binder(address, credentials, dispatch, options=self._options)
            await port.open()
            return port

        port = run_on_loop(bind())
        self._ports.append(port)
        return port.port

    def start(self) -> None:
        if self._started:
            raise UsageError("the server has already been started")
        if self._stop_started:
            raise UsageError("a stopped server cannot be restarted")
        self._started = True

        async def start_ports() -> None:
            for port in self._ports:
                await port.start()

        run_on_loop(start_ports())

    def stop(self, grace: float | None) -> threading.Event:
        with self._stop_lock:
            if self._stop_started:
                return self._stopped
            self._stop_started = True

        async def shutdown() -> None:
            try:
                await _drain(self._dispatcher, grace)
                await _stop_ports(self._ports, 0)
            finally:
                self._stopped.set()

        io_loop()
        future = submit_on_loop(shutdown())
        future.add_done_callback(lambda _f: self._stopped.set())
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped; True if ``timeout`` passed first (as grpc)."""
        return not self._stopped.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(None).wait()


class AioServer:
    """``grpc.aio.server()`` over QUIC: coroutine servicers on the caller's event loop."""

    def __init__(
        self,
        migration_thread_pool: Executor | None = None,
        handlers: Iterable[Any] | None = None,
        interceptors: Sequence[Any] | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        *,
        binder: PortBinder | None = None,
    ) -> None:
        self._dispatcher = _Dispatcher(
            handlers=handlers,
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            aio=True,
            executor=migration_thread_pool,
        )
        self._binder = binder or _default_binder()
        self._options = options
        self._ports: list[ServerPort] = []
        self._started = False
        self._stopped: asyncio.Event | None = None
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def dispatch(self) -> ServerDispatch:
        """The per-call entry point, for in-memory transports."""
        return self._dispatcher.dispatch

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        self._dispatcher.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        self._dispatcher.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        raise UsageError(_INSECURE_MESSAGE)

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        if self._started:
            raise UsageError("add ports before start()")
        port = self._binder(
            address, _check_credentials(server_credentials), self.dispatch, options=self._options
        )
        self._ports.append(port)
        return port.port

    async def start(self) -> None:
        if self._started:
            raise UsageError("the server has already been started")
        self._started = True
        self._stopped = asyncio.Event()
        for port in self._ports:
            await port.start()

    async def stop(self, grace: float | None) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._shutdown(grace))
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, grace: float | None) -> None:
        try:
            await _drain(self._dispatcher, grace)
            await _stop_ports(self._ports, 0)
        finally:
            if self._stopped is None:
                self._stopped = asyncio.Event()
            self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the server stopped; True if ``timeout`` passed first (as grpc)."""
        if self._stopped is None:
            self._stopped = asyncio.Event()
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return True
        return False


def server(
    thread_pool: Executor,
    handlers: Iterable[Any] | None = None,
    interceptors: Sequence[Any] | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    *,
    binder: PortBinder | None = None,
) -> Server:
    """Like ``grpc.server``; ``compression`` is accepted and ignored (QUIC calls are plain)."""
    return Server(
        thread_pool,
        handlers,
        interceptors,
        options,
        maximum_concurrent_rpcs,
        compression,
        binder=binder,
    )


def aio_server(
    migration_thread_pool: Executor | None = None,
    handlers: Iterable[Any] | None = None,
    interceptors: Sequence[Any] | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    *,
    binder: PortBinder | None = None,
) -> AioServer:
    """Like ``grpc.aio.server``; ``compression`` is accepted and ignored."""
    return AioServer(
        migration_thread_pool,
        handlers,
        interceptors,
        options,
        maximum_concurrent_rpcs,
        compression,
        binder=binder,
    )
