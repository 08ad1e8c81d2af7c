"""The agent service's generated stubs and servicer, unchanged, over the shim on QUIC.

One smoke test per method kind the agent service has (unary, server-streaming, duplex;
it has no client-streaming method).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agent.servicer")

from agent.connection_info import ConnectionInfo
from agent.domains import (
    AgentState,
    ClaimStore,
    NodeAddress,
    NodeGraph,
    NotificationInbox,
    VaultStore,
    verify_cross_signed,
)
from agent.identity import NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import AgentServicer, request_cross_sign
from migration import quic_grpc as grpc
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import agent_service_pb2_grpc as _pb_grpc
from protos.agent.v1 import common_pb2 as common

from .pki import PKI

pb_grpc: Any = _pb_grpc
pytestmark = pytest.mark.timeout(120)


@dataclass
class AgentEnv:
    caller: NodeIdentity
    server_identity: NodeIdentity
    nodes: NodeGraph
    stub: Any
    client_claims: ClaimStore


@pytest.fixture
def states(tmp_path: Path) -> Iterator[tuple[AgentState, AgentState]]:
    with AgentState.open(tmp_path / "server") as s, AgentState.open(tmp_path / "client") as c:
        yield s, c


@pytest.fixture
async def agent_env(states: tuple[AgentState, AgentState], pki: PKI) -> AsyncIterator[AgentEnv]:
    state, client_state = states
    server_identity = NodeIdentity.generate()
    caller = NodeIdentity.generate("p256")

    def connection_info(context: Any) -> ConnectionInfo:
        return ConnectionInfo(
            remote_node_id=caller.node_id,
            remote_host="127.0.0.1",
            remote_port=40000,
            remote_chain=tuple(caller.chain_der()),
        )

    nodes = NodeGraph(state, server_identity.node_id)
    servicer = AgentServicer(
        identity=server_identity,
        nodes=nodes,
        claims=ClaimStore(state),
        notifications=NotificationInbox(state),
        vaults=VaultStore(state),
        connection_info=connection_info,
    )
    server = grpc.aio.server()
    pb_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)])
    )
    await server.start()
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(pki.ca_pem))
    try:
        yield AgentEnv(
            caller,
            server_identity,
            nodes,
            pb_grpc.AgentServiceStub(channel),
            ClaimStore(client_state),
        )
    finally:
        await channel.close()
        await server.stop(None)


async def test_agent_unary_echo(agent_env: AgentEnv) -> None:
    reply = await agent_env.stub.Echo(common.EchoMessage(message="hello ✓ \U0001f680"))
    assert reply.message == "hello ✓ \U0001f680"


async def test_agent_server_streaming(agent_env: AgentEnv) -> None:
    nodes = [NodeId(os.urandom(32)) for _ in range(5)]
    for n in nodes:
        agent_env.nodes.set_node(n, [NodeAddress("192.0.2.9", 1314, ("quic",))], last_seen_ms=5)
    target = NodeId(os.urandom(32))
    messages = [
        m
        async for m in agent_env.stub.NodesClosestLocalNodesGet(
            pb.ClosestLocalNodesRequest(
                target=common.NodeId(id=target.raw),
                pagination=common.PaginationRequest(page_size=10),
            )
        )
    ]
    *items, last = messages
    assert [NodeId(m.node.node_id.id) for m in items] == sorted(nodes, key=target.distance)
    assert last.WhichOneof("result") == "page" and not last.page.has_more


async def test_agent_server_streaming_error(agent_env: AgentEnv) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in agent_env.stub.NodesClosestLocalNodesGet(pb.ClosestLocalNodesRequest()):
            pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_agent_duplex_cross_sign(agent_env: AgentEnv) -> None:
    ours, theirs = await request_cross_sign(
        agent_env.stub,
        agent_env.caller,
        agent_env.client_claims,
        agent_env.server_identity.node_id,
        data=b"link",
        timeout=30,
    )
    for signed in (ours, theirs):
        verify_cross_signed(signed)
    assert ours.claim.issuer == agent_env.caller.node_id
