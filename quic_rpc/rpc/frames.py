"""Wire constants: protocol version, frame types, call kinds and the frame header layout.

See docs/PROTOCOL.md for the full wire format.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_METADATA_ENTRIES",
    "FRAME_HEADER",
    "MAX_FRAME_LENGTH",
    "PREFACE",
    "PROTOCOL_VERSION",
    "CallKind",
    "FrameType",
]

PROTOCOL_VERSION = 1
"""The first byte of each direction of every call stream."""
PREFACE = bytes([PROTOCOL_VERSION])

FRAME_HEADER = struct.Struct(">BI")
"""Every frame: type (u8) then payload length (u32, big-endian), then the payload."""
MAX_FRAME_LENGTH = 2**32 - 1

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
DEFAULT_MAX_METADATA_ENTRIES = 64


class FrameType(enum.IntEnum):
    REQUEST_HEADER = 0x01
    RESPONSE_HEADER = 0x02
    MESSAGE = 0x03
    REQUEST_END = 0x04
    TRAILER = 0x05


class CallKind(enum.IntEnum):
    """The five handler kinds; the value is what the request header carries."""

    UNARY = 0
    SERVER_STREAMING = 1
    CLIENT_STREAMING = 2
    DUPLEX = 3
    RAW = 4

    @property
    def single_request(self) -> bool:
        return self is CallKind.UNARY or self is CallKind.SERVER_STREAMING

    @property
    def single_response(self) -> bool:
        return self is CallKind.UNARY or self is CallKind.CLIENT_STREAMING
