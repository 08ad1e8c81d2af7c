"""In-memory transport specifics beyond the shared conformance suite."""

from __future__ import annotations

import asyncio
import logging

import pytest

from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    PeerInfo,
    StreamOpener,
    StreamResetError,
)
from quic_rpc.transports import HANDLER_ERROR_CODE, memory_connection, memory_stream_pair

pytestmark = pytest.mark.timeout(30)


async def echo(stream: ByteStream) -> None:
    while chunk := await stream.receive():
        await stream.send(chunk)
    await stream.send_eof()


async def test_connection_is_a_stream_opener_and_echoes() -> None:
    async with memory_connection(echo) as connection:
        assert isinstance(connection, StreamOpener)
        streams = [await connection.open_stream() for _ in range(10)]
        for i, stream in enumerate(streams):
            await stream.send(f"hello {i}".encode())
            await stream.send_eof()
        for i, stream in enumerate(streams):
            assert await stream.receive() == f"hello {i}".encode()
            assert await stream.receive() == b""
            await stream.aclose()


async def test_identities_are_visible_on_both_sides() -> None:
    seen: list[PeerInfo] = []

    async def handler(stream: ByteStream) -> None:
        seen.append(stream.peer_info)

    async with memory_connection(
        handler, client_identity="client-node", server_identity="server-node"
    ) as connection:
        stream = await connection.open_stream()
        assert stream.peer_info.identity == "server-node"
        assert stream.peer_info.transport == "memory"
        assert await stream.receive() == b""  # the handler returned: its end was closed
    assert seen[0].identity == "client-node"


async def test_pair_peer_info_is_configurable() -> None:
    info_a = PeerInfo(transport="memory", identity="b-as-seen-by-a")
    a, b = memory_stream_pair(peer_info_a=info_a)
    assert a.peer_info is info_a
    assert b.peer_info.transport == "memory"


async def test_failing_handler_aborts_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(stream: ByteStream) -> None:
        raise RuntimeError("boom")

    async with memory_connection(handler) as connection:
        stream = await connection.open_stream()
        with caplog.at_level(logging.ERROR), pytest.raises(StreamResetError) as info:
            await stream.receive()
        assert info.value.code == HANDLER_ERROR_CODE
    assert "handler failed" in caplog.text


async def test_aclose_fails_pending_operations_and_finishes_handlers() -> None:
    started = asyncio.Event()
    handler_outcome: list[BaseException] = []

    async def handler(stream: ByteStream) -> None:
        started.set()
        try:
            await stream.receive()
        except BaseException as exc:
            handler_outcome.append(exc)
            raise

    connection = memory_connection(handler)
    stream = await connection.open_stream()
    await started.wait()
    pending = asyncio.create_task(stream.receive())
    await asyncio.sleep(0)
    await connection.aclose()
    with pytest.raises(ConnectionLostError):
        await pending
    assert connection.active_handlers == 0
    assert isinstance(handler_outcome[0], ConnectionLostError)
    with pytest.raises(ConnectionLostError):
        await connection.open_stream()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert tasks == []


async def test_data_received_before_loss_is_still_delivered() -> None:
    a, b = memory_stream_pair()
    await a.send(b"complete")
    await a.send_eof()
    a.close_connection()
    assert await b.receive() == b"complete"
    assert await b.receive() == b""


async def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        memory_stream_pair(buffer_size=0)
    a, _ = memory_stream_pair()
    with pytest.raises(ValueError):
        a.reset(-1)
    with pytest.raises(ValueError):
        a.stop_sending(1 << 62)
    with pytest.raises(ValueError):
        await a.receive(0)
