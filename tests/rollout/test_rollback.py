"""Stage changes of running agents with traffic: walking forward and rolling back every
step loses no call; calls in flight on a stack being drained finish; a quic-preferred
agent falls back to gRPC for a legacy-only peer and records it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.domains.nodes import NodeAddress
from agent.dual import DualStackAgent, PeerConnection
from agent.legacy import LegacyAgent
from migration.fleet import check_stage_change
from migration.rollout import GRPC, QUIC, RolloutStage
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2

from .fleet import fallback_count, introduce, make_agents, seed, vault_for

pytestmark = pytest.mark.timeout(180)

L, D, QP, QO = RolloutStage.ordered()


class Traffic:
    """Workers calling between every pair until stopped; every outcome is kept."""

    def __init__(self, agents: list[DualStackAgent], workers: int = 4) -> None:
        self.agents = agents
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._work(w)) for w in range(workers)]

    async def _work(self, worker: int) -> None:
        pairs = list(itertools.permutations(self.agents, 2))
        for n in itertools.count(worker):
            if self._stop.is_set():
                return
            src, dst = pairs[n % len(pairs)]
            try:
                if n % 3 == 0:
                    chunks = await src.call(
                        dst.node_id, "VaultsPull", pb.VaultsPullRequest(vault_name=vault_for(src))
                    )
                    assert chunks
                elif n % 3 == 1:
                    reply = await src.call(dst.node_id, "Echo", common.EchoMessage(message="x"))
                    assert reply.message == "x"
                else:
                    await src.call(dst.node_id, "Health/Check", health_pb2.HealthCheckRequest())
                self.ok += 1
            except Exception as exc:
                self.failures.append(f"{src.stage}->{dst.stage}: {type(exc).__name__}: {exc}")

    async def calls(self, count: int) -> None:
        """Wait (by outcomes, not by time) until ``count`` more calls have finished."""
        target = self.ok + len(self.failures) + count
        while self.ok + len(self.failures) < target:  # noqa: ASYNC110 - counts outcomes
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@contextlib.asynccontextmanager
async def running(agents: list[DualStackAgent]) -> AsyncIterator[list[DualStackAgent]]:
    try:
        for agent in agents:
            await agent.start()
        await seed(agents)
        yield agents
    finally:
        for agent in agents:
            await agent.stop()


async def test_walk_forward_and_roll_back_every_step_with_traffic(tmp_path: Path) -> None:
    agents = make_agents(tmp_path, 3, stage=L, peer_info_ttl=0.2, drain_notice=0.5)
    async with running(agents):
        traffic = Traffic(agents)
        names = {str(i): a for i, a in enumerate(agents)}
        steps = 0
        try:
            await traffic.calls(20)
            for target in (D, QP, QO):  # one node at a time, every step legal
                for name, agent in names.items():
                    check_stage_change({n: a.stage for n, a in names.items()}, name, target)
                    await agent.advance(f"walk forward {name}")
                    assert agent.stage is target
                    await traffic.calls(15)
                    steps += 1
            for target in (QP, D, L):  # and back, one step each
                for name, agent in names.items():
                    check_stage_change({n: a.stage for n, a in names.items()}, name, target)
                    await agent.rollback(f"roll back {name}")
                    assert agent.stage is target
                    await traffic.calls(15)
                    steps += 1
        finally:
            await traffic.stop()
        assert steps == 18
        assert traffic.failures == []
        assert traffic.ok >= 20 + 18 * 15
        for agent in agents:
            assert agent.running_transports == (GRPC,)
            assert [c.stage for c in agent.rollout.history[-6:]] == [D, QP, QO, QP, D, L]
            assert agent.in_flight() == 0


async def _gated_pull(
    src: DualStackAgent,
    dst: DualStackAgent,
    started: list[str],
    gate: asyncio.Event,
    transport: str | None,
) -> bytes:
    """A VaultsPull that reads its first chunk, then holds the call open until ``gate``."""

    async def operation(conn: PeerConnection) -> bytes:
        stream = conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name=vault_for(src)))
        iterator: Any = stream.__aiter__()
        first = await iterator.__anext__()
        started.append(conn.transport)
        await gate.wait()
        rest = [m.chunk async for m in iterator]
        return b"".join([first.chunk, *rest])

    return await src.call_with(
        dst.node_id, "AgentService/VaultsPull", operation, transport=transport
    )


# (caller stage, callee stage, who changes stage to what, transport of the held calls,
#  the stack that is drained)
SCENARIOS = {
    "callee-drains-quic": (QP, D, ("callee", L), None, QUIC),
    "callee-drains-grpc": (QP, QP, ("callee", QO), GRPC, GRPC),
    "caller-drains-grpc": (QP, QP, ("caller", QO), GRPC, GRPC),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_stage_change_under_load_fails_no_call(tmp_path: Path, scenario: str) -> None:
    caller_stage, callee_stage, (who, target), held_on, drained = SCENARIOS[scenario]
    agents = make_agents(tmp_path, 2, stage=L, drain_grace=60.0, peer_info_ttl=600.0)
    async with running(agents):
        caller, callee = agents
        await callee.set_stage(callee_stage)
        await caller.set_stage(caller_stage)
        introduce(agents)  # each knows the other's current transports
        await asyncio.to_thread(
            caller.vaults.write_file, vault_for(callee), "big", b"x" * 4_000_000
        )
        await asyncio.to_thread(
            callee.vaults.write_file, vault_for(caller), "big", b"y" * 4_000_000
        )
        gate = asyncio.Event()
        started: list[str] = []
        held = [
            asyncio.create_task(_gated_pull(caller, callee, started, gate, held_on))
            for _ in range(8)
        ]
        while len(started) < len(held):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        in_flight_on = started[0]
        assert set(started) == {in_flight_on} and caller.in_flight(in_flight_on) == len(held)

        mover = caller if who == "caller" else callee
        change = asyncio.create_task(mover.set_stage(target, "under load"))
        # The stage switched; the old stack is draining.
        while drained in mover.serves:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        assert not change.done() and drained in mover.running_transports

        # New calls while the stack drains: they go elsewhere (or fall back) and succeed.
        extra = [
            await caller.call(callee.node_id, "Echo", common.EchoMessage(message=str(i)))
            for i in range(5)
        ]
        assert [e.message for e in extra] == [str(i) for i in range(5)]

        gate.set()
        pulled = await asyncio.gather(*held)
        await change
        expected = await asyncio.to_thread(callee.vaults.archive_bytes, vault_for(caller))
        assert all(data == expected for data in pulled)
        assert drained not in mover.running_transports
        assert mover.stage is target
        assert caller.in_flight() == 0
        errors = {
            (t, m): stats["errors"]
            for t, methods in caller.metrics.snapshot()["transports"].items()
            for m, stats in methods.items()
            if m == "AgentService/VaultsPull" and stats["errors"]
        }
        assert errors == {}  # none of the held calls failed on any transport
        if scenario == "callee-drains-quic":
            # The caller still believed the callee served quic: refused, fell back, and
            # (the fallback makes it ask again) learnt the callee no longer serves quic.
            assert 1 <= fallback_count(caller) <= len(extra)
            reasons = {f["reason"] for f in caller.metrics.snapshot()["fallbacks"]}
            assert reasons == {"status UNAVAILABLE"}
            await caller.refresh_peer(callee.node_id)
            assert caller.plan(callee.node_id).transports == (GRPC,)


async def test_quic_preferred_falls_back_to_a_legacy_only_peer(tmp_path: Path) -> None:
    (caller,) = make_agents(tmp_path, 1, stage=QP)
    async with running([caller]):
        async with LegacyAgent(tmp_path / "legacy") as peer:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                closed_udp = probe.getsockname()[1]
            # Configured as if it served QUIC too (e.g. the operator listed both ports):
            # the QUIC attempt fails, the call falls back to gRPC within the budget.
            caller.add_node(
                peer.node_id,
                [
                    NodeAddress("127.0.0.1", peer.port, (GRPC,)),
                    NodeAddress("127.0.0.1", closed_udp, (QUIC,)),
                ],
            )
            assert caller.plan(peer.node_id).transports == (QUIC, GRPC)
            reply = await caller.call(peer.node_id, "Echo", common.EchoMessage(message="hi"))
            assert reply.message == "hi"
            snapshot = caller.metrics.snapshot()
            assert snapshot["transports"][GRPC]["AgentService/Echo"]["calls"] == 1
            assert snapshot["transports"][GRPC]["AgentService/Echo"]["errors"] == {}
            assert snapshot["transports"][QUIC]["AgentService/Echo"]["errors"]
            (fallback,) = snapshot["fallbacks"]
            assert (fallback["from_transport"], fallback["to_transport"]) == (QUIC, GRPC)
            assert fallback["method"] == "AgentService/Echo"
            assert fallback["reason"] in {"timeout", "connect failed"}
            assert fallback["last_reason"]
            text = caller.metrics.render_prometheus()
            assert 'quicshift_fallbacks_total{from_transport="quic",to_transport="grpc"' in text

            # It learns the peer serves gRPC only, and stops trying QUIC.
            await caller.refresh_peer(peer.node_id)
            assert caller.peer(peer.node_id).serves == (GRPC,)
            assert caller.plan(peer.node_id).transports == (GRPC,)
            await caller.call(peer.node_id, "Echo", common.EchoMessage(message="again"))
            assert fallback_count(caller) == 1
