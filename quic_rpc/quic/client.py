"""Dialling QUIC connections from a shared QUICSocket."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress

from ..streams import StreamHandler
from .config import QUICConfig, config_for_peer, pmtu_ceiling
from .connection import QUICConnection
from .engine import ClientResumption, EngineConnection
from .errors import HandshakeError
from .socket import QUICSocket
from .tls import SessionCache, TLSCredentials

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
    session_cache: SessionCache | None = None,
) -> QUICConnection:
    """Dial ``host``:``port`` from ``socket`` and return the established connection.

    Returns only once the server has confirmed the handshake (HANDSHAKE_DONE), i.e. it
    accepted our certificate chain; our ``credentials.verify`` has accepted the server's.
    ``server_name`` is sent as SNI (defaults to ``host`` when it is a name).
    ``stream_handler``, if given, serves streams the server opens on this connection;
    otherwise they are refused.

    With ``config.session_resumption`` on, a ticket from an earlier connection to the
    same address (in ``session_cache``, default ``credentials.sessions``) is offered if
    ``credentials.verify`` accepts, now, the server chain that session was established
    with; the connection then reports that chain and the identity the callback just
    returned, as after a full handshake. If the server does not resume it, the handshake
    is a full one. Never 0-RTT.

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
    resumption: ClientResumption | None = None
    if config.session_resumption:
        cache = session_cache if session_cache is not None else credentials.sessions
        key = SessionCache._key(addr, server_name, config.alpn, credentials.chain_der)
        offer = cache._take(key)
        identity = None
        if offer is not None:
            try:
                identity = credentials.verify(offer.peer_chain)
                if inspect.isawaitable(identity):
                    close = getattr(identity, "close", None)
                    if close is not None:
                        close()
                    offer = None
            except Exception:
                offer = None  # the chain is not acceptable now: a full handshake
        resumption = ClientResumption(
            cache, key, config.session_ticket_lifetime, offer=offer, identity=identity
        )
    handshake_size = config.max_datagram_size
    ceiling = pmtu_ceiling(config, addr[0], addr[1])
    config = config_for_peer(config, addr[0])
    engine = EngineConnection(
        config=config,
        credentials=credentials,
        is_client=True,
        reset_key=socket._reset_key,
        server_name=server_name,
        resumption=resumption,
        handshake_datagram_size=handshake_size,
        pmtu_ceiling=ceiling,
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
        session_cache: SessionCache | None = None,
    ) -> None:
        self._socket = socket
        self._session_cache = session_cache
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
            session_cache=self._session_cache,
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
