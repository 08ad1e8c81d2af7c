"""The RPC client: opens one stream per call on any StreamOpener.

Call objects follow grpc.aio's shapes: a unary call is awaitable; streaming calls are
async iterators and/or have ``write``/``done_writing``; every call has
``initial_metadata()``, ``trailing_metadata()``, ``code()``, ``details()``, ``cancel()``.
Cancelling the task that awaits a call, or ``call.cancel()``, resets the stream with
CANCEL; the deadline resets it with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar, overload

from ..streams import (
    ByteStream,
    ConnectionLostError,
    PeerInfo,
    StreamError,
    StreamOpener,
    StreamResetError,
    StreamStoppedError,
)
from .call_state import Role
from .config import RPCClientConfig
from .context import CallContext
from .errors import LocalProtocolError, RemoteProtocolError, RPCError, SerializationError
from .events import MessageReceived, RawDataReceived, ResponseHeaderReceived, TrailerReceived
from .frames import CallKind
from .metadata import Metadata, MetadataLike
from .middleware import CallDetails, Middleware, MiddlewareStack, build_chain
from .protocol import CallProtocol
from .status import ResetCode, Status, status_for_reset_code

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

_log = logging.getLogger("quic_rpc.rpc.client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

RequestSerializer = Callable[[Any], bytes]
ResponseDeserializer = Callable[[bytes], Any]


def _default_serialize(message: Any) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    to_bytes = getattr(message, "SerializeToString", None)
    if to_bytes is not None:
        data: bytes = to_bytes()
        return data
    raise TypeError(
        f"no request_serializer given and {type(message).__name__} is neither bytes "
        "nor a protobuf message"
    )


def _identity(data: bytes) -> bytes:
    return data


class _Channel:
    """A bounded FIFO between the response reader and the caller, closable."""

    __slots__ = ("_closed", "_getter", "_items", "_limit", "_putter")

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None
        self._closed = False

    async def put(self, item: bytes) -> None:
        while len(self._items) >= self._limit and not self._closed:
            self._putter = asyncio.get_running_loop().create_future()
            await self._putter
        self._items.append(item)
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    async def get(self) -> bytes | None:
        """The next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._getter = asyncio.get_running_loop().create_future()
            await self._getter
        item = self._items.popleft()
        if self._putter is not None and not self._putter.done():
            self._putter.set_result(None)
        return item

    def close(self, *, drop: bool = False) -> None:
        self._closed = True
        if drop:
            self._items.clear()
        for fut in (self._getter, self._putter):
            if fut is not None and not fut.done():
                fut.set_result(None)


class ClientCall(Generic[Resp]):
    """State shared by every kind of client call."""

    def __init__(
        self,
        client: RPCClient,
        method: str,
        kind: CallKind,
        *,
        timeout: float | None,
        metadata: MetadataLike,
        request_serializer: RequestSerializer | None,
        response_deserializer: ResponseDeserializer | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        cfg = client.config
        self._client = client
        self._loop = loop
        if timeout is None:
            timeout = cfg.default_timeout
        deadline = None if timeout is None else loop.time() + timeout
        self.context = CallContext(
            method=method,
            kind=kind,
            invocation_metadata=Metadata(metadata),
            deadline=deadline,
            peer_info=None,
        )
        self._serialize = request_serializer or _default_serialize
        self._deserialize = response_deserializer or _identity
        self._proto = CallProtocol(
            Role.CLIENT,
            raw=kind is CallKind.RAW,
            max_message_size=cfg.max_receive_message_size,
            max_header_size=cfg.max_header_size,
            max_metadata_entries=cfg.max_metadata_entries,
        )
        self._stream: ByteStream | None = None
        self._details: CallDetails | None = None
        if client._mw.all:
            self._details = CallDetails(
                method,
                kind,
                self.context.invocation_metadata,
                deadline,
                "client",
                context=self.context,
            )
        self._initial: Metadata | None = None
        self._initial_fut: asyncio.Future[None] | None = None
        self._final: tuple[Status, str, Metadata, bytes | None] | None = None
        self._final_fut: asyncio.Future[None] | None = None
        self._user_cancelled = False
        self._terminated_locally = False
        self._start_fut: asyncio.Future[None] | None = None
        self._io_tasks: set[asyncio.Task[Any]] = set()
        self._interrupted: set[asyncio.Task[Any]] = set()
        self._owned: list[asyncio.Task[Any]] = []
        self._callbacks: list[Callable[[ClientCall[Resp]], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_deadline)

    # ------------------------------------------------------------ public API

    @property
    def method(self) -> str:
        return self.context.method

    @property
    def kind(self) -> CallKind:
        return self.context.kind

    @property
    def deadline(self) -> float | None:
        return self.context.deadline

    def time_remaining(self) -> float | None:
        return self.context.time_remaining()

    @property
    def status(self) -> Status | None:
        """The final status once the call ended, else None."""
        return None if self._final is None else self._final[0]

    def done(self) -> bool:
        return self._final is not None

    def cancelled(self) -> bool:
        return self._user_cancelled

    def cancel(self) -> bool:
        """Cancel the call (resets the stream with CANCEL). False if it had ended."""
        if self._final is not None:
            return False
        self._user_cancelled = True
        self._terminate(Status.CANCELLED, "Locally cancelled", ResetCode.CANCEL)
        return True

    def add_done_callback(self, callback: Callable[[ClientCall[Resp]], None]) -> None:
        if self._final is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> Metadata:
        """The server's initial metadata (empty if it sent none)."""
        if self._initial is None and self._final is None:
            self._ensure_driven()
            if self._initial_fut is None:
                self._initial_fut = self._loop.create_future()
            await asyncio.shield(self._initial_fut)
        return self._initial if self._initial is not None else Metadata()

    async def trailing_metadata(self) -> Metadata:
        return (await self._wait_final())[2]

    async def code(self) -> Status:
        return (await self._wait_final())[0]

    async def details(self) -> str:
        return (await self._wait_final())[1]

    async def rich_details(self) -> bytes | None:
        return (await self._wait_final())[3]

    async def wait_for_connection(self) -> None:
        """Return once the stream is open and the request header sent."""
        await self._ensure_started()

    # ------------------------------------------------------------- internals

    def _ensure_driven(self) -> None:
        """Make sure something reads the response (subclasses start their reader)."""

    async def _wait_final(self) -> tuple[Status, str, Metadata, bytes | None]:
        if self._final is None:
            self._ensure_driven()
            if self._final_fut is None:
                self._final_fut = self._loop.create_future()
            await asyncio.shield(self._final_fut)
        assert self._final is not None
        return self._final

    def _final_error(self) -> BaseException:
        """What a caller gets once the call ended badly."""
        assert self._final is not None
        status, details, md, rich = self._final
        if self._user_cancelled:
            return asyncio.CancelledError(details)
        return RPCError(status, details, md, rich)

    def _on_deadline(self) -> None:
        self._timer = None
        self._terminate(Status.DEADLINE_EXCEEDED, "Deadline Exceeded", ResetCode.DEADLINE_EXCEEDED)

    def _set_initial(self, metadata: Metadata) -> None:
        if self._initial is None:
            self._initial = metadata
        if self._initial_fut is not None and not self._initial_fut.done():
            self._initial_fut.set_result(None)

    def _set_final(
        self, status: Status, details: str, metadata: Metadata, rich: bytes | None
    ) -> bool:
        if self._final is not None:
            return False
        self._final = (status, details, metadata, rich)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if status is not Status.OK:
            self.context.cancelled._fire(RPCError(status, details, metadata, rich))
        self._set_initial(self._initial if self._initial is not None else Metadata())
        if self._final_fut is not None and not self._final_fut.done():
            self._final_fut.set_result(None)
        self._on_final()
        mw = self._client._mw
        if self._details is not None and mw.done:
            try:
                mw.on_done(self._details, status, details)
            except Exception:
                _log.exception("middleware on_done raised")
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("call done callback raised")
        return True

    def _on_final(self) -> None:
        """Subclasses wake their waiters."""

    def _terminate(
        self,
        status: Status,
        details: str,
        reset_code: int,
        metadata: Metadata | None = None,
        rich: bytes | None = None,
    ) -> None:
        """End the call locally: record the status, reset the stream, interrupt I/O."""
        if self._final is None:
            self._terminated_locally = True
        if not self._set_final(status, details, metadata or Metadata(), rich):
            return
        if self._stream is not None:
            try:
                self._stream.abort(reset_code)
            except StreamError:
                pass
        current = asyncio.current_task()
        for task in self._owned:
            if task is not current and not task.done():
                task.cancel()
        for task in list(self._io_tasks):
            if task is not current:
                self._interrupted.add(task)
                task.cancel()

    def _fail(self, exc: BaseException) -> None:
        """THE client place where an exception becomes the call's status."""
        if self._final is not None:
            return
        if isinstance(exc, RPCError):
            self._terminate(
                exc.status, exc.details, ResetCode.CANCEL, exc.trailing_metadata, exc.rich_details
            )
        elif isinstance(exc, StreamResetError):
            status = status_for_reset_code(exc.code)
            self._terminate(status, f"stream reset by the server (code {exc.code:#x})", exc.code)
        elif isinstance(exc, ConnectionLostError):
            self._terminate(Status.UNAVAILABLE, f"connection lost: {exc.reason}", ResetCode.CANCEL)
        elif isinstance(exc, StreamStoppedError):
            status = status_for_reset_code(exc.code)
            self._terminate(status, f"the server stopped the stream (code {exc.code:#x})", exc.code)
        elif isinstance(exc, RemoteProtocolError):
            self._terminate(exc.status, str(exc), exc.error_code)
        elif isinstance(exc, SerializationError):
            self._terminate(Status.INTERNAL, str(exc), ResetCode.CANCEL)
        elif isinstance(exc, StreamError | OSError):
            self._terminate(Status.UNAVAILABLE, f"{type(exc).__name__}: {exc}", ResetCode.CANCEL)
        elif isinstance(exc, asyncio.CancelledError):
            self._terminate(Status.CANCELLED, "Locally cancelled", ResetCode.CANCEL)
        else:
            self._terminate(Status.UNKNOWN, f"{type(exc).__name__}: {exc}", ResetCode.CANCEL)

    async def _io(self, aw: Awaitable[T]) -> T:
        """Await transport I/O so that cancel()/deadline can interrupt it."""
        task = asyncio.current_task()
        assert task is not None
        self._io_tasks.add(task)
        try:
            return await aw
        except asyncio.CancelledError:
            if task in self._interrupted:
                self._interrupted.discard(task)
                task.uncancel()
                raise self._final_error() from None
            raise
        finally:
            self._io_tasks.discard(task)

    async def _ensure_started(self, first: Callable[[], bytes] | None = None) -> None:
        if self._start_fut is not None:
            if not self._start_fut.done():
                await asyncio.shield(self._start_fut)
        else:
            self._start_fut = self._loop.create_future()
            try:
                mw = self._client._mw
                if self._details is not None and mw.intercepting:

                    async def terminal(details: CallDetails) -> None:
                        await self._open(details.metadata, first)

                    await build_chain(mw.intercepting, terminal)(self._details)
                else:
                    await self._open(self.context.invocation_metadata, first)
            except asyncio.CancelledError:
                if self._final is None:
                    self._terminate(Status.CANCELLED, "Locally cancelled", ResetCode.CANCEL)
                raise
            except StreamStoppedError:
                pass  # the server is ending the call already: read its trailer
            except Exception as exc:
                self._fail(exc)
                if not isinstance(exc, RPCError | StreamError | RemoteProtocolError | OSError):
                    raise
            finally:
                self._start_fut.set_result(None)
        if self._final is not None and self._stream is None:
            raise self._final_error()

    async def _open(self, metadata: Metadata, first: Callable[[], bytes] | None) -> None:
        self.context.invocation_metadata = metadata
        if self._final is not None:
            raise self._final_error()
        try:
            stream = await self._io(self._client._opener.open_stream())
        except (StreamError, OSError) as exc:
            raise RPCError(Status.UNAVAILABLE, f"cannot open a stream: {exc}") from exc
        if self._final is not None:  # cancelled or timed out meanwhile
            stream.abort(ResetCode.CANCEL)
            raise self._final_error()
        self._stream = stream
        self.context.peer_info = stream.peer_info
        timeout_us = None
        deadline = self.context.deadline
        if deadline is not None:
            timeout_us = max(0, int((deadline - self._loop.time()) * 1_000_000))
        header = self._proto.send_request_header(
            self.context.method, self.context.kind, metadata, timeout_us
        )
        await self._io(stream.send(header + first() if first is not None else header))

    def _encode(self, message: Any) -> bytes:
        """``message`` as a MESSAGE frame (the request header must have been sent)."""
        return self._proto.send_message(self._to_bytes(message))

    def _first_frames(self, data: bytes) -> Callable[[], bytes]:
        """Frames sent together with the header: the single request and REQUEST_END."""

        def frames() -> bytes:
            return self._proto.send_message(data) + self._proto.send_request_end()

        return frames

    def _to_bytes(self, message: Any) -> bytes:
        mw = self._client._mw
        if self._details is not None and mw.sending:
            message = mw.on_send(self._details, message)
        try:
            data = self._serialize(message)
        except Exception as exc:
            raise SerializationError(
                f"failed to serialize the request: {type(exc).__name__}: {exc}"
            ) from exc
        limit = self._client.config.max_send_message_size
        if limit is not None and len(data) > limit:
            raise RPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message larger than max ({len(data)} vs. {limit})",
            )
        return data

    def _decode(self, data: bytes) -> Any:
        try:
            message = self._deserialize(data)
        except Exception as exc:
            raise SerializationError(
                f"failed to deserialize the response: {type(exc).__name__}: {exc}"
            ) from exc
        mw = self._client._mw
        if self._details is not None and mw.receiving:
            message = mw.on_receive(self._details, message)
        return message

    async def _read_frames(self, deliver: Callable[[bytes], Awaitable[None] | None]) -> None:
        """Read the response until the trailer; hand each message to ``deliver``."""
        stream = self._stream
        assert stream is not None
        proto = self._proto
        chunk = self._client.config.receive_chunk_size
        while self._final is None:
            data = await self._io(stream.receive(chunk))
            if not data:
                proto.receive_eof()
                raise RemoteProtocolError("the stream ended without a trailer")
            for event in proto.receive_data(data):
                if isinstance(event, MessageReceived):
                    pending = deliver(event.data)
                    if pending is not None:
                        await pending
                elif isinstance(event, TrailerReceived):
                    self._on_trailer(event)
                elif isinstance(event, ResponseHeaderReceived):
                    self._set_initial(event.metadata)
        await self._close_stream()

    def _on_trailer(self, event: TrailerReceived) -> None:
        self._set_final(event.status, event.details, event.metadata, event.rich_details)

    async def _close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            try:
                await stream.aclose()
            except (StreamError, OSError):
                pass

    async def _drive(self, deliver: Callable[[bytes], Awaitable[None] | None]) -> None:
        """Read the response, turning failures into the call's status."""
        try:
            await self._read_frames(deliver)
        except asyncio.CancelledError:
            if self._final is None:
                self._terminate(Status.CANCELLED, "Locally cancelled", ResetCode.CANCEL)
            raise
        except Exception as exc:
            if self._final is None:
                self._fail(exc)
            elif not isinstance(exc, RPCError):
                _log.debug("error after the call ended: %r", exc)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task owned by this call; its failures are the call's status."""
        task = asyncio.ensure_future(self._quietly(coro))
        self._owned.append(task)
        return task

    async def _quietly(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except (Exception, asyncio.CancelledError) as exc:
            if self._final is None:
                self._fail(exc)

    def __repr__(self) -> str:
        status = "running" if self._final is None else self._final[0].name
        return f"<{type(self).__name__} {self.context.method} {status}>"


class UnaryCall(ClientCall[Resp]):
    """A unary call: ``await call`` gives the response."""

    def __init__(self, client: RPCClient, method: str, request: Any, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.UNARY, **kwargs)
        self._request = request
        self._response: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._inline = False

    def _deliver(self, data: bytes) -> None:
        self._response = data

    async def _run(self) -> None:
        try:
            first = self._first_frames(self._to_bytes(self._request))
        except Exception as exc:
            self._fail(exc)
            return
        self._request = None
        await self._ensure_started(first)
        if self._stream is not None and self._final is None:
            await self._drive(self._deliver)
        elif self._final is not None:
            await self._close_stream()

    def _ensure_driven(self) -> None:
        if self._task is None and not self._inline:
            self._task = self._spawn(self._run())

    async def _result(self) -> Resp:
        if self._task is None and not self._inline:
            self._inline = True
            await self._run()
        elif self._final is None:
            await self._wait_final()
        assert self._final is not None
        if self._final[0] is not Status.OK:
            raise self._final_error()
        if self._response is None:
            raise RPCError(Status.INTERNAL, "the server sent no response message")
        result: Resp = self._decode(self._response)
        return result

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()


class _StreamingResponse(ClientCall[Resp]):
    """Response side of server-streaming and duplex calls: async iteration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = _Channel(self._client.config.response_buffer_size)
        self._reader: asyncio.Task[None] | None = None

    def _start_reader(self) -> None:
        if self._reader is None and self._stream is not None:
            self._reader = self._spawn(self._read_responses())

    async def _read_responses(self) -> None:
        try:
            await self._drive(self._channel.put)
        finally:
            self._channel.close()

    def _on_final(self) -> None:
        # Messages that arrived before the server's trailer are still delivered; a local
        # cancel or deadline drops what was not read yet.
        self._channel.close(drop=self._terminated_locally)

    def __aiter__(self) -> _StreamingResponse[Resp]:
        return self

    async def __anext__(self) -> Resp:
        await self._ensure_started()
        self._start_reader()
        data = await self._channel.get()
        if data is None:
            await self._wait_final()
            assert self._final is not None
            if self._final[0] is Status.OK:
                raise StopAsyncIteration
            raise self._final_error()
        try:
            message: Resp = self._decode(data)
        except Exception as exc:
            self._fail(exc)
            raise self._final_error() from exc
        return message

    async def read(self) -> Resp | None:
        """The next response, or None at the end of the stream."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None


class ServerStreamingCall(_StreamingResponse[Resp]):
    """A server-streaming call: ``async for response in call``."""

    def __init__(self, client: RPCClient, method: str, request: Any, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.SERVER_STREAMING, **kwargs)
        self._request = request

    async def _ensure_started(self, first: Callable[[], bytes] | None = None) -> None:
        if self._start_fut is None:
            try:
                first = self._first_frames(self._to_bytes(self._request))
            except Exception as exc:
                self._fail(exc)
                raise self._final_error() from exc
            self._request = None
        await super()._ensure_started(first)
        self._start_reader()

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._ensure_started())


class _RequestWriter:
    """write()/done_writing() for client-streaming and duplex calls."""

    _done_writing: bool
    _writer: asyncio.Task[None] | None

    async def _write(self, call: ClientCall[Any], message: Any) -> None:
        await call._ensure_started()
        if call._final is not None:
            raise self._ended_error(call)
        if self._done_writing:
            raise LocalProtocolError("write() after done_writing()")
        try:
            frame = call._encode(message)
        except Exception as exc:
            call._fail(exc)
            raise call._final_error() from exc
        await self._send(call, frame)

    async def _done(self, call: ClientCall[Any]) -> None:
        await call._ensure_started()
        if self._done_writing or call._final is not None:
            return
        self._done_writing = True
        await self._send(call, call._proto.send_request_end())

    async def _send(self, call: ClientCall[Any], frame: bytes) -> None:
        stream = call._stream
        assert stream is not None
        try:
            await call._io(stream.send(frame))
        except StreamStoppedError:
            await call._wait_final()
            raise self._ended_error(call) from None
        except (StreamError, OSError) as exc:
            call._fail(exc)
            raise call._final_error() from exc

    @staticmethod
    def _ended_error(call: ClientCall[Any]) -> BaseException:
        assert call._final is not None
        if call._final[0] is Status.OK and not call._user_cancelled:
            return LocalProtocolError("the call has already ended")
        return call._final_error()

    async def _write_all(
        self, call: ClientCall[Any], requests: AsyncIterable[Any] | Iterable[Any]
    ) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for message in requests:
                    await self._write(call, message)
            else:
                for message in requests:
                    await self._write(call, message)
            await self._done(call)
        except (RPCError, LocalProtocolError, asyncio.CancelledError):
            pass
        except Exception as exc:
            _log.warning("request iterator of %s raised %r", call.method, exc)
            call._terminate(
                Status.CANCELLED, f"request iterator raised {type(exc).__name__}", ResetCode.CANCEL
            )


class ClientStreamingCall(ClientCall[Resp], _RequestWriter):
    """A client-streaming call: ``write``/``done_writing`` (or pass ``requests``), then
    ``await call`` gives the response."""

    def __init__(
        self,
        client: RPCClient,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, method, CallKind.CLIENT_STREAMING, **kwargs)
        self._done_writing = False
        self._writer = None
        self._requests = requests
        self._response: bytes | None = None
        self._reader: asyncio.Task[None] | None = None

    def _deliver(self, data: bytes) -> None:
        self._response = data

    async def _begin(self) -> None:
        await self._ensure_started()
        if self._reader is None and self._stream is not None:
            self._reader = self._spawn(self._drive(self._deliver))
        if self._requests is not None and self._writer is None:
            requests, self._requests = self._requests, None
            self._writer = self._spawn(self._write_all(self, requests))

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._begin())

    async def write(self, message: Any) -> None:
        await self._begin()
        await self._write(self, message)

    async def done_writing(self) -> None:
        await self._begin()
        await self._done(self)

    async def _result(self) -> Resp:
        await self._begin()
        await self._wait_final()
        assert self._final is not None
        if self._final[0] is not Status.OK:
            raise self._final_error()
        if self._response is None:
            raise RPCError(Status.INTERNAL, "the server sent no response message")
        result: Resp = self._decode(self._response)
        return result

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()


class DuplexCall(_StreamingResponse[Resp], _RequestWriter):
    """A duplex call: ``write``/``done_writing`` (or pass ``requests``) and
    ``async for response in call``, concurrently."""

    def __init__(
        self,
        client: RPCClient,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, method, CallKind.DUPLEX, **kwargs)
        self._done_writing = False
        self._writer = None
        self._requests = requests

    async def _ensure_started(self, first: Callable[[], bytes] | None = None) -> None:
        await super()._ensure_started(first)
        self._start_reader()
        if self._requests is not None and self._writer is None:
            requests, self._requests = self._requests, None
            self._writer = self._spawn(self._write_all(self, requests))

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._ensure_started())

    async def write(self, message: Any) -> None:
        await self._write(self, message)

    async def done_writing(self) -> None:
        await self._done(self)


class RawCall(ClientCall[bytes]):
    """A raw call: after the header the stream carries raw bytes both ways.

    ``receive()`` first waits for the server to accept the call (raising RPCError if it
    rejected it); ``b""`` means the server half-closed, which ends the call OK. A reset
    by the server ends it with the status its code carries. Use as an async context
    manager, or call ``aclose()``.
    """

    def __init__(self, client: RPCClient, method: str, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.RAW, **kwargs)
        self._accepted = False
        self._leftover: list[bytes] = []

    async def __aenter__(self) -> RawCall:
        await self._ensure_started()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self._final is None:
            self.cancel()
        await self.aclose()

    async def send(self, data: bytes) -> None:
        await self._ensure_started()
        if self._final is not None:
            raise _RequestWriter._ended_error(self)
        if not data:
            return
        stream = self._stream
        assert stream is not None
        try:
            await self._io(stream.send(data))
        except StreamStoppedError:
            await self._await_accept()
            raise RPCError(Status.CANCELLED, "the server stopped reading") from None

    async def send_eof(self) -> None:
        await self._ensure_started()
        if self._final is not None:
            return
        stream = self._stream
        assert stream is not None
        await self._io(stream.send_eof())

    async def _await_accept(self) -> None:
        stream = self._stream
        assert stream is not None
        proto = self._proto
        while not self._accepted and self._final is None:
            try:
                data = await self._io(stream.receive(self._client.config.receive_chunk_size))
                if not data:
                    proto.receive_eof()
                    raise RemoteProtocolError("the stream ended before the call was accepted")
                for event in proto.receive_data(data):
                    if isinstance(event, ResponseHeaderReceived):
                        self._accepted = True
                        self._set_initial(event.metadata)
                    elif isinstance(event, TrailerReceived):
                        self._on_trailer(event)
                    elif isinstance(event, RawDataReceived):
                        self._leftover.append(event.data)
            except (RPCError, asyncio.CancelledError):
                raise
            except Exception as exc:
                self._fail(exc)
        if not self._accepted:
            assert self._final is not None
            raise self._final_error()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await self._ensure_started()
        await self._await_accept()
        if self._leftover:
            data = self._leftover.pop(0)
            if len(data) > max_bytes:
                self._leftover.insert(0, data[max_bytes:])
                data = data[:max_bytes]
            return data
        if self._final is not None:
            if self._final[0] is Status.OK:
                return b""
            raise self._final_error()
        stream = self._stream
        assert stream is not None
        try:
            data = await self._io(stream.receive(max_bytes))
        except (RPCError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._fail(exc)
            raise self._final_error() from exc
        if not data:
            self._set_final(Status.OK, "", Metadata(), None)
        return data

    def _ensure_driven(self) -> None:
        pass

    async def aclose(self) -> None:
        """Release the call. Closing before the server's end of data abandons the call
        (it ends CANCELLED and the stream is reset)."""
        if self._final is None:
            self._terminate(Status.CANCELLED, "closed before the call ended", ResetCode.CANCEL)
        await self._close_stream()

    @property
    def peer_info(self) -> PeerInfo:
        """The transport's view of the server (a placeholder until the call started)."""
        return self.context.peer_info or PeerInfo(transport="")

    def reset(self, code: int) -> None:
        """Abandon our sending side with ``code``; the call ends with its status."""
        self._terminate(status_for_reset_code(code), f"reset locally ({code:#x})", code)

    def stop_sending(self, code: int) -> None:
        """Ask the server to stop sending; the call ends with the status of ``code``."""
        self._terminate(status_for_reset_code(code), f"stopped locally ({code:#x})", code)

    def abort(self, code: int) -> None:
        self._terminate(status_for_reset_code(code), f"aborted locally ({code:#x})", code)


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
    """Makes calls over a transport's :class:`StreamOpener` (one stream per call)."""

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
