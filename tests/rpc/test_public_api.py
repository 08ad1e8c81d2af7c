"""Pin the public API of quic_rpc.rpc and its import rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import quic_rpc.rpc as rpc

PUBLIC_API = {
    "PROTOCOL_VERSION", "BytesSerializer", "CallContext", "CallDetails", "CallInput",
    "CallKind", "CallProtocol", "CallRefusedError", "CallStateMachine", "CancellationSignal", "ClientCall",
    "ClientStreamingCall", "DuplexCall", "Event", "FrameDecoder", "FrameType", "Handler",
    "HeaderTooLargeError", "InvalidMetadataError", "JSONSerializer", "LocalProtocolError",
    "Manifest", "MessageReceived", "MessageTooLargeError", "Metadata", "MetadataLike",
    "MetadataValue", "MethodCallable", "Middleware", "Order", "Page", "PageRequest",
    "Proceed", "ProtobufSerializer", "ProtocolError", "QuicRPCError", "RPCClient",
    "RPCClientConfig", "RPCError", "RPCServer", "RPCServerConfig", "RawCall",
    "RawDataReceived", "RawStream", "RemoteProtocolError", "RequestEnded",
    "RequestHeaderReceived", "RequestState", "ResetCode", "ResponseHeaderReceived",
    "ResponseState", "Role", "SerializationError", "Serializer", "ServerCallContext",
    "ServerStreamingCall", "Status", "StreamEnded", "TrailerReceived", "UnaryCall",
    "UnsupportedVersionError", "client_streaming", "connection_key", "duplex",
    "encode_message", "encode_preface", "encode_request_end", "encode_request_header",
    "encode_response_header", "encode_trailer", "iterate_pages", "paginate", "raw",
    "reset_code_for_status", "server_streaming", "status_for_reset_code", "unary",
}  # fmt: skip

RPC_DIR = Path(rpc.__file__).parent
FORBIDDEN = ("grpc", "legacy_grpc", "migration", "agent", "quic_rpc.quic")


def test_public_api_is_pinned() -> None:
    assert set(rpc.__all__) == PUBLIC_API
    assert len(rpc.__all__) == len(set(rpc.__all__))
    for name in rpc.__all__:
        assert getattr(rpc, name) is not None


def test_call_refused_error_is_exported() -> None:
    from quic_rpc.rpc import CallRefusedError, RPCError, Status
    from quic_rpc.rpc.errors import CallRefusedError as FromErrors

    assert CallRefusedError is FromErrors
    assert issubclass(CallRefusedError, RPCError)
    err = CallRefusedError("refused")
    assert isinstance(err, RPCError)
    assert err.status is Status.UNAVAILABLE and err.details == "refused"


def test_status_codes_match_grpc_numbers() -> None:
    expected = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    ]  # fmt: skip
    assert [(s.name, s.value) for s in rpc.Status] == [(n, i) for i, n in enumerate(expected)]


def test_rpc_package_imports_no_transport_or_grpc() -> None:
    for path in RPC_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                names = [f"quic_rpc.{node.module}"]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), (
                    f"{path.name} imports {name}"
                )


BLOCK_GRPC = """
import importlib, sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" or name.startswith("grpc.") or name.startswith("grpc_"):
            raise ImportError(f"grpc is blocked in this test: {name}")
        return None

sys.meta_path.insert(0, _Block())
sys.modules["grpc"] = None
import quic_rpc, quic_rpc.rpc, quic_rpc.streams
for optional in ("quic_rpc.quic", "quic_rpc.transports", "quic_rpc.transports.memory"):
    try:
        importlib.import_module(optional)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("grpc"):
            raise
loaded = sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc."))
assert sys.modules["grpc"] is None and loaded == ["grpc"], loaded
print("ok")
"""


def test_quic_rpc_imports_with_grpc_unimportable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_GRPC],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RPC_DIR.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_serve_in_memory_helper() -> None:
    from quic_rpc.rpc.testing import serve_in_memory

    async def whoami(request: bytes, ctx: rpc.ServerCallContext) -> bytes:
        assert ctx.peer_info is not None
        return str(ctx.peer_info.identity).encode()

    async with serve_in_memory({"/who": rpc.unary(whoami)}, client_identity="node-a") as (
        server,
        client,
    ):
        assert await client.unary("/who", b"") == b"node-a"
        assert server.active_calls == 0
