"""Small length-prefixed binary encodings shared by the domains (signing input, storage)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from agent.domains.errors import InvalidInputError

__all__ = ["Reader", "pack_bytes", "pack_bytes_list", "pack_str", "pack_u64"]


def pack_u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def pack_bytes(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def pack_str(value: str) -> bytes:
    return pack_bytes(value.encode("utf-8"))


def pack_bytes_list(values: Sequence[bytes]) -> bytes:
    return struct.pack(">I", len(values)) + b"".join(pack_bytes(v) for v in values)


class Reader:
    """Reads what the ``pack_*`` functions wrote; raises InvalidInputError when short."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise InvalidInputError("encoded record is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def bytes_(self) -> bytes:
        return self._take(self.u32())

    def bytes_list(self) -> list[bytes]:
        return [self.bytes_() for _ in range(self.u32())]

    def at_end(self) -> bool:
        return self._pos == len(self._data)
