"""What only the legacy stack has: its forward proxy's auth and its reverse proxy's gate.

The three-agent node-to-node suite (every method between every pair, caller identity,
pagination, restart, wrong node) runs on both stacks, legacy included, in
tests/agent_quic/test_agent_suite.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from agent.domains.notifications import new_notification, sign_notification
from agent.identity import NodeIdentity
from agent.legacy import LegacyAgent
from agent.servicer import signed_notification_to_proto
from protos.agent.v1 import agent_service_pb2_grpc

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]


def vault_for(reader: LegacyAgent) -> str:
    return f"for-{str(reader.node_id)[:10]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[LegacyAgent]]:
    root = tmp_path_factory.mktemp("fleet")
    identities = [
        NodeIdentity.generate("ed25519"),
        NodeIdentity.generate("p256"),
        NodeIdentity.generate("ed25519").rotate("p256"),  # a rotated chain in the fleet
    ]
    agents = [LegacyAgent(root / f"agent-{i}", ident) for i, ident in enumerate(identities)]
    try:
        for agent in agents:
            await agent.start()
        for agent, other in itertools.permutations(agents, 2):
            agent.add_node(other.node_id, other.host, other.port)
            name = vault_for(other)
            agent.vaults.create_vault(name)
            agent.vaults.write_file(name, "hello.txt", f"{agent.node_id}".encode())
            agent.vaults.write_file(name, "big.bin", os.urandom(300_000))
            agent.vaults.grant(name, other.node_id)
        yield agents
    finally:
        for agent in agents:
            await agent.stop()


async def test_forward_proxy_serves_only_its_agent(fleet: list[LegacyAgent]) -> None:
    src, dst = fleet[0], fleet[1]
    auth = src.forward_proxy.auth
    assert auth is not None and len(auth.password) >= 24
    reader, writer = await asyncio.open_connection("127.0.0.1", src.forward_proxy.port)
    target = f"{dst.node_id}.node:{dst.port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 407 ")


async def test_calls_that_bypass_the_reverse_proxy_are_unauthenticated(
    fleet: list[LegacyAgent],
) -> None:
    src, dst = fleet[0], fleet[1]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{dst.grpc_server.port}")
    try:
        make_stub: Any = agent_service_pb2_grpc.AgentServiceStub
        stub = make_stub(channel)
        signed = sign_notification(new_notification(src.node_id, "general", b"x"), src.identity)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.NotificationsSend(signed_notification_to_proto(signed))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not identified" in (info.value.details() or "")
    finally:
        await channel.close(None)
