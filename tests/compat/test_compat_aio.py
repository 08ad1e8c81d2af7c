"""The compatibility suite, aio API: real grpc.aio over TCP+TLS and the shim over QUIC."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import AioEnv
from .test_compat_sync import DETAILS, ERROR_CODES, FOUR_MIB, REQUEST_SIZE, RESPONSE_SIZE, _x

pytestmark = pytest.mark.timeout(120)


async def _flag(entry: dict[str, Any], name: str) -> None:
    """Wait (up to 10 s) until the servicer sets ``entry[name]`` (a threading.Event)."""
    for _ in range(200):
        if entry[name].is_set():
            return
        await asyncio.sleep(0.05)


async def _aiter(items: list[Any]) -> Any:
    for item in items:
        yield item


async def test_unary(aio_env: AioEnv) -> None:
    reply = await aio_env.stub.Unary(aio_env.pb2.EchoRequest(payload=b"hello"), timeout=10)
    assert reply.payload == b"hello"


async def test_server_streaming(aio_env: AioEnv) -> None:
    call = aio_env.stub.ServerStream(aio_env.pb2.EchoRequest(payload=b"p", count=7))
    indexes = [r.index async for r in call]
    assert indexes == list(range(7))
    assert await call.code() is aio_env.g.StatusCode.OK


async def test_server_streaming_read(aio_env: AioEnv) -> None:
    call = aio_env.stub.ServerStream(aio_env.pb2.EchoRequest(count=2))
    first = await call.read()
    second = await call.read()
    assert (first.index, second.index) == (0, 1)
    assert await call.read() is aio_env.g.aio.EOF


async def test_client_streaming_iterator(aio_env: AioEnv) -> None:
    requests = [aio_env.pb2.EchoRequest(payload=b"x" * i) for i in range(1, 6)]
    reply = await aio_env.stub.ClientStream(_aiter(requests), timeout=10)
    assert reply.received_messages == 5
    reply = await aio_env.stub.ClientStream(iter(requests), timeout=10)
    assert reply.received_bytes == 15


async def test_client_streaming_write(aio_env: AioEnv) -> None:
    call = aio_env.stub.ClientStream(timeout=10)
    for i in range(3):
        await call.write(aio_env.pb2.EchoRequest(payload=b"w" * i))
    await call.done_writing()
    reply = await call
    assert reply.received_messages == 3
    assert reply.received_bytes == 3


async def test_bidi_read_write(aio_env: AioEnv) -> None:
    call = aio_env.stub.Bidi(timeout=10)
    for i in range(5):
        await call.write(aio_env.pb2.EchoRequest(payload=bytes([i])))
        reply = await call.read()
        assert reply.payload == bytes([i])
    await call.done_writing()
    assert await call.read() is aio_env.g.aio.EOF
    assert await call.code() is aio_env.g.StatusCode.OK


async def test_bidi_iterators(aio_env: AioEnv) -> None:
    requests = [aio_env.pb2.EchoRequest(payload=bytes([i])) for i in range(20)]
    call = aio_env.stub.Bidi(_aiter(requests), timeout=10)
    assert [r.payload async for r in call] == [bytes([i]) for i in range(20)]


async def test_large_messages_all_kinds(aio_env: AioEnv) -> None:
    pb2 = aio_env.pb2
    big = pb2.EchoRequest(payload=b"q" * REQUEST_SIZE, response_size=RESPONSE_SIZE)
    reply = await aio_env.stub.Unary(big, timeout=30)
    assert (reply.received_bytes, len(reply.payload)) == (REQUEST_SIZE, RESPONSE_SIZE)
    big_stream = pb2.EchoRequest(payload=b"q" * REQUEST_SIZE, response_size=RESPONSE_SIZE, count=3)
    sizes = [len(r.payload) async for r in aio_env.stub.ServerStream(big_stream, timeout=30)]
    assert sizes == [RESPONSE_SIZE] * 3
    reply = await aio_env.stub.ClientStream(_aiter([big, big]), timeout=30)
    assert reply.received_bytes == 2 * REQUEST_SIZE
    sizes = [len(r.payload) async for r in aio_env.stub.Bidi(_aiter([big, big]), timeout=30)]
    assert sizes == [RESPONSE_SIZE] * 2


async def test_default_receive_limits(aio_env: AioEnv) -> None:
    g = aio_env.g
    with pytest.raises(g.aio.AioRpcError) as info:
        await aio_env.stub.Unary(aio_env.pb2.EchoRequest(payload=b"z" * FOUR_MIB), timeout=30)
    assert info.value.code() is g.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(g.aio.AioRpcError) as info:
        await aio_env.stub.Unary(aio_env.pb2.EchoRequest(response_size=FOUR_MIB + 1), timeout=30)
    assert info.value.code() is g.StatusCode.RESOURCE_EXHAUSTED


async def test_metadata_echo(aio_env: AioEnv) -> None:
    metadata = (("x-text", "hello world"), ("x-data-bin", b"\x00\xff\x01\x80"))
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(payload=b"m"), metadata=metadata, timeout=10)
    assert (await call).payload == b"m"
    assert _x(await call.initial_metadata()) == list(metadata)
    assert _x(await call.trailing_metadata()) == [
        ("x-text-trailer", "hello world"),
        ("x-data-trailer-bin", b"\x00\xff\x01\x80"),
    ]
    assert isinstance(await call.initial_metadata(), aio_env.g.aio.Metadata)


async def test_metadata_echo_streaming(aio_env: AioEnv) -> None:
    metadata = (("x-key", "v"), ("x-raw-bin", bytes(range(256))))
    call = aio_env.stub.Bidi(_aiter([aio_env.pb2.EchoRequest(payload=b"1")]), metadata=metadata)
    assert _x(await call.initial_metadata()) == list(metadata)
    assert [r.payload async for r in call] == [b"1"]
    assert _x(await call.trailing_metadata()) == [
        ("x-key-trailer", "v"),
        ("x-raw-trailer-bin", bytes(range(256))),
    ]


@pytest.mark.parametrize("code_name", ERROR_CODES)
async def test_status_codes_round_trip(aio_env: AioEnv, code_name: str) -> None:
    g = aio_env.g
    with pytest.raises(g.RpcError) as info:
        await aio_env.stub.Unary(
            aio_env.pb2.EchoRequest(code_name=code_name, details=DETAILS), timeout=10
        )
    error = info.value
    assert isinstance(error, g.aio.AioRpcError)
    assert error.code() is getattr(g.StatusCode, code_name)
    assert error.details() == DETAILS


async def test_deadline_exceeded(aio_env: AioEnv) -> None:
    g = aio_env.g
    tag = "deadline"
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag), timeout=2.0)
    with pytest.raises(g.aio.AioRpcError) as info:
        await call
    assert info.value.code() is g.StatusCode.DEADLINE_EXCEEDED
    assert await call.code() is g.StatusCode.DEADLINE_EXCEEDED
    entry = aio_env.rec[tag]
    await _flag(entry, "done")
    assert entry.get("handler_cancelled") is True


async def test_client_cancel(aio_env: AioEnv) -> None:
    g = aio_env.g
    tag = "cancel"
    call = aio_env.stub.ServerStream(aio_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag))
    first = await call.read()
    assert first.index == -1
    assert call.cancel()
    assert call.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert await call.code() is g.StatusCode.CANCELLED
    entry = aio_env.rec[tag]
    await _flag(entry, "done")
    assert entry.get("handler_cancelled") is True


async def test_client_cancel_unary(aio_env: AioEnv) -> None:
    tag = "cancel-unary"
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag))
    entry = aio_env.rec[tag]
    await _flag(entry, "started")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _flag(entry, "done")
    assert entry.get("handler_cancelled") is True


async def test_unary_call_awaited_twice_and_concurrently(aio_env: AioEnv) -> None:
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(payload=b"again"), timeout=10)
    first, second = await asyncio.gather(call, call)
    assert first.payload == second.payload == b"again"
    assert (await call).payload == b"again"
    assert await call.code() is aio_env.g.StatusCode.OK


async def test_unary_error_raised_to_every_await(aio_env: AioEnv) -> None:
    g = aio_env.g
    call = aio_env.stub.Unary(
        aio_env.pb2.EchoRequest(code_name="NOT_FOUND", details="gone"), timeout=10
    )
    for _ in range(2):
        with pytest.raises(g.aio.AioRpcError) as info:
            await call
        assert info.value.code() is g.StatusCode.NOT_FOUND


async def test_cancelling_the_awaiting_task_cancels_the_unary_call(aio_env: AioEnv) -> None:
    g = aio_env.g
    tag = "cancel-awaiter"
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag))
    entry = aio_env.rec[tag]
    waiter = asyncio.ensure_future(_await(call))
    await _flag(entry, "started")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await call.code() is g.StatusCode.CANCELLED
    await _flag(entry, "done")
    assert entry.get("handler_cancelled") is True


async def _await(call: Any) -> Any:
    return await call


async def test_unknown_method_and_service(aio_env: AioEnv) -> None:
    g = aio_env.g
    for path in ("/compat.v1.Compat/NoSuchMethod", "/no.such.Service/Unary"):
        with pytest.raises(g.aio.AioRpcError) as info:
            await aio_env.channel.unary_unary(path)(b"", timeout=10)
        assert info.value.code() is g.StatusCode.UNIMPLEMENTED
        call = aio_env.channel.unary_stream(path)(b"", timeout=10)
        with pytest.raises(g.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() is g.StatusCode.UNIMPLEMENTED


async def test_interceptors_both_sides(make_aio_env: Any) -> None:
    env = await make_aio_env(server_interceptors=True, client_interceptors=True)
    g, pb2 = env.g, env.pb2
    call = env.stub.Unary(pb2.EchoRequest(payload=b"i"), timeout=10)
    assert (await call).payload == b"i"
    assert ("x-intercepted", "client") in _x(await call.initial_metadata())
    assert len([r async for r in env.stub.ServerStream(pb2.EchoRequest(count=2))]) == 2
    assert (await env.stub.ClientStream(_aiter([pb2.EchoRequest()]))).received_messages == 1
    call = env.stub.Bidi(_aiter([pb2.EchoRequest(payload=b"b")]))
    assert [r.payload async for r in call] == [b"b"]
    assert env.rec.methods == [
        "/compat.v1.Compat/Unary",
        "/compat.v1.Compat/ServerStream",
        "/compat.v1.Compat/ClientStream",
        "/compat.v1.Compat/Bidi",
    ]
    with pytest.raises(g.aio.AioRpcError) as info:
        await env.stub.Unary(pb2.EchoRequest(), metadata=(("x-deny", "yes"),), timeout=10)
    assert info.value.code() is g.StatusCode.PERMISSION_DENIED


async def test_abort_in_server_streaming(aio_env: AioEnv) -> None:
    g = aio_env.g
    call = aio_env.stub.ServerStream(
        aio_env.pb2.EchoRequest(count=5, abort_after=2, code_name="NOT_FOUND", details=DETAILS)
    )
    got = []
    with pytest.raises(g.aio.AioRpcError) as info:
        async for reply in call:
            got.append(reply.index)
    assert got == [0, 1]
    assert info.value.code() is g.StatusCode.NOT_FOUND
    assert info.value.details() == DETAILS
    assert await call.code() is g.StatusCode.NOT_FOUND
    assert await call.details() == DETAILS


async def test_abort_in_client_streaming(aio_env: AioEnv) -> None:
    g, pb2 = aio_env.g, aio_env.pb2
    requests = [pb2.EchoRequest(payload=b"a")] * 2 + [
        pb2.EchoRequest(abort_after=3, code_name="ABORTED", details="stop")
    ]
    with pytest.raises(g.aio.AioRpcError) as info:
        await aio_env.stub.ClientStream(_aiter(requests), timeout=10)
    assert info.value.code() is g.StatusCode.ABORTED


async def test_abort_in_bidi(aio_env: AioEnv) -> None:
    g, pb2 = aio_env.g, aio_env.pb2
    requests = [
        pb2.EchoRequest(payload=b"a"),
        pb2.EchoRequest(payload=b"b"),
        pb2.EchoRequest(abort_after=2, code_name="OUT_OF_RANGE", details="enough"),
    ]
    got = []
    with pytest.raises(g.aio.AioRpcError) as info:
        async for reply in aio_env.stub.Bidi(_aiter(requests), timeout=10):
            got.append(reply.payload)
    assert got == [b"a", b"b"]
    assert info.value.code() is g.StatusCode.OUT_OF_RANGE


async def test_channel_ready_and_context_manager(aio_env: AioEnv, pki: Any) -> None:
    g = aio_env.g
    async with g.aio.secure_channel(
        f"localhost:{aio_env.port}", g.ssl_channel_credentials(pki.ca_pem)
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = aio_env.protos.pb2_grpc.CompatStub(channel)
        assert (await stub.Unary(aio_env.pb2.EchoRequest(payload=b"r"), timeout=10)).payload == b"r"


async def test_call_done_callback(aio_env: AioEnv) -> None:
    seen: list[Any] = []
    call = aio_env.stub.Unary(aio_env.pb2.EchoRequest(payload=b"d"), timeout=10)
    call.add_done_callback(seen.append)
    await call
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [call]
    assert call.done()
