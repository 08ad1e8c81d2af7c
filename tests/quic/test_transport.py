"""Streams over the QUIC transport: data integrity, backpressure, resets, lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import os

import psutil
import pytest

from quic_rpc.quic import (
    QUICConfig,
    QUICConnection,
    QUICServer,
    QUICStream,
    TLSCredentials,
    connect,
)
from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    StreamClosedError,
    StreamOpener,
    StreamResetError,
    StreamStoppedError,
)

from .conftest import SocketFactory
from .helpers import (
    chunk,
    echo_handler,
    hash_reader,
    read_all,
    request,
    wait_for_condition,
    wait_until_stable,
)

MiB = 1024 * 1024


async def _pair(
    make_socket: SocketFactory,
    server_creds: TLSCredentials,
    client_creds: TLSCredentials,
    handler: object = echo_handler,
    config: QUICConfig | None = None,
    client_config: QUICConfig | None = None,
    **socket_kwargs: object,
) -> tuple[QUICServer, QUICConnection]:
    ssock = await make_socket(**socket_kwargs)
    csock = await make_socket(**socket_kwargs)
    server = QUICServer(ssock, server_creds, config or QUICConfig(), handler)  # type: ignore[arg-type]
    await server.start()
    host, port = ssock.local_address
    conn = await connect(csock, host, port, client_creds, client_config or config)
    return server, conn


async def test_echo_and_protocols(make_socket, server_creds, client_creds) -> None:
    server, conn = await _pair(make_socket, server_creds, client_creds)
    assert isinstance(conn, StreamOpener)
    stream = await conn.open_stream()
    assert isinstance(stream, ByteStream)
    assert await request(conn, b"hello") == b"hello"
    info = conn.peer_info
    assert info.transport == "quic"
    assert info.alpn == "quicshift-rpc/1"
    assert info.remote_port == server.socket.local_address[1]
    assert info.remote_chain and info.identity is not None
    assert conn.local_chain == client_creds.chain_der
    assert conn.peer_chain == server_creds.chain_der
    stats = conn.stats()
    for key in ("rtt_smoothed", "rtt_min", "rtt_latest", "cwnd", "bytes_sent", "packets_lost"):
        assert key in stats
    assert stats["rtt_smoothed"] > 0
    await wait_for_condition(lambda: len(server.connections) == 1)
    sconn = server.connections[0]
    assert sconn.peer_identity is not None and sconn.alpn == "quicshift-rpc/1"
    await stream.aclose()
    await conn.aclose()
    await server.stop()


async def test_half_close_each_direction(make_socket, server_creds, client_creds) -> None:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        await stream.send(b"server-first")
        await stream.send_eof()
        got.set_result(await read_all(stream))

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"x")
    assert await read_all(stream) == b"server-first"
    await stream.send(b"yz")  # our direction is still open after the peer's EOF
    await stream.send_eof()
    assert await got == b"xyz"
    with pytest.raises(StreamClosedError):
        await stream.send(b"after eof")
    await conn.aclose()
    await server.stop()


async def test_64_mib_one_stream_intact_bounded_memory(
    make_socket, server_creds, client_creds
) -> None:
    result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
    peak_receive = 0
    streams: list[QUICStream] = []

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        streams.append(stream)
        result.set_result(await hash_reader(stream))
        await stream.send(b"ok")

    config = QUICConfig()
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak_rss = baseline
    peak_send = 0

    async def sampler() -> None:
        nonlocal peak_rss, peak_send, peak_receive
        while True:
            peak_rss = max(peak_rss, process.memory_info().rss)
            peak_send = max(peak_send, stream.buffered_send)
            if streams:
                peak_receive = max(peak_receive, streams[0].buffered_receive)
            await asyncio.sleep(0.02)

    stream = await conn.open_stream()
    sampling = asyncio.create_task(sampler())
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for index in range(64):
        data = chunk(index, MiB, block)
        digest.update(data)
        await stream.send(data)
    await stream.send_eof()
    total, received_digest = await result
    sampling.cancel()
    await asyncio.gather(sampling, return_exceptions=True)
    assert total == 64 * MiB
    assert received_digest == digest.digest()
    assert await read_all(stream) == b"ok"
    assert peak_send <= config.stream_send_buffer
    assert peak_receive <= config.max_stream_window  # the window may grow, never past this
    assert peak_rss - baseline < 64 * MiB
    await conn.aclose()
    await server.stop()


async def test_1000_concurrent_streams(make_socket, server_creds, client_creds) -> None:
    config = QUICConfig(max_streams=1000)
    server, conn = await _pair(make_socket, server_creds, client_creds, echo_handler, config)
    streams = [await conn.open_stream() for _ in range(1000)]
    assert len({s.stream_id for s in streams}) == 1000

    async def one(index: int, stream: QUICStream) -> bytes:
        payload = index.to_bytes(4, "big") * 16
        await stream.send(payload)
        await stream.send_eof()
        return await read_all(stream)

    replies = await asyncio.gather(*(one(i, s) for i, s in enumerate(streams)))
    assert replies == [i.to_bytes(4, "big") * 16 for i in range(1000)]
    await wait_for_condition(lambda: conn.streams == 0)
    await conn.aclose()
    await server.stop()


def _echo_after(release: asyncio.Event) -> object:
    """An echo handler that starts echoing once ``release`` is set."""

    async def handler(stream: ByteStream) -> None:
        await release.wait()
        await echo_handler(stream)

    return handler


async def test_open_stream_waits_for_peer_stream_limit(
    make_socket, server_creds, client_creds
) -> None:
    release = asyncio.Event()
    handler = _echo_after(release)
    config = QUICConfig(max_streams=4)
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    first = [await conn.open_stream() for _ in range(4)]
    for stream in first:
        await stream.send(b"a")
        await stream.send_eof()
    fifth = asyncio.create_task(conn.open_stream())
    await asyncio.sleep(0.2)
    assert not fifth.done()
    release.set()
    for stream in first:
        assert await read_all(stream) == b"a"
    stream5 = await asyncio.wait_for(fifth, 10)
    await stream5.send(b"five")
    await stream5.send_eof()
    assert await read_all(stream5) == b"five"
    await conn.aclose()
    await server.stop()


async def test_backpressure_paused_reader_blocks_writer(
    make_socket, server_creds, client_creds
) -> None:
    resume = asyncio.Event()
    server_streams: list[QUICStream] = []
    done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        server_streams.append(stream)
        await resume.wait()
        done.set_result(await hash_reader(stream))

    config = QUICConfig(
        stream_window=256 * 1024, connection_window=1 * MiB, stream_send_buffer=256 * 1024
    )
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    stream = await conn.open_stream()
    accepted = 0
    piece = os.urandom(64 * 1024)
    total = 8 * MiB

    async def writer() -> None:
        nonlocal accepted
        while accepted < total:
            await stream.send(piece)
            accepted += len(piece)
        await stream.send_eof()

    task = asyncio.create_task(writer())
    await wait_for_condition(lambda: bool(server_streams))
    stalled_at = await wait_until_stable(lambda: accepted)
    assert not task.done()
    # bounded: the peer's window plus our send buffer, plus the piece in progress
    limit = config.stream_window + config.stream_send_buffer + len(piece)
    assert stalled_at <= limit
    assert stream.buffered_send <= config.stream_send_buffer
    assert server_streams[0].buffered_receive <= config.stream_window
    resume.set()
    await asyncio.wait_for(task, 60)
    received, _ = await done
    assert received == total
    await conn.aclose()
    await server.stop()


@pytest.mark.parametrize("size", [16383, 16384, 40000, 65000])
async def test_datagrams_past_two_byte_frame_lengths(
    make_socket, server_creds, client_creds, size: int
) -> None:
    """STREAM frames longer than 16,383 bytes carry a four-byte length; the data arrives
    intact in datagrams of the configured size, while the handshake's stay within two-byte
    CRYPTO frame lengths."""
    result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        result.set_result(await hash_reader(stream))
        await stream.send(b"ok")

    config = QUICConfig(
        max_datagram_size=size, loopback_datagram_size=None, pacing=False, pmtu_discovery=False
    )
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    handshake = conn.stats()
    assert handshake["bytes_sent"] <= 16383 * handshake["datagrams_sent"]
    stream = await conn.open_stream()
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for index in range(8):
        data = chunk(index, MiB, block)
        digest.update(data)
        await stream.send(data)
    await stream.send_eof()
    total, received = await asyncio.wait_for(result, 60)
    assert (total, received) == (8 * MiB, digest.digest())
    assert await read_all(stream) == b"ok"
    stats = conn.stats()
    sent = stats["bytes_sent"] - handshake["bytes_sent"]
    datagrams = stats["datagrams_sent"] - handshake["datagrams_sent"]
    assert size * 0.9 < sent / datagrams <= size  # full-size datagrams, none larger
    await conn.aclose()
    await server.stop()


_SMALL_WINDOWS = QUICConfig(
    stream_window=64 * 1024,
    connection_window=256 * 1024,
    max_stream_window=1 * MiB,
    max_connection_window=2 * MiB,
)


async def test_receive_window_grows_for_a_reader_that_keeps_up(
    make_socket, server_creds, client_creds
) -> None:
    """A reader that drains each half window within two round trips is held back by the
    window, not by itself: the window doubles, up to the maximum, as does the
    connection's (which keeps room for one and a half stream windows)."""
    seen: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        peak = total = 0
        while data := await stream.receive():
            total += len(data)
            peak = max(peak, stream.receive_window)
        window = stream.receive_window
        seen.set_result((total, max(peak, window)))
        await stream.send(b"ok")

    config = _SMALL_WINDOWS
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    stream = await conn.open_stream()
    piece = os.urandom(64 * 1024)
    for _ in range(256):  # 16 MiB
        await stream.send(piece)
    await stream.send_eof()
    total, peak = await asyncio.wait_for(seen, 60)
    connection_window = server.connections[0].stats()["receive_window"]
    assert total == 16 * MiB
    assert config.stream_window < peak <= config.max_stream_window
    assert peak & (peak - 1) == 0  # doubled from a power of two
    assert config.connection_window <= connection_window <= config.max_connection_window
    assert connection_window >= min(peak + peak // 2, config.max_connection_window)
    assert await read_all(stream) == b"ok"
    await conn.aclose()
    await server.stop()


async def test_receive_window_stays_put_for_a_slow_reader(
    make_socket, server_creds, client_creds
) -> None:
    """The same upload to a reader that takes 16 KiB every 20 ms: the peer waits on the
    window all along, but the reader is the limit, so the window must not grow (it would
    only buffer more for a reader that cannot keep up)."""
    seen: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        total = peak_buffered = 0
        while data := await stream.receive(16 * 1024):
            total += len(data)
            peak_buffered = max(peak_buffered, stream.buffered_receive)
            assert stream.receive_window == _SMALL_WINDOWS.stream_window
            await asyncio.sleep(0.02)
        seen.set_result((total, peak_buffered))

    server, conn = await _pair(make_socket, server_creds, client_creds, handler, _SMALL_WINDOWS)
    stream = await conn.open_stream()
    await stream.send(os.urandom(512 * 1024))
    await stream.send_eof()
    total, peak_buffered = await asyncio.wait_for(seen, 60)
    assert total == 512 * 1024
    assert 0 < peak_buffered <= _SMALL_WINDOWS.stream_window
    assert conn.stats()["receive_window"] == _SMALL_WINDOWS.connection_window
    await conn.aclose()
    await server.stop()


async def test_receive_window_growth_off_when_maximum_is_the_window(
    make_socket, server_creds, client_creds
) -> None:
    windows: list[int] = []

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        while await stream.receive():
            windows.append(stream.receive_window)
        await stream.send(b"ok")

    config = QUICConfig(
        stream_window=64 * 1024, connection_window=256 * 1024, max_stream_window=16 * 1024
    )
    server, conn = await _pair(make_socket, server_creds, client_creds, handler, config)
    stream = await conn.open_stream()
    await stream.send(os.urandom(4 * MiB))
    await stream.send_eof()
    assert await asyncio.wait_for(read_all(stream), 60) == b"ok"
    assert windows and set(windows) == {64 * 1024}
    await conn.aclose()
    await server.stop()


@pytest.mark.parametrize("code", [0, 0x42, 2**62 - 1])
async def test_reset_reaches_peer_with_code(make_socket, server_creds, client_creds, code) -> None:
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        try:
            while await stream.receive():
                pass
        except StreamResetError as exc:
            outcome.set_result(exc)
            raise

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"partial")
    stream.reset(code)
    error = await asyncio.wait_for(outcome, 10)
    assert isinstance(error, StreamResetError) and error.code == code
    with pytest.raises(StreamClosedError):
        await stream.send(b"more")
    await conn.aclose()
    await server.stop()


async def test_server_reset_and_stop_sending_reach_client(
    make_socket, server_creds, client_creds
) -> None:
    async def handler(stream: ByteStream) -> None:
        await stream.receive()
        stream.stop_sending(0x77)
        stream.reset(0x66)
        await asyncio.sleep(0)

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"go")
    with pytest.raises(StreamResetError) as reset:
        await stream.receive()
    assert reset.value.code == 0x66
    with pytest.raises(StreamStoppedError) as stopped:
        for _ in range(1000):
            await stream.send(b"x" * 1024)
            await asyncio.sleep(0.001)
    assert stopped.value.code == 0x77
    await conn.aclose()
    await server.stop()


async def test_client_stop_sending_reaches_server(make_socket, server_creds, client_creds) -> None:
    outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        try:
            while True:
                await stream.send(b"y" * 4096)
        except StreamStoppedError as exc:
            outcome.set_result(exc.code)

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"start")
    assert await stream.receive()
    stream.stop_sending(0x99)
    assert await asyncio.wait_for(outcome, 10) == 0x99
    with pytest.raises(StreamClosedError):
        await stream.receive()
    await conn.aclose()
    await server.stop()


async def test_graceful_stop_lets_inflight_streams_finish(
    make_socket, server_creds, client_creds
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handler(stream: ByteStream) -> None:
        data = await read_all(stream)
        entered.set()
        await release.wait()
        await stream.send(data * 1000)
        await stream.send_eof()

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"abc")
    await stream.send_eof()
    await entered.wait()
    stopping = asyncio.create_task(server.stop(grace=30))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    assert await read_all(stream) == b"abc" * 1000
    await asyncio.wait_for(stopping, 30)
    assert server.connections == []
    await wait_for_condition(lambda: conn.is_closed)
    with pytest.raises(ConnectionLostError):
        await conn.open_stream()
    await conn.wait_closed()


async def test_graceful_stop_deadline_cuts_stuck_streams(
    make_socket, server_creds, client_creds
) -> None:
    entered = asyncio.Event()

    async def handler(stream: ByteStream) -> None:
        entered.set()
        await asyncio.sleep(3600)

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"hang")
    await entered.wait()
    await server.stop(grace=0.2)
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(stream.receive(), 10)
    await conn.wait_closed()


async def test_local_close_fails_open_streams(make_socket, server_creds, client_creds) -> None:
    server, conn = await _pair(make_socket, server_creds, client_creds)
    stream = await conn.open_stream()
    pending = asyncio.create_task(stream.receive())
    await asyncio.sleep(0.01)
    conn.close(0x5, "bye")
    with pytest.raises(ConnectionLostError):
        await pending
    with pytest.raises(ConnectionLostError):
        await stream.send(b"x")
    await conn.wait_closed()
    await wait_for_condition(lambda: not server.connections)
    await server.stop()


async def test_handler_exception_aborts_stream(make_socket, server_creds, client_creds) -> None:
    async def handler(stream: ByteStream) -> None:
        await stream.receive()
        raise RuntimeError("boom")

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)
    stream = await conn.open_stream()
    await stream.send(b"x")
    with pytest.raises(StreamResetError):
        await stream.receive()
    assert stream.peer_info.transport == "quic"
    assert not conn.is_closed  # one failed handler does not take the connection down
    await conn.aclose()
    await server.stop()


async def test_datagrams(make_socket, server_creds, client_creds) -> None:
    config = QUICConfig(datagrams=True)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    def on_connection(sconn: QUICConnection) -> None:
        sconn.on_datagram = lambda data: (got.put_nowait(data), sconn.send_datagram(data[::-1]))

    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler, on_connection=on_connection)
    await server.start()
    conn = await connect(csock, *ssock.local_address, client_creds, config)
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    conn.on_datagram = replies.put_nowait
    for _ in range(20):  # unreliable: resend until one round trip succeeds
        conn.send_datagram(b"ping!")
        try:
            assert await asyncio.wait_for(replies.get(), 0.5) == b"!gnip"
            break
        except TimeoutError:
            continue
    else:
        pytest.fail("no datagram came back")
    assert await got.get() == b"ping!"
    await conn.aclose()
    await server.stop()


async def test_portable_io_and_no_gso_paths(make_socket, server_creds, client_creds) -> None:
    for kwargs in ({"io": "transport"}, {"io": "selector", "gso": False}):
        server, conn = await _pair(make_socket, server_creds, client_creds, **kwargs)
        assert server.socket.io_mode == kwargs["io"]
        assert not server.socket.gso_enabled and not server.socket.gro_enabled
        payload = os.urandom(2 * MiB)
        assert await request(conn, payload) == payload
        await conn.aclose()
        await server.stop()


async def test_ipv6_and_dual_stack(make_socket, server_creds, client_creds) -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback")
    ssock = await make_socket("::")
    server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
    await server.start()
    port = ssock.local_address[1]
    v6 = await make_socket("::1")
    v4 = await make_socket("127.0.0.1")
    conn6 = await connect(v6, "::1", port, client_creds)
    conn4 = await connect(v4, "127.0.0.1", port, client_creds)
    assert await request(conn6, b"six") == b"six"
    assert await request(conn4, b"four") == b"four"
    assert conn6.remote_address == ("::1", port)
    await wait_for_condition(lambda: len(server.connections) == 2)
    remote_hosts = sorted(c.remote_address[0] for c in server.connections)
    assert remote_hosts == ["127.0.0.1", "::1"]
    # a dual-stack socket dials IPv4 too
    dual = await make_socket("::")
    conn_dual = await connect(dual, "127.0.0.1", port, client_creds)
    assert await request(conn_dual, b"dual") == b"dual"
    with pytest.raises(OSError, match="IPv6-only"):
        await connect(v6, "127.0.0.1", port, client_creds)
    for conn in (conn6, conn4, conn_dual):
        await conn.aclose()
    await server.stop()


def _has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_quic_client_tracks_and_closes_its_connections(
    make_socket, server_creds, client_creds
) -> None:
    from quic_rpc.quic import QUICClient

    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
    await server.start()
    client = QUICClient(await make_socket(), client_creds, QUICConfig())
    first = await client.connect(*ssock.local_address)
    second = await client.connect("localhost", ssock.local_address[1], server_name="localhost")
    assert set(client.connections) == {first, second}
    assert await request(second, b"via name") == b"via name"
    await client.close()
    assert client.connections == []
    assert first.is_closed and second.is_closed
    await server.stop()


async def test_many_writes_in_one_turn_start_leaving_before_the_turn_ends(
    make_socket, server_creds, client_creds
) -> None:
    """Writes pile up within one loop turn (many calls answered at once): the first of
    them are transmitted while the rest are still being produced, not all at the end."""
    _server, conn = await _pair(make_socket, server_creds, client_creds)
    streams = [await conn.open_stream() for _ in range(40)]
    await asyncio.sleep(0.05)
    before = conn.datagrams_sent
    for stream in streams:  # send() does not yield while there is room
        await stream.send(b"x" * 100)
    sent_within_turn = conn.datagrams_sent - before
    assert sent_within_turn >= 2
    for stream in streams:
        await stream.send_eof()
        assert await read_all(stream) == b"x" * 100


async def test_receive_nowait_takes_what_is_here_without_waiting(
    make_socket, server_creds, client_creds
) -> None:
    _server, conn = await _pair(make_socket, server_creds, client_creds)
    stream = await conn.open_stream()
    assert isinstance(stream, QUICStream)
    assert stream.receive_nowait() is None  # nothing yet: receive() would wait
    await stream.send(b"ping")
    await stream.send_eof()
    await wait_for_condition(lambda: stream.buffered_receive == 4)
    assert stream.receive_nowait(2) == b"pi"
    assert await stream.receive() == b"ng"
    await wait_for_condition(lambda: stream.receive_nowait() is not None)
    assert stream.receive_nowait() == b""  # the echo server half-closed after echoing
    assert await stream.receive() == b""
    with pytest.raises(ValueError):
        stream.receive_nowait(0)


async def test_deferred_eof_rides_on_the_next_packet_or_leaves_soon_after(
    make_socket, server_creds, client_creds
) -> None:
    _server, conn = await _pair(make_socket, server_creds, client_creds)
    first = await conn.open_stream()
    await first.send(b"one")
    assert await first.receive() == b"one"
    await asyncio.sleep(0.05)  # every ACK is out: the connection is quiet
    before = conn.datagrams_sent
    assert isinstance(first, QUICStream)
    first.send_eof_deferred()
    with pytest.raises(StreamClosedError):
        await first.send(b"more")  # half-closed as after send_eof()
    second = await conn.open_stream()
    await second.send(b"two")  # in the same loop turn: one packet carries both
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert conn.datagrams_sent - before == 1
    assert await read_all(first) == b""  # the echo server saw the end and ended too
    assert await second.receive() == b"two"
    # alone, the end of stream still leaves within a few milliseconds
    await second.send_eof()
    assert await read_all(second) == b""
    third = await conn.open_stream()
    await third.send(b"three")
    assert await third.receive() == b"three"
    assert isinstance(third, QUICStream)
    third.send_eof_deferred()
    assert await asyncio.wait_for(read_all(third), 5) == b""


async def test_open_stream_nowait_and_send_nowait_never_wait(
    make_socket, server_creds, client_creds
) -> None:
    release = asyncio.Event()
    handler = _echo_after(release)
    server, conn = await _pair(
        make_socket,
        server_creds,
        client_creds,
        handler,
        QUICConfig(max_streams=2),
        QUICConfig(stream_send_buffer=1024),
    )
    opened = [conn.open_stream_nowait() for _ in range(2)]
    assert all(isinstance(stream, QUICStream) for stream in opened)
    assert conn.open_stream_nowait() is None  # the peer's limit: open_stream() would wait
    first, second = opened
    assert first is not None and second is not None
    assert not first.send_nowait(b"x" * 1025)  # more than the send buffer: nothing queued
    assert first.send_nowait(b"x" * 1000)
    assert not first.send_nowait(b"y" * 100)  # 1,000 of 1,024 bytes still unacknowledged
    assert first.send_nowait(b"")
    await first.send_eof()
    with pytest.raises(StreamClosedError):
        first.send_nowait(b"late")
    assert second.send_nowait(b"two")
    await second.send_eof()
    release.set()
    assert await read_all(first) == b"x" * 1000
    assert await read_all(second) == b"two"
    await wait_for_condition(lambda: conn.open_stream_nowait() is not None)
    await conn.aclose()
    with pytest.raises(ConnectionLostError):
        conn.open_stream_nowait()
    await server.stop()


async def test_watch_reports_a_reset_and_release_waits_for_the_end_of_stream(
    make_socket, server_creds, client_creds
) -> None:
    served: asyncio.Queue[tuple[list[Exception], asyncio.Event]] = asyncio.Queue()

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, QUICStream)
        request = await stream.receive()
        errors: list[Exception] = []
        stream.watch(errors.append)
        done = asyncio.Event()
        await served.put((errors, done))
        if request == b"hold":
            await done.wait()
            return
        await stream.send(b"reply")
        await stream.send_eof()
        stream.release(0.3)  # the handler returns without waiting for the client's FIN

    server, conn = await _pair(make_socket, server_creds, client_creds, handler)

    def server_streams() -> float:
        return server.connections[0].stats()["streams"]

    # 1. the client half-closes after the reply: the released stream is forgotten
    first = await conn.open_stream()
    await first.send(b"request")
    errors, _ = await asyncio.wait_for(served.get(), 5)
    assert await first.receive() == b"reply"
    await first.send(b"ignored after release")
    await first.send_eof()
    await wait_for_condition(lambda: server_streams() == 0)
    assert errors == []

    # 2. the client never half-closes: after the linger its sending is stopped
    second = await conn.open_stream()
    await second.send(b"request")
    await asyncio.wait_for(served.get(), 5)
    assert await second.receive() == b"reply"
    with pytest.raises(StreamStoppedError):
        for _ in range(100):
            await second.send(b"x")
            await asyncio.sleep(0.05)
    await wait_for_condition(lambda: server_streams() == 0)

    # 3. a reset of the request side reaches the watcher
    third = await conn.open_stream()
    await third.send(b"hold")
    errors, done = await asyncio.wait_for(served.get(), 5)
    third.reset(7)
    await wait_for_condition(lambda: bool(errors))
    assert isinstance(errors[0], StreamResetError) and errors[0].code == 7
    done.set()
    await conn.aclose()
    await server.stop()


async def test_listen_hands_over_what_arrives_without_a_waiting_task(
    make_socket, server_creds, client_creds
) -> None:
    _server, conn = await _pair(make_socket, server_creds, client_creds)
    stream = await conn.open_stream()
    got: list[bytes] = []
    ended = asyncio.Event()

    def take() -> None:
        while (data := stream.receive_nowait()) is not None:
            if not data:
                ended.set()
                return
            got.append(data)

    stream.listen(take)
    await stream.send(b"ping" * 1000)
    await stream.send_eof()
    await asyncio.wait_for(ended.wait(), 5)
    assert b"".join(got) == b"ping" * 1000
    stream.listen(None)
    # a listener that raises is logged, and the stream keeps working for a reader
    other = await conn.open_stream()
    other.listen(lambda: 1 / 0)  # type: ignore[func-returns-value]
    await other.send(b"x")
    await other.send_eof()
    await asyncio.sleep(0.2)
    other.listen(None)
    assert await read_all(other) == b"x"
    await conn.aclose()


async def test_what_arrived_before_the_connection_was_lost_is_still_read(
    make_socket, server_creds, client_creds
) -> None:
    hold = asyncio.Event()

    async def last_words(stream: ByteStream) -> None:
        request = await stream.receive()
        await stream.send(b"last words")
        if request == b"all":
            await stream.send_eof()
        else:
            await hold.wait()  # no end of stream before the connection goes

    server, conn = await _pair(make_socket, server_creds, client_creds, last_words)
    whole = await conn.open_stream()
    cut = await conn.open_stream()
    await whole.send(b"all")
    await cut.send(b"part")
    await wait_for_condition(lambda: whole.buffered_receive == 10 and cut.buffered_receive == 10)
    await asyncio.sleep(0.05)  # the end of stream left with the data
    conn.abort("gone")
    # the reply and its end had arrived: both are read after the loss
    assert await whole.receive() == b"last words"
    assert await whole.receive() == b""
    # a cut-off stream: what arrived, then the loss
    assert await cut.receive() == b"last words"
    with pytest.raises(ConnectionLostError):
        await cut.receive()
    hold.set()
    await server.stop()


async def test_both_ends_learn_our_max_ack_delay(make_socket, server_creds, client_creds) -> None:
    from quic_rpc.quic.engine import ADVERTISED_MAX_ACK_DELAY_MS

    server, conn = await _pair(make_socket, server_creds, client_creds)
    assert await request(conn, b"x") == b"x"
    peer = server.connections[0]
    for side in (conn, peer):
        # the peer's probe timeouts allow for our ACK delay, not aioquic's 25 ms
        assert side._engine._loss.max_ack_delay == ADVERTISED_MAX_ACK_DELAY_MS / 1000
        # and the rest of the parameters made it through: the windows and stream limit
        assert side._engine._remote_max_streams_bidi == QUICConfig().max_streams
    await conn.aclose()
    await server.stop()
