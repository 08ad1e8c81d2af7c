"""The ``quicshift`` command line.

``quicshift demo`` starts a local fleet of legacy agents on loopback (temporary state),
makes every agent call every agent service method on every other agent, and prints a
per-method table of calls, errors and latency (``--json`` for machine output). It exits
0 when every call succeeded and returned what it should, 1 otherwise.

``quicshift scan PATH`` lists what a codebase uses from grpcio and prints a migration plan
(:mod:`migration.scan`); it exits 0 when the adapter covers every use, 1 when something
needs a code change.

``quicshift keys init|rotate|show --state-dir DIR`` makes, rotates and shows the node
identity kept in ``DIR/identity`` (where the agents load it from).

Exit codes, for every command: 0 success, 1 the operation failed or found problems,
2 usage error.
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
    from datetime import datetime

    from cryptography import x509

    from agent.identity import NodeIdentity
    from agent.legacy import LegacyAgent
    from legacy_grpc import NodeConnection

__all__ = ["DemoReport", "MethodStats", "build_parser", "main", "run_demo"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATE_DIR_ENV = "QUICSHIFT_STATE_DIR"

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
    _add_scan_parser(sub)
    _add_keys_parser(sub)
    from agent.operator_cli import add_operator_parsers

    add_operator_parsers(sub)
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


# -- quicshift scan ------------------------------------------------------------------------


def _add_scan_parser(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="find what a codebase uses from grpcio and print a migration plan",
        description=(
            "Parse every *.py file under PATH and list its grpcio uses (imports, channel and "
            "server construction, credentials, interceptors, proxy and channel options, "
            "servicer context methods, errors, status codes, experimental APIs, compression, "
            "grpc_* packages). Each use gets a verdict: covered (the adapter "
            "migration.quic_grpc handles it once the import changes), changed (works over "
            "QUIC but behaves differently) or unsupported (needs a code change). Generated "
            "*_pb2.py / *_pb2_grpc.py files are skipped unless --include-generated. Exits 0 "
            "when nothing is unsupported, 1 when something is (or a file could not be "
            "parsed), 2 on usage errors."
        ),
    )
    scan.add_argument("path", metavar="PATH", help="a directory or a .py file")
    scan.add_argument("--json", action="store_true", help="print a JSON report")
    scan.add_argument(
        "--include-generated",
        action="store_true",
        help="also scan generated *_pb2.py / *_pb2_grpc.py modules",
    )


def _scan_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from migration.scan import ScanError, render_plan, scan_path

    try:
        report = scan_path(args.path, include_generated=args.include_generated)
    except ScanError as exc:
        err.write(f"quicshift scan: {exc}\n")
        return EXIT_USAGE
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render_plan(report, out)
    return report.exit_code


# -- quicshift keys ------------------------------------------------------------------------


def _add_keys_parser(sub: Any) -> None:
    from agent.identity import KEY_TYPES

    keys = sub.add_parser(
        "keys",
        help="make, rotate and show the node identity in a state directory",
        description=(
            "Manage the node identity an agent loads from STATE_DIR/identity: its private "
            "key and certificate chain (leaf first, root last). The node id is derived from "
            "the root key, so rotation keeps it."
        ),
    )
    keys.set_defaults(keys_parser=keys)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state-dir",
            metavar="DIR",
            default=os.environ.get(STATE_DIR_ENV),
            help=f"the agent's state directory (default: ${STATE_DIR_ENV})",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    init = actions.add_parser(
        "init",
        help="make a new node identity",
        description=(
            "Generate a new node key and self-signed root certificate and save them in "
            "STATE_DIR/identity. Refuses (exit 1) when an identity is already there, "
            "unless --force (which gives the node a NEW node id)."
        ),
    )
    common(init)
    init.add_argument(
        "--key-type", choices=KEY_TYPES, default="ed25519", help="key type (default ed25519)"
    )
    init.add_argument(
        "--force", action="store_true", help="replace an existing identity (new node id)"
    )
    rotate = actions.add_parser(
        "rotate",
        help="rotate the node key (new certificate chained to the old)",
        description=(
            "Make a new key and a certificate for it signed by the current key, and save "
            "the chain [new, ..., root]: the node id stays the same. Restart (or reload) "
            "the agent to present the new chain."
        ),
    )
    common(rotate)
    rotate.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default=None,
        help="key type of the new key (default: the current key's)",
    )
    show = actions.add_parser(
        "show",
        help="show the node id and certificate chain",
        description=(
            "Show the node id and each certificate of the chain: subject, issuer, "
            "validity, key type and SHA-256 fingerprint, and whether the chain verifies."
        ),
    )
    common(show)


class _KeysError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _identity_dir(args: argparse.Namespace) -> Path:
    from agent.wiring import IDENTITY_DIR_NAME

    if not args.state_dir:
        raise _KeysError(f"--state-dir is required (or set ${STATE_DIR_ENV})", EXIT_USAGE)
    state_dir = Path(args.state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise _KeysError(f"{state_dir} is not a directory", EXIT_USAGE)
    return state_dir / IDENTITY_DIR_NAME


def _load_existing(folder: Path) -> NodeIdentity:
    from agent.identity import IdentityLoadError, NodeIdentity

    if not folder.exists():
        raise _KeysError(
            f"no node identity in {folder}; make one with: quicshift keys init "
            f"--state-dir {folder.parent}"
        )
    try:
        return NodeIdentity.load(folder)
    except IdentityLoadError as exc:
        raise _KeysError(f"cannot load the node identity in {folder}: {exc}") from None


def _certificate_info(
    cert: x509.Certificate, index: int, length: int, now: datetime
) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes

    from agent.identity.certificates import key_type_of

    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        validity = "not yet valid"
    elif now > not_after:
        validity = "expired"
    else:
        validity = "valid"
    try:
        key_type: str = key_type_of(cert.public_key())
    except Exception as exc:  # an unusable key is shown, not fatal to `show`
        key_type = f"unsupported ({exc})"
    role = "leaf" if index == 0 else ("root" if index == length - 1 else "intermediate")
    if length == 1:
        role = "leaf, root"
    return {
        "index": index,
        "role": role,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "validity": validity,
        "key_type": key_type,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def _identity_info(identity: NodeIdentity, folder: Path) -> dict[str, Any]:
    from datetime import UTC, datetime

    from agent.identity import CHAIN_FILE_NAME, KEY_FILE_NAME, NodeVerificationError

    now = datetime.now(UTC)
    chain = identity.chain
    try:
        identity.verify(now=now)
        verification: dict[str, Any] = {"ok": True}
    except NodeVerificationError as exc:
        verification = {"ok": False, "code": exc.code, "error": str(exc)}
    return {
        "node_id": str(identity.node_id),
        "key_type": identity.key_type,
        "identity_dir": str(folder),
        "key_file": str(folder / KEY_FILE_NAME),
        "chain_file": str(folder / CHAIN_FILE_NAME),
        "chain_length": len(chain),
        "chain": [_certificate_info(c, i, len(chain), now) for i, c in enumerate(chain)],
        "verification": verification,
    }


def _write_certificate(out: TextIO, cert: dict[str, Any], indent: str = "  ") -> None:
    out.write(f"{indent}[{cert['index']}] {cert['role']}\n")
    out.write(f"{indent}    subject:  {cert['subject']}\n")
    out.write(f"{indent}    issuer:   {cert['issuer']}\n")
    out.write(
        f"{indent}    validity: {cert['not_before']} .. {cert['not_after']} ({cert['validity']})\n"
    )
    out.write(f"{indent}    key:      {cert['key_type']}\n")
    out.write(f"{indent}    sha256:   {cert['sha256']}\n")


def _write_identity(out: TextIO, info: dict[str, Any]) -> None:
    out.write(f"node id:    {info['node_id']}\n")
    out.write(f"key type:   {info['key_type']}\n")
    out.write(f"identity:   {info['identity_dir']}\n")
    out.write(f"chain:      {info['chain_length']} certificate(s), leaf first\n")
    for cert in info["chain"]:
        _write_certificate(out, cert)
    verification = info["verification"]
    if verification["ok"]:
        out.write("verifies:   yes\n")
    else:
        out.write(f"verifies:   NO ({verification['code']}: {verification['error']})\n")


def _keys_init(args: argparse.Namespace, out: TextIO) -> int:
    from agent.identity import CHAIN_FILE_NAME, KEY_FILE_NAME, IdentityLoadError, NodeIdentity

    folder = _identity_dir(args)
    existing = [folder / name for name in (KEY_FILE_NAME, CHAIN_FILE_NAME)]
    replacing = any(path.exists() for path in existing)
    if replacing and not args.force:
        try:
            what = f"node {NodeIdentity.load(folder).node_id}"
        except IdentityLoadError:
            what = "an unreadable identity"
        raise _KeysError(
            f"{folder} already holds {what}; not replacing it. Use --force to make a new "
            "identity (the node id changes), or 'quicshift keys rotate' to change the key "
            "and keep the node id"
        )
    identity = NodeIdentity.generate(args.key_type)
    identity.save(folder)
    info = _identity_info(identity, folder)
    info["replaced"] = replacing
    if args.json:
        json.dump(info, out, indent=2)
        out.write("\n")
    else:
        out.write("replaced the node identity\n" if replacing else "made a new node identity\n")
        _write_identity(out, info)
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace, out: TextIO) -> int:
    from agent.identity import IdentityError

    folder = _identity_dir(args)
    old = _load_existing(folder)
    try:
        new = old.rotate(args.key_type)
        new.verify()
    except IdentityError as exc:
        raise _KeysError(f"cannot rotate the key of node {old.node_id}: {exc}") from None
    new.save(folder)
    info = _identity_info(new, folder)
    old_leaf = _identity_info(old, folder)["chain"][0]
    new_leaf = info["chain"][0]
    if args.json:
        json.dump({**info, "old_leaf": old_leaf, "new_leaf": new_leaf}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"rotated the key of node {new.node_id} (the node id is unchanged)\n")
        out.write("old leaf:\n")
        _write_certificate(out, {**old_leaf, "role": "previous leaf"})
        out.write("new leaf:\n")
        _write_certificate(out, new_leaf)
        out.write("\n")
        _write_identity(out, info)
        out.write("restart the agent to present the new chain\n")
    return EXIT_OK


def _keys_show(args: argparse.Namespace, out: TextIO) -> int:
    folder = _identity_dir(args)
    identity = _load_existing(folder)
    info = _identity_info(identity, folder)
    if args.json:
        json.dump(info, out, indent=2)
        out.write("\n")
    else:
        _write_identity(out, info)
    return EXIT_OK if info["verification"]["ok"] else EXIT_FAILED


def _keys_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    actions = {"init": _keys_init, "rotate": _keys_rotate, "show": _keys_show}
    try:
        return actions[args.keys_command](args, out)
    except _KeysError as exc:
        err.write(f"quicshift keys {args.keys_command}: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        err.write(f"quicshift keys {args.keys_command}: {exc}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quicshift`` console script; returns the exit status."""
    # grpc core logs handshake failures on stderr; keep the demo's output readable.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo_command(args, sys.stdout, sys.stderr)
    if args.command == "scan":
        return _scan_command(args, sys.stdout, sys.stderr)
    if args.command == "keys":
        if args.keys_command is None:
            args.keys_parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _keys_command(args, sys.stdout, sys.stderr)
    if args.command in {"agent", "rollout", "call", "metrics"}:
        from agent.operator_cli import run_operator_command

        return run_operator_command(args, sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
