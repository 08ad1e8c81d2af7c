"""QUICSocket takes over an already bound UDP socket (the port is known synchronously)."""

from __future__ import annotations

import socket

import pytest

from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket, TLSCredentials, connect, gso_supported

from .helpers import echo_handler, request


def _bound(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _ipv6_loopback() -> bool:
    try:
        _bound(socket.AF_INET6, "::1").close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("family", "host"),
    [
        (socket.AF_INET, "127.0.0.1"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
)
async def test_server_on_handed_over_socket(
    family: socket.AddressFamily,
    host: str,
    server_creds: TLSCredentials,
    client_creds: TLSCredentials,
) -> None:
    raw = _bound(family, host)
    port = raw.getsockname()[1]  # known before any await
    ssock = QUICSocket.from_socket(raw)
    assert ssock.local_address == (host, port)
    async with ssock, await QUICSocket.bind(host, 0) as csock:
        assert not raw.getblocking()
        assert ssock.local_address == (host, port)
        assert ssock.gso_enabled == (ssock.io_mode == "selector" and gso_supported())
        server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
        await server.start()
        conn = await connect(csock, host, port, client_creds)
        assert await request(conn, b"handed over") == b"handed over"
        conn.abort("done")
    assert raw.fileno() == -1  # closing the QUICSocket closed the handed-over socket


async def test_dual_stack_socket_keyword(
    server_creds: TLSCredentials, client_creds: TLSCredentials
) -> None:
    try:
        raw = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        raw.bind(("::", 0))
    except OSError:
        pytest.skip("no dual-stack IPv6")
    port = raw.getsockname()[1]
    async with QUICSocket(sock=raw) as ssock, await QUICSocket.bind("127.0.0.1", 0) as csock:
        server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
        await server.start()
        conn = await connect(csock, "127.0.0.1", port, client_creds)  # IPv4 to "::"
        assert await request(conn, b"v4 to dual") == b"v4 to dual"
        conn.abort("done")


async def test_rejects_unusable_sockets() -> None:
    unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ValueError, match="not bound"):
            QUICSocket.from_socket(unbound)
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            QUICSocket(sock=tcp)
    finally:
        unbound.close()
        tcp.close()


async def test_close_before_start_closes_handed_over_socket() -> None:
    raw = _bound(socket.AF_INET, "127.0.0.1")
    qsock = QUICSocket.from_socket(raw)
    await qsock.close()
    assert raw.fileno() == -1
