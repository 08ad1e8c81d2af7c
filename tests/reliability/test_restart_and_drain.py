"""Peer crash and restart (the client notices through a stateless reset and reconnects),
and a graceful server shutdown that drains in-flight calls while refusing new ones.
Nothing is lost silently: every call either completes with its exact response or fails
with a typed status."""

from __future__ import annotations

import asyncio
import os

from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket, ca_verifier, connect
from quic_rpc.rpc import RPCClient, RPCError, RPCServer, ServerCallContext, Status, unary
from tests.quic.certs import PKI
from tests.quic.helpers import wait_for_condition

from .conftest import Counters, assert_healthy, make_manifest


def _manifest(counters: Counters, release: asyncio.Event) -> dict[str, object]:
    async def slow(request: bytes, ctx: ServerCallContext) -> bytes:
        counters.hit("slow")
        await release.wait()
        return b"done:" + request

    return make_manifest(counters) | {"/t.S/Slow": unary(slow)}


async def _start(
    pki: PKI, port: int, reset_key: bytes, counters: Counters, release: asyncio.Event
) -> tuple[RPCServer, QUICServer, QUICSocket]:
    rpc = RPCServer(_manifest(counters, release))  # type: ignore[arg-type]
    sock = await QUICSocket.bind("127.0.0.1", port, reset_key=reset_key)
    server = QUICServer(
        sock, pki.credentials(ca_verifier(pki.root_pem), "server"), None, rpc.handle_stream
    )
    await server.start()
    return rpc, server, sock


async def test_peer_crash_and_restart(pki: PKI) -> None:
    key = os.urandom(32)
    counters, release = Counters(), asyncio.Event()
    rpc, server, sock = await _start(pki, 0, key, counters, release)
    port = sock.local_address[1]
    csock = await QUICSocket.bind("127.0.0.1", 0)
    creds = pki.credentials(ca_verifier(pki.root_pem), "client")
    try:
        conn = await connect(csock, "127.0.0.1", port, creds, QUICConfig(idle_timeout=60))
        client = RPCClient(conn)
        await assert_healthy(client)
        in_flight = [asyncio.ensure_future(client.unary("/t.S/Slow", b"%d" % i)) for i in range(5)]
        await wait_for_condition(lambda: counters.calls.get("slow", 0) == 5)
        # crash: the process state is gone at once and nothing more is sent (in-process
        # stand-in for kill -9: the socket's send path is cut before it closes)
        sock._send_datagrams = lambda datagrams: None  # type: ignore[method-assign]
        sock._sendto = lambda data, addr: None  # type: ignore[method-assign]
        await sock.close()
        await asyncio.sleep(0)
        rpc2, server2, sock2 = await _start(pki, port, key, Counters(), asyncio.Event())
        try:
            # the client's next call hits the restarted server, which answers with a
            # stateless reset: the connection ends long before its 60 s idle timeout.
            # (A bare keepalive PING is below the 43-byte reset threshold: see
            # docs/RELIABILITY.md.)
            try:
                await client.unary("/t.S/Echo", b"after the crash", timeout=15)
            except RPCError as exc:
                assert exc.status is Status.UNAVAILABLE, exc
            else:
                raise AssertionError("a call succeeded on a connection to a crashed peer")
            await wait_for_condition(lambda: conn.is_closed, 15)
            assert "stateless reset" in str(conn.close_reason)
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            for r in results:
                assert isinstance(r, RPCError), r
                assert r.status in (Status.UNAVAILABLE, Status.CANCELLED), r
            conn2 = await connect(csock, "127.0.0.1", port, creds)
            await assert_healthy(RPCClient(conn2))
            conn2.abort()
        finally:
            await server2.abort()
            await rpc2.stop(0)
            await sock2.close()
    finally:
        await server.abort()
        await rpc.stop(0)
        await csock.close()


async def test_graceful_shutdown_drains_in_flight_calls(pki: PKI) -> None:
    counters, release = Counters(), asyncio.Event()
    rpc, server, sock = await _start(pki, 0, os.urandom(32), counters, release)
    csock = await QUICSocket.bind("127.0.0.1", 0)
    creds = pki.credentials(ca_verifier(pki.root_pem), "client")
    try:
        conn = await connect(csock, "127.0.0.1", sock.local_address[1], creds)
        client = RPCClient(conn)
        in_flight = [asyncio.ensure_future(client.unary("/t.S/Slow", b"%d" % i)) for i in range(10)]
        await wait_for_condition(lambda: counters.calls.get("slow", 0) == 10)
        stopping = asyncio.ensure_future(rpc.stop(grace=30))
        await wait_for_condition(lambda: rpc.closing)
        # new calls are refused with a typed, retryable status while the old ones drain
        try:
            await client.unary("/t.S/Echo", b"late", timeout=10)
        except RPCError as exc:
            assert exc.status is Status.UNAVAILABLE, exc
        else:
            raise AssertionError("a new call was accepted during shutdown")
        release.set()
        results = await asyncio.gather(*in_flight)
        assert results == [b"done:%d" % i for i in range(10)]  # every one, exact
        await stopping
        assert rpc.active_calls == 0
        await server.stop(grace=5)
        assert counters.calls.get("echo", 0) == 0
    finally:
        await server.abort()
        await csock.close()
        await sock.close()
