"""quic_rpc.rpc: a transport-agnostic RPC — one call per byte stream.

Plug :meth:`RPCServer.handle_stream` into any transport's stream handler and give
:class:`RPCClient` any :class:`~quic_rpc.streams.StreamOpener`. The wire format is in
docs/PROTOCOL.md; the sans-IO core is :class:`CallProtocol` / :class:`FrameDecoder`.
"""

from .call_state import CallInput, CallStateMachine, RequestState, ResponseState, Role
from .client import (
    ClientCall,
    ClientStreamingCall,
    DuplexCall,
    MethodCallable,
    RawCall,
    RPCClient,
    ServerStreamingCall,
    UnaryCall,
)
from .codec import (
    FrameDecoder,
    encode_message,
    encode_preface,
    encode_request_end,
    encode_request_header,
    encode_response_header,
    encode_trailer,
)
from .config import RPCClientConfig, RPCServerConfig
from .context import CallContext, CancellationSignal, ServerCallContext
from .errors import (
    CallRefusedError,
    HeaderTooLargeError,
    InvalidMetadataError,
    LocalProtocolError,
    MessageTooLargeError,
    ProtocolError,
    QuicRPCError,
    RemoteProtocolError,
    RPCError,
    SerializationError,
    UnsupportedVersionError,
)
from .events import (
    Event,
    MessageReceived,
    RawDataReceived,
    RequestEnded,
    RequestHeaderReceived,
    ResponseHeaderReceived,
    StreamEnded,
    TrailerReceived,
)
from .frames import PROTOCOL_VERSION, CallKind, FrameType
from .handlers import (
    Handler,
    Manifest,
    client_streaming,
    duplex,
    raw,
    server_streaming,
    unary,
)
from .metadata import Metadata, MetadataLike, MetadataValue
from .middleware import CallDetails, Middleware, Proceed
from .pagination import Order, Page, PageRequest, iterate_pages, paginate
from .protocol import CallProtocol
from .raw_stream import RawStream
from .serializers import BytesSerializer, JSONSerializer, ProtobufSerializer, Serializer
from .server import RPCServer, connection_key
from .status import ResetCode, Status, reset_code_for_status, status_for_reset_code

__all__ = [
    "PROTOCOL_VERSION",
    "BytesSerializer",
    "CallContext",
    "CallDetails",
    "CallInput",
    "CallKind",
    "CallProtocol",
    "CallRefusedError",
    "CallStateMachine",
    "CancellationSignal",
    "ClientCall",
    "ClientStreamingCall",
    "DuplexCall",
    "Event",
    "FrameDecoder",
    "FrameType",
    "Handler",
    "HeaderTooLargeError",
    "InvalidMetadataError",
    "JSONSerializer",
    "LocalProtocolError",
    "Manifest",
    "MessageReceived",
    "MessageTooLargeError",
    "Metadata",
    "MetadataLike",
    "MetadataValue",
    "MethodCallable",
    "Middleware",
    "Order",
    "Page",
    "PageRequest",
    "Proceed",
    "ProtobufSerializer",
    "ProtocolError",
    "QuicRPCError",
    "RPCClient",
    "RPCClientConfig",
    "RPCError",
    "RPCServer",
    "RPCServerConfig",
    "RawCall",
    "RawDataReceived",
    "RawStream",
    "RemoteProtocolError",
    "RequestEnded",
    "RequestHeaderReceived",
    "RequestState",
    "ResetCode",
    "ResponseHeaderReceived",
    "ResponseState",
    "Role",
    "SerializationError",
    "Serializer",
    "ServerCallContext",
    "ServerStreamingCall",
    "Status",
    "StreamEnded",
    "TrailerReceived",
    "UnaryCall",
    "UnsupportedVersionError",
    "client_streaming",
    "connection_key",
    "duplex",
    "encode_message",
    "encode_preface",
    "encode_request_end",
    "encode_request_header",
    "encode_response_header",
    "encode_trailer",
    "iterate_pages",
    "paginate",
    "raw",
    "reset_code_for_status",
    "server_streaming",
    "status_for_reset_code",
    "unary",
]
