"""TCP/TLS transport specifics: identity, verification, shutdown, limits, keepalive, hygiene."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest

from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    PeerInfo,
    StreamOpener,
    StreamResetError,
)
from quic_rpc.transports import (
    HANDLER_ERROR_CODE,
    MuxConfig,
    PeerVerificationError,
    PeerVerifier,
    TCPConfig,
    TCPServer,
    connect_tcp,
)
from quic_rpc.transports.mux import MuxConnection
from tests.transports.tls_certs import common_name, make_pki

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[ByteStream], Awaitable[None]]


class ServerFactory(Protocol):
    async def __call__(
        self,
        handler: Handler = ...,
        *,
        ssl: ssl_module.SSLContext | None = None,
        verify: PeerVerifier | None = None,
        config: TCPConfig | None = None,
    ) -> TCPServer: ...


async def echo(stream: ByteStream) -> None:
    while chunk := await stream.receive():
        await stream.send(chunk)
    await stream.send_eof()


async def read_all(stream: ByteStream) -> bytes:
    chunks = []
    while chunk := await stream.receive():
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
async def server_factory() -> AsyncIterator[ServerFactory]:
    servers: list[TCPServer] = []

    async def make(
        handler: Handler = echo,
        *,
        ssl: ssl_module.SSLContext | None = None,
        verify: PeerVerifier | None = None,
        config: TCPConfig | None = None,
    ) -> TCPServer:
        server = TCPServer(config)
        await server.start("127.0.0.1", 0, handler, ssl, verify=verify)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_many_concurrent_streams_over_one_connection(server_factory: ServerFactory) -> None:
    server = await server_factory()
    async with await connect_tcp("127.0.0.1", server.port) as connection:
        assert isinstance(connection, StreamOpener)

        async def one_call(i: int) -> bytes:
            stream = await connection.open_stream()
            await stream.send(f"call {i} ".encode() * 1000)
            await stream.send_eof()
            data = await read_all(stream)
            await stream.aclose()
            return data

        results = await asyncio.gather(*(one_call(i) for i in range(40)))
        assert results == [f"call {i} ".encode() * 1000 for i in range(40)]
        info = connection.peer_info
        assert info.transport == "tcp"
        assert (info.remote_host, info.remote_port) == ("127.0.0.1", server.port)
        assert info.remote_chain == () and info.identity is None
        assert info.stats is not None and info.stats()["bytes_received"] > 0


async def test_tls_peer_chain_and_identity_on_both_sides(server_factory: ServerFactory) -> None:
    pki = make_pki()
    seen: list[PeerInfo] = []

    async def handler(stream: ByteStream) -> None:
        seen.append(stream.peer_info)
        await echo(stream)

    server = await server_factory(handler, ssl=pki.server_context, verify=common_name)
    connection = await connect_tcp(
        "127.0.0.1",
        server.port,
        ssl=pki.client_context,
        server_hostname="localhost",
        verify=common_name,
    )
    try:
        stream = await connection.open_stream()
        await stream.send(b"hi")
        await stream.send_eof()
        assert await read_all(stream) == b"hi"
        client_view = stream.peer_info
        assert client_view.transport == "tls"
        assert client_view.remote_chain[0] == pki.server_der
        assert client_view.identity == "server.test"
        assert seen[0].remote_chain[0] == pki.client_der
        assert seen[0].identity == "client.test"
    finally:
        await connection.aclose()


async def test_client_rejecting_the_server(server_factory: ServerFactory) -> None:
    pki = make_pki()
    calls: list[ByteStream] = []

    async def handler(stream: ByteStream) -> None:
        calls.append(stream)

    def reject(chain: tuple[bytes, ...]) -> str:
        raise ValueError(f"unexpected node {common_name(chain)}")

    server = await server_factory(handler, ssl=pki.server_context)
    with pytest.raises(PeerVerificationError) as info:
        await connect_tcp(
            "127.0.0.1",
            server.port,
            ssl=pki.client_context,
            server_hostname="localhost",
            verify=reject,
        )
    assert "unexpected node server.test" in info.value.reason
    assert not info.value.rejected_by_peer
    assert calls == []


async def test_server_rejecting_the_client(server_factory: ServerFactory) -> None:
    pki = make_pki()

    def only_alice(chain: tuple[bytes, ...]) -> str:
        name = common_name(chain)
        if name != "alice":
            raise PermissionError(f"{name} is not allowed")
        return name

    server = await server_factory(echo, ssl=pki.server_context, verify=only_alice)
    with pytest.raises(PeerVerificationError) as info:
        await connect_tcp(
            "127.0.0.1", server.port, ssl=pki.client_context, server_hostname="localhost"
        )
    assert info.value.rejected_by_peer
    assert "client.test is not allowed" in info.value.reason


async def test_tls_failures_are_verification_errors(server_factory: ServerFactory) -> None:
    pki = make_pki()
    server = await server_factory(echo, ssl=pki.server_context)
    with pytest.raises(PeerVerificationError) as untrusted:
        await connect_tcp(
            "127.0.0.1",
            server.port,
            ssl=pki.untrusting_client_context,
            server_hostname="localhost",
        )
    assert not untrusted.value.rejected_by_peer
    # TLS 1.3 checks the client certificate after the client finished its handshake; the
    # server's alert may or may not make it before the socket closes.
    with pytest.raises((PeerVerificationError, ConnectionLostError)) as anonymous:
        await connect_tcp(
            "127.0.0.1",
            server.port,
            ssl=pki.anonymous_client_context,
            server_hostname="localhost",
        )
    if isinstance(anonymous.value, PeerVerificationError):
        assert anonymous.value.rejected_by_peer
    else:
        assert isinstance(anonymous.value, ConnectionLostError)
        assert "certificate" in anonymous.value.reason


async def test_graceful_stop_lets_running_streams_finish(server_factory: ServerFactory) -> None:
    release = asyncio.Event()
    got_request = asyncio.Event()

    async def slow(stream: ByteStream) -> None:
        request = await read_all(stream)
        got_request.set()
        await release.wait()
        await stream.send(b"answer to " + request)
        await stream.send_eof()

    server = await server_factory(slow)
    connection = await connect_tcp("127.0.0.1", server.port)
    stream = await connection.open_stream()
    await stream.send(b"question")
    await stream.send_eof()
    await got_request.wait()
    stopping = asyncio.create_task(server.stop(grace=30))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    # New streams are refused once the GOAWAY is in.
    with pytest.raises(ConnectionLostError):
        late = await connection.open_stream()
        await late.send(b"too late")
        await late.receive()
    release.set()
    assert await read_all(stream) == b"answer to question"
    await stopping
    with pytest.raises(ConnectionLostError):
        await connection.open_stream()
    await connection.aclose()
    assert other_tasks() == set()


async def test_stop_without_grace_fails_pending_operations(server_factory: ServerFactory) -> None:
    handler_saw: list[BaseException] = []

    async def stuck(stream: ByteStream) -> None:
        try:
            await asyncio.Event().wait()
        except BaseException as exc:
            handler_saw.append(exc)
            raise

    server = await server_factory(stuck)
    connection = await connect_tcp("127.0.0.1", server.port)
    stream = await connection.open_stream()
    pending = asyncio.create_task(stream.receive())
    await asyncio.sleep(0.02)
    await server.stop()
    with pytest.raises(ConnectionLostError):
        await pending
    with pytest.raises(ConnectionLostError):
        await stream.send(b"x")
    assert isinstance(handler_saw[0], asyncio.CancelledError)
    await connection.aclose()
    assert other_tasks() == set()


async def test_failing_handler_resets_its_stream(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(stream: ByteStream) -> None:
        raise RuntimeError("handler bug")

    server = await server_factory(broken)
    async with await connect_tcp("127.0.0.1", server.port) as connection:
        stream = await connection.open_stream()
        with pytest.raises(StreamResetError) as info:
            await stream.receive()
        assert info.value.code == HANDLER_ERROR_CODE
        # The connection survives: the next stream is served (and fails the same way).
        other = await connection.open_stream()
        with pytest.raises(StreamResetError):
            await other.receive()
        assert not connection.closed
    assert "handler failed" in caplog.text


async def test_open_stream_waits_for_a_free_slot(server_factory: ServerFactory) -> None:
    config = TCPConfig(mux=MuxConfig(max_concurrent_streams=2))
    server = await server_factory(echo, config=config)
    async with await connect_tcp("127.0.0.1", server.port) as connection:
        first = await connection.open_stream()
        second = await connection.open_stream()
        third = asyncio.create_task(connection.open_stream())
        await asyncio.sleep(0.05)
        assert not third.done()
        await first.send_eof()
        assert await read_all(first) == b""
        stream = await third
        await stream.send(b"third")
        await stream.send_eof()
        assert await read_all(stream) == b"third"
        await second.aclose()


async def test_keepalive_keeps_a_healthy_connection(server_factory: ServerFactory) -> None:
    config = TCPConfig(keepalive_interval=0.02)
    server = await server_factory(echo, config=config)
    async with await connect_tcp("127.0.0.1", server.port, config=config) as connection:
        await asyncio.sleep(0.3)  # many idle keepalive intervals on both sides
        stream = await connection.open_stream()
        await stream.send(b"still here")
        await stream.send_eof()
        assert await read_all(stream) == b"still here"


async def silent_peer(greet: bool) -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A raw server that (optionally) says HELLO and then never answers anything."""
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if greet:
            mux = MuxConnection(client=False)
            mux.initiate()
            writer.write(mux.data_to_send())

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], writers


async def close_raw(server: asyncio.Server, writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_keepalive_detects_a_dead_peer() -> None:
    server, port, writers = await silent_peer(greet=True)
    try:
        config = TCPConfig(keepalive_interval=0.02)
        connection = await connect_tcp("127.0.0.1", port, config=config)
        stream = await connection.open_stream()
        with pytest.raises(ConnectionLostError, match="keepalive"):
            await stream.receive()
        assert connection.closed
        await connection.aclose()
    finally:
        await close_raw(server, writers)


async def test_handshake_timeout() -> None:
    server, port, writers = await silent_peer(greet=False)
    try:
        with pytest.raises(ConnectionLostError, match="handshake"):
            await connect_tcp("127.0.0.1", port, config=TCPConfig(handshake_timeout=0.1))
    finally:
        await close_raw(server, writers)


async def test_garbage_from_a_client_closes_only_that_connection(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory(echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    await writer.drain()
    assert await reader.read() != b""  # HELLO, then GOAWAY(PROTOCOL_ERROR), then EOF
    writer.close()
    await writer.wait_closed()
    async with await connect_tcp("127.0.0.1", server.port) as connection:
        stream = await connection.open_stream()
        await stream.send_eof()
        assert await read_all(stream) == b""


async def test_garbage_from_a_server_fails_connect() -> None:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionLostError, match="protocol error"):
            await connect_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_refused_is_an_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        await connect_tcp("127.0.0.1", port)


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    server = TCPServer()
    try:
        await server.start("::1", 0, echo)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        async with await connect_tcp("::1", server.port) as connection:
            stream = await connection.open_stream()
            await stream.send(b"v6")
            await stream.send_eof()
            assert await read_all(stream) == b"v6"
            assert connection.peer_info.remote_host == "::1"
    finally:
        await server.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_no_leaked_fds_or_tasks() -> None:
    pki = make_pki()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cycle() -> None:
        server = TCPServer()
        await server.start("127.0.0.1", 0, echo, ssl=pki.server_context)
        connections = [
            await connect_tcp(
                "127.0.0.1", server.port, ssl=pki.client_context, server_hostname="localhost"
            )
            for _ in range(5)
        ]
        for connection in connections:
            stream = await connection.open_stream()
            await stream.send(b"x")
            await stream.send_eof()
            assert await read_all(stream) == b"x"
        await connections[0].aclose()
        await server.stop()
        for connection in connections[1:]:
            await connection.aclose()

    await cycle()  # warm up lazily created descriptors (e.g. the loop's self-pipe users)
    before = open_fds()
    for _ in range(3):
        await cycle()
    assert open_fds() == before
    assert other_tasks() == set()


async def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TCPConfig(keepalive_interval=0)
    with pytest.raises(ValueError):
        TCPConfig(max_write_buffer=10)
    with pytest.raises(ValueError):
        await connect_tcp("127.0.0.1", 1, server_hostname="localhost")


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_many_streams_through_tiny_windows(server_factory: ServerFactory, tls: bool) -> None:
    """Flow-control credit keeps flowing when the windows are far smaller than the data."""
    tiny = TCPConfig(
        mux=MuxConfig(
            initial_stream_window=16 * 1024,
            initial_connection_window=64 * 1024,
            max_frame_size=4096,
            max_concurrent_streams=8,
        )
    )
    pki = make_pki()
    server = await server_factory(echo, ssl=pki.server_context if tls else None, config=tiny)
    connection = await connect_tcp(
        "127.0.0.1",
        server.port,
        ssl=pki.client_context if tls else None,
        server_hostname="localhost" if tls else None,
        config=tiny,
    )

    async def one(i: int) -> None:
        payload = os.urandom(256 * 1024)
        stream = await connection.open_stream()

        async def write() -> None:
            for offset in range(0, len(payload), 10_000):
                await stream.send(payload[offset : offset + 10_000])
            await stream.send_eof()

        writer = asyncio.create_task(write())
        echoed = await read_all(stream)
        await writer
        await stream.aclose()
        assert echoed == payload, f"stream {i}"

    try:
        await asyncio.gather(*(one(i) for i in range(16)))  # twice the stream limit
    finally:
        await connection.aclose()
