"""Resource exhaustion against a QUIC RPC server: stream and connection floods, slow
readers, slowloris callers, vanished peers and the anti-amplification limit. Each is
answered with a typed error or reaped by a deadline/timeout; the server's call table,
stream table and task count return to their baseline; memory stays bounded (measured
with tracemalloc, generous margins); other connections keep working."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from quic_rpc.quic import ConnectionLimitError, HandshakeError, QUICConfig, ca_verifier, connect
from quic_rpc.rpc import (
    CallKind,
    RPCClient,
    RPCError,
    RPCServerConfig,
    ServerCallContext,
    client_streaming,
    encode_message,
    encode_preface,
    encode_request_end,
    encode_request_header,
)
from quic_rpc.rpc.status import ResetCode, Status
from tests.quic.certs import PKI
from tests.quic.helpers import wait_for_condition

from .conftest import (
    Counters,
    QUICRig,
    RigFactory,
    UDPRelay,
    assert_healthy,
    make_manifest,
    read_answer,
    send_raw,
)

MiB = 1024 * 1024
RelayFactory = Callable[[tuple[str, int]], Awaitable[UDPRelay]]


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Yield a function returning the peak traced memory growth so far, in bytes."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


def handler_tasks(rig: QUICRig) -> int:
    return sum(len(c._handler_tasks) for c in rig.server.connections)


def server_streams(rig: QUICRig) -> int:
    return sum(c.streams for c in rig.server.connections)


async def assert_back_to_baseline(rig: QUICRig) -> None:
    await wait_for_condition(lambda: rig.rpc.active_calls == 0, 10)
    await wait_for_condition(lambda: handler_tasks(rig) == 0, 10)
    await wait_for_condition(lambda: server_streams(rig) == 0, 10)


# ------------------------------------------------------------------ stream floods


async def test_call_flood_beyond_rpc_limit(quic_rig: RigFactory) -> None:
    """More concurrent calls on one connection than max_concurrent_calls_per_connection:
    the extra ones get RESOURCE_EXHAUSTED at once, the admitted ones run, another
    connection is not limited by this one's flood."""
    rig = await quic_rig(rpc_config=RPCServerConfig(max_concurrent_calls_per_connection=4))
    attacker = await rig.client()
    sleepers = [asyncio.ensure_future(attacker.unary("/t.S/Sleep", b"")) for _ in range(4)]
    await wait_for_condition(lambda: rig.counters.calls.get("sleep", 0) == 4)
    results = await asyncio.gather(
        *(attacker.unary("/t.S/Echo", b"x", timeout=20) for _ in range(30)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RPCError) and r.status is Status.RESOURCE_EXHAUSTED for r in results)
    other = await rig.client()
    await asyncio.gather(*(assert_healthy(other, b"%d" % i) for i in range(8)))
    for task in sleepers:
        task.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    await assert_back_to_baseline(rig)
    await assert_healthy(attacker)
    assert rig.counters.calls == {"sleep": 4, "echo": 9}


async def test_stream_flood_beyond_quic_limit(quic_rig: RigFactory) -> None:
    """The QUIC stream limit (max_streams): streams past it wait in open_stream() until
    one closes; the server never holds more than max_streams streams of the attacker."""
    rig = await quic_rig(quic_config=QUICConfig(max_streams=8))
    conn = await rig.dial()
    held = [await conn.open_stream() for _ in range(8)]
    for stream in held:
        await stream.send(encode_preface())  # open, never finished
    extra = asyncio.ensure_future(conn.open_stream())
    await wait_for_condition(lambda: server_streams(rig) == 8)
    await asyncio.sleep(0.2)
    assert not extra.done(), "a 9th stream was allowed past max_streams=8"
    assert server_streams(rig) <= 8
    other = await rig.client()
    await assert_healthy(other)
    held[0].abort(ResetCode.CANCEL)
    stream = await asyncio.wait_for(extra, 10)
    await send_raw(
        stream,
        encode_preface()
        + encode_request_header("/t.S/Echo", CallKind.UNARY)
        + encode_message(b"late")
        + encode_request_end(),
    )
    answer = await read_answer(stream)
    assert answer.kind == "trailer" and answer.status is Status.OK
    for s in held[1:]:
        s.abort(ResetCode.CANCEL)
    await stream.aclose()
    await assert_back_to_baseline(rig)


async def test_unread_request_streams_bounded_memory(pki: PKI, quic_rig: RigFactory) -> None:
    """Many client-streaming calls pushing data at a handler that never reads: the
    server buffers at most request_buffer_size messages per call plus the transport
    windows; the pushing clients are held back by flow control, memory stays bounded."""
    started = asyncio.Event()
    count = Counters()

    async def hoarder(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
        count.hit("hoard")
        started.set()
        await asyncio.sleep(3600)
        return b""

    manifest = make_manifest(count) | {"/t.S/Hoard": client_streaming(hoarder)}
    msg = 16 * 1024
    rig = await quic_rig(
        manifest=manifest,
        rpc_config=RPCServerConfig(max_receive_message_size=msg, request_buffer_size=4),
        quic_config=QUICConfig(stream_window=64 * 1024, connection_window=1 * MiB),
    )
    # the client lives in this process too: keep its own send buffers small
    client = RPCClient(await rig.dial(QUICConfig(stream_send_buffer=32 * 1024)))
    calls = 10

    async def push() -> None:
        async def forever() -> AsyncIterator[bytes]:
            while True:
                yield b"\x00" * msg

        await client.client_streaming("/t.S/Hoard", forever(), timeout=2.5)

    with traced() as peak:
        results = await asyncio.gather(*(push() for _ in range(calls)), return_exceptions=True)
        growth = peak()
    assert all(isinstance(r, RPCError) and r.status is Status.DEADLINE_EXCEEDED for r in results)
    # per call: 4 queued + 1 being decoded + 1 read chunk; plus the connection window
    bound = calls * 6 * msg + 1 * MiB
    assert growth < 2 * bound + 2 * MiB, f"grew {growth} bytes, bound {bound}"
    await assert_back_to_baseline(rig)
    await assert_healthy(client)


# -------------------------------------------------------------- connection floods


async def test_connection_flood_beyond_server_limit(quic_rig: RigFactory) -> None:
    rig = await quic_rig(quic_config=QUICConfig(max_connections=3))
    clients = [await rig.client() for _ in range(3)]
    for _ in range(4):
        with pytest.raises(ConnectionLimitError) as info:
            await rig.dial()
        assert isinstance(info.value, HandshakeError)
    assert rig.server.refused == 4
    assert len(rig.server.connections) == 3
    for client in clients:
        await assert_healthy(client)
    # one leaves, a newcomer gets its slot
    first = rig.server.connections[0]
    first.abort()
    await wait_for_condition(lambda: len(rig.socket.connections) == 2)
    newcomer = await rig.client()
    await assert_healthy(newcomer)


# ------------------------------------------------------------ slow readers/callers


def _slow_reader_request(timeout_us: int | None) -> bytes:
    header = encode_request_header("/t.S/Numbers", CallKind.SERVER_STREAMING, (), timeout_us)
    return encode_preface() + header + encode_message(b"1000") + encode_request_end()


@pytest.mark.parametrize("reaper", ["client deadline", "server handler_timeout"])
async def test_slow_reader_is_reaped(quic_rig: RigFactory, reaper: str) -> None:
    """A caller asks for 60 MB and never reads: the server's buffering is bounded by the
    transport's windows and the deadline ends the call, releasing everything."""
    handler_timeout = 1.0 if reaper == "server handler_timeout" else None
    rig = await quic_rig(
        rpc_config=RPCServerConfig(handler_timeout=handler_timeout),
        quic_config=QUICConfig(stream_window=256 * 1024, stream_send_buffer=256 * 1024),
    )
    conn = await rig.dial()
    other = await rig.client()
    with traced() as peak:
        streams = []
        for _ in range(4):
            stream = await conn.open_stream()
            timeout_us = 1_000_000 if handler_timeout is None else None
            await stream.send(_slow_reader_request(timeout_us))
            streams.append(stream)
        await wait_for_condition(lambda: rig.counters.calls.get("numbers", 0) == 4)
        await assert_healthy(other)
        await wait_for_condition(lambda: rig.rpc.active_calls == 0, 10)
        growth = peak()
    # 4 calls x (stream window + send buffer + one 60 KB message) plus slack; 60 MB asked
    assert growth < 16 * MiB, f"server buffered {growth} bytes for readers that never read"
    for stream in streams:
        stream.abort(ResetCode.CANCEL)
    await assert_back_to_baseline(rig)
    await assert_healthy(other)


@pytest.mark.parametrize(
    "opening",
    [
        b"\x01",
        b"\x01\x01\x00\x00\x00",
        encode_preface() + encode_request_header("/t.S/Echo", CallKind.UNARY),
    ],
    ids=["preface", "half-header", "header-no-message"],
)
async def test_slowloris_streams_are_reaped(quic_rig: RigFactory, opening: bytes) -> None:
    """Streams opened and never finished: the header timeout (or, once a header came,
    the handler timeout) reaps them; the call table, streams and tasks go back to zero."""
    rig = await quic_rig(
        rpc_config=RPCServerConfig(header_timeout=0.5, handler_timeout=1.0),
        quic_config=QUICConfig(max_streams=64),
    )
    conn = await rig.dial()
    other = await rig.client()
    streams = []
    for _ in range(50):
        stream = await conn.open_stream()
        await stream.send(opening)
        streams.append(stream)
    answers = await asyncio.gather(*(read_answer(s) for s in streams))
    if opening.endswith(encode_request_header("/t.S/Echo", CallKind.UNARY)):
        assert {(a.kind, a.status) for a in answers} == {("trailer", Status.DEADLINE_EXCEEDED)}
    else:
        assert {(a.kind, a.code) for a in answers} == {("reset", ResetCode.PROTOCOL_ERROR)}
    assert rig.counters.calls.get("echo", 0) == 0
    for stream in streams:
        stream.abort(ResetCode.CANCEL)
    await assert_back_to_baseline(rig)
    await assert_healthy(other)
    await assert_healthy(RPCClient(conn))


async def test_vanished_peer_reaped_by_idle_timeout(
    quic_rig: RigFactory, udp_relay: RelayFactory
) -> None:
    """A client with calls in flight goes silent (its packets stop arriving): the idle
    timeout closes the connection, its calls are cancelled and everything is released."""
    rig = await quic_rig(quic_config=QUICConfig(idle_timeout=1.0, keepalive_interval=0.3))
    relay = await udp_relay(("127.0.0.1", rig.port))
    sock = await rig.new_socket()
    conn = await connect(
        sock,
        "127.0.0.1",
        relay.port,
        rig.pki.credentials(ca_verifier(rig.pki.root_pem), "c"),
        QUICConfig(idle_timeout=30.0, keepalive_interval=None),
    )
    client = RPCClient(conn)
    calls = [asyncio.ensure_future(client.unary("/t.S/Sleep", b"")) for _ in range(5)]
    await wait_for_condition(lambda: rig.counters.calls.get("sleep", 0) == 5)
    relay.forward_up = lambda index, data: False  # blackhole the client
    await wait_for_condition(lambda: not rig.server.connections, 10)
    await assert_back_to_baseline(rig)
    assert rig.rpc.active_calls == 0
    other = await rig.client()
    await assert_healthy(other)
    conn.abort()
    await asyncio.gather(*calls, return_exceptions=True)


# ------------------------------------------------------------------ amplification


async def _first_flight(
    rig: QUICRig, relay: UDPRelay, blackhole_after: int | None, retry: bool
) -> None:
    if blackhole_after is not None:
        relay.forward_up = lambda index, data: index < blackhole_after
    sock = await rig.new_socket()
    creds = rig.pki.credentials(ca_verifier(rig.pki.root_pem), "client")
    cfg = QUICConfig(
        handshake_timeout=2.0 if blackhole_after is not None else 10.0,
        retry=retry,
        max_datagram_size=1200,
    )
    try:
        conn = await connect(sock, "127.0.0.1", relay.port, creds, cfg)
    except HandshakeError:
        return
    conn.abort()


@pytest.mark.parametrize("retry", [False, True])
async def test_amplification_limit_before_validation(
    pki: PKI, quic_rig: RigFactory, udp_relay: RelayFactory, retry: bool
) -> None:
    """A client whose address cannot be validated (only its first datagram reaches the
    server): the server sends at most 3x the bytes it received to that address, even
    with a certificate chain far larger than that, across all its retransmissions."""
    key, chain = pki.rotated("server", rotations=16)  # a first flight of ~8 KB
    from quic_rpc.quic import TLSCredentials

    creds = TLSCredentials(private_key=key, chain=chain, verify=_accept_any)
    rig = await quic_rig(
        server_credentials=creds, quic_config=QUICConfig(retry=retry, handshake_timeout=2.0)
    )

    # reference: an honest handshake shows the server's flight exceeds 3x one Initial
    honest = await udp_relay(("127.0.0.1", rig.port))
    await _first_flight(rig, honest, None, retry)
    first_initial = len(honest.up[0])
    assert honest.bytes_down > 3 * first_initial * (2 if retry else 1)

    relay = await udp_relay(("127.0.0.1", rig.port))
    await _first_flight(rig, relay, 2 if retry else 1, retry)
    assert relay.bytes_up > 0
    assert relay.bytes_down <= 3 * relay.bytes_up, (relay.bytes_down, relay.bytes_up)
    if retry:
        # the first answer was a Retry (no server state), then a validated handshake
        assert len(relay.down[0]) < len(relay.up[0])
    await wait_for_condition(lambda: not rig.socket.connections, 10)
    assert rig.counters.total == 0


def _accept_any(chain: object) -> str:
    return "anyone"


async def test_stream_churn_leaks_nothing(quic_rig: RigFactory) -> None:
    """Thousands of streams opened and abandoned in every state (nothing sent, half a
    header, a full call reset mid-way): per-stream state is released — memory after a
    second round is not higher than after the first, and stream tables are empty."""
    rig = await quic_rig(rpc_config=RPCServerConfig(header_timeout=0.5, close_linger=0))
    conn = await rig.dial()
    client = RPCClient(conn)
    call = encode_preface() + encode_request_header("/t.S/Echo", CallKind.UNARY)

    async def churn(count: int) -> None:
        for i in range(count):
            stream = await conn.open_stream()
            kind = i % 3
            if kind == 1:
                await stream.send(call[:7])
            elif kind == 2:
                await stream.send(call + encode_message(b"x"))
            stream.abort(ResetCode.CANCEL)
            if i % 50 == 49:
                await assert_healthy(client)

    def sizes() -> tuple[int, int]:
        server_conn = rig.server.connections[0]
        return len(server_conn._engine._streams), len(server_conn._engine._consumed)

    await churn(300)
    await assert_back_to_baseline(rig)
    with traced() as peak:
        first = tracemalloc.get_traced_memory()[0]
        await churn(1500)
        await assert_back_to_baseline(rig)
        second = tracemalloc.get_traced_memory()[0]
        assert peak() < 8 * MiB
    assert second - first < 1 * MiB, f"{second - first} bytes kept after 1500 streams"
    await wait_for_condition(lambda: sizes() == (0, 0), 10)
