"""The compatibility suite, sync API: real grpcio over TCP+TLS and the shim over QUIC."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import SyncEnv

pytestmark = pytest.mark.timeout(120)

REQUEST_SIZE = 271_828
RESPONSE_SIZE = 314_159
FOUR_MIB = 4 * 1024 * 1024
DETAILS = "  spaced\tout\nover lines \U0001f389 \U0001d11e end  "
ERROR_CODES = [
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]


def _x(metadata: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in (metadata or ()) if k.startswith("x-")]


def test_unary(sync_env: SyncEnv) -> None:
    reply = sync_env.stub.Unary(sync_env.pb2.EchoRequest(payload=b"hello"), timeout=10)
    assert reply.payload == b"hello"
    assert reply.received_bytes == 5


def test_server_streaming(sync_env: SyncEnv) -> None:
    replies = list(sync_env.stub.ServerStream(sync_env.pb2.EchoRequest(payload=b"p", count=7)))
    assert [r.index for r in replies] == list(range(7))
    assert all(r.payload == b"p" for r in replies)


def test_client_streaming(sync_env: SyncEnv) -> None:
    requests = (sync_env.pb2.EchoRequest(payload=b"x" * i) for i in range(1, 11))
    reply = sync_env.stub.ClientStream(requests, timeout=10)
    assert reply.received_messages == 10
    assert reply.received_bytes == sum(range(1, 11))


def test_bidi_streaming(sync_env: SyncEnv) -> None:
    requests = [sync_env.pb2.EchoRequest(payload=bytes([i])) for i in range(20)]
    replies = list(sync_env.stub.Bidi(iter(requests), timeout=10))
    assert [r.payload for r in replies] == [bytes([i]) for i in range(20)]


def test_empty_streams(sync_env: SyncEnv) -> None:
    assert list(sync_env.stub.ServerStream(sync_env.pb2.EchoRequest(count=0))) == []
    assert sync_env.stub.ClientStream(iter(())).received_messages == 0
    assert list(sync_env.stub.Bidi(iter(()))) == []


def test_large_messages_all_kinds(sync_env: SyncEnv) -> None:
    pb2 = sync_env.pb2
    big = pb2.EchoRequest(payload=b"q" * REQUEST_SIZE, response_size=RESPONSE_SIZE)
    reply = sync_env.stub.Unary(big, timeout=30)
    assert reply.received_bytes == REQUEST_SIZE
    assert len(reply.payload) == RESPONSE_SIZE
    big_stream = pb2.EchoRequest(payload=b"q" * REQUEST_SIZE, response_size=RESPONSE_SIZE, count=3)
    replies = list(sync_env.stub.ServerStream(big_stream, timeout=30))
    assert [len(r.payload) for r in replies] == [RESPONSE_SIZE] * 3
    reply = sync_env.stub.ClientStream(iter([big, big]), timeout=30)
    assert reply.received_bytes == 2 * REQUEST_SIZE
    replies = list(sync_env.stub.Bidi(iter([big, big]), timeout=30))
    assert [len(r.payload) for r in replies] == [RESPONSE_SIZE] * 2


def test_default_receive_limit_on_server(sync_env: SyncEnv) -> None:
    g = sync_env.g
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.Unary(sync_env.pb2.EchoRequest(payload=b"z" * FOUR_MIB), timeout=30)
    assert info.value.code() is g.StatusCode.RESOURCE_EXHAUSTED


def test_default_receive_limit_on_client(sync_env: SyncEnv) -> None:
    g = sync_env.g
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.Unary(sync_env.pb2.EchoRequest(response_size=FOUR_MIB + 1), timeout=30)
    assert info.value.code() is g.StatusCode.RESOURCE_EXHAUSTED
    # just under the limit passes
    reply = sync_env.stub.Unary(sync_env.pb2.EchoRequest(response_size=FOUR_MIB - 16), timeout=30)
    assert len(reply.payload) == FOUR_MIB - 16


def test_raised_limit_option(make_sync_env: Any) -> None:
    env = make_sync_env(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    reply = env.stub.Unary(env.pb2.EchoRequest(payload=b"z" * (FOUR_MIB + 10)), timeout=30)
    assert reply.received_bytes == FOUR_MIB + 10


def test_metadata_echo_unary(sync_env: SyncEnv) -> None:
    metadata = [("x-text", "hello world"), ("x-data-bin", b"\x00\xff\x01\x80"), ("x-text", "two")]
    reply, call = sync_env.stub.Unary.with_call(
        sync_env.pb2.EchoRequest(payload=b"m"), metadata=metadata, timeout=10
    )
    assert reply.payload == b"m"
    assert _x(call.initial_metadata()) == metadata
    assert _x(call.trailing_metadata()) == [
        ("x-text-trailer", "hello world"),
        ("x-data-trailer-bin", b"\x00\xff\x01\x80"),
        ("x-text-trailer", "two"),
    ]
    assert call.code() is sync_env.g.StatusCode.OK


def test_metadata_echo_streaming(sync_env: SyncEnv) -> None:
    metadata = [("x-key", "v"), ("x-raw-bin", bytes(range(256)))]
    call = sync_env.stub.Bidi(iter([sync_env.pb2.EchoRequest(payload=b"1")]), metadata=metadata)
    assert _x(call.initial_metadata()) == metadata
    assert [r.payload for r in call] == [b"1"]
    assert _x(call.trailing_metadata()) == [
        ("x-key-trailer", "v"),
        ("x-raw-trailer-bin", bytes(range(256))),
    ]


@pytest.mark.parametrize("code_name", ERROR_CODES)
def test_status_codes_round_trip(sync_env: SyncEnv, code_name: str) -> None:
    g = sync_env.g
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.Unary(
            sync_env.pb2.EchoRequest(code_name=code_name, details=DETAILS), timeout=10
        )
    error = info.value
    assert isinstance(error, g.Call)
    assert error.code() is getattr(g.StatusCode, code_name)
    assert error.details() == DETAILS


def test_error_carries_metadata(sync_env: SyncEnv) -> None:
    g = sync_env.g
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.Unary(
            sync_env.pb2.EchoRequest(code_name="NOT_FOUND", details="gone"),
            metadata=[("x-m", "1")],
            timeout=10,
        )
    assert _x(info.value.trailing_metadata()) == [("x-m-trailer", "1")]


def test_deadline_exceeded(sync_env: SyncEnv) -> None:
    g = sync_env.g
    tag = "deadline"
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.Unary(sync_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag), timeout=2.0)
    assert info.value.code() is g.StatusCode.DEADLINE_EXCEEDED
    entry = sync_env.rec[tag]
    assert entry["done"].wait(20)
    assert entry["callback_fired"] is True
    assert entry["is_active"] is False


def test_time_remaining_on_server(sync_env: SyncEnv) -> None:
    sync_env.stub.Unary(sync_env.pb2.EchoRequest(tag="tr"), timeout=30)
    remaining = sync_env.rec["tr"]["time_remaining"]
    assert remaining is not None and 0 < remaining <= 30
    sync_env.stub.Unary(sync_env.pb2.EchoRequest(tag="none"))
    assert (
        sync_env.rec["none"]["time_remaining"] is None
        or sync_env.rec["none"]["time_remaining"] > 10**6
    )


def test_peer_and_auth_context(sync_env: SyncEnv) -> None:
    sync_env.stub.Unary(sync_env.pb2.EchoRequest(tag="peer"), timeout=10)
    peer = sync_env.rec["peer"]["peer"]
    assert peer.startswith(("ipv4:127.0.0.1:", "ipv6:%5B::1%5D:"))
    auth = sync_env.rec["peer"]["auth"]
    assert auth["transport_security_type"] == [b"ssl"]


def test_client_cancel_unary_future(sync_env: SyncEnv) -> None:
    g = sync_env.g
    tag = "cancel-unary"
    future = sync_env.stub.Unary.future(
        sync_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag), timeout=30
    )
    entry = sync_env.rec[tag]
    assert entry["started"].wait(20)
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(g.FutureCancelledError):
        future.result()
    assert entry["done"].wait(20)
    assert entry["callback_registered"] is True
    assert entry["callback_fired"] is True
    assert entry["is_active"] is False


def test_client_cancel_streaming(sync_env: SyncEnv) -> None:
    g = sync_env.g
    tag = "cancel-stream"
    call = sync_env.stub.ServerStream(sync_env.pb2.EchoRequest(wait_for_cancel=True, tag=tag))
    first = next(call)
    assert first.index == -1
    entry = sync_env.rec[tag]
    assert entry["started"].wait(20)
    call.cancel()
    with pytest.raises(g.RpcError) as info:
        next(call)
    assert info.value.code() is g.StatusCode.CANCELLED
    assert entry["done"].wait(20)
    assert entry["callback_fired"] is True
    assert entry["is_active"] is False


def test_unknown_method_and_service(sync_env: SyncEnv) -> None:
    g = sync_env.g
    for path in ("/compat.v1.Compat/NoSuchMethod", "/no.such.Service/Unary"):
        method = sync_env.channel.unary_unary(path)
        with pytest.raises(g.RpcError) as info:
            method(b"", timeout=10)
        assert info.value.code() is g.StatusCode.UNIMPLEMENTED
        stream = sync_env.channel.stream_stream(path)
        with pytest.raises(g.RpcError) as info:
            list(stream(iter([b""]), timeout=10))
        assert info.value.code() is g.StatusCode.UNIMPLEMENTED


def test_interceptors_both_sides(make_sync_env: Any) -> None:
    env = make_sync_env(server_interceptors=True, client_interceptors=True)
    g, pb2 = env.g, env.pb2
    reply, call = env.stub.Unary.with_call(pb2.EchoRequest(payload=b"i"), timeout=10)
    assert reply.payload == b"i"
    assert ("x-intercepted", "client") in _x(call.initial_metadata())
    replies = list(env.stub.ServerStream(pb2.EchoRequest(count=2), timeout=10))
    assert len(replies) == 2
    assert env.stub.ClientStream(iter([pb2.EchoRequest()]), timeout=10).received_messages == 1
    call = env.stub.Bidi(iter([pb2.EchoRequest(payload=b"b")]), timeout=10)
    assert [r.payload for r in call] == [b"b"]
    assert ("x-intercepted-trailer", "client") in _x(call.trailing_metadata())
    assert env.rec.methods == [
        "/compat.v1.Compat/Unary",
        "/compat.v1.Compat/ServerStream",
        "/compat.v1.Compat/ClientStream",
        "/compat.v1.Compat/Bidi",
    ]
    with pytest.raises(g.RpcError) as info:
        env.stub.Unary(pb2.EchoRequest(), metadata=[("x-deny", "yes")], timeout=10)
    assert info.value.code() is g.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "denied by interceptor"


def test_abort_in_server_streaming(sync_env: SyncEnv) -> None:
    g = sync_env.g
    call = sync_env.stub.ServerStream(
        sync_env.pb2.EchoRequest(count=5, abort_after=2, code_name="NOT_FOUND", details=DETAILS)
    )
    got = []
    with pytest.raises(g.RpcError) as info:
        for reply in call:
            got.append(reply.index)
    assert got == [0, 1]
    assert info.value.code() is g.StatusCode.NOT_FOUND
    assert info.value.details() == DETAILS
    assert call.code() is g.StatusCode.NOT_FOUND


def test_abort_in_client_streaming(sync_env: SyncEnv) -> None:
    g, pb2 = sync_env.g, sync_env.pb2
    requests = [pb2.EchoRequest(payload=b"a")] * 2 + [
        pb2.EchoRequest(abort_after=3, code_name="ABORTED", details="stop")
    ]
    with pytest.raises(g.RpcError) as info:
        sync_env.stub.ClientStream(iter(requests), timeout=10)
    assert info.value.code() is g.StatusCode.ABORTED
    assert info.value.details() == "stop"


def test_abort_in_bidi(sync_env: SyncEnv) -> None:
    g, pb2 = sync_env.g, sync_env.pb2
    requests = [
        pb2.EchoRequest(payload=b"a"),
        pb2.EchoRequest(payload=b"b"),
        pb2.EchoRequest(abort_after=2, code_name="OUT_OF_RANGE", details="enough"),
    ]
    got = []
    with pytest.raises(g.RpcError) as info:
        for reply in sync_env.stub.Bidi(iter(requests), timeout=10):
            got.append(reply.payload)
    assert got == [b"a", b"b"]
    assert info.value.code() is g.StatusCode.OUT_OF_RANGE


def test_future_api(sync_env: SyncEnv) -> None:
    g = sync_env.g
    done: list[Any] = []
    future = sync_env.stub.Unary.future(sync_env.pb2.EchoRequest(payload=b"f"), timeout=10)
    future.add_done_callback(done.append)
    assert future.result(timeout=10).payload == b"f"
    assert future.exception() is None
    assert future.code() is g.StatusCode.OK
    assert isinstance(future, g.Future) and isinstance(future, g.Call)
    assert future.done() and not future.cancelled()
    failing = sync_env.stub.Unary.future(
        sync_env.pb2.EchoRequest(code_name="NOT_FOUND", details="nf"), timeout=10
    )
    error = failing.exception(timeout=10)
    assert error is not None and error.code() is g.StatusCode.NOT_FOUND
    with pytest.raises(g.RpcError):
        failing.result()
    assert done == [future]


def test_stream_unary_with_call_and_future(sync_env: SyncEnv) -> None:
    pb2 = sync_env.pb2
    reply, call = sync_env.stub.ClientStream.with_call(iter([pb2.EchoRequest(payload=b"ab")]))
    assert reply.received_bytes == 2
    assert call.code() is sync_env.g.StatusCode.OK
    future = sync_env.stub.ClientStream.future(iter([pb2.EchoRequest(payload=b"abc")]))
    assert future.result(timeout=10).received_bytes == 3


def test_channel_ready_future_and_context_manager(sync_env: SyncEnv, pki: Any) -> None:
    g = sync_env.g
    with g.secure_channel(
        f"localhost:{sync_env.port}", g.ssl_channel_credentials(pki.ca_pem)
    ) as channel:
        g.channel_ready_future(channel).result(timeout=20)
        stub = sync_env.protos.pb2_grpc.CompatStub(channel)
        assert stub.Unary(sync_env.pb2.EchoRequest(payload=b"r"), timeout=10).payload == b"r"


def test_generic_handler_raw_bytes(sync_env: SyncEnv) -> None:
    """A multicallable without serializers carries raw bytes (protobuf wire format)."""
    raw = sync_env.channel.unary_unary("/compat.v1.Compat/Unary")
    data = raw(sync_env.pb2.EchoRequest(payload=b"raw").SerializeToString(), timeout=10)
    assert sync_env.pb2.EchoResponse.FromString(data).payload == b"raw"


def test_concurrent_calls_from_many_threads(sync_env: SyncEnv) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pb2 = sync_env.pb2

    def worker(n: int) -> list[bytes]:
        out = []
        for i in range(10):
            out.append(
                sync_env.stub.Unary(pb2.EchoRequest(payload=b"%d-%d" % (n, i)), timeout=30).payload
            )
        out.extend(
            r.payload
            for r in sync_env.stub.Bidi(iter([pb2.EchoRequest(payload=b"s%d" % n)]), timeout=30)
        )
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    for n, got in enumerate(results):
        assert got == [b"%d-%d" % (n, i) for i in range(10)] + [b"s%d" % n]
