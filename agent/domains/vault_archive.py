"""The vault archive: a deterministic byte stream of a vault's files, and its parser.

Format (version 1), all integers big-endian::

    header   b"QSVAULT" 0x01
    file     b"F"  u32 path_length  path (UTF-8)  u64 size  content (size bytes)
    ...      files in strictly increasing path order (UTF-8 byte order)
    trailer  b"E"  u64 file_count  sha256(header and all file records) (32 bytes)

The same files always give the same bytes (no times, owners or modes are recorded).
:class:`VaultArchiveParser` is sans-IO: feed it bytes in any split, it returns events,
and it raises :class:`VaultArchiveError` on anything malformed, oversized or corrupt.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from agent.domains.errors import InvalidInputError, VaultArchiveError

__all__ = [
    "ARCHIVE_MAGIC",
    "DEFAULT_CHUNK_SIZE",
    "MAX_PATH_BYTES",
    "ArchiveEnded",
    "ArchiveEvent",
    "ArchiveFileData",
    "ArchiveFileEnded",
    "ArchiveFileStarted",
    "VaultArchiveParser",
    "check_vault_path",
    "write_archive",
]

ARCHIVE_MAGIC: Final = b"QSVAULT\x01"
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MAX_PATH_BYTES: Final = 1024
_MAX_COMPONENT_BYTES: Final = 255
_FORBIDDEN_CHARS: Final = frozenset('\\:<>"|?*')  # '/' separates; these break on Windows
_FILE_TAG: Final = b"F"
_END_TAG: Final = b"E"


def check_vault_path(path: str) -> str:
    """Validate a vault-relative file path (``a/b.txt``); returns it unchanged.

    Rejects empty paths and components, ``.``/``..``, absolute paths, control characters,
    characters some platforms cannot store (``\\ : < > " | ? *``) and over-long paths: a
    path can never leave the vault directory.
    """
    if not isinstance(path, str):
        raise InvalidInputError(f"vault path must be a str, not {type(path).__name__}")
    encoded = path.encode("utf-8", errors="strict") if path.isprintable() else b""
    if not path or not encoded:
        raise InvalidInputError(f"vault path must be non-empty printable text: {path!r}")
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidInputError(f"vault path longer than {MAX_PATH_BYTES} bytes")
    bad = set(path) & _FORBIDDEN_CHARS
    if bad:
        raise InvalidInputError(
            f"vault path has characters not portable to every agent platform "
            f"({''.join(sorted(bad))!r}): {path!r}"
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidInputError(f"vault path has an empty, '.' or '..' component: {path!r}")
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            raise InvalidInputError(f"vault path component longer than 255 bytes: {path!r}")
    return path


def write_archive(
    files: Iterable[tuple[str, BinaryIO, int]], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """Encode ``(path, readable file, size)`` triples (in increasing path order) as chunks
    of about ``chunk_size`` bytes. Each file is read exactly ``size`` bytes; a file that
    yields fewer raises VaultArchiveError (it changed while being archived)."""
    if chunk_size < 1:
        raise InvalidInputError("chunk_size must be positive")
    digest = hashlib.sha256()
    buffer = bytearray()
    count = 0

    def emit(data: bytes) -> Iterator[bytes]:
        digest.update(data)
        buffer.extend(data)
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]

    yield from emit(ARCHIVE_MAGIC)
    previous: bytes | None = None
    for path, stream, size in files:
        encoded = check_vault_path(path).encode("utf-8")
        if previous is not None and encoded <= previous:
            raise InvalidInputError("archive files must be in strictly increasing path order")
        previous = encoded
        yield from emit(
            _FILE_TAG + struct.pack(">I", len(encoded)) + encoded + struct.pack(">Q", size)
        )
        remaining = size
        while remaining:
            data = stream.read(min(remaining, chunk_size))
            if not data:
                raise VaultArchiveError(f"file {path!r} shrank while being archived")
            remaining -= len(data)
            yield from emit(data)
        count += 1
    trailer = _END_TAG + struct.pack(">Q", count) + digest.digest()
    buffer.extend(trailer)
    while buffer:
        yield bytes(buffer[:chunk_size])
        del buffer[:chunk_size]


class ArchiveEvent:
    """Base of the parser's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ArchiveFileStarted(ArchiveEvent):
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class ArchiveFileData(ArchiveEvent):
    data: bytes


@dataclass(frozen=True, slots=True)
class ArchiveFileEnded(ArchiveEvent):
    path: str


@dataclass(frozen=True, slots=True)
class ArchiveEnded(ArchiveEvent):
    file_count: int
    total_bytes: int


class VaultArchiveParser:
    """Incremental parser of the vault archive format, with limits."""

    _MAGIC, _TAG, _PATH_LEN, _PATH, _SIZE, _CONTENT, _TRAILER, _DONE = range(8)

    def __init__(self, *, max_total_bytes: int = 1 << 30, max_files: int = 100_000) -> None:
        self._max_total = max_total_bytes
        self._max_files = max_files
        self._state = self._MAGIC
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._path = ""
        self._path_len = 0
        self._remaining = 0
        self._files = 0
        self._content_total = 0
        self._previous: bytes | None = None
        self._file_paths: set[str] = set()
        self._dir_paths: set[str] = set()

    @property
    def finished(self) -> bool:
        return self._state == self._DONE

    def _need(self, n: int) -> bytes | None:
        if len(self._buffer) < n:
            return None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def _hashed(self, data: bytes) -> bytes:
        self._digest.update(data)
        return data

    def _check_path(self, raw: bytes) -> str:
        try:
            path = check_vault_path(raw.decode("utf-8"))
        except (UnicodeDecodeError, InvalidInputError) as exc:
            raise VaultArchiveError(f"archive holds a bad path: {exc}") from None
        if self._previous is not None and raw <= self._previous:
            raise VaultArchiveError("archive paths are not in strictly increasing order")
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if path in self._dir_paths or any(a in self._file_paths for a in ancestors):
            raise VaultArchiveError(f"archive path {path!r} clashes with a file/directory")
        self._previous = raw
        self._file_paths.add(path)
        self._dir_paths.update(ancestors)
        return path

    def feed(self, data: bytes) -> list[ArchiveEvent]:
        """Consume bytes; returns the events they complete."""
        if self._state == self._DONE:
            if data:
                raise VaultArchiveError("bytes after the end of the archive")
            return []
        self._buffer.extend(data)
        events: list[ArchiveEvent] = []
        while True:
            if self._state == self._MAGIC:
                chunk = self._need(len(ARCHIVE_MAGIC))
                if chunk is None:
                    break
                if chunk != ARCHIVE_MAGIC:
                    raise VaultArchiveError("not a vault archive (bad magic or version)")
                self._hashed(chunk)
                self._state = self._TAG
            elif self._state == self._TAG:
                tag = self._need(1)
                if tag is None:
                    break
                if tag == _FILE_TAG:
                    self._hashed(tag)
                    self._state = self._PATH_LEN
                elif tag == _END_TAG:
                    self._state = self._TRAILER
                else:
                    raise VaultArchiveError(f"unknown archive record tag {tag!r}")
            elif self._state == self._PATH_LEN:
                chunk = self._need(4)
                if chunk is None:
                    break
                (self._path_len,) = struct.unpack(">I", self._hashed(chunk))
                if not 0 < self._path_len <= MAX_PATH_BYTES:
                    raise VaultArchiveError("archive path length out of range")
                self._state = self._PATH
            elif self._state == self._PATH:
                chunk = self._need(self._path_len)
                if chunk is None:
                    break
                self._path = self._check_path(self._hashed(chunk))
                self._state = self._SIZE
            elif self._state == self._SIZE:
                chunk = self._need(8)
                if chunk is None:
                    break
                (size,) = struct.unpack(">Q", self._hashed(chunk))
                self._files += 1
                if self._files > self._max_files:
                    raise VaultArchiveError(f"archive holds more than {self._max_files} files")
                self._content_total += size
                if self._content_total > self._max_total:
                    raise VaultArchiveError(f"archive exceeds {self._max_total} bytes")
                self._remaining = size
                events.append(ArchiveFileStarted(self._path, size))
                self._state = self._CONTENT
            elif self._state == self._CONTENT:
                if self._remaining:
                    if not self._buffer:
                        break
                    take = min(self._remaining, len(self._buffer))
                    piece = bytes(self._buffer[:take])
                    del self._buffer[:take]
                    self._remaining -= take
                    events.append(ArchiveFileData(self._hashed(piece)))
                    continue
                events.append(ArchiveFileEnded(self._path))
                self._state = self._TAG
            elif self._state == self._TRAILER:
                chunk = self._need(8 + 32)
                if chunk is None:
                    break
                (count,) = struct.unpack(">Q", chunk[:8])
                if count != self._files:
                    raise VaultArchiveError(
                        f"archive trailer counts {count} files, the archive holds {self._files}"
                    )
                if chunk[8:] != self._digest.digest():
                    raise VaultArchiveError("archive checksum mismatch (corrupted in transit?)")
                if self._buffer:
                    raise VaultArchiveError("bytes after the end of the archive")
                self._state = self._DONE
                events.append(ArchiveEnded(self._files, self._content_total))
                break
            else:  # pragma: no cover - _DONE handled above
                break
        return events

    def close(self) -> None:
        """Declare the end of input; raises VaultArchiveError if the archive is incomplete."""
        if self._state != self._DONE:
            raise VaultArchiveError("vault archive is truncated")
