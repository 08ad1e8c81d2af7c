"""A sans-IO stream multiplexer: many byte streams over one ordered, reliable byte pipe.

This is the protocol core under :mod:`quic_rpc.transports.tcp`. It reads no clock and
touches no socket: bytes go in through :meth:`MuxConnection.receive_data`, which returns
:class:`MuxEvent` objects; commands (``open_stream``, ``send_data``, ``end_stream``,
``reset_stream``, ``stop_sending``, ``acknowledge_received``, ``ping``, ``send_goaway``)
queue frames that :meth:`MuxConnection.data_to_send` hands to whatever writes them.

Wire format (version 1)
=======================

Every frame is a 10-byte header followed by ``length`` payload bytes; integers are
big-endian and unsigned::

    +---------+---------+-------------------+-------------------+----------------+
    | type u8 | flags u8| stream id u32     | length u32        | payload ...    |
    +---------+---------+-------------------+-------------------+----------------+

======  ==============  =========  ===========================================================
type    name            stream id  payload
======  ==============  =========  ===========================================================
0x00    HELLO           0          ``b"QSMX"``, version u8 (=1), initial stream window u32,
                                   initial connection window u32, max concurrent streams u32,
                                   max frame size u32  (21 bytes)
0x01    OPEN            ≠ 0        empty; opens the stream
0x02    DATA            ≠ 0        1 .. receiver's max frame size bytes of stream data
0x03    FIN             ≠ 0        empty; the sender's end of stream
0x04    RESET           ≠ 0        application error code u64 (≤ 2**62-1); sender abandons
                                   its sending side
0x05    STOP_SENDING    ≠ 0        application error code u64; asks the receiver of this
                                   frame to abandon its sending side
0x06    WINDOW_UPDATE   any        increment u32 (≥ 1); stream 0 = the connection window
0x07    PING            0          8 opaque bytes; flag 0x01 (ACK) marks the echo
0x08    GOAWAY          0          last accepted peer stream id u32, error code u32, UTF-8
                                   reason (≤ 1024 bytes)
======  ==============  =========  ===========================================================

Rules:

* Each side's first frame is HELLO (or a GOAWAY refusing the connection). Settings are
  declarative: each side obeys the limits the *other* side announced.
* Clients open odd stream ids, servers even ones, each strictly increasing. OPEN precedes
  every other frame of a stream. A side never has more streams of its own open than the
  peer's ``max concurrent streams``; a stream counts until both directions finished
  (FIN or RESET sent and received).
* Flow control: DATA consumes both the stream's and the connection's window; the receiver
  returns credit with WINDOW_UPDATE as the application consumes bytes. Windows never
  exceed 2**31-1. Exceeding a window is a connection error.
* On STOP_SENDING a side that is still sending answers with RESET carrying the same code.
* GOAWAY with error code 0 is a graceful shutdown: streams above ``last stream id`` that
  the receiver opened were never seen and are refused; the rest run to completion. A
  non-zero code closes the connection at once.
* Anything else — unknown types or flags, bad lengths, frames for streams never opened,
  data after FIN — is a connection error: the core queues GOAWAY with an error code and
  raises a :class:`RemoteProtocolError` subclass.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_ERROR_CODE",
    "MAX_WINDOW",
    "RECV_TRANSITIONS",
    "SEND_TRANSITIONS",
    "VERSION",
    "EndOfStreamReceived",
    "ErrorCode",
    "FlowControlError",
    "FrameSizeError",
    "FrameType",
    "GoAwayReceived",
    "HandshakeCompleted",
    "LocalProtocolError",
    "MuxConfig",
    "MuxConnection",
    "MuxError",
    "MuxEvent",
    "MuxSettings",
    "PingAcknowledged",
    "PingReceived",
    "RecvState",
    "RemoteProtocolError",
    "SendState",
    "StopSendingReceived",
    "StreamClosed",
    "StreamDataReceived",
    "StreamLimitError",
    "StreamOpened",
    "StreamResetReceived",
    "WindowUpdated",
    "encode_frame",
]

MAGIC: Final = b"QSMX"
VERSION: Final = 1
HEADER: Final = struct.Struct("!BBII")
HEADER_SIZE: Final = HEADER.size
MAX_WINDOW: Final = (1 << 31) - 1
MAX_ERROR_CODE: Final = (1 << 62) - 1
MAX_STREAM_ID: Final = (1 << 32) - 1
MAX_REASON: Final = 1024
FLAG_ACK: Final = 0x01

_HELLO = struct.Struct("!4sBIIII")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_GOAWAY = struct.Struct("!II")


class FrameType(enum.IntEnum):
    HELLO = 0x00
    OPEN = 0x01
    DATA = 0x02
    FIN = 0x03
    RESET = 0x04
    STOP_SENDING = 0x05
    WINDOW_UPDATE = 0x06
    PING = 0x07
    GOAWAY = 0x08


class ErrorCode(enum.IntEnum):
    """Connection error codes carried by GOAWAY."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    FLOW_CONTROL_ERROR = 0x2
    FRAME_SIZE_ERROR = 0x3
    STREAM_LIMIT_ERROR = 0x4
    INTERNAL_ERROR = 0x5
    VERIFICATION_FAILED = 0x6


# -- errors ------------------------------------------------------------------------------


class MuxError(Exception):
    """Base of the multiplexer's errors; ``error_code`` is what goes into GOAWAY."""

    error_code: int = ErrorCode.PROTOCOL_ERROR


class LocalProtocolError(MuxError):
    """The caller misused the API (e.g. sent on a finished stream)."""

    error_code = ErrorCode.INTERNAL_ERROR


class RemoteProtocolError(MuxError):
    """The peer broke the protocol; the connection is unusable."""

    error_code = ErrorCode.PROTOCOL_ERROR


class FrameSizeError(RemoteProtocolError):
    """A frame's length is wrong for its type or above the announced maximum."""

    error_code = ErrorCode.FRAME_SIZE_ERROR


class FlowControlError(RemoteProtocolError):
    """The peer sent beyond a flow-control window or overflowed one."""

    error_code = ErrorCode.FLOW_CONTROL_ERROR


class StreamLimitError(RemoteProtocolError):
    """The peer opened more concurrent streams than we allow."""

    error_code = ErrorCode.STREAM_LIMIT_ERROR


# -- configuration -----------------------------------------------------------------------


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Limits this side announces to its peer (and enforces on what the peer sends).

    * ``initial_stream_window`` — bytes the peer may send on a stream before we return
      credit: bounds what one unread stream buffers (default 256 KiB).
    * ``initial_connection_window`` — the same for all streams together (default 4 MiB).
    * ``max_concurrent_streams`` — streams the peer may have open at once (default 100).
    * ``max_frame_size`` — largest DATA payload we accept (default 64 KiB).
    """

    initial_stream_window: int = 256 * 1024
    initial_connection_window: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 100
    max_frame_size: int = 64 * 1024

    def __post_init__(self) -> None:
        _check_range("initial_stream_window", self.initial_stream_window, 1, MAX_WINDOW)
        _check_range("initial_connection_window", self.initial_connection_window, 1, MAX_WINDOW)
        _check_range("max_concurrent_streams", self.max_concurrent_streams, 0, MAX_WINDOW)
        _check_range("max_frame_size", self.max_frame_size, 1024, 1 << 24)


@dataclass(frozen=True, slots=True)
class MuxSettings:
    """The settings a peer announced in its HELLO."""

    initial_stream_window: int
    initial_connection_window: int
    max_concurrent_streams: int
    max_frame_size: int


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MuxEvent:
    """Base of everything :meth:`MuxConnection.receive_data` reports."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(MuxEvent):
    settings: MuxSettings


@dataclass(frozen=True, slots=True)
class StreamOpened(MuxEvent):
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamDataReceived(MuxEvent):
    """Stream data; hand credit back with ``acknowledge_received`` once consumed."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStreamReceived(MuxEvent):
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamResetReceived(MuxEvent):
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class StopSendingReceived(MuxEvent):
    """The peer stopped our sending side; the core already answered with RESET."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowUpdated(MuxEvent):
    """Send credit grew; ``stream_id`` 0 means the connection window."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamClosed(MuxEvent):
    """Both directions of a stream finished; the core forgot it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingReceived(MuxEvent):
    payload: bytes


@dataclass(frozen=True, slots=True)
class PingAcknowledged(MuxEvent):
    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived(MuxEvent):
    """The peer is going away. ``refused_stream_ids`` were never seen by the peer.

    With a non-zero ``error_code`` the connection is closed and every stream is gone.
    """

    last_stream_id: int
    error_code: int
    reason: str
    refused_stream_ids: tuple[int, ...]


# -- stream state tables -----------------------------------------------------------------


class SendState(enum.Enum):
    OPEN = "open"
    FIN_SENT = "fin-sent"
    RESET_SENT = "reset-sent"


class RecvState(enum.Enum):
    OPEN = "open"
    FIN_RECEIVED = "fin-received"
    RESET_RECEIVED = "reset-received"


SEND_TRANSITIONS: Final[dict[tuple[SendState, FrameType], SendState]] = {
    (SendState.OPEN, FrameType.DATA): SendState.OPEN,
    (SendState.OPEN, FrameType.FIN): SendState.FIN_SENT,
    (SendState.OPEN, FrameType.RESET): SendState.RESET_SENT,
}
"""Frames a side may send on its sending half, by state. Anything else is local misuse."""

RECV_TRANSITIONS: Final[dict[tuple[RecvState, FrameType], RecvState]] = {
    (RecvState.OPEN, FrameType.DATA): RecvState.OPEN,
    (RecvState.OPEN, FrameType.FIN): RecvState.FIN_RECEIVED,
    (RecvState.OPEN, FrameType.RESET): RecvState.RESET_RECEIVED,
}
"""Frames a side may receive on its receiving half, by state. Anything else is a peer error."""


class _Stream:
    __slots__ = (
        "recv_credit",
        "recv_state",
        "recv_window",
        "send_state",
        "send_window",
        "stop_sent",
        "stream_id",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_state = SendState.OPEN
        self.recv_state = RecvState.OPEN
        self.stop_sent = False
        self.send_window = send_window
        self.recv_window = recv_window  # bytes the peer may still send
        self.recv_credit = 0  # bytes consumed but not yet returned to the peer

    @property
    def finished(self) -> bool:
        return self.send_state is not SendState.OPEN and self.recv_state is not RecvState.OPEN


def encode_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One wire frame. Exposed for tests and tools that craft frames by hand."""
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


_FIXED_LENGTHS: Final[dict[FrameType, int]] = {
    FrameType.HELLO: _HELLO.size,
    FrameType.OPEN: 0,
    FrameType.FIN: 0,
    FrameType.RESET: _U64.size,
    FrameType.STOP_SENDING: _U64.size,
    FrameType.WINDOW_UPDATE: _U32.size,
    FrameType.PING: 8,
}
_CONNECTION_FRAMES: Final = frozenset({FrameType.HELLO, FrameType.PING, FrameType.GOAWAY})
_STREAM_FRAMES: Final = frozenset(
    {FrameType.OPEN, FrameType.DATA, FrameType.FIN, FrameType.RESET, FrameType.STOP_SENDING}
)


# -- the connection ----------------------------------------------------------------------


class MuxConnection:
    """One side of a multiplexed connection (``client=True`` opens odd stream ids).

    Call :meth:`initiate` to queue our HELLO; no stream may be opened until the peer's
    HELLO arrived too (:attr:`handshake_complete`).
    """

    def __init__(self, *, client: bool, config: MuxConfig | None = None) -> None:
        self._client = client
        self._config = config if config is not None else MuxConfig()
        self._out = bytearray()
        self._in = bytearray()
        self._peer: MuxSettings | None = None
        self._closed = False
        self._streams: dict[int, _Stream] = {}
        self._local_open = 0
        self._peer_open = 0
        self._next_local_id = 1 if client else 2
        self._last_peer_id = 0
        self._conn_send_window = 0
        self._conn_recv_window = self._config.initial_connection_window
        self._conn_recv_credit = 0
        self._goaway_sent_last_id: int | None = None
        self._goaway_received = False
        self._initiated = False

    def initiate(self) -> None:
        """Queue our HELLO. Call once, before any other command except ``send_goaway``.

        Kept apart from construction so that a side may check its peer (e.g. verify a
        TLS certificate) and refuse it with a GOAWAY instead of ever greeting it.
        """
        if self._initiated:
            raise LocalProtocolError("initiate() was already called")
        if self._closed:
            raise LocalProtocolError("the connection is closed")
        self._initiated = True
        cfg = self._config
        self._queue(
            FrameType.HELLO,
            0,
            0,
            _HELLO.pack(
                MAGIC,
                VERSION,
                cfg.initial_stream_window,
                cfg.initial_connection_window,
                cfg.max_concurrent_streams,
                cfg.max_frame_size,
            ),
        )

    # -- inspection ----------------------------------------------------------------------

    @property
    def config(self) -> MuxConfig:
        return self._config

    @property
    def peer_settings(self) -> MuxSettings | None:
        return self._peer

    @property
    def handshake_complete(self) -> bool:
        """True once we initiated and the peer's HELLO arrived."""
        return self._peer is not None and self._initiated

    @property
    def closed(self) -> bool:
        """True once the connection failed or either side closed it with an error."""
        return self._closed

    @property
    def going_away(self) -> bool:
        """True once either side sent GOAWAY: no new streams."""
        return self._goaway_received or self._goaway_sent_last_id is not None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_capacity(self, stream_id: int) -> int:
        """Bytes ``send_data`` would accept on the stream right now."""
        stream = self._local_stream(stream_id)
        if stream.send_state is not SendState.OPEN:
            return 0
        return max(0, min(stream.send_window, self._conn_send_window))

    def can_open_stream(self) -> bool:
        peer = self._peer
        return (
            peer is not None
            and self._initiated
            and not self._closed
            and not self.going_away
            and self._local_open < peer.max_concurrent_streams
            and self._next_local_id <= MAX_STREAM_ID
        )

    # -- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def _queue(
        self, frame_type: FrameType, flags: int, stream_id: int, payload: bytes = b""
    ) -> None:
        self._out += HEADER.pack(frame_type, flags, stream_id, len(payload))
        self._out += payload

    # -- commands ------------------------------------------------------------------------

    def _require_usable(self) -> MuxSettings:
        if self._closed:
            raise LocalProtocolError("the connection is closed")
        if self._peer is None or not self._initiated:
            raise LocalProtocolError("the handshake has not completed")
        return self._peer

    def _local_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return stream

    def open_stream(self) -> int:
        """Open a new stream and return its id."""
        peer = self._require_usable()
        if self.going_away:
            raise LocalProtocolError("the connection is going away")
        if self._local_open >= peer.max_concurrent_streams:
            raise LocalProtocolError(
                f"the peer allows at most {peer.max_concurrent_streams} concurrent streams"
            )
        stream_id = self._next_local_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are exhausted")
        self._next_local_id += 2
        self._streams[stream_id] = _Stream(
            stream_id, peer.initial_stream_window, self._config.initial_stream_window
        )
        self._local_open += 1
        self._queue(FrameType.OPEN, 0, stream_id)
        return stream_id

    def _advance_send(self, stream: _Stream, frame: FrameType) -> None:
        new = SEND_TRANSITIONS.get((stream.send_state, frame))
        if new is None:
            raise LocalProtocolError(
                f"cannot send {frame.name} on stream {stream.stream_id} in state "
                f"{stream.send_state.value}"
            )
        stream.send_state = new

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the windows allow; returns how many bytes."""
        peer = self._require_usable()
        stream = self._local_stream(stream_id)
        self._advance_send(stream, FrameType.DATA)
        view = memoryview(data).cast("B")
        count = max(0, min(len(view), stream.send_window, self._conn_send_window))
        step = peer.max_frame_size
        for offset in range(0, count, step):
            chunk = view[offset : min(offset + step, count)]
            self._out += HEADER.pack(FrameType.DATA, 0, stream_id, len(chunk))
            self._out += chunk
        stream.send_window -= count
        self._conn_send_window -= count
        return count

    def end_stream(self, stream_id: int) -> None:
        """Send FIN: our end of the stream."""
        self._require_usable()
        stream = self._local_stream(stream_id)
        self._advance_send(stream, FrameType.FIN)
        self._queue(FrameType.FIN, 0, stream_id)
        self._forget_if_finished(stream)

    def reset_stream(self, stream_id: int, code: int) -> None:
        """Abandon our sending side with an application error code."""
        _check_range("code", code, 0, MAX_ERROR_CODE)
        self._require_usable()
        stream = self._local_stream(stream_id)
        self._advance_send(stream, FrameType.RESET)
        self._queue(FrameType.RESET, 0, stream_id, _U64.pack(code))
        self._forget_if_finished(stream)

    def stop_sending(self, stream_id: int, code: int) -> None:
        """Ask the peer to abandon its sending side; later data is dropped (and credited).

        A no-op when the peer already finished sending or the stream is gone.
        """
        _check_range("code", code, 0, MAX_ERROR_CODE)
        self._require_usable()
        stream = self._streams.get(stream_id)
        if stream is None or stream.recv_state is not RecvState.OPEN or stream.stop_sent:
            return
        stream.stop_sent = True
        self._queue(FrameType.STOP_SENDING, 0, stream_id, _U64.pack(code))

    def acknowledge_received(self, stream_id: int, count: int) -> None:
        """The application consumed (or discarded) ``count`` bytes of the stream's data."""
        if count < 0:
            raise LocalProtocolError("cannot acknowledge a negative byte count")
        if self._closed or count == 0:
            return
        cfg = self._config
        if self._conn_recv_window + self._conn_recv_credit + count > cfg.initial_connection_window:
            raise LocalProtocolError("acknowledged more bytes than were received")
        stream = self._streams.get(stream_id)
        if stream is not None and stream.recv_state is RecvState.OPEN and not stream.stop_sent:
            if stream.recv_window + stream.recv_credit + count > cfg.initial_stream_window:
                raise LocalProtocolError(
                    f"acknowledged more bytes than stream {stream_id} received"
                )
            stream.recv_credit += count
            if stream.recv_credit >= max(1, cfg.initial_stream_window // 4):
                self._queue(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.recv_credit))
                stream.recv_window += stream.recv_credit
                stream.recv_credit = 0
        self._credit_connection(count)

    def _credit_connection(self, count: int) -> None:
        self._conn_recv_credit += count
        if self._conn_recv_credit >= max(1, self._config.initial_connection_window // 4):
            self._queue(FrameType.WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_recv_credit))
            self._conn_recv_window += self._conn_recv_credit
            self._conn_recv_credit = 0

    def ping(self, payload: bytes) -> None:
        """Send a PING with 8 opaque bytes; the peer echoes them (``PingAcknowledged``)."""
        if len(payload) != 8:
            raise LocalProtocolError("a ping payload is exactly 8 bytes")
        self._require_usable()
        self._queue(FrameType.PING, 0, 0, bytes(payload))

    def send_goaway(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Announce shutdown. Code 0: no new streams, running ones finish. Otherwise: close now.

        Allowed before the handshake completes (to refuse a connection). Idempotent once
        the connection is closed.
        """
        _check_range("error_code", error_code, 0, (1 << 32) - 1)
        if self._closed:
            return
        encoded = reason.encode("utf-8")[:MAX_REASON]
        self._queue(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(self._last_peer_id, error_code) + encoded)
        if self._goaway_sent_last_id is None:
            self._goaway_sent_last_id = self._last_peer_id
        if error_code != ErrorCode.NO_ERROR:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._streams.clear()
        self._local_open = self._peer_open = 0
        self._in.clear()

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[MuxEvent]:
        """Feed bytes from the peer; returns the events they complete.

        Raises a :class:`RemoteProtocolError` subclass when the peer broke the protocol;
        a GOAWAY carrying the error is then queued and the connection is closed. Input
        after that is ignored.
        """
        if self._closed:
            return []
        self._in += data
        events: list[MuxEvent] = []
        buffer = self._in
        pos = 0
        try:
            while len(buffer) - pos >= HEADER_SIZE:
                raw_type, flags, stream_id, length = HEADER.unpack_from(buffer, pos)
                frame_type = self._check_header(raw_type, flags, stream_id, length)
                end = pos + HEADER_SIZE + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[pos + HEADER_SIZE : end])
                pos = end
                self._handle(frame_type, flags, stream_id, payload, events)
                if self._closed:
                    return events
        except RemoteProtocolError as exc:
            self.send_goaway(exc.error_code, str(exc))
            self._close()
            raise
        del buffer[:pos]
        return events

    def _check_header(self, raw_type: int, flags: int, stream_id: int, length: int) -> FrameType:
        try:
            frame_type = FrameType(raw_type)
        except ValueError:
            raise RemoteProtocolError(f"unknown frame type {raw_type:#x}") from None
        if flags & ~(FLAG_ACK if frame_type is FrameType.PING else 0):
            raise RemoteProtocolError(f"{frame_type.name} frame with unknown flags {flags:#x}")
        if frame_type in _CONNECTION_FRAMES and stream_id != 0:
            raise RemoteProtocolError(f"{frame_type.name} frame on stream {stream_id}")
        if frame_type in _STREAM_FRAMES and stream_id == 0:
            raise RemoteProtocolError(f"{frame_type.name} frame on stream 0")
        fixed = _FIXED_LENGTHS.get(frame_type)
        if fixed is not None and length != fixed:
            raise FrameSizeError(f"{frame_type.name} frame of {length} bytes, expected {fixed}")
        if frame_type is FrameType.DATA and not 1 <= length <= self._config.max_frame_size:
            raise FrameSizeError(
                f"DATA frame of {length} bytes (allowed 1..{self._config.max_frame_size})"
            )
        if (
            frame_type is FrameType.GOAWAY
            and not _GOAWAY.size <= length <= _GOAWAY.size + MAX_REASON
        ):
            raise FrameSizeError(f"GOAWAY frame of {length} bytes")
        if self._peer is None and frame_type not in (FrameType.HELLO, FrameType.GOAWAY):
            raise RemoteProtocolError(f"{frame_type.name} frame before HELLO")
        if self._peer is not None and frame_type is FrameType.HELLO:
            raise RemoteProtocolError("second HELLO frame")
        return frame_type

    def _is_peer_id(self, stream_id: int) -> bool:
        # Clients open odd ids, so a client's peer opens even ones.
        return (stream_id % 2 == 0) == self._client

    def _ignored(self, stream_id: int) -> bool:
        """A peer stream opened after our GOAWAY: silently dropped."""
        last = self._goaway_sent_last_id
        return last is not None and self._is_peer_id(stream_id) and stream_id > last

    def _lookup(self, stream_id: int, frame_type: FrameType) -> _Stream | None:
        """The stream a frame is for, or None if it is finished (or ignored)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if self._is_peer_id(stream_id):
            opened = stream_id <= self._last_peer_id
        else:
            opened = stream_id < self._next_local_id
        if not opened:
            raise RemoteProtocolError(f"{frame_type.name} frame for unopened stream {stream_id}")
        return None

    def _handle(
        self,
        frame_type: FrameType,
        flags: int,
        stream_id: int,
        payload: bytes,
        events: list[MuxEvent],
    ) -> None:
        if frame_type is FrameType.HELLO:
            self._on_hello(payload, events)
        elif frame_type is FrameType.OPEN:
            self._on_open(stream_id, events)
        elif frame_type is FrameType.DATA:
            self._on_data(stream_id, payload, events)
        elif frame_type is FrameType.FIN or frame_type is FrameType.RESET:
            self._on_end(frame_type, stream_id, payload, events)
        elif frame_type is FrameType.STOP_SENDING:
            self._on_stop_sending(stream_id, payload, events)
        elif frame_type is FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, events)
        elif frame_type is FrameType.PING:
            if flags & FLAG_ACK:
                events.append(PingAcknowledged(payload))
            else:
                self._queue(FrameType.PING, FLAG_ACK, 0, payload)
                events.append(PingReceived(payload))
        else:
            self._on_goaway(payload, events)

    def _on_hello(self, payload: bytes, events: list[MuxEvent]) -> None:
        magic, version, stream_window, conn_window, max_streams, max_frame = _HELLO.unpack(payload)
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad HELLO magic {magic!r}: not a quic_rpc mux peer")
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported mux version {version} (we speak {VERSION})")
        try:
            settings = MuxSettings(stream_window, conn_window, max_streams, max_frame)
            MuxConfig(stream_window, conn_window, max_streams, max_frame)
        except ValueError as exc:
            raise RemoteProtocolError(f"invalid HELLO settings: {exc}") from None
        self._peer = settings
        self._conn_send_window = conn_window
        events.append(HandshakeCompleted(settings))

    def _on_open(self, stream_id: int, events: list[MuxEvent]) -> None:
        if not self._is_peer_id(stream_id):
            raise RemoteProtocolError(f"peer opened stream {stream_id} with our parity")
        if stream_id <= self._last_peer_id:
            raise RemoteProtocolError(f"stream id {stream_id} is not above {self._last_peer_id}")
        self._last_peer_id = stream_id
        if self._ignored(stream_id):
            return
        if self._peer_open >= self._config.max_concurrent_streams:
            raise StreamLimitError(
                f"peer exceeded {self._config.max_concurrent_streams} concurrent streams"
            )
        peer = self._peer
        assert peer is not None  # _check_header guarantees HELLO came first
        self._streams[stream_id] = _Stream(
            stream_id, peer.initial_stream_window, self._config.initial_stream_window
        )
        self._peer_open += 1
        events.append(StreamOpened(stream_id))

    def _advance_recv(self, stream: _Stream, frame: FrameType) -> None:
        new = RECV_TRANSITIONS.get((stream.recv_state, frame))
        if new is None:
            raise RemoteProtocolError(
                f"{frame.name} frame on stream {stream.stream_id} in state {stream.recv_state.value}"
            )
        stream.recv_state = new

    def _on_data(self, stream_id: int, payload: bytes, events: list[MuxEvent]) -> None:
        size = len(payload)
        if size > self._conn_recv_window:
            raise FlowControlError(f"DATA of {size} bytes exceeds the connection window")
        self._conn_recv_window -= size
        stream = None if self._ignored(stream_id) else self._lookup(stream_id, FrameType.DATA)
        if stream is None:
            if not self._ignored(stream_id):
                raise RemoteProtocolError(f"DATA frame on finished stream {stream_id}")
            self._credit_connection(size)
            return
        self._advance_recv(stream, FrameType.DATA)
        if size > stream.recv_window:
            raise FlowControlError(f"DATA of {size} bytes exceeds stream {stream_id}'s window")
        stream.recv_window -= size
        if stream.stop_sent:
            self._credit_connection(size)
            return
        events.append(StreamDataReceived(stream_id, payload))

    def _on_end(
        self, frame_type: FrameType, stream_id: int, payload: bytes, events: list[MuxEvent]
    ) -> None:
        if self._ignored(stream_id):
            return
        stream = self._lookup(stream_id, frame_type)
        if stream is None:
            raise RemoteProtocolError(f"{frame_type.name} frame on finished stream {stream_id}")
        self._advance_recv(stream, frame_type)
        if frame_type is FrameType.FIN:
            events.append(EndOfStreamReceived(stream_id))
        else:
            (code,) = _U64.unpack(payload)
            if code > MAX_ERROR_CODE:
                raise RemoteProtocolError(f"RESET code {code:#x} above 2**62-1")
            events.append(StreamResetReceived(stream_id, code))
        self._forget_if_finished(stream, events)

    def _on_stop_sending(self, stream_id: int, payload: bytes, events: list[MuxEvent]) -> None:
        (code,) = _U64.unpack(payload)
        if code > MAX_ERROR_CODE:
            raise RemoteProtocolError(f"STOP_SENDING code {code:#x} above 2**62-1")
        if self._ignored(stream_id):
            return
        stream = self._lookup(stream_id, FrameType.STOP_SENDING)
        if stream is None or stream.send_state is not SendState.OPEN:
            return
        stream.send_state = SendState.RESET_SENT
        self._queue(FrameType.RESET, 0, stream_id, _U64.pack(code))
        events.append(StopSendingReceived(stream_id, code))
        self._forget_if_finished(stream, events)

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[MuxEvent]) -> None:
        (increment,) = _U32.unpack(payload)
        if increment == 0:
            raise RemoteProtocolError("WINDOW_UPDATE with a zero increment")
        if stream_id == 0:
            if self._conn_send_window + increment > MAX_WINDOW:
                raise FlowControlError("connection send window above 2**31-1")
            self._conn_send_window += increment
            events.append(WindowUpdated(0))
            return
        if self._ignored(stream_id):
            return
        stream = self._lookup(stream_id, FrameType.WINDOW_UPDATE)
        if stream is None or stream.send_state is not SendState.OPEN:
            return
        if stream.send_window + increment > MAX_WINDOW:
            raise FlowControlError(f"stream {stream_id} send window above 2**31-1")
        stream.send_window += increment
        events.append(WindowUpdated(stream_id))

    def _on_goaway(self, payload: bytes, events: list[MuxEvent]) -> None:
        last_id, error_code = _GOAWAY.unpack_from(payload)
        reason = payload[_GOAWAY.size :].decode("utf-8", errors="replace")
        self._goaway_received = True
        if error_code != ErrorCode.NO_ERROR:
            refused = tuple(sorted(self._streams))
            self._close()
        else:
            refused = tuple(
                sorted(sid for sid in self._streams if not self._is_peer_id(sid) and sid > last_id)
            )
            for sid in refused:
                del self._streams[sid]
                self._local_open -= 1
        events.append(GoAwayReceived(last_id, error_code, reason, refused))

    def _forget_if_finished(self, stream: _Stream, events: list[MuxEvent] | None = None) -> None:
        if not stream.finished or self._streams.get(stream.stream_id) is not stream:
            return
        del self._streams[stream.stream_id]
        if self._is_peer_id(stream.stream_id):
            self._peer_open -= 1
        else:
            self._local_open -= 1
        # Credit still owed for consumed bytes is returned on the connection window only.
        if events is not None:
            events.append(StreamClosed(stream.stream_id))
