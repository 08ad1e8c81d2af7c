"""Fleet helpers for the rollout tests: start dual-stack agents, seed them, and call
every agent method from one agent on another through :meth:`DualStackAgent.call`."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.domains.notifications import new_notification, sign_notification
from agent.dual import DualStackAgent, transport_health_name
from agent.identity import NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import node_id_to_proto, request_cross_sign, signed_notification_to_proto
from migration.rollout import TRANSPORTS, FallbackPolicy, RolloutStage
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2

# Every method of AgentService and grpc.health.v1.Health that a peer calls.
EVERY_METHOD = (
    "Health/Check",
    "Health/List",
    "AgentService/Echo",
    "AgentService/NodesClosestLocalNodesGet",
    "AgentService/NodesCrossSignClaim",
    "AgentService/NodesClaimsGet",
    "AgentService/NodesHolePunchSignal",
    "AgentService/NotificationsSend",
    "AgentService/VaultsScan",
    "AgentService/VaultsPull",
)
TEST_POLICY = FallbackPolicy(budget=10.0, attempt_timeout=1.0)


def vault_for(reader: DualStackAgent) -> str:
    return f"for-{str(reader.node_id)[:10]}"


def make_agents(root: Path, count: int, **kwargs: Any) -> list[DualStackAgent]:
    kinds = ("ed25519", "p256")
    agents = []
    for index in range(count):
        identity = NodeIdentity.generate(kinds[index % 2])
        if index == count - 1:
            identity = identity.rotate()  # a rotated chain in every fleet
        kwargs.setdefault("fallback", TEST_POLICY)
        kwargs.setdefault("drain_notice", 0.0)
        agents.append(DualStackAgent(root / f"agent-{index}", identity=identity, **kwargs))
    return agents


def introduce(agents: Sequence[DualStackAgent]) -> None:
    """Every agent learns where every other is and what it serves now."""
    for agent, other in itertools.permutations(agents, 2):
        agent.add_node(other.node_id, other.node_addresses, serves=other.serves)


async def seed(agents: Sequence[DualStackAgent], blob_size: int = 60_000) -> None:
    """Every agent knows every other and shares a vault with each."""
    introduce(agents)
    for agent, other in itertools.permutations(agents, 2):
        name = vault_for(other)
        await asyncio.to_thread(agent.vaults.create_vault, name)
        await asyncio.to_thread(agent.vaults.write_file, name, "hello.txt", b"hello")
        await asyncio.to_thread(agent.vaults.write_file, name, "blob.bin", os.urandom(blob_size))
        await asyncio.to_thread(agent.vaults.grant, name, other.node_id)


async def set_stages(agents: Sequence[DualStackAgent], stages: Sequence[RolloutStage]) -> None:
    for agent, stage in zip(agents, stages, strict=True):
        await agent.set_stage(stage, "test")
    for agent in agents:
        await agent.refresh_peers()


def calls_by_transport(agent: DualStackAgent) -> dict[str, int]:
    snapshot = agent.metrics.snapshot()["transports"]
    return {t: sum(m["calls"] for m in snapshot.get(t, {}).values()) for t in TRANSPORTS}


def fallback_count(agent: DualStackAgent) -> int:
    return sum(f["count"] for f in agent.metrics.snapshot()["fallbacks"])


def _items(messages: list[Any], field: str) -> list[Any]:
    pages = [m.page for m in messages if m.WhichOneof("result") == "page"]
    assert pages and not pages[-1].has_more
    return [getattr(m, field) for m in messages if m.WhichOneof("result") == field]


async def call_every_method(
    src: DualStackAgent, dst: DualStackAgent, third: DualStackAgent
) -> None:
    """``src`` calls every method on ``dst`` and checks every answer."""
    page = common.PaginationRequest(page_size=100)

    check = await src.call(dst.node_id, "Health/Check", health_pb2.HealthCheckRequest())
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    listed = await src.call(dst.node_id, "Health/List", health_pb2.HealthListRequest())
    for transport in TRANSPORTS:
        status = listed.statuses[transport_health_name(transport)].status
        assert (status == health_pb2.HealthCheckResponse.SERVING) == (transport in dst.serves)

    text = f"ping {src.node_id} -> {dst.node_id}"
    assert (await src.call(dst.node_id, "Echo", common.EchoMessage(message=text))).message == text

    closest = _items(
        await src.call(
            dst.node_id,
            "NodesClosestLocalNodesGet",
            pb.ClosestLocalNodesRequest(target=node_id_to_proto(src.node_id), pagination=page),
        ),
        "node",
    )
    got = [NodeId(bytes(n.node_id.id)) for n in closest]
    assert got[0] == src.node_id and set(got) == {src.node_id, third.node_id}

    ours, theirs = await src.call_with(
        dst.node_id,
        "AgentService/NodesCrossSignClaim",
        lambda conn: request_cross_sign(
            conn.stub, src.identity, src.claims, dst.node_id, timeout=30
        ),
    )
    assert ours.claim.subject == dst.node_id and theirs.claim.issuer == dst.node_id
    assert dst.claims.get(src.node_id, ours.claim.sequence_number) == ours

    claims = _items(
        await src.call(dst.node_id, "NodesClaimsGet", pb.ClaimsGetRequest(pagination=page)),
        "claim",
    )
    assert theirs.claim.claim_id in {bytes(c.claim.claim_id) for c in claims}

    punch = await src.call(
        dst.node_id,
        "NodesHolePunchSignal",
        pb.HolePunchSignalRequest(target=node_id_to_proto(third.node_id), transports=["quic"]),
    )
    assert punch.requester_address.host == "127.0.0.1"

    note = new_notification(src.node_id, "general", b"hello")
    await src.call(
        dst.node_id,
        "NotificationsSend",
        signed_notification_to_proto(sign_notification(note, src.identity)),
    )
    inbox = await asyncio.to_thread(dst.notifications.all)
    assert note.notification_id in {e.notification.notification_id for e in inbox}

    vaults = _items(
        await src.call(dst.node_id, "VaultsScan", pb.VaultsScanRequest(pagination=page)),
        "vault",
    )
    assert vault_for(src) in {v.vault_name for v in vaults}

    chunks = await src.call(
        dst.node_id, "VaultsPull", pb.VaultsPullRequest(vault_name=vault_for(src))
    )
    expected = await asyncio.to_thread(dst.vaults.archive_bytes, vault_for(src))
    assert b"".join(c.chunk for c in chunks) == expected
