"""Call metadata: an ordered multi-map of lower-case ASCII keys to values.

Keys match ``[0-9a-z_.-]+``. Keys ending in ``-bin`` carry ``bytes``; all others carry
``str`` of printable ASCII (0x20-0x7E). Keys starting with ``:``, ``grpc-`` or ``qrpc-``
are reserved for the protocol and rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

from .errors import InvalidMetadataError

__all__ = ["Metadata", "MetadataLike", "MetadataValue", "validate_metadata_pair"]

MetadataValue = Union[str, bytes]  # noqa: UP007 - used at runtime in aliases
MetadataLike = Union[
    "Metadata", Iterable[tuple[str, MetadataValue]], Mapping[str, MetadataValue], None
]

RESERVED_PREFIXES = (":", "grpc-", "qrpc-")
MAX_KEY_LENGTH = 255
_KEY_RE = re.compile(r"[0-9a-z_.\-]+")
_VALUE_RE = re.compile(r"[\x20-\x7e]*")


def validate_metadata_pair(key: object, value: object) -> None:
    """Raise :class:`InvalidMetadataError` unless ``(key, value)`` is valid metadata."""
    if not isinstance(key, str):
        raise InvalidMetadataError(f"metadata key must be str, got {type(key).__name__}")
    if key.startswith(RESERVED_PREFIXES):
        raise InvalidMetadataError(
            f"metadata key {key!r} is reserved for the protocol "
            f"(prefixes {', '.join(repr(p) for p in RESERVED_PREFIXES)})"
        )
    if not key or len(key) > MAX_KEY_LENGTH or _KEY_RE.fullmatch(key) is None:
        raise InvalidMetadataError(
            f"invalid metadata key {key!r}: keys are 1-{MAX_KEY_LENGTH} characters of "
            "lower-case ASCII letters, digits, '-', '_' and '.'"
        )
    if key.endswith("-bin"):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidMetadataError(
                f"metadata key {key!r} ends in '-bin' and needs a bytes value, "
                f"got {type(value).__name__}"
            )
    elif not isinstance(value, str):
        raise InvalidMetadataError(
            f"metadata key {key!r} needs a str value (use a '-bin' key for bytes), "
            f"got {type(value).__name__}"
        )
    elif _VALUE_RE.fullmatch(value) is None:
        raise InvalidMetadataError(
            f"metadata value for {key!r} must be printable ASCII (0x20-0x7E): {value!r}"
        )


class Metadata:
    """Ordered multi-map of validated metadata. Iterating yields ``(key, value)`` pairs."""

    __slots__ = ("_items",)

    def __init__(self, items: MetadataLike = None) -> None:
        self._items: list[tuple[str, MetadataValue]] = []
        if items is None:
            return
        pairs: Iterable[tuple[str, MetadataValue]]
        if isinstance(items, Mapping):
            pairs = items.items()
        else:
            pairs = items
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidMetadataError(f"metadata entries are (key, value) pairs: {pair!r}")
            self.add(pair[0], pair[1])

    @classmethod
    def coerce(cls, items: MetadataLike) -> Metadata:
        """Return ``items`` if it is a Metadata already, else a validated copy."""
        if isinstance(items, Metadata):
            return items
        return cls(items)

    @classmethod
    def _trusted(cls, pairs: list[tuple[str, MetadataValue]]) -> Metadata:
        """Wrap pairs that were validated already (by the decoder)."""
        md = cls.__new__(cls)
        md._items = pairs
        return md

    def add(self, key: str, value: MetadataValue) -> None:
        """Append one entry (existing entries with the same key are kept)."""
        validate_metadata_pair(key, value)
        if not isinstance(value, str | bytes):
            value = bytes(value)
        self._items.append((key, value))

    def extend(self, items: MetadataLike) -> None:
        """Append every entry of ``items``."""
        self._items.extend(Metadata.coerce(items)._items)

    def set(self, key: str, value: MetadataValue) -> None:
        """Replace every entry for ``key`` with one entry."""
        validate_metadata_pair(key, value)
        self.remove(key)
        self.add(key, value)

    def remove(self, key: str) -> None:
        """Remove every entry for ``key`` (no error if absent)."""
        self._items = [item for item in self._items if item[0] != key]

    def get(self, key: str, default: MetadataValue | None = None) -> MetadataValue | None:
        """The first value for ``key``, or ``default``."""
        for k, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[MetadataValue]:
        """Every value for ``key``, in order."""
        return [v for k, v in self._items if k == key]

    def keys(self) -> list[str]:
        return [k for k, _ in self._items]

    def items(self) -> list[tuple[str, MetadataValue]]:
        return list(self._items)

    def copy(self) -> Metadata:
        return Metadata._trusted(list(self._items))

    def __getitem__(self, key: str) -> MetadataValue:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.remove(key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, MetadataValue]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._items == other._items
        if isinstance(other, tuple | list):
            return self._items == [tuple(p) for p in other]
        return NotImplemented

    def __repr__(self) -> str:
        return f"Metadata({self._items!r})"
