"""Byte-stream transports beneath the RPC layer, beside QUIC.

* :mod:`~quic_rpc.transports.memory` — in-memory stream pairs and connections (tests).
* :mod:`~quic_rpc.transports.mux` — the sans-IO stream multiplexer used over TCP.
* :mod:`~quic_rpc.transports.tcp` — multiplexed streams over TCP and TCP+TLS.

Every transport here passes :mod:`quic_rpc.testing.stream_conformance`.
"""

from quic_rpc.transports.memory import (
    CLOSE_STOP_CODE,
    HANDLER_ERROR_CODE,
    MAX_ERROR_CODE,
    MemoryClientConnection,
    MemoryConnection,
    MemoryStream,
    memory_connection,
    memory_stream_pair,
)
from quic_rpc.transports.mux import (
    FlowControlError,
    FrameSizeError,
    LocalProtocolError,
    MuxConfig,
    MuxConnection,
    MuxError,
    RemoteProtocolError,
    StreamLimitError,
)
from quic_rpc.transports.tcp import (
    STREAM_REFUSED_CODE,
    PeerVerificationError,
    PeerVerifier,
    TCPConfig,
    TCPConnection,
    TCPServer,
    TCPStream,
    connect_tcp,
)

__all__ = [
    "CLOSE_STOP_CODE",
    "HANDLER_ERROR_CODE",
    "MAX_ERROR_CODE",
    "STREAM_REFUSED_CODE",
    "FlowControlError",
    "FrameSizeError",
    "LocalProtocolError",
    "MemoryClientConnection",
    "MemoryConnection",
    "MemoryStream",
    "MuxConfig",
    "MuxConnection",
    "MuxError",
    "PeerVerificationError",
    "PeerVerifier",
    "RemoteProtocolError",
    "StreamLimitError",
    "TCPConfig",
    "TCPConnection",
    "TCPServer",
    "TCPStream",
    "connect_tcp",
    "memory_connection",
    "memory_stream_pair",
]
