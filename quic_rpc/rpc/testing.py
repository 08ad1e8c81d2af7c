"""Testing helpers for users of quic_rpc.rpc: a server and a client joined in memory.

    async with serve_in_memory({"/svc/Echo": unary(echo)}) as (server, client):
        assert await client.unary("/svc/Echo", b"hi") == b"hi"

The in-memory transport (``quic_rpc.transports.memory``) is imported only when a helper
runs, so importing :mod:`quic_rpc.rpc` never pulls a transport in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from .client import RPCClient
from .config import RPCClientConfig, RPCServerConfig
from .handlers import Handler
from .middleware import Middleware
from .server import RPCServer

__all__ = ["serve_in_memory"]


@contextlib.asynccontextmanager
async def serve_in_memory(
    manifest: Mapping[str, Handler[Any, Any]] | RPCServer,
    *,
    server_middleware: Sequence[Middleware] = (),
    client_middleware: Sequence[Middleware] = (),
    server_config: RPCServerConfig | None = None,
    client_config: RPCClientConfig | None = None,
    client_identity: Any = None,
    server_identity: Any = None,
) -> AsyncIterator[tuple[RPCServer, RPCClient]]:
    """Serve ``manifest`` (or an existing RPCServer) over an in-memory connection and
    yield ``(server, client)``; on exit the server stops and the connection closes.
    ``client_identity`` is what handlers see as ``ctx.peer_info.identity``."""
    from quic_rpc.transports.memory import memory_connection

    if isinstance(manifest, RPCServer):
        server = manifest
    else:
        server = RPCServer(manifest, middleware=server_middleware, config=server_config)
    conn = memory_connection(
        server.handle_stream, client_identity=client_identity, server_identity=server_identity
    )
    try:
        yield server, RPCClient(conn, middleware=client_middleware, config=client_config)
    finally:
        await server.stop(0)
        await conn.aclose()
