"""Fixtures of the compatibility suite: one suite, two stacks.

``sync_env`` / ``aio_env`` are parametrized over real grpcio (HTTP/2 over TCP+TLS) and the
shim (``migration.quic_grpc`` over QUIC). Both build server and channel with the very same
grpc-API code; only the module differs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .pki import PKI, make_pki
from .servicers import (
    Recorder,
    make_aio_servicer,
    make_client_interceptor,
    make_server_interceptor,
    make_sync_servicer,
)

PROTO_DIR = Path(__file__).parent / "protos"


@dataclass
class Protos:
    pb2: ModuleType
    pb2_grpc: ModuleType
    out_dir: Path


@pytest.fixture(scope="session")
def compat_protos(tmp_path_factory: pytest.TempPathFactory) -> Protos:
    """compat_test.proto compiled with grpc_tools.protoc into a temp dir for this session."""
    pytest.importorskip("grpc_tools")
    out = tmp_path_factory.mktemp("compat_protos")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / "compat_test.proto"),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    return Protos(
        importlib.import_module("compat_test_pb2"),
        importlib.import_module("compat_test_pb2_grpc"),
        out,
    )


@pytest.fixture(scope="session")
def pki() -> PKI:
    return make_pki()


def stack_module(name: str) -> Any:
    if name == "grpc":
        import grpc

        return grpc
    from migration import quic_grpc

    return quic_grpc


@dataclass
class SyncEnv:
    name: str
    g: Any
    protos: Protos
    rec: Recorder
    server: Any
    channel: Any
    stub: Any
    port: int
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def pb2(self) -> ModuleType:
        return self.protos.pb2


@dataclass
class AioEnv:
    name: str
    g: Any
    protos: Protos
    rec: Recorder
    server: Any
    channel: Any
    stub: Any
    port: int

    @property
    def pb2(self) -> ModuleType:
        return self.protos.pb2


STACKS = ["grpc", "shim"]


@pytest.fixture(params=STACKS)
def make_sync_env(
    request: pytest.FixtureRequest, compat_protos: Protos, pki: PKI
) -> Iterator[Callable[..., SyncEnv]]:
    envs: list[SyncEnv] = []
    pools: list[ThreadPoolExecutor] = []

    def make(
        *,
        server_interceptors: bool = False,
        client_interceptors: bool = False,
        options: list[tuple[str, Any]] | None = None,
    ) -> SyncEnv:
        name = request.param
        g = stack_module(name)
        rec = Recorder()
        pool = ThreadPoolExecutor(8)
        pools.append(pool)
        interceptors = [make_server_interceptor(g, rec, aio=False)] if server_interceptors else None
        server = g.server(pool, interceptors=interceptors, options=options)
        compat_protos.pb2_grpc.add_CompatServicer_to_server(
            make_sync_servicer(g, compat_protos.pb2, compat_protos.pb2_grpc, rec), server
        )
        port = server.add_secure_port(
            "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
        )
        server.start()
        channel = g.secure_channel(
            f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem), options=options
        )
        if client_interceptors:
            channel = g.intercept_channel(channel, make_client_interceptor(g, aio=False))
        stub = compat_protos.pb2_grpc.CompatStub(channel)
        env = SyncEnv(name, g, compat_protos, rec, server, channel, stub, port)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.channel.close()
        env.server.stop(None).wait(10)
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def sync_env(make_sync_env: Callable[..., SyncEnv]) -> SyncEnv:
    return make_sync_env()


@pytest.fixture(params=STACKS)
async def make_aio_env(
    request: pytest.FixtureRequest, compat_protos: Protos, pki: PKI
) -> AsyncIterator[Callable[..., Any]]:
    envs: list[AioEnv] = []

    async def make(
        *,
        server_interceptors: bool = False,
        client_interceptors: bool = False,
        options: list[tuple[str, Any]] | None = None,
    ) -> AioEnv:
        name = request.param
        g = stack_module(name)
        rec = Recorder()
        interceptors = [make_server_interceptor(g, rec, aio=True)] if server_interceptors else None
        server = g.aio.server(interceptors=interceptors, options=options)
        compat_protos.pb2_grpc.add_CompatServicer_to_server(
            make_aio_servicer(g, compat_protos.pb2, compat_protos.pb2_grpc, rec), server
        )
        port = server.add_secure_port(
            "localhost:0", g.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
        )
        await server.start()
        channel = g.aio.secure_channel(
            f"localhost:{port}",
            g.ssl_channel_credentials(pki.ca_pem),
            options=options,
            interceptors=[make_client_interceptor(g, aio=True)] if client_interceptors else None,
        )
        stub = compat_protos.pb2_grpc.CompatStub(channel)
        env = AioEnv(name, g, compat_protos, rec, server, channel, stub, port)
        envs.append(env)
        return env

    yield make
    for env in envs:
        await env.channel.close()
        await env.server.stop(None)


@pytest.fixture
async def aio_env(make_aio_env: Callable[..., Any]) -> AioEnv:
    env: AioEnv = await make_aio_env()
    return env
