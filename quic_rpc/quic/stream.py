"""QUICStream: one bidirectional QUIC stream as a :class:`quic_rpc.streams.ByteStream`."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..streams import (
    ConnectionLostError,
    PeerInfo,
    StreamClosedError,
    StreamResetError,
    StreamStoppedError,
)

if TYPE_CHECKING:
    from .connection import QUICConnection

__all__ = ["QUICStream"]

_log = logging.getLogger(__name__)


class QUICStream:
    """A reliable, ordered, bidirectional byte stream with backpressure.

    ``send()`` hands data to the QUIC engine only while fewer than
    ``QUICConfig.stream_send_buffer`` bytes are unacknowledged, and waits otherwise;
    the engine itself only sends what the peer's flow-control credit allows. Received
    data waits here until ``receive()`` takes it, and flow-control credit is only
    returned to the peer as it is read, so a reader that stops reading eventually
    stops the writer.
    """

    __slots__ = (
        "_conn",
        "_eof_deferred",
        "_eof_delivered",
        "_eof_sent",
        "_listener",
        "_lost",
        "_recv_buf",
        "_recv_buffered",
        "_recv_eof",
        "_recv_reset_code",
        "_recv_stopped",
        "_recv_waiter",
        "_released",
        "_reset_sent",
        "_send_waiter",
        "_stop_code",
        "_watcher",
        "stream_id",
    )

    def __init__(self, conn: QUICConnection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._recv_buf: deque[bytes] = deque()
        self._recv_buffered = 0
        self._recv_eof = False
        self._eof_delivered = False
        self._recv_reset_code: int | None = None
        self._recv_stopped = False
        self._recv_waiter: asyncio.Future[None] | None = None
        self._eof_sent = False
        self._eof_deferred = False
        self._reset_sent = False
        self._stop_code: int | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        self._lost: ConnectionLostError | None = None
        self._watcher: Callable[[Exception], None] | None = None
        self._listener: Callable[[], None] | None = None
        self._released = False

    def __repr__(self) -> str:
        return f"<QUICStream id={self.stream_id} conn={self._conn!r}>"

    # -- ByteStream ---------------------------------------------------------------------

    @property
    def peer_info(self) -> PeerInfo:
        return self._conn.peer_info

    @property
    def buffered_receive(self) -> int:
        """Bytes received and waiting for ``receive()``."""
        return self._recv_buffered

    @property
    def receive_window(self) -> int:
        """Bytes the peer may send ahead of ``receive()``: ``QUICConfig.stream_window``,
        or more once the window grew (see ``QUICConfig.max_stream_window``)."""
        return self._conn._engine.stream_receive_window(self.stream_id)

    @property
    def buffered_send(self) -> int:
        """Bytes handed to the engine and not yet acknowledged by the peer."""
        return self._conn._engine.stream_send_buffered(self.stream_id)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer half-closed and all was read."""
        while True:
            data = self.receive_nowait(max_bytes)
            if data is not None:
                return data
            if self._recv_waiter is not None:
                raise RuntimeError("another task is already receiving on this stream")
            waiter = self._conn._loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None

    def receive_nowait(self, max_bytes: int = 65536) -> bytes | None:
        """What :meth:`receive` would return now, or None if it would have to wait.

        Raises as :meth:`receive` does. Lets a reader that finds everything already here
        (a whole request in the stream's first datagram) skip the waiting machinery.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._recv_stopped:
            raise StreamClosedError("receiving was stopped on this stream")
        if self._recv_reset_code is not None:
            raise StreamResetError(self._recv_reset_code)
        # what arrived before the connection was lost is still delivered, its end too
        if self._recv_buf:
            return self._take(max_bytes)
        if self._recv_eof:
            if not self._eof_delivered:
                self._eof_delivered = True
                if self._lost is None:
                    self._conn._stream_progress(self)
            return b""
        if self._lost is not None:
            raise self._lost_copy()
        return None

    async def send(self, data: bytes) -> None:
        """Send ``data``; waits while the send buffer or the peer's window is full."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        limit = self._conn._config.stream_send_buffer
        engine = self._conn._engine
        while True:
            self._check_sendable()
            if not view:
                return
            buffered = engine.stream_send_buffered(self.stream_id)
            room = limit - buffered
            if room <= 0:
                await self._wait_writable()
                continue
            chunk = view[:room]
            engine.send_stream_data(self.stream_id, bytes(chunk))
            view = view[len(chunk) :]
            self._conn._data_queued()

    def send_nowait(self, data: bytes) -> bool:
        """Queue all of ``data`` if the send buffer has room for it now and no other
        writer is waiting; False (nothing queued) where :meth:`send` would wait. Raises
        as :meth:`send` does."""
        self._check_sendable()
        if not data:
            return True
        engine = self._conn._engine
        room = self._conn._config.stream_send_buffer - engine.stream_send_buffered(self.stream_id)
        if self._send_waiter is not None or len(data) > room:
            return False
        engine.send_stream_data(self.stream_id, bytes(data))
        self._conn._data_queued()
        return True

    async def send_eof(self) -> None:
        """Half-close: the peer's ``receive()`` returns ``b""`` after the data sent so far."""
        if self._queue_eof():
            self._conn._schedule_flush()
            self._conn._stream_progress(self)

    def send_eof_deferred(self) -> None:
        """Half-close without a packet of its own: the end of stream leaves with the
        next packet that carries application data (the next call), or a few
        milliseconds later at most. For a finished call's request side, which nobody
        waits on: sending it at once costs a datagram per call. Raises as
        :meth:`send_eof`; sending afterwards is refused as after :meth:`send_eof`."""
        self._check_eof()
        if self._eof_sent:
            return
        self._eof_sent = True
        self._eof_deferred = True
        self._conn._defer_eof(self)

    def _release_deferred_eof(self) -> None:
        """Hand the deferred end of stream to the engine (the connection flushes)."""
        if not self._eof_deferred:
            return
        self._eof_deferred = False
        if self._lost is not None or self._reset_sent or self._stop_code is not None:
            return
        self._conn._engine.send_stream_data(self.stream_id, b"", end_stream=True)
        self._conn._stream_progress(self)

    def _check_eof(self) -> None:
        if self._lost is not None:
            raise self._lost_copy()
        if self._stop_code is not None:
            raise StreamStoppedError(self._stop_code)
        if self._reset_sent:
            raise StreamClosedError("the stream was reset")

    def _queue_eof(self) -> bool:
        self._check_eof()
        if self._eof_sent:
            return False
        self._eof_sent = True
        self._conn._engine.send_stream_data(self.stream_id, b"", end_stream=True)
        return True

    def reset(self, code: int) -> None:
        """Abandon our sending side with application error ``code`` (RESET_STREAM)."""
        _check_code(code)
        if self._lost is not None or self._reset_sent or self._stop_code is not None:
            return
        self._reset_sent = True
        try:
            self._conn._engine.reset_stream(self.stream_id, code)
        except ValueError:
            pass  # the engine already discarded the finished stream
        self._conn._schedule_flush()
        self._wake_sender()
        self._conn._stream_progress(self)

    def stop_sending(self, code: int) -> None:
        """Ask the peer to abandon its sending side with ``code`` (STOP_SENDING)."""
        _check_code(code)
        if self._lost is not None or self._recv_stopped:
            return
        self._recv_stopped = True
        self._discard_received()
        if not (self._recv_eof or self._recv_reset_code is not None):
            try:
                self._conn._engine.stop_stream(self.stream_id, code)
            except ValueError:
                pass  # the engine already discarded the finished stream
            self._conn._schedule_flush()
        self._wake_receiver()
        self._conn._stream_progress(self)

    def abort(self, code: int) -> None:
        """Reset our side and stop the peer's: both directions end with ``code``."""
        self.reset(code)
        self.stop_sending(code)

    async def aclose(self) -> None:
        """Finish sending if still open, and stop receiving if data is left unread."""
        if self._lost is not None:
            return
        if not (self._eof_sent or self._reset_sent or self._stop_code is not None):
            await self.send_eof()
        if not (
            self._eof_delivered
            or self._recv_reset_code is not None
            or self._recv_stopped
            or self._released
        ):
            if self._recv_eof and not self._recv_buf:
                self._eof_delivered = True
                self._conn._stream_progress(self)
            else:
                self.stop_sending(0)

    def listen(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` each time something arrives for the reader: data, the end
        of stream, a reset, the loss of the connection (None: stop). It runs inside the
        connection's event processing, so it must be quick and must not raise; it takes
        what is there with :meth:`receive_nowait`. A reader driven this way needs no
        task of its own waiting in :meth:`receive`."""
        self._listener = callback

    def watch(self, callback: Callable[[Exception], None] | None) -> None:
        """Call ``callback`` (once) with the error a reader would get if the peer resets
        its sending side or the connection is lost; None stops watching.

        For a reader that has all it wants from the peer but must still hear of an abort
        (a server running a call whose request is complete): no task has to sit in
        :meth:`receive` for it."""
        self._watcher = callback

    def release(self, linger: float) -> None:
        """We are done reading, but the peer's end of stream is still to come (an RPC
        client half-closes once it has read the trailer): anything it still sends is
        discarded, and if its end of stream has not come within ``linger`` seconds its
        sending is stopped (STOP_SENDING 0), which :meth:`aclose` would do at once.
        The connection then forgets the stream by itself; no task has to wait for it."""
        self._watcher = None
        if self._released or self.receive_done:
            return
        self._released = True
        self._discard_received()
        if self._recv_eof:
            self._eof_delivered = True
            self._conn._stream_progress(self)
        else:
            self._conn._linger(self, linger)

    def _linger_expired(self) -> None:
        if not self.receive_done:
            self._released = False
            self.stop_sending(0)

    # -- state used by the connection ------------------------------------------------

    @property
    def send_done(self) -> bool:
        """Our sending side is over: reset, stopped by the peer, or FIN acknowledged."""
        if self._lost is not None or self._reset_sent or self._stop_code is not None:
            return True
        return self._eof_sent and self._conn._engine.stream_send_finished(self.stream_id)

    @property
    def receive_done(self) -> bool:
        """Our receiving side is over: EOF read, reset by the peer, or stopped by us."""
        return (
            self._lost is not None
            or self._eof_delivered
            or self._recv_reset_code is not None
            or self._recv_stopped
        )

    @property
    def waiting_to_send(self) -> bool:
        return self._send_waiter is not None

    def _on_data(self, data: bytes, end_stream: bool) -> None:
        if self._released:
            if data:
                self._conn._engine.data_delivered(len(data))
                self._conn._consumed(self.stream_id, len(data))
            if end_stream and not self._eof_delivered:
                self._recv_eof = self._eof_delivered = True
                self._conn._stream_progress(self)
            return
        if data:
            if self._recv_stopped or self._recv_reset_code is not None:
                self._conn._engine.data_delivered(len(data))
                self._conn._consumed(self.stream_id, len(data))
            else:
                self._recv_buf.append(data)
                self._recv_buffered += len(data)
                self._conn._engine.data_delivered(len(data))
        if end_stream:
            self._recv_eof = True
        self._wake_receiver()

    def _on_reset(self, code: int) -> None:
        if self._recv_stopped or (self._recv_eof and not self._recv_buf):
            # Everything arrived already; a late reset changes nothing for the reader.
            return
        self._recv_reset_code = code
        self._discard_received()
        self._wake_receiver()
        self._conn._stream_progress(self)
        self._notify(StreamResetError(code))

    def _notify(self, error: Exception) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # not from inside the connection's event processing
            self._conn._loop.call_soon(watcher, error)

    def _on_stop_sending(self, code: int) -> None:
        if self._stop_code is None and not self._reset_sent:
            self._stop_code = code
        self._wake_sender()
        self._conn._stream_progress(self)

    def _on_connection_lost(self, error: ConnectionLostError) -> None:
        if self._lost is None:
            self._lost = error
        # what arrived stays readable (then the loss is raised, unless the end came too)
        self._wake_receiver()
        self._wake_sender()
        self._notify(self._lost_copy())

    def _wake_sender(self) -> None:
        waiter = self._send_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_receiver(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        listener = self._listener
        if listener is not None:
            try:
                listener()
            except Exception:
                _log.exception("stream listener failed on %r", self)

    # -- helpers -------------------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._lost is not None:
            raise self._lost_copy()
        if self._stop_code is not None:
            raise StreamStoppedError(self._stop_code)
        if self._reset_sent:
            raise StreamClosedError("the stream was reset; no more data can be sent")
        if self._eof_sent:
            raise StreamClosedError("send_eof() was called; no more data can be sent")

    async def _wait_writable(self) -> None:
        if self._send_waiter is not None:
            raise RuntimeError("another task is already sending on this stream")
        waiter = self._conn._loop.create_future()
        self._send_waiter = waiter
        self._conn._writer_blocked(self)
        try:
            await waiter
        finally:
            self._send_waiter = None

    def _take(self, max_bytes: int) -> bytes:
        head = self._recv_buf[0]
        if len(head) <= max_bytes:
            self._recv_buf.popleft()
            # Coalesce small pieces up to max_bytes to save round trips through the loop.
            parts = [head]
            total = len(head)
            while self._recv_buf and total + len(self._recv_buf[0]) <= max_bytes:
                piece = self._recv_buf.popleft()
                parts.append(piece)
                total += len(piece)
            out = parts[0] if len(parts) == 1 else b"".join(parts)
        else:
            out = head[:max_bytes]
            self._recv_buf[0] = head[max_bytes:]
        self._recv_buffered -= len(out)
        self._conn._consumed(self.stream_id, len(out))
        return out

    def _discard_received(self) -> None:
        if self._recv_buffered:
            size = self._recv_buffered
            self._recv_buf.clear()
            self._recv_buffered = 0
            self._conn._consumed(self.stream_id, size)

    def _lost_copy(self) -> ConnectionLostError:
        assert self._lost is not None
        return ConnectionLostError(self._lost.reason, error_code=self._lost.error_code)


def _check_code(code: int) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < (1 << 62):
        raise ValueError(f"application error codes are integers in [0, 2**62), got {code!r}")
