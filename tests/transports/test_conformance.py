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
from quic_rpc.transports.tcp import TCPServer, connect_tcp
from tests.transports.tls_certs import common_name, make_pki

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


def _tcp_factory(tls: bool) -> Callable[[], Awaitable[tuple[ByteStream, ByteStream, Cleanup]]]:
    async def make_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
        accepted: asyncio.Queue[ByteStream] = asyncio.Queue()

        async def handler(stream: ByteStream) -> None:
            await accepted.put(stream)
            await asyncio.Event().wait()  # keep the stream open until the server stops

        pki = make_pki() if tls else None
        server = TCPServer()
        await server.start(
            "127.0.0.1",
            0,
            handler,
            ssl=pki.server_context if pki else None,
            verify=common_name if pki else None,
        )
        try:
            connection = await connect_tcp(
                "127.0.0.1",
                server.port,
                ssl=pki.client_context if pki else None,
                server_hostname="localhost" if pki else None,
                verify=common_name if pki else None,
            )
        except BaseException:
            await server.stop()
            raise
        a = await connection.open_stream()
        b = await accepted.get()

        async def cleanup() -> None:
            await connection.aclose()
            await server.stop()

        return a, b, cleanup

    return make_pair


async def make_quic_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
    from quic_rpc import quic

    pki = make_pki()
    server_credentials = quic.TLSCredentials.load(pki.server_pem, pki.server_pem, common_name)
    client_credentials = quic.TLSCredentials.load(pki.client_pem, pki.client_pem, common_name)
    accepted: asyncio.Queue[ByteStream] = asyncio.Queue()

    async def handler(stream: ByteStream) -> None:
        await accepted.put(stream)
        await asyncio.Event().wait()  # keep the stream open until the server stops

    server_socket = await quic.QUICSocket.bind("127.0.0.1", 0)
    client_socket = await quic.QUICSocket.bind("127.0.0.1", 0)
    server = quic.QUICServer(server_socket, server_credentials, quic.QUICConfig(), handler)
    await server.start()
    done = False

    async def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        await server.abort()
        await client_socket.close()
        await server_socket.close()

    try:
        connection = await quic.connect(
            client_socket,
            "127.0.0.1",
            server_socket.local_address[1],
            client_credentials,
            server_name="localhost",
        )
        a = await connection.open_stream()
        # A QUIC stream reaches the peer with its first bytes: send and eat a preamble.
        await a.send(b"\x00")
        b = await accepted.get()
        if await b.receive(1) != b"\x00":
            raise AssertionError("QUIC preamble lost")
    except BaseException:
        await cleanup()
        raise

    async def close_all() -> None:
        if not done:
            connection.abort("test tore the connection down")
        await cleanup()

    return a, b, close_all


def _quic_param() -> object:
    try:
        from quic_rpc import quic

        for name in ("QUICSocket", "QUICServer", "QUICConfig", "TLSCredentials", "connect"):
            getattr(quic, name)
    except (ImportError, AttributeError) as exc:
        return pytest.param("quic", marks=pytest.mark.skip(reason=f"quic_rpc.quic unusable: {exc}"))
    return "quic"


FACTORIES: dict[
    str, tuple[Callable[[], Awaitable[tuple[ByteStream, ByteStream, Cleanup]]], ConformanceOptions]
] = {
    "memory-pair": (make_memory_pair, ConformanceOptions(max_buffered=65536)),
    "memory-connection": (make_memory_connection_pair, ConformanceOptions(max_buffered=32768)),
    # Stream window 256 KiB plus one send chunk in flight.
    "tcp": (_tcp_factory(tls=False), ConformanceOptions(max_buffered=512 * 1024)),
    "tls": (_tcp_factory(tls=True), ConformanceOptions(max_buffered=512 * 1024)),
    # Default QUICConfig: 2 MiB stream window plus a 4 MiB send buffer.
    "quic": (make_quic_pair, ConformanceOptions(max_buffered=7 * 1024 * 1024)),
}

CHECKS = list(iter_checks())


@pytest.mark.parametrize("transport", [*(t for t in FACTORIES if t != "quic"), _quic_param()])
@pytest.mark.parametrize(("name", "check"), CHECKS, ids=[name for name, _ in CHECKS])
async def test_conformance(transport: str, name: str, check: Check) -> None:
    factory, options = FACTORIES[transport]
    make_pair: PairFactory = factory
    await check(make_pair, options)
