"""Metadata under gRPC's rules.

Keys are non-empty lower-case ASCII made of ``0-9 a-z - _ .``; a key ending in ``-bin``
carries bytes (sent as-is), any other key carries printable ASCII text (0x20-0x7E).
Transport-reserved keys (HTTP/2 pseudo-headers, ``grpc-*``, ``content-type``, ``te``,
``connection``, ``transfer-encoding``, ``host``) are rejected: the transports own them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "MetadataError",
    "MetadataTuple",
    "MetadataValue",
    "normalize_metadata",
    "validate_metadata",
]

MetadataValue = str | bytes
MetadataTuple = tuple[tuple[str, MetadataValue], ...]

_KEY = re.compile(r"^[0-9a-z_.\-]+$")
_RESERVED = frozenset({"content-type", "te", "connection", "transfer-encoding", "host"})


class MetadataError(ValueError):
    """Metadata that gRPC would refuse to send; the message says which entry and why."""


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise MetadataError(f"metadata key must be str, got {type(key).__name__}: {key!r}")
    if not key:
        raise MetadataError("metadata key must not be empty")
    if key.startswith((":", "grpc-", "qrpc-")) or key in _RESERVED:
        raise MetadataError(f"metadata key {key!r} is reserved for the transport")
    if not _KEY.match(key):
        raise MetadataError(
            f"metadata key {key!r} is invalid: only lower-case a-z, 0-9, '-', '_' and '.'"
        )
    return key


def _check_value(key: str, value: Any) -> MetadataValue:
    if key.endswith("-bin"):
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            # grpcio accepts str for -bin keys and sends its UTF-8 encoding.
            return value.encode("utf-8")
        raise MetadataError(f"metadata value for binary key {key!r} must be bytes")
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise MetadataError(
                f"metadata value for {key!r} is not ASCII; binary values need a '-bin' key"
            ) from None
    if not isinstance(value, str):
        raise MetadataError(f"metadata value for {key!r} must be str, got {type(value).__name__}")
    for ch in value:
        if not " " <= ch <= "~":
            raise MetadataError(
                f"metadata value for {key!r} has a character outside printable ASCII "
                f"({ch!r}); use a '-bin' key for binary data"
            )
    return value


def validate_metadata(metadata: Iterable[Any] | None) -> MetadataTuple:
    """Check outgoing metadata and return it as a tuple of ``(key, value)`` pairs."""
    if metadata is None:
        return ()
    out: list[tuple[str, MetadataValue]] = []
    for entry in metadata:
        try:
            key, value = entry
        except (TypeError, ValueError):
            raise MetadataError(f"metadata entry must be a (key, value) pair: {entry!r}") from None
        checked_key = _check_key(key)
        out.append((checked_key, _check_value(checked_key, value)))
    return tuple(out)


def normalize_metadata(metadata: Sequence[tuple[str, Any]] | None) -> MetadataTuple:
    """Incoming metadata as grpcio presents it: ``-bin`` values bytes, others str."""
    if not metadata:
        return ()
    out: list[tuple[str, MetadataValue]] = []
    for key, value in metadata:
        if key.endswith("-bin"):
            out.append((key, value.encode("utf-8") if isinstance(value, str) else bytes(value)))
        else:
            out.append((key, value.decode("latin-1") if isinstance(value, bytes) else str(value)))
    return tuple(out)
