"""Sans-IO frame codec: bytes in, events out; arguments in, bytes out.

No I/O, no asyncio, no clock. :class:`FrameDecoder` checks every length against its
limits before it buffers the payload, so hostile input can cost at most
``max(max_message_size, max_header_size) + one fed chunk`` of memory; anything malformed
raises :class:`RemoteProtocolError` (or a subclass) and poisons the decoder.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

from .errors import (
    HeaderTooLargeError,
    LocalProtocolError,
    MessageTooLargeError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from .events import (
    Event,
    MessageReceived,
    RawDataReceived,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    TrailerReceived,
)
from .frames import (
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_ENTRIES,
    FRAME_HEADER,
    MAX_FRAME_LENGTH,
    PREFACE,
    PROTOCOL_VERSION,
    CallKind,
    FrameType,
)
from .metadata import RESERVED_PREFIXES, Metadata, MetadataValue
from .status import Status

__all__ = [
    "FrameDecoder",
    "encode_message",
    "encode_preface",
    "encode_request_end",
    "encode_request_header",
    "encode_response_header",
    "encode_trailer",
]

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_KIND_FLAGS = struct.Struct(">BB")
_U64 = struct.Struct(">Q")
_STATUS_DETAILS = struct.Struct(">BI")

_FLAG_DEADLINE = 0x01
_FLAG_RICH = 0x01
_MAX_TIMEOUT_US = 2**64 - 1

_KEY_BYTES_RE = re.compile(rb"[0-9a-z_.\-]+")
_VALUE_BYTES_RE = re.compile(rb"[\x20-\x7e]*")
_RESERVED_BYTES = tuple(p.encode() for p in RESERVED_PREFIXES)

_MESSAGE = FrameType.MESSAGE.value
_REQUEST_HEADER = FrameType.REQUEST_HEADER.value
_RESPONSE_HEADER = FrameType.RESPONSE_HEADER.value
_REQUEST_END = FrameType.REQUEST_END.value
_TRAILER = FrameType.TRAILER.value
_KINDS = {k.value: k for k in CallKind}
_STATUSES = {s.value: s for s in Status}
_REQUEST_END_FRAME = FRAME_HEADER.pack(_REQUEST_END, 0)
_pack_frame = FRAME_HEADER.pack


# --------------------------------------------------------------------------- encoding


def encode_preface() -> bytes:
    """The version byte each direction of a call stream starts with."""
    return PREFACE


def _frame(ftype: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise LocalProtocolError(f"frame payload of {len(payload)} bytes is too large")
    return _pack_frame(ftype, len(payload)) + payload


def _encode_metadata(metadata: Iterable[tuple[str, MetadataValue]]) -> bytes:
    parts: list[bytes] = []
    for key, value in metadata:
        k = key.encode("ascii")
        v = value.encode("ascii") if isinstance(value, str) else bytes(value)
        if len(k) > 255:
            raise LocalProtocolError(f"metadata key too long: {key!r}")
        parts.append(_U8.pack(len(k)) + k + _U32.pack(len(v)) + v)
    if len(parts) > 0xFFFF:
        raise LocalProtocolError("too many metadata entries")
    return _U16.pack(len(parts)) + b"".join(parts)


def encode_request_header(
    method: str,
    kind: CallKind,
    metadata: Iterable[tuple[str, MetadataValue]] = (),
    timeout_us: int | None = None,
) -> bytes:
    """A REQUEST_HEADER frame. ``timeout_us`` is the time the caller allows, or None."""
    m = method.encode("utf-8")
    if not m or len(m) > 0xFFFF:
        raise LocalProtocolError(f"method name must be 1-65535 UTF-8 bytes: {method!r}")
    if timeout_us is None:
        head = _KIND_FLAGS.pack(int(kind), 0)
    else:
        head = _KIND_FLAGS.pack(int(kind), _FLAG_DEADLINE) + _U64.pack(
            min(max(int(timeout_us), 0), _MAX_TIMEOUT_US)
        )
    payload = head + _U16.pack(len(m)) + m + _encode_metadata(metadata)
    return _frame(_REQUEST_HEADER, payload)


def encode_response_header(metadata: Iterable[tuple[str, MetadataValue]] = ()) -> bytes:
    """A RESPONSE_HEADER frame carrying the server's initial metadata."""
    return _frame(_RESPONSE_HEADER, _encode_metadata(metadata))


def encode_message(data: bytes) -> bytes:
    """A MESSAGE frame."""
    n = len(data)
    if n > MAX_FRAME_LENGTH:
        raise LocalProtocolError(f"message of {n} bytes is too large for one frame")
    return _pack_frame(_MESSAGE, n) + data


def encode_request_end() -> bytes:
    """A REQUEST_END frame: the client sends no more messages."""
    return _REQUEST_END_FRAME


def encode_trailer(
    status: Status,
    details: str = "",
    metadata: Iterable[tuple[str, MetadataValue]] = (),
    rich_details: bytes | None = None,
) -> bytes:
    """A TRAILER frame: the call's status, details, trailing metadata, rich details."""
    d = details.encode("utf-8", "surrogatepass")
    payload = _STATUS_DETAILS.pack(int(status), len(d)) + d
    if rich_details is None:
        payload += b"\x00"
    else:
        payload += _U8.pack(_FLAG_RICH) + _U32.pack(len(rich_details)) + bytes(rich_details)
    return _frame(_TRAILER, payload + _encode_metadata(metadata))


# --------------------------------------------------------------------------- decoding


class FrameDecoder:
    """Incremental decoder for one direction of one call stream.

    ``raw_after_request_header``: after a REQUEST_HEADER of kind RAW, every further byte is
    delivered as :class:`RawDataReceived` (the server side). ``raw_after_response_header``:
    same after a RESPONSE_HEADER (the client side of a raw call).
    """

    __slots__ = (
        "_buf",
        "_failed",
        "_max_entries",
        "_max_header",
        "_max_message",
        "_need_preface",
        "_raw",
        "_raw_after_request",
        "_raw_after_response",
    )

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_metadata_entries: int = DEFAULT_MAX_METADATA_ENTRIES,
        expect_preface: bool = True,
        raw_after_request_header: bool = False,
        raw_after_response_header: bool = False,
    ) -> None:
        self._buf = bytearray()
        self._max_message = max_message_size
        self._max_header = max_header_size
        self._max_entries = max_metadata_entries
        self._need_preface = expect_preface
        self._raw = False
        self._raw_after_request = raw_after_request_header
        self._raw_after_response = raw_after_response_header
        self._failed: RemoteProtocolError | None = None

    @property
    def raw(self) -> bool:
        """True once the decoder passes bytes through as RawDataReceived."""
        return self._raw

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Decode as many complete frames as ``data`` (plus what was buffered) holds."""
        if self._failed is not None:
            raise self._failed
        if self._raw:
            return [RawDataReceived(bytes(data))] if data else []
        try:
            return self._feed(data)
        except RemoteProtocolError as exc:
            self._failed = exc
            self._buf = bytearray()
            raise

    def feed_eof(self) -> None:
        """The stream ended: raise if it ended in the middle of a frame."""
        if self._failed is not None:
            raise self._failed
        if self._buf:
            self._failed = RemoteProtocolError(
                f"stream ended inside a frame ({len(self._buf)} bytes buffered)"
            )
            raise self._failed

    def _feed(self, data: bytes) -> list[Event]:
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = bytes(data)  # the common case: parse straight from what arrived
        n = len(buf)
        pos = 0
        events: list[Event] = []
        if self._need_preface:
            if n == 0:
                return events
            if buf[0] != PROTOCOL_VERSION:
                raise UnsupportedVersionError(
                    f"unsupported protocol version {buf[0]} (this side speaks {PROTOCOL_VERSION})"
                )
            self._need_preface = False
            pos = 1
        max_message = self._max_message
        unpack = FRAME_HEADER.unpack_from
        while n - pos >= 5:
            ftype, length = unpack(buf, pos)
            if ftype == _MESSAGE:
                if length > max_message:
                    raise MessageTooLargeError(length, max_message)
                end = pos + 5 + length
                if end > n:
                    break
                events.append(MessageReceived(bytes(buf[pos + 5 : end])))
                pos = end
                continue
            if ftype == _REQUEST_END:
                if length:
                    raise RemoteProtocolError("REQUEST_END frame with a payload")
            elif ftype in (_REQUEST_HEADER, _RESPONSE_HEADER, _TRAILER):
                if length > self._max_header:
                    raise HeaderTooLargeError(
                        f"header frame of {length} bytes exceeds the limit of {self._max_header}"
                    )
            else:
                raise RemoteProtocolError(f"unknown frame type {ftype:#04x}")
            end = pos + 5 + length
            if end > n:
                break
            payload = bytes(buf[pos + 5 : end])
            pos = end
            if ftype == _REQUEST_END:
                events.append(RequestEnded())
            elif ftype == _REQUEST_HEADER:
                header = self._parse_request_header(payload)
                events.append(header)
                if self._raw_after_request and header.kind is CallKind.RAW:
                    self._raw = True
                    break
            elif ftype == _RESPONSE_HEADER:
                md, off = self._parse_metadata(payload, 0)
                if off != len(payload):
                    raise RemoteProtocolError("trailing bytes in RESPONSE_HEADER")
                events.append(ResponseHeaderReceived(md))
                if self._raw_after_response:
                    self._raw = True
                    break
            else:
                events.append(self._parse_trailer(payload))
        if self._raw:
            if pos < n:
                events.append(RawDataReceived(bytes(buf[pos:])))
            self._buf = bytearray()
        elif pos == n:
            self._buf = bytearray()
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        return events

    def _parse_metadata(self, p: bytes, off: int) -> tuple[Metadata, int]:
        end = len(p)
        if off + 2 > end:
            raise RemoteProtocolError("truncated metadata count")
        (count,) = _U16.unpack_from(p, off)
        off += 2
        if count > self._max_entries:
            raise HeaderTooLargeError(
                f"{count} metadata entries exceed the limit of {self._max_entries}"
            )
        pairs: list[tuple[str, MetadataValue]] = []
        for _ in range(count):
            if off + 1 > end:
                raise RemoteProtocolError("truncated metadata key length")
            klen = p[off]
            off += 1
            kend = off + klen
            if kend + 4 > end:
                raise RemoteProtocolError("truncated metadata entry")
            if _KEY_BYTES_RE.fullmatch(p, off, kend) is None:
                raise RemoteProtocolError(f"invalid metadata key {p[off:kend]!r}")
            kb = p[off:kend]
            if kb.startswith(_RESERVED_BYTES):
                raise RemoteProtocolError(f"reserved metadata key {kb!r}")
            (vlen,) = _U32.unpack_from(p, kend)
            off = kend + 4
            vend = off + vlen
            if vend > end:
                raise RemoteProtocolError("truncated metadata value")
            key = kb.decode("ascii")
            if key.endswith("-bin"):
                pairs.append((key, p[off:vend]))
            else:
                if _VALUE_BYTES_RE.fullmatch(p, off, vend) is None:
                    raise RemoteProtocolError(f"metadata value for {key!r} is not printable ASCII")
                pairs.append((key, p[off:vend].decode("ascii")))
            off = vend
        return Metadata._trusted(pairs), off

    def _parse_request_header(self, p: bytes) -> RequestHeaderReceived:
        end = len(p)
        if end < 4:
            raise RemoteProtocolError("truncated REQUEST_HEADER")
        kind_value, flags = _KIND_FLAGS.unpack_from(p, 0)
        kind = _KINDS.get(kind_value)
        if kind is None:
            raise RemoteProtocolError(f"unknown call kind {kind_value}")
        if flags & ~_FLAG_DEADLINE:
            raise RemoteProtocolError(f"unknown REQUEST_HEADER flags {flags:#04x}")
        off = 2
        timeout_us: int | None = None
        if flags & _FLAG_DEADLINE:
            if off + 8 > end:
                raise RemoteProtocolError("truncated REQUEST_HEADER deadline")
            (timeout_us,) = _U64.unpack_from(p, off)
            off += 8
        if off + 2 > end:
            raise RemoteProtocolError("truncated REQUEST_HEADER method length")
        (mlen,) = _U16.unpack_from(p, off)
        off += 2
        if mlen == 0 or off + mlen > end:
            raise RemoteProtocolError("empty or truncated method name")
        try:
            method = p[off : off + mlen].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("method name is not UTF-8") from None
        md, off = self._parse_metadata(p, off + mlen)
        if off != end:
            raise RemoteProtocolError("trailing bytes in REQUEST_HEADER")
        return RequestHeaderReceived(method, kind, md, timeout_us)

    def _parse_trailer(self, p: bytes) -> TrailerReceived:
        end = len(p)
        if end < 5:
            raise RemoteProtocolError("truncated TRAILER")
        code, dlen = _STATUS_DETAILS.unpack_from(p, 0)
        off = 5
        if off + dlen + 1 > end:
            raise RemoteProtocolError("truncated TRAILER details")
        try:
            details = p[off : off + dlen].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise RemoteProtocolError("TRAILER details are not UTF-8") from None
        off += dlen
        flags = p[off]
        off += 1
        if flags & ~_FLAG_RICH:
            raise RemoteProtocolError(f"unknown TRAILER flags {flags:#04x}")
        rich: bytes | None = None
        if flags & _FLAG_RICH:
            if off + 4 > end:
                raise RemoteProtocolError("truncated TRAILER rich details")
            (rlen,) = _U32.unpack_from(p, off)
            off += 4
            if off + rlen > end:
                raise RemoteProtocolError("truncated TRAILER rich details")
            rich = p[off : off + rlen]
            off += rlen
        md, off = self._parse_metadata(p, off)
        if off != end:
            raise RemoteProtocolError("trailing bytes in TRAILER")
        return TrailerReceived(_STATUSES.get(code, Status.UNKNOWN), details, md, rich)
