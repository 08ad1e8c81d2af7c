"""``quicshift check`` (a user's service on both transports, :mod:`migration.check`) and
``quicshift cutover check|apply`` (readiness of a fleet for quic-only, and the switch).

Cutover readiness, for the agents of a fleet file (or the one agent of ``--state-dir``):

* **agents running** — every member answers on its control endpoint;
* **quic reachable** — every member calls ``Health/Check`` over QUIC (forced, no
  fallback) on every other member and on every peer it knows;
* **no legacy calls** — the members' metrics (calls made, by transport) are read twice,
  ``--window`` seconds apart: no member made a gRPC call in between;
* **scan clean** — ``migration.scan`` of ``--scan PATH`` (when given) exits 0.

``apply`` checks (unless ``--force``), then moves every node below ``quic-preferred`` to
``quic-preferred`` (one stage of one node at a time), then every node to ``quic-only``,
each step checked against the fleet rules (:mod:`migration.fleet`), and prints the manual
steps that remain.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "add_check_parser",
    "add_cutover_parser",
    "run_check_command",
    "run_cutover_command",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATE_DIR_ENV = "QUICSHIFT_STATE_DIR"
DEFAULT_WINDOW = 30.0
HEALTH_METHOD = "Health/Check"

MANUAL_STEPS = [
    "make every codebase that talks to the agents scan clean: quicshift scan PATH (exit 0)",
    "bind services from their protobuf ServiceDescriptor (migration.quic_grpc.descriptor) "
    "instead of the generated *_pb2_grpc.py modules, which import grpcio",
    "delete legacy_grpc/ (gRPC server wiring, forward/reverse proxies) and the proxy "
    "configuration, TCP ports and firewall rules of the proxy pair",
    "uninstall the `legacy` extra: pip uninstall grpcio, drop `legacy = [...]` from "
    "[project.optional-dependencies] in pyproject.toml, install without [legacy]",
    "verify: python -c 'import grpc' fails, the agents start, serve and call in quic-only, "
    'and the metrics show only transport="quic"',
]


# -- quicshift check -----------------------------------------------------------------------


def add_check_parser(sub: Any) -> None:
    check = sub.add_parser(
        "check",
        help="run a service of your own on both transports and report any difference",
        description=(
            "Compile --proto with grpc_tools.protoc, import MODULE:SERVICER (the current "
            "directory is on sys.path), serve it on real grpcio (HTTP/2 over TCP+TLS, "
            "throw-away certificates) and on the adapter over QUIC at once, call every "
            "method of the service on both with the same requests (from --calls, else a "
            "default message; streaming methods send/collect a few messages) and compare "
            "status code, details, response messages (serialized bytes) and initial/"
            "trailing metadata (transport-specific keys ignored). Exits 0 when every "
            "method behaves the same, 1 when any differs, 2 on usage errors (bad "
            "MODULE:SERVICER, a .proto that does not compile, a bad --calls file)."
        ),
    )
    check.add_argument("servicer", metavar="MODULE:SERVICER", help="e.g. myapp.server:Greeter")
    check.add_argument("--proto", required=True, metavar="FILE", help="the service's .proto")
    check.add_argument(
        "-I",
        "--proto-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra import directory for protoc (repeatable)",
    )
    check.add_argument(
        "--calls",
        metavar="FILE",
        help=(
            "JSON object: method name -> request (protobuf JSON), a list of requests (one "
            "call each), or for client-streaming methods a list of messages (one call) or "
            "a list of such lists"
        ),
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, help="per-call timeout in seconds (default 10)"
    )
    check.add_argument("--json", action="store_true", help="print a JSON report")


def run_check_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from migration.check import CheckError, render_report, run_check

    try:
        report = run_check(
            args.servicer,
            args.proto,
            calls_file=args.calls,
            timeout=args.timeout,
            includes=args.proto_path,
        )
    except CheckError as exc:
        err.write(f"quicshift check: {exc}\n")
        return EXIT_USAGE
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render_report(report, out)
    return report.exit_code


# -- quicshift cutover ---------------------------------------------------------------------


def add_cutover_parser(sub: Any) -> None:
    cutover = sub.add_parser(
        "cutover",
        help="check readiness for quic-only and switch the fleet",
        description=(
            "check: every agent running, every known peer reachable over QUIC, no gRPC "
            "calls in the last --window seconds, --scan PATH clean; exit 0 ready, 1 not "
            "ready. apply: check (unless --force), move the fleet to quic-only one node and "
            "one stage at a time under the fleet rules, and print the manual steps left."
        ),
    )
    cutover.set_defaults(group_parser=cutover)
    actions = cutover.add_subparsers(dest="action", metavar="ACTION")
    for name, text in (
        ("check", "say whether the fleet is ready for quic-only (exit 0 ready, 1 not)"),
        ("apply", "check, then move the fleet to quic-only"),
    ):
        parser = actions.add_parser(name, help=text, description=text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--fleet", metavar="FILE", help="a fleet file ([name=]STATE_DIR a line)")
        where.add_argument(
            "--state-dir",
            metavar="DIR",
            default=os.environ.get(STATE_DIR_ENV),
            help=f"one agent's state directory (default: ${STATE_DIR_ENV})",
        )
        parser.add_argument("--scan", metavar="PATH", help="code that must scan clean")
        parser.add_argument(
            "--window",
            type=float,
            default=DEFAULT_WINDOW,
            metavar="SECONDS",
            help=f"no gRPC call may be made in this window (default {DEFAULT_WINDOW:g})",
        )
        parser.add_argument(
            "--timeout", type=float, default=10.0, help="per health call, seconds (default 10)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON")
        if name == "apply":
            parser.add_argument(
                "--force", action="store_true", help="apply even when the check fails"
            )
            parser.add_argument(
                "--reason", default="cutover", help="reason recorded with each stage change"
            )


class _Usage(Exception):
    pass


@dataclass
class Criterion:
    name: str
    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    skipped: bool = False

    def fail(self, reason: str) -> None:
        self.ok = False
        self.reasons.append(reason)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "skipped": self.skipped, "reasons": self.reasons}


def _grpc_calls(snapshot: dict[str, Any]) -> dict[str, int]:
    methods = snapshot.get("transports", {}).get("grpc", {})
    return {m: int(v.get("calls", 0)) for m, v in methods.items()}


def _readiness(
    args: argparse.Namespace, members: list[Any]
) -> tuple[list[Criterion], dict[str, Any]]:
    from agent.control import ControlError
    from agent.operator_cli import _client

    running = Criterion("agents running")
    reachable = Criterion("quic reachable")
    quiet = Criterion("no legacy calls")
    scan = Criterion("scan clean")
    clients: dict[str, Any] = {}
    statuses: dict[str, dict[str, Any]] = {}
    for member in members:
        try:
            client = _client(member.state_dir)
            statuses[member.name] = client.request("status")
            clients[member.name] = client
        except ControlError as exc:
            running.fail(f"{member.name}: {exc}")
    if not running.reasons:
        running.reasons.append(f"{len(members)} agent(s) answer")

    # Each agent reports its gRPC calls and the seconds since the last one; an agent
    # without that operation (older) is read twice, --window seconds apart.
    started = time.monotonic()
    before: dict[str, int] = {}
    diffed: dict[str, dict[str, int]] = {}
    for name, client in clients.items():
        try:
            grpc_use = client.request("calls_by_transport").get("grpc", {})
        except ControlError as exc:
            if exc.code != "bad_request":
                quiet.fail(f"{name}: cannot read its calls: {exc}")
                continue
            try:
                diffed[name] = _grpc_calls(client.request("metrics"))
            except ControlError as exc2:
                quiet.fail(f"{name}: cannot read metrics: {exc2}")
            continue
        before[name] = int(grpc_use.get("calls", 0))
        age = grpc_use.get("last_call_age")
        if age is not None and age < args.window:
            quiet.fail(
                f"{name} (stage {statuses[name]['stage']}) made a gRPC call {age:.1f}s ago, "
                f"within the {args.window:g}s window ({before[name]} gRPC call(s) in total)"
            )

    names_by_id = {s["node_id"]: n for n, s in statuses.items()}
    pairs = 0
    for name, client in clients.items():
        status = statuses[name]
        targets: dict[str, str] = {}
        for other, other_status in statuses.items():
            if other == name:
                continue
            node_id = other_status["node_id"]
            targets[node_id] = other
            try:
                client.request(
                    "add_peer",
                    node_id=node_id,
                    host=other_status["host"],
                    ports=other_status["ports"],
                    serves=other_status["serves"],
                )
            except ControlError as exc:
                reachable.fail(f"{name} cannot learn {other}: {exc}")
        for peer in status.get("peers", []):
            node_id = peer["node_id"]
            if node_id != status["node_id"] and node_id not in targets:
                targets[node_id] = names_by_id.get(node_id, node_id)
        for node_id, label in targets.items():
            pairs += 1
            try:
                client.request(
                    "call",
                    node_id=node_id,
                    method=HEALTH_METHOD,
                    request={},
                    transport="quic",
                    timeout=args.timeout,
                )
            except ControlError as exc:
                reachable.fail(f"{name} -> {label}: not reachable over QUIC: {exc}")
    if reachable.ok:
        reachable.reasons.append(f"{pairs} peer link(s) answer Health over QUIC")

    for name, count in before.items():
        try:
            now = int(clients[name].request("calls_by_transport").get("grpc", {}).get("calls", 0))
        except ControlError as exc:
            quiet.fail(f"{name}: cannot read its calls: {exc}")
            continue
        if now > count and not any(r.startswith(f"{name} (") for r in quiet.reasons):
            quiet.fail(
                f"{name} (stage {statuses[name]['stage']}) made {now - count} gRPC call(s) "
                "during the check"
            )
    if diffed:
        remaining = args.window - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
    for name, counts in diffed.items():
        try:
            after = _grpc_calls(clients[name].request("metrics"))
        except ControlError as exc:
            quiet.fail(f"{name}: cannot read metrics: {exc}")
            continue
        grown = {m: n - counts.get(m, 0) for m, n in after.items() if n > counts.get(m, 0)}
        if grown:
            detail = ", ".join(f"{m} x{n}" for m, n in sorted(grown.items()))
            quiet.fail(
                f"{name} (stage {statuses[name]['stage']}) made {sum(grown.values())} gRPC "
                f"call(s) in the last {args.window:g}s: {detail}"
            )
    if quiet.ok:
        quiet.reasons.append(
            f"no gRPC call by {len(before) + len(diffed)} agent(s) in the last {args.window:g}s"
        )

    if args.scan is None:
        scan.skipped = True
        scan.reasons.append("no --scan PATH given")
    else:
        from migration.scan import ScanError, scan_path

        try:
            report = scan_path(args.scan)
        except ScanError as exc:
            raise _Usage(str(exc)) from None
        if report.exit_code != 0:
            scan.fail(
                f"{args.scan}: {len(report.unsupported)} use(s) need a code change, "
                f"{len(report.errors)} file(s) unparsable (see quicshift scan)"
            )
            for finding in report.unsupported[:10]:
                scan.fail(f"{finding.path}:{finding.line}: {finding.symbol} (unsupported)")
            for error in report.errors[:10]:
                scan.fail(f"{error.path}:{error.line}: {error.message}")
        else:
            scan.reasons.append(f"{args.scan}: nothing unsupported")
    stages = {n: s["stage"] for n, s in statuses.items()}
    return [running, reachable, quiet, scan], {"clients": clients, "stages": stages}


def _write_criteria(out: TextIO, criteria: list[Criterion]) -> None:
    for c in criteria:
        verdict = "skip" if c.skipped else ("PASS" if c.ok else "FAIL")
        out.write(f"[{verdict}] {c.name}\n")
        for reason in c.reasons:
            out.write(f"       {reason}\n")


def _apply(
    args: argparse.Namespace, clients: dict[str, Any], stages_raw: dict[str, str]
) -> tuple[list[dict[str, Any]], str | None]:
    from agent.control import ControlError
    from migration.fleet import FleetRuleError, check_stage_change
    from migration.rollout import RolloutStage

    stages = {n: RolloutStage.parse(s) for n, s in stages_raw.items()}
    preferred, only = RolloutStage.QUIC_PREFERRED, RolloutStage.QUIC_ONLY
    steps: list[tuple[str, RolloutStage]] = []
    planned = dict(stages)
    for name in stages:
        while planned[name].order < preferred.order:
            planned[name] = planned[name].advance()
            steps.append((name, planned[name]))
    for name in stages:
        if planned[name] is not only:
            planned[name] = only
            steps.append((name, only))
    checked = dict(stages)
    for name, stage in steps:
        try:
            check_stage_change(checked, name, stage)
        except FleetRuleError as exc:
            return [], f"refused, nothing changed: {exc}"
        checked[name] = stage
    changes: list[dict[str, Any]] = []
    for name, stage in steps:
        try:
            result = clients[name].request("set_stage", stage=stage.value, reason=args.reason)
        except ControlError as exc:
            return changes, f"failed at {name} -> {stage.value}: {exc}"
        if result["changed"]:
            changes.append({"name": name, **result["change"]})
    return changes, None


def _cutover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from agent.operator_cli import Member, UsageError, read_fleet

    if args.window < 0 or args.timeout <= 0:
        raise _Usage("--window must not be negative and --timeout must be positive")
    if args.fleet:
        try:
            members = read_fleet(args.fleet)
        except UsageError as exc:
            raise _Usage(str(exc)) from None
    elif args.state_dir:
        folder = Path(args.state_dir)
        members = [Member(folder.name or str(folder), folder)]
    else:
        raise _Usage(f"give --fleet FILE or --state-dir DIR (or set ${STATE_DIR_ENV})")
    criteria, context = _readiness(args, members)
    ready = all(c.ok for c in criteria)
    report: dict[str, Any] = {
        "ready": ready,
        "criteria": [c.to_json() for c in criteria],
        "stages": context["stages"],
    }
    if args.action == "check":
        if args.json:
            json.dump(report, out, indent=2)
            out.write("\n")
        else:
            _write_criteria(out, criteria)
            out.write("ready for cutover\n" if ready else "NOT ready for cutover\n")
        return EXIT_OK if ready else EXIT_FAILED

    error: str | None = None
    changes: list[dict[str, Any]] = []
    if not ready and not args.force:
        error = "not ready (see the failed criteria); nothing changed (--force to override)"
    elif not all(c.ok for c in criteria[:1]):
        error = "cannot apply while an agent is not running; nothing changed"
    else:
        changes, error = _apply(args, context["clients"], context["stages"])
    final: dict[str, str] = {}
    for name, client in context["clients"].items():
        try:
            final[name] = client.request("status")["stage"]
        except Exception as exc:
            final[name] = f"unknown ({exc})"
    report.update(
        {
            "applied": error is None,
            "forced": bool(args.force),
            "changes": changes,
            "stages": final,
            "error": error,
            "manual_steps": MANUAL_STEPS if error is None else [],
        }
    )
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        _write_criteria(out, criteria)
        if not ready and args.force:
            out.write("NOT ready, applying anyway (--force)\n")
        for change in changes:
            out.write(f"{change['name']}: {change['previous']} -> {change['stage']}\n")
        if error is None:
            if not changes:
                out.write("every node is already quic-only\n")
            out.write("fleet: " + ", ".join(f"{n}={s}" for n, s in final.items()) + "\n")
            out.write("\nremaining manual steps:\n")
            for number, step in enumerate(MANUAL_STEPS, 1):
                out.write(f"  {number}. {step}\n")
    if error is not None:
        err.write(f"quicshift cutover apply: {error}\n")
    return EXIT_OK if error is None else EXIT_FAILED


def run_cutover_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.action is None:
        args.group_parser.print_help(err)
        return EXIT_USAGE
    try:
        return _cutover(args, out, err)
    except _Usage as exc:
        err.write(f"quicshift cutover {args.action}: {exc}\n")
        return EXIT_USAGE
