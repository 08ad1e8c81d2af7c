"""The four stacks under test, each as a server side and a client side.

* ``grpc-direct`` — grpc.aio over TCP + mutual TLS, generic (bytes) handlers.
* ``grpc-proxy`` — the legacy deployment: grpc.aio (plaintext, loopback) behind the
  reverse TLS proxy on the server side; the client's channel goes through the forward
  (HTTP CONNECT) proxy in its own process, which dials the reverse proxy over mutual
  TLS with node identities (``agent.identity``).
* ``adapter-quic`` — the same grpc.aio code on ``migration.quic_grpc`` (QUIC, mutual TLS).
* ``native-quic`` — ``quic_rpc.rpc`` over ``quic_rpc.quic`` (mutual TLS); bulk uses a
  raw handler instead of a client-streaming call.

The QUIC stacks use the congestion controller :data:`QUIC_CONGESTION_CONTROL` names
(``QUICConfig``'s default unless the harness's ``--quic-cc`` sets it).

``native-quic`` runs with the default ``QUICConfig``, whose loopback profile applies here
(peers on 127.0.0.1: 65,000-byte datagrams, no pacing). Not run by default
(``--stacks native-quic-1452``): ``native-quic-1452``, native QUIC with that profile
turned off — 1,452-byte datagrams and pacing, as on every other path — to show what a
connection across a real network pays on loopback.

Every stack serves the same service (``/bench.Bench/*``): ``Echo`` (unary, echoes the
request), ``Stream`` (server streaming: request ``>QI`` = count, size), ``Upload``
(client streaming: replies with the byte count as ``>Q``) and, on native QUIC only,
``Bulk`` (raw: reads to EOF, writes the byte count as ``>Q``).

Servers run in a child process (:func:`start_server`), clients in another
(:func:`client_side`); :mod:`benchmarks.harness` drives both. Both default to 127.0.0.1;
the lossy-link workloads pass the server's address in its network namespace instead
(servers bind it, clients dial it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EXTRA_STACKS",
    "QUIC_CC_CHOICES",
    "QUIC_STACKS",
    "STACKS",
    "BenchConnection",
    "ClientSide",
    "ServerHandle",
    "client_side",
    "start_server",
]

STACKS = ("grpc-direct", "grpc-proxy", "adapter-quic", "native-quic")
EXTRA_STACKS = ("native-quic-1452",)
QUIC_STACKS = ("adapter-quic", "native-quic", "native-quic-1452")
QUIC_CC_CHOICES = ("reno", "cubic", "bbr")
QUIC_CONGESTION_CONTROL: str | None = None
"""The QUIC stacks' congestion controller; ``None`` keeps ``QUICConfig``'s default."""

SERVICE = "bench.Bench"
ECHO = f"/{SERVICE}/Echo"
STREAM = f"/{SERVICE}/Stream"
UPLOAD = f"/{SERVICE}/Upload"
BULK = f"/{SERVICE}/Bulk"
STREAM_REQUEST = struct.Struct(">QI")
COUNT = struct.Struct(">Q")
KEEPALIVE_S = 5.0
"""Keepalive interval used by every stack (QUIC PING / HTTP/2 PING)."""


@dataclass
class ServerHandle:
    """A started server: where to reach it, and how to stop it."""

    port: int
    info: dict[str, Any] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

    async def stop(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()


def _read(certs: Path, name: str) -> bytes:
    return (certs / name).read_bytes()


# -- grpc-shaped servers (grpc.aio and migration.quic_grpc.aio) --------------------------


def _grpc_handler(g: Any) -> Any:
    """One generic handler for the bench service on a grpc-shaped module ``g``."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, size = STREAM_REQUEST.unpack(request)
        payload = b"s" * size
        for _ in range(count):
            yield payload

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for chunk in requests:
            total += len(chunk)
        return COUNT.pack(total)

    return g.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": g.unary_unary_rpc_method_handler(echo),
            "Stream": g.unary_stream_rpc_method_handler(stream),
            "Upload": g.stream_unary_rpc_method_handler(upload),
        },
    )


_GRPC_SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S * 1000) - 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 8 << 20),
]

_GRPC_CHANNEL_OPTIONS = [
    # A channel of its own per connection: grpc otherwise shares subchannels
    # (TCP connections) between channels with equal arguments.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S * 1000)),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 << 20),
]


async def _serve_grpc_direct(certs: Path, max_connections: int, host: str) -> ServerHandle:
    import grpc

    server = grpc.aio.server(options=_GRPC_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_grpc_handler(grpc),))
    credentials = grpc.ssl_server_credentials(
        [(_read(certs, "server.key"), _read(certs, "server.pem"))],
        root_certificates=_read(certs, "ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port(f"{host}:0", credentials)
    await server.start()
    return ServerHandle(
        int(port), {"tls": "TCP + TLS 1.3 (grpc core), mutual"}, [lambda: server.stop(0)]
    )


async def _serve_grpc_proxy(certs: Path, max_connections: int, host: str) -> ServerHandle:
    import grpc

    from agent.identity import NodeIdentity, node_verifier
    from legacy_grpc import ReverseProxy, TLSCredentials

    server = grpc.aio.server(options=_GRPC_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_grpc_handler(grpc),))
    backend = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    identity = NodeIdentity.generate("p256")
    credentials = TLSCredentials(identity.private_key_pem(), identity.chain_pem())
    reverse = ReverseProxy(credentials, node_verifier(), int(backend), host=host)
    await reverse.start()

    async def close_credentials() -> None:
        credentials.close()

    return ServerHandle(
        reverse.port,
        {"node_id": str(identity.node_id), "backend_port": int(backend)},
        [lambda: server.stop(0), close_credentials, reverse.stop],
    )


def _quic_config(max_connections: int, *, wan: bool = False, resume: bool = False) -> Any:
    """The QUIC settings of every QUIC stack. Servers always allow session resumption (they
    only issue tickets to clients that ask); clients ask for it only for ``resume``."""
    from quic_rpc.quic import QUICConfig

    extra: dict[str, Any] = {"loopback_datagram_size": None} if wan else {}
    if QUIC_CONGESTION_CONTROL is not None:
        extra["congestion_control"] = QUIC_CONGESTION_CONTROL
    return QUICConfig(
        keepalive_interval=KEEPALIVE_S,
        idle_timeout=30.0,
        max_connections=max(1024, max_connections),
        session_resumption=resume,
        **extra,
    )


async def _serve_adapter(certs: Path, max_connections: int, host: str) -> ServerHandle:
    from migration import quic_grpc

    server = quic_grpc.aio.server(
        options=[
            ("quicshift.quic_config", _quic_config(max_connections, resume=True)),
            ("grpc.max_receive_message_length", 8 << 20),
        ]
    )
    server.add_generic_rpc_handlers((_grpc_handler(quic_grpc),))
    credentials = quic_grpc.ssl_server_credentials(
        [(_read(certs, "server.key"), _read(certs, "server.pem"))],
        root_certificates=_read(certs, "ca.pem"),
        require_client_auth=True,
    )
    port = server.add_secure_port(f"{host}:0", credentials)
    await server.start()
    return ServerHandle(int(port), {}, [lambda: server.stop(0)])


def _quic_credentials(certs: Path, role: str) -> Any:
    from quic_rpc.quic import TLSCredentials, ca_verifier

    return TLSCredentials.load(
        _read(certs, f"{role}.key"),
        _read(certs, f"{role}.pem"),
        ca_verifier(_read(certs, "ca.pem")),
    )


async def _serve_native(
    certs: Path, max_connections: int, host: str, *, wan: bool = False
) -> ServerHandle:
    from quic_rpc.quic import QUICServer, QUICSocket
    from quic_rpc.rpc import (
        RawStream,
        RPCServer,
        RPCServerConfig,
        ServerCallContext,
        raw,
        server_streaming,
        unary,
    )

    async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
        return request

    async def stream(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        count, size = STREAM_REQUEST.unpack(request)
        payload = b"s" * size
        for _ in range(count):
            yield payload

    async def bulk(call: RawStream, ctx: ServerCallContext) -> None:
        total = 0
        while data := await call.receive(1 << 20):
            total += len(data)
        await call.send(COUNT.pack(total))
        await call.send_eof()

    # The RPC layer's per-connection call limit (default 100) is raised to the QUIC
    # stream limit (256), so that a client beyond it waits for stream credit instead of
    # getting RESOURCE_EXHAUSTED: 100 concurrent callers otherwise trip the default,
    # since the server frees a call's slot only after the client has its reply.
    rpc = RPCServer(
        {ECHO: unary(echo), STREAM: server_streaming(stream), BULK: raw(bulk)},
        config=RPCServerConfig(max_concurrent_calls_per_connection=256),
    )
    sock = await QUICSocket.bind(host, 0)
    quic = QUICServer(
        sock,
        _quic_credentials(certs, "server"),
        _quic_config(max_connections, wan=wan, resume=True),
        rpc.handle_stream,
    )
    await quic.start()

    async def stop() -> None:
        await quic.stop(0)
        await sock.close()

    return ServerHandle(int(sock.local_address[1]), {"io_mode": sock.io_mode}, [stop])


async def _serve_native_1452(certs: Path, max_connections: int, host: str) -> ServerHandle:
    return await _serve_native(certs, max_connections, host, wan=True)


_SERVERS = {
    "grpc-direct": _serve_grpc_direct,
    "grpc-proxy": _serve_grpc_proxy,
    "adapter-quic": _serve_adapter,
    "native-quic": _serve_native,
    "native-quic-1452": _serve_native_1452,
}


async def start_server(
    stack: str, certs: Path, *, max_connections: int = 1024, host: str = "127.0.0.1"
) -> ServerHandle:
    """Start ``stack``'s server on ``host`` (an ephemeral port) in this process."""
    return await _SERVERS[stack](certs, max_connections, host)


# -- clients -----------------------------------------------------------------------------


class BenchConnection(ABC):
    """One client connection (a channel, for the grpc-shaped stacks)."""

    @abstractmethod
    async def unary(self, payload: bytes) -> bytes: ...

    @abstractmethod
    async def stream(self, count: int, size: int) -> int:
        """Run one server-streaming call; returns the number of messages received."""

    @abstractmethod
    async def bulk(self, total: int, chunk: bytes) -> int:
        """Upload ``total`` bytes in ``chunk``-sized writes; returns the server's count."""

    @abstractmethod
    async def close(self) -> None: ...


class ClientSide(ABC):
    """Per-process client state for one stack (proxies, sockets, credentials)."""

    supports_resumption = False
    resumption_note = "no TLS session resumption / 0-RTT in this stack"

    def __init__(
        self, certs: Path, port: int, info: dict[str, Any], host: str = "127.0.0.1"
    ) -> None:
        self.certs = certs
        self.port = port
        self.info = info
        self.host = host

    async def start(self) -> None:
        """Set up what every connection shares."""
        return None

    @abstractmethod
    async def connect(self, *, resume: bool = False) -> BenchConnection:
        """A new connection. grpc-shaped stacks connect lazily, on the first call."""

    async def aclose(self) -> None:
        """Tear down what :meth:`start` set up."""
        return None


class _GrpcConnection(BenchConnection):
    """A grpc.aio-shaped channel (grpc.aio or migration.quic_grpc.aio)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._echo = channel.unary_unary(ECHO)
        self._stream = channel.unary_stream(STREAM)
        self._upload = channel.stream_unary(UPLOAD)

    async def unary(self, payload: bytes) -> bytes:
        result: bytes = await self._echo(payload)
        return result

    async def stream(self, count: int, size: int) -> int:
        received = 0
        async for _ in self._stream(STREAM_REQUEST.pack(count, size)):
            received += 1
        return received

    async def bulk(self, total: int, chunk: bytes) -> int:
        async def chunks() -> AsyncIterator[bytes]:
            left = total
            while left > 0:
                piece = chunk if left >= len(chunk) else chunk[:left]
                left -= len(piece)
                yield piece

        reply: bytes = await self._upload(chunks())
        return int(COUNT.unpack(reply)[0])

    async def close(self) -> None:
        await self.channel.close(None)


class _GrpcDirectClient(ClientSide):
    supports_resumption = True
    resumption_note = "TLS session resumption via grpc.ssl_session_cache (no 0-RTT in grpc)"

    async def start(self) -> None:
        import grpc
        from grpc.experimental import session_cache  # type: ignore[attr-defined]

        self._grpc = grpc
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.certs, "ca.pem"),
            private_key=_read(self.certs, "client.key"),
            certificate_chain=_read(self.certs, "client.pem"),
        )
        self._session_cache = session_cache.ssl_session_cache_lru(64)

    async def connect(self, *, resume: bool = False) -> BenchConnection:
        options = list(_GRPC_CHANNEL_OPTIONS)
        if resume:
            options.append(("grpc.ssl_session_cache", self._session_cache))
        channel = self._grpc.aio.secure_channel(
            f"{self.host}:{self.port}", self._credentials, options=options
        )
        return _GrpcConnection(channel)


class _GrpcProxyClient(ClientSide):
    resumption_note = "the proxies' TLS (asyncio ssl) keeps no session cache"

    async def start(self) -> None:
        import grpc

        from agent.identity import NodeIdentity, node_verifier
        from agent.nodeid import NodeId
        from legacy_grpc import ForwardProxy, TLSCredentials

        self._grpc = grpc
        identity = NodeIdentity.generate("p256")
        self._credentials = TLSCredentials(identity.private_key_pem(), identity.chain_pem())
        self._node_id = NodeId.parse(self.info["node_id"])
        self._forward = ForwardProxy(self._credentials, node_verifier(), NodeId.parse)
        await self._forward.start()
        self._forward.set_node_host(self._node_id, self.host)

    async def connect(self, *, resume: bool = False) -> BenchConnection:
        from legacy_grpc import node_target

        channel = self._grpc.aio.insecure_channel(
            node_target(self._node_id, self.port),
            options=[("grpc.http_proxy", self._forward.proxy_uri()), *_GRPC_CHANNEL_OPTIONS],
        )
        return _GrpcConnection(channel)

    async def aclose(self) -> None:
        await self._forward.stop()
        self._credentials.close()


_QUIC_RESUMPTION_NOTE = (
    "TLS 1.3 session resumption with single-use session tickets (1-RTT; no 0-RTT)"
)


class _AdapterClient(ClientSide):
    supports_resumption = True
    resumption_note = _QUIC_RESUMPTION_NOTE + ", via the grpc.ssl_session_cache option"

    async def start(self) -> None:
        from migration import quic_grpc
        from quic_rpc.quic import SessionCache

        self._g = quic_grpc
        self._credentials = quic_grpc.ssl_channel_credentials(
            root_certificates=_read(self.certs, "ca.pem"),
            private_key=_read(self.certs, "client.key"),
            certificate_chain=_read(self.certs, "client.pem"),
        )
        self._session_cache = SessionCache(64)

    async def connect(self, *, resume: bool = False) -> BenchConnection:
        options: list[tuple[str, Any]] = [
            ("quicshift.quic_config", _quic_config(0)),
            ("grpc.max_receive_message_length", 8 << 20),
        ]
        if resume:
            options.append(("grpc.ssl_session_cache", self._session_cache))
        channel = self._g.aio.secure_channel(
            f"{self.host}:{self.port}", self._credentials, options=options
        )
        return _GrpcConnection(channel)


class _NativeConnection(BenchConnection):
    def __init__(self, conn: Any) -> None:
        from quic_rpc.rpc import RPCClient

        self.conn = conn
        self.client = RPCClient(conn)

    async def unary(self, payload: bytes) -> bytes:
        result: bytes = await self.client.unary(ECHO, payload)
        return result

    async def stream(self, count: int, size: int) -> int:
        received = 0
        async for _ in self.client.server_streaming(STREAM, STREAM_REQUEST.pack(count, size)):
            received += 1
        return received

    async def bulk(self, total: int, chunk: bytes) -> int:
        async with self.client.raw(BULK) as call:
            left = total
            while left > 0:
                piece = chunk if left >= len(chunk) else chunk[:left]
                left -= len(piece)
                await call.send(piece)
            await call.send_eof()
            reply = b""
            while len(reply) < COUNT.size:
                data = await call.receive()
                if not data:
                    break
                reply += data
        return int(COUNT.unpack(reply)[0])

    async def close(self) -> None:
        await self.conn.aclose()


class _NativeClient(ClientSide):
    """Connections share one UDP socket, as an agent's do."""

    supports_resumption = True
    resumption_note = _QUIC_RESUMPTION_NOTE
    wan = False

    async def start(self) -> None:
        from quic_rpc.quic import QUICSocket

        self._credentials = _quic_credentials(self.certs, "client")
        self._config = _quic_config(0, wan=self.wan)
        self._resume_config = _quic_config(0, wan=self.wan, resume=True)
        # Loopback, or (lossy link) any address of the client's own namespace.
        local = "127.0.0.1" if ipaddress.ip_address(self.host).is_loopback else "0.0.0.0"
        self._socket = await QUICSocket.bind(local, 0)

    async def connect(self, *, resume: bool = False) -> BenchConnection:
        from quic_rpc.quic import connect

        config = self._resume_config if resume else self._config
        conn = await connect(self._socket, self.host, self.port, self._credentials, config)
        return _NativeConnection(conn)

    async def aclose(self) -> None:
        await self._socket.close()


class _Native1452Client(_NativeClient):
    wan = True


_CLIENTS: dict[str, type[ClientSide]] = {
    "grpc-direct": _GrpcDirectClient,
    "grpc-proxy": _GrpcProxyClient,
    "adapter-quic": _AdapterClient,
    "native-quic": _NativeClient,
    "native-quic-1452": _Native1452Client,
}


async def client_side(
    stack: str, certs: Path, port: int, info: dict[str, Any], host: str = "127.0.0.1"
) -> ClientSide:
    """The started client side of ``stack`` for a server at ``host``:``port``."""
    side = _CLIENTS[stack](certs, port, info, host)
    await side.start()
    return side


async def wait_forever() -> None:  # pragma: no cover - used by the server role
    await asyncio.Event().wait()
