"""Dual-stack agents at ``quic-preferred``: a QUIC call that races the callee closing its
idle connection is retried over QUIC, so it needs no fallback to gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.dual import DualStackAgent
from migration.rollout import RolloutStage
from protos.agent.v1 import common_pb2 as common

from .fleet import calls_by_transport, fallback_count, introduce, make_agents

pytestmark = pytest.mark.timeout(120)


async def settle_quiet(*agents: DualStackAgent) -> bool:
    for _ in range(200):
        conns = [c for a in agents for c in a.quic.connection_manager.connections]
        if conns and all(c.active_streams == 0 for c in conns):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_call_racing_an_idle_close_does_not_fall_back(tmp_path: Path) -> None:
    a, b = make_agents(tmp_path, 2, stage=RolloutStage.QUIC_PREFERRED)
    try:
        for agent in (a, b):
            await agent.start()
        introduce([a, b])
        warm = await a.call(b.node_id, "AgentService/Echo", common.EchoMessage(message="warm"))
        assert warm.message == "warm"
        a_side = a.quic.connection_manager.get_existing(b.node_id)
        b_side = b.quic.connection_manager.get_existing(a.node_id)
        assert a_side is not None and b_side is not None
        assert await settle_quiet(a, b)
        manager = b.quic.connection_manager
        b_side.last_used -= manager.config.idle_ttl
        manager._check_expiry(a.node_id)  # b's idle timer fires as a calls
        reply = await a.call(b.node_id, "AgentService/Echo", common.EchoMessage(message="race"))
        assert reply.message == "race"
        assert manager.expired == 1 and b_side.closed
        assert fallback_count(a) == 0
        assert calls_by_transport(a)["quic"] == 2 and calls_by_transport(a)["grpc"] == 0
        assert a.metrics.snapshot()["fallbacks"] == []
    finally:
        for agent in (a, b):
            await agent.stop()
