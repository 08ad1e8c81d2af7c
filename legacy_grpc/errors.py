"""The legacy stack's exception hierarchy: one base, each error with a stable code."""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

__all__ = [
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "HandshakeError",
    "LegacyGRPCError",
    "NodeIdMismatchError",
    "PeerRefusedError",
    "PeerRejectedError",
    "PeerVerificationError",
    "PreambleError",
    "ProxyAuthError",
    "ProxyStateError",
    "UnknownNodeError",
]


class LegacyGRPCError(Exception):
    """Base of every error raised by :mod:`legacy_grpc`."""

    code: ClassVar[str] = "legacy_grpc_error"


class ProxyStateError(LegacyGRPCError):
    """A proxy or server was used in the wrong state (not started, already stopped)."""

    code = "proxy_state"


class PreambleError(LegacyGRPCError):
    """The peer sent a malformed proxy preamble frame (a remote protocol fault)."""

    code = "preamble_malformed"


class ConnectionFailedError(LegacyGRPCError):
    """A secure connection to a peer node could not be established."""

    code = "connection_failed"


class HandshakeError(ConnectionFailedError):
    """TCP connect, the TLS handshake or the preamble exchange failed."""

    code = "handshake_failed"


class ConnectTimeoutError(ConnectionFailedError):
    """The connection was not established in time."""

    code = "connect_timeout"


class PeerRejectedError(ConnectionFailedError):
    """The peer's reverse proxy refused our identity; ``reason`` is what it said."""

    code = "peer_rejected"

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(f"the peer refused our identity (reason {reason_code}): {reason}")
        self.reason_code = reason_code
        self.reason = reason


class PeerVerificationError(ConnectionFailedError):
    """The peer's certificate chain failed our verifier (cause chained)."""

    code = "peer_verification_failed"


class NodeIdMismatchError(ConnectionFailedError):
    """We asked for one node and reached another."""

    code = "node_id_mismatch"

    def __init__(self, expected: Hashable, actual: Hashable) -> None:
        super().__init__(f"expected node {expected} but reached node {actual}")
        self.expected = expected
        self.actual = actual


class UnknownNodeError(ConnectionFailedError):
    """The forward proxy has no address for the requested node id."""

    code = "unknown_node"


class ProxyAuthError(ConnectionFailedError):
    """The forward proxy refused our proxy credentials (HTTP 407)."""

    code = "proxy_auth_failed"


class PeerRefusedError(LegacyGRPCError):
    """Our reverse proxy refused an incoming peer (it was told why, when possible)."""

    code = "peer_refused"

    def __init__(self, reason_code: int, reason: str, remote_host: str, remote_port: int) -> None:
        super().__init__(
            f"refused peer {remote_host}:{remote_port} (reason {reason_code}): {reason}"
        )
        self.reason_code = reason_code
        self.reason = reason
        self.remote_host = remote_host
        self.remote_port = remote_port
