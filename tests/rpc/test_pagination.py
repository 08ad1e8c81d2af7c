"""Pagination helpers without a transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from quic_rpc.rpc import Order, Page, PageRequest, RPCError, Status, iterate_pages, paginate


async def walk(source: object, size: int, order: Order = Order.ASCENDING) -> list[int]:
    async def fetch(request: PageRequest) -> Page[int]:
        return await paginate(source, request)  # type: ignore[arg-type]

    return [i async for i in iterate_pages(fetch, page_size=size, order=order)]


@pytest.mark.parametrize("size", [1, 3, 7, 10, 11, 1000])
async def test_every_item_once_from_sequences_and_iterators(size: int) -> None:
    items = list(range(10))
    assert await walk(items, size) == items
    assert await walk(range(10), size) == items
    assert await walk(items, size, Order.DESCENDING) == items[::-1]

    def make_agen() -> AsyncIterator[int]:
        async def agen() -> AsyncIterator[int]:
            for i in items:
                yield i

        return agen()

    # a fresh async iterator per page, as a handler would build one per request
    async def fetch(request: PageRequest) -> Page[int]:
        return await paginate(make_agen(), request)

    assert [i async for i in iterate_pages(fetch, page_size=size)] == items


@pytest.mark.parametrize("size", [1, 4, 25])
@pytest.mark.parametrize("order", list(Order))
async def test_keyset_fetch(size: int, order: Order) -> None:
    rows = {f"{i:04d}".encode(): i for i in range(23)}

    async def fetch_rows(
        after: bytes | None, limit: int, order: Order
    ) -> Sequence[tuple[bytes, int]]:
        keys = sorted(rows, reverse=order is Order.DESCENDING)
        if after is not None:
            keys = [k for k in keys if (k > after if order is Order.ASCENDING else k < after)]
        return [(k, rows[k]) for k in keys[:limit]]

    expected = sorted(rows.values(), reverse=order is Order.DESCENDING)
    assert await walk(fetch_rows, size, order) == expected


async def test_empty_and_invalid() -> None:
    assert await walk([], 5) == []
    page = await paginate([1, 2], PageRequest(page_size=2))
    assert page.items == [1, 2] and page.next_cursor is None
    with pytest.raises(RPCError) as info:
        await paginate([1], PageRequest(cursor=b"garbage"))
    assert info.value.status is Status.INVALID_ARGUMENT
    with pytest.raises(RPCError):
        PageRequest(page_size=0)
    with pytest.raises(RPCError):
        PageRequest.from_dict({"page_size": 5, "order": "sideways"})
    request = PageRequest(5, b"\x01\x00", Order.DESCENDING)
    assert PageRequest.from_dict(request.to_dict()) == request
    page = Page([1, 2], b"\xff")
    assert Page.from_dict(page.to_dict()) == page
