"""The adapter's calls on quic_rpc's wire protocol, over any :mod:`quic_rpc.streams` stream.

Server side: :func:`serve_stream` is a ``StreamHandler`` — one incoming stream, one call —
that decodes the request header with quic_rpc's sans-IO :class:`CallProtocol` and hands
the call to the grpc-shaped dispatcher as a :class:`ServerCallIO`. Client side:
:class:`StreamClientTransport` opens one stream per call on a ``StreamOpener``. The frames,
call kinds, deadlines, status trailers and reset codes are quic_rpc's, so adapter peers and
native quic_rpc peers talk to each other.

Cancellation: a client cancels by aborting the stream with ``ResetCode.CANCEL``; the
server sees the reset on its reader and cancels the call. The client keeps its sending
side open after REQUEST_END until the trailer arrives, so a late cancel still reaches the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from quic_rpc.rpc.call_state import Role
from quic_rpc.rpc.errors import (
    MessageTooLargeError,
    ProtocolError,
    QuicRPCError,
    RemoteProtocolError,
)
from quic_rpc.rpc.events import (
    MessageReceived,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    TrailerReceived,
)
from quic_rpc.rpc.frames import FRAME_HEADER, PREFACE, CallKind
from quic_rpc.rpc.protocol import CallProtocol
from quic_rpc.rpc.status import ResetCode, Status, status_for_reset_code
from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    StreamError,
    StreamOpener,
    StreamResetError,
)

from ._metadata import MetadataTuple, normalize_metadata
from ._transport import (
    CallCancelledError,
    CallStatus,
    ClientCallIO,
    ServerCallInfo,
    ServerDispatch,
)

__all__ = ["Connector", "StreamClientTransport", "kind_for", "serve_stream"]

_LOG = logging.getLogger("migration.quic_grpc")

UNLIMITED = 2**32 - 1
HEADER_TIMEOUT = 10.0
"""Seconds a server waits for a new stream's request header."""
STREAM_LINGER = 2.0
"""Seconds a finished call waits for the peer's end of stream before releasing it."""
QUEUE_DEPTH = 16
"""Messages buffered per call direction before the reader stops reading (backpressure)."""

_KIND = {
    (False, False): CallKind.UNARY,
    (False, True): CallKind.SERVER_STREAMING,
    (True, False): CallKind.CLIENT_STREAMING,
    (True, True): CallKind.DUPLEX,
}


def kind_for(streaming: tuple[bool, bool]) -> CallKind:
    return _KIND[streaming]


def _streaming_of(kind: CallKind) -> tuple[bool, bool] | None:
    if kind is CallKind.RAW:
        return None
    return (not kind.single_request, not kind.single_response)


def _too_large(exc: MessageTooLargeError) -> str:
    return f"Received message larger than max ({exc.size} vs. {exc.limit})"


_CANCELLED = object()


# --------------------------------------------------------------------------- server


class _StreamServerCall:
    """One incoming call on one stream (implements ServerCallIO)."""

    def __init__(
        self,
        stream: ByteStream,
        protocol: CallProtocol,
        header: RequestHeaderReceived,
        leftover: bytes,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        deadline = None
        if header.timeout_us is not None:
            deadline = self._loop.time() + header.timeout_us / 1_000_000
        self._info = ServerCallInfo(
            header.method,
            normalize_metadata(tuple(header.metadata)),
            deadline,
            stream.peer_info,
            _streaming_of(header.kind),
        )
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_DEPTH)
        self._cancelled = False
        self._trailed = False
        self._callbacks: list[Callable[[], None]] = []
        self._send_lock = asyncio.Lock()
        self.request_ended = False
        self._ended = False
        self._single_response = header.kind.single_response
        self._held = b""
        self._backlog: list[Any] = []
        self.watching = False
        """The stream reports a reset by itself (no reader task; see _take_leftover)."""
        self.reader: asyncio.Task[None] | None = None
        if not self._take_leftover(leftover):
            self.reader = self._loop.create_task(self._read_loop())

    def _take_leftover(self, leftover: bytes) -> bool:
        """Decode what came with the header. If that is the whole request and the stream
        can report a reset by itself (``watch``), no reader task is needed: True."""
        items: list[Any] = []
        try:
            for event in self._protocol.receive_data(leftover) if leftover else ():
                if type(event) is MessageReceived:
                    items.append(event.data)
                elif type(event) is RequestEnded:
                    self.request_ended = True
                    items.append(None)
        except MessageTooLargeError as exc:
            self._queue.put_nowait(exc)  # what the reader would do; it stops there
            return True
        except ProtocolError:
            self._cancel()
            return True
        if len(items) > QUEUE_DEPTH:
            self._backlog = items  # the reader queues them as the handler reads
            return False
        for item in items:
            self._queue.put_nowait(item)
        watch = getattr(self._stream, "watch", None)
        if not self.request_ended or watch is None:
            return False
        watch(self._on_stream_error)
        self.watching = True
        return True

    def _on_stream_error(self, error: Exception) -> None:
        self._cancel()

    def stop_watching(self) -> None:
        if self.watching:
            self.watching = False
            watch = getattr(self._stream, "watch", None)
            if watch is not None:
                watch(None)

    def release(self) -> bool:
        """The call is over: hand a watched stream back without waiting for the client's
        end of stream (see QUICStream.release). False if it is not watched."""
        if not self.watching:
            return False
        self.watching = False
        release = getattr(self._stream, "release", None)
        if release is None:
            return False
        release(STREAM_LINGER)
        return True

    @property
    def info(self) -> ServerCallInfo:
        return self._info

    async def _read_loop(self) -> None:
        try:
            backlog, self._backlog = self._backlog, []
            for item in backlog:
                await self._queue.put(item)
            while True:
                data = await self._stream.receive()
                if not data:
                    self._protocol.receive_eof()
                    if not self.request_ended:
                        self._cancel()
                    return
                for event in self._protocol.receive_data(data):
                    if type(event) is MessageReceived:
                        await self._queue.put(event.data)
                    elif type(event) is RequestEnded:
                        self.request_ended = True
                        await self._queue.put(None)
        except MessageTooLargeError as exc:
            await self._queue.put(exc)
        except (StreamError, ProtocolError):
            self._cancel()
        except Exception:
            _LOG.exception("call reader failed")
            self._cancel()

    def _wake_reader(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_CANCELLED)

    def _cancel(self) -> None:
        self._wake_reader()
        if self._cancelled or self._trailed:
            return
        self._cancelled = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _LOG.exception("cancel callback failed")

    async def read(self) -> bytes | None:
        if self._cancelled or self._trailed:
            raise CallCancelledError("call cancelled or already finished")
        if self._ended:
            return None
        item = await self._queue.get()
        if item is _CANCELLED or self._cancelled or self._trailed:
            self._wake_reader()
            raise CallCancelledError("call cancelled")
        if isinstance(item, MessageTooLargeError):
            from ._context import MessageTooLargeError as AdapterTooLarge

            raise AdapterTooLarge(_too_large(item))
        if item is None:
            self._ended = True
            return None
        data: bytes = item
        return data

    async def _send(self, make: Callable[[], bytes]) -> None:
        if self._cancelled:
            raise CallCancelledError("call cancelled")
        async with self._send_lock:
            if self._trailed:
                raise CallCancelledError("call already finished")
            try:
                await self._stream.send(make())
            except (StreamError, ProtocolError) as exc:
                self._cancel()
                raise CallCancelledError(str(exc)) from exc

    async def send_initial_metadata(self, metadata: MetadataTuple) -> None:
        await self._send(lambda: self._protocol.send_response_header(metadata))

    async def write(self, data: bytes) -> None:
        if self._single_response:
            # the one response goes out with the trailer, in one packet
            if self._cancelled:
                raise CallCancelledError("call cancelled")
            self._held += self._protocol.send_message(data)
            return
        await self._send(lambda: self._protocol.send_message(data))

    async def finish(self, status: CallStatus) -> None:
        if self._cancelled or self._trailed:
            return
        async with self._send_lock:
            if self._trailed:
                return
            self._trailed = True
            self._wake_reader()
            try:
                held, self._held = self._held, b""
                await self._stream.send(
                    held
                    + self._protocol.send_trailer(
                        Status(status.code), status.details, status.trailing_metadata
                    )
                )
                self._protocol.send_eof()
                await self._stream.send_eof()
            except (StreamError, ProtocolError):
                self._cancelled = True

    def is_cancelled(self) -> bool:
        return self._cancelled

    def add_cancel_callback(self, callback: Callable[[], None]) -> None:
        if self._cancelled:
            callback()
        else:
            self._callbacks.append(callback)

    @property
    def trailed(self) -> bool:
        return self._trailed


def _take_header(
    protocol: CallProtocol, buffer: bytes
) -> tuple[RequestHeaderReceived | None, bytes]:
    """Decode exactly the preface and the header frame if ``buffer`` holds them; what
    follows (messages, maybe too large ones) is the call's, to be answered with a status."""
    start = len(PREFACE)
    if len(buffer) < start + FRAME_HEADER.size:
        return None, buffer
    _type, length = FRAME_HEADER.unpack_from(buffer, start)
    end = start + FRAME_HEADER.size + length
    if len(buffer) < end:
        return None, buffer
    for event in protocol.receive_data(buffer[:end]):
        if type(event) is RequestHeaderReceived:
            return event, buffer[end:]
    raise RemoteProtocolError("a call must start with its request header")


async def serve_stream(
    stream: ByteStream, dispatch: ServerDispatch, *, max_receive: int | None
) -> None:
    """Serve one call arriving on ``stream`` (a quic_rpc ``StreamHandler`` body)."""
    protocol = CallProtocol(
        Role.SERVER, max_message_size=UNLIMITED if max_receive is None else max_receive
    )
    header: RequestHeaderReceived | None = None
    buffer = b""
    try:
        # The call's first packet usually holds the whole header: then no timer is armed.
        nowait: Callable[[], bytes | None] | None = getattr(stream, "receive_nowait", None)
        first = nowait() if nowait is not None else None
        if first:
            buffer = first
            header, buffer = _take_header(protocol, buffer)
        if header is None and first != b"":
            async with asyncio.timeout(HEADER_TIMEOUT):
                while header is None:
                    data = await stream.receive()
                    if not data:
                        break
                    buffer += data
                    header, buffer = _take_header(protocol, buffer)
        if header is None:
            stream.abort(ResetCode.PROTOCOL_ERROR)  # the stream ended before its header
            return
    except (TimeoutError, StreamError, QuicRPCError):
        stream.abort(ResetCode.PROTOCOL_ERROR)
        return
    if header.kind is CallKind.RAW:
        with contextlib.suppress(StreamError, QuicRPCError):
            await stream.send(
                protocol.send_trailer(Status.UNIMPLEMENTED, "raw calls are not served here")
            )
            await stream.send_eof()
        stream.abort(ResetCode.NO_ERROR)
        return
    call = _StreamServerCall(stream, protocol, header, buffer)
    try:
        await dispatch(call)
        if not call.trailed and not call.is_cancelled():
            await call.finish(CallStatus(Status.INTERNAL, "call ended without a status"))
    finally:
        reader = call.reader
        if call.is_cancelled():
            call.stop_watching()
            if reader is not None:
                reader.cancel()
            stream.abort(ResetCode.CANCEL)
        elif call.release():
            pass  # the connection takes the client's end of stream
        elif reader is not None and not reader.done():
            # The client half-closes once it has the trailer: give it a moment, so that the
            # stream ends without a STOP_SENDING (the handler's return closes the stream).
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((reader,), timeout=STREAM_LINGER)
            reader.cancel()
        with contextlib.suppress(Exception):
            await stream.aclose()


# --------------------------------------------------------------------------- client


class _StreamClientCall:
    """One outgoing call on one stream (implements ClientCallIO)."""

    def __init__(self, stream: ByteStream, protocol: CallProtocol, header: bytes) -> None:
        self._stream = stream
        self._protocol = protocol
        self._pending = header
        loop = asyncio.get_running_loop()
        self._initial: asyncio.Future[MetadataTuple] = loop.create_future()
        self._status: asyncio.Future[CallStatus] = loop.create_future()
        self._send_lock = asyncio.Lock()
        self._request_ended = False
        self._done = False
        self._ended = False
        self._reader: asyncio.Task[None] | None = None
        listen = getattr(stream, "listen", None)
        self._listening = listen is not None
        self._pumping = False
        if listen is not None:
            # the stream hands us what arrives (see _pump): no reader task; the queue is
            # kept to QUEUE_DEPTH by not taking more from the stream
            self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            listen(self._pump)
        else:
            self._queue = asyncio.Queue(QUEUE_DEPTH)
            self._reader = loop.create_task(self._read_loop())

    def _settle(self, status: CallStatus) -> None:
        if not self._initial.done():
            self._initial.set_result(())
        if not self._status.done():
            self._status.set_result(status)
        # The end of the responses is the settled status (out of band, see read()), never a
        # queue slot that a full queue could lose; the None only wakes a reader blocked on an
        # empty queue, which always has room for it.
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._stream.receive()
                if not data:
                    self._stream_ended()
                    return
                messages, trailer = self._decode(data)
                for message in messages:
                    await self._queue.put(message)
                if trailer is not None:
                    self._settle(trailer)
                    await self._after_trailer()
                    return
        except (StreamError, ProtocolError) as exc:
            self._failed(exc)

    def _pump(self) -> None:
        """Take what the stream has, without waiting (called by the stream when something
        arrives, and by read() once it has made room)."""
        if not self._listening or self._pumping:
            return
        self._pumping = True
        stream = self._stream
        try:
            while self._queue.qsize() < QUEUE_DEPTH:
                data = stream.receive_nowait()  # type: ignore[attr-defined]
                if data is None:
                    return
                if not data:
                    self._stop_listening()
                    self._stream_ended()
                    return
                messages, trailer = self._decode(data)
                for message in messages:
                    self._queue.put_nowait(message)
                if trailer is not None:
                    self._stop_listening()
                    self._settle(trailer)
                    self._close_after_trailer()
                    return
        except (StreamError, ProtocolError) as exc:
            self._stop_listening()
            self._failed(exc)
        finally:
            self._pumping = False

    def _decode(self, data: bytes) -> tuple[list[bytes], CallStatus | None]:
        """The messages in ``data`` (to queue before anything settles) and the status of
        its trailer, if it holds one; initial metadata is settled here."""
        messages: list[bytes] = []
        for event in self._protocol.receive_data(data):
            if type(event) is ResponseHeaderReceived:
                if not self._initial.done():
                    self._initial.set_result(normalize_metadata(tuple(event.metadata)))
            elif type(event) is MessageReceived:
                if not self._initial.done():
                    self._initial.set_result(())
                messages.append(event.data)
            elif type(event) is TrailerReceived:
                return messages, CallStatus(
                    int(event.status), event.details, normalize_metadata(tuple(event.metadata))
                )
        return messages, None

    def _stream_ended(self) -> None:
        self._protocol.receive_eof()
        self._settle(CallStatus(Status.INTERNAL, "stream ended before the call's trailer"))

    def _failed(self, exc: StreamError | ProtocolError) -> None:
        """The call's status for a failure of its stream or of the server's frames."""
        if isinstance(exc, MessageTooLargeError):
            self._settle(CallStatus(Status.RESOURCE_EXHAUSTED, _too_large(exc)))
            self._stream.abort(ResetCode.MESSAGE_TOO_LARGE)
        elif isinstance(exc, StreamResetError):
            status = status_for_reset_code(exc.code)
            text = "Cancelled" if status is Status.CANCELLED else f"stream reset ({exc.code:#x})"
            self._settle(CallStatus(int(status), text))
        elif isinstance(exc, ConnectionLostError):
            self._settle(CallStatus(Status.UNAVAILABLE, f"connection lost: {exc.reason}"))
        else:
            self._settle(CallStatus(Status.INTERNAL, f"call stream failed: {exc}"))

    def _stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            self._stream.listen(None)  # type: ignore[attr-defined]

    def _close_after_trailer(self) -> None:
        """:meth:`_after_trailer` without waiting, where the stream allows it: end our side
        and leave the server's end of stream to the connection."""
        release = getattr(self._stream, "release", None)
        deferred = getattr(self._stream, "send_eof_deferred", None)
        if release is None or deferred is None or self._send_lock.locked():
            task = asyncio.get_running_loop().create_task(self._after_trailer())
            task.add_done_callback(_retrieved)
            return
        self._done = True
        self._end_request_side()
        release(STREAM_LINGER)

    def _end_request_side(self) -> bool:
        """Reset our side if the request was not finished, else half-close it with the
        next packet that goes out anyway. False if the stream cannot defer its end of
        stream: then the caller sends it."""
        try:
            if not self._request_ended:
                self._protocol.send_reset()
                self._stream.reset(ResetCode.NO_ERROR)
                return True
            deferred = getattr(self._stream, "send_eof_deferred", None)
            self._protocol.send_eof()
            if deferred is None:
                return False
            deferred()  # rides on the next call's packet (or the ACK)
        except (StreamError, ProtocolError):
            pass
        return True

    async def _after_trailer(self) -> None:
        """Close our side, read the server's end of stream and release the stream."""
        self._done = True
        async with self._send_lock:
            if not self._end_request_side():
                with contextlib.suppress(StreamError, ProtocolError):
                    await self._stream.send_eof()
        try:
            if not _at_end(self._stream):  # the server's end of stream usually came along
                async with asyncio.timeout(STREAM_LINGER):
                    while await self._stream.receive():
                        pass
        except (TimeoutError, StreamError):
            pass
        with contextlib.suppress(StreamError):
            await self._stream.aclose()

    def _take_pending(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending

    async def flush_header(self) -> None:
        """Send the request header now (streaming requests start without a message)."""
        async with self._send_lock:
            if self._pending:
                await self._stream.send(self._take_pending())

    async def write(self, data: bytes, *, last: bool = False) -> None:
        async with self._send_lock:
            if self._done:
                raise CallCancelledError("call already ended")
            try:
                frames = self._take_pending() + self._protocol.send_message(data)
                if last:
                    frames += self._protocol.send_request_end()
                    self._request_ended = True
                await self._stream.send(frames)
            except (StreamError, ProtocolError) as exc:
                raise CallCancelledError(str(exc)) from exc

    async def done_writing(self) -> None:
        async with self._send_lock:
            if self._done or self._request_ended:
                return
            self._request_ended = True
            with contextlib.suppress(StreamError, ProtocolError):
                await self._stream.send(self._take_pending() + self._protocol.send_request_end())

    async def read(self) -> bytes | None:
        if self._ended:
            return None
        if self._queue.empty() and self._status.done():
            # every message was queued before the status settled: this is the end
            self._ended = True
            return None
        item = await self._queue.get()
        if self._listening:
            self._pump()  # there is room again
        if item is None:
            self._ended = True
        return item

    async def initial_metadata(self) -> MetadataTuple:
        return await asyncio.shield(self._initial)

    async def status(self) -> CallStatus:
        return await asyncio.shield(self._status)

    def cancel(self) -> None:
        if self._status.done():
            return
        self._done = True
        self._stop_listening()
        if self._reader is not None:
            self._reader.cancel()
        self._stream.abort(ResetCode.CANCEL)
        self._settle(CallStatus(Status.CANCELLED, "Cancelled"))
        # wake a reader blocked on a full queue
        while True:
            try:
                self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        self._queue.put_nowait(None)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOG.error("closing a call stream failed", exc_info=task.exception())


def _at_end(stream: ByteStream) -> bool:
    """Read what is here without waiting: True if that reached the end of stream."""
    nowait: Callable[[], bytes | None] | None = getattr(stream, "receive_nowait", None)
    if nowait is None:
        return False
    while (data := nowait()) is not None:
        if not data:
            return True
    return False


def _timeout_us(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(1, int((deadline - asyncio.get_running_loop().time()) * 1_000_000))


class Connector(Protocol):
    """Makes connections for a :class:`StreamClientTransport` and owns what they share."""

    async def connect(self) -> StreamOpener: ...

    async def disconnect(self, opener: StreamOpener) -> None:
        """Release a connection that was lost (or is being dropped)."""
        ...

    async def aclose(self) -> None:
        """Close every connection and shared resource (the socket)."""
        ...


class StreamClientTransport:
    """A ClientTransport over a connection opened on demand (and re-opened when lost)."""

    def __init__(self, connector: Connector, *, max_receive: int | None) -> None:
        self._connector = connector
        self._max_receive = max_receive
        self._opener: StreamOpener | None = None
        self._connecting: asyncio.Task[StreamOpener] | None = None
        self._closed = False

    async def _get_opener(self) -> StreamOpener:
        if self._closed:
            raise ConnectionLostError("channel closed")
        if self._opener is not None:
            return self._opener
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connector.connect())
        opener = await asyncio.shield(self._connecting)
        self._opener = opener
        return opener

    async def _drop(self, opener: StreamOpener) -> None:
        if self._opener is opener:
            self._opener = None
            self._connecting = None
            with contextlib.suppress(Exception):
                await self._connector.disconnect(opener)

    async def open_call(
        self,
        method: str,
        metadata: MetadataTuple,
        deadline: float | None,
        streaming: tuple[bool, bool],
    ) -> ClientCallIO:
        timeout_us = _timeout_us(deadline)
        for attempt in (1, 2):
            opener = await self._get_opener()
            try:
                stream = await opener.open_stream()
            except ConnectionLostError:
                await self._drop(opener)
                if attempt == 2:
                    raise
                continue
            protocol = self._protocol()
            header = protocol.send_request_header(method, kind_for(streaming), metadata, timeout_us)
            call = _StreamClientCall(stream, protocol, header)
            if streaming[0]:
                # a streaming request may start with no message: the header goes out now
                try:
                    await call.flush_header()
                except ConnectionLostError:
                    call.cancel()
                    await self._drop(opener)
                    if attempt == 2:
                        raise
                    continue
            return call
        raise ConnectionLostError("could not open a call stream")

    def open_call_nowait(
        self,
        method: str,
        metadata: MetadataTuple,
        deadline: float | None,
        streaming: tuple[bool, bool],
        first: bytes | None = None,
    ) -> ClientCallIO | None:
        """:meth:`open_call` when it would not have to wait (the connection is up, a
        stream is free and the send buffer has room), with ``first`` (a unary request)
        and the end of requests sent along; else None and nothing was opened.

        The usual unary call then needs no task of its own to start."""
        opener = self._opener
        open_nowait = getattr(opener, "open_stream_nowait", None)
        if self._closed or open_nowait is None:
            return None
        try:
            stream = open_nowait()
        except ConnectionLostError:
            return None  # open_call drops the connection and dials again
        if stream is None:
            return None
        send_nowait = getattr(stream, "send_nowait", None)
        protocol = self._protocol()
        timeout_us = _timeout_us(deadline)
        frames = protocol.send_request_header(method, kind_for(streaming), metadata, timeout_us)
        last = first is not None
        if first is not None:
            frames += protocol.send_message(first) + protocol.send_request_end()
        try:
            sent = send_nowait is not None and send_nowait(frames)
        except StreamError:
            sent = False
        if not sent:
            stream.abort(ResetCode.CANCEL)
            return None
        call = _StreamClientCall(stream, protocol, b"")
        call._request_ended = last
        return call

    def _protocol(self) -> CallProtocol:
        return CallProtocol(
            Role.CLIENT,
            max_message_size=UNLIMITED if self._max_receive is None else self._max_receive,
        )

    async def wait_ready(self) -> None:
        await self._get_opener()

    async def aclose(self) -> None:
        self._closed = True
        self._opener = None
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        await self._connector.aclose()
