"""An in-memory transport: byte-stream pairs and a stream-opening "connection".

Two building blocks for tests and for users' own tests:

* :func:`memory_stream_pair` returns two connected :class:`MemoryStream` ends. Each
  direction is a bounded buffer of ``buffer_size`` bytes, so ``send`` waits for the
  reader (real backpressure); half-close, reset and stop-sending carry their codes
  across exactly as :mod:`quic_rpc.streams` specifies.
* :func:`memory_connection` returns a :class:`MemoryClientConnection`, a
  :class:`~quic_rpc.streams.StreamOpener` whose ``open_stream()`` makes a new pair and
  runs ``handler(server_end)`` as a task owned by the connection. ``aclose()`` tears the
  connection down: every pending and later stream operation raises
  :class:`~quic_rpc.streams.ConnectionLostError` and every handler task is finished.

Semantics shared with the TCP transport (and checked by
:mod:`quic_rpc.testing.stream_conformance`):

* ``reset(code)`` discards what the peer has not read yet; the peer's ``receive`` raises
  :class:`~quic_rpc.streams.StreamResetError` with ``code``. Resetting after
  ``send_eof`` is a no-op (the sending side already finished cleanly).
* ``stop_sending(code)`` makes the peer's ``send`` raise
  :class:`~quic_rpc.streams.StreamStoppedError` with ``code``; our own later ``receive``
  raises :class:`~quic_rpc.streams.StreamClosedError` (unless end of stream was already
  returned, in which case it keeps returning ``b""``).
* ``aclose()`` sends end of stream if the sending side is still open and stops the
  receiving side (code :data:`CLOSE_STOP_CODE`) if the peer has not finished; pending
  operations on the stream then raise :class:`~quic_rpc.streams.StreamClosedError`.
* After the connection is lost, bytes that had already arrived are still returned, and
  a stream whose peer had finished still ends with ``b""``; anything else raises
  :class:`~quic_rpc.streams.ConnectionLostError`. ``reset``/``stop_sending``/``abort``
  and ``aclose`` never raise.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Final

from quic_rpc.streams import (
    ConnectionLostError,
    PeerInfo,
    StreamClosedError,
    StreamHandler,
    StreamResetError,
    StreamStoppedError,
)

__all__ = [
    "CLOSE_STOP_CODE",
    "HANDLER_ERROR_CODE",
    "MAX_ERROR_CODE",
    "MemoryClientConnection",
    "MemoryConnection",
    "MemoryStream",
    "memory_connection",
    "memory_stream_pair",
]

logger = logging.getLogger(__name__)

MAX_ERROR_CODE: Final = (1 << 62) - 1
"""Largest application error code (QUIC's variable-length integer limit)."""

CLOSE_STOP_CODE: Final = 0
"""Code ``aclose()`` uses to stop the receiving side when the peer has not finished."""

HANDLER_ERROR_CODE: Final = 0x1
"""Code a stream is aborted with when the server-side handler raised an exception."""


def _check_code(code: int) -> None:
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= MAX_ERROR_CODE:
        raise ValueError(f"error code must be an int in [0, 2**62 - 1], got {code!r}")


class _Link:
    """The "connection" shared by every stream of a pair or of a memory connection."""

    __slots__ = ("lost", "streams")

    def __init__(self) -> None:
        self.lost: ConnectionLostError | None = None
        self.streams: weakref.WeakSet[MemoryStream] = weakref.WeakSet()

    def lose(self, reason: str, error_code: int | None = None) -> None:
        if self.lost is not None:
            return
        self.lost = ConnectionLostError(reason, error_code=error_code)
        streams = list(self.streams)
        self.streams.clear()
        for stream in streams:
            stream._wake()

    def error(self) -> ConnectionLostError:
        lost = self.lost
        assert lost is not None
        return ConnectionLostError(lost.reason, error_code=lost.error_code)


class _Direction:
    """Bytes flowing from one end (the writer) to the other (the reader)."""

    __slots__ = ("buffer", "capacity", "eof", "readable", "reset_code", "stop_code", "writable")

    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray()
        self.capacity = capacity
        self.eof = False  # the writer sent end of stream
        self.reset_code: int | None = None  # the writer reset its sending side
        self.stop_code: int | None = None  # the reader asked the writer to stop
        self.readable = asyncio.Event()  # wakes the reader
        self.writable = asyncio.Event()  # wakes the writer

    @property
    def writer_done(self) -> bool:
        return self.eof or self.reset_code is not None or self.stop_code is not None

    def wake(self) -> None:
        self.readable.set()
        self.writable.set()


class MemoryStream:
    """One end of an in-memory bidirectional byte stream (a :class:`ByteStream`)."""

    def __init__(
        self, link: _Link, outgoing: _Direction, incoming: _Direction, peer_info: PeerInfo
    ) -> None:
        self._link = link
        self._out = outgoing
        self._in = incoming
        self._peer_info = peer_info
        self._closed = False
        self._eof_delivered = False
        self._stop_sent = False
        self._eof_sent = False
        self._reset_sent = False
        link.streams.add(self)

    def __repr__(self) -> str:
        return f"<MemoryStream peer={self._peer_info.identity!r} closed={self._closed}>"

    @property
    def peer_info(self) -> PeerInfo:
        return self._peer_info

    # -- receiving -------------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        incoming = self._in
        while True:
            if incoming.reset_code is not None and not self._eof_delivered:
                raise StreamResetError(incoming.reset_code)
            if self._link.lost is None:
                if self._closed:
                    raise StreamClosedError("receive on a closed stream")
                if self._stop_sent and not self._eof_delivered:
                    raise StreamClosedError("receive after stop_sending")
            if incoming.buffer:
                chunk = bytes(incoming.buffer[:max_bytes])
                del incoming.buffer[:max_bytes]
                incoming.writable.set()
                return chunk
            if incoming.eof:
                self._eof_delivered = True
                return b""
            if self._link.lost is not None:
                raise self._link.error()
            incoming.readable.clear()
            await incoming.readable.wait()

    # -- sending ---------------------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._link.lost is None and self._closed:
            raise StreamClosedError("send on a closed stream")
        if self._eof_sent:
            raise StreamClosedError("send after send_eof")
        if self._reset_sent:
            raise StreamClosedError("send after reset")
        if self._out.stop_code is not None:
            raise StreamStoppedError(self._out.stop_code)
        if self._link.lost is not None:
            raise self._link.error()

    async def send(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        out = self._out
        self._check_sendable()
        while view:
            space = out.capacity - len(out.buffer)
            if space > 0:
                out.buffer += view[:space]
                view = view[space:]
                out.readable.set()
                continue
            out.writable.clear()
            await out.writable.wait()
            self._check_sendable()

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self._check_sendable()
        self._eof_sent = True
        self._out.eof = True
        self._out.wake()  # the reader sees EOF; a send blocked in another task fails

    # -- abandoning ------------------------------------------------------------------

    def reset(self, code: int) -> None:
        _check_code(code)
        out = self._out
        if self._link.lost is not None or self._eof_sent or self._reset_sent:
            return
        self._reset_sent = True
        if out.stop_code is not None:
            return  # the peer already abandoned this direction
        out.reset_code = code
        out.buffer.clear()
        out.wake()

    def stop_sending(self, code: int) -> None:
        _check_code(code)
        incoming = self._in
        if self._link.lost is not None or self._stop_sent or self._eof_delivered:
            return
        self._stop_sent = True
        incoming.buffer.clear()
        if incoming.writer_done:
            incoming.readable.set()
            return
        incoming.stop_code = code
        incoming.wake()

    def abort(self, code: int) -> None:
        _check_code(code)
        self.reset(code)
        self.stop_sending(code)

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._link.lost is None:
            if not (self._eof_sent or self._reset_sent or self._out.stop_code is not None):
                self._eof_sent = True
                self._out.eof = True
            incoming = self._in
            if not (self._stop_sent or self._eof_delivered):
                self._stop_sent = True
                if not incoming.writer_done:
                    incoming.stop_code = CLOSE_STOP_CODE
            incoming.buffer.clear()
        self._closed = True
        self._link.streams.discard(self)
        self._wake()

    # -- internals -------------------------------------------------------------------

    def _wake(self) -> None:
        self._in.wake()
        self._out.wake()

    def close_connection(
        self, reason: str = "connection closed", error_code: int | None = None
    ) -> None:
        """Simulate losing the connection under this stream (and every stream sharing it).

        Pending and later operations on all those streams raise
        :class:`~quic_rpc.streams.ConnectionLostError` carrying ``reason``.
        """
        self._link.lose(reason, error_code)


def _default_peer_info(identity: Any = None) -> PeerInfo:
    return PeerInfo(transport="memory", remote_host="memory", identity=identity)


def _make_pair(
    link: _Link, buffer_size: int, peer_info_a: PeerInfo, peer_info_b: PeerInfo
) -> tuple[MemoryStream, MemoryStream]:
    a_to_b = _Direction(buffer_size)
    b_to_a = _Direction(buffer_size)
    a = MemoryStream(link, a_to_b, b_to_a, peer_info_a)
    b = MemoryStream(link, b_to_a, a_to_b, peer_info_b)
    return a, b


def _check_buffer_size(buffer_size: int) -> None:
    if not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")


def memory_stream_pair(
    *,
    buffer_size: int = 65536,
    peer_info_a: PeerInfo | None = None,
    peer_info_b: PeerInfo | None = None,
) -> tuple[MemoryStream, MemoryStream]:
    """Two connected in-memory stream ends ``(a, b)``.

    ``buffer_size`` bounds the bytes buffered in each direction: a ``send`` that does not
    fit waits until the other end reads. ``peer_info_a`` is what end ``a`` reports about
    its peer (``a.peer_info``), and likewise for ``b``; both default to a synthetic
    ``PeerInfo(transport="memory")``. Use :meth:`MemoryStream.close_connection` to
    simulate losing the connection under the pair.
    """
    _check_buffer_size(buffer_size)
    return _make_pair(
        _Link(),
        buffer_size,
        peer_info_a if peer_info_a is not None else _default_peer_info(),
        peer_info_b if peer_info_b is not None else _default_peer_info(),
    )


class MemoryClientConnection:
    """The client end of an in-memory connection: a :class:`StreamOpener`.

    Every :meth:`open_stream` creates a fresh stream pair and runs ``handler`` on the
    server end as a task owned by this connection. A handler that returns has its stream
    closed for it (``aclose``); one that raises has it aborted with
    :data:`HANDLER_ERROR_CODE` and the exception logged.
    """

    def __init__(
        self,
        handler: StreamHandler,
        *,
        buffer_size: int = 65536,
        client_peer_info: PeerInfo | None = None,
        server_peer_info: PeerInfo | None = None,
    ) -> None:
        _check_buffer_size(buffer_size)
        self._handler = handler
        self._buffer_size = buffer_size
        # What the client knows about the server, and the other way round.
        self._client_view = (
            client_peer_info if client_peer_info is not None else _default_peer_info()
        )
        self._server_view = (
            server_peer_info if server_peer_info is not None else _default_peer_info()
        )
        self._link = _Link()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def peer_info(self) -> PeerInfo:
        """What the client knows about the server."""
        return self._client_view

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def active_handlers(self) -> int:
        """Number of handler tasks still running."""
        return len(self._tasks)

    async def open_stream(self) -> MemoryStream:
        if self._closing or self._link.lost is not None:
            raise ConnectionLostError("memory connection is closed")
        client_end, server_end = _make_pair(
            self._link, self._buffer_size, self._client_view, self._server_view
        )
        task = asyncio.get_running_loop().create_task(
            self._run_handler(server_end), name=f"memory-stream-handler-{id(server_end):x}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client_end

    async def _run_handler(self, stream: MemoryStream) -> None:
        try:
            await self._handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._link.lost is None:
                logger.exception("memory stream handler failed; aborting its stream")
            stream.abort(HANDLER_ERROR_CODE)
        finally:
            await stream.aclose()

    async def aclose(self, reason: str = "memory connection closed", *, grace: float = 0.0) -> None:
        """Close the connection: fail every stream and finish every handler task.

        Pending stream operations raise :class:`ConnectionLostError` at once; handlers
        get one turn of the event loop (or up to ``grace`` seconds) to finish on their
        own and are cancelled after that. Idempotent.
        """
        self._closing = True
        self._link.lose(reason)
        await asyncio.sleep(0)  # let woken handlers observe the loss
        tasks = list(self._tasks)
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> MemoryClientConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


MemoryConnection = MemoryClientConnection
"""Alias: the in-memory connection as seen from the client (stream-opening) side."""


def memory_connection(
    handler: StreamHandler,
    *,
    buffer_size: int = 65536,
    client_identity: Any = None,
    server_identity: Any = None,
    client_peer_info: PeerInfo | None = None,
    server_peer_info: PeerInfo | None = None,
) -> MemoryClientConnection:
    """An in-memory connection whose streams are served by ``handler``.

    ``server_identity`` is the identity the client sees (``stream.peer_info.identity`` on
    client ends); ``client_identity`` is the one handlers see on server ends. Pass full
    ``client_peer_info`` (client's view of the server) / ``server_peer_info`` (server's
    view of the client) instead to control every field.
    """
    return MemoryClientConnection(
        handler,
        buffer_size=buffer_size,
        client_peer_info=(
            client_peer_info
            if client_peer_info is not None
            else _default_peer_info(server_identity)
        ),
        server_peer_info=(
            server_peer_info
            if server_peer_info is not None
            else _default_peer_info(client_identity)
        ),
    )
