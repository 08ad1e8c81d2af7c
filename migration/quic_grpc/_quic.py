"""The QUIC binding: server ports and channels on :mod:`quic_rpc.quic`.

Addresses and targets are grpc's: servers bind ``"[::]:0"``, ``"0.0.0.0:50051"``,
``"localhost:0"`` (port 0 picks a free port); channels take ``"host:port"``,
``"ipv4:1.2.3.4:5"``, ``"ipv6:[::1]:5"``, ``"dns:///host:port"``. ``localhost`` means
127.0.0.1 on both sides (the TLS server name stays ``localhost``).

Each channel owns one UDP socket (bound to loopback when the target is loopback) and one
connection, re-established on demand when lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket as _socket
import weakref
from collections.abc import Sequence
from typing import Any

from quic_rpc.quic import (
    QUICConfig,
    QUICConnection,
    QUICServer,
    QUICSocket,
    SessionCache,
    TLSCredentials,
    ca_verifier,
    connect,
)
from quic_rpc.streams import ByteStream, StreamOpener

from ._aio_channel import AioChannel
from ._channel import Channel
from ._credentials import (
    PeerVerifier,
    QUICChannelCredentials,
    QUICServerCredentials,
    default_root_certificates,
    ephemeral_identity,
)
from ._errors import UsageError
from ._server import DEFAULT_MAX_RECEIVE, _limit
from ._transport import ServerDispatch
from ._wire import StreamClientTransport, serve_stream

__all__ = [
    "QUICServerPort",
    "aio_insecure_channel",
    "aio_secure_channel",
    "bind_quic_port",
    "client_tls",
    "insecure_channel",
    "parse_address",
    "parse_target",
    "secure_channel",
    "server_tls",
]

_INSECURE_CHANNEL = (
    "QUIC always runs TLS 1.3: there is no insecure channel. Use "
    "secure_channel(target, quic_grpc.ssl_channel_credentials(root_certificates))"
)


def _split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest.startswith(":"):
            return host, int(rest[1:])
        if rest:
            raise ValueError(f"cannot parse {text!r}")
        if default_port is None:
            raise ValueError(f"no port in {text!r}")
        return host, default_port
    if text.count(":") > 1:
        # a bare IPv6 address without port
        if default_port is None:
            raise ValueError(f"no port in {text!r}")
        return text, default_port
    if ":" in text:
        host, _, port = text.rpartition(":")
        return host, int(port)
    if default_port is None:
        raise ValueError(f"no port in {text!r}")
    return text, default_port


def parse_target(target: str) -> tuple[str, int]:
    """A grpc target to ``(host, port)``; the port defaults to 443 as in grpc."""
    text = target.strip()
    try:
        if text.startswith("dns:"):
            rest = text[4:]
            if rest.startswith("//"):
                rest = rest[2:]
                _authority, _, rest = rest.partition("/")
            return _split_host_port(rest, 443)
        if text.startswith("ipv4:"):
            return _split_host_port(text[5:].split(",")[0], 443)
        if text.startswith("ipv6:"):
            return _split_host_port(text[5:].split(",")[0], 443)
        if text.startswith(("unix:", "unix-abstract:", "vsock:")):
            raise ValueError("unix/vsock targets cannot carry QUIC")
        return _split_host_port(text, 443)
    except ValueError as exc:
        raise ValueError(f"invalid target {target!r}: {exc}") from None


def parse_address(address: str) -> tuple[str, int]:
    """A server bind address (``"[::]:0"``, ``"0.0.0.0:50051"``, ``"localhost:0"``)."""
    try:
        host, port = _split_host_port(address.strip(), None)
    except ValueError as exc:
        raise ValueError(f"invalid address {address!r}: {exc}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid port in address {address!r}")
    if host in ("", "*"):
        host = "::"
    return _native_host(host), port


def _native_host(host: str) -> str:
    return "127.0.0.1" if host.lower() == "localhost" else host


def _optional(verify: PeerVerifier) -> PeerVerifier:
    def check(chain: Sequence[bytes]) -> Any:
        try:
            return verify(chain)
        except Exception:
            return None

    return check


def _anonymous(chain: Sequence[bytes]) -> Any:
    return None


def server_tls(credentials: QUICServerCredentials) -> TLSCredentials:
    """QUIC TLS credentials for a server from grpc-shaped server credentials."""
    key, chain = credentials.private_key_certificate_chain_pairs[0]
    verify: PeerVerifier
    if credentials.verify is not None:
        verify = credentials.verify
    elif credentials.root_certificates is not None:
        verify = ca_verifier(credentials.root_certificates)
    else:
        verify = _anonymous
    if not credentials.require_client_auth and verify is not _anonymous:
        verify = _optional(verify)
    return TLSCredentials.load(key, chain, verify)


_CLIENT_TLS: weakref.WeakKeyDictionary[
    QUICChannelCredentials, dict[str | None, tuple[tuple[Any, ...], TLSCredentials]]
] = weakref.WeakKeyDictionary()


def client_tls(credentials: QUICChannelCredentials, server_name: str | None) -> TLSCredentials:
    """QUIC TLS credentials for a channel from grpc-shaped channel credentials.

    Made once per credentials object and server name (channels made with the same
    credentials share the parsed key, chain and trust roots, and the CA verifier's cache
    of accepted chains), again if the credentials' attributes were changed since."""
    inputs = (
        credentials.root_certificates,
        credentials.private_key,
        credentials.certificate_chain,
        credentials.verify,
    )
    try:
        made = _CLIENT_TLS.setdefault(credentials, {})
    except TypeError:  # not weakly referenceable: no reuse
        return _client_tls(credentials, server_name)
    entry = made.get(server_name)
    if entry is not None and all(a is b for a, b in zip(entry[0], inputs, strict=True)):
        return entry[1]
    tls = _client_tls(credentials, server_name)
    made[server_name] = (inputs, tls)
    return tls


def _client_tls(credentials: QUICChannelCredentials, server_name: str | None) -> TLSCredentials:
    if credentials.private_key is not None and credentials.certificate_chain is not None:
        key, chain = credentials.private_key, credentials.certificate_chain
    else:
        identity = ephemeral_identity()
        key, chain = identity.private_key_pem, identity.certificate_pem
    verify: PeerVerifier
    if credentials.verify is not None:
        verify = credentials.verify
    else:
        roots = credentials.root_certificates or default_root_certificates()
        verify = ca_verifier(roots, server_name=server_name)
    return TLSCredentials.load(key, chain, verify)


def _quic_config(options: Sequence[tuple[str, Any]] | None) -> QUICConfig:
    opts = dict(options or ())
    config = opts.get("quicshift.quic_config")
    if config is not None:
        if not isinstance(config, QUICConfig):
            raise TypeError("option quicshift.quic_config must be a QUICConfig")
        return config
    return QUICConfig()


# --------------------------------------------------------------------------- server


class QUICServerPort:
    """One QUIC listening socket of a grpc-shaped server."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: TLSCredentials,
        config: QUICConfig,
        dispatch: ServerDispatch,
        max_receive: int | None,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._config = config
        self._dispatch = dispatch
        self._max_receive = max_receive
        self._socket: QUICSocket | None = None
        self._server: QUICServer | None = None

    @property
    def port(self) -> int:
        if self._port == 0 and self._socket is None:
            # Asked before open() (aio servers, whose add_secure_port is sync): bind a
            # plain UDP socket now and hand it to the QUICSocket, so no other process can
            # take the port between now and start().
            self._socket = QUICSocket.from_socket(_bind_udp(self._host))
            self._port = self._socket.local_address[1]
        return self._port

    async def open(self) -> None:
        """Bind the UDP socket now (the port is then known without reservation)."""
        if self._socket is None:
            self._socket = await QUICSocket.bind(self._host, self._port)
            self._port = self._socket.local_address[1]
        elif not self._socket.is_open:
            await self._socket.start()  # the socket bound by ``port``

    async def _handle(self, stream: ByteStream) -> None:
        await serve_stream(stream, self._dispatch, max_receive=self._max_receive)

    async def start(self) -> None:
        await self.open()
        assert self._socket is not None
        self._server = QUICServer(self._socket, self._tls, self._config, self._handle)
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.stop(grace if grace is not None else 0.0)
        if self._socket is not None:
            await self._socket.close()


def _bind_udp(host: str) -> _socket.socket:
    """A UDP socket bound to a free port on ``host`` (``"::"`` is dual-stack)."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_quic_port(
    address: str,
    credentials: QUICServerCredentials,
    dispatch: ServerDispatch,
    *,
    options: Sequence[tuple[str, Any]] | None = None,
) -> QUICServerPort:
    """The default port binder of the adapter's servers."""
    host, port = parse_address(address)
    opts = dict(options or ())
    max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE))
    return QUICServerPort(
        host, port, server_tls(credentials), _quic_config(options), dispatch, max_receive
    )


# --------------------------------------------------------------------------- channels


def _source_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "::"
    if address.is_loopback:
        return "::1" if address.version == 6 else "127.0.0.1"
    return "::" if address.version == 6 else "0.0.0.0"


class QUICConnector:
    """Dials one target from the channel's own UDP socket."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: TLSCredentials,
        config: QUICConfig,
        server_name: str | None,
        session_cache: SessionCache | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._config = config
        self._server_name = server_name
        self._session_cache = session_cache
        self._socket: QUICSocket | None = None
        self._connections: set[QUICConnection] = set()
        self._lock = asyncio.Lock()

    async def connect(self) -> StreamOpener:
        async with self._lock:
            if self._socket is None:
                self._socket = await QUICSocket.bind(_source_host(self._host), 0)
            socket = self._socket
        conn = await connect(
            socket,
            self._host,
            self._port,
            self._tls,
            self._config,
            self._server_name,
            session_cache=self._session_cache,
        )
        self._connections.add(conn)
        return conn

    async def disconnect(self, opener: StreamOpener) -> None:
        if isinstance(opener, QUICConnection):
            self._connections.discard(opener)
            opener.abort("connection dropped")

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.aclose(0.0, reason="channel closed")
        if self._socket is not None:
            await self._socket.close()
            self._socket = None


def _channel_transport(
    target: str, credentials: Any, options: Sequence[tuple[str, Any]] | None
) -> StreamClientTransport:
    if not isinstance(credentials, QUICChannelCredentials):
        raise TypeError(
            "secure_channel needs credentials from migration.quic_grpc.ssl_channel_credentials "
            f"(got {type(credentials).__name__})"
        )
    host, port = parse_target(target)
    opts = dict(options or ())
    server_name = opts.get("grpc.ssl_target_name_override") or host
    tls = client_tls(credentials, server_name)
    config = _quic_config(options)
    # As grpc's option: a session cache shared by channels enables TLS session resumption.
    session_cache = opts.get("grpc.ssl_session_cache")
    if isinstance(session_cache, SessionCache):
        config = dataclasses.replace(config, session_resumption=True)
    else:
        session_cache = None
    connector = QUICConnector(_native_host(host), port, tls, config, server_name, session_cache)
    max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_RECEIVE))
    return StreamClientTransport(connector, max_receive=max_receive)


def secure_channel(
    target: str,
    credentials: Any,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: Any = None,
) -> Channel:
    """Like ``grpc.secure_channel``, over QUIC. The connection is made on first use."""
    transport_options = options
    return Channel(
        lambda: _channel_transport(target, credentials, transport_options), options=options
    )


def insecure_channel(
    target: str, options: Sequence[tuple[str, Any]] | None = None, compression: Any = None
) -> Channel:
    raise UsageError(_INSECURE_CHANNEL)


def aio_secure_channel(
    target: str,
    credentials: Any,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: Any = None,
    interceptors: Sequence[Any] | None = None,
) -> AioChannel:
    """Like ``grpc.aio.secure_channel``, over QUIC."""
    return AioChannel(
        _channel_transport(target, credentials, options),
        options=options,
        interceptors=interceptors,
    )


def aio_insecure_channel(
    target: str,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: Any = None,
    interceptors: Sequence[Any] | None = None,
) -> AioChannel:
    raise UsageError(_INSECURE_CHANNEL)
