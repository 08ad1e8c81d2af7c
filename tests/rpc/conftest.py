"""Fixtures for the RPC tests: one behaviour suite, parametrized over transports.

To run the suite over another transport, register a factory: an async context manager
that takes the server's StreamHandler, serves it, and yields a client StreamOpener
connected to it. Call ``pytest.skip`` inside the factory when the transport is not
available here. Example::

    @register_transport("tcp")
    @contextlib.asynccontextmanager
    async def _tcp(handler):
        server = await start_tcp_server(handler, "127.0.0.1", 0)
        conn = await connect_tcp(*server.address)
        try:
            yield conn
        finally:
            await conn.aclose(); await server.aclose()
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
