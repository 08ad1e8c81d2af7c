"""Pagination: a request/response convention for listing methods, and helpers.

A listing method takes a :class:`PageRequest` (page size, opaque cursor, order) and
returns a :class:`Page` (items, next cursor; ``None`` at the end). Handlers build pages
with :func:`paginate`; callers walk every item with :func:`iterate_pages`. Cursors are
opaque bytes: callers only pass back what they got.
"""

from __future__ import annotations

import base64
import enum
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import RPCError
from .status import Status

__all__ = [
    "MAX_PAGE_SIZE",
    "KeysetFetch",
    "Order",
    "Page",
    "PageRequest",
    "iterate_pages",
    "paginate",
]

T = TypeVar("T")

MAX_PAGE_SIZE = 10_000
_OFFSET_CURSOR = b"\x01"
_KEY_CURSOR = b"\x02"
_OFFSET = struct.Struct(">Q")


class Order(enum.Enum):
    ASCENDING = "asc"
    DESCENDING = "desc"


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which page to return: up to ``page_size`` items after ``cursor`` in ``order``."""

    page_size: int = 100
    cursor: bytes | None = None
    order: Order = Order.ASCENDING

    def __post_init__(self) -> None:
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int):
            raise RPCError(Status.INVALID_ARGUMENT, "page_size must be an int")
        if not 0 < self.page_size <= MAX_PAGE_SIZE:
            raise RPCError(
                Status.INVALID_ARGUMENT, f"page_size must be between 1 and {MAX_PAGE_SIZE}"
            )
        if self.cursor is not None and not isinstance(self.cursor, bytes):
            raise RPCError(Status.INVALID_ARGUMENT, "cursor must be bytes or None")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (cursor base64)."""
        return {
            "page_size": self.page_size,
            "cursor": None if self.cursor is None else base64.b64encode(self.cursor).decode(),
            "order": self.order.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PageRequest:
        try:
            cursor = data.get("cursor")
            return cls(
                page_size=int(data.get("page_size", 100)),
                cursor=None if cursor is None else base64.b64decode(cursor, validate=True),
                order=Order(data.get("order", Order.ASCENDING.value)),
            )
        except (ValueError, TypeError) as exc:
            raise RPCError(Status.INVALID_ARGUMENT, f"invalid page request: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of items and the cursor of the next page (None: this is the last)."""

    items: list[T] = field(default_factory=list)
    next_cursor: bytes | None = None

    def to_dict(self, item: Callable[[T], Any] = lambda x: x) -> dict[str, Any]:
        return {
            "items": [item(i) for i in self.items],
            "next_cursor": None
            if self.next_cursor is None
            else base64.b64encode(self.next_cursor).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], item: Callable[[Any], T] = lambda x: x) -> Page[T]:
        cursor = data.get("next_cursor")
        return cls(
            [item(i) for i in data.get("items", [])],
            None if cursor is None else base64.b64decode(cursor),
        )


KeysetFetch = Callable[[bytes | None, int, Order], Awaitable[Sequence[tuple[bytes, T]]]]
"""``fetch(after_key, limit, order)`` -> up to ``limit`` ``(key, item)`` pairs strictly
after ``after_key`` (None: from the start) in ``order``."""


def _decode_offset(cursor: bytes | None) -> int:
    if cursor is None:
        return 0
    if len(cursor) != 9 or not cursor.startswith(_OFFSET_CURSOR):
        raise RPCError(Status.INVALID_ARGUMENT, "invalid page cursor")
    (offset,) = _OFFSET.unpack_from(cursor, 1)
    return int(offset)


async def paginate(
    source: Iterable[T] | AsyncIterable[T] | KeysetFetch[T], page_request: PageRequest
) -> Page[T]:
    """Build the page ``page_request`` asks for.

    ``source`` is either the whole ordered collection (an iterable or async iterable;
    the cursor is then a position, and DESCENDING reverses it — materializing it unless
    it is a Sequence), or a keyset ``fetch`` function (:data:`KeysetFetch`; the cursor is
    then the last item's key, so pages stay stable while items are added).
    """
    size = page_request.page_size
    if callable(source) and not isinstance(source, Iterable | AsyncIterable):
        after: bytes | None = None
        if page_request.cursor is not None:
            if not page_request.cursor.startswith(_KEY_CURSOR):
                raise RPCError(Status.INVALID_ARGUMENT, "invalid page cursor")
            after = page_request.cursor[1:]
        rows = list(await source(after, size + 1, page_request.order))
        more = len(rows) > size
        rows = rows[:size]
        next_cursor = _KEY_CURSOR + rows[-1][0] if more and rows else None
        return Page([item for _, item in rows], next_cursor)
    offset = _decode_offset(page_request.cursor)
    items: list[T] = []
    more = False
    if page_request.order is Order.DESCENDING:
        if isinstance(source, AsyncIterable):
            seq: Sequence[T] = [x async for x in source]
        elif isinstance(source, Sequence):
            seq = source
        else:
            seq = list(source)
        seq = seq[::-1]
        items = list(seq[offset : offset + size])
        more = len(seq) > offset + size
    elif isinstance(source, AsyncIterable):
        index = 0
        async for x in source:
            if index >= offset + size:
                more = True
                break
            if index >= offset:
                items.append(x)
            index += 1
    else:
        index = 0
        for x in source:
            if index >= offset + size:
                more = True
                break
            if index >= offset:
                items.append(x)
            index += 1
    next_cursor = _OFFSET_CURSOR + _OFFSET.pack(offset + len(items)) if more else None
    return Page(items, next_cursor)


async def iterate_pages(
    fetch_page: Callable[[PageRequest], Awaitable[Page[T]]],
    *,
    page_size: int = 100,
    order: Order = Order.ASCENDING,
) -> AsyncIterator[T]:
    """Every item of every page, fetching the next page only when needed."""
    cursor: bytes | None = None
    while True:
        page = await fetch_page(PageRequest(page_size, cursor, order))
        for item in page.items:
            yield item
        if page.next_cursor is None:
            return
        if page.next_cursor == cursor:
            raise RPCError(Status.INTERNAL, "the server returned the same page cursor again")
        cursor = page.next_cursor
