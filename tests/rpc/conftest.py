"""Fixtures for the RPC tests: one behaviour suite, parametrized over transports.

``rpc_transport`` runs each test over every registered transport: "memory"
(quic_rpc.transports.memory), "tcp" and "tls" (quic_rpc.transports.tcp) and "quic"
(quic_rpc.quic, mutual TLS). To add one, register a factory: an async context manager
that takes the server's StreamHandler, serves it, and yields a client StreamOpener
connected to it; call ``pytest.skip`` inside it when the transport is unavailable::

    @register_transport("websocket")
    @contextlib.asynccontextmanager
    async def _websocket(handler):
        server = await start_ws_server(handler)
        conn = await connect_ws(server.url)
        try:
            yield conn
        finally:
            await conn.aclose()
            await server.stop()
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from quic_rpc.rpc import (
    Handler,
    Middleware,
    RPCClient,
    RPCClientConfig,
    RPCServer,
    RPCServerConfig,
)
from quic_rpc.streams import StreamHandler, StreamOpener

TransportFactory = Callable[[StreamHandler], AbstractAsyncContextManager[StreamOpener]]

TRANSPORTS: dict[str, TransportFactory] = {}


def register_transport(name: str) -> Callable[[TransportFactory], TransportFactory]:
    """Add a transport to the behaviour suite (see the module docstring)."""

    def register(factory: TransportFactory) -> TransportFactory:
        TRANSPORTS[name] = factory
        return factory

    return register


@register_transport("memory")
@contextlib.asynccontextmanager
async def _memory_transport(handler: StreamHandler) -> AsyncIterator[StreamOpener]:
    from quic_rpc.transports.memory import memory_connection

    conn = memory_connection(handler)
    try:
        yield conn
    finally:
        await conn.aclose()


@register_transport("tcp")
@contextlib.asynccontextmanager
async def _tcp_transport(handler: StreamHandler) -> AsyncIterator[StreamOpener]:
    try:
        from quic_rpc.transports.tcp import TCPServer, connect_tcp
    except ImportError as exc:  # pragma: no cover - depends on the tree
        pytest.skip(f"TCP transport unavailable: {exc}")
    server = TCPServer()
    await server.start("127.0.0.1", 0, handler)
    conn = await connect_tcp("127.0.0.1", server.port)
    try:
        yield conn
    finally:
        await conn.aclose()
        await server.stop()


_QUIC_PKI: list[Any] = []


def _test_pki() -> Any:
    from tests.quic.certs import PKI

    if not _QUIC_PKI:
        _QUIC_PKI.append(PKI("p256"))
    return _QUIC_PKI[0]


@register_transport("tls")
@contextlib.asynccontextmanager
async def _tls_transport(handler: StreamHandler) -> AsyncIterator[StreamOpener]:
    import ssl
    import tempfile
    from pathlib import Path

    try:
        from quic_rpc.transports.tcp import TCPServer, connect_tcp
        from tests.quic.certs import key_pem, pem
    except ImportError as exc:  # pragma: no cover - depends on the tree
        pytest.skip(f"TLS transport unavailable: {exc}")
    pki = _test_pki()
    key, chain = pki.leaf("server")
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(pem(*chain))
        key_file.write_bytes(key_pem(key))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cadata=pki.root_pem.decode())
    server = TCPServer()
    await server.start("127.0.0.1", 0, handler, ssl=server_context)
    conn = await connect_tcp(
        "127.0.0.1", server.port, ssl=client_context, server_hostname="localhost"
    )
    try:
        yield conn
    finally:
        await conn.aclose()
        await server.stop()


@register_transport("quic")
@contextlib.asynccontextmanager
async def _quic_transport(handler: StreamHandler) -> AsyncIterator[StreamOpener]:
    try:
        from quic_rpc.quic import QUICServer, QUICSocket, ca_verifier, connect
    except ImportError as exc:  # pragma: no cover - depends on the tree
        pytest.skip(f"QUIC transport unavailable: {exc}")
    pki = _test_pki()
    server_socket = await QUICSocket.bind("127.0.0.1", 0)
    server = QUICServer(
        server_socket, pki.credentials(ca_verifier(pki.root_pem), "server"), None, handler
    )
    await server.start()
    client_socket = await QUICSocket.bind("127.0.0.1", 0)
    conn = await connect(
        client_socket,
        "127.0.0.1",
        server_socket.local_address[1],
        pki.credentials(ca_verifier(pki.root_pem), "client"),
    )
    try:
        yield conn
    finally:
        await conn.aclose()
        await client_socket.close()
        await server.stop(0)
        await server_socket.close()


class RPCTransport:
    """One transport under test: ``await attach(handler)`` serves ``handler`` and returns
    a client opener connected to it; ``serve(...)`` does the same for an RPCServer."""

    def __init__(self, name: str, factory: TransportFactory, stack: contextlib.AsyncExitStack):
        self.name = name
        self._factory = factory
        self._stack = stack

    async def attach(self, handler: StreamHandler) -> StreamOpener:
        return await self._stack.enter_async_context(self._factory(handler))

    async def serve(
        self,
        manifest: Mapping[str, Handler[Any, Any]],
        *,
        server_middleware: Sequence[Middleware] = (),
        client_middleware: Sequence[Middleware] = (),
        server_config: RPCServerConfig | None = None,
        client_config: RPCClientConfig | None = None,
        expose_exception_details: bool | None = None,
    ) -> tuple[RPCServer, RPCClient]:
        server = RPCServer(
            manifest,
            middleware=server_middleware,
            config=server_config,
            expose_exception_details=expose_exception_details,
        )
        opener = await self.attach(server.handle_stream)
        self._stack.push_async_callback(server.stop, 0)
        return server, RPCClient(opener, middleware=client_middleware, config=client_config)


@pytest.fixture(params=sorted(TRANSPORTS))
async def rpc_transport(request: pytest.FixtureRequest) -> AsyncIterator[RPCTransport]:
    factory = TRANSPORTS[request.param]
    async with contextlib.AsyncExitStack() as stack:
        yield RPCTransport(request.param, factory, stack)
