"""The RPC behaviour suite: every test runs over every registered transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from quic_rpc.rpc import (
    CallDetails,
    CallKind,
    CallProtocol,
    DuplexCall,
    JSONSerializer,
    Metadata,
    Middleware,
    Page,
    PageRequest,
    Proceed,
    RawStream,
    ResetCode,
    Role,
    RPCClientConfig,
    RPCError,
    RPCServer,
    RPCServerConfig,
    ServerCallContext,
    ServerStreamingCall,
    Status,
    UnaryCall,
    client_streaming,
    duplex,
    iterate_pages,
    paginate,
    raw,
    server_streaming,
    unary,
)
from quic_rpc.streams import ByteStream, StreamResetError

from .conftest import RPCTransport

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0  # generous bound for "this should happen", never a timing assertion


async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
    return request


async def count(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield str(i).encode()


async def total(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
    n = 0
    async for r in requests:
        n += int(r)
    return str(n).encode()


async def shout(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r.upper()


async def shout_with_write(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> None:
    async for r in requests:
        await ctx.write(r.upper())


async def raw_upper(stream: RawStream, ctx: ServerCallContext) -> None:
    while data := await stream.receive():
        await stream.send(data.upper())


BASIC = {
    "/t.S/Echo": unary(echo),
    "/t.S/Count": server_streaming(count),
    "/t.S/Total": client_streaming(total),
    "/t.S/Shout": duplex(shout),
    "/t.S/ShoutWrite": duplex(shout_with_write),
    "/t.S/Raw": raw(raw_upper),
}


# ------------------------------------------------------------------ five kinds


async def test_unary(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    assert await client.unary("/t.S/Echo", b"hello") == b"hello"
    assert await client.unary("/t.S/Echo", b"") == b""
    call = client.unary("/t.S/Echo", b"x")
    assert await call == b"x"
    assert await call.code() is Status.OK
    assert call.done()


async def test_server_streaming(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    got = [m async for m in client.server_streaming("/t.S/Count", b"100")]
    assert got == [str(i).encode() for i in range(100)]
    assert [m async for m in client.server_streaming("/t.S/Count", b"0")] == []


async def test_client_streaming_from_iterable_and_writes(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    assert await client.client_streaming("/t.S/Total", [b"1", b"2", b"3"]) == b"6"

    async def gen() -> AsyncIterator[bytes]:
        for i in range(10):
            yield str(i).encode()

    assert await client.client_streaming("/t.S/Total", gen()) == b"45"
    call = client.client_streaming("/t.S/Total")
    for i in range(5):
        await call.write(str(i).encode())
    await call.done_writing()
    assert await call == b"10"


@pytest.mark.parametrize("method", ["/t.S/Shout", "/t.S/ShoutWrite"])
async def test_duplex_interleaved(rpc_transport: RPCTransport, method: str) -> None:
    _, client = await rpc_transport.serve(BASIC)
    call = client.duplex(method)
    for word in (b"a", b"bc", b"def"):
        await call.write(word)
        assert await call.read() == word.upper()
    await call.done_writing()
    assert await call.read() is None
    assert await call.code() is Status.OK
    assert [m async for m in client.duplex(method, [b"x", b"y"])] == [b"X", b"Y"]


async def test_raw_call(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    payload = bytes(range(256)) * 1000
    async with client.raw("/t.S/Raw") as call:

        async def writer() -> None:
            for i in range(0, len(payload), 7000):
                await call.send(payload[i : i + 7000])
            await call.send_eof()

        task = asyncio.create_task(writer())
        received = bytearray()
        while data := await call.receive():
            received += data
        await task
    assert bytes(received) == payload.upper()
    assert call.status is Status.OK


async def test_raw_handler_error_status_reaches_client(rpc_transport: RPCTransport) -> None:
    async def refuse_later(stream: RawStream, ctx: ServerCallContext) -> None:
        await stream.send(b"partial")
        raise RPCError(Status.PERMISSION_DENIED, "no more")

    _, client = await rpc_transport.serve({"/r": raw(refuse_later)})
    received = b""
    async with client.raw("/r") as call:
        with pytest.raises(RPCError) as info:
            while data := await call.receive():
                received += data
    assert info.value.status is Status.PERMISSION_DENIED
    # a reset may discard data the client had not read yet (QUIC/TCP reset semantics)
    assert b"partial".startswith(received)


async def test_raw_unknown_method(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    async with client.raw("/t.S/Nope") as call:
        with pytest.raises(RPCError) as info:
            await call.receive()
    assert info.value.status is Status.UNIMPLEMENTED


async def test_many_concurrent_calls_on_one_connection(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    results = await asyncio.gather(*(client.unary("/t.S/Echo", str(i).encode()) for i in range(50)))
    assert results == [str(i).encode() for i in range(50)]


# -------------------------------------------------------------------- metadata


async def test_metadata_both_directions(rpc_transport: RPCTransport) -> None:
    seen: list[Metadata] = []

    async def handler(request: bytes, ctx: ServerCallContext) -> bytes:
        seen.append(ctx.invocation_metadata)
        await ctx.send_initial_metadata([("server-initial", "yes"), ("blob-bin", b"\x00\xff")])
        ctx.set_trailing_metadata({"server-trailing": "done"})
        return request

    async def streamer(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        await ctx.send_initial_metadata({"k": "v"})
        yield b"1"
        ctx.add_trailing_metadata("t-bin", b"\x01")

    _, client = await rpc_transport.serve({"/m": unary(handler), "/s": server_streaming(streamer)})
    md: list[tuple[str, str | bytes]] = [
        ("user", "alice"),
        ("user", "bob"),
        ("key-bin", b"\x00\x01\xfe"),
        ("empty", ""),
    ]
    call = client.unary("/m", b"r", metadata=md)
    assert await call == b"r"
    assert list(seen[0]) == md
    assert seen[0].get_all("user") == ["alice", "bob"]
    assert list(await call.initial_metadata()) == [
        ("server-initial", "yes"),
        ("blob-bin", b"\x00\xff"),
    ]
    assert list(await call.trailing_metadata()) == [("server-trailing", "done")]

    scall = client.server_streaming("/s", b"")
    assert list(await scall.initial_metadata()) == [("k", "v")]
    assert [m async for m in scall] == [b"1"]
    assert list(await scall.trailing_metadata()) == [("t-bin", b"\x01")]


async def test_peer_info_and_deadline_visible_to_handler(rpc_transport: RPCTransport) -> None:
    seen: list[ServerCallContext] = []

    async def handler(request: bytes, ctx: ServerCallContext) -> bytes:
        seen.append(ctx)
        remaining = ctx.time_remaining()
        assert remaining is not None and 0 < remaining <= 30
        return b""

    _, client = await rpc_transport.serve({"/p": unary(handler)})
    await client.unary("/p", b"", timeout=30)
    assert seen[0].peer_info is not None
    assert seen[0].peer_info.transport
    assert seen[0].method == "/p"
    assert seen[0].kind is CallKind.UNARY


# ------------------------------------------------------------ statuses / errors

DETAILS = [
    "",
    "plain",
    "  leading and trailing whitespace \t\r\n ",
    "ünïcödé - ✓ 中文 😀 \U0001f680 \U0010fffd",
    "\x00control\x7f",
]


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
async def test_every_status_round_trips(rpc_transport: RPCTransport, status: Status) -> None:
    async def fail(request: bytes, ctx: ServerCallContext) -> bytes:
        detail = DETAILS[int(request)]
        raise RPCError(status, detail, [("why", "because"), ("x-bin", b"\x00")], b"\x08\x01rich")

    _, client = await rpc_transport.serve({"/f": unary(fail)})
    for i, detail in enumerate(DETAILS):
        call = client.unary("/f", str(i).encode())
        with pytest.raises(RPCError) as info:
            await call
        err = info.value
        assert err.status is status
        assert err.details == detail
        assert list(err.trailing_metadata) == [("why", "because"), ("x-bin", b"\x00")]
        assert err.rich_details == b"\x08\x01rich"
        assert await call.code() is status
        assert await call.details() == detail


async def test_abort_and_set_status(rpc_transport: RPCTransport) -> None:
    async def aborts(request: bytes, ctx: ServerCallContext) -> bytes:
        ctx.abort(Status.NOT_FOUND, "no such thing")

    async def sets(request: bytes, ctx: ServerCallContext) -> bytes:
        ctx.set_status(Status.FAILED_PRECONDITION, "not now")
        return b"ignored"

    _, client = await rpc_transport.serve({"/a": unary(aborts), "/s": unary(sets)})
    with pytest.raises(RPCError) as info:
        await client.unary("/a", b"")
    assert (info.value.status, info.value.details) == (Status.NOT_FOUND, "no such thing")
    with pytest.raises(RPCError) as info:
        await client.unary("/s", b"")
    assert (info.value.status, info.value.details) == (Status.FAILED_PRECONDITION, "not now")


async def test_unexpected_exception_is_internal_without_details(
    rpc_transport: RPCTransport,
) -> None:
    async def broken(request: bytes, ctx: ServerCallContext) -> bytes:
        raise KeyError("secret-internal-name")

    _, client = await rpc_transport.serve({"/b": unary(broken)})
    with pytest.raises(RPCError) as info:
        await client.unary("/b", b"")
    assert info.value.status is Status.INTERNAL
    assert "secret-internal-name" not in info.value.details
    assert "KeyError" not in info.value.details


async def test_expose_exception_details(rpc_transport: RPCTransport) -> None:
    async def broken(request: bytes, ctx: ServerCallContext) -> bytes:
        raise ValueError("visible detail")

    _, client = await rpc_transport.serve({"/b": unary(broken)}, expose_exception_details=True)
    with pytest.raises(RPCError) as info:
        await client.unary("/b", b"")
    assert info.value.status is Status.INTERNAL
    assert "ValueError" in info.value.details and "visible detail" in info.value.details


async def test_unknown_method_and_wrong_kind(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Missing", b"")
    assert info.value.status is Status.UNIMPLEMENTED
    with pytest.raises(RPCError) as info:
        async for _ in client.server_streaming("/t.S/Missing", b""):
            pass
    assert info.value.status is Status.UNIMPLEMENTED
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Count", b"1")
    assert info.value.status is Status.UNIMPLEMENTED
    assert await client.unary("/t.S/Echo", b"still fine") == b"still fine"


async def test_serialization_errors(rpc_transport: RPCTransport) -> None:
    async def handler(request: Any, ctx: ServerCallContext) -> Any:
        return {"got": request}

    _, client = await rpc_transport.serve(
        {"/j": unary(handler, request=JSONSerializer(), response=JSONSerializer())}
    )
    ser = JSONSerializer()
    assert await client.unary(
        "/j", [1, "two"], request_serializer=ser.serialize, response_deserializer=ser.deserialize
    ) == {"got": [1, "two"]}
    with pytest.raises(RPCError) as info:
        await client.unary("/j", b"{not json")
    assert info.value.status is Status.INTERNAL


# ------------------------------------------------- deadlines and cancellation


async def test_deadline_exceeded_cancels_sleeping_handler(rpc_transport: RPCTransport) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    signalled = asyncio.Event()

    async def sleeper(request: bytes, ctx: ServerCallContext) -> bytes:
        ctx.cancelled.add_done_callback(lambda _signal: signalled.set())
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    _, client = await rpc_transport.serve({"/sleep": unary(sleeper)})
    with pytest.raises(RPCError) as info:
        await client.unary("/sleep", b"", timeout=0.2)
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert started.is_set()
    await asyncio.wait_for(cancelled.wait(), WAIT)
    await asyncio.wait_for(signalled.wait(), WAIT)


async def test_server_side_handler_timeout(rpc_transport: RPCTransport) -> None:
    cancelled = asyncio.Event()

    async def sleeper(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        yield b"first"
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    _, client = await rpc_transport.serve({"/sleep": server_streaming(sleeper, timeout=0.2)})
    call = client.server_streaming("/sleep", b"")
    assert await call.read() == b"first"
    with pytest.raises(RPCError) as info:
        await call.read()
    assert info.value.status is Status.DEADLINE_EXCEEDED
    await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_client_cancel_mid_stream_reaches_handler(rpc_transport: RPCTransport) -> None:
    cancelled = asyncio.Event()
    reasons: list[BaseException | None] = []

    async def forever(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        i = 0
        try:
            while True:
                yield str(i).encode()
                i += 1
                await asyncio.sleep(0.001)
        finally:
            reasons.append(ctx.cancelled.cause)
            cancelled.set()

    _, client = await rpc_transport.serve({"/forever": server_streaming(forever)})
    call = client.server_streaming("/forever", b"")
    assert await call.read() == b"0"
    assert await call.read() == b"1"
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert call.cancelled()
    assert await call.code() is Status.CANCELLED
    await asyncio.wait_for(cancelled.wait(), WAIT)
    assert reasons[0] is not None


async def test_task_cancel_on_unary_reaches_handler(rpc_transport: RPCTransport) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def sleeper(request: bytes, ctx: ServerCallContext) -> bytes:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return b""

    _, client = await rpc_transport.serve({"/sleep": unary(sleeper), **BASIC})

    async def caller() -> bytes:
        result: bytes = await client.unary("/sleep", b"")
        return result

    task = asyncio.create_task(caller())
    await asyncio.wait_for(started.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), WAIT)
    assert await client.unary("/t.S/Echo", b"after") == b"after"


async def test_duplex_cancel_while_handler_waits_for_requests(
    rpc_transport: RPCTransport,
) -> None:
    cancelled = asyncio.Event()

    async def waiter(
        requests: AsyncIterator[bytes], ctx: ServerCallContext
    ) -> AsyncIterator[bytes]:
        try:
            async for r in requests:
                yield r
        finally:
            cancelled.set()

    _, client = await rpc_transport.serve({"/d": duplex(waiter)})
    call = client.duplex("/d")
    await call.write(b"one")
    assert await call.read() == b"one"
    call.cancel()
    await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_shutdown_cancels_in_flight_handlers(rpc_transport: RPCTransport) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def sleeper(request: bytes, ctx: ServerCallContext) -> bytes:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return b""

    server, client = await rpc_transport.serve({"/sleep": unary(sleeper), **BASIC})
    call_task = asyncio.ensure_future(client.unary("/sleep", b""))
    await asyncio.wait_for(started.wait(), WAIT)
    await server.stop(grace=0.05)
    with pytest.raises(RPCError) as info:
        await call_task
    assert info.value.status is Status.UNAVAILABLE
    assert cancelled.is_set()
    assert server.active_calls == 0
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", b"")
    assert info.value.status is Status.UNAVAILABLE


async def test_shutdown_grace_lets_calls_finish(rpc_transport: RPCTransport) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(request: bytes, ctx: ServerCallContext) -> bytes:
        started.set()
        await release.wait()
        return b"finished"

    server, client = await rpc_transport.serve({"/slow": unary(slow)})
    call_task = asyncio.ensure_future(client.unary("/slow", b""))
    await asyncio.wait_for(started.wait(), WAIT)
    stop_task = asyncio.create_task(server.stop(grace=WAIT))
    await asyncio.sleep(0)
    release.set()
    assert await call_task == b"finished"
    await stop_task


# ---------------------------------------------------------------- limits


async def test_oversized_request_is_resource_exhausted_connection_usable(
    rpc_transport: RPCTransport,
) -> None:
    _, client = await rpc_transport.serve(BASIC)
    big = b"x" * (4 * 1024 * 1024 + 1)
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", big)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    with pytest.raises(RPCError) as info:
        await client.client_streaming("/t.S/Total", [b"1", big])
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert await client.unary("/t.S/Echo", b"ok") == b"ok"
    exactly = b"y" * (4 * 1024 * 1024)
    assert await client.unary("/t.S/Echo", exactly) == exactly


async def test_oversized_response_and_send_limits(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(
        BASIC,
        server_config=RPCServerConfig(max_send_message_size=1000),
        client_config=RPCClientConfig(max_receive_message_size=100, max_send_message_size=2000),
    )
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", b"z" * 500)  # server sends it, client refuses it
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", b"z" * 1500)  # server refuses to send it
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", b"z" * 2500)  # client refuses to send it
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert await client.unary("/t.S/Echo", b"small") == b"small"


async def test_concurrent_call_limit_per_connection(rpc_transport: RPCTransport) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def hold(request: bytes, ctx: ServerCallContext) -> bytes:
        started.set()
        await release.wait()
        return b"held"

    _, client = await rpc_transport.serve(
        {"/hold": unary(hold), **BASIC},
        server_config=RPCServerConfig(max_concurrent_calls_per_connection=1),
    )
    first = asyncio.ensure_future(client.unary("/hold", b""))
    await asyncio.wait_for(started.wait(), WAIT)
    with pytest.raises(RPCError) as info:
        await client.unary("/t.S/Echo", b"")
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    release.set()
    assert await first == b"held"
    assert await client.unary("/t.S/Echo", b"again") == b"again"


# ---------------------------------------------------------------- pagination


async def test_pagination_returns_every_item_once(rpc_transport: RPCTransport) -> None:
    items = list(range(253))
    json = JSONSerializer()

    async def list_items(request: Any, ctx: ServerCallContext) -> Any:
        page = await paginate(items, PageRequest.from_dict(request))
        return page.to_dict()

    _, client = await rpc_transport.serve({"/list": unary(list_items, request=json, response=json)})

    async def fetch(page_request: PageRequest) -> Page[int]:
        raw_page = await client.unary(
            "/list",
            page_request.to_dict(),
            request_serializer=json.serialize,
            response_deserializer=json.deserialize,
        )
        return Page.from_dict(raw_page)

    got = [i async for i in iterate_pages(fetch, page_size=10)]
    assert got == items
    got_one_page = [i async for i in iterate_pages(fetch, page_size=1000)]
    assert got_one_page == items


# ---------------------------------------------------------------- middleware


class AuthMiddleware(Middleware):
    def __init__(self) -> None:
        self.received: list[Any] = []
        self.sent: list[Any] = []
        self.done: list[tuple[str, Status]] = []

    async def intercept(self, call: CallDetails, proceed: Proceed) -> None:
        if call.metadata.get("authorization") != "Bearer good":
            raise RPCError(Status.UNAUTHENTICATED, "bad token")
        call.metadata.add("user", "alice")
        await proceed(call)

    def on_receive(self, call: CallDetails, message: Any) -> Any:
        self.received.append(message)
        return message

    def on_send(self, call: CallDetails, message: Any) -> Any:
        self.sent.append(message)
        return message + b"!"

    def on_done(self, call: CallDetails, status: Status, details: str) -> None:
        self.done.append((call.method, status))


class TokenMiddleware(Middleware):
    def __init__(self, token: str) -> None:
        self.token = token
        self.done: list[Status] = []
        self.received: list[Any] = []

    async def intercept(self, call: CallDetails, proceed: Proceed) -> None:
        call.metadata.add("authorization", f"Bearer {self.token}")
        await proceed(call)

    def on_receive(self, call: CallDetails, message: Any) -> Any:
        self.received.append(message)
        return message

    def on_done(self, call: CallDetails, status: Status, details: str) -> None:
        self.done.append(status)


class ShortCircuit(Middleware):
    async def intercept(self, call: CallDetails, proceed: Proceed) -> None:
        if call.method == "/blocked":
            raise RPCError(Status.PERMISSION_DENIED, "blocked by client policy")
        await proceed(call)


async def test_middleware_both_sides(rpc_transport: RPCTransport) -> None:
    users: list[Any] = []

    async def whoami(request: bytes, ctx: ServerCallContext) -> bytes:
        users.append(ctx.invocation_metadata.get("user"))
        return request

    server_mw = AuthMiddleware()
    good = TokenMiddleware("good")
    _, client = await rpc_transport.serve(
        {"/who": unary(whoami), "/count": server_streaming(count)},
        server_middleware=[server_mw],
        client_middleware=[ShortCircuit(), good],
    )
    assert await client.unary("/who", b"hi") == b"hi!"
    assert users == ["alice"]
    assert server_mw.received == [b"hi"] and server_mw.sent == [b"hi"]
    assert good.received == [b"hi!"]
    assert [m async for m in client.server_streaming("/count", b"2")] == [b"0!", b"1!"]
    assert server_mw.done == [("/who", Status.OK), ("/count", Status.OK)]
    assert good.done == [Status.OK, Status.OK]

    with pytest.raises(RPCError) as info:
        await client.unary("/blocked", b"")
    assert info.value.status is Status.PERMISSION_DENIED

    bad_client = type(client)(client.opener, middleware=[TokenMiddleware("bad")])
    with pytest.raises(RPCError) as info:
        await bad_client.unary("/who", b"")
    assert info.value.status is Status.UNAUTHENTICATED
    assert server_mw.done[-1] == ("/who", Status.UNAUTHENTICATED)


# ------------------------------------------------------- helpers and hostile peers


async def test_method_callable_and_client_context(rpc_transport: RPCTransport) -> None:
    _, client = await rpc_transport.serve(BASIC)
    echo_method = client.method("/t.S/Echo", CallKind.UNARY, bytes, bytes.decode)
    call = echo_method(b"abc", timeout=30)
    assert isinstance(call, UnaryCall)
    assert await call == "abc"
    assert call.context.deadline is not None
    remaining = call.time_remaining()
    assert remaining is not None and remaining <= 30
    assert call.context.peer_info is not None
    counter = client.method("/t.S/Count", CallKind.SERVER_STREAMING)
    scall = counter(b"3")
    assert isinstance(scall, ServerStreamingCall)
    assert [m async for m in scall] == [b"0", b"1", b"2"]
    shout_method = client.method("/t.S/Shout", CallKind.DUPLEX)
    dcall = shout_method([b"q"])
    assert isinstance(dcall, DuplexCall)
    assert [m async for m in dcall] == [b"Q"]


async def test_client_side_cancellation_signal(rpc_transport: RPCTransport) -> None:
    async def sleeper(request: bytes, ctx: ServerCallContext) -> bytes:
        await asyncio.sleep(3600)
        return b""

    _, client = await rpc_transport.serve({"/sleep": unary(sleeper)})
    call = client.unary("/sleep", b"", timeout=0.1)
    fired: list[BaseException | None] = []
    call.context.cancelled.add_done_callback(lambda signal: fired.append(signal.cause))
    with pytest.raises(RPCError):
        await call
    assert call.context.cancelled.is_set()
    assert isinstance(fired[0], RPCError) and fired[0].status is Status.DEADLINE_EXCEEDED


async def test_raw_call_deadline(rpc_transport: RPCTransport) -> None:
    handler_cancelled = asyncio.Event()

    async def silent(stream: RawStream, ctx: ServerCallContext) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            handler_cancelled.set()

    _, client = await rpc_transport.serve({"/silent": raw(silent)})
    async with client.raw("/silent", timeout=0.2) as call:
        with pytest.raises(RPCError) as info:
            await call.receive()
    assert info.value.status is Status.DEADLINE_EXCEEDED
    await asyncio.wait_for(handler_cancelled.wait(), WAIT)


async def test_garbage_stream_is_reset_with_protocol_error(rpc_transport: RPCTransport) -> None:
    server = RPCServer(BASIC)
    opener = await rpc_transport.attach(server.handle_stream)
    stream = await opener.open_stream()
    await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(StreamResetError) as info:
        while await stream.receive():
            pass
    assert info.value.code == ResetCode.PROTOCOL_ERROR
    await stream.aclose()
    await server.stop(0)


async def test_silent_stream_hits_header_timeout(rpc_transport: RPCTransport) -> None:
    server = RPCServer(BASIC, config=RPCServerConfig(header_timeout=0.1))
    opener = await rpc_transport.attach(server.handle_stream)
    stream = await opener.open_stream()
    await stream.send(b"\x01\x01\x00")  # the preface and a partial frame header, then silence
    with pytest.raises(StreamResetError) as info:
        await asyncio.wait_for(stream.receive(), WAIT)
    assert info.value.code == ResetCode.PROTOCOL_ERROR
    await stream.aclose()
    await server.stop(0)


async def test_messages_before_an_error_are_delivered(rpc_transport: RPCTransport) -> None:
    async def then_fail(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        for i in range(3):
            yield str(i).encode()
        raise RPCError(Status.DATA_LOSS, "gone")

    _, client = await rpc_transport.serve({"/f": server_streaming(then_fail)})
    got: list[bytes] = []
    with pytest.raises(RPCError) as info:
        async for message in client.server_streaming("/f", b""):
            got.append(message)
    assert got == [b"0", b"1", b"2"]
    assert info.value.status is Status.DATA_LOSS


async def test_raw_call_and_raw_stream_are_byte_streams(rpc_transport: RPCTransport) -> None:
    seen: list[bool] = []

    async def check(stream: RawStream, ctx: ServerCallContext) -> None:
        seen.append(isinstance(stream, ByteStream))
        await stream.send(await stream.receive())
        await stream.aclose()

    _, client = await rpc_transport.serve({"/c": raw(check)})
    call = client.raw("/c")
    assert isinstance(call, ByteStream)
    async with call:
        await call.send(b"ping")
        assert await call.receive() == b"ping"
        assert await call.receive() == b""
    assert seen == [True]
    assert call.status is Status.OK


async def test_cancellation_signal_wait(rpc_transport: RPCTransport) -> None:
    woke = asyncio.Event()

    async def waits(request: bytes, ctx: ServerCallContext) -> bytes:
        async def watcher() -> None:
            await ctx.cancelled.wait()
            woke.set()

        task = asyncio.create_task(watcher())
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.wait_for(task, WAIT)
        return b""

    _, client = await rpc_transport.serve({"/w": unary(waits)})
    with pytest.raises(RPCError):
        await client.unary("/w", b"", timeout=0.1)
    await asyncio.wait_for(woke.wait(), WAIT)


async def test_raw_client_cancel_reaches_reading_handler(rpc_transport: RPCTransport) -> None:
    outcome: list[BaseException] = []
    done = asyncio.Event()

    async def reader(stream: RawStream, ctx: ServerCallContext) -> None:
        await stream.send(b"ready")
        try:
            while await stream.receive():
                pass
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            done.set()

    _, client = await rpc_transport.serve({"/r": raw(reader)})
    call = client.raw("/r")
    async with call:
        await call.send(b"some")
        assert await call.receive() == b"ready"
        call.cancel()
    await asyncio.wait_for(done.wait(), WAIT)
    assert outcome and isinstance(outcome[0], StreamResetError | asyncio.CancelledError)
    assert call.status is Status.CANCELLED


async def test_connection_loss_is_unavailable(rpc_transport: RPCTransport) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def sleeper(request: bytes, ctx: ServerCallContext) -> bytes:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        return b""

    _, client = await rpc_transport.serve({"/sleep": unary(sleeper)})
    call = asyncio.ensure_future(client.unary("/sleep", b""))
    await asyncio.wait_for(started.wait(), WAIT)
    aclose = getattr(client.opener, "aclose", None)
    if aclose is None:
        pytest.skip("this transport's opener cannot be closed")
    await aclose()
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.status is Status.UNAVAILABLE
    await asyncio.wait_for(cancelled.wait(), WAIT)
    with pytest.raises(RPCError) as info:
        await client.unary("/sleep", b"")
    assert info.value.status is Status.UNAVAILABLE


async def test_interrupted_write_ends_with_a_reset(rpc_transport: RPCTransport) -> None:
    """A handler cancelled while a response frame is half sent cannot send a trailer (it
    would be read as message bytes): the stream is reset with the status's code."""
    cancelled = asyncio.Event()

    async def flood(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * (1024 * 1024)
        finally:
            cancelled.set()

    server = RPCServer({"/flood": server_streaming(flood, timeout=0.2)})
    opener = await rpc_transport.attach(server.handle_stream)
    stream = await opener.open_stream()
    protocol = CallProtocol(Role.CLIENT)
    await stream.send(
        protocol.send_request_header("/flood", CallKind.SERVER_STREAMING)
        + protocol.send_message(b"")
        + protocol.send_request_end()
    )
    await asyncio.wait_for(cancelled.wait(), WAIT)  # blocked by flow control, then timed out
    with pytest.raises(StreamResetError) as info:
        while await stream.receive():
            pass
    assert info.value.code == ResetCode.DEADLINE_EXCEEDED
    await stream.aclose()
    await server.stop(0)


async def test_mixed_load_with_cancellations_leaves_nothing_behind(
    rpc_transport: RPCTransport,
) -> None:
    """Many concurrent calls of every kind, some cancelled or timed out mid-way: every one
    ends with an expected status and the server is left with no calls."""

    async def slow_echo(request: bytes, ctx: ServerCallContext) -> bytes:
        await asyncio.sleep(0.001 * (request[0] % 5))
        return request

    async def ticker(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        for i in range(request[0] % 7):
            await asyncio.sleep(0)
            yield bytes([i])

    server, client = await rpc_transport.serve(
        {"/echo": unary(slow_echo), "/tick": server_streaming(ticker), **BASIC}
    )

    async def one(i: int) -> Status:
        try:
            if i % 4 == 0:
                await client.unary("/echo", bytes([i % 256]), timeout=0.002 * (i % 3 + 1))
            elif i % 4 == 1:
                call = client.server_streaming("/tick", bytes([i % 256]))
                async for _ in call:
                    if i % 8 == 1:
                        call.cancel()
            elif i % 4 == 2:
                assert (
                    await client.client_streaming("/t.S/Total", [b"1"] * (i % 5))
                    == str(i % 5).encode()
                )
            else:
                dcall = client.duplex("/t.S/Shout")
                await dcall.write(b"a")
                if i % 8 == 3:
                    dcall.cancel()
                else:
                    assert await dcall.read() == b"A"
                    await dcall.done_writing()
                    assert await dcall.read() is None
        except RPCError as exc:
            return exc.status
        except asyncio.CancelledError:
            return Status.CANCELLED
        return Status.OK

    statuses = await asyncio.gather(*(one(i) for i in range(80)))  # under the call limit
    assert set(statuses) <= {Status.OK, Status.CANCELLED, Status.DEADLINE_EXCEEDED}
    assert statuses.count(Status.OK) > 0
    for _ in range(200):
        if server.active_calls == 0:
            break
        await asyncio.sleep(0.01)
    assert server.active_calls == 0
    assert await client.unary("/t.S/Echo", b"after") == b"after"
