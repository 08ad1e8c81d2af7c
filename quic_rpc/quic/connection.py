"""QUICConnection: drives one engine connection on a shared QUICSocket.

The connection feeds received datagrams to the engine, turns engine events into stream
and connection state, transmits (in one burst per event-loop turn), re-arms a single
timer (engine timers plus keepalive; nothing runs while idle between keepalives) and
wakes writers when acknowledgements free send-buffer space.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..streams import ConnectionLostError, PeerInfo, StreamHandler
from .config import QUICConfig
from .engine import DATAGRAM_FRAME_OVERHEAD, EngineConnection, events
from .errors import (
    CRYPTO_ERROR_BAD_CERTIFICATE,
    CertificateRejectedByPeerError,
    ConnectionLimitError,
    DatagramError,
    HandshakeError,
    HandshakeTimeoutError,
    PeerCertificateRejectedError,
)
from .stream import QUICStream

if TYPE_CHECKING:
    from .socket import QUICSocket

__all__ = ["REFUSED_STREAM_CODE", "QUICConnection", "display_host"]

_log = logging.getLogger(__name__)

REFUSED_STREAM_CODE = 0x2
"""Application code used to refuse peer streams (no handler, or shutting down)."""
HANDLER_ERROR_CODE = 0x1
"""Application code used to abort a stream whose handler raised."""

_CERTIFICATE_ALERTS = frozenset(0x100 + alert for alert in (42, 43, 44, 45, 46, 48, 116))
_CONNECTION_REFUSED = 0x2
_EAGER_FLUSH_WRITES = 16
_DEFERRED_EOF_DELAY = 0.005
"""The longest a deferred end of stream waits for a packet to ride on (the engine's
delay for the ACK of a lone packet, which it would otherwise leave in)."""
_ping_ids = itertools.count(1)


def display_host(host: str) -> str:
    """``::ffff:1.2.3.4`` (how a dual-stack socket sees IPv4 peers) → ``1.2.3.4``."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class QUICConnection:
    """One QUIC connection (client or server side); a :class:`quic_rpc.streams.StreamOpener`.

    Made by :func:`~quic_rpc.quic.connect` or accepted by a
    :class:`~quic_rpc.quic.QUICServer`; never constructed directly.
    """

    def __init__(
        self,
        socket: QUICSocket,
        engine: EngineConnection,
        config: QUICConfig,
        *,
        stream_handler: StreamHandler | None,
    ) -> None:
        self._socket = socket
        self._engine = engine
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._stream_handler = stream_handler
        self._streams: dict[int, QUICStream] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._blocked_writers: set[QUICStream] = set()
        self._progress: set[QUICStream] = set()
        self._open_waiters: list[asyncio.Future[None]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._peer_next_index = 0
        self._peer_gap_ids: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._last_heard = self._loop.time()
        self._keepalive_due: float | None = None
        self._established = False
        self._established_waiter: asyncio.Future[None] = self._loop.create_future()
        self._closed = asyncio.Event()
        self._lost: ConnectionLostError | None = None
        self._handshake_error: HandshakeError | None = None
        self._local_close = False
        self._stopping = False
        self._finalized = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.on_datagram: Callable[[bytes], None] | None = None
        """Called with each received datagram (RFC 9221) when datagrams are enabled."""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._peer_info_cache: tuple[Any, PeerInfo] | None = None
        self._transmit_due = True
        """The engine may have something to send (set by anything that changes its state)."""
        self._reply_queued = False
        """The application queued data (or a reset, a ping...) since the last transmit."""
        self._writes_queued = 0
        """Stream writes since the last flush (see :meth:`_data_queued`)."""
        self._deferred_eofs: list[QUICStream] = []
        """Streams whose end of stream waits for the next packet sent anyway."""
        self._deferred_timer: asyncio.TimerHandle | None = None
        self._lingering: deque[tuple[float, QUICStream]] | None = None
        """Released streams waiting for the peer's end of stream (see QUICStream.release)."""
        self._linger_timer: asyncio.TimerHandle | None = None
        self._on_established: Callable[[QUICConnection], None] | None = None
        self._on_finalized: Callable[[QUICConnection], None] | None = None
        self._on_handshake_failed: Callable[[QUICConnection], None] | None = None

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        host, port = self.remote_address
        return f"<QUICConnection {side} peer={host}:{port}>"

    # -- public API ------------------------------------------------------------------

    @property
    def is_client(self) -> bool:
        return self._engine.is_client

    @property
    def is_established(self) -> bool:
        """The handshake completed and the peer's certificate chain was accepted."""
        return self._established and self._lost is None

    @property
    def is_closed(self) -> bool:
        """Closing or closed: no stream can be used any more."""
        return self._lost is not None

    @property
    def handshake_error(self) -> HandshakeError | None:
        """Why the handshake failed, if it did."""
        return self._handshake_error

    @property
    def close_reason(self) -> ConnectionLostError | None:
        """Why the connection is gone (``None`` while it is open)."""
        return self._lost

    @property
    def remote_address(self) -> tuple[str, int]:
        """The peer's current address (it changes if the peer's NAT rebinds)."""
        addr = self._engine.get_peer_address()
        if addr is None:
            return ("", 0)
        return (display_host(str(addr[0])), int(addr[1]))

    @property
    def local_address(self) -> tuple[str, int]:
        return self._socket.local_address

    @property
    def peer_identity(self) -> Any:
        """What the verify callback returned for the peer's chain."""
        return self._engine.peer_identity

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The peer's certificate chain as DER, leaf first, as it was verified."""
        return self._engine.peer_chain_der

    @property
    def local_chain(self) -> tuple[bytes, ...]:
        """Our own certificate chain as DER, leaf first, as presented to the peer."""
        return self._engine.local_chain_der

    @property
    def alpn(self) -> str | None:
        """The negotiated application protocol."""
        return self._engine.alpn

    @property
    def peer_info(self) -> PeerInfo:
        # PeerInfo is immutable and read on every call (twice per call on a server), so
        # once established it is built once per peer address (a NAT rebinding makes a
        # fresh one); identity, chain and ALPN are all settled by then.
        addr = self._engine.get_peer_address()
        cached = self._peer_info_cache
        if cached is not None and cached[0] == addr:
            return cached[1]
        local_host, local_port = self.local_address
        remote_host, remote_port = self.remote_address
        info = PeerInfo(
            transport="quic",
            local_host=local_host,
            local_port=local_port,
            remote_host=remote_host,
            remote_port=remote_port,
            remote_chain=self._engine.peer_chain_der,
            identity=self._engine.peer_identity,
            alpn=self._engine.alpn,
            stats=self.stats,
        )
        if self._established and addr is not None:
            self._peer_info_cache = (addr, info)
        return info

    @property
    def info(self) -> PeerInfo:
        """Alias of :attr:`peer_info`."""
        return self.peer_info

    @property
    def streams(self) -> int:
        """How many streams are open on this connection."""
        return len(self._streams)

    def stats(self) -> Mapping[str, float]:
        """Live statistics: rtt (smoothed/min/latest, seconds), cwnd, bytes, packets, and
        ``receive_window``, the connection-level flow-control window the peer gets."""
        out = self._engine.stats()
        out.update(
            bytes_received=float(self.bytes_received),
            bytes_sent=float(self.bytes_sent),
            datagrams_received=float(self.datagrams_received),
            datagrams_sent=float(self.datagrams_sent),
            streams=float(len(self._streams)),
        )
        return out

    async def open_stream(self) -> QUICStream:
        """Open a new bidirectional stream; waits while the peer's stream limit is reached."""
        while True:
            self._check_usable()
            stream_id = self._engine.get_next_available_stream_id()
            if self._engine.peer_stream_credit_ok(stream_id):
                return self._new_local_stream(stream_id)
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._open_waiters.remove(waiter)

    def open_stream_nowait(self) -> QUICStream | None:
        """A new stream if the peer's stream limit allows one now (and no one is queued
        for one), else None: what :meth:`open_stream` returns without waiting. Raises as
        :meth:`open_stream` does. Lets a caller that opens and writes in one go (a unary
        call) do it without a task of its own."""
        self._check_usable()
        if self._open_waiters:
            return None
        stream_id = self._engine.get_next_available_stream_id()
        if not self._engine.peer_stream_credit_ok(stream_id):
            return None
        return self._new_local_stream(stream_id)

    def _new_local_stream(self, stream_id: int) -> QUICStream:
        self._engine.send_stream_data(stream_id, b"")  # allocates the id in the engine
        stream = QUICStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    @property
    def max_datagram_payload(self) -> int:
        """The largest unreliable datagram :meth:`send_datagram` takes now: it grows
        when path MTU discovery proves a larger size, and shrinks if the path does.
        0 when datagrams are off or the peer does not accept them."""
        limit = self._engine.peer_max_datagram_frame_size
        if not self._config.datagrams or limit is None:
            return 0
        return max(0, min(limit, self._engine.datagram_size - DATAGRAM_FRAME_OVERHEAD))

    def send_datagram(self, data: bytes) -> None:
        """Send an unreliable datagram (RFC 9221); needs ``QUICConfig.datagrams``."""
        self._check_usable()
        if not self._config.datagrams:
            raise DatagramError("datagrams are not enabled (QUICConfig.datagrams)")
        limit = self._engine.peer_max_datagram_frame_size
        if limit is None:
            raise DatagramError("the peer does not accept datagrams")
        room = self.max_datagram_payload
        if len(data) > room:
            raise DatagramError(
                f"datagram of {len(data)} bytes is too large (at most {room} on this path now)"
            )
        self._engine.send_datagram_frame(bytes(data))
        self._schedule_flush()

    def ping(self) -> None:
        """Send a PING now (keepalive does this by itself when idle)."""
        self._check_usable()
        self._engine.send_ping(next(_ping_ids))
        self._schedule_flush()

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close now with an application ``error_code``: open streams fail at once."""
        if isinstance(error_code, bool) or not 0 <= error_code < (1 << 62):
            raise ValueError(f"error codes are integers in [0, 2**62), got {error_code!r}")
        if self._lost is not None:
            return
        self._local_close = True
        self._engine.close(error_code=error_code, reason_phrase=reason)
        self._mark_lost(
            ConnectionLostError(
                f"connection closed locally: {reason or 'no reason'} (code {error_code:#x})",
                error_code=error_code,
            )
        )
        self._schedule_flush()

    async def aclose(
        self, grace: float | None = None, *, error_code: int = 0, reason: str = "shutdown"
    ) -> None:
        """Graceful close: refuse new peer streams, let open ones finish within ``grace`` seconds
        (default ``QUICConfig.graceful_stop_timeout``), then close and wait until closed."""
        deadline = self._loop.time() + (
            self._config.graceful_stop_timeout if grace is None else grace
        )
        self._stopping = True
        if self._lost is None and (self._streams or self._handler_tasks):
            waiter = self._loop.create_future()
            self._idle_waiters.append(waiter)
            self._check_idle()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, max(0.0, deadline - self._loop.time()))
        self.close(error_code, reason)
        try:
            await asyncio.wait_for(self.wait_closed(), max(0.5, deadline - self._loop.time()))
        except TimeoutError:
            self.abort()
            await self.wait_closed()

    def abort(self, reason: str = "connection aborted") -> None:
        """Close at once without waiting for the closing period; frees everything now."""
        if self._lost is None:
            self._local_close = True
            self._engine.close(error_code=0, reason_phrase=reason)
            self._transmit()
            self._mark_lost(ConnectionLostError(reason))
        self._finalize()

    def _stateless_reset(self) -> None:
        self._mark_lost(ConnectionLostError("the peer reset the connection (stateless reset)"))
        self._finalize()

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed and its handler tasks are done."""
        await self._closed.wait()
        tasks = [t for t in self._handler_tasks if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_established(self) -> None:
        """Wait for the handshake (incl. peer verification); raises HandshakeError."""
        await asyncio.shield(self._established_waiter)

    # -- socket interface ------------------------------------------------------------

    def _datagram_received(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        self.bytes_received += len(data)
        self.datagrams_received += 1
        self._last_heard = now
        self._transmit_due = True
        self._engine.receive_datagram(data, addr, now)

    def _flush(self) -> None:
        """Process engine events, transmit, re-arm the timer and wake waiters."""
        if self._finalized:
            return
        self._process_events()
        if self._finalized:
            return
        if self._deferred_eofs and self._reply_queued:
            self._release_deferred_eofs()  # something goes out anyway: they ride along
        # Only when the engine's state changed since the last transmit: a flush that only
        # reaps finished streams (_stream_progress) would just run a packet-building pass
        # that finds nothing to send.
        self._writes_queued = 0
        if self._transmit_due:
            self._transmit_due = False
            if self._reply_queued:
                self._reply_queued = False
                self._engine.ack_with_reply()
            self._transmit()
        self._wake()

    def _schedule_flush(self) -> None:
        if not self._finalized:
            self._transmit_due = True
            self._reply_queued = True
            self._socket._schedule_flush(self)

    def _data_queued(self) -> None:
        """A stream handed data to the engine (from a task, never from event delivery).

        Normally the flush waits for the end of the loop turn, so that everything written
        in the turn leaves in one burst. When many writes pile up in one turn (many calls
        answered at once), transmit every ``_EAGER_FLUSH_WRITES`` of them right away: the
        peer starts on the first replies while we are still producing the rest, instead
        of both ends working in lock-step batches."""
        self._schedule_flush()
        self._writes_queued += 1
        if self._writes_queued >= _EAGER_FLUSH_WRITES:
            self._flush()

    def _defer_eof(self, stream: QUICStream) -> None:
        """Queue ``stream``'s end of stream for the next transmission that carries
        application data (or, at the latest, ``_DEFERRED_EOF_DELAY`` from now)."""
        self._deferred_eofs.append(stream)
        if self._deferred_timer is None and not self._finalized:
            self._deferred_timer = self._loop.call_later(
                _DEFERRED_EOF_DELAY, self._deferred_eof_due
            )

    def _deferred_eof_due(self) -> None:
        self._deferred_timer = None
        if self._deferred_eofs and not self._finalized:
            self._release_deferred_eofs()
            self._schedule_flush()

    def _release_deferred_eofs(self) -> None:
        streams, self._deferred_eofs = self._deferred_eofs, []
        for stream in streams:
            stream._release_deferred_eof()

    def _linger(self, stream: QUICStream, linger: float) -> None:
        """Stop the peer's sending on ``stream`` if its end of stream has not come within
        ``linger`` seconds. One timer serves all lingering streams: it runs at the
        oldest one's deadline (a shorter linger after a longer one waits for the longer)."""
        lingering = self._lingering
        if lingering is None:
            lingering = self._lingering = deque()  # made on first use: idle connections are many
        while lingering and lingering[0][1].receive_done:  # ended meanwhile: forget them
            lingering.popleft()
        lingering.append((self._loop.time() + linger, stream))
        if self._linger_timer is None and not self._finalized:
            self._linger_timer = self._loop.call_at(lingering[0][0], self._linger_due)

    def _linger_due(self) -> None:
        self._linger_timer = None
        if self._finalized:
            return
        now = self._loop.time()
        lingering = self._lingering
        while lingering and (lingering[0][0] <= now or lingering[0][1].receive_done):
            _, stream = lingering.popleft()
            stream._linger_expired()
        if lingering:
            self._linger_timer = self._loop.call_at(lingering[0][0], self._linger_due)
        else:
            self._lingering = None

    def _consumed(self, stream_id: int, size: int) -> None:
        if self._engine.data_consumed(stream_id, size):
            self._schedule_flush()

    def _writer_blocked(self, stream: QUICStream) -> None:
        self._blocked_writers.add(stream)

    def _stream_progress(self, stream: QUICStream) -> None:
        self._progress.add(stream)
        if not self._finalized:
            self._socket._schedule_flush(self)  # to reap the stream; nothing to transmit

    # -- internals -------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._lost is not None:
            raise ConnectionLostError(self._lost.reason, error_code=self._lost.error_code)

    def _process_events(self) -> None:
        if self._finalized:
            return
        engine = self._engine
        while (event := engine.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                stream = self._stream_for_event(event.stream_id)
                # Data for a stream we already released is dropped; it never counted as
                # unread, so the connection-level credit already covers it.
                if stream is not None:
                    stream._on_data(event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                stream = self._stream_for_event(event.stream_id)
                if stream is not None:
                    stream._on_reset(event.error_code)
            elif isinstance(event, events.StopSendingReceived):
                stream = self._stream_for_event(event.stream_id)
                if stream is not None:
                    stream._on_stop_sending(event.error_code)
            elif isinstance(event, events.ConnectionIdIssued):
                self._socket._add_route(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self._socket._remove_route(event.connection_id, self)
            elif isinstance(event, events.HandshakeCompleted):
                if not engine.is_client:
                    self._set_established()
            elif isinstance(event, events.DatagramFrameReceived):
                callback = self.on_datagram
                if callback is not None:
                    try:
                        callback(event.data)
                    except Exception:
                        _log.exception("datagram callback failed on %r", self)
            elif isinstance(event, events.ConnectionTerminated):
                self._on_terminated(event)
                return
        if engine.is_client and not self._established and engine.handshake_confirmed:
            self._set_established()
        if engine.is_closing and self._lost is None:
            self._mark_lost(self._error_from_close(engine.close_event))

    def _stream_for_event(self, stream_id: int) -> QUICStream | None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        peer_initiated = bool(stream_id & 1) != (not self.is_client)
        if not peer_initiated:
            return None
        index = stream_id // 4
        if index < self._peer_next_index and stream_id not in self._peer_gap_ids:
            return None  # an old stream we already finished with
        if index >= self._peer_next_index:
            self._peer_gap_ids.update(
                i * 4 + (stream_id & 3) for i in range(self._peer_next_index, index)
            )
            self._peer_next_index = index + 1
        else:
            self._peer_gap_ids.discard(stream_id)
        stream = QUICStream(self, stream_id)
        self._streams[stream_id] = stream
        if self._stream_handler is None or self._stopping or self._lost is not None:
            stream.abort(REFUSED_STREAM_CODE)
        else:
            task = self._loop.create_task(self._run_handler(self._stream_handler, stream))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_done)
        return stream

    async def _run_handler(self, handler: StreamHandler, stream: QUICStream) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.abort(HANDLER_ERROR_CODE)
            raise
        except ConnectionLostError:
            pass
        except Exception:
            _log.exception("stream handler failed on stream %d of %r", stream.stream_id, self)
            stream.abort(HANDLER_ERROR_CODE)
        else:
            with contextlib.suppress(Exception):
                await stream.aclose()

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved; failures were logged by _run_handler
        self._check_idle()

    def _start_handshake_timer(self) -> None:
        self._handshake_timer = self._loop.call_later(
            self._config.handshake_timeout, self._handshake_timed_out
        )

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._established or self._lost is not None:
            return
        failure = HandshakeTimeoutError(
            f"the handshake did not complete within {self._config.handshake_timeout:g} s"
        )
        self._handshake_error = failure
        self._established_waiter.set_exception(failure)
        self._established_waiter.exception()
        if self._on_handshake_failed is not None:
            self._on_handshake_failed(self)
        self.abort("handshake timeout")

    def _set_established(self) -> None:
        if self._established:
            return
        self._established = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if not self._established_waiter.done():
            self._established_waiter.set_result(None)
        callback = self._on_established
        if callback is not None:
            callback(self)

    def _error_from_close(self, event: events.ConnectionTerminated | None) -> ConnectionLostError:
        if event is None:
            return ConnectionLostError("connection closed")
        code = event.error_code
        reason = event.reason_phrase
        if reason == "Idle timeout" and code == 0x1:
            return ConnectionLostError("idle timeout", error_code=None)
        if self._local_close:
            return ConnectionLostError(f"connection closed locally: {reason}", error_code=code)
        if self._engine.rejected_peer_reason is not None:
            return ConnectionLostError(
                f"we rejected the peer's certificate: {self._engine.rejected_peer_reason}",
                error_code=code,
            )
        return ConnectionLostError(
            f"connection closed: {reason or 'no reason given'} (code {code:#x})", error_code=code
        )

    def _handshake_failure(self, lost: ConnectionLostError) -> HandshakeError:
        code = lost.error_code
        rejected = self._engine.rejected_peer_reason
        if rejected is not None:
            side = "server" if self.is_client else "client"
            return PeerCertificateRejectedError(
                f"the {side}'s certificate was rejected by our verifier: {rejected}",
                error_code=CRYPTO_ERROR_BAD_CERTIFICATE,
            )
        event = self._engine.close_event
        if code in _CERTIFICATE_ALERTS and not self._local_close:
            detail = event.reason_phrase if event is not None else ""
            if not self._engine.closed_by_peer:  # our TLS stack refused it (e.g. unparsable)
                side = "server" if self.is_client else "client"
                return PeerCertificateRejectedError(
                    f"the {side}'s certificate was rejected: {detail or 'no reason given'}",
                    error_code=code,
                )
            return CertificateRejectedByPeerError(
                f"the peer rejected our certificate: {detail or 'no reason given'}",
                error_code=code,
            )
        if code == _CONNECTION_REFUSED and not self._local_close:
            return ConnectionLimitError(
                f"the server refused the connection: {lost.reason}", error_code=code
            )
        return HandshakeError(f"handshake failed: {lost.reason}", error_code=code)

    def _mark_lost(self, error: ConnectionLostError) -> None:
        if self._lost is not None:
            return
        self._lost = error
        if not self._established_waiter.done():
            failure = self._handshake_failure(error)
            self._handshake_error = failure
            self._established_waiter.set_exception(failure)
            self._established_waiter.exception()  # mark retrieved; connect() re-raises
            if self._on_handshake_failed is not None:
                self._on_handshake_failed(self)
        for stream in list(self._streams.values()):
            stream._on_connection_lost(error)
        self._streams.clear()
        self._blocked_writers.clear()
        self._progress.clear()
        for waiter in self._open_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._open_waiters.clear()
        self._check_idle()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if self._lost is None:
            self._mark_lost(self._error_from_close(event))
        self._finalize()

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()
            self._deferred_timer = None
        self._deferred_eofs.clear()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._lingering = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._lost is None:
            self._mark_lost(ConnectionLostError("connection closed"))
        for task in self._handler_tasks:
            if not task.done():
                task.cancel()
        for waiter in self._idle_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._idle_waiters.clear()
        self._socket._connection_finalized(self)
        callback = self._on_finalized
        if callback is not None:
            callback(self)
        self._closed.set()

    def _transmit(self) -> None:
        now = self._loop.time()
        datagrams = self._engine.datagrams_to_send(now)
        if datagrams:
            self.datagrams_sent += len(datagrams)
            self.bytes_sent += sum(len(d) for d, _ in datagrams)
            self._socket._send_datagrams(datagrams)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        timer_at = self._engine.get_timer()
        interval = self._config.keepalive_interval
        self._keepalive_due = None
        if interval is not None and self._established and self._lost is None:
            self._keepalive_due = self._last_heard + interval
            if timer_at is None or self._keepalive_due < timer_at:
                timer_at = self._keepalive_due
        if timer_at is None:
            return  # an armed timer firing early is harmless: it just re-arms
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= timer_at:
                return  # keep the earlier timer instead of churning handles
            self._timer.cancel()
        self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._finalized:
            return
        now = self._loop.time()
        due = self._keepalive_due
        pinged = False
        if due is not None and now >= due and self._lost is None:
            self._engine.send_ping(next(_ping_ids))
            self._last_heard = now  # next keepalive one interval later unless we hear back
            pinged = True
        engine_at = self._engine.get_timer()
        if engine_at is not None and now >= engine_at:
            self._engine.handle_timer(max(now, engine_at))
        elif not pinged:
            # Fired early (the deadline moved later since it was armed, e.g. the ACK or
            # loss timer after the peer's reply): nothing is due, so skip the full
            # event/packet-building pass and only re-arm for the new deadline.
            self._arm_timer(now)
            return
        self._transmit_due = True
        self._flush()

    def _wake(self) -> None:
        if self._blocked_writers:
            limit = self._config.stream_send_buffer // 2
            engine = self._engine
            for stream in list(self._blocked_writers):
                if (
                    not stream.waiting_to_send
                    or stream.send_done
                    or engine.stream_send_buffered(stream.stream_id) <= limit
                ):
                    self._blocked_writers.discard(stream)
                    stream._wake_sender()
        if self._open_waiters:
            stream_id = self._engine.get_next_available_stream_id()
            if self._engine.peer_stream_credit_ok(stream_id):
                for waiter in self._open_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._open_waiters.clear()
        if self._progress:
            done = [s for s in self._progress if s.send_done and s.receive_done]
            for stream in done:
                self._progress.discard(stream)
                self._streams.pop(stream.stream_id, None)
                self._engine.forget_stream(stream.stream_id)
            if done:
                self._check_idle()

    def _check_idle(self) -> None:
        if not self._idle_waiters:
            return
        if self._lost is None and (self._streams or self._handler_tasks):
            return
        for waiter in self._idle_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._idle_waiters.clear()
