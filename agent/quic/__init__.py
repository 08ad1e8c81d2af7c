"""The agent on the new stack: quic_rpc over QUIC, importable and runnable without grpc.

* :class:`Agent` — one node: identity, domains, one QUIC socket, the RPC server with the
  agent's handlers, and its :class:`NodeConnectionManager`.
* :class:`NodeConnection` — a verified QUIC connection to one peer with its
  ``AgentService`` and ``Health`` stubs (the legacy NodeConnection's surface).
* :class:`NodeConnectionManager` — one connection per peer, shared dials, idle expiry,
  bounded with LRU eviction, incoming connections reused for calls back.
"""

from .agent import AGENT_SERVICE_NAME, DEFAULT_HANDLER_TIMEOUT, QUIC_TRANSPORT, Agent, AgentError
from .connection_manager import (
    REFUSED_CONNECTION_CODE,
    ConnectionLimitReachedError,
    ConnectionManagerConfig,
    ConnectionManagerError,
    ConnectionManagerStoppedError,
    NodeConnectionManager,
)
from .node_connection import (
    AGENT_SERVICE,
    DEFAULT_CONNECT_TIMEOUT,
    AgentServiceStub,
    ConnectionFailedError,
    ConnectRefusedError,
    ConnectTimeoutError,
    Direction,
    NodeConnection,
    NodeConnectionError,
    NodeIdMismatchError,
    PeerRejectedUsError,
    PeerVerificationError,
)

__all__ = [
    "AGENT_SERVICE",
    "AGENT_SERVICE_NAME",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDLER_TIMEOUT",
    "QUIC_TRANSPORT",
    "REFUSED_CONNECTION_CODE",
    "Agent",
    "AgentError",
    "AgentServiceStub",
    "ConnectRefusedError",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "ConnectionLimitReachedError",
    "ConnectionManagerConfig",
    "ConnectionManagerError",
    "ConnectionManagerStoppedError",
    "Direction",
    "NodeConnection",
    "NodeConnectionError",
    "NodeConnectionManager",
    "NodeIdMismatchError",
    "PeerRejectedUsError",
    "PeerVerificationError",
]
