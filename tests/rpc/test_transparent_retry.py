"""Calls the server refused before processing them: CallRefusedError and the client's
transparent retry (``RPCClientConfig.transparent_retries``), over every transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from quic_rpc.rpc import (
    RawStream,
    ResetCode,
    RPCClient,
    RPCClientConfig,
    RPCError,
    RPCServer,
    ServerCallContext,
    Status,
    client_streaming,
    encode_preface,
    encode_response_header,
    raw,
    server_streaming,
    unary,
)
from quic_rpc.rpc.errors import CallRefusedError
from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    PeerInfo,
    StreamHandler,
    StreamOpener,
)

from .conftest import RPCTransport

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0  # generous bound for "this should happen", never a timing assertion


class Recorder:
    """The handlers of the test service; records what actually ran on the server."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.requests: list[bytes] = []

    async def echo(self, request: bytes, ctx: ServerCallContext) -> bytes:
        self.calls.append("echo")
        return request

    async def count(self, request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        self.calls.append("count")
        for i in range(int(request)):
            yield str(i).encode()

    async def total(self, requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
        self.calls.append("total")
        n = 0
        async for r in requests:
            self.requests.append(r)
            n += int(r)
        return str(n).encode()

    async def hang(self, request: bytes, ctx: ServerCallContext) -> bytes:
        self.calls.append("hang")
        await asyncio.Event().wait()
        return b""

    async def raw_echo(self, stream: RawStream, ctx: ServerCallContext) -> None:
        self.calls.append("raw")
        while data := await stream.receive():
            await stream.send(data)

    def manifest(self) -> dict[str, Any]:
        return {
            "/t.S/Echo": unary(self.echo),
            "/t.S/Count": server_streaming(self.count),
            "/t.S/Total": client_streaming(self.total),
            "/t.S/Hang": unary(self.hang),
            "/t.S/Raw": raw(self.raw_echo),
        }


class Refusing:
    """A stream handler in front of an RPC server that refuses the first ``n`` streams
    with REFUSED_STREAM, as a server closing its connection does."""

    def __init__(self, server: RPCServer, n: int = 1) -> None:
        self.server = server
        self.left = n
        self.streams = 0

    async def __call__(self, stream: ByteStream) -> None:
        self.streams += 1
        if self.left > 0:
            self.left -= 1
            stream.abort(ResetCode.REFUSED_STREAM)
            return
        await self.server.handle_stream(stream)


async def refusing_service(
    rpc_transport: RPCTransport, n: int = 1, **config: Any
) -> tuple[Recorder, Refusing, RPCClient]:
    rec = Recorder()
    server = RPCServer(rec.manifest())
    refusing = Refusing(server, n)
    opener = await rpc_transport.attach(refusing)
    client = RPCClient(opener, config=RPCClientConfig(**config))
    return rec, refusing, client


async def test_a_refused_unary_call_is_retried_transparently(
    rpc_transport: RPCTransport,
) -> None:
    rec, refusing, client = await refusing_service(rpc_transport)
    call = client.unary("/t.S/Echo", b"hi")
    assert await asyncio.wait_for(call, WAIT) == b"hi"
    assert call.attempts == 2
    assert refusing.streams == 2
    assert rec.calls == ["echo"]  # it ran once, on the second stream
    assert await call.code() is Status.OK


async def test_a_refused_server_streaming_call_is_retried(rpc_transport: RPCTransport) -> None:
    rec, refusing, client = await refusing_service(rpc_transport)
    call = client.server_streaming("/t.S/Count", b"3")
    got = [r async for r in call]
    assert got == [b"0", b"1", b"2"]
    assert call.attempts == 2 and refusing.streams == 2 and rec.calls == ["count"]


async def test_without_retries_the_caller_gets_the_refusal(rpc_transport: RPCTransport) -> None:
    rec, refusing, client = await refusing_service(rpc_transport, transparent_retries=0)
    call = client.unary("/t.S/Echo", b"hi")
    with pytest.raises(CallRefusedError) as info:
        await asyncio.wait_for(call, WAIT)
    # an UNAVAILABLE RPCError to anyone who does not care about the difference
    assert isinstance(info.value, RPCError)
    assert info.value.status is Status.UNAVAILABLE
    assert await call.code() is Status.UNAVAILABLE
    assert call.attempts == 1 and refusing.streams == 1 and rec.calls == []
    # the next call is served (the server refused only one stream)
    assert await asyncio.wait_for(client.unary("/t.S/Echo", b"again"), WAIT) == b"again"


async def test_retries_are_bounded(rpc_transport: RPCTransport) -> None:
    rec, refusing, client = await refusing_service(rpc_transport, n=5, transparent_retries=2)
    call = client.unary("/t.S/Echo", b"hi")
    with pytest.raises(CallRefusedError):
        await asyncio.wait_for(call, WAIT)
    assert call.attempts == 3 and refusing.streams == 3 and rec.calls == []


async def test_a_refusal_after_a_response_byte_is_not_retried(
    rpc_transport: RPCTransport,
) -> None:
    """The server answered (its response header arrived), then reset REFUSED_STREAM:
    the call may have run, so it is not sent again."""
    seen = asyncio.Event()
    streams: list[ByteStream] = []

    async def answer_then_refuse(stream: ByteStream) -> None:
        streams.append(stream)
        await stream.receive()  # the request
        await stream.send(encode_preface() + encode_response_header([("x-step", "1")]))
        await seen.wait()
        stream.abort(ResetCode.REFUSED_STREAM)

    client = RPCClient(await rpc_transport.attach(answer_then_refuse))
    call = client.unary("/t.S/Echo", b"hi")
    assert (await asyncio.wait_for(call.initial_metadata(), WAIT))["x-step"] == "1"
    seen.set()
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(call, WAIT)
    assert not isinstance(info.value, CallRefusedError)
    assert info.value.status is Status.UNAVAILABLE
    assert call.attempts == 1 and len(streams) == 1


async def test_a_client_streaming_call_is_not_replayed(rpc_transport: RPCTransport) -> None:
    rec, refusing, client = await refusing_service(rpc_transport)
    consumed: list[bytes] = []

    async def requests() -> AsyncIterator[bytes]:
        for r in (b"1", b"2", b"3"):
            consumed.append(r)
            yield r

    call = client.client_streaming("/t.S/Total", requests())
    with pytest.raises(CallRefusedError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.status is Status.UNAVAILABLE
    assert call.attempts == 1 and refusing.streams == 1
    assert rec.calls == [] and rec.requests == []
    # a fresh call (with its own requests) goes through
    assert await asyncio.wait_for(client.client_streaming("/t.S/Total", [b"4"]), WAIT) == b"4"


async def test_the_deadline_covers_the_retry(rpc_transport: RPCTransport) -> None:
    rec, refusing, client = await refusing_service(rpc_transport)
    call = client.unary("/t.S/Hang", b"", timeout=0.3)
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert not isinstance(info.value, CallRefusedError)
    assert call.attempts == 2 and refusing.streams == 2 and rec.calls == ["hang"]


class FlakyOpener:
    """Wraps an opener: its first ``open_stream`` fails as a closing connection's does,
    or (``block``) the second one never returns; records ``stream_refused`` calls."""

    def __init__(self, inner: StreamOpener, *, fail_first: bool = False, block: bool = False):
        self.inner = inner
        self.fail_first = fail_first
        self.block = block
        self.opens = 0
        self.refused: list[tuple[ByteStream, BaseException]] = []
        self.vouch = False

    async def open_stream(self) -> ByteStream:
        self.opens += 1
        if self.fail_first and self.opens == 1:
            raise ConnectionLostError("connection closing", error_code=0)
        if self.block and self.opens == 2:
            await asyncio.Event().wait()
        return await self.inner.open_stream()

    def stream_refused(self, stream: ByteStream, error: BaseException) -> bool:
        self.refused.append((stream, error))
        return self.vouch


async def test_the_deadline_covers_a_retry_waiting_for_its_stream(
    rpc_transport: RPCTransport,
) -> None:
    rec = Recorder()
    refusing = Refusing(RPCServer(rec.manifest()))
    opener = FlakyOpener(await rpc_transport.attach(refusing), block=True)
    client = RPCClient(opener)
    call = client.unary("/t.S/Echo", b"x", timeout=0.3)
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert opener.opens == 2 and rec.calls == []
    # the opener heard which stream was refused
    assert [type(e).__name__ for _, e in opener.refused] == ["StreamResetError"]


@pytest.mark.parametrize("method", ["/t.S/Echo", "/t.S/Total", "/t.S/Raw"])
async def test_a_stream_that_cannot_be_opened_is_retried_for_every_kind(
    rpc_transport: RPCTransport, method: str
) -> None:
    rec = Recorder()
    server = RPCServer(rec.manifest())
    opener = FlakyOpener(await rpc_transport.attach(server.handle_stream), fail_first=True)
    client = RPCClient(opener)
    if method == "/t.S/Raw":
        async with client.raw(method) as call:
            await call.send(b"ping")
            assert await asyncio.wait_for(call.receive(), WAIT) == b"ping"
            await call.send_eof()
    elif method == "/t.S/Total":
        assert await asyncio.wait_for(client.client_streaming(method, [b"2", b"3"]), WAIT) == b"5"
    else:
        assert await asyncio.wait_for(client.unary(method, b"e"), WAIT) == b"e"
    assert opener.opens == 2


async def test_a_stream_that_cannot_be_opened_without_retries(
    rpc_transport: RPCTransport,
) -> None:
    rec = Recorder()
    server = RPCServer(rec.manifest())
    opener = FlakyOpener(await rpc_transport.attach(server.handle_stream), fail_first=True)
    client = RPCClient(opener, config=RPCClientConfig(transparent_retries=0))
    call = client.unary("/t.S/Echo", b"e")
    with pytest.raises(CallRefusedError, match="cannot open a stream"):
        await asyncio.wait_for(call, WAIT)
    assert call.attempts == 0 and rec.calls == []


class _LostStream:
    """A stream whose connection is lost before anything of the response arrives."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.sent = b""
        self.aborted: int | None = None

    @property
    def peer_info(self) -> PeerInfo:
        return PeerInfo(transport="fake")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise ConnectionLostError("connection closed by the peer", error_code=self.code)

    async def send(self, data: bytes) -> None:
        self.sent += data

    async def send_eof(self) -> None:
        pass

    def reset(self, code: int) -> None:
        self.aborted = code

    def stop_sending(self, code: int) -> None:
        self.aborted = code

    def abort(self, code: int) -> None:
        self.aborted = code

    async def aclose(self) -> None:
        pass


class LosingOpener(FlakyOpener):
    """First stream: its connection is lost (with ``code``); then the real transport."""

    def __init__(self, inner: StreamOpener, code: int) -> None:
        super().__init__(inner)
        self.lost = _LostStream(code)

    async def open_stream(self) -> ByteStream:
        self.opens += 1
        if self.opens == 1:
            return self.lost
        return await self.inner.open_stream()


@pytest.mark.parametrize("vouch", [True, False])
async def test_the_opener_decides_whether_a_lost_connection_refused_the_call(
    rpc_transport: RPCTransport, vouch: bool
) -> None:
    """A lost connection is a refusal only if the opener knows the peer did not process
    the stream (e.g. it closed the connection saying so)."""
    rec = Recorder()
    server = RPCServer(rec.manifest())
    handler: StreamHandler = server.handle_stream
    opener = LosingOpener(await rpc_transport.attach(handler), code=0x2)
    opener.vouch = vouch
    client = RPCClient(opener)
    call = client.unary("/t.S/Echo", b"e")
    if vouch:
        assert await asyncio.wait_for(call, WAIT) == b"e"
        assert call.attempts == 2 and rec.calls == ["echo"]
    else:
        with pytest.raises(RPCError) as info:
            await asyncio.wait_for(call, WAIT)
        assert not isinstance(info.value, CallRefusedError)
        assert info.value.status is Status.UNAVAILABLE
        assert call.attempts == 1 and rec.calls == []
    assert len(opener.refused) == 1
    stream, error = opener.refused[0]
    assert stream is opener.lost and isinstance(error, ConnectionLostError)
    assert opener.lost.sent  # the header went out on the lost stream


def test_transparent_retries_is_validated() -> None:
    assert RPCClientConfig().transparent_retries == 1
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="transparent_retries"):
            RPCClientConfig(transparent_retries=bad)  # type: ignore[arg-type]
