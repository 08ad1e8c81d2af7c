"""ReverseProxy: terminates mutual TLS from peer nodes and forwards to the local gRPC server.

Each accepted connection runs the handshake of :mod:`legacy_grpc.tls` (TLS 1.3, client
certificate required, full chain verified by the ``verify`` callback), then opens a
plaintext TCP connection to the gRPC server on loopback and splices the two. The local
port of that proxy→server connection is what the gRPC server reports as the caller
(``context.peer() == "ipv4:127.0.0.1:PORT"``), so the proxy keeps a map from that port
to the peer's :class:`PeerConnectionInfo`: handlers learn who called with
:meth:`ReverseProxy.connection_info_for_peer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from legacy_grpc._splice import splice
from legacy_grpc.errors import HandshakeError, PeerRefusedError, ProxyStateError
from legacy_grpc.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    PeerConnectionInfo,
    TLSCredentials,
    Verifier,
    accept_peer,
    close_writer,
)

__all__ = ["ReverseProxy", "ReverseProxyStatistics", "parse_grpc_peer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReverseProxyStatistics:
    accepted: int
    refused: int
    failed_handshakes: int
    active: int


def parse_grpc_peer(peer: str) -> tuple[str, int]:
    """Parse grpc's ``context.peer()`` (``ipv4:H:P``, ``ipv6:[H]:P``, ``ipv6:%5BH%5D:P``)
    into ``(host, port)``; raises ValueError for anything else."""
    scheme, sep, rest = peer.partition(":")
    rest = unquote(rest)
    if not sep or scheme not in ("ipv4", "ipv6"):
        raise ValueError(f"not a grpc TCP peer string: {peer!r}")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"grpc peer string has no port: {peer!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"grpc peer port out of range: {peer!r}")
    if scheme == "ipv6":
        host = host.removeprefix("[").removesuffix("]")
    return host, port


class ReverseProxy:
    """Public TLS endpoint of a node on the legacy stack.

    ``start()`` listens on ``host:port`` (port 0 picks one; see :attr:`port`);
    ``stop()`` closes the listener and every proxied connection.
    """

    def __init__(
        self,
        credentials: TLSCredentials,
        verify: Verifier,
        backend_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backend_host: str = "127.0.0.1",
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._credentials = credentials
        self._verify = verify
        self._backend = (backend_host, backend_port)
        self._bind = (host, port)
        self._handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_local_port: dict[int, PeerConnectionInfo] = {}
        self._accepted = 0
        self._refused = 0
        self._failed = 0
        self._stopped = False

    @property
    def host(self) -> str:
        return self._bind[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise ProxyStateError("reverse proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise ProxyStateError("reverse proxy already started or stopped")
        self._credentials.open()
        self._server = await asyncio.start_server(self._on_connection, *self._bind)
        logger.info("reverse proxy on %s:%d -> %s:%d", self.host, self.port, *self._backend)

    async def stop(self) -> None:
        """Stop listening and close every connection; idempotent."""
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._by_local_port.clear()

    async def __aenter__(self) -> ReverseProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def statistics(self) -> ReverseProxyStatistics:
        return ReverseProxyStatistics(
            self._accepted, self._refused, self._failed, len(self._by_local_port)
        )

    def connection_info_by_local_port(self, port: int) -> PeerConnectionInfo | None:
        """The peer behind the proxy→server connection whose local port is ``port``."""
        return self._by_local_port.get(port)

    def connection_info_for_peer(self, grpc_peer: str) -> PeerConnectionInfo | None:
        """The peer behind a gRPC call, given the handler's ``context.peer()``."""
        host, port = parse_grpc_peer(grpc_peer)
        if host != self._backend[0]:
            return None
        return self._by_local_port.get(port)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside a task when called by asyncio
        if self._stopped:
            await close_writer(writer)
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            await close_writer(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await accept_peer(
                reader, writer, self._credentials, self._verify, timeout=self._handshake_timeout
            )
        except PeerRefusedError as exc:
            self._refused += 1
            logger.warning("reverse proxy: %s", exc)
            return
        except HandshakeError as exc:
            self._failed += 1
            logger.warning("reverse proxy: %s", exc)
            return
        except Exception:
            self._failed += 1
            logger.exception("reverse proxy: unexpected error in handshake")
            return
        try:
            b_reader, b_writer = await asyncio.open_connection(*self._backend)
        except OSError as exc:
            logger.error("reverse proxy: gRPC server %s:%d unreachable: %s", *self._backend, exc)
            return
        local_port: int = b_writer.get_extra_info("sockname")[1]
        self._by_local_port[local_port] = conn.info
        self._accepted += 1
        logger.info(
            "reverse proxy: accepted node %s from %s:%d",
            conn.info.node_id,
            conn.info.remote_host,
            conn.info.remote_port,
        )
        try:
            await splice(conn.reader, conn.writer, b_reader, b_writer)
        finally:
            self._by_local_port.pop(local_port, None)
            with contextlib.suppress(Exception):
                await close_writer(b_writer)
