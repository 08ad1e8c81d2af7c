"""Every transport beneath the RPC layer passes the same byte-stream conformance suite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from quic_rpc.streams import ByteStream
from quic_rpc.testing.stream_conformance import (
    Check,
    Cleanup,
    ConformanceOptions,
    PairFactory,
    iter_checks,
)
from quic_rpc.transports.memory import memory_connection, memory_stream_pair

pytestmark = pytest.mark.timeout(120)


async def make_memory_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
    a, b = memory_stream_pair(buffer_size=65536)

    async def cleanup() -> None:
        a.close_connection("test tore the pair down")

    return a, b, cleanup


async def make_memory_connection_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
    accepted: asyncio.Queue[ByteStream] = asyncio.Queue()

    async def handler(stream: ByteStream) -> None:
        await accepted.put(stream)
        await asyncio.Event().wait()  # keep the stream open until the connection closes

    connection = memory_connection(handler, buffer_size=32768)
    a = await connection.open_stream()
    b = await accepted.get()
    return a, b, connection.aclose


FACTORIES: dict[str, tuple[Callable[[], Awaitable[tuple[ByteStream, ByteStream, Cleanup]]], ConformanceOptions]] = {
    "memory-pair": (make_memory_pair, ConformanceOptions(max_buffered=65536)),
    "memory-connection": (make_memory_connection_pair, ConformanceOptions(max_buffered=32768)),
}

CHECKS = list(iter_checks())


@pytest.mark.parametrize("transport", list(FACTORIES))
@pytest.mark.parametrize(("name", "check"), CHECKS, ids=[name for name, _ in CHECKS])
async def test_conformance(transport: str, name: str, check: Check) -> None:
    factory, options = FACTORIES[transport]
    make_pair: PairFactory = factory
    await check(make_pair, options)
