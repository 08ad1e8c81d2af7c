"""The legacy stack: gRPC agent server/client and the TLS proxy pair. Deleted at cutover.

Independent of :mod:`agent` and :mod:`quic_rpc`: peers are verified by a plain
``verify(chain_der) -> identity`` callback, credentials are PEM bytes.
"""

from legacy_grpc.errors import (
    ConnectionFailedError,
    ConnectTimeoutError,
    HandshakeError,
    LegacyGRPCError,
    NodeIdMismatchError,
    PeerRefusedError,
    PeerRejectedError,
    PeerVerificationError,
    PreambleError,
    ProxyAuthError,
    ProxyStateError,
    UnknownNodeError,
)
from legacy_grpc.forward_proxy import (
    NODE_HOST_SUFFIX,
    ForwardProxy,
    ProxyCredentials,
    Tunnel,
    node_target,
)
from legacy_grpc.node_connection import NodeConnection
from legacy_grpc.reverse_proxy import ReverseProxy, ReverseProxyStatistics, parse_grpc_peer
from legacy_grpc.server import AgentGRPCServer, HealthService, ServiceBinding
from legacy_grpc.tls import (
    PeerConnectionInfo,
    SecureConnection,
    TLSCredentials,
    Verifier,
    accept_peer,
    dial_peer,
)

__all__ = [
    "NODE_HOST_SUFFIX",
    "AgentGRPCServer",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "ForwardProxy",
    "HandshakeError",
    "HealthService",
    "LegacyGRPCError",
    "NodeConnection",
    "NodeIdMismatchError",
    "PeerConnectionInfo",
    "PeerRefusedError",
    "PeerRejectedError",
    "PeerVerificationError",
    "PreambleError",
    "ProxyAuthError",
    "ProxyCredentials",
    "ProxyStateError",
    "ReverseProxy",
    "ReverseProxyStatistics",
    "SecureConnection",
    "ServiceBinding",
    "TLSCredentials",
    "Tunnel",
    "UnknownNodeError",
    "Verifier",
    "accept_peer",
    "dial_peer",
    "node_target",
    "parse_grpc_peer",
]
