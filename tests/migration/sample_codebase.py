"""A small sample codebase that uses grpcio, written out by the scan tests."""

from __future__ import annotations

from pathlib import Path

SERVER_SYNC = '''\
"""A sync gRPC server."""
from concurrent import futures

import grpc

import echo_pb2_grpc


class Echo(echo_pb2_grpc.EchoServicer):
    def Say(self, request, context):
        if not request.text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty")
        metadata = dict(context.invocation_metadata())
        context.set_code(grpc.StatusCode.OK)
        return request


def serve(key, chain):
    options = [("grpc.max_receive_message_length", 1024)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    server.add_insecure_port("[::]:50051")
    creds = grpc.ssl_server_credentials([(key, chain)])
    server.add_secure_port("[::]:50052", creds)
    server.start()
    server.wait_for_termination()
'''

CLIENT_AIO = '''\
"""An asyncio client with an interceptor and proxy options."""
import os

from grpc import aio

from protos import echo_pb2, echo_pb2_grpc


class AuthInterceptor(aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(client_call_details, request)


async def run(target):
    os.environ["https_proxy"] = "http://proxy.example:3128"
    options = [
        ("grpc.enable_http_proxy", 1),
        ("grpc.http_proxy", "http://proxy.example:3128"),
        ("grpc.keepalive_time_ms", 10000),
    ]
    interceptors = [AuthInterceptor()]
    async with aio.insecure_channel(target, options=options, interceptors=interceptors) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        try:
            return await stub.Say(echo_pb2.Msg(text="hi"), timeout=5, wait_for_ready=True)
        except aio.AioRpcError as exc:
            return exc.code()
'''

ALIASES = """\
import grpc as g
from grpc import aio as x
from grpc import secure_channel as open_channel
from grpc import metadata_call_credentials
from grpc_reflection.v1alpha import reflection


def channel(target, key, chain, root):
    creds = g.ssl_channel_credentials(root, key, chain)
    token = metadata_call_credentials(lambda context, callback: callback((), None))
    both = g.composite_channel_credentials(creds, token)
    return open_channel(target, both, compression=g.Compression.Gzip)


async def aio_server(servicer, services):
    server = x.server()
    reflection.enable_server_reflection(services, server)
    server.add_secure_port("[::]:0", g.local_server_credentials())
    return server


class Servicer:
    async def Get(self, request, ctx: x.ServicerContext):
        peer = ctx.peer()
        await ctx.abort_with_status(None)

    def Check(self, request, context):
        return context.auth_context()


def use_experimental(target):
    return g.experimental.insecure_channel_credentials()
"""

BROKEN = """\
import grpc

def oops(:
    pass
"""

NOT_GRPC = """\
import os

PROXY = os.environ.get("http_proxy")
OPTIONS = [("grpc.max_receive_message_length", 1)]


def handler(request, context):
    return context.peer()
"""

CLEAN = """\
import grpc
from grpc import aio


async def call(target, creds, request, stub_class):
    async with aio.secure_channel(target, creds) as channel:
        try:
            return await stub_class(channel).Get(request)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
"""

GENERATED = """\
import grpc


class EchoStub:
    def __init__(self, channel):
        self.Say = channel.unary_unary("/echo.Echo/Say")


def Say(request, target):
    return grpc.experimental.unary_unary(request, target, "/echo.Echo/Say")
"""


def write_sample(root: Path) -> Path:
    """Write the sample codebase under ``root`` and return ``root``."""
    files = {
        "server_sync.py": SERVER_SYNC,
        "client/client_aio.py": CLIENT_AIO,
        "aliases.py": ALIASES,
        "broken.py": BROKEN,
        "util/not_grpc.py": NOT_GRPC,
        "protos/echo_pb2_grpc.py": GENERATED,
        "README.md": "not python\n",
        ".venv/lib/site.py": "import grpc\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def write_clean(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "clean.py").write_text(CLEAN)
    return root
