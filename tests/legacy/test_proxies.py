"""The legacy proxy pair on loopback: who may connect, and who the handler sees."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from agent.identity import NodeIdentity, node_verifier
from agent.identity_testing import (
    ca_issued_identity,
    expired_identity,
    untrusted_root_identity,
)
from agent.nodeid import NodeId
from legacy_grpc import (
    AgentGRPCServer,
    ConnectionFailedError,
    HandshakeError,
    NodeConnection,
    NodeIdMismatchError,
    PeerRejectedError,
    PeerVerificationError,
    ProxyAuthError,
    ProxyCredentials,
    ReverseProxy,
    TLSCredentials,
    node_target,
    preamble,
)
from protos.agent.v1 import common_pb2
from protos.grpc.health.v1 import health_pb2, health_pb2_grpc
from tests.legacy._support import Node, start_node

pytestmark = pytest.mark.timeout(60)

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    a = await start_node(NodeIdentity.generate("ed25519"))
    b = await start_node(NodeIdentity.generate("p256"))
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def connect(src: Node, dst: Node, node_id: NodeId | None = None) -> NodeConnection:
    return await NodeConnection.connect(
        node_id or dst.node_id, LOOPBACK, dst.reverse_proxy.port, src.forward_proxy, timeout=10
    )


async def test_handler_sees_the_caller(pair: tuple[Node, Node]) -> None:
    a, b = pair
    async with await connect(a, b) as conn:
        assert conn.node_id == b.node_id
        reply = await conn.stub.Echo(common_pb2.EchoMessage(message="hello"))
        assert reply.message == f"hello from {a.node_id}"
        [tunnel] = a.forward_proxy.tunnels()
        assert tunnel.info.node_id == b.node_id
        assert tunnel.info.remote_chain == tuple(b.identity.chain_der())
    [info] = b.servicer.callers
    assert info is not None
    assert info.node_id == a.node_id
    assert info.remote_host == LOOPBACK
    # The caller's port is the forward proxy's end of the TLS connection.
    assert info.remote_port == tunnel.local_port
    assert info.remote_chain == tuple(a.identity.chain_der())


async def test_both_directions_and_health(pair: tuple[Node, Node]) -> None:
    a, b = pair
    async with await connect(a, b) as ab, await connect(b, a) as ba:
        r1 = await ab.stub.Echo(common_pb2.EchoMessage(message="x"))
        r2 = await ba.stub.Echo(common_pb2.EchoMessage(message="y"))
        health = await ab.health.Check(health_pb2.HealthCheckRequest(service=""))
    assert r1.message == f"x from {a.node_id}"
    assert r2.message == f"y from {b.node_id}"
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_rotated_chain_is_the_same_node() -> None:
    original = NodeIdentity.generate("ed25519")
    rotated = original.rotate("p256").rotate()
    assert len(rotated.chain_der()) == 3
    a = await start_node(rotated)
    b = await start_node(NodeIdentity.generate())
    try:
        async with await connect(a, b) as ab, await connect(b, a) as ba:
            await ab.stub.Echo(common_pb2.EchoMessage(message="from rotated"))
            await ba.stub.Echo(common_pb2.EchoMessage(message="to rotated"))
        [seen_by_b] = b.servicer.callers
        assert seen_by_b is not None
        assert seen_by_b.node_id == original.node_id
        assert seen_by_b.remote_chain == tuple(rotated.chain_der())
        assert b.reverse_proxy.statistics().accepted == 1
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize(
    ("make_identity", "code"),
    [
        (untrusted_root_identity, "untrusted_root"),
        (lambda: expired_identity(), "certificate_expired"),
        (lambda: expired_identity(rotated=True), "certificate_expired"),
        (ca_issued_identity, "missing_node_id"),
    ],
    ids=["untrusted", "expired", "expired-rotated-leaf", "plain-ca-cert"],
)
async def test_bad_client_is_refused(
    pair: tuple[Node, Node], make_identity: object, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, b = pair
    assert callable(make_identity)
    bad = await start_node(make_identity())
    try:
        with caplog.at_level(logging.WARNING, logger="legacy_grpc"):
            with pytest.raises(PeerRejectedError) as info:
                await connect(bad, b)
        assert f"[{code}]" in info.value.reason
        assert info.value.reason_code == preamble.RejectReason.VERIFICATION_FAILED
        assert b.reverse_proxy.statistics().refused >= 1
        assert b.reverse_proxy.statistics().accepted == 0
        assert any(
            "refused peer" in r.getMessage() and code in r.getMessage() for r in caplog.records
        )
        assert b.servicer.callers == []
    finally:
        await bad.stop()


async def test_bad_server_is_refused(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    bad = await start_node(expired_identity())
    try:
        with pytest.raises(PeerVerificationError) as info:
            await connect(a, bad)
        assert "certificate_expired" in str(info.value)
        assert bad.reverse_proxy.statistics().accepted == 1  # it accepted us; we refused it
        assert bad.servicer.callers == []
    finally:
        await bad.stop()


async def test_wrong_node_behind_the_address() -> None:
    a = await start_node(NodeIdentity.generate())
    b = await start_node(NodeIdentity.generate())
    x = NodeIdentity.generate().node_id  # asked for X, but B answers at that address
    try:
        with pytest.raises(NodeIdMismatchError) as info:
            await connect(a, b, node_id=x)
        assert info.value.expected == x
        assert info.value.actual == b.node_id
        assert b.servicer.callers == []
    finally:
        await a.stop()
        await b.stop()


async def test_no_client_certificate(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = pair
    stranger = NodeIdentity.generate()
    reader, writer = await asyncio.open_connection(LOOPBACK, b.reverse_proxy.port)
    with caplog.at_level(logging.WARNING, logger="legacy_grpc"):
        writer.write(preamble.encode_hello(stranger.chain_der()[0]))
        assert await preamble.read_hello_reply(reader) is None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await writer.start_tls(ctx)  # TLS 1.3: the client finishes before the server decides
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            writer.write(preamble.encode_chain(stranger.chain_der()))
            await writer.drain()
            await reader.readexactly(1)
        writer.close()
        for _ in range(100):
            if b.reverse_proxy.statistics().failed_handshakes:
                break
            await asyncio.sleep(0.02)
    assert b.reverse_proxy.statistics().failed_handshakes == 1
    assert b.reverse_proxy.statistics().accepted == 0
    assert any("did not return a certificate" in r.getMessage() for r in caplog.records)


async def test_plain_tls_client_without_hello_is_told_why(pair: tuple[Node, Node]) -> None:
    _, b = pair
    reader, writer = await asyncio.open_connection(LOOPBACK, b.reverse_proxy.port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" + b"\x00" * 64)
    reply = await preamble.read_hello_reply(reader)
    writer.close()
    assert reply is not None
    assert reply.reason_code == preamble.RejectReason.MALFORMED
    assert "plain TLS client" in reply.reason


async def test_dial_refused_port_is_a_handshake_error(pair: tuple[Node, Node]) -> None:
    a, b = pair
    port = b.reverse_proxy.port
    await b.reverse_proxy.stop()
    with pytest.raises(HandshakeError):
        await a.forward_proxy.open_tunnel(b.node_id, LOOPBACK, port)


async def test_proxy_auth() -> None:
    creds = ProxyCredentials("agent", "s3cret:with@odd/chars")
    a = await start_node(NodeIdentity.generate(), auth=creds)
    b = await start_node(NodeIdentity.generate())
    try:
        # NodeConnection uses the proxy URI with the credentials: works.
        async with await connect(a, b) as conn:
            await conn.stub.Echo(common_pb2.EchoMessage(message="authed"))
        # A grpc channel with the wrong credentials gets 407; the typed error is kept.
        a.forward_proxy.set_node_host(b.node_id, LOOPBACK)
        uri = f"http://agent:wrong@{LOOPBACK}:{a.forward_proxy.port}"
        channel = grpc.aio.insecure_channel(
            node_target(b.node_id, b.reverse_proxy.port), options=[("grpc.http_proxy", uri)]
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as call_info:
                check = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=None,
                    response_deserializer=None,
                )
                await check(b"", timeout=5)
            assert call_info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close(None)
        assert isinstance(a.forward_proxy.last_failure(b.node_id), ProxyAuthError)
        # Raw: no credentials at all -> 407 with a challenge.
        status, head = await raw_connect(
            a.forward_proxy.port, f"{node_target(b.node_id, b.reverse_proxy.port)}"
        )
        assert status == 407
        assert 'proxy-authenticate: basic realm="quicshift"' in head.lower()
        # Raw with the right credentials -> 200.
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        status, _ = await raw_connect(
            a.forward_proxy.port,
            node_target(b.node_id, b.reverse_proxy.port),
            f"Proxy-Authorization: Basic {token}\r\n",
        )
        assert status == 200
    finally:
        await a.stop()
        await b.stop()


async def raw_connect(
    proxy_port: int, target: str, extra: str = "", method: str = "CONNECT"
) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy_port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    writer.close()
    return int(head.split(" ", 2)[1]), head


@pytest.mark.parametrize(
    ("target", "method", "status"),
    [
        ("127.0.0.1:443", "CONNECT", 400),
        ("vnotanodeid.node:443", "CONNECT", 400),
        (f"{NodeIdentity.generate().node_id}.node:99999", "CONNECT", 400),
        (f"{NodeIdentity.generate().node_id}.node:443", "CONNECT", 404),
        ("example.com:80", "GET", 405),
    ],
)
async def test_forward_proxy_bad_requests(
    pair: tuple[Node, Node], target: str, method: str, status: int
) -> None:
    a, _ = pair
    got, _ = await raw_connect(a.forward_proxy.port, target, method=method)
    assert got == status


async def test_stop_closes_everything(pair: tuple[Node, Node]) -> None:
    a, b = pair
    conn = await connect(a, b)
    await conn.stub.Echo(common_pb2.EchoMessage(message="x"))
    assert b.reverse_proxy.statistics().active == 1
    assert len(a.forward_proxy.tunnels()) == 1
    await b.reverse_proxy.stop()
    assert b.reverse_proxy.statistics().active == 0
    with pytest.raises(grpc.aio.AioRpcError):
        await conn.stub.Echo(common_pb2.EchoMessage(message="y"), timeout=2)
    await conn.close()
    for _ in range(100):
        if not a.forward_proxy.tunnels():
            break
        await asyncio.sleep(0.02)
    assert a.forward_proxy.tunnels() == []


async def test_tls_credentials_files_are_removed() -> None:
    identity = NodeIdentity.generate()
    creds = TLSCredentials(identity.private_key_pem(), identity.chain_pem())
    with creds:
        directory = creds._dir
        assert directory is not None and (directory / "key.pem").exists()
        assert oct((directory / "key.pem").stat().st_mode & 0o777) == "0o600"
    assert not directory.exists()
    with pytest.raises(ValueError, match="PEM"):
        TLSCredentials(b"junk", identity.chain_pem())


def test_connection_failed_is_the_base() -> None:
    assert issubclass(PeerRejectedError, ConnectionFailedError)
    assert issubclass(NodeIdMismatchError, ConnectionFailedError)
    assert issubclass(ProxyAuthError, ConnectionFailedError)


async def test_health_watch_follows_the_server() -> None:
    server = AgentGRPCServer()
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{port}")
    make_stub: Any = health_pb2_grpc.HealthStub
    stub = make_stub(channel)
    try:
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        unknown = await stub.Watch(health_pb2.HealthCheckRequest(service="nope")).read()
        assert unknown.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stopping = asyncio.create_task(server.stop(5))
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        eof: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
        assert await watch.read() == eof
        await stopping
    finally:
        await channel.close(None)
        await server.stop(0)


async def test_handshake_timeout_closes_silent_peers(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    _, b = pair
    proxy = ReverseProxy(b.credentials, node_verifier(), b.server.port, handshake_timeout=0.2)
    await proxy.start()
    try:
        with caplog.at_level(logging.WARNING, logger="legacy_grpc"):
            reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
            assert await reader.read() == b""  # closed by the proxy, nothing said
            writer.close()
        assert proxy.statistics().failed_handshakes == 1
        assert any("took over" in r.getMessage() for r in caplog.records)
    finally:
        await proxy.stop()


async def test_node_connection_to_a_closed_port_fails_fast(pair: tuple[Node, Node]) -> None:
    a, b = pair
    port = b.reverse_proxy.port
    await b.reverse_proxy.stop()
    with pytest.raises(HandshakeError, match="cannot connect"):
        await NodeConnection.connect(b.node_id, LOOPBACK, port, a.forward_proxy, timeout=30)


def test_legacy_grpc_stands_alone() -> None:
    code = (
        "import sys, legacy_grpc, legacy_grpc.node_connection, legacy_grpc.server;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('agent', 'quic_rpc', 'migration'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api() -> None:
    import legacy_grpc

    assert sorted(legacy_grpc.__all__) == sorted(
        [
            "NODE_HOST_SUFFIX",
            "AgentGRPCServer",
            "ConnectTimeoutError",
            "ConnectionFailedError",
            "ForwardProxy",
            "HandshakeError",
            "HealthService",
            "LegacyGRPCError",
            "NodeConnection",
            "NodeIdMismatchError",
            "PeerConnectionInfo",
            "PeerRefusedError",
            "PeerRejectedError",
            "PeerVerificationError",
            "PreambleError",
            "ProxyAuthError",
            "ProxyCredentials",
            "ProxyStateError",
            "ReverseProxy",
            "ReverseProxyStatistics",
            "SecureConnection",
            "ServiceBinding",
            "TLSCredentials",
            "Tunnel",
            "UnknownNodeError",
            "Verifier",
            "accept_peer",
            "dial_peer",
            "node_target",
            "parse_grpc_peer",
        ]
    )
    for name in legacy_grpc.__all__:
        assert getattr(legacy_grpc, name) is not None
