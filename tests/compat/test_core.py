"""Unit tests of the adapter's grpc-facing core (no network unless stated)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from agent.status import FallbackStatusCode
from migration import quic_grpc
from migration.quic_grpc import testing
from migration.quic_grpc._compat import _StatusCode
from migration.quic_grpc._quic import parse_address, parse_target
from quic_rpc.rpc import Status

pytestmark = pytest.mark.timeout(60)


# ---- status codes ---------------------------------------------------------------------


def test_status_code_is_grpcs_when_installed() -> None:
    assert quic_grpc.StatusCode is grpc.StatusCode
    assert quic_grpc.GRPC_AVAILABLE


def test_fallback_status_code_matches_grpc() -> None:
    assert [m.name for m in _StatusCode] == [m.name for m in grpc.StatusCode]
    for member in grpc.StatusCode:
        assert _StatusCode[member.name].value == member.value


def test_status_mapping_both_ways() -> None:
    for member in grpc.StatusCode:
        number = quic_grpc.code_number(member)
        assert number == Status[member.name].value
        assert quic_grpc.code_from_number(number) is member
        assert quic_grpc.to_status_code(Status(number)) is member
        assert quic_grpc.to_status_code(FallbackStatusCode[member.name]) is member
        assert quic_grpc.to_status_code(number) is member
    assert quic_grpc.code_from_number(99) is grpc.StatusCode.UNKNOWN
    with pytest.raises(TypeError):
        quic_grpc.to_status_code("NOT_FOUND!")


# ---- errors ---------------------------------------------------------------------------


def test_errors_are_grpcs() -> None:
    sync_error = quic_grpc.InactiveRpcError(grpc.StatusCode.NOT_FOUND, "d", (("a", "b"),), ())
    assert isinstance(sync_error, grpc.RpcError)
    assert isinstance(sync_error, grpc.Call)
    assert isinstance(sync_error, grpc.Future)
    assert sync_error.code() is grpc.StatusCode.NOT_FOUND and sync_error.details() == "d"
    assert sync_error.initial_metadata() == (("a", "b"),)
    aio_error = quic_grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, None, None, "x")
    assert isinstance(aio_error, grpc.aio.AioRpcError)
    assert isinstance(aio_error, grpc.Call)
    assert "INTERNAL" in str(aio_error)


# ---- metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([("Upper", "v")], "invalid"),
        ([("grpc-timeout", "1S")], "reserved"),
        ([(":path", "/x")], "reserved"),
        ([("qrpc-x", "v")], "reserved"),
        ([("content-type", "x")], "reserved"),
        ([("k", "caf\u00e9")], "printable ASCII"),
        ([("k", "line\nbreak")], "printable ASCII"),
        ([("k-bin", 3)], "bytes"),
        ([("k", 3)], "str"),
        ([("k",)], "pair"),
        ([("", "v")], "empty"),
    ],
)
def test_metadata_validation(metadata: Any, message: str) -> None:
    with pytest.raises(quic_grpc.MetadataError, match=message):
        quic_grpc._metadata.validate_metadata(metadata)


def test_metadata_normalised() -> None:
    checked = quic_grpc._metadata.validate_metadata(
        [("a-bin", "text"), ("b", b"ascii"), ("c.d_e-f", "ok")]
    )
    assert checked == (("a-bin", b"text"), ("b", "ascii"), ("c.d_e-f", "ok"))


# ---- handlers -------------------------------------------------------------------------


def test_own_handlers_are_grpc_shaped() -> None:
    def behaviour(request: Any, context: Any) -> Any:
        return request

    handler = quic_grpc.unary_stream_rpc_method_handler(behaviour, bytes, bytes)
    assert isinstance(handler, grpc.RpcMethodHandler)
    assert (handler.request_streaming, handler.response_streaming) == (False, True)
    assert handler.unary_stream is behaviour and handler.unary_unary is None
    generic = quic_grpc.method_handlers_generic_handler("pkg.S", {"M": handler})
    assert isinstance(generic, grpc.GenericRpcHandler)
    assert generic.service(quic_grpc.CallDetails("/pkg.S/M", ())) is handler
    assert generic.service(quic_grpc.CallDetails("/pkg.S/N", ())) is None
    real = grpc.method_handlers_generic_handler(
        "pkg.S", {"M": grpc.unary_unary_rpc_method_handler(behaviour)}
    )
    server = quic_grpc.aio.server()
    server.add_generic_rpc_handlers((real, generic))
    with pytest.raises(AttributeError):
        server.add_generic_rpc_handlers((object(),))


# ---- addresses, targets, credentials ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", ("localhost", 50051)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("ipv4:127.0.0.1:7", ("127.0.0.1", 7)),
        ("ipv6:[::1]:8", ("::1", 8)),
        ("[::1]:9", ("::1", 9)),
        ("dns:///example.test:10", ("example.test", 10)),
        ("dns://8.8.8.8/example.test:11", ("example.test", 11)),
        ("dns:example.test:12", ("example.test", 12)),
        ("example.test", ("example.test", 443)),
        ("::1", ("::1", 443)),
    ],
)
def test_parse_target(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


def test_parse_target_rejects() -> None:
    with pytest.raises(ValueError, match="unix"):
        parse_target("unix:/tmp/sock")
    with pytest.raises(ValueError):
        parse_target("[::1")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:0", ("::", 0)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:0", ("127.0.0.1", 0)),
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        (":5", ("::", 5)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


def test_insecure_is_a_clear_error() -> None:
    with pytest.raises(quic_grpc.UsageError, match="TLS"):
        quic_grpc.insecure_channel("localhost:1")
    with pytest.raises(quic_grpc.UsageError, match="TLS"):
        quic_grpc.aio.insecure_channel("localhost:1")
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(quic_grpc.UsageError, match="add_secure_port"):
            quic_grpc.server(pool).add_insecure_port("[::]:0")


def test_credentials_checks() -> None:
    with pytest.raises(ValueError, match="together"):
        quic_grpc.ssl_channel_credentials(None, b"key", None)
    with pytest.raises(ValueError, match="at least one"):
        quic_grpc.ssl_server_credentials([])
    with pytest.raises(ValueError, match="require_client_auth"):
        quic_grpc.ssl_server_credentials([(b"k", b"c")], require_client_auth=True)
    creds = quic_grpc.ssl_channel_credentials(b"roots")
    assert isinstance(creds, grpc.ChannelCredentials)
    assert isinstance(quic_grpc.ssl_server_credentials([(b"k", b"c")]), grpc.ServerCredentials)
    with pytest.raises(TypeError, match="ssl_channel_credentials"):
        quic_grpc.aio.secure_channel("localhost:1", grpc.ssl_channel_credentials())


def test_public_api_pinned() -> None:
    expected_sync = {
        "StatusCode",
        "RpcError",
        "Call",
        "Future",
        "ServicerContext",
        "RpcMethodHandler",
        "HandlerCallDetails",
        "GenericRpcHandler",
        "ServerInterceptor",
        "ClientCallDetails",
        "UnaryUnaryClientInterceptor",
        "UnaryStreamClientInterceptor",
        "StreamUnaryClientInterceptor",
        "StreamStreamClientInterceptor",
        "ChannelConnectivity",
        "FutureTimeoutError",
        "FutureCancelledError",
        "server",
        "secure_channel",
        "insecure_channel",
        "intercept_channel",
        "channel_ready_future",
        "ssl_channel_credentials",
        "ssl_server_credentials",
        "unary_unary_rpc_method_handler",
        "unary_stream_rpc_method_handler",
        "stream_unary_rpc_method_handler",
        "stream_stream_rpc_method_handler",
        "method_handlers_generic_handler",
        "aio",
    }
    assert expected_sync <= set(quic_grpc.__all__)
    for name in expected_sync:
        assert hasattr(grpc, name), name
    expected_aio = {
        "server",
        "secure_channel",
        "insecure_channel",
        "AioRpcError",
        "Metadata",
        "EOF",
        "ServerInterceptor",
        "ClientCallDetails",
        "UnaryUnaryClientInterceptor",
        "UnaryStreamClientInterceptor",
        "StreamUnaryClientInterceptor",
        "StreamStreamClientInterceptor",
        "ServicerContext",
        "Channel",
        "Server",
    }
    assert expected_aio <= set(quic_grpc.aio.__all__)
    for name in expected_aio:
        assert hasattr(grpc.aio, name), name


# ---- in-memory testing helpers ----------------------------------------------------------


def _echo_handlers(g: Any, *, aio: bool) -> Any:
    if aio:

        async def unary(request: bytes, context: Any) -> bytes:
            await context.send_initial_metadata((("x-peer", context.peer()),))
            return request[::-1]

        async def stream(request: bytes, context: Any) -> Any:
            for byte in request:
                yield bytes([byte])

    else:

        def unary(request: bytes, context: Any) -> bytes:
            return request[::-1]

        def stream(request: bytes, context: Any) -> Any:
            for byte in request:
                yield bytes([byte])

    return g.method_handlers_generic_handler(
        "t.Echo",
        {
            "Reverse": g.unary_unary_rpc_method_handler(unary),
            "Split": g.unary_stream_rpc_method_handler(stream),
        },
    )


async def test_aio_memory_channel() -> None:
    server = quic_grpc.aio.server(handlers=[_echo_handlers(quic_grpc, aio=True)])
    async with testing.aio_memory_channel(server) as channel:
        call = channel.unary_unary("/t.Echo/Reverse")(b"abc")
        assert await call == b"cba"
        assert ("x-peer", "ipv4:127.0.0.1:1") in tuple(await call.initial_metadata())
        assert [m async for m in channel.unary_stream("/t.Echo/Split")(b"xyz")] == [
            b"x",
            b"y",
            b"z",
        ]
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/t.Echo/Nope")(b"")
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # a unary method called as streaming is refused rather than misread
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await channel.stream_unary("/t.Echo/Reverse")(iter([b"a"]))
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_sync_memory_channel() -> None:
    with ThreadPoolExecutor(2) as pool:
        server = quic_grpc.server(pool, handlers=[_echo_handlers(quic_grpc, aio=False)])
        with testing.memory_channel(server) as channel:
            assert channel.unary_unary("/t.Echo/Reverse")(b"abc", timeout=10) == b"cba"
            assert list(channel.unary_stream("/t.Echo/Split")(b"xy")) == [b"x", b"y"]
        server.stop(None).wait(5)


async def test_aio_server_stop_refuses_new_calls_and_terminates() -> None:
    server = quic_grpc.aio.server(handlers=[_echo_handlers(quic_grpc, aio=True)])
    channel = testing.aio_memory_channel(server)
    assert await channel.unary_unary("/t.Echo/Reverse")(b"ab") == b"ba"
    waiter = asyncio.ensure_future(server.wait_for_termination())
    await server.stop(0.5)
    assert await waiter is False
    with pytest.raises(quic_grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/t.Echo/Reverse")(b"ab")
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    await channel.close()
    assert await server.wait_for_termination(0.01) is False


def test_sync_server_wait_for_termination_timeout() -> None:
    with ThreadPoolExecutor(1) as pool:
        server = quic_grpc.server(pool)
        assert server.wait_for_termination(0.01) is True
        server.stop(None).wait(5)
        assert server.wait_for_termination(0.01) is False


async def test_closed_channel_is_a_usage_error() -> None:
    server = quic_grpc.aio.server(handlers=[_echo_handlers(quic_grpc, aio=True)])
    channel = testing.aio_memory_channel(server)
    await channel.close()
    with pytest.raises(quic_grpc.UsageError):
        channel.unary_unary("/t.Echo/Reverse")(b"x")


def test_sync_handler_blocked_reading_is_released_at_deadline() -> None:
    """A servicer thread waiting for the next request is freed when the deadline passes."""
    import threading

    entered = threading.Event()
    released: list[str] = []

    def collect(request_iterator: Any, context: Any) -> bytes:
        entered.set()
        try:
            return b"".join(request_iterator)
        except Exception as exc:  # the iterator raises once the call is over
            released.append(type(exc).__name__)
            raise

    def echo(request: bytes, context: Any) -> bytes:
        return request

    handlers = quic_grpc.method_handlers_generic_handler(
        "t.Block",
        {
            "Collect": quic_grpc.stream_unary_rpc_method_handler(collect),
            "Echo": quic_grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    gate = threading.Event()

    def requests() -> Any:
        yield b"first"
        gate.wait(10)

    with ThreadPoolExecutor(1) as pool:
        server = quic_grpc.server(pool, handlers=[handlers])
        with testing.memory_channel(server) as channel:
            with pytest.raises(quic_grpc.RpcError) as info:
                channel.stream_unary("/t.Block/Collect")(requests(), timeout=1.5)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            # the only worker thread is free again
            assert channel.unary_unary("/t.Block/Echo")(b"next", timeout=10) == b"next"
        gate.set()
        server.stop(None).wait(5)
    if entered.is_set():  # under extreme load the deadline may pass before the handler ran
        assert released


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("localhost:0", "localhost:{port}"),
        ("127.0.0.1:0", "ipv4:127.0.0.1:{port}"),
        ("[::1]:0", "[::1]:{port}"),
    ],
)
async def test_bind_addresses_and_targets(address: str, target: str, pki: Any) -> None:
    server = quic_grpc.aio.server(handlers=[_echo_handlers(quic_grpc, aio=True)])
    port = server.add_secure_port(
        address, quic_grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    assert port > 0
    await server.start()
    try:
        async with quic_grpc.aio.secure_channel(
            target.format(port=port), quic_grpc.ssl_channel_credentials(pki.ca_pem)
        ) as channel:
            assert await channel.unary_unary("/t.Echo/Reverse")(b"ab", timeout=10) == b"ba"
    finally:
        await server.stop(None)


async def test_wait_for_ready_waits_for_the_server(pki: Any) -> None:
    """Without wait_for_ready a call to a missing server fails UNAVAILABLE; with it, the
    call waits (within its deadline) until the server is up."""
    from quic_rpc.quic import QUICConfig

    options = [("quicshift.quic_config", QUICConfig(handshake_timeout=0.5))]
    server = quic_grpc.aio.server(handlers=[_echo_handlers(quic_grpc, aio=True)])
    port = server.add_secure_port(
        "127.0.0.1:0",
        quic_grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)]),
    )
    async with quic_grpc.aio.secure_channel(
        f"127.0.0.1:{port}", quic_grpc.ssl_channel_credentials(pki.ca_pem), options=options
    ) as channel:
        method = channel.unary_unary("/t.Echo/Reverse")
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await method(b"ab", timeout=20)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        call = method(b"ab", timeout=30, wait_for_ready=True)
        await asyncio.sleep(0.3)
        assert not call.done()
        await server.start()
        try:
            assert await call == b"ba"
        finally:
            await server.stop(None)


def _servicer_run_handlers(events: dict[str, asyncio.Event]) -> Any:
    async def cancel_at_once(request: bytes, context: Any) -> bytes:
        context.cancel()  # from inside the servicer, returning before any await
        return b"never sent"

    async def swallow(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events["swallowed"].set()
        await asyncio.sleep(0)  # keeps running after swallowing the cancellation
        return b"too late"

    async def forever(request: bytes, context: Any) -> bytes:
        events["started"].set()
        await asyncio.sleep(30)
        return b""

    async def reverse(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0)
        return request[::-1]

    return grpc_shim_handlers(
        {"CancelAtOnce": cancel_at_once, "Swallow": swallow, "Forever": forever, "Reverse": reverse}
    )


def grpc_shim_handlers(methods: dict[str, Any]) -> Any:
    return quic_grpc.method_handlers_generic_handler(
        "t.Run",
        {name: quic_grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()},
    )


async def test_aio_servicer_cancellation_stays_inside_its_call() -> None:
    """The aio servicer runs in its call's dispatching task; a cancellation meant for the
    servicer (context.cancel(), the deadline) must end that call only, and a server stop
    must still reach a running servicer."""
    events = {"swallowed": asyncio.Event(), "started": asyncio.Event()}
    server = quic_grpc.aio.server(handlers=[_servicer_run_handlers(events)])
    async with testing.aio_memory_channel(server) as channel:
        reverse = channel.unary_unary("/t.Run/Reverse")
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/t.Run/CancelAtOnce")(b"")
        assert info.value.code() is grpc.StatusCode.CANCELLED
        assert await reverse(b"ab") == b"ba"  # the next call on the server is unharmed
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/t.Run/Swallow")(b"", timeout=0.2)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(events["swallowed"].wait(), 10)
        assert await reverse(b"cd") == b"dc"
        running = asyncio.ensure_future(_await(channel.unary_unary("/t.Run/Forever")(b"")))
        await asyncio.wait_for(events["started"].wait(), 10)
        await server.stop(0)
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await running
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def _await(call: Any) -> Any:
    return await call


class _ScriptedStream:
    """A ByteStream whose peer sent ``data`` and then its end of stream (optionally with
    the QUIC stream's watch/release, which let the server skip its reader task)."""

    def __init__(self, data: bytes, *, watchable: bool) -> None:
        from quic_rpc.streams import PeerInfo

        self._data = data
        self.peer_info = PeerInfo(transport="scripted", remote_host="127.0.0.1", remote_port=1)
        self.sent = b""
        self.eof_sent = False
        self.released: float | None = None
        self.watch_calls: list[Any] = []
        if watchable:
            self.watch = self._watch
            self.release = self._release

    def _watch(self, callback: Any) -> None:
        self.watch_calls.append(callback)

    def _release(self, linger: float) -> None:
        self.released = linger

    def receive_nowait(self, max_bytes: int = 65536) -> bytes:
        data, self._data = self._data[:max_bytes], self._data[max_bytes:]
        return data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return self.receive_nowait(max_bytes)

    async def send(self, data: bytes) -> None:
        self.sent += data

    async def send_eof(self) -> None:
        self.eof_sent = True

    def reset(self, code: int) -> None: ...

    def stop_sending(self, code: int) -> None: ...

    def abort(self, code: int) -> None: ...

    async def aclose(self) -> None: ...


def _request_bytes(method: str, kind: Any, messages: list[bytes]) -> bytes:
    from quic_rpc.rpc.call_state import Role
    from quic_rpc.rpc.protocol import CallProtocol

    proto = CallProtocol(Role.CLIENT)
    out = proto.send_request_header(method, kind, (), None)
    for message in messages:
        out += proto.send_message(message)
    return out + proto.send_request_end()


def _response(data: bytes) -> tuple[list[bytes], Any]:
    from quic_rpc.rpc.call_state import Role
    from quic_rpc.rpc.events import MessageReceived, TrailerReceived
    from quic_rpc.rpc.protocol import CallProtocol

    proto = CallProtocol(Role.CLIENT)
    proto.send_request_header("/x", _kind("UNARY"), (), None)
    messages, status = [], None
    for event in proto.receive_data(data):
        if isinstance(event, MessageReceived):
            messages.append(event.data)
        elif isinstance(event, TrailerReceived):
            status = event.status
    return messages, status


def _kind(name: str) -> Any:
    from quic_rpc.rpc.frames import CallKind

    return getattr(CallKind, name)


async def test_server_call_whose_request_came_whole_needs_no_reader() -> None:
    from migration.quic_grpc._wire import STREAM_LINGER, serve_stream

    async def join(requests: Any, context: Any) -> bytes:
        return b"".join([r async for r in requests])

    server = quic_grpc.aio.server(
        handlers=[
            quic_grpc.method_handlers_generic_handler(
                "t.W",
                {
                    "Reverse": quic_grpc.unary_unary_rpc_method_handler(_echo_reverse),
                    "Join": quic_grpc.stream_unary_rpc_method_handler(join),
                },
            )
        ]
    )
    # the whole unary request came with the header: watched, then released
    stream = _ScriptedStream(
        _request_bytes("/t.W/Reverse", _kind("UNARY"), [b"abc"]), watchable=True
    )
    await serve_stream(stream, server.dispatch, max_receive=None)  # type: ignore[arg-type]
    assert _response(stream.sent) == ([b"cba"], Status.OK)
    assert stream.eof_sent and stream.released == STREAM_LINGER
    assert len(stream.watch_calls) == 1 and callable(stream.watch_calls[0])
    # more messages than the call's queue holds, all with the header: none is lost
    parts = [bytes([65 + i % 26]) for i in range(40)]
    for watchable in (True, False):
        stream = _ScriptedStream(
            _request_bytes("/t.W/Join", _kind("CLIENT_STREAMING"), parts), watchable=watchable
        )
        await serve_stream(stream, server.dispatch, max_receive=None)  # type: ignore[arg-type]
        assert _response(stream.sent) == ([b"".join(parts)], Status.OK)
        assert stream.released is None and not stream.watch_calls  # a reader task ran


async def _echo_reverse(request: bytes, context: Any) -> bytes:
    return request[::-1]
