"""Regression: the per-connection call limit over QUIC.

A call's slot used to be freed only after its trailer had been sent, so a client that got
its reply and opened its next stream at once could be refused with RESOURCE_EXHAUSTED
while at most ``limit`` of its calls were in flight. And the RPC limit (100) was below
the QUIC stream limit (256), so 100+ callers on one connection were refused at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from quic_rpc.quic import QUICConfig
from quic_rpc.rpc import (
    RPCClient,
    RPCError,
    RPCServer,
    RPCServerConfig,
    ServerCallContext,
    Status,
    unary,
)
from quic_rpc.streams import ByteStream

from .conftest import TRANSPORTS, RPCTransport

ROUNDS = 20
WAIT = 30.0


@pytest.fixture
async def quic_transport() -> AsyncIterator[RPCTransport]:
    async with contextlib.AsyncExitStack() as stack:
        yield RPCTransport("quic", TRANSPORTS["quic"], stack)


async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
    return request


def test_default_limit_not_below_stream_limit() -> None:
    limit = RPCServerConfig().max_concurrent_calls_per_connection
    assert limit >= QUICConfig().max_streams


async def test_limit_concurrent_callers_never_refused(quic_transport: RPCTransport) -> None:
    limit = RPCServerConfig().max_concurrent_calls_per_connection
    _, client = await quic_transport.serve({"/echo": unary(echo)})

    async def caller(i: int) -> None:
        for r in range(ROUNDS):
            body = f"{i}:{r}".encode()
            assert await client.unary("/echo", body) == body

    await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(limit))), WAIT)


class _SlowHalfClose:
    """A server stream whose ``send_eof`` returns late (as a transport may when it waits
    for its buffer to drain): the trailer is already on its way to the client."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send_eof(self) -> None:
        await self._stream.send_eof()
        await asyncio.sleep(0.005)


async def test_slot_free_once_trailer_is_written(quic_transport: RPCTransport) -> None:
    """The client may open its next call as soon as it has the trailer."""
    limit = 32
    server = RPCServer(
        {"/echo": unary(echo)},
        config=RPCServerConfig(max_concurrent_calls_per_connection=limit),
    )

    async def handle(stream: ByteStream) -> None:
        await server.handle_stream(_SlowHalfClose(stream))  # type: ignore[arg-type]

    opener = await quic_transport.attach(handle)
    client = RPCClient(opener)

    async def caller(i: int) -> None:
        for r in range(ROUNDS):
            body = f"{i}:{r}".encode()
            assert await client.unary("/echo", body) == body

    try:
        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(limit))), WAIT)
    finally:
        await server.stop(0)


async def test_callers_beyond_limit_refused_cleanly(quic_transport: RPCTransport) -> None:
    limit, extra = 8, 4
    started = 0
    all_started = asyncio.Event()
    release = asyncio.Event()

    async def hold(request: bytes, ctx: ServerCallContext) -> bytes:
        nonlocal started
        started += 1
        if started == limit:
            all_started.set()
        await release.wait()
        return request

    _, client = await quic_transport.serve(
        {"/hold": unary(hold), "/echo": unary(echo)},
        server_config=RPCServerConfig(max_concurrent_calls_per_connection=limit),
    )
    held = [asyncio.ensure_future(client.unary("/hold", str(i).encode())) for i in range(limit)]
    await asyncio.wait_for(all_started.wait(), WAIT)
    results = await asyncio.gather(
        *(client.unary("/echo", b"x") for _ in range(extra)), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, RPCError)
        assert result.status is Status.RESOURCE_EXHAUSTED
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*held), WAIT) == [
        str(i).encode() for i in range(limit)
    ]
    # the slots are free again: a full round of callers is served
    assert (
        await asyncio.gather(*(client.unary("/echo", b"y") for _ in range(limit))) == [b"y"] * limit
    )
