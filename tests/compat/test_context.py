"""Servicer-context behaviour compared across grpcio and the shim (sync and aio)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest

from .conftest import STACKS, Protos, stack_module
from .pki import PKI

pytestmark = pytest.mark.timeout(120)


class _Status(NamedTuple):
    code: Any
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


def _sync_handlers(g: Any) -> Any:
    def set_code(request: bytes, context: Any) -> bytes:
        context.set_code(g.StatusCode.FAILED_PRECONDITION)
        context.set_details("set, not raised")
        return b"ignored"

    def with_status(request: bytes, context: Any) -> bytes:
        status = type("S", (_Status, g.Status), {})(
            g.StatusCode.RESOURCE_EXHAUSTED, "quota", (("x-why", "quota"),)
        )
        context.abort_with_status(status)
        return b""

    def boom(request: bytes, context: Any) -> bytes:
        raise ValueError("boom")

    def cancel(request: bytes, context: Any) -> bytes:
        context.cancel()
        return b""

    def code_after_exception(request: bytes, context: Any) -> bytes:
        context.set_code(g.StatusCode.NOT_FOUND)
        context.set_details("explicit")
        raise RuntimeError("hidden")

    return g.method_handlers_generic_handler(
        "t.Ctx",
        {
            name: g.unary_unary_rpc_method_handler(fn)
            for name, fn in {
                "SetCode": set_code,
                "WithStatus": with_status,
                "Boom": boom,
                "Cancel": cancel,
                "CodeAfterException": code_after_exception,
            }.items()
        },
    )


@pytest.fixture(params=STACKS)
def ctx_channel(request: pytest.FixtureRequest, pki: PKI) -> Iterator[tuple[Any, Any]]:
    g = stack_module(request.param)
    pool = ThreadPoolExecutor(4)
    server = g.server(pool, handlers=[_sync_handlers(g)])
    port = server.add_secure_port(
        "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    server.start()
    channel = g.secure_channel(f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem))
    yield g, channel
    channel.close()
    server.stop(None).wait(10)
    pool.shutdown(wait=False)


def _error(g: Any, channel: Any, method: str) -> Any:
    with pytest.raises(g.RpcError) as info:
        channel.unary_unary(f"/t.Ctx/{method}")(b"", timeout=10)
    return info.value


def test_set_code_and_details(ctx_channel: tuple[Any, Any]) -> None:
    g, channel = ctx_channel
    error = _error(g, channel, "SetCode")
    assert error.code() is g.StatusCode.FAILED_PRECONDITION
    assert error.details() == "set, not raised"


def test_abort_with_status(ctx_channel: tuple[Any, Any]) -> None:
    g, channel = ctx_channel
    error = _error(g, channel, "WithStatus")
    assert error.code() is g.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "quota"
    assert ("x-why", "quota") in tuple(error.trailing_metadata())


def test_exception_is_unknown(ctx_channel: tuple[Any, Any]) -> None:
    g, channel = ctx_channel
    error = _error(g, channel, "Boom")
    assert error.code() is g.StatusCode.UNKNOWN
    assert error.details() == "Exception calling application: boom"


def test_code_set_before_exception_wins(ctx_channel: tuple[Any, Any]) -> None:
    g, channel = ctx_channel
    error = _error(g, channel, "CodeAfterException")
    assert error.code() is g.StatusCode.NOT_FOUND
    assert error.details() == "explicit"


def test_server_side_cancel(ctx_channel: tuple[Any, Any]) -> None:
    g, channel = ctx_channel
    assert _error(g, channel, "Cancel").code() is g.StatusCode.CANCELLED


@pytest.mark.parametrize("stack", STACKS)
def test_generated_default_servicer_is_unimplemented(
    stack: str, compat_protos: Protos, pki: PKI
) -> None:
    """The generated base servicer sets UNIMPLEMENTED and raises NotImplementedError."""
    g = stack_module(stack)
    pool = ThreadPoolExecutor(2)
    server = g.server(pool)
    compat_protos.pb2_grpc.add_CompatServicer_to_server(
        compat_protos.pb2_grpc.CompatServicer(), server
    )
    port = server.add_secure_port(
        "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    server.start()
    try:
        with g.secure_channel(
            f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem)
        ) as channel:
            stub = compat_protos.pb2_grpc.CompatStub(channel)
            with pytest.raises(g.RpcError) as info:
                stub.Unary(compat_protos.pb2.EchoRequest(), timeout=10)
            assert info.value.code() is g.StatusCode.UNIMPLEMENTED
            assert info.value.details() == "Method not implemented!"
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=False)


@pytest.mark.parametrize("stack", STACKS)
async def test_aio_exception_and_set_code(stack: str, pki: PKI) -> None:
    g = stack_module(stack)

    async def boom(request: bytes, context: Any) -> bytes:
        raise ValueError("boom")

    async def set_code(request: bytes, context: Any) -> bytes:
        context.set_code(g.StatusCode.ABORTED)
        context.set_details("aio set")
        return b"x"

    server = g.aio.server(
        handlers=[
            g.method_handlers_generic_handler(
                "t.Aio",
                {
                    "Boom": g.unary_unary_rpc_method_handler(boom),
                    "SetCode": g.unary_unary_rpc_method_handler(set_code),
                },
            )
        ]
    )
    port = server.add_secure_port(
        "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    await server.start()
    try:
        async with g.aio.secure_channel(
            f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem)
        ) as channel:
            with pytest.raises(g.aio.AioRpcError) as info:
                await channel.unary_unary("/t.Aio/Boom")(b"", timeout=10)
            assert info.value.code() is g.StatusCode.UNKNOWN
            assert info.value.details() == "Unexpected <class 'ValueError'>: boom"
            with pytest.raises(g.aio.AioRpcError) as info:
                await channel.unary_unary("/t.Aio/SetCode")(b"", timeout=10)
            assert info.value.code() is g.StatusCode.ABORTED
            assert info.value.details() == "aio set"
    finally:
        await server.stop(None)
