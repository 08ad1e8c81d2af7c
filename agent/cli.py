"""The ``quicshift`` command line.

``quicshift demo`` starts a local fleet of legacy agents on loopback (temporary state),
makes every agent call every agent service method on every other agent, and prints a
per-method table of calls, errors and latency (``--json`` for machine output). It exits
0 when every call succeeded and returned what it should, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from agent.legacy import LegacyAgent
    from legacy_grpc import NodeConnection

__all__ = ["DemoReport", "MethodStats", "build_parser", "main", "run_demo"]

DEMO_METHODS: tuple[str, ...] = (
    "Health/Check",
    "AgentService/Echo",
    "AgentService/NodesClosestLocalNodesGet",
    "AgentService/NodesCrossSignClaim",
    "AgentService/NodesClaimsGet",
    "AgentService/NodesHolePunchSignal",
    "AgentService/NotificationsSend",
    "AgentService/VaultsScan",
    "AgentService/VaultsPull",
)


class DemoCheckError(Exception):
    """A call succeeded but returned something other than what the demo expected."""


@dataclass
class MethodStats:
    """Outcomes of one method across the fleet."""

    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "latency_ms": {
                "min": round(lat[0], 3) if lat else None,
                "median": round(statistics.median(lat), 3) if lat else None,
                "max": round(lat[-1], 3) if lat else None,
            },
        }


@dataclass
class DemoReport:
    agents: list[dict[str, Any]] = field(default_factory=list)
    methods: dict[str, MethodStats] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        total = sum(s.calls for s in self.methods.values())
        return total > 0 and not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "transport": "legacy-grpc",
            "agents": self.agents,
            "methods": {name: stats.summary() for name, stats in self.methods.items()},
            "failures": self.failures,
        }

    def render_table(self, out: TextIO) -> None:
        header = (
            f"{'method':<40} {'calls':>5} {'errors':>6} {'min ms':>8} {'median':>8} {'max ms':>8}"
        )
        out.write(header + "\n" + "-" * len(header) + "\n")
        for name, stats in self.methods.items():
            lat = stats.summary()["latency_ms"]

            def fmt(v: float | None) -> str:
                return "-" if v is None else f"{v:.2f}"

            out.write(
                f"{name:<40} {stats.calls:>5} {stats.errors:>6} "
                f"{fmt(lat['min']):>8} {fmt(lat['median']):>8} {fmt(lat['max']):>8}\n"
            )
        for failure in self.failures:
            out.write(
                f"FAILED {failure['method']} {failure['caller']} -> {failure['callee']}: "
                f"{failure['error']}\n"
            )
        out.write(("all calls succeeded" if self.ok else "some calls FAILED") + "\n")


# -- the demo ------------------------------------------------------------------------------


async def _collect_pages(call: Callable[[bytes], Any], item_field: str) -> list[Any]:
    """Walk a paginated stream to its end: every item of every page, in order."""
    items: list[Any] = []
    cursor = b""
    for _ in range(10_000):
        page = None
        async for message in call(cursor):
            kind = message.WhichOneof("result")
            if kind == item_field:
                items.append(getattr(message, item_field))
            elif kind == "page":
                page = message.page
        if page is None:
            raise DemoCheckError("the stream ended without its page message (cut short)")
        if not page.has_more:
            return items
        if not page.next_cursor:
            raise DemoCheckError("has_more is set but next_cursor is empty")
        cursor = page.next_cursor
    raise DemoCheckError("pagination did not terminate")


class _DemoRun:
    def __init__(self, agents: Sequence[LegacyAgent], report: DemoReport, timeout: float) -> None:
        self.agents = agents
        self.report = report
        self.timeout = timeout
        for name in DEMO_METHODS:
            report.methods[name] = MethodStats()

    async def timed(
        self, method: str, caller: LegacyAgent, callee: LegacyAgent, run: Awaitable[None]
    ) -> None:
        stats = self.report.methods[method]
        stats.calls += 1
        start = time.perf_counter()
        try:
            await asyncio.wait_for(run, self.timeout)
        except Exception as exc:
            stats.errors += 1
            self.report.failures.append(
                {
                    "method": method,
                    "caller": str(caller.node_id),
                    "callee": str(callee.node_id),
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        else:
            stats.latencies_ms.append((time.perf_counter() - start) * 1000)

    async def pair(self, src: LegacyAgent, dst: LegacyAgent) -> None:
        from agent.domains.notifications import new_notification, sign_notification
        from agent.servicer import (
            node_id_to_proto,
            request_cross_sign,
            signed_notification_to_proto,
        )
        from protos.agent.v1 import agent_service_pb2 as pb
        from protos.agent.v1 import common_pb2 as common
        from protos.grpc.health.v1 import health_pb2

        try:
            conn: NodeConnection = await src.connect(dst.node_id, dst.host, dst.port)
        except Exception as exc:
            for method in DEMO_METHODS:
                await self.timed(method, src, dst, _fail(exc))
            return
        stub = conn.stub
        others = [a for a in self.agents if a is not src and a is not dst]

        async def health() -> None:
            reply = await conn.health.Check(health_pb2.HealthCheckRequest(service=""))
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                raise DemoCheckError(f"health status {reply.status}")

        async def echo() -> None:
            text = f"hello {dst.node_id} from {src.node_id}"
            reply = await stub.Echo(common.EchoMessage(message=text))
            if reply.message != text:
                raise DemoCheckError(f"echo returned {reply.message!r}")

        async def closest() -> None:
            def call(cursor: bytes) -> Any:
                return stub.NodesClosestLocalNodesGet(
                    pb.ClosestLocalNodesRequest(
                        target=node_id_to_proto(src.node_id),
                        pagination=common.PaginationRequest(page_size=1, cursor=cursor),
                    )
                )

            nodes = await _collect_pages(call, "node")
            got = [bytes(n.node_id.id) for n in nodes]
            expected = {a.node_id.raw for a in self.agents if a is not dst}
            if len(got) != len(set(got)) or set(got) != expected:
                raise DemoCheckError(f"closest nodes: {len(got)} items, not the fleet")
            if got[0] != src.node_id.raw:
                raise DemoCheckError("the closest node to the caller is not the caller")

        async def cross_sign() -> None:
            ours, theirs = await request_cross_sign(
                stub, src.identity, src.claims, dst.node_id, timeout=self.timeout
            )
            if ours.claim.subject != dst.node_id or theirs.claim.issuer != dst.node_id:
                raise DemoCheckError("cross-signed claims name the wrong nodes")

        async def claims() -> None:
            def call(cursor: bytes) -> Any:
                return stub.NodesClaimsGet(
                    pb.ClaimsGetRequest(
                        pagination=common.PaginationRequest(page_size=2, cursor=cursor)
                    )
                )

            items = await _collect_pages(call, "claim")
            ids = [bytes(c.claim.claim_id) for c in items]
            if len(ids) != len(set(ids)):
                raise DemoCheckError("a claim came back twice across pages")
            issued = [c for c in items if bytes(c.claim.subject.id) == src.node_id.raw]
            if not issued:
                raise DemoCheckError("the callee has no claim about the caller")

        async def hole_punch() -> None:
            if not others:
                raise DemoCheckError("hole punching needs a third agent")
            reply = await stub.NodesHolePunchSignal(
                pb.HolePunchSignalRequest(
                    target=node_id_to_proto(others[0].node_id), transports=["grpc"]
                )
            )
            if reply.requester_address.host != src.host:
                raise DemoCheckError(f"requester seen at {reply.requester_address.host}")

        async def notify() -> None:
            notification = new_notification(src.node_id, "general", b"hi from the demo")
            signed = sign_notification(notification, src.identity)
            await stub.NotificationsSend(signed_notification_to_proto(signed))
            inbox = await asyncio.to_thread(dst.notifications.all)
            if not any(
                e.notification.notification_id == notification.notification_id for e in inbox
            ):
                raise DemoCheckError("the notification is not in the callee's inbox")

        async def scan() -> None:
            def call(cursor: bytes) -> Any:
                return stub.VaultsScan(
                    pb.VaultsScanRequest(
                        pagination=common.PaginationRequest(page_size=1, cursor=cursor)
                    )
                )

            vaults = await _collect_pages(call, "vault")
            names = [v.vault_name for v in vaults]
            if len(names) != len(set(names)) or _vault_name(dst, src) not in names:
                raise DemoCheckError(f"scan returned {names}")

        async def pull() -> None:
            name = _vault_name(dst, src)
            data = b"".join(
                [m.chunk async for m in stub.VaultsPull(pb.VaultsPullRequest(vault_name=name))]
            )
            expected = await asyncio.to_thread(dst.vaults.archive_bytes, name)
            if data != expected:
                raise DemoCheckError(f"pulled {len(data)} bytes, expected {len(expected)}")

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("Health/Check", health),
            ("AgentService/Echo", echo),
            ("AgentService/NodesClosestLocalNodesGet", closest),
            ("AgentService/NodesCrossSignClaim", cross_sign),
            ("AgentService/NodesClaimsGet", claims),
            ("AgentService/NodesHolePunchSignal", hole_punch),
            ("AgentService/NotificationsSend", notify),
            ("AgentService/VaultsScan", scan),
            ("AgentService/VaultsPull", pull),
        ]
        for method, step in steps:
            await self.timed(method, src, dst, step())


async def _fail(exc: Exception) -> None:
    raise exc


def _vault_name(owner: LegacyAgent, reader: LegacyAgent) -> str:
    return f"shared-with-{str(reader.node_id)[:12]}"


async def _seed(agents: Sequence[LegacyAgent]) -> None:
    """Every agent knows every other, and shares one vault with each."""
    for agent in agents:
        for other in agents:
            if other is agent:
                continue
            agent.add_node(other.node_id, other.host, other.port)
            name = _vault_name(agent, other)
            await asyncio.to_thread(agent.vaults.create_vault, name)
            await asyncio.to_thread(
                agent.vaults.write_file, name, "README.md", f"from {agent.node_id}\n".encode()
            )
            await asyncio.to_thread(
                agent.vaults.write_file, name, "data/blob.bin", os.urandom(200_000)
            )
            await asyncio.to_thread(agent.vaults.grant, name, other.node_id)


async def run_demo(
    agent_count: int = 3,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - per-call timeout, not this coroutine's
    state_root: Path | None = None,
) -> DemoReport:
    """Run the fleet demo; the agents are stopped and their state removed afterwards."""
    from agent.identity import NodeIdentity
    from agent.legacy import LegacyAgent

    if agent_count < 3:
        raise ValueError("the demo needs at least 3 agents (hole punching needs a third)")
    report = DemoReport()
    with tempfile.TemporaryDirectory(prefix="quicshift-demo-", dir=state_root) as root:
        agents: list[LegacyAgent] = []
        try:
            for index in range(agent_count):
                identity = NodeIdentity.generate("ed25519" if index % 2 == 0 else "p256")
                if index == agent_count - 1:
                    identity = identity.rotate()  # one agent shows a rotated key chain
                agent = LegacyAgent(Path(root) / f"agent-{index}", identity)
                agents.append(agent)
                await agent.start()
            for agent in agents:
                report.agents.append(
                    {
                        "node_id": str(agent.node_id),
                        "address": f"{agent.host}:{agent.port}",
                        "key_type": agent.identity.key_type,
                        "chain_length": len(agent.identity.chain_der()),
                    }
                )
            await _seed(agents)
            run = _DemoRun(agents, report, timeout)
            for src in agents:  # one pair at a time, so latencies are not contention
                for dst in agents:
                    if src is not dst:
                        await run.pair(src, dst)
        finally:
            await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
    return report


# -- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicshift",
        description="Move a gRPC peer-to-peer agent service onto RPC over QUIC, in stages.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run a local fleet of legacy agents calling each other",
        description=(
            "Start a local fleet of agents on the legacy stack (gRPC behind the TLS proxy "
            "pair) on 127.0.0.1 with temporary state, make every agent call every method "
            "of every other agent, and report per-method calls, errors and latency. "
            "Exits non-zero if any call failed."
        ),
    )
    demo.add_argument("--agents", type=int, default=3, help="fleet size, at least 3 (default 3)")
    demo.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    demo.add_argument(
        "--timeout", type=float, default=30.0, help="per-call timeout in seconds (default 30)"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="log what the agents and proxies do"
    )
    return parser


def _demo_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.agents < 3:
        err.write("quicshift demo: --agents must be at least 3\n")
        return 2
    if args.timeout <= 0:
        err.write("quicshift demo: --timeout must be positive\n")
        return 2
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=err,
    )
    try:
        import grpc  # noqa: F401 - the legacy stack needs grpcio (the "legacy" extra)
    except ImportError:
        err.write(
            "quicshift demo runs the legacy gRPC stack, which needs grpcio: "
            "pip install 'quicshift[legacy]'\n"
        )
        return 2
    report = asyncio.run(run_demo(args.agents, timeout=args.timeout))
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(f"legacy fleet of {len(report.agents)} agents on loopback:\n")
        for agent in report.agents:
            out.write(
                f"  {agent['node_id']}  {agent['address']}  {agent['key_type']}"
                f"  chain={agent['chain_length']}\n"
            )
        out.write("\n")
        report.render_table(out)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quicshift`` console script; returns the exit status."""
    # grpc core logs handshake failures on stderr; keep the demo's output readable.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo_command(args, sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
