"""Byte streams over TCP or TCP+TLS: the asyncio shell around :mod:`~quic_rpc.transports.mux`.

For networks that block UDP. One TCP (optionally TLS) connection carries many
:class:`~quic_rpc.streams.ByteStream` objects through the sans-IO multiplexer; this
module only feeds it received bytes, writes what it queues, dispatches its events to
streams, and waits for windows and for the socket to drain.

* :class:`TCPServer` — ``await start(host, port, handler, ssl=None, verify=None)``; every
  stream a client opens is served by ``handler(stream)`` in a task the server owns;
  ``stop(grace)`` sends GOAWAY, lets running streams finish for ``grace`` seconds and
  then closes everything.
* :func:`connect_tcp` — returns a :class:`TCPConnection` (a
  :class:`~quic_rpc.streams.StreamOpener`) once the multiplexer handshake completed.

Peer verification: with TLS, ``PeerInfo.remote_chain`` holds the peer's certificate chain
as DER, leaf first (Python 3.13's ``get_verified_chain``/``get_unverified_chain`` when
present, else the leaf alone, which is all 3.11's ``ssl`` exposes). An optional
``verify(chain) -> identity`` callback runs right after the TLS handshake, before any
stream exists; its return value becomes ``PeerInfo.identity``. If it raises, the
connection is refused with a GOAWAY(VERIFICATION_FAILED): a client that rejects the
server, or is rejected by it, gets :class:`PeerVerificationError` from ``connect_tcp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl as _ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from quic_rpc.streams import (
    ConnectionLostError,
    PeerInfo,
    StreamClosedError,
    StreamHandler,
    StreamResetError,
    StreamStoppedError,
)
from quic_rpc.transports.memory import CLOSE_STOP_CODE, HANDLER_ERROR_CODE, _check_code
from quic_rpc.transports.mux import (
    EndOfStreamReceived,
    ErrorCode,
    GoAwayReceived,
    HandshakeCompleted,
    MuxConfig,
    MuxConnection,
    MuxEvent,
    PingAcknowledged,
    RemoteProtocolError,
    StopSendingReceived,
    StreamClosed,
    StreamDataReceived,
    StreamOpened,
    StreamResetReceived,
    WindowUpdated,
)

__all__ = [
    "STREAM_REFUSED_CODE",
    "PeerVerificationError",
    "PeerVerifier",
    "TCPConfig",
    "TCPConnection",
    "TCPServer",
    "TCPStream",
    "connect_tcp",
]

logger = logging.getLogger(__name__)

PeerVerifier = Callable[[tuple[bytes, ...]], Any]
"""``verify(peer_chain_der) -> identity``; raise any exception to reject the peer."""

STREAM_REFUSED_CODE: Final = 0x2
"""Code a peer-opened stream is aborted with when this side serves no streams."""

_SEND_CHUNK: Final = 64 * 1024
_PING = struct.Struct("!Q")


class PeerVerificationError(Exception):
    """The TLS peer was rejected: by our ``verify`` callback or TLS checks, or by the peer.

    ``rejected_by_peer`` tells which side refused; ``reason`` says why.
    """

    error_code: int = ErrorCode.VERIFICATION_FAILED

    def __init__(self, reason: str, *, rejected_by_peer: bool = False) -> None:
        self.reason = reason
        self.rejected_by_peer = rejected_by_peer
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class TCPConfig:
    """Settings of a TCP/TLS connection (either side).

    * ``mux`` — limits announced to the peer (windows, concurrent streams, frame size).
    * ``keepalive_interval`` — seconds between PINGs on a connection that received
      nothing meanwhile; the connection is declared lost when a PING goes unanswered for
      a whole interval. ``None`` (default) disables keepalive: no timers at all.
    * ``handshake_timeout`` — bound on the TLS plus multiplexer handshake.
    * ``close_timeout`` — how long closing waits for the socket (TLS close_notify)
      before aborting it.
    * ``max_write_buffer`` — a peer that stops reading while we keep owing it control
      frames gets disconnected once this many bytes are queued.
    """

    mux: MuxConfig = field(default_factory=MuxConfig)
    keepalive_interval: float | None = None
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    max_write_buffer: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.keepalive_interval is not None and not self.keepalive_interval > 0:
            raise ValueError("keepalive_interval must be positive or None")
        if not self.handshake_timeout > 0 or not self.close_timeout > 0:
            raise ValueError("handshake_timeout and close_timeout must be positive")
        if self.max_write_buffer < 1024 * 1024:
            raise ValueError("max_write_buffer must be at least 1 MiB")


def _peer_chain(ssl_object: Any) -> tuple[bytes, ...]:
    """The peer's certificate chain as DER, leaf first (3.13+: full chain, else the leaf)."""
    if ssl_object is None:
        return ()
    for name in ("get_verified_chain", "get_unverified_chain"):
        getter = getattr(ssl_object, name, None)
        if getter is None:
            continue
        try:
            chain = getter()
        except (ValueError, _ssl.SSLError):
            continue
        der = tuple(bytes(cert) for cert in chain or () if isinstance(cert, (bytes, bytearray)))
        if der:
            return der
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _address(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return "", 0


class TCPStream:
    """One multiplexed stream of a TCP/TLS connection (a :class:`ByteStream`).

    Same semantics as :class:`~quic_rpc.transports.memory.MemoryStream`: ``reset``
    discards unread peer data, ``stop_sending`` makes later ``receive`` raise
    :class:`StreamClosedError`, data and end of stream that arrived before the connection
    was lost are still delivered.
    """

    def __init__(self, session: _Session, stream_id: int) -> None:
        self._session = session
        self._id = stream_id
        self._buffer = bytearray()
        self._eof_received = False
        self._reset_code: int | None = None
        self._eof_delivered = False
        self._stop_sent = False
        self._eof_sent = False
        self._reset_sent = False
        self._stopped_code: int | None = None
        self._closed = False
        self._lost: ConnectionLostError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    def __repr__(self) -> str:
        return f"<TCPStream id={self._id} closed={self._closed} lost={self._lost is not None}>"

    @property
    def stream_id(self) -> int:
        return self._id

    @property
    def peer_info(self) -> PeerInfo:
        return self._session.peer_info

    def _lost_error(self) -> ConnectionLostError:
        lost = self._lost
        assert lost is not None
        return ConnectionLostError(lost.reason, error_code=lost.error_code)

    # -- receiving -------------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        while True:
            if self._reset_code is not None and not self._eof_delivered:
                raise StreamResetError(self._reset_code)
            if self._lost is None:
                if self._closed:
                    raise StreamClosedError("receive on a closed stream")
                if self._stop_sent and not self._eof_delivered:
                    raise StreamClosedError("receive after stop_sending")
            if self._buffer:
                chunk = bytes(self._buffer[:max_bytes])
                del self._buffer[:max_bytes]
                self._session.acknowledge(self._id, len(chunk))
                return chunk
            if self._eof_received:
                self._eof_delivered = True
                return b""
            if self._lost is not None:
                raise self._lost_error()
            self._readable.clear()
            await self._readable.wait()

    # -- sending ---------------------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._lost is None and self._closed:
            raise StreamClosedError("send on a closed stream")
        if self._eof_sent:
            raise StreamClosedError("send after send_eof")
        if self._reset_sent:
            raise StreamClosedError("send after reset")
        if self._stopped_code is not None:
            raise StreamStoppedError(self._stopped_code)
        if self._lost is not None:
            raise self._lost_error()

    async def send(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        self._check_sendable()
        while view:
            sent = self._session.send_data(self._id, view[:_SEND_CHUNK])
            view = view[sent:]
            if sent:
                await self._session.drain()
            else:
                self._writable.clear()
                await self._writable.wait()
            self._check_sendable()

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self._check_sendable()
        self._eof_sent = True
        self._writable.set()  # a send blocked in another task fails now
        self._session.end_stream(self._id)

    # -- abandoning ------------------------------------------------------------------

    def reset(self, code: int) -> None:
        _check_code(code)
        if self._lost is not None or self._eof_sent or self._reset_sent:
            return
        self._reset_sent = True
        self._writable.set()
        if self._stopped_code is None:
            self._session.reset_stream(self._id, code)

    def _discard_unread(self) -> None:
        if self._buffer:
            count = len(self._buffer)
            self._buffer.clear()
            self._session.acknowledge(self._id, count)

    def stop_sending(self, code: int) -> None:
        _check_code(code)
        if self._lost is not None or self._stop_sent or self._eof_delivered:
            return
        self._stop_sent = True
        self._discard_unread()
        self._readable.set()
        if not self._eof_received and self._reset_code is None:
            self._session.stop_sending(self._id, code)

    def abort(self, code: int) -> None:
        _check_code(code)
        self.reset(code)
        self.stop_sending(code)

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._lost is None:
            if not (self._eof_sent or self._reset_sent or self._stopped_code is not None):
                self._eof_sent = True
                self._session.end_stream(self._id)
            if not (self._stop_sent or self._eof_delivered):
                self._stop_sent = True
                if not self._eof_received and self._reset_code is None:
                    self._session.stop_sending(self._id, CLOSE_STOP_CODE)
            self._discard_unread()
        self._closed = True
        self._wake()

    # -- events from the session -------------------------------------------------------

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()

    def _on_data(self, data: bytes) -> None:
        if self._stop_sent or self._closed:
            self._session.acknowledge(self._id, len(data))
            return
        self._buffer += data
        self._readable.set()

    def _on_eof(self) -> None:
        self._eof_received = True
        self._readable.set()

    def _on_reset(self, code: int) -> None:
        if self._stop_sent:
            return  # the peer's answer to our STOP_SENDING: receiving is already closed
        self._reset_code = code
        self._discard_unread()
        self._readable.set()

    def _on_stop(self, code: int) -> None:
        self._stopped_code = code
        self._writable.set()

    def _on_lost(self, error: ConnectionLostError) -> None:
        if self._lost is None:
            self._lost = error
        self._wake()


class _Session(asyncio.Protocol):
    """One TCP/TLS connection: feeds the mux core, dispatches its events, owns handler tasks."""

    def __init__(
        self,
        *,
        client: bool,
        config: TCPConfig,
        handler: StreamHandler | None,
        verify: PeerVerifier | None,
        transport_name: str,
        on_finished: Callable[[_Session], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._config = config
        self._handler = handler
        self._verify = verify
        self._transport_name = transport_name
        self._on_finished = on_finished
        self._mux = MuxConnection(client=client, config=config.mux)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, TCPStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lost: ConnectionLostError | None = None
        self._closing = False
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._handshake.add_done_callback(_consume_exception)
        self._socket_closed: asyncio.Future[None] = self._loop.create_future()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._slots = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._peer_info = PeerInfo(transport=transport_name)
        self._timer: asyncio.TimerHandle | None = None
        self._received_since_tick = False
        self._ping_outstanding = False
        self._ping_counter = 0
        self._bytes_sent = 0
        self._bytes_received = 0

    # -- inspection ----------------------------------------------------------------------

    @property
    def peer_info(self) -> PeerInfo:
        return self._peer_info

    @property
    def lost(self) -> ConnectionLostError | None:
        return self._lost

    def stats(self) -> Mapping[str, float]:
        return {
            "bytes_sent": float(self._bytes_sent),
            "bytes_received": float(self._bytes_received),
            "open_streams": float(self._mux.open_streams),
            "handler_tasks": float(len(self._tasks)),
        }

    async def wait_handshake(self) -> None:
        await asyncio.shield(self._handshake)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        chain = _peer_chain(ssl_object)
        local_host, local_port = _address(transport.get_extra_info("sockname"))
        remote_host, remote_port = _address(transport.get_extra_info("peername"))
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        identity: Any = None
        if self._verify is not None:
            try:
                identity = self._verify(chain)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # fail closed whatever the callback raises
                self._refuse(f"peer certificate rejected: {type(exc).__name__}: {exc}")
                return
            if inspect.isawaitable(identity):  # an async callback would accept unverified
                close = getattr(identity, "close", None)
                if close is not None:
                    close()
                self._refuse("peer certificate rejected: the verify callback must be synchronous")
                return
        self._peer_info = PeerInfo(
            transport=self._transport_name,
            local_host=local_host,
            local_port=local_port,
            remote_host=remote_host,
            remote_port=remote_port,
            remote_chain=chain,
            identity=identity,
            alpn=alpn,
            stats=self.stats,
        )
        self._mux.initiate()
        self._flush()
        self._timer = self._loop.call_later(
            self._config.handshake_timeout, self._on_handshake_timeout
        )

    def _refuse(self, reason: str) -> None:
        """Our verify callback rejected the peer: tell it why and hang up."""
        logger.info("refusing %s connection: %s", self._transport_name, reason)
        self._mux.send_goaway(ErrorCode.VERIFICATION_FAILED, reason)
        self._flush()
        error = PeerVerificationError(reason)
        if not self._handshake.done():
            self._handshake.set_exception(error)
        self._fail(ConnectionLostError(reason, error_code=ErrorCode.VERIFICATION_FAILED))
        self._close_transport()

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        self._bytes_received += len(data)
        self._received_since_tick = True
        self._ping_outstanding = False
        try:
            events = self._mux.receive_data(data)
        except RemoteProtocolError as exc:
            logger.warning("%s peer broke the mux protocol: %s", self._transport_name, exc)
            self._flush()
            self._fail(ConnectionLostError(f"protocol error: {exc}", error_code=exc.error_code))
            self._close_transport()
            return
        for event in events:
            if self._lost is not None:
                break
            self._dispatch(event)
        self._flush()
        transport = self._transport
        if (
            transport is not None
            and transport.get_write_buffer_size() > self._config.max_write_buffer
        ):
            self._fail(ConnectionLostError("peer stopped reading; write buffer overflow"))
            transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "connection closed by peer" if exc is None else f"connection lost: {exc}"
        if not self._handshake.done() and self._transport_name == "tls":
            reason += " before the handshake completed (did it reject our certificate?)"
        if isinstance(exc, _ssl.SSLError) and not self._handshake.done():
            # TLS 1.3 servers check the client certificate after the client finished.
            self._handshake.set_exception(
                PeerVerificationError(f"TLS handshake failed: {exc}", rejected_by_peer=True)
            )
        self._fail(ConnectionLostError(reason))
        if not self._socket_closed.done():
            self._socket_closed.set_result(None)
        self._maybe_finished()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiters()

    # -- event dispatch ------------------------------------------------------------------

    def _dispatch(self, event: MuxEvent) -> None:
        if isinstance(event, StreamDataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data)
            else:
                self._mux.acknowledge_received(event.stream_id, len(event.data))
        elif isinstance(event, WindowUpdated):
            if event.stream_id == 0:
                for stream in self._streams.values():
                    stream._writable.set()
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream._writable.set()
        elif isinstance(event, StreamOpened):
            self._on_stream_opened(event.stream_id)
        elif isinstance(event, EndOfStreamReceived):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._on_eof()
        elif isinstance(event, StreamResetReceived):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._on_reset(event.code)
        elif isinstance(event, StopSendingReceived):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._on_stop(event.code)
        elif isinstance(event, StreamClosed):
            self._forget(event.stream_id)
        elif isinstance(event, HandshakeCompleted):
            self._on_handshake_completed()
        elif isinstance(event, PingAcknowledged):
            self._ping_outstanding = False
        elif isinstance(event, GoAwayReceived):
            self._on_goaway(event)

    def _on_handshake_completed(self) -> None:
        self._cancel_timer()
        if not self._handshake.done():
            self._handshake.set_result(None)
        interval = self._config.keepalive_interval
        if interval is not None:
            self._received_since_tick = False
            self._timer = self._loop.call_later(interval, self._on_keepalive_tick)

    def _on_stream_opened(self, stream_id: int) -> None:
        stream = TCPStream(self, stream_id)
        self._streams[stream_id] = stream
        self._idle.clear()
        handler = self._handler
        if handler is None or self._closing:
            stream.abort(STREAM_REFUSED_CODE)
            return
        task = self._loop.create_task(
            self._run_handler(handler, stream), name=f"tcp-stream-handler-{stream_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _on_goaway(self, event: GoAwayReceived) -> None:
        if event.error_code != ErrorCode.NO_ERROR:
            if event.error_code == ErrorCode.VERIFICATION_FAILED and not self._handshake.done():
                self._handshake.set_exception(
                    PeerVerificationError(
                        f"peer rejected us: {event.reason}", rejected_by_peer=True
                    )
                )
            self._fail(
                ConnectionLostError(
                    f"peer closed the connection: {event.reason or 'no reason given'}",
                    error_code=event.error_code,
                )
            )
            self._close_transport()
            return
        refused = ConnectionLostError("stream refused: the peer is going away")
        for stream_id in event.refused_stream_ids:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                stream._on_lost(refused)
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionLostError("peer is going away"))
        self._slots.set()
        self._check_idle()

    # -- handlers ------------------------------------------------------------------------

    async def _run_handler(self, handler: StreamHandler, stream: TCPStream) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._lost is None:
                logger.exception(
                    "%s stream handler failed; aborting its stream", self._transport_name
                )
            stream.abort(HANDLER_ERROR_CODE)
        finally:
            await stream.aclose()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if self._socket_closed.done() and not self._tasks and self._on_finished is not None:
            callback, self._on_finished = self._on_finished, None
            callback(self)

    # -- commands from streams -----------------------------------------------------------

    def _flush(self) -> None:
        data = self._mux.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            self._bytes_sent += len(data)

    def _forget(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._slots.set()
            self._check_idle()

    def _after_command(self, stream_id: int) -> None:
        self._flush()
        if not self._mux.has_stream(stream_id):
            self._forget(stream_id)

    def _check_idle(self) -> None:
        if not self._mux.open_streams:
            self._idle.set()

    def acknowledge(self, stream_id: int, count: int) -> None:
        if self._lost is None:
            self._mux.acknowledge_received(stream_id, count)
            self._flush()

    def send_data(self, stream_id: int, data: memoryview) -> int:
        sent = self._mux.send_data(stream_id, data)
        self._flush()
        return sent

    def end_stream(self, stream_id: int) -> None:
        self._mux.end_stream(stream_id)
        self._after_command(stream_id)

    def reset_stream(self, stream_id: int, code: int) -> None:
        self._mux.reset_stream(stream_id, code)
        self._after_command(stream_id)

    def stop_sending(self, stream_id: int, code: int) -> None:
        self._mux.stop_sending(stream_id, code)
        self._after_command(stream_id)

    async def drain(self) -> None:
        while self._write_paused and self._lost is None:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._lost is not None:
            raise ConnectionLostError(self._lost.reason, error_code=self._lost.error_code)

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def open_stream(self) -> TCPStream:
        while True:
            if self._lost is not None:
                raise ConnectionLostError(self._lost.reason, error_code=self._lost.error_code)
            if self._closing or self._mux.going_away:
                raise ConnectionLostError("the connection is going away: no new streams")
            if self._mux.can_open_stream():
                stream_id = self._mux.open_stream()
                stream = TCPStream(self, stream_id)
                self._streams[stream_id] = stream
                self._idle.clear()
                self._flush()
                return stream
            self._slots.clear()
            await self._slots.wait()

    # -- lifecycle -----------------------------------------------------------------------

    def _fail(self, error: ConnectionLostError) -> None:
        """The connection is gone: fail every stream and waiter (idempotent)."""
        if self._lost is not None:
            return
        self._lost = error
        self._cancel_timer()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._on_lost(error)
        if not self._handshake.done():
            self._handshake.set_exception(
                ConnectionLostError(error.reason, error_code=error.error_code)
            )
        self._release_drain_waiters()
        self._slots.set()
        self._idle.set()

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self._lost is None:
            self._fail(ConnectionLostError("mux handshake timed out"))
            self._close_transport()

    def _on_keepalive_tick(self) -> None:
        self._timer = None
        interval = self._config.keepalive_interval
        if self._lost is not None or interval is None:
            return
        if not self._received_since_tick:
            if self._ping_outstanding:
                self._fail(ConnectionLostError("keepalive timeout: the peer stopped answering"))
                if self._transport is not None:
                    self._transport.abort()
                return
            self._ping_counter += 1
            self._mux.ping(_PING.pack(self._ping_counter))
            self._ping_outstanding = True
            self._flush()
        self._received_since_tick = False
        self._timer = self._loop.call_later(interval, self._on_keepalive_tick)

    async def aclose(self, reason: str = "connection closed", grace: float = 0.0) -> None:
        """Close: GOAWAY, up to ``grace`` seconds for open streams, then hang up."""
        self._closing = True
        if self._lost is None:
            self._mux.send_goaway(ErrorCode.NO_ERROR, reason)
            self._flush()
            if grace > 0 and self._mux.open_streams:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self._idle.wait()
            self._fail(ConnectionLostError(reason))
        self._close_transport()
        if self._transport is not None and not self._socket_closed.done():
            try:
                async with asyncio.timeout(self._config.close_timeout):
                    await asyncio.shield(self._socket_closed)
            except TimeoutError:
                self._transport.abort()
                await asyncio.shield(self._socket_closed)
        await asyncio.sleep(0)  # let woken handlers observe the loss
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class TCPConnection:
    """A client's TCP/TLS connection: a :class:`StreamOpener` for multiplexed streams."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    def __repr__(self) -> str:
        info = self._session.peer_info
        return f"<TCPConnection {info.transport} {info.remote_host}:{info.remote_port}>"

    @property
    def peer_info(self) -> PeerInfo:
        return self._session.peer_info

    @property
    def closed(self) -> bool:
        return self._session.lost is not None

    async def open_stream(self) -> TCPStream:
        """Open a stream; waits while the peer's concurrent-stream limit is reached."""
        return await self._session.open_stream()

    async def aclose(self, grace: float = 0.0) -> None:
        """Close the connection (idempotent): GOAWAY, up to ``grace`` seconds for running
        streams, then every pending and later stream operation raises
        :class:`ConnectionLostError`."""
        await self._session.aclose("connection closed locally", grace)

    async def __aenter__(self) -> TCPConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def connect_tcp(
    host: str,
    port: int,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    verify: PeerVerifier | None = None,
    *,
    handler: StreamHandler | None = None,
    config: TCPConfig | None = None,
) -> TCPConnection:
    """Connect to a :class:`TCPServer` (TLS when ``ssl`` is given).

    ``verify`` checks the server's certificate chain right after the TLS handshake; its
    result becomes ``peer_info.identity``. ``handler``, if given, serves streams the
    server opens. Raises :class:`PeerVerificationError` when either side rejects the
    other's certificate, :class:`ConnectionLostError` when the multiplexer handshake
    fails, and ``OSError`` when the TCP connection cannot be made.
    """
    config = config if config is not None else TCPConfig()
    loop = asyncio.get_running_loop()
    session = _Session(
        client=True,
        config=config,
        handler=handler,
        verify=verify,
        transport_name="tls" if ssl is not None else "tcp",
    )
    tls_options: dict[str, Any] = {}
    if ssl is not None:
        tls_options = {
            "ssl": ssl,
            "server_hostname": server_hostname,
            "ssl_handshake_timeout": config.handshake_timeout,
        }
    elif server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl")
    try:
        await loop.create_connection(lambda: session, host, port, **tls_options)
    except _ssl.SSLCertVerificationError as exc:
        raise PeerVerificationError(
            f"TLS verification of the server failed: {exc.verify_message or exc}"
        ) from exc
    except _ssl.SSLError as exc:
        if "CERTIFICATE" in str(exc).upper():
            raise PeerVerificationError(
                f"the server rejected our certificate: {exc}", rejected_by_peer=True
            ) from exc
        raise
    try:
        async with asyncio.timeout(config.handshake_timeout):
            await session.wait_handshake()
    except TimeoutError:
        await session.aclose("mux handshake timed out")
        raise ConnectionLostError("mux handshake timed out") from None
    except BaseException:
        await session.aclose("connect failed")
        raise
    return TCPConnection(session)


class TCPServer:
    """Serves multiplexed streams over TCP (or TLS with ``ssl``)."""

    def __init__(self, config: TCPConfig | None = None) -> None:
        self._config = config if config is not None else TCPConfig()
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()

    @property
    def port(self) -> int:
        """The port actually bound (useful after ``start(port=0)``)."""
        return self.addresses[0][1]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return [_address(sock.getsockname()) for sock in self._server.sockets]

    @property
    def connections(self) -> int:
        return len(self._sessions)

    async def start(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        ssl: _ssl.SSLContext | None = None,
        *,
        verify: PeerVerifier | None = None,
    ) -> None:
        """Listen on ``host:port`` (``port=0`` picks one); ``handler`` serves every stream."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        name = "tls" if ssl is not None else "tcp"

        def make_session() -> _Session:
            session = _Session(
                client=False,
                config=self._config,
                handler=handler,
                verify=verify,
                transport_name=name,
                on_finished=self._sessions.discard,
            )
            self._sessions.add(session)
            return session

        self._server = await loop.create_server(
            make_session,
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=self._config.handshake_timeout if ssl is not None else None,
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, GOAWAY every connection, give running streams up to ``grace``
        seconds, then close every connection and finish every handler task."""
        server = self._server
        if server is None:
            return
        server.close()
        sessions = list(self._sessions)
        if sessions:
            await asyncio.gather(*(s.aclose("server stopping", grace) for s in sessions))
        self._sessions.clear()
        await server.wait_closed()
        self._server = None

    async def __aenter__(self) -> TCPServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
