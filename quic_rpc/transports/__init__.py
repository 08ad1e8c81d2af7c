"""Byte-stream transports beneath the RPC layer, beside QUIC.

* :mod:`~quic_rpc.transports.memory` — in-memory stream pairs and connections (tests).
"""

from quic_rpc.transports.memory import (
    CLOSE_STOP_CODE,
    HANDLER_ERROR_CODE,
    MemoryClientConnection,
    MemoryConnection,
    MemoryStream,
    memory_connection,
    memory_stream_pair,
)

__all__ = [
    "CLOSE_STOP_CODE",
    "HANDLER_ERROR_CODE",
    "MemoryClientConnection",
    "MemoryConnection",
    "MemoryStream",
    "memory_connection",
    "memory_stream_pair",
]
