"""In-memory channels to the adapter's servers, for users' own tests.

The calls run over quic_rpc's wire protocol on :func:`quic_rpc.transports.memory_connection`
— the same code path as QUIC minus the sockets and TLS — so tests need no ports or
certificates::

    server = quic_grpc.aio.server()
    add_MyServicer_to_server(MyServicer(), server)
    async with quic_grpc.testing.aio_memory_channel(server) as channel:
        reply = await MyStub(channel).Method(request)

The aio server needs no ``start()`` for this. ``memory_channel`` does the same for a sync
server (its servicers run in the server's thread pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quic_rpc.streams import ByteStream, PeerInfo, StreamOpener
from quic_rpc.transports.memory import MemoryClientConnection, memory_connection

from ._aio_channel import AioChannel
from ._channel import Channel
from ._server import AioServer, Server
from ._wire import StreamClientTransport, serve_stream

__all__ = ["aio_memory_channel", "memory_channel"]

_CLIENT_PEER = PeerInfo(transport="memory", remote_host="127.0.0.1", remote_port=1)


class _MemoryConnector:
    def __init__(self, server: AioServer | Server, max_receive: int | None) -> None:
        self._server = server
        self._max_receive = max_receive
        self._connections: list[MemoryClientConnection] = []

    async def _handle(self, stream: ByteStream) -> None:
        await serve_stream(stream, self._server.dispatch, max_receive=self._max_receive)

    async def connect(self) -> StreamOpener:
        connection = memory_connection(self._handle, server_peer_info=_CLIENT_PEER)
        self._connections.append(connection)
        return connection

    async def disconnect(self, opener: StreamOpener) -> None:
        if isinstance(opener, MemoryClientConnection):
            await opener.aclose()

    async def aclose(self) -> None:
        connections, self._connections = self._connections, []
        for connection in connections:
            await connection.aclose()


def _transport(
    server: AioServer | Server, options: Sequence[tuple[str, Any]] | None
) -> StreamClientTransport:
    from ._server import DEFAULT_MAX_RECEIVE, _limit

    max_receive = _limit(
        dict(options or ()).get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE)
    )
    return StreamClientTransport(_MemoryConnector(server, max_receive), max_receive=max_receive)


def aio_memory_channel(
    server: AioServer,
    *,
    options: Sequence[tuple[str, Any]] | None = None,
    interceptors: Sequence[Any] | None = None,
) -> AioChannel:
    """An aio channel whose calls reach ``server`` in memory (same event loop)."""
    return AioChannel(_transport(server, options), options=options, interceptors=interceptors)


def memory_channel(server: Server, *, options: Sequence[tuple[str, Any]] | None = None) -> Channel:
    """A sync channel whose calls reach the sync ``server`` in memory."""
    return Channel(lambda: _transport(server, options), options=options)
