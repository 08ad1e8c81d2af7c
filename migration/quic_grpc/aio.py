"""``grpc.aio`` over QUIC: ``from migration.quic_grpc import aio`` mirrors ``grpc.aio``."""

from __future__ import annotations

from ._aio_channel import (
    AioChannel as Channel,
)
from ._aio_channel import (
    ClientCallDetails,
    StreamStreamCall,
    StreamStreamMultiCallable,
    StreamUnaryCall,
    StreamUnaryMultiCallable,
    UnaryStreamCall,
    UnaryStreamMultiCallable,
    UnaryUnaryCall,
    UnaryUnaryMultiCallable,
)
from ._aio_interceptors import InterceptedCall
from ._aio_metadata import Metadata
from ._call_core import EOF
from ._compat import AioClientInterceptor as ClientInterceptor
from ._compat import AioServerInterceptor as ServerInterceptor
from ._compat import AioStreamStreamClientInterceptor as StreamStreamClientInterceptor
from ._compat import AioStreamUnaryClientInterceptor as StreamUnaryClientInterceptor
from ._compat import AioUnaryStreamClientInterceptor as UnaryStreamClientInterceptor
from ._compat import AioUnaryUnaryClientInterceptor as UnaryUnaryClientInterceptor
from ._context import AioServicerContext as ServicerContext
from ._errors import AbortError, AioRpcError, UsageError
from ._quic import aio_insecure_channel as insecure_channel
from ._quic import aio_secure_channel as secure_channel
from ._server import AioServer as Server
from ._server import aio_server as server

__all__ = [
    "EOF",
    "AbortError",
    "AioRpcError",
    "Channel",
    "ClientCallDetails",
    "ClientInterceptor",
    "InterceptedCall",
    "Metadata",
    "Server",
    "ServerInterceptor",
    "ServicerContext",
    "StreamStreamCall",
    "StreamStreamClientInterceptor",
    "StreamStreamMultiCallable",
    "StreamUnaryCall",
    "StreamUnaryClientInterceptor",
    "StreamUnaryMultiCallable",
    "UnaryStreamCall",
    "UnaryStreamClientInterceptor",
    "UnaryStreamMultiCallable",
    "UnaryUnaryCall",
    "UnaryUnaryClientInterceptor",
    "UnaryUnaryMultiCallable",
    "UsageError",
    "insecure_channel",
    "secure_channel",
    "server",
]
