"""Dialling QUIC connections from a shared QUICSocket."""

from __future__ import annotations

import asyncio
import ipaddress

from ..streams import StreamHandler
from .config import QUICConfig
from .connection import QUICConnection
from .engine import EngineConnection
from .errors import HandshakeError
from .socket import QUICSocket
from .tls import TLSCredentials

__all__ = ["QUICClient", "connect"]


async def connect(
    socket: QUICSocket,
    host: str,
    port: int,
    credentials: TLSCredentials,
    config: QUICConfig | None = None,
    server_name: str | None = None,
    *,
    stream_handler: StreamHandler | None = None,
) -> QUICConnection:
    """Dial ``host``:``port`` from ``socket`` and return the established connection.

    Returns only once the server has confirmed the handshake (HANDSHAKE_DONE), i.e. it
    accepted our certificate chain; our ``credentials.verify`` has accepted the server's.
    ``server_name`` is sent as SNI (defaults to ``host`` when it is a name).
    ``stream_handler``, if given, serves streams the server opens on this connection;
    otherwise they are refused.

    Raises :class:`~quic_rpc.quic.CertificateRejectedByPeerError` when the server rejected
    our certificate, :class:`~quic_rpc.quic.PeerCertificateRejectedError` when we
    rejected the server's, :class:`~quic_rpc.quic.HandshakeTimeoutError` on timeout and
    :class:`~quic_rpc.quic.HandshakeError` for other handshake failures.
    """
    config = config if config is not None else QUICConfig()
    socket._check_open()
    addr = await socket._resolve(host, port)
    if server_name is None:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            server_name = host
    engine = EngineConnection(
        config=config,
        credentials=credentials,
        is_client=True,
        reset_key=socket._reset_key,
        server_name=server_name,
    )
    conn = QUICConnection(socket, engine, config, stream_handler=stream_handler)
    socket._add_connection(conn, [engine.host_cid])
    loop = asyncio.get_running_loop()
    engine.connect(addr, now=loop.time())
    conn._start_handshake_timer()
    conn._schedule_flush()
    try:
        await conn.wait_established()
    except HandshakeError:
        conn.abort("handshake failed")
        raise
    except BaseException:
        conn.abort("connect cancelled")
        raise
    return conn


class QUICClient:
    """Dials connections from one socket with one set of credentials and config."""

    def __init__(
        self,
        socket: QUICSocket,
        credentials: TLSCredentials,
        config: QUICConfig | None = None,
        *,
        stream_handler: StreamHandler | None = None,
    ) -> None:
        self._socket = socket
        self._credentials = credentials
        self._config = config if config is not None else QUICConfig()
        self._stream_handler = stream_handler
        self._connections: set[QUICConnection] = set()

    @property
    def connections(self) -> list[QUICConnection]:
        """Connections made by this client that are not closed yet."""
        return [c for c in self._connections if not c.is_closed]

    async def connect(self, host: str, port: int, server_name: str | None = None) -> QUICConnection:
        conn = await connect(
            self._socket,
            host,
            port,
            self._credentials,
            self._config,
            server_name,
            stream_handler=self._stream_handler,
        )
        self._connections.add(conn)
        conn._on_finalized = self._connections.discard
        return conn

    async def close(self, grace: float | None = None) -> None:
        """Gracefully close every connection made by this client."""
        connections = list(self._connections)
        if connections:
            await asyncio.gather(*(c.aclose(grace, reason="client closing") for c in connections))
        self._connections.clear()
