"""``quicshift demo``: a local fleet walked from gRPC to QUIC with live traffic.

Five dual-stack agents (:class:`~agent.dual.DualStackAgent`, temporary state, loopback)
start at ``legacy``. Traffic workers keep every agent calling every agent method on every
other agent while the fleet is walked through every stage, one node at a time (so every
mixed state of a real rollout appears), including a rollback of one node down to
``legacy`` and forward again. Each phase (one fleet state) gets a row: calls by transport,
failed calls, fallbacks (with reasons) and latency. The run fails if any call failed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.domains.notifications import new_notification, sign_notification
from agent.dual import (
    DualStackAgent,
    PeerConnection,
    last_call_transport,
    transport_health_name,
)
from agent.identity import NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import node_id_to_proto, request_cross_sign, signed_notification_to_proto
from migration.fleet import check_stage_change
from migration.rollout import TRANSPORTS, FallbackPolicy, RolloutStage
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2

__all__ = ["DEMO_METHODS", "DemoReport", "PhaseStats", "demo_walk", "run_demo"]

DEMO_METHODS: tuple[str, ...] = (
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
_SHORT = {
    RolloutStage.LEGACY: "L",
    RolloutStage.DUAL: "D",
    RolloutStage.QUIC_PREFERRED: "P",
    RolloutStage.QUIC_ONLY: "Q",
}


class DemoCheckError(Exception):
    """A call succeeded but returned something other than what it should."""


def demo_walk(count: int) -> list[tuple[int, RolloutStage]]:
    """The stage changes of the walk: (agent index, new stage), one at a time."""
    L, D, P, Q = RolloutStage.ordered()
    steps = [(i, D) for i in range(count)] + [(i, P) for i in range(count)]
    steps += [(0, D), (0, L), (0, D), (0, P)]  # one node rolled back to legacy and forward
    steps += [(i, Q) for i in range(count)]
    return steps


@dataclass
class PhaseStats:
    """One fleet state and the calls started in it."""

    label: str
    stages: list[str]
    calls: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TRANSPORTS})
    failed: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.calls.values()) + self.failed

    def latency(self) -> dict[str, float | None]:
        lat = sorted(self.latencies_ms)

        def pick(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, math.ceil(q * len(lat)) - 1)], 2) if lat else None

        return {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "stages": self.stages,
            "calls": self.total,
            "by_transport": dict(self.calls),
            "failed": self.failed,
            "fallbacks": sum(self.fallbacks.values()),
            "fallback_reasons": dict(self.fallbacks),
            "latency_ms": self.latency(),
        }


@dataclass
class DemoReport:
    agents: list[dict[str, Any]] = field(default_factory=list)
    phases: list[PhaseStats] = field(default_factory=list)
    methods: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(p.total for p in self.phases)

    @property
    def ok(self) -> bool:
        return self.calls > 0 and not self.failures

    def to_json(self) -> dict[str, Any]:
        by_transport = {t: sum(p.calls[t] for p in self.phases) for t in TRANSPORTS}
        return {
            "ok": self.ok,
            "agents": self.agents,
            "calls": self.calls,
            "by_transport": by_transport,
            "fallbacks": sum(sum(p.fallbacks.values()) for p in self.phases),
            "stages": [p.to_json() for p in self.phases],
            "methods": self.methods,
            "failures": self.failures,
        }

    def render(self, out: TextIO) -> None:
        out.write(f"fleet of {len(self.agents)} agents on loopback:\n")
        for index, agent in enumerate(self.agents):
            out.write(
                f"  agent-{index}  {agent['node_id'][:20]}…  grpc tcp/{agent['ports']['grpc']}"
                f"  quic udp/{agent['ports']['quic']}  {agent['key_type']}"
                f" chain={agent['chain_length']}\n"
            )
        out.write("\nstages: L legacy, D dual, P quic-preferred, Q quic-only\n\n")
        header = (
            f"{'#':>2} {'fleet':<7} {'change':<36} {'calls':>5} {'grpc':>5} {'quic':>5} "
            f"{'failed':>6} {'fallbk':>6} {'p50 ms':>7} {'p99 ms':>7}"
        )
        out.write(header + "\n" + "-" * len(header) + "\n")
        for index, phase in enumerate(self.phases):
            lat = phase.latency()

            def fmt(value: float | None) -> str:
                return "-" if value is None else f"{value:.1f}"

            out.write(
                f"{index:>2} {''.join(phase.stages):<7} {phase.label:<36} {phase.total:>5} "
                f"{phase.calls['grpc']:>5} {phase.calls['quic']:>5} {phase.failed:>6} "
                f"{sum(phase.fallbacks.values()):>6} {fmt(lat['p50']):>7} {fmt(lat['p99']):>7}\n"
            )
            for reason, count in sorted(phase.fallbacks.items()):
                out.write(f"{'':>11}fallback x{count}: {reason}\n")
        summary = self.to_json()
        out.write(
            f"\n{summary['calls']} calls: grpc {summary['by_transport']['grpc']}, quic "
            f"{summary['by_transport']['quic']}; {len(self.failures)} failed; "
            f"{summary['fallbacks']} fallbacks\n"
        )
        for failure in self.failures[:20]:
            out.write(
                f"FAILED [{failure['phase']}] {failure['method']} {failure['caller']} -> "
                f"{failure['callee']}: {failure['error']}\n"
            )
        out.write(("all calls succeeded" if self.ok else "some calls FAILED") + "\n")


def _vault(reader: DualStackAgent) -> str:
    return f"shared-with-{str(reader.node_id)[:12]}"


def _items(messages: list[Any], name: str) -> list[Any]:
    pages = [m.page for m in messages if m.WhichOneof("result") == "page"]
    if not pages or pages[-1].has_more:
        raise DemoCheckError("the stream ended without its last page message")
    return [getattr(m, name) for m in messages if m.WhichOneof("result") == name]


async def _exercise(
    method: str, src: DualStackAgent, dst: DualStackAgent, third: DualStackAgent
) -> None:
    """``src`` calls ``method`` on ``dst`` and checks the answer."""
    page = common.PaginationRequest(page_size=100)
    peer = dst.node_id
    if method == "Health/Check":
        reply = await src.call(peer, method, health_pb2.HealthCheckRequest())
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise DemoCheckError(f"health status {reply.status}")
    elif method == "Health/List":
        listed = await src.call(peer, method, health_pb2.HealthListRequest())
        if not any(transport_health_name(t) in listed.statuses for t in TRANSPORTS):
            raise DemoCheckError("the peer advertises no transports")
    elif method == "AgentService/Echo":
        text = f"hello {peer} from {src.node_id}"
        if (await src.call(peer, method, common.EchoMessage(message=text))).message != text:
            raise DemoCheckError("echo returned something else")
    elif method == "AgentService/NodesClosestLocalNodesGet":
        request = pb.ClosestLocalNodesRequest(target=node_id_to_proto(src.node_id), pagination=page)
        nodes = _items(await src.call(peer, method, request), "node")
        if not nodes or NodeId(bytes(nodes[0].node_id.id)) != src.node_id:
            raise DemoCheckError("the closest node to the caller is not the caller")
    elif method == "AgentService/NodesCrossSignClaim":

        async def exchange(conn: PeerConnection) -> Any:
            return await request_cross_sign(conn.stub, src.identity, src.claims, peer, timeout=30)

        ours, theirs = await src.call_with(peer, method, exchange)
        if ours.claim.subject != peer or theirs.claim.issuer != peer:
            raise DemoCheckError("cross-signed claims name the wrong nodes")
    elif method == "AgentService/NodesClaimsGet":
        # Claims pile up as the demo cross-signs (faster transports sign more), so page
        # through them all, as a real client does.
        cursor = b""
        while True:
            claims_request = pb.ClaimsGetRequest(
                pagination=common.PaginationRequest(page_size=100, cursor=cursor)
            )
            messages = await src.call(peer, method, claims_request)
            pages = [m.page for m in messages if m.WhichOneof("result") == "page"]
            if not pages:
                raise DemoCheckError("the stream ended without its page message")
            if not pages[-1].has_more:
                break
            if not pages[-1].next_cursor:
                raise DemoCheckError("a page with more to come carries no cursor")
            cursor = pages[-1].next_cursor
    elif method == "AgentService/NodesHolePunchSignal":
        punch = pb.HolePunchSignalRequest(
            target=node_id_to_proto(third.node_id), transports=list(TRANSPORTS)
        )
        reply = await src.call(peer, method, punch)
        if reply.requester_address.host != src.host:
            raise DemoCheckError(f"requester seen at {reply.requester_address.host}")
    elif method == "AgentService/NotificationsSend":
        note = new_notification(src.node_id, "general", b"hi from the demo")
        await src.call(
            peer, method, signed_notification_to_proto(sign_notification(note, src.identity))
        )
    elif method == "AgentService/VaultsScan":
        vaults = _items(
            await src.call(peer, method, pb.VaultsScanRequest(pagination=page)), "vault"
        )
        if _vault(src) not in {v.vault_name for v in vaults}:
            raise DemoCheckError("the shared vault is not listed")
    elif method == "AgentService/VaultsPull":
        chunks = await src.call(peer, method, pb.VaultsPullRequest(vault_name=_vault(src)))
        expected = await asyncio.to_thread(dst.vaults.archive_bytes, _vault(src))
        if b"".join(c.chunk for c in chunks) != expected:
            raise DemoCheckError("the pulled archive differs")
    else:  # pragma: no cover - DEMO_METHODS is closed
        raise DemoCheckError(f"unknown demo method {method}")


class _Run:
    def __init__(
        self, agents: Sequence[DualStackAgent], report: DemoReport, timeout: float
    ) -> None:
        self.agents = agents
        self.report = report
        self.timeout = timeout
        self.names = {a.node_id: f"agent-{i}" for i, a in enumerate(agents)}
        self.pairs = list(itertools.permutations(range(len(agents)), 2))
        self.counter = itertools.count()
        self.done = 0
        self.phase: PhaseStats | None = None
        self.stopping = asyncio.Event()
        self.progress: Any = None

    def transport_calls(self) -> dict[str, int]:
        totals = {t: 0 for t in TRANSPORTS}
        for agent in self.agents:
            for transport, methods in agent.metrics.snapshot()["transports"].items():
                totals[transport] = totals.get(transport, 0) + sum(
                    m["calls"] for m in methods.values()
                )
        return totals

    async def worker(self) -> None:
        while not self.stopping.is_set():
            n = next(self.counter)
            i, j = self.pairs[n % len(self.pairs)]
            method = DEMO_METHODS[(n // len(self.pairs) + i) % len(DEMO_METHODS)]
            src, dst = self.agents[i], self.agents[j]
            third = next(a for k, a in enumerate(self.agents) if k not in (i, j))
            phase = self.phase
            assert phase is not None
            started = time.perf_counter()
            stats = self.report.methods.setdefault(method, {"calls": 0, "failed": 0})
            stats["calls"] += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await _exercise(method, src, dst, third)
            except Exception as exc:
                phase.failed += 1
                stats["failed"] += 1
                self.report.failures.append(
                    {
                        "phase": phase.label,
                        "method": method,
                        "caller": self.names[src.node_id],
                        "callee": self.names[dst.node_id],
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
            else:
                phase.latencies_ms.append((time.perf_counter() - started) * 1000)
                transport = last_call_transport() or TRANSPORTS[0]
                phase.calls[transport] = phase.calls.get(transport, 0) + 1
            self.done += 1
            if self.progress is not None:
                self.progress()

    async def settle(self, calls: int) -> None:
        target = self.done + calls
        while self.done < target and not self.stopping.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def run_demo(
    agent_count: int = 5,
    *,
    calls_per_stage: int = 40,
    workers: int = 6,
    timeout: float = 30.0,  # noqa: ASYNC109 - per-call timeout
    progress: TextIO | None = None,
    state_root: Path | None = None,
) -> DemoReport:
    """Run the staged-rollout demo; the agents are stopped and their state removed."""
    if agent_count < 3:
        raise ValueError("the demo needs at least 3 agents (hole punching needs a third)")
    report = DemoReport()
    policy = FallbackPolicy(budget=10.0, attempt_timeout=2.0)
    with tempfile.TemporaryDirectory(prefix="quicshift-demo-", dir=state_root) as root:
        agents: list[DualStackAgent] = []
        tasks: list[asyncio.Task[None]] = []
        run: _Run | None = None
        try:
            for index in range(agent_count):
                identity = NodeIdentity.generate("ed25519" if index % 2 == 0 else "p256")
                if index == agent_count - 1:
                    identity = identity.rotate()  # one agent shows a rotated key chain
                agent = DualStackAgent(
                    Path(root) / f"agent-{index}",
                    stage=RolloutStage.LEGACY,
                    identity=identity,
                    fallback=policy,
                    peer_info_ttl=0.5,
                    drain_notice=1.0,  # peers learn a transport is going before it goes
                    drain_grace=10.0,
                )
                agents.append(agent)
            await asyncio.gather(*(a.start() for a in agents))
            for agent in agents:
                report.agents.append(
                    {
                        "node_id": str(agent.node_id),
                        "ports": agent.ports,
                        "key_type": agent.identity.key_type,
                        "chain_length": len(agent.identity.chain_der()),
                    }
                )
            await _seed(agents)
            run = _Run(agents, report, timeout)
            names = [f"agent-{i}" for i in range(agent_count)]

            def new_phase(label: str) -> None:
                phase = PhaseStats(label, [_SHORT[a.stage] for a in agents])
                report.phases.append(phase)
                assert run is not None
                run.phase = phase

            if progress is not None:
                total = (len(demo_walk(agent_count)) + 1) * calls_per_stage

                def show() -> None:
                    assert run is not None and run.phase is not None
                    progress.write(
                        f"\r[{len(report.phases):>2}/{len(demo_walk(agent_count)) + 1}] "
                        f"{''.join(run.phase.stages)} {run.phase.label:<36} "
                        f"{min(run.done, total):>5}/{total} calls, "
                        f"{len(report.failures)} failed"
                    )
                    progress.flush()

                run.progress = show
            new_phase("start: every agent at legacy")
            tasks = [asyncio.create_task(run.worker()) for _ in range(workers)]
            await run.settle(calls_per_stage)
            for index, stage in demo_walk(agent_count):
                agent = agents[index]
                previous = agent.stage
                check_stage_change(
                    {n: a.stage for n, a in zip(names, agents, strict=True)}, names[index], stage
                )
                fallbacks_before = _fallbacks(agents)
                new_phase(f"{names[index]}: {previous.value} -> {stage.value}")
                await agent.set_stage(stage, "quicshift demo")  # while the traffic runs
                report.phases[-1].stages = [_SHORT[a.stage] for a in agents]
                await run.settle(calls_per_stage)
                phase = report.phases[-1]  # the change and the calls after it
                for reason, count in _diff(_fallbacks(agents), fallbacks_before).items():
                    phase.fallbacks[reason] = phase.fallbacks.get(reason, 0) + count
            fallbacks_before = _fallbacks(agents)
            run.stopping.set()
            await asyncio.gather(*tasks)
            for reason, count in _diff(_fallbacks(agents), fallbacks_before).items():
                last = report.phases[-1]
                last.fallbacks[reason] = last.fallbacks.get(reason, 0) + count
        finally:
            if run is not None:
                run.stopping.set()
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
            if progress is not None:
                progress.write("\n")
    return report


def _fallbacks(agents: Sequence[DualStackAgent]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for agent in agents:
        for entry in agent.metrics.snapshot()["fallbacks"]:
            key = f"{entry['from_transport']}->{entry['to_transport']} {entry['reason']}"
            totals[key] = totals.get(key, 0) + entry["count"]
    return totals


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


async def _seed(agents: Sequence[DualStackAgent]) -> None:
    """Every agent knows every other and shares one vault with each."""
    for agent, other in itertools.permutations(agents, 2):
        agent.add_node(other.node_id, other.node_addresses, serves=other.serves)
        name = _vault(other)
        await asyncio.to_thread(agent.vaults.create_vault, name)
        await asyncio.to_thread(
            agent.vaults.write_file, name, "README.md", f"from {agent.node_id}\n".encode()
        )
        await asyncio.to_thread(agent.vaults.write_file, name, "data/blob.bin", os.urandom(20_000))
        await asyncio.to_thread(agent.vaults.grant, name, other.node_id)
