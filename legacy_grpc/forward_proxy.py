"""ForwardProxy: an HTTP CONNECT proxy on loopback that dials peer nodes over mutual TLS.

A grpc channel reaches a node through it with the ``grpc.http_proxy`` channel option (or
the ``https_proxy`` environment variable). grpcio sends the channel's target name in the
request, unresolved, e.g.::

    CONNECT v0u3…n1g.node:4433 HTTP/1.1
    Host: v0u3…n1g.node:4433
    Proxy-Authorization: Basic dXNlcjpwYXNz      (only with user:pass@ in the proxy URI)

The target names a *node*, not a host: ``<node id>.node:<port>``. The proxy looks the
node id up in its address book (:meth:`ForwardProxy.set_node_host`) for the host, dials
``host:port`` (the node's reverse proxy) with :func:`legacy_grpc.tls.dial_peer`,
requires the node it reaches to be the node asked for, answers ``200`` and splices.
Failures answer ``400`` (bad request), ``404`` (no address for the node), ``407`` (proxy
credentials), ``502`` (peer refused us, failed verification, or is another node),
``504`` (timeout); the typed error is kept per node for :meth:`ForwardProxy.last_failure`,
which is how a :class:`~legacy_grpc.node_connection.NodeConnection` explains a failure
that grpc only reports as "HTTP proxy returned response code 502".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from legacy_grpc._splice import splice
from legacy_grpc.errors import (
    ConnectionFailedError,
    ConnectTimeoutError,
    ProxyAuthError,
    ProxyStateError,
    UnknownNodeError,
)
from legacy_grpc.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    PeerConnectionInfo,
    SecureConnection,
    TLSCredentials,
    Verifier,
    close_writer,
    dial_peer,
)

__all__ = ["NODE_HOST_SUFFIX", "ForwardProxy", "ProxyCredentials", "Tunnel", "node_target"]

logger = logging.getLogger(__name__)

NODE_HOST_SUFFIX: Final = ".node"
_MAX_HEAD = 8192
_REQUEST_TIMEOUT = 10.0


def node_target(node_id: Hashable, port: int) -> str:
    """The channel target (and CONNECT authority) that names ``node_id``'s port."""
    return f"{node_id}{NODE_HOST_SUFFIX}:{port}"


@dataclass(frozen=True, slots=True)
class ProxyCredentials:
    """HTTP Basic credentials for the forward proxy."""

    username: str
    password: str

    def __post_init__(self) -> None:
        if not self.username or ":" in self.username:
            raise ValueError("proxy username must be non-empty and contain no ':'")

    def matches(self, header_value: str) -> bool:
        scheme, _, token = header_value.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.username}:{self.password}".encode()
        return hmac.compare_digest(decoded, expected)


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An open tunnel: the peer, and our local end of the TLS connection to it."""

    info: PeerConnectionInfo
    local_host: str
    local_port: int


class _HTTPFailure(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ForwardProxy:
    """The client side of the legacy proxy pair."""

    def __init__(
        self,
        credentials: TLSCredentials,
        verify: Verifier,
        parse_node_id: Callable[[str], Hashable],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: ProxyCredentials | None = None,
        connect_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._credentials = credentials
        self._verify = verify
        self._parse_node_id = parse_node_id
        self._bind = (host, port)
        self._auth = auth
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hosts: dict[Hashable, str] = {}
        self._failures: dict[Hashable, ConnectionFailedError] = {}
        self._tunnels: dict[int, Tunnel] = {}
        self._stopped = False

    @property
    def host(self) -> str:
        return self._bind[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise ProxyStateError("forward proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def auth(self) -> ProxyCredentials | None:
        return self._auth

    def proxy_uri(self) -> str:
        """The value for grpc's ``grpc.http_proxy`` option, credentials included."""
        from urllib.parse import quote

        userinfo = ""
        if self._auth is not None:
            userinfo = (
                f"{quote(self._auth.username, safe='')}:{quote(self._auth.password, safe='')}@"
            )
        return f"http://{userinfo}{self.host}:{self.port}"

    def set_node_host(self, node_id: Hashable, host: str) -> None:
        """Record where ``node_id`` lives (its reverse proxy's host); clears its last failure."""
        self._hosts[node_id] = host
        self._failures.pop(node_id, None)

    def forget_node(self, node_id: Hashable) -> None:
        self._hosts.pop(node_id, None)
        self._failures.pop(node_id, None)

    def last_failure(self, node_id: Hashable) -> ConnectionFailedError | None:
        """Why the latest tunnel to ``node_id`` failed; cleared by a successful one."""
        return self._failures.get(node_id)

    def tunnels(self) -> list[Tunnel]:
        """The tunnels open now (CONNECT requests being spliced)."""
        return list(self._tunnels.values())

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise ProxyStateError("forward proxy already started or stopped")
        self._credentials.open()
        self._server = await asyncio.start_server(self._on_connection, *self._bind)
        logger.info("forward proxy on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close every tunnel; idempotent."""
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

    async def __aenter__(self) -> ForwardProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def open_tunnel(self, node_id: Hashable, host: str, port: int) -> SecureConnection:
        """Dial ``node_id`` at ``host:port`` directly (no HTTP): the authenticated streams."""
        if self._server is None:
            raise ProxyStateError("forward proxy is not started")
        try:
            conn = await dial_peer(
                host,
                port,
                self._credentials,
                self._verify,
                expected_node_id=node_id,
                timeout=self._connect_timeout,
            )
        except ConnectionFailedError as exc:
            self._failures[node_id] = exc
            raise
        self._failures.pop(node_id, None)
        return conn

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None or self._stopped:
            await close_writer(writer)
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("forward proxy: unexpected error")
        finally:
            self._tasks.discard(task)
            await close_writer(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await self._handle_request(reader)
        except _HTTPFailure as exc:
            logger.warning("forward proxy: %d %s: %s", exc.status, exc.reason, exc)
            body = (str(exc) + "\n").encode("utf-8", "replace")
            extra = ""
            if exc.status == 407:
                extra = 'Proxy-Authenticate: Basic realm="quicshift"\r\n'
            writer.write(
                f"HTTP/1.1 {exc.status} {exc.reason}\r\n{extra}"
                f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            try:
                await writer.drain()
            except ConnectionError:
                pass
            return
        local_host, local_port = conn.writer.get_extra_info("sockname")[:2]
        self._tunnels[local_port] = Tunnel(conn.info, local_host, local_port)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await splice(reader, writer, conn.reader, conn.writer)
        finally:
            self._tunnels.pop(local_port, None)
            await close_writer(conn.writer)

    async def _handle_request(self, reader: asyncio.StreamReader) -> SecureConnection:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise _HTTPFailure(
                431, "Request Header Fields Too Large", "request head too large"
            ) from exc
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            raise _HTTPFailure(400, "Bad Request", "incomplete request head") from exc
        if len(head) > _MAX_HEAD:
            raise _HTTPFailure(431, "Request Header Fields Too Large", "request head too large")
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, authority, version = lines[0].split(" ")
        except ValueError as exc:
            raise _HTTPFailure(400, "Bad Request", f"malformed request line {head[:80]!r}") from exc
        if method != "CONNECT" or not version.startswith("HTTP/1."):
            raise _HTTPFailure(
                405, "Method Not Allowed", f"only CONNECT is supported, got {method}"
            )
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise _HTTPFailure(400, "Bad Request", f"malformed header {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
        if self._auth is not None and not self._auth.matches(
            headers.get("proxy-authorization", "")
        ):
            message = "bad or missing proxy credentials"
            try:
                asked, _ = self._parse_authority(authority)
            except _HTTPFailure:
                pass
            else:
                self._failures[asked] = ProxyAuthError(f"the forward proxy refused us: {message}")
            raise _HTTPFailure(407, "Proxy Authentication Required", message)
        node_id, port = self._parse_authority(authority)
        host = self._hosts.get(node_id)
        if host is None:
            self._failures[node_id] = UnknownNodeError(f"no address known for node {node_id}")
            raise _HTTPFailure(404, "Not Found", f"no address known for node {node_id}")
        try:
            return await self.open_tunnel(node_id, host, port)
        except ConnectTimeoutError as exc:
            raise _HTTPFailure(504, "Gateway Timeout", str(exc)) from exc
        except ConnectionFailedError as exc:
            raise _HTTPFailure(502, "Bad Gateway", str(exc)) from exc

    def _parse_authority(self, authority: str) -> tuple[Hashable, int]:
        name, sep, port_text = authority.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _HTTPFailure(
                400, "Bad Request", f"CONNECT target has no valid port: {authority!r}"
            )
        if not name.lower().endswith(NODE_HOST_SUFFIX):
            raise _HTTPFailure(
                400,
                "Bad Request",
                f"CONNECT target must be <node id>{NODE_HOST_SUFFIX}:<port>, got {authority!r}",
            )
        try:
            node_id = self._parse_node_id(name[: -len(NODE_HOST_SUFFIX)])
        except Exception as exc:
            raise _HTTPFailure(400, "Bad Request", f"bad node id in {authority!r}: {exc}") from exc
        return node_id, int(port_text)
