"""QUIC transport for quic_rpc on aioquic: one shared UDP socket, mutual TLS with a
pluggable verify callback, streams with backpressure satisfying
:class:`quic_rpc.streams.ByteStream`.

Quick start::

    sock = await QUICSocket.bind("::", 0)
    server = QUICServer(sock, credentials, QUICConfig(), handler)
    await server.start()
    conn = await connect(other_sock, "127.0.0.1", sock.local_address[1], credentials)
    stream = await conn.open_stream()
"""

from .client import QUICClient, connect
from .config import DEFAULT_ALPN, QUICConfig
from .connection import REFUSED_STREAM_CODE, QUICConnection
from .errors import (
    CertificateRejectedByPeerError,
    ConfigError,
    ConnectionLimitError,
    CredentialsError,
    DatagramError,
    HandshakeError,
    HandshakeTimeoutError,
    PeerCertificateRejectedError,
    PeerVerificationError,
    QUICError,
    SocketClosedError,
    VerificationError,
)
from .server import HandshakeFailure, QUICServer
from .socket import QUICSocket, gso_supported
from .stream import QUICStream
from .tls import ServerSessionStore, SessionCache, TLSCredentials, VerifyCallback, ca_verifier

__all__ = [
    "DEFAULT_ALPN",
    "REFUSED_STREAM_CODE",
    "CertificateRejectedByPeerError",
    "ConfigError",
    "ConnectionLimitError",
    "CredentialsError",
    "DatagramError",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeTimeoutError",
    "PeerCertificateRejectedError",
    "PeerVerificationError",
    "QUICClient",
    "QUICConfig",
    "QUICConnection",
    "QUICError",
    "QUICServer",
    "QUICSocket",
    "QUICStream",
    "ServerSessionStore",
    "SessionCache",
    "SocketClosedError",
    "TLSCredentials",
    "VerificationError",
    "VerifyCallback",
    "ca_verifier",
    "connect",
    "gso_supported",
]
