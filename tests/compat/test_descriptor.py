"""Descriptor-bound services: the quic-only path, and interop with native quic_rpc."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from migration import quic_grpc
from migration.quic_grpc import descriptor
from quic_rpc.quic import QUICServer, QUICSocket, TLSCredentials, ca_verifier, connect
from quic_rpc.rpc import RPCClient, RPCServer

from .conftest import Protos
from .pki import PKI
from .servicers import Recorder, make_aio_servicer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def _service(protos: Protos) -> Any:
    return protos.pb2.DESCRIPTOR.services_by_name["Compat"]


def test_describe_service(compat_protos: Protos) -> None:
    shapes = {s.name: s for s in descriptor.describe_service(_service(compat_protos))}
    assert shapes["Unary"].path == "/compat.v1.Compat/Unary"
    assert (shapes["Bidi"].request_streaming, shapes["Bidi"].response_streaming) == (True, True)
    assert shapes["ServerStream"].channel_factory == "unary_stream"
    assert shapes["Unary"].request_class is compat_protos.pb2.EchoRequest


async def test_descriptor_bound_adapter_server_and_stub(compat_protos: Protos, pki: PKI) -> None:
    pb2 = compat_protos.pb2
    rec = Recorder()
    server = quic_grpc.aio.server()
    descriptor.add_servicer_to_server(
        _service(compat_protos),
        make_aio_servicer(quic_grpc, pb2, compat_protos.pb2_grpc, rec),
        server,
    )
    port = server.add_secure_port(
        "127.0.0.1:0",
        quic_grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)]),
    )
    await server.start()
    stub_type = descriptor.stub_class(_service(compat_protos))
    assert stub_type.__name__ == "CompatStub"
    async with quic_grpc.aio.secure_channel(
        f"127.0.0.1:{port}", quic_grpc.ssl_channel_credentials(pki.ca_pem)
    ) as channel:
        stub = stub_type(channel)
        assert (await stub.Unary(pb2.EchoRequest(payload=b"d"))).payload == b"d"
        assert [r.index async for r in stub.ServerStream(pb2.EchoRequest(count=3))] == [0, 1, 2]
        reply = await stub.ClientStream(iter([pb2.EchoRequest(payload=b"ab")] * 2))
        assert reply.received_bytes == 4
        assert [r.payload async for r in stub.Bidi(iter([pb2.EchoRequest(payload=b"z")]))] == [b"z"]
        with pytest.raises(quic_grpc.aio.AioRpcError) as info:
            await stub.Unary(pb2.EchoRequest(code_name="NOT_FOUND", details="nope"))
        assert info.value.code() is quic_grpc.StatusCode.NOT_FOUND
    await server.stop(None)


async def _native_server(protos: Protos, pki: PKI, servicer: Any) -> tuple[QUICServer, QUICSocket]:
    manifest = descriptor.native_manifest(_service(protos), servicer)
    rpc_server = RPCServer(manifest)
    sock = await QUICSocket.bind("127.0.0.1", 0)
    tls = TLSCredentials.load(pki.server_key_pem, pki.server_chain_pem, lambda chain: None)
    server = QUICServer(sock, tls, None, rpc_server.handle_stream)
    await server.start()
    return server, sock


async def test_native_rpc_server_with_shim_client(compat_protos: Protos, pki: PKI) -> None:
    """A grpc.aio-style servicer on quic_rpc's own RPCServer; the shim channel calls it."""
    pb2 = compat_protos.pb2
    servicer = make_aio_servicer(quic_grpc, pb2, compat_protos.pb2_grpc, Recorder())
    server, sock = await _native_server(compat_protos, pki, servicer)
    port = sock.local_address[1]
    try:
        async with quic_grpc.aio.secure_channel(
            f"127.0.0.1:{port}", quic_grpc.ssl_channel_credentials(pki.ca_pem)
        ) as channel:
            stub = descriptor.stub_class(_service(compat_protos))(channel)
            metadata = (("x-k", "v"), ("x-b-bin", b"\x00\x01"))
            call = stub.Unary(pb2.EchoRequest(payload=b"n"), metadata=metadata)
            assert (await call).payload == b"n"
            assert [(k, v) for k, v in await call.initial_metadata() if k.startswith("x-")] == list(
                metadata
            )
            assert [r.index async for r in stub.ServerStream(pb2.EchoRequest(count=4))] == [
                0,
                1,
                2,
                3,
            ]
            reply = await stub.ClientStream(iter([pb2.EchoRequest(payload=b"abc")] * 3))
            assert reply.received_messages == 3
            got = [r.payload async for r in stub.Bidi(iter([pb2.EchoRequest(payload=b"q")] * 2))]
            assert got == [b"q", b"q"]
            with pytest.raises(quic_grpc.aio.AioRpcError) as info:
                await stub.Unary(
                    pb2.EchoRequest(code_name="ALREADY_EXISTS", details="dup \U0001f600")
                )
            assert info.value.code() is quic_grpc.StatusCode.ALREADY_EXISTS
            assert info.value.details() == "dup \U0001f600"
            with pytest.raises(quic_grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/compat.v1.Compat/Missing")(b"")
            assert info.value.code() is quic_grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
        await sock.close()


async def test_shim_server_with_native_rpc_client(compat_protos: Protos, pki: PKI) -> None:
    """The adapter's aio server; quic_rpc's own RPCClient with a descriptor-bound stub."""
    pb2 = compat_protos.pb2
    server = quic_grpc.aio.server()
    compat_protos.pb2_grpc.add_CompatServicer_to_server(
        make_aio_servicer(quic_grpc, pb2, compat_protos.pb2_grpc, Recorder()), server
    )
    port = server.add_secure_port(
        "127.0.0.1:0",
        quic_grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)]),
    )
    await server.start()
    sock = await QUICSocket.bind("127.0.0.1", 0)
    tls = TLSCredentials.load(
        pki.client_key_pem, pki.client_chain_pem, ca_verifier(pki.ca_pem, server_name="localhost")
    )
    conn = await connect(sock, "127.0.0.1", port, tls, server_name="localhost")
    try:
        stub = descriptor.stub_class(_service(compat_protos))(RPCClient(conn))
        reply = await stub.Unary(pb2.EchoRequest(payload=b"native"))
        assert reply.payload == b"native"
        call = stub.ServerStream(pb2.EchoRequest(count=3))
        assert [r.index async for r in call] == [0, 1, 2]
    finally:
        await conn.aclose(0)
        await sock.close()
        await server.stop(None)


GRPCIO_ABSENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["grpc"] = None          # grpcio made unimportable
    sys.modules["grpc.aio"] = None
    sys.path.insert(0, PROTO_DIR)
    import compat_test_pb2 as pb2
    from migration import quic_grpc as grpc
    from migration.quic_grpc import descriptor

    assert not grpc.GRPC_AVAILABLE
    assert grpc.StatusCode.__module__.startswith("migration."), grpc.StatusCode

    SERVICE = pb2.DESCRIPTOR.services_by_name["Compat"]

    class Servicer:
        async def Unary(self, request, context):
            if request.code_name:
                await context.abort(getattr(grpc.StatusCode, request.code_name), request.details)
            await context.send_initial_metadata([("x-seen", "yes")])
            return pb2.EchoResponse(payload=request.payload)

        async def ServerStream(self, request, context):
            for i in range(request.count):
                yield pb2.EchoResponse(index=i)

        async def ClientStream(self, request_iterator, context):
            n = 0
            async for _ in request_iterator:
                n += 1
            return pb2.EchoResponse(received_messages=n)

        async def Bidi(self, request_iterator, context):
            async for request in request_iterator:
                yield pb2.EchoResponse(payload=request.payload)

    def sync_api(key, chain, ca):
        from concurrent.futures import ThreadPoolExecutor

        def unary(request, context):
            if request.code_name:
                context.abort(grpc.StatusCode.NOT_FOUND, "sync " + request.details)
            return pb2.EchoResponse(payload=request.payload[::-1])

        def stream(request, context):
            for i in range(request.count):
                yield pb2.EchoResponse(index=i)

        class SyncServicer:
            Unary = staticmethod(unary)
            ServerStream = staticmethod(stream)

        with ThreadPoolExecutor(4) as pool:
            server = grpc.server(pool)
            descriptor.add_servicer_to_server(SERVICE, SyncServicer(), server)
            port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)]))
            server.start()
            with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) as ch:
                stub = descriptor.stub_class(SERVICE)(ch)
                assert stub.Unary(pb2.EchoRequest(payload=b"abc"), timeout=10).payload == b"cba"
                assert [r.index for r in stub.ServerStream(pb2.EchoRequest(count=2))] == [0, 1]
                try:
                    stub.Unary(pb2.EchoRequest(code_name="X", details="gone"), timeout=10)
                except grpc.RpcError as error:
                    assert isinstance(error, grpc.Call) and isinstance(error, grpc.Future)
                    assert error.code() is grpc.StatusCode.NOT_FOUND
                    assert error.details() == "sync gone"
                else:
                    raise AssertionError("expected an error")
                try:
                    stub.ClientStream(iter([]), timeout=10)
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
                else:
                    raise AssertionError("expected UNIMPLEMENTED")
            server.stop(None).wait(10)

    async def main():
        with open(KEY, "rb") as f: key = f.read()
        with open(CHAIN, "rb") as f: chain = f.read()
        with open(CA, "rb") as f: ca = f.read()
        server = grpc.aio.server()
        descriptor.add_servicer_to_server(SERVICE, Servicer(), server)
        port = server.add_secure_port("[::1]:0", grpc.ssl_server_credentials([(key, chain)]))
        await server.start()
        target = f"ipv6:[::1]:{port}"
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca)) as ch:
            stub = descriptor.stub_class(SERVICE)(ch)
            call = stub.Unary(pb2.EchoRequest(payload=b"free"))
            assert (await call).payload == b"free"
            assert ("x-seen", "yes") in tuple(await call.initial_metadata())
            assert [r.index async for r in stub.ServerStream(pb2.EchoRequest(count=3))] == [0, 1, 2]
            assert (await stub.ClientStream(iter([pb2.EchoRequest()] * 4))).received_messages == 4
            assert [r.payload async for r in stub.Bidi(iter([pb2.EchoRequest(payload=b"x")]))] == [b"x"]
            try:
                await stub.Unary(pb2.EchoRequest(code_name="PERMISSION_DENIED", details="no"))
            except grpc.RpcError as error:
                assert isinstance(error, grpc.aio.AioRpcError) and isinstance(error, grpc.Call)
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error.code()
                assert error.details() == "no"
            else:
                raise AssertionError("expected an error")
        await server.stop(None)
        await asyncio.to_thread(sync_api, key, chain, ca)
        assert "grpc" not in {name.split(".")[0] for name, mod in sys.modules.items() if mod is not None}
        print("GRPCIO-FREE OK")

    asyncio.run(main())
    """
)


def test_descriptor_bound_service_without_grpcio(
    compat_protos: Protos, pki: PKI, tmp_path: Path
) -> None:
    files = {
        "KEY": pki.server_key_pem,
        "CHAIN": pki.server_chain_pem,
        "CA": pki.ca_pem,
    }
    header = [f"PROTO_DIR = {str(compat_protos.out_dir)!r}"]
    for name, data in files.items():
        path = tmp_path / f"{name.lower()}.pem"
        path.write_bytes(data)
        header.append(f"{name} = {str(path)!r}")
    script = tmp_path / "grpcio_free.py"
    script.write_text("\n".join(header) + "\n" + GRPCIO_ABSENT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GRPCIO-FREE OK" in result.stdout
