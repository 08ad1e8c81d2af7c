"""grpcio's API over QUIC: ``from migration import quic_grpc as grpc``.

Unmodified grpcio-generated stubs and servicers run over quic_rpc's wire protocol on QUIC
with only that import changed. With grpcio installed, the status codes, base classes and
exceptions are grpcio's own (``except grpc.RpcError`` keeps working); without it, this
package provides equivalents with the same names and values.

Differences from grpcio, by design:

* QUIC is always TLS 1.3: ``insecure_channel`` / ``add_insecure_port`` raise
  :class:`UsageError`. ``ssl_channel_credentials`` / ``ssl_server_credentials`` take the
  usual arguments plus ``verify=`` — a custom peer verifier ``verify(chain_der) -> identity``.
* ``compression`` arguments and ``credentials=`` (call credentials) are accepted and
  ignored. ``wait_for_ready=True`` keeps retrying the connection until the deadline;
  without it a call fails UNAVAILABLE when no connection can be made.
* Message size limits (``grpc.max_receive_message_length`` default 4 MiB,
  ``grpc.max_send_message_length``) and ``grpc.ssl_target_name_override`` are honoured;
  ``("quicshift.quic_config", QUICConfig(...))`` sets the QUIC transport's configuration;
  other channel/server options are accepted and ignored.
* ``context.peer()`` uses grpcio's format (``ipv4:127.0.0.1:5``, ``ipv6:%5B::1%5D:5``);
  ``context.peer_info()`` (extension) gives the transport's full peer description,
  including the identity a custom verifier returned. An aio server's
  ``add_secure_port(..., 0)`` reserves a free port at once and binds it in ``start()``.
* Wire: quic_rpc's protocol (one QUIC stream per call), so adapter peers and native
  quic_rpc peers (``RPCServer`` / ``RPCClient``) call each other.

Submodules: :mod:`.aio` (``grpc.aio``), :mod:`.descriptor` (services bound from protobuf
descriptors, grpcio-free), :mod:`.health` (``grpc.health.v1``), :mod:`.testing`
(in-memory channels for users' tests).
"""

from __future__ import annotations

from . import aio, descriptor, testing
from ._channel import Channel, channel_ready_future
from ._compat import (
    GRPC_AVAILABLE,
    Call,
    CallCredentials,
    ChannelConnectivity,
    ChannelCredentials,
    ClientCallDetails,
    Compression,
    Future,
    FutureCancelledError,
    FutureTimeoutError,
    GenericRpcHandler,
    HandlerCallDetails,
    RpcContext,
    RpcError,
    RpcMethodHandler,
    ServerCredentials,
    ServerInterceptor,
    ServicerContext,
    ServiceRpcHandler,
    Status,
    StatusCode,
    StreamStreamClientInterceptor,
    StreamUnaryClientInterceptor,
    UnaryStreamClientInterceptor,
    UnaryUnaryClientInterceptor,
)
from ._credentials import (
    PeerVerifier,
    QUICChannelCredentials,
    QUICServerCredentials,
    ssl_channel_credentials,
    ssl_server_credentials,
)
from ._errors import AbortError, InactiveRpcError, UsageError
from ._handlers import (
    CallDetails,
    DictionaryGenericHandler,
    MethodHandler,
    method_handlers_generic_handler,
    stream_stream_rpc_method_handler,
    stream_unary_rpc_method_handler,
    unary_stream_rpc_method_handler,
    unary_unary_rpc_method_handler,
)
from ._interceptors import intercept_channel
from ._metadata import MetadataError
from ._quic import insecure_channel, secure_channel
from ._server import Server, server
from ._status import code_from_number, code_number, to_status_code

__all__ = [
    "GRPC_AVAILABLE",
    "AbortError",
    "Call",
    "CallCredentials",
    "CallDetails",
    "Channel",
    "ChannelConnectivity",
    "ChannelCredentials",
    "ClientCallDetails",
    "Compression",
    "DictionaryGenericHandler",
    "Future",
    "FutureCancelledError",
    "FutureTimeoutError",
    "GenericRpcHandler",
    "HandlerCallDetails",
    "InactiveRpcError",
    "MetadataError",
    "MethodHandler",
    "PeerVerifier",
    "QUICChannelCredentials",
    "QUICServerCredentials",
    "RpcContext",
    "RpcError",
    "RpcMethodHandler",
    "Server",
    "ServerCredentials",
    "ServerInterceptor",
    "ServiceRpcHandler",
    "ServicerContext",
    "Status",
    "StatusCode",
    "StreamStreamClientInterceptor",
    "StreamUnaryClientInterceptor",
    "UnaryStreamClientInterceptor",
    "UnaryUnaryClientInterceptor",
    "UsageError",
    "aio",
    "channel_ready_future",
    "code_from_number",
    "code_number",
    "descriptor",
    "insecure_channel",
    "intercept_channel",
    "method_handlers_generic_handler",
    "secure_channel",
    "server",
    "ssl_channel_credentials",
    "ssl_server_credentials",
    "stream_stream_rpc_method_handler",
    "stream_unary_rpc_method_handler",
    "testing",
    "to_status_code",
    "unary_stream_rpc_method_handler",
    "unary_unary_rpc_method_handler",
]
