"""What every client call shares: start (middleware, stream, header), response reading,
deadline and cancellation, transparent retries of refused calls, and the one place where
failures become the call's status.

A call is *refused* when the server is known not to have processed it: its stream could
not be opened (the connection was lost or closing), or the stream was reset with
REFUSED_STREAM — or failed in a way the opener vouches for (see below) — before any byte
of the response arrived. A refused call whose request the client can replay is sent
again on a new stream from the client's opener, up to ``transparent_retries`` times,
within the call's deadline; otherwise it ends with :class:`CallRefusedError`.

An opener may implement ``stream_refused(stream, error) -> bool``: the client calls it
when a stream it opened failed with :class:`StreamResetError` REFUSED_STREAM or
:class:`ConnectionLostError` before any response byte. It returns whether the transport
knows the peer did not process that stream (a REFUSED_STREAM reset counts as refused
whatever it returns), and lets the opener stop opening streams where they are refused
(the retry then gets its stream from wherever the opener now points).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..streams import (
    ByteStream,
    ConnectionLostError,
    StreamError,
    StreamResetError,
    StreamStoppedError,
)
from .call_state import Role
from .context import CallContext
from .errors import CallRefusedError, RemoteProtocolError, RPCError, SerializationError
from .events import MessageReceived, ResponseHeaderReceived, TrailerReceived
from .frames import CallKind
from .metadata import Metadata, MetadataLike
from .middleware import CallDetails, build_chain
from .protocol import CallProtocol
from .status import ResetCode, Status, status_for_reset_code

if TYPE_CHECKING:
    from .client import RPCClient

__all__ = ["ClientCall"]

_log = logging.getLogger("quic_rpc.rpc.client")

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
        self._proto = self._new_protocol()
        self._stream: ByteStream | None = None
        self._retries_left = cfg.transparent_retries
        self._attempts = 0
        self._replay: Callable[[], bytes] | None = None
        """What follows the header on a replayed stream (unary, server-streaming)."""
        self._received = False
        """A byte of the response arrived on the current stream."""
        self._refused = False
        self._last_refusal: tuple[BaseException, bool] | None = None
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

    @property
    def attempts(self) -> int:
        """Streams opened for this call so far (more than 1: it was retried after a
        refusal; 0: no stream could be opened)."""
        return self._attempts

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
        if self._refused:
            return CallRefusedError(details, md, rich)
        return RPCError(status, details, md, rich)

    def _new_protocol(self) -> CallProtocol:
        cfg = self._client.config
        return CallProtocol(
            Role.CLIENT,
            raw=self.context.kind is CallKind.RAW,
            max_message_size=cfg.max_receive_message_size,
            max_header_size=cfg.max_header_size,
            max_metadata_entries=cfg.max_metadata_entries,
        )

    def _refusal(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the server did not process the call on the current stream.

        Only before any response byte. Asks the opener's ``stream_refused`` hook (once per
        failure), which also lets it stop using a connection that refuses streams.
        """
        if self._received or not isinstance(exc, StreamResetError | ConnectionLostError):
            return False
        last = self._last_refusal
        if last is not None and last[0] is exc:
            return last[1]
        refused = isinstance(exc, StreamResetError) and exc.code == ResetCode.REFUSED_STREAM
        stream = self._stream
        if stream is not None and (refused or isinstance(exc, ConnectionLostError)):
            hook = getattr(self._client._opener, "stream_refused", None)
            if hook is not None:
                try:
                    refused = bool(hook(stream, exc)) or refused
                except Exception:
                    _log.exception("stream_refused hook of the opener raised")
        self._last_refusal = (exc, refused)
        return refused

    def _take_retry(self) -> bool:
        """Spend one transparent retry, if any is left and the call is still running."""
        if self._final is not None or self._retries_left <= 0:
            return False
        self._retries_left -= 1
        return True

    def _discard_stream(self) -> None:
        """Drop the refused stream before the call is sent again on a new one."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort(ResetCode.CANCEL)
            except StreamError:
                pass
        self._proto = self._new_protocol()
        self._received = False

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
        if isinstance(exc, CallRefusedError) or self._refusal(exc):
            self._refused = True
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
        """Open the call's stream and send the header (and ``first``, the frames that
        follow it). Nothing of a request iterator is consumed here, so a refusal met
        here is retried for every kind of call."""
        self.context.invocation_metadata = metadata
        self._replay = first
        while True:
            if self._final is not None:
                raise self._final_error()
            if self._stream is not None or self._attempts:
                self._discard_stream()
            try:
                stream = await self._io(self._client._opener.open_stream())
            except ConnectionLostError as exc:
                if self._take_retry():
                    continue
                raise CallRefusedError(f"cannot open a stream: {exc}") from exc
            except (StreamError, OSError) as exc:
                raise CallRefusedError(f"cannot open a stream: {exc}") from exc
            if self._final is not None:  # cancelled or timed out meanwhile
                stream.abort(ResetCode.CANCEL)
                raise self._final_error()
            self._attempts += 1
            self._stream = stream
            self.context.peer_info = stream.peer_info
            timeout_us = None
            deadline = self.context.deadline
            if deadline is not None:
                timeout_us = max(0, int((deadline - self._loop.time()) * 1_000_000))
            header = self._proto.send_request_header(
                self.context.method, self.context.kind, metadata, timeout_us
            )
            try:
                await self._io(stream.send(header + first() if first is not None else header))
            except ConnectionLostError as exc:
                if self._refusal(exc) and self._take_retry():
                    continue
                raise
            return

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
            self._received = True
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
        """Read the response, turning failures into the call's status. A stream refused
        before any response byte is replaced by a new one (calls with a replayable
        request, within the transparent retries), which is then read instead."""
        try:
            while True:
                try:
                    await self._read_frames(deliver)
                    return
                except (StreamResetError, ConnectionLostError) as exc:
                    if not (
                        self._final is None
                        and self._replay is not None
                        and self._refusal(exc)
                        and self._take_retry()
                    ):
                        raise
                try:
                    await self._open(self.context.invocation_metadata, self._replay)
                except StreamStoppedError:
                    pass  # the server is ending the call already: read its trailer
        except asyncio.CancelledError:
            if self._final is None:
                self._terminate(Status.CANCELLED, "Locally cancelled", ResetCode.CANCEL)
            raise
        except Exception as exc:
            if self._final is None:
                self._fail(exc)
            elif not isinstance(exc, RPCError):
                _log.debug("error after the call ended: %r", exc)

    def _spawn(self, start: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``start()`` in a task owned by this call; its failures are the call's status.
        (A callable, not a coroutine: a task cancelled before it ran leaves nothing
        un-awaited behind.)"""
        task = asyncio.ensure_future(self._quietly(start))
        self._owned.append(task)
        return task

    async def _quietly(self, start: Callable[[], Awaitable[None]]) -> None:
        try:
            await start()
        except (Exception, asyncio.CancelledError) as exc:
            if self._final is None:
                self._fail(exc)

    def __repr__(self) -> str:
        status = "running" if self._final is None else self._final[0].name
        return f"<{type(self).__name__} {self.context.method} {status}>"
