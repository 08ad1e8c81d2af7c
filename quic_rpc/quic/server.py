"""QUICServer: accepts QUIC connections on a shared QUICSocket."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..streams import StreamHandler
from .config import MIN_DATAGRAM_SIZE, QUICConfig, config_for_peer, pmtu_ceiling
from .connection import QUICConnection, display_host
from .engine import CONNECTION_ID_LENGTH, EngineConnection, PacketHeader, RetryTokens
from .errors import HandshakeError, SocketClosedError
from .socket import QUICSocket
from .tls import ServerSessionStore, TLSCredentials

__all__ = ["HandshakeFailure", "QUICServer"]

_log = logging.getLogger(__name__)
_FAILURES_KEPT = 256
_CONNECTION_REFUSED = 0x2


@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """A connection attempt that never became established, and why."""

    remote_host: str
    remote_port: int
    error: HandshakeError
    timestamp: float


class QUICServer:
    """Serves peer-opened streams with ``stream_handler`` (called once per stream).

    ``on_connection`` is called with each connection once its handshake completed and the
    client's certificate chain was accepted; ``on_handshake_failure`` with a
    :class:`HandshakeFailure` for each rejected or failed attempt (also kept, most
    recent last, in :attr:`handshake_failures`).
    """

    def __init__(
        self,
        socket: QUICSocket,
        credentials: TLSCredentials,
        config: QUICConfig | None = None,
        stream_handler: StreamHandler | None = None,
        *,
        on_connection: Callable[[QUICConnection], Any] | None = None,
        on_handshake_failure: Callable[[HandshakeFailure], Any] | None = None,
    ) -> None:
        if stream_handler is None:
            raise TypeError("a QUICServer needs a stream_handler")
        self._socket = socket
        self._credentials = credentials
        self._config = config if config is not None else QUICConfig()
        self._stream_handler = stream_handler
        self._on_connection = on_connection
        self._on_handshake_failure = on_handshake_failure
        self._retry = RetryTokens() if self._config.retry else None
        self._sessions = (
            ServerSessionStore(self._config.session_store_size)
            if self._config.session_resumption
            else None
        )
        self._all: set[QUICConnection] = set()
        self._established: dict[QUICConnection, None] = {}
        self._failures: deque[HandshakeFailure] = deque(maxlen=_FAILURES_KEPT)
        self._serving = False
        self.refused = 0
        """Connection attempts dropped because ``max_connections`` was reached."""

    def __repr__(self) -> str:
        host, port = self._socket.local_address
        return f"<QUICServer {host}:{port} connections={len(self._established)}>"

    @property
    def socket(self) -> QUICSocket:
        return self._socket

    @property
    def config(self) -> QUICConfig:
        return self._config

    @property
    def connections(self) -> list[QUICConnection]:
        """Established connections (handshake done, client certificate accepted)."""
        return list(self._established)

    @property
    def session_store(self) -> ServerSessionStore | None:
        """The sessions behind the tickets we issued (``None`` without
        ``QUICConfig.session_resumption``)."""
        return self._sessions

    @property
    def handshake_failures(self) -> list[HandshakeFailure]:
        return list(self._failures)

    @property
    def is_serving(self) -> bool:
        return self._serving

    async def start(self) -> None:
        """Start accepting connections on the socket."""
        if not self._socket.is_open:
            raise SocketClosedError("start the QUICSocket before the server")
        self._socket._attach_server(self)
        self._serving = True

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight streams finish within ``grace`` seconds (default
        ``QUICConfig.graceful_stop_timeout``), then close every connection."""
        self._serving = False
        self._socket._detach_server(self)
        connections = list(self._all)
        if connections:
            await asyncio.gather(
                *(conn.aclose(grace, reason="server stopping") for conn in connections)
            )

    async def abort(self) -> None:
        """Stop accepting and close every connection at once, cancelling handlers."""
        self._serving = False
        self._socket._detach_server(self)
        connections = list(self._all)
        for conn in connections:
            conn.abort("server aborted")
        for conn in connections:
            await conn.wait_closed()

    async def __aenter__(self) -> QUICServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- called by the socket ------------------------------------------------------------

    def _socket_closed(self) -> None:
        self._serving = False

    def _accept_initial(
        self, header: PacketHeader, data: bytes, peer: tuple[str, int], now: float
    ) -> QUICConnection | None:
        if not self._serving:
            return None
        if len(self._all) >= self._config.max_connections:
            self.refused += 1
            _log.warning(
                "%r: refusing a connection from %s:%d (max_connections=%d reached)",
                self,
                display_host(peer[0]),
                peer[1],
                self._config.max_connections,
            )
            self._refuse(header, data, peer, now)
            return None
        original_dcid = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not header.token:
                reply = self._retry.retry_packet(
                    header, peer, os.urandom(CONNECTION_ID_LENGTH), now
                )
                self._socket._sendto(reply, peer)
                return None
            validated = self._retry.validate(header, peer, now)
            if validated is None:
                return None
            original_dcid = validated
            retry_scid = header.destination_cid
        config = config_for_peer(self._config, peer[0])
        engine = EngineConnection(
            config=config,
            credentials=self._credentials,
            is_client=False,
            reset_key=self._socket._reset_key,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
            session_store=self._sessions,
            handshake_datagram_size=self._config.max_datagram_size,
            pmtu_ceiling=pmtu_ceiling(self._config, peer[0], peer[1]),
        )
        conn = QUICConnection(self._socket, engine, config, stream_handler=self._stream_handler)
        conn._datagram_received(data, peer, now)
        if not engine.packet_received:
            # Nothing in it could be decrypted: garbage or spoofed. Keep no state, or a
            # burst of such datagrams would hold max_connections for handshake_timeout.
            self._socket.datagrams_dropped += 1
            return None
        conn._on_established = self._connection_established
        conn._on_finalized = self._connection_finalized
        conn._on_handshake_failed = self._handshake_failed
        self._all.add(conn)
        self._socket._add_connection(conn, [header.destination_cid, engine.host_cid])
        conn._start_handshake_timer()
        return conn

    def _refuse(self, header: PacketHeader, data: bytes, peer: tuple[str, int], now: float) -> None:
        """Answer with CONNECTION_REFUSED so the client fails fast instead of timing out."""
        config = config_for_peer(self._config, peer[0])
        engine = EngineConnection(
            config=config,
            credentials=self._credentials,
            is_client=False,
            reset_key=self._socket._reset_key,
            original_destination_connection_id=header.destination_cid,
            handshake_datagram_size=(MIN_DATAGRAM_SIZE if self._config.pmtu_discovery else None),
        )
        engine.receive_datagram(data, peer, now)
        # a transport-level close (frame_type given), as CONNECTION_REFUSED is a transport code
        engine.close(
            error_code=_CONNECTION_REFUSED, frame_type=0, reason_phrase="server at max_connections"
        )
        self._socket._send_datagrams(engine.datagrams_to_send(now))

    def _connection_established(self, conn: QUICConnection) -> None:
        self._established[conn] = None
        callback = self._on_connection
        if callback is not None:
            try:
                result = callback(conn)
                if asyncio.iscoroutine(result):
                    result.close()
                    raise TypeError("on_connection must be a plain function, not async")
            except Exception:
                _log.exception("%r: on_connection callback failed", self)

    def _connection_finalized(self, conn: QUICConnection) -> None:
        self._all.discard(conn)
        self._established.pop(conn, None)

    def _handshake_failed(self, conn: QUICConnection) -> None:
        error = conn.handshake_error
        if error is None:
            return
        host, port = conn.remote_address
        failure = HandshakeFailure(host, port, error, time.time())
        self._failures.append(failure)
        _log.warning("%r: handshake with %s:%d failed: %s", self, host, port, error)
        callback = self._on_handshake_failure
        if callback is not None:
            try:
                callback(failure)
            except Exception:
                _log.exception("%r: on_handshake_failure callback failed", self)
