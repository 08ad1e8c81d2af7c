"""grpc.health.v1 on every stack: grpcio (sync, aio), the shim (sync, aio), native quic_rpc."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from migration.quic_grpc import health
from quic_rpc.quic import QUICServer, QUICSocket, TLSCredentials
from quic_rpc.rpc import RPCServer

from .conftest import STACKS, stack_module
from .pki import PKI

pytestmark = pytest.mark.timeout(120)


def _req(service: str = "") -> Any:
    return health.health_pb2.HealthCheckRequest(service=service)


@pytest.mark.parametrize("stack", STACKS)
def test_health_sync(stack: str, pki: PKI) -> None:
    g = stack_module(stack)
    state = health.HealthState()
    state.set("compat.v1.Compat", health.SERVING)
    pool = ThreadPoolExecutor(4)
    server = g.server(pool)
    health.add_health_servicer(health.HealthServicer(state), server)
    port = server.add_secure_port(
        "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    server.start()
    channel = g.secure_channel(f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem))
    try:
        stub = health.health_stub(channel)
        assert stub.Check(_req(), timeout=10).status == health.SERVING
        assert stub.Check(_req("compat.v1.Compat"), timeout=10).status == health.SERVING
        with pytest.raises(g.RpcError) as info:
            stub.Check(_req("nope"), timeout=10)
        assert info.value.code() is g.StatusCode.NOT_FOUND
        listed = stub.List(health.health_pb2.HealthListRequest(), timeout=10)
        assert {k: v.status for k, v in listed.statuses.items()} == {
            "": health.SERVING,
            "compat.v1.Compat": health.SERVING,
        }

        watch = stub.Watch(_req("compat.v1.Compat"), timeout=30)
        seen = [next(watch).status]
        state.set("compat.v1.Compat", health.NOT_SERVING)
        seen.append(next(watch).status)
        state.set("compat.v1.Compat", health.NOT_SERVING)  # no repeat
        state.set("compat.v1.Compat", health.SERVING)
        seen.append(next(watch).status)
        assert seen == [health.SERVING, health.NOT_SERVING, health.SERVING]
        watch.cancel()

        unknown = stub.Watch(_req("later"), timeout=30)
        assert next(unknown).status == health.SERVICE_UNKNOWN
        threading.Timer(0.05, state.set, ("later", health.SERVING)).start()
        assert next(unknown).status == health.SERVING
        state.enter_graceful_shutdown()
        assert next(unknown).status == health.NOT_SERVING
        unknown.cancel()
        assert stub.Check(_req(), timeout=10).status == health.NOT_SERVING
    finally:
        channel.close()
        server.stop(None).wait(10)
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("stack", STACKS)
async def test_health_aio(stack: str, pki: PKI) -> None:
    g = stack_module(stack)
    state = health.HealthState()
    server = g.aio.server()
    health.add_health_servicer(health.AioHealthServicer(state), server)
    port = server.add_secure_port(
        "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    await server.start()
    channel = g.aio.secure_channel(f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem))
    try:
        stub = health.health_stub(channel)
        assert (await stub.Check(_req(), timeout=10)).status == health.SERVING
        with pytest.raises(g.aio.AioRpcError) as info:
            await stub.Check(_req("svc"), timeout=10)
        assert info.value.code() is g.StatusCode.NOT_FOUND
        watch = stub.Watch(_req("svc"), timeout=30)
        assert (await watch.read()).status == health.SERVICE_UNKNOWN
        state.set("svc", health.SERVING)
        assert (await watch.read()).status == health.SERVING
        state.clear("svc")
        assert (await watch.read()).status == health.SERVICE_UNKNOWN
        watch.cancel()
    finally:
        await channel.close()
        await server.stop(None)


async def test_health_native_quic_rpc_server(pki: PKI) -> None:
    """The same servicer as a quic_rpc-native manifest, called through the shim channel."""
    from migration import quic_grpc

    state = health.HealthState()
    rpc_server = RPCServer(health.health_manifest(health.AioHealthServicer(state)))
    sock = await QUICSocket.bind("127.0.0.1", 0)
    server = QUICServer(
        sock,
        TLSCredentials.load(pki.server_key_pem, pki.server_chain_pem, lambda chain: None),
        None,
        rpc_server.handle_stream,
    )
    await server.start()
    try:
        async with quic_grpc.aio.secure_channel(
            f"127.0.0.1:{sock.local_address[1]}", quic_grpc.ssl_channel_credentials(pki.ca_pem)
        ) as channel:
            stub = health.health_stub(channel)
            assert (await stub.Check(_req(), timeout=10)).status == health.SERVING
            watch = stub.Watch(_req(""), timeout=30)
            assert (await watch.read()).status == health.SERVING
            state.set("", health.NOT_SERVING)
            assert (await asyncio.wait_for(watch.read(), 10)).status == health.NOT_SERVING
            watch.cancel()
    finally:
        await server.stop(0)
        await sock.close()
