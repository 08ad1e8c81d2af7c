"""The RPC server: one call per stream, handlers run as timed, cancellable tasks.

Plug :meth:`RPCServer.handle_stream` into a transport as its StreamHandler. For each
stream the server reads the request header, looks the method up in its manifest, runs
the handler in the stream's task (cancelled when the call's cancellation signal fires:
peer reset, deadline, shutdown) and ends the stream with a trailer or a reset. Exceptions
become statuses in exactly one place: :meth:`_ServerCall._outcome`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import Any

from ..streams import (
    ByteStream,
    ConnectionLostError,
    StreamError,
    StreamResetError,
    StreamStoppedError,
)
from .call_state import RequestState, ResponseState, Role
from .codec import encode_trailer
from .config import RPCServerConfig
from .context import ServerCallContext
from .errors import LocalProtocolError, RemoteProtocolError, RPCError, SerializationError
from .events import MessageReceived, RawDataReceived, RequestEnded, RequestHeaderReceived
from .frames import PREFACE, CallKind
from .handlers import Handler
from .metadata import Metadata
from .middleware import CallDetails, Middleware, MiddlewareStack, build_chain
from .protocol import CallProtocol
from .raw_stream import RawStream
from .status import ResetCode, Status, reset_code_for_status, status_for_reset_code

__all__ = ["RPCServer", "connection_key"]

_log = logging.getLogger("quic_rpc.rpc.server")
_END: Any = object()
_GENERIC_INTERNAL = "Unexpected error in handler"
_ACCEPTING = (ResponseState.SINGLE_IDLE, ResponseState.STREAM_IDLE, ResponseState.RAW_IDLE)


def connection_key(stream: ByteStream) -> Hashable:
    """Which connection a stream belongs to, for per-connection limits.

    A transport may give streams an explicit hashable ``connection_key`` attribute;
    otherwise the key is the transport name and both endpoints from ``peer_info``.
    """
    key: Hashable | None = getattr(stream, "connection_key", None)
    if key is not None:
        return key
    p = stream.peer_info
    return (p.transport, p.local_host, p.local_port, p.remote_host, p.remote_port)


@dataclasses.dataclass(slots=True)
class _Outcome:
    status: Status
    details: str = ""
    metadata: Metadata | None = None
    rich_details: bytes | None = None
    reset_code: int | None = None
    """Abort the stream with this code instead of sending a trailer."""


class RPCServer:
    """Serves a manifest of handlers on whatever streams a transport hands it."""

    def __init__(
        self,
        manifest: Mapping[str, Handler[Any, Any]],
        *,
        middleware: Sequence[Middleware] = (),
        config: RPCServerConfig | None = None,
        expose_exception_details: bool | None = None,
    ) -> None:
        for path, handler in manifest.items():
            if not isinstance(path, str) or not path:
                raise TypeError(f"method paths must be non-empty str: {path!r}")
            if not isinstance(handler, Handler):
                raise TypeError(f"{path}: expected a Handler, got {handler!r}")
        cfg = config if config is not None else RPCServerConfig()
        if expose_exception_details is not None:
            cfg = dataclasses.replace(cfg, expose_exception_details=expose_exception_details)
        self.config = cfg
        self._manifest: dict[str, Handler[Any, Any]] = dict(manifest)
        self._mw = MiddlewareStack(middleware)
        self._calls: set[_ServerCall] = set()
        self._holding: set[_ServerCall] = set()  # calls that hold a per-connection slot
        self._connections: dict[Hashable, int] = {}
        self._closing = False
        self._idle: asyncio.Event | None = None

    @property
    def manifest(self) -> Mapping[str, Handler[Any, Any]]:
        return dict(self._manifest)

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def closing(self) -> bool:
        return self._closing

    async def handle_stream(self, stream: ByteStream) -> None:
        """Serve one call on ``stream`` (the transport's StreamHandler)."""
        if self._closing:
            stream.abort(ResetCode.REFUSED_STREAM)
            return
        key = connection_key(stream)
        active = self._connections.get(key, 0)
        if active >= self.config.max_concurrent_calls_per_connection:
            await self._refuse(stream)
            return
        self._connections[key] = active + 1
        call = _ServerCall(self, stream, key)
        self._calls.add(call)
        self._holding.add(call)
        try:
            await call.run()
        finally:
            self._release(call)

    def _free_slot(self, call: _ServerCall) -> None:
        """Free the call's per-connection slot. Idempotent.

        Done as soon as the call's response is complete, before its trailer (or reset) is
        handed to the stream: a client may open its next call the moment it reads the
        trailer, possibly before the transport's ``send``/``send_eof`` returns here.
        """
        if call not in self._holding:
            return
        self._holding.discard(call)
        left = self._connections[call.connection_key] - 1
        if left:
            self._connections[call.connection_key] = left
        else:
            del self._connections[call.connection_key]

    def _release(self, call: _ServerCall) -> None:
        """The call has ended (it may still linger): forget it. Idempotent."""
        self._free_slot(call)
        if call not in self._calls:
            return
        self._calls.discard(call)
        if not self._calls and self._idle is not None:
            self._idle.set()

    async def _refuse(self, stream: ByteStream) -> None:
        limit = self.config.max_concurrent_calls_per_connection
        trailer = encode_trailer(
            Status.RESOURCE_EXHAUSTED,
            f"too many concurrent calls on this connection (limit {limit})",
        )
        try:
            await stream.send(PREFACE + trailer)
            await stream.send_eof()
            stream.stop_sending(ResetCode.REFUSED_STREAM)
        except StreamError:
            pass

    async def _wait_idle(self) -> None:
        while self._calls:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds (None: 0), then
        cancel them: their handlers are cancelled and callers get UNAVAILABLE."""
        self._closing = True
        if self._calls and grace:
            try:
                await asyncio.wait_for(self._wait_idle(), grace)
            except TimeoutError:
                pass
        if not self._calls:
            return
        for call in list(self._calls):
            call.fail(RPCError(Status.UNAVAILABLE, "server is shutting down"))
        try:
            await asyncio.wait_for(self._wait_idle(), self.config.shutdown_timeout)
        except TimeoutError:
            for call in list(self._calls):
                call.abort(ResetCode.SHUTDOWN)


class _RequestIterator:
    """The async iterator of requests a streaming-request handler gets."""

    __slots__ = ("_call", "_done")

    def __init__(self, call: _ServerCall) -> None:
        self._call = call
        self._done = False

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        item = await self._call._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        return self._call._decode_request(item)


class _ServerCall:
    """One call on one stream, server side.

    The request header is read and the handler run in the stream's own task (no extra
    task on the hot path); a reader task watches the rest of the request direction (more
    messages, the client's reset), unless the whole request came with the header and the
    stream can report a reset by itself (``watch``). :meth:`fail` cancels the call: it
    fires the context's signal and interrupts the stream's task while it is inside the
    header read or the handler (``task.cancel()``, undone with ``task.uncancel()`` once
    caught, the way ``asyncio.timeout`` does it).
    """

    __slots__ = (
        "_backlog",
        "_cause",
        "_ctx",
        "_details",
        "_finished",
        "_handler",
        "_interrupt_requested",
        "_interruptible",
        "_loop",
        "_pending_first",
        "_pending_out",
        "_proto",
        "_queue",
        "_raw_leftover",
        "_reader",
        "_server",
        "_stream",
        "_task",
        "_timer",
        "_torn_write",
        "_watching",
        "connection_key",
    )

    def __init__(self, server: RPCServer, stream: ByteStream, key: Hashable = None) -> None:
        cfg = server.config
        self._server = server
        self._stream = stream
        self.connection_key = key
        self._proto = CallProtocol(
            Role.SERVER,
            max_message_size=cfg.max_receive_message_size,
            max_header_size=cfg.max_header_size,
            max_metadata_entries=cfg.max_metadata_entries,
        )
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(cfg.request_buffer_size)
        self._backlog: list[Any] = []
        self._raw_leftover: list[bytes] = []
        self._ctx: ServerCallContext | None = None
        self._details: CallDetails | None = None
        self._handler: Handler[Any, Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watching = False
        """The stream reports a reset to :meth:`fail` (no reader task; see ``_serve``)."""
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._interruptible = False
        self._interrupt_requested = False
        self._cause: BaseException | None = None
        self._pending_out = b""
        self._pending_first = False
        self._finished = False
        self._torn_write = False
        """A response write was interrupted mid-frame: only a reset can end the stream."""

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        try:
            self._interruptible = True
            try:
                header = await self._read_header()
                await self._serve(header)
            except asyncio.CancelledError:
                if not self._end_interruptible() or task.cancelling():
                    raise
                outcome = self._outcome(self._cause)
            except Exception as exc:
                self._end_interruptible()
                outcome = self._outcome(self._cause if self._cause is not None else exc)
            else:
                self._end_interruptible()
                outcome = self._outcome(self._cause)
            await self._finish(outcome)
            self._server._release(self)
            await self._linger()
        except BaseException:
            self._interruptible = False
            self.abort(ResetCode.CANCEL)
            raise
        finally:
            self._finished = True
            self._cleanup()
            try:
                await self._stream.aclose()
            except (StreamError, OSError):
                pass

    def _end_interruptible(self) -> bool:
        """Leave the interruptible part; True if :meth:`fail` interrupted it."""
        self._interruptible = False
        if self._interrupt_requested:
            self._interrupt_requested = False
            assert self._task is not None
            self._task.uncancel()
            return True
        return False

    async def _linger(self) -> None:
        """After the trailer, give the client a moment to half-close its side (it does so
        as soon as it has read the trailer), so the stream ends without a STOP_SENDING."""
        reader = self._reader
        linger = self._server.config.close_linger
        if self._watching:
            if linger and not self._server._closing:
                self._watching = False
                self._stream.release(linger)  # type: ignore[attr-defined]  # watch() has it
            return  # else _cleanup stops watching, and aclose() stops the peer's sending
        if (
            reader is None
            or reader.done()
            or not linger
            or self._server._closing
            or self._proto.state.request is not RequestState.ENDED
        ):
            return
        await asyncio.wait((reader,), timeout=linger)

    def _cleanup(self) -> None:
        if self._watching:
            self._watching = False
            self._stream.watch(None)  # type: ignore[attr-defined]
        if self._reader is not None:
            self._reader.cancel()
        if self._timer is not None:
            self._timer.cancel()

    def fail(self, cause: BaseException) -> None:
        """Cancel the call because of ``cause`` (peer reset, deadline, shutdown, bad input)."""
        if self._finished or self._cause is not None:
            return
        self._cause = cause
        if self._ctx is not None:
            self._ctx.cancelled._fire(cause)
        task = self._task
        if (
            self._interruptible
            and not self._interrupt_requested
            and task is not None
            and task is not asyncio.current_task()  # from inside, the error is seen already
        ):
            self._interrupt_requested = True
            task.cancel()

    def abort(self, code: int) -> None:
        """Abort the stream in both directions (last resort)."""
        try:
            self._stream.abort(code)
        except StreamError:
            pass

    def _on_header_timeout(self) -> None:
        self.fail(RemoteProtocolError("no request header within the header timeout"))

    def _on_deadline(self) -> None:
        self.fail(RPCError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    # ------------------------------------------------------------------ reading

    async def _read_header(self) -> RequestHeaderReceived:
        """Read until the request header; what came with it is queued for the handler.

        The header timeout is armed only if the header is not here already (a call's
        first datagram usually carries it), which saves a timer per call."""
        stream = self._stream
        proto = self._proto
        chunk = self._server.config.receive_chunk_size
        nowait: Callable[[int], bytes | None] | None = getattr(stream, "receive_nowait", None)
        htimer: asyncio.TimerHandle | None = None
        try:
            while True:
                data = nowait(chunk) if nowait is not None else None
                if data is None:
                    timeout = self._server.config.header_timeout
                    if htimer is None and timeout is not None:
                        htimer = self._loop.call_later(timeout, self._on_header_timeout)
                    data = await stream.receive(chunk)
                if not data:
                    proto.receive_eof()  # raises: no header yet
                    raise RemoteProtocolError("the stream ended before the request header")
                events = proto.receive_data(data)
                if events:
                    break
        finally:
            if htimer is not None:
                htimer.cancel()
        header = events[0]
        if not isinstance(header, RequestHeaderReceived):  # the state machine forbids it
            raise RemoteProtocolError("the stream does not start with a request header")
        queue = self._queue
        for event in events[1:]:
            if isinstance(event, RawDataReceived):
                self._raw_leftover.append(event.data)
                continue
            item = event.data if isinstance(event, MessageReceived) else _END
            if self._backlog or queue.full():
                self._backlog.append(item)
            else:
                queue.put_nowait(item)
        return header

    async def _read_loop(self) -> None:
        """Watch the request direction after the header: messages, end, reset."""
        stream = self._stream
        proto = self._proto
        queue = self._queue
        chunk = self._server.config.receive_chunk_size
        try:
            backlog, self._backlog = self._backlog, []
            for item in backlog:
                await queue.put(item)
            while True:
                data = await stream.receive(chunk)
                if not data:
                    proto.receive_eof()
                    return
                for event in proto.receive_data(data):
                    if isinstance(event, MessageReceived):
                        await queue.put(event.data)
                    elif isinstance(event, RequestEnded):
                        await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(exc)

    def _decode_request(self, data: bytes) -> Any:
        handler = self._handler
        assert handler is not None
        try:
            message = handler.request_deserializer(data)
        except Exception as exc:
            raise SerializationError(
                f"failed to deserialize the request: {type(exc).__name__}"
            ) from exc
        mw = self._server._mw
        if mw.receiving:
            assert self._details is not None
            message = mw.on_receive(self._details, message)
        return message

    async def _single_request(self) -> Any:
        item = await self._queue.get()
        if item is _END:  # the state machine makes this unreachable
            raise RemoteProtocolError("request ended without a message")
        return self._decode_request(item)

    # ------------------------------------------------------------------ serving

    async def _serve(self, header: RequestHeaderReceived) -> None:
        server = self._server
        cfg = server.config
        loop = self._loop
        handler = server._manifest.get(header.method)
        now = loop.time()
        deadline = None if header.timeout_us is None else now + header.timeout_us / 1e6
        limit = cfg.handler_timeout
        if handler is not None and handler.timeout is not None:
            limit = handler.timeout if limit is None else min(limit, handler.timeout)
        if limit is not None and (deadline is None or now + limit < deadline):
            deadline = now + limit
        ctx = ServerCallContext(
            self,
            method=header.method,
            kind=header.kind,
            invocation_metadata=header.metadata,
            deadline=deadline,
            peer_info=self._stream.peer_info,
        )
        self._ctx = ctx
        if server._mw.all:
            self._details = CallDetails(
                header.method,
                header.kind,
                header.metadata,
                deadline,
                "server",
                ctx.peer_info,
                ctx,
            )
        if self._cause is not None:
            ctx.cancelled._fire(self._cause)
            return
        if handler is None:
            raise RPCError(Status.UNIMPLEMENTED, f"Method not found: {header.method}")
        if handler.kind is not header.kind:
            raise RPCError(
                Status.UNIMPLEMENTED,
                f"{header.method} is a {handler.kind.name} method, called as {header.kind.name}",
            )
        self._handler = handler
        if deadline is not None:
            if deadline <= now:
                raise RPCError(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._timer = loop.call_at(deadline, self._on_deadline)
        if header.kind is not CallKind.RAW:
            watch = getattr(self._stream, "watch", None)
            if (
                watch is not None
                and not self._backlog
                and self._proto.state.request is RequestState.ENDED
            ):
                # The whole request came with the header (the usual unary call): only a
                # reset or a lost connection can still matter, and the stream reports
                # those without a reader task.
                watch(self.fail)
                self._watching = True
            else:
                self._reader = loop.create_task(self._read_loop())
        if server._mw.intercepting:
            assert self._details is not None
            await build_chain(server._mw.intercepting, self._proceed)(self._details)
        else:
            await self._invoke()

    async def _proceed(self, details: CallDetails) -> None:
        ctx = self._ctx
        assert ctx is not None
        ctx.invocation_metadata = details.metadata
        await self._invoke()

    async def _invoke(self) -> None:
        handler = self._handler
        ctx = self._ctx
        assert handler is not None and ctx is not None
        kind = handler.kind
        if kind is CallKind.UNARY:
            request = await self._single_request()
            response = await handler.fn(request, ctx)
            self._pending_first = self._proto.preface_pending
            self._pending_out = self._encode_response(response)
        elif kind is CallKind.SERVER_STREAMING:
            request = await self._single_request()
            await self._stream_responses(handler.fn(request, ctx))
        elif kind is CallKind.CLIENT_STREAMING:
            response = await handler.fn(_RequestIterator(self), ctx)
            self._pending_first = self._proto.preface_pending
            self._pending_out = self._encode_response(response)
        elif kind is CallKind.DUPLEX:
            await self._stream_responses(handler.fn(_RequestIterator(self), ctx))
        else:
            stream = RawStream(self._stream, self._raw_leftover, self._accept_raw, self.fail)
            await handler.fn(stream, ctx)

    async def _stream_responses(self, result: Any) -> None:
        if isinstance(result, AsyncIterator):
            try:
                async for message in result:
                    await self.write(message)
            finally:
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif inspect.isawaitable(result):
            if await result is not None:
                raise TypeError("a streaming handler must yield responses or use ctx.write()")
        else:
            raise TypeError(
                f"a streaming handler must be an async generator or a coroutine, "
                f"got {type(result).__name__}"
            )

    def _encode_response(self, message: Any) -> bytes:
        handler = self._handler
        assert handler is not None
        mw = self._server._mw
        if mw.sending:
            assert self._details is not None
            message = mw.on_send(self._details, message)
        try:
            data = handler.response_serializer(message)
        except Exception as exc:
            raise SerializationError(
                f"failed to serialize the response: {type(exc).__name__}"
            ) from exc
        limit = self._server.config.max_send_message_size
        if limit is not None and len(data) > limit:
            raise RPCError(
                Status.RESOURCE_EXHAUSTED,
                f"response message larger than max ({len(data)} vs. {limit})",
            )
        return self._proto.send_message(data)

    # ------------------------------------------- operations for ServerCallContext

    async def write(self, message: Any) -> None:
        if self._finished or self._proto.state.response not in (
            ResponseState.STREAM_IDLE,
            ResponseState.STREAMING,
        ):
            raise LocalProtocolError("cannot write: the response is not streaming or has ended")
        data = self._encode_response(message)
        self._torn_write = True
        await self._stream.send(data)
        self._torn_write = False

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        if self._finished or self._proto.state.response not in _ACCEPTING:
            raise LocalProtocolError("initial metadata can only be sent before any response")
        data = self._proto.send_response_header(metadata)
        self._torn_write = True
        await self._stream.send(data)
        self._torn_write = False

    async def _accept_raw(self) -> None:
        if self._proto.state.response is ResponseState.RAW_IDLE:
            await self._stream.send(self._proto.send_response_header(()))

    # ------------------------------------------------------------------- ending

    def _outcome(self, exc: BaseException | None) -> _Outcome:
        """THE place where exceptions become statuses."""
        ctx = self._ctx
        trailing = ctx._trailing if ctx is not None else None
        if exc is None:
            if ctx is not None and ctx._status is not None:
                return _Outcome(ctx._status[0], ctx._status[1], trailing)
            return _Outcome(Status.OK, "", trailing)
        if isinstance(exc, RPCError):
            if trailing and exc.trailing_metadata:
                trailing = trailing.copy()
                trailing.extend(exc.trailing_metadata)
            elif exc.trailing_metadata:
                trailing = exc.trailing_metadata
            return _Outcome(exc.status, exc.details, trailing, exc.rich_details)
        if isinstance(exc, StreamResetError):
            status = status_for_reset_code(exc.code)
            return _Outcome(status, "the client reset the stream", reset_code=ResetCode.CANCEL)
        if isinstance(exc, StreamStoppedError):
            return _Outcome(Status.CANCELLED, "the client stopped reading", reset_code=exc.code)
        if isinstance(exc, ConnectionLostError):
            return _Outcome(Status.UNAVAILABLE, exc.reason, reset_code=ResetCode.CANCEL)
        if isinstance(exc, RemoteProtocolError):
            if exc.status is Status.RESOURCE_EXHAUSTED:
                return _Outcome(Status.RESOURCE_EXHAUSTED, str(exc), trailing)
            return _Outcome(Status.INTERNAL, str(exc), reset_code=exc.error_code)
        if isinstance(exc, SerializationError):
            return _Outcome(Status.INTERNAL, str(exc), trailing)
        if isinstance(exc, asyncio.CancelledError):
            return _Outcome(Status.CANCELLED, "the handler was cancelled", trailing)
        if isinstance(exc, StreamError):
            return _Outcome(Status.INTERNAL, str(exc), reset_code=ResetCode.INTERNAL_ERROR)
        method = ctx.method if ctx is not None else "?"
        _log.error("handler for %s raised", method, exc_info=exc)
        if self._server.config.expose_exception_details:
            details = f"{_GENERIC_INTERNAL}: {type(exc).__name__}: {exc}"
        else:
            details = _GENERIC_INTERNAL
        return _Outcome(Status.INTERNAL, details, trailing)

    async def _finish(self, outcome: _Outcome) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        # the response is complete: the client may start its next call once it has the
        # trailer, which may reach it before the writes below return
        self._server._free_slot(self)
        details = self._details
        if details is not None and self._server._mw.done:
            try:
                self._server._mw.on_done(details, outcome.status, outcome.details)
            except Exception:
                _log.exception("middleware on_done raised")
        stream = self._stream
        proto = self._proto
        if outcome.reset_code is not None:
            self.abort(outcome.reset_code)
            return
        if self._torn_write:
            # part of a message frame went out: a trailer would be read as its payload
            self.abort(reset_code_for_status(outcome.status))
            return
        state = proto.state.response
        try:
            if state is ResponseState.NOT_STARTED:
                self.abort(reset_code_for_status(outcome.status))
            elif state is ResponseState.RAW:
                if outcome.status is not Status.OK:
                    self.abort(reset_code_for_status(outcome.status))
                else:
                    try:
                        await stream.send_eof()
                    except StreamError:
                        pass  # the handler half-closed already
            else:
                out = self._pending_out
                if outcome.status is not Status.OK and out:
                    out = PREFACE if self._pending_first else b""
                if state is ResponseState.SINGLE_IDLE or state is ResponseState.SINGLE_HEADERS:
                    if outcome.status is Status.OK and not out:
                        outcome = _Outcome(Status.INTERNAL, "the handler sent no response")
                out += proto.send_trailer(
                    outcome.status,
                    outcome.details,
                    outcome.metadata or (),
                    outcome.rich_details,
                )
                await stream.send(out)
                await stream.send_eof()
        except (StreamError, OSError) as exc:
            _log.debug("could not finish %r: %r", self._ctx and self._ctx.method, exc)
