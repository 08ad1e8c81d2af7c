import asyncio
from quic_rpc.rpc import RPCServerConfig, ServerCallContext, unary
from tests.rpc.conftest import RPCTransport

async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
    return request

async def test_probe(rpc_transport: RPCTransport) -> None:
    limit = 64
    _, client = await rpc_transport.serve({"/echo": unary(echo)}, server_config=RPCServerConfig(max_concurrent_calls_per_connection=limit))
    async def caller(i):
        for r in range(20):
            assert await client.unary("/echo", b"x" * 100) == b"x" * 100
    await asyncio.gather(*(caller(i) for i in range(limit)))
