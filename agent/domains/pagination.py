"""Key-based pagination for domain listings.

A listing is ordered by a unique, totally ordered key. A cursor is the opaque encoding of
the last key returned (plus the listing's namespace and the order), so the next page
starts strictly after it: items present for the whole walk are returned exactly once, no
matter what is inserted or deleted between pages (offsets would skip or repeat).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from agent.domains.errors import InvalidCursorError, InvalidInputError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Page",
    "PageRequest",
    "SortOrder",
    "decode_cursor",
    "decode_int_key",
    "encode_cursor",
    "encode_int_key",
    "page_from_rows",
    "paginate_sorted",
]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
_CURSOR_VERSION: Final = 1
_MAX_NAMESPACE: Final = 64
_MAX_KEY: Final = 4096

T = TypeVar("T")


class SortOrder(enum.Enum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which page to list: ``page_size`` items after ``cursor`` (empty = from the start).

    ``page_size`` 0 means :data:`DEFAULT_PAGE_SIZE`; more than :data:`MAX_PAGE_SIZE` is
    an error.
    """

    page_size: int = DEFAULT_PAGE_SIZE
    cursor: bytes = b""
    order: SortOrder = SortOrder.ASC

    def __post_init__(self) -> None:
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int):
            raise InvalidInputError("page_size must be an int")
        if self.page_size < 0 or self.page_size > MAX_PAGE_SIZE:
            raise InvalidInputError(f"page_size must be 0..{MAX_PAGE_SIZE}, got {self.page_size}")
        if self.page_size == 0:
            object.__setattr__(self, "page_size", DEFAULT_PAGE_SIZE)
        if not isinstance(self.cursor, bytes):
            raise InvalidInputError("cursor must be bytes")
        if not isinstance(self.order, SortOrder):
            raise InvalidInputError("order must be a SortOrder")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page: its items, the cursor for the next page and whether more items follow."""

    items: tuple[T, ...]
    next_cursor: bytes
    has_more: bool


def encode_cursor(namespace: str, key: bytes, order: SortOrder) -> bytes:
    """The opaque cursor for "after ``key``" in listing ``namespace`` walked in ``order``."""
    ns = namespace.encode("utf-8")
    if not 0 < len(ns) <= _MAX_NAMESPACE:
        raise InvalidInputError("cursor namespace must be 1..64 bytes")
    order_byte = 0 if order is SortOrder.ASC else 1
    return bytes([_CURSOR_VERSION, order_byte, len(ns)]) + ns + key


def decode_cursor(namespace: str, cursor: bytes, order: SortOrder) -> bytes | None:
    """The key a cursor points after, or None for the empty cursor (first page).

    Raises InvalidCursorError for a cursor of another listing, another order, or garbage.
    """
    if not cursor:
        return None
    if len(cursor) > _MAX_NAMESPACE + _MAX_KEY + 3:
        raise InvalidCursorError("cursor is too long")
    if len(cursor) < 3 or cursor[0] != _CURSOR_VERSION:
        raise InvalidCursorError("cursor is malformed")
    expected_order = 0 if order is SortOrder.ASC else 1
    ns_len = cursor[2]
    ns = cursor[3 : 3 + ns_len]
    if len(ns) != ns_len or ns != namespace.encode("utf-8"):
        raise InvalidCursorError(f"cursor does not belong to the {namespace!r} listing")
    if cursor[1] != expected_order:
        raise InvalidCursorError("cursor was issued for the other sort order")
    return cursor[3 + ns_len :]


def encode_int_key(value: int) -> bytes:
    """Order-preserving encoding of a non-negative 64-bit key."""
    if not 0 <= value < 2**64:
        raise InvalidInputError(f"integer key out of range: {value}")
    return struct.pack(">Q", value)


def decode_int_key(key: bytes) -> int:
    if len(key) != 8:
        raise InvalidCursorError("cursor key is malformed")
    value: int = struct.unpack(">Q", key)[0]
    return value


def page_from_rows(
    rows: Sequence[T], request: PageRequest, namespace: str, key_of: Callable[[T], bytes]
) -> Page[T]:
    """Build a page from up to ``page_size + 1`` rows already fetched after the cursor.

    The extra row, when present, only tells that more items follow.
    """
    has_more = len(rows) > request.page_size
    items = tuple(rows[: request.page_size])
    if items:
        next_cursor = encode_cursor(namespace, key_of(items[-1]), request.order)
    else:
        next_cursor = request.cursor
    return Page(items=items, next_cursor=next_cursor, has_more=has_more)


def paginate_sorted(
    items: Iterable[T],
    request: PageRequest,
    namespace: str,
    sort_key: Callable[[T], bytes],
) -> Page[T]:
    """Paginate an in-memory collection by a unique bytes key (compared bytewise)."""
    after = decode_cursor(namespace, request.cursor, request.order)
    descending = request.order is SortOrder.DESC
    keyed = sorted(
        ((sort_key(item), item) for item in items), key=lambda p: p[0], reverse=descending
    )
    if after is not None:
        if descending:
            keyed = [p for p in keyed if p[0] < after]
        else:
            keyed = [p for p in keyed if p[0] > after]
    rows = [item for _, item in keyed[: request.page_size + 1]]
    return page_from_rows(rows, request, namespace, sort_key)
