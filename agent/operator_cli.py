"""The operator's commands of ``quicshift``: run an agent, move its rollout stage, call
peers and read metrics.

* ``quicshift agent start|status|stop`` — run a :class:`~agent.dual.DualStackAgent` from a
  state dir in the foreground; ``status`` and ``stop`` talk to it through its local control
  endpoint (:mod:`agent.control`, address and token in ``STATE_DIR/agent.json``).
* ``quicshift rollout status|set STAGE|advance|rollback`` — on one running agent
  (``--state-dir``) or a fleet (``--fleet FILE``: one ``[name=]STATE_DIR`` a line). For a
  fleet, nodes move one at a time and every step is checked against the rollout rules
  (:mod:`migration.fleet`); ``--force`` skips the check.
* ``quicshift call NODE METHOD [JSON]`` — call a method on a peer from the agent in
  ``--state-dir``, over the transport its stage picks (or ``--transport``).
* ``quicshift metrics`` — the agent's metrics, Prometheus text or ``--json``.

Exit codes: 0 success, 1 the operation failed (or was refused), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from migration.rollout import TRANSPORTS, RolloutStage

__all__ = ["add_operator_parsers", "run_operator_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
STATE_DIR_ENV = "QUICSHIFT_STATE_DIR"
STAGES = [s.value for s in RolloutStage.ordered()]


class UsageError(Exception):
    """A usage error (exit 2)."""


class CommandError(Exception):
    """The operation failed (exit 1)."""


# -- parsers ----------------------------------------------------------------------------------


def _state_dir_arg(parser: argparse.ArgumentParser, required_help: str = "") -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=os.environ.get(STATE_DIR_ENV),
        help=f"the agent's state directory (default: ${STATE_DIR_ENV}){required_help}",
    )


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_operator_parsers(sub: Any) -> None:
    """Add ``agent``, ``rollout``, ``call`` and ``metrics`` to the ``quicshift`` parser."""
    agent = sub.add_parser(
        "agent",
        help="run a dual-stack agent from a state directory; show or stop it",
        description=(
            "Run an agent (gRPC + proxy stack and/or QUIC, by its rollout stage) from a "
            "state directory, and talk to the running agent."
        ),
    )
    agent.set_defaults(group_parser=agent)
    actions = agent.add_subparsers(dest="action", metavar="ACTION")
    start = actions.add_parser(
        "start",
        help="run the agent in the foreground until stopped",
        description=(
            "Run the agent in the foreground: serve the transports its stage serves, "
            "write STATE_DIR/agent.json (control address, token, pid) and STATE_DIR/"
            "agent.pid, and run until 'quicshift agent stop', SIGTERM or Ctrl-C. The stage "
            "is read from STATE_DIR/rollout.json (legacy for a new state dir) unless "
            "--stage is given, which is then persisted."
        ),
    )
    _state_dir_arg(start)
    start.add_argument("--stage", choices=STAGES, help="start at this stage (persisted)")
    start.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    start.add_argument("--grpc-port", type=int, default=0, help="TCP port of the gRPC stack")
    start.add_argument("--quic-port", type=int, default=0, help="UDP port of the QUIC stack")
    start.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    start.add_argument(
        "--drain-grace",
        type=float,
        default=5.0,
        help="seconds calls may run on a stack being stopped by a stage change (5)",
    )
    start.add_argument(
        "--drain-notice",
        type=float,
        default=20.0,
        help=(
            "seconds a stack the stage stops serving keeps serving, advertised "
            "NOT_SERVING, so peers stop dialling it first (20)"
        ),
    )
    start.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    _json_arg(start)

    status = actions.add_parser(
        "status",
        help="show the running agent: stage, transports, health, peers",
        description="Show the running agent's stage, transports, ports, health and peers.",
    )
    _state_dir_arg(status)
    status.add_argument("--metrics", action="store_true", help="include the call metrics")
    _json_arg(status)

    stop = actions.add_parser(
        "stop",
        help="stop the running agent (gracefully)",
        description="Ask the running agent to stop and wait until its process has exited.",
    )
    _state_dir_arg(stop)
    stop.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for it to exit (60)"
    )
    _json_arg(stop)

    rollout = sub.add_parser(
        "rollout",
        help="show or move the rollout stage of a running agent or a fleet",
        description=(
            "Show or change the rollout stage (legacy, dual, quic-preferred, quic-only) of "
            "a running agent (--state-dir) or of a fleet (--fleet FILE, one [name=]STATE_DIR "
            "per line). Changes take effect without a restart. For a fleet, nodes move one "
            "at a time and each step is refused (exit 1) if it would leave two nodes with "
            "no transport in common (a node enters quic-only only when every other node is "
            "at quic-preferred or quic-only), unless --force."
        ),
    )
    rollout.set_defaults(group_parser=rollout)
    moves = rollout.add_subparsers(dest="action", metavar="ACTION")
    for name, text in (
        ("status", "show the stage of each agent"),
        ("set", "move to STAGE"),
        ("advance", "move one stage forward"),
        ("rollback", "move one stage back"),
    ):
        parser = moves.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == "set":
            parser.add_argument("stage", choices=STAGES, metavar="STAGE", help=", ".join(STAGES))
        _state_dir_arg(parser)
        parser.add_argument("--fleet", metavar="FILE", help="a fleet file instead of one agent")
        if name != "status":
            parser.add_argument("--node", metavar="NAME", help="only this fleet member")
            parser.add_argument("--reason", default="", help="recorded in the stage history")
            parser.add_argument("--force", action="store_true", help="skip the fleet rollout rules")
        _json_arg(parser)

    call = sub.add_parser(
        "call",
        help="call an agent method on a peer",
        description=(
            "From the agent running in --state-dir, call METHOD (e.g. Echo, "
            "AgentService/VaultsScan, Health/Check) on NODE with the JSON request (the "
            "protobuf message in JSON form; a list for client-streaming methods), over the "
            "transport the caller's stage picks (or --transport). NODE is a node id the "
            "caller knows, the state directory of a running agent, or a --fleet member name."
        ),
    )
    call.add_argument("node", metavar="NODE")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("request", metavar="JSON", nargs="?", default="{}")
    _state_dir_arg(call, " (the caller)")
    call.add_argument("--fleet", metavar="FILE", help="resolve NODE as a fleet member name")
    call.add_argument("--transport", choices=TRANSPORTS, help="force this transport")
    call.add_argument("--timeout", type=float, default=30.0, help="call deadline (30 s)")
    _json_arg(call)

    metrics = sub.add_parser(
        "metrics",
        help="show the running agent's call metrics",
        description=(
            "Print the running agent's metrics: calls, errors by status code, latency "
            "histogram per transport and method, and fallbacks with their reason — in the "
            "Prometheus text format, or as JSON with --json."
        ),
    )
    _state_dir_arg(metrics)
    _json_arg(metrics)


# -- helpers ----------------------------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    if not args.state_dir:
        raise UsageError(f"--state-dir is required (or set ${STATE_DIR_ENV})")
    return Path(args.state_dir)


def _client(state_dir: Path) -> Any:
    from agent.control import ControlClient

    return ControlClient.for_state_dir(state_dir)


def _emit(out: TextIO, data: Any) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


@dataclass(frozen=True)
class Member:
    name: str
    state_dir: Path


def read_fleet(path: str) -> list[Member]:
    """A fleet file: one ``[name=]STATE_DIR`` per line; ``#`` comments; relative paths
    are relative to the file."""
    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read the fleet file {file}: {exc.strerror or exc}") from None
    members: list[Member] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, where = line.partition("=")
        if not sep:
            name, where = Path(line).name, line
        folder = Path(where.strip())
        if not folder.is_absolute():
            folder = file.parent / folder
        name = name.strip()
        if not name or any(m.name == name for m in members):
            raise UsageError(f"{file}:{number}: missing or duplicate member name {name!r}")
        members.append(Member(name, folder))
    if not members:
        raise UsageError(f"the fleet file {file} lists no agents")
    return members


# -- agent ------------------------------------------------------------------------------------


def _agent_start(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from agent.control import ControlError, read_control_info

    state_dir = _state_dir(args)
    try:
        running = read_control_info(state_dir)
    except ControlError:
        pass
    else:
        raise CommandError(f"an agent is already running in {state_dir} (pid {running.pid})")
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=err,
    )
    return asyncio.run(_run_agent(args, state_dir, out))


async def _run_agent(args: argparse.Namespace, state_dir: Path, out: TextIO) -> int:
    from agent.control import ControlInfo, ControlServer, remove_control_files, write_control_files
    from agent.dual import DualStackAgent, DualStackAgentError
    from migration.metrics import MetricsServer, serve_metrics
    from migration.rollout import RolloutError

    agent = DualStackAgent(
        state_dir,
        stage=args.stage,
        host=args.host,
        grpc_port=args.grpc_port,
        quic_port=args.quic_port,
        drain_grace=args.drain_grace,
        drain_notice=args.drain_notice,
    )
    stopping = asyncio.Event()
    metrics_server: MetricsServer | None = None
    control: ControlServer | None = None
    pid = os.getpid()
    try:
        try:
            await agent.start()
            if args.metrics_port is not None:
                metrics_server = await serve_metrics(
                    "127.0.0.1", args.metrics_port, registry=agent.metrics
                )
        except (DualStackAgentError, RolloutError, OSError) as exc:
            raise CommandError(f"cannot start the agent in {state_dir}: {exc}") from None
        metrics_url = None if metrics_server is None else metrics_server.url
        control = ControlServer(
            agent,
            on_stop=stopping.set,
            extra_status=lambda: {"pid": pid, "metrics_url": metrics_url},
        )
        await control.start()
        info = ControlInfo(
            pid, "127.0.0.1", control.port, control.token, str(agent.node_id), state_dir
        )
        write_control_files(state_dir, info)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        started = {
            "node_id": str(agent.node_id),
            "stage": agent.stage.value,
            "serves": list(agent.serves),
            "host": agent.host,
            "ports": agent.ports,
            "control": f"127.0.0.1:{control.port}",
            "metrics_url": metrics_url,
            "pid": pid,
        }
        if args.json:
            out.write(json.dumps(started) + "\n")
        else:
            out.write(
                f"agent {agent.node_id} at stage {agent.stage} serving "
                f"{', '.join(agent.serves)} (grpc tcp/{agent.ports['grpc']}, quic "
                f"udp/{agent.ports['quic']}); control 127.0.0.1:{control.port}"
                + (f"; metrics {metrics_url}" if metrics_url else "")
                + "\n"
            )
        out.flush()
        await stopping.wait()
        return EXIT_OK
    finally:
        remove_control_files(state_dir, pid)
        if control is not None:
            await control.stop()
        if metrics_server is not None:
            await metrics_server.stop()
        await agent.stop()


def _agent_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    status = _client(_state_dir(args)).request("status", metrics=bool(args.metrics))
    if args.json:
        _emit(out, status)
        return EXIT_OK
    out.write(f"node      {status['node_id']}\n")
    out.write(f"stage     {status['stage']}\n")
    out.write(f"serves    {', '.join(status['serves']) or '-'}")
    if status["draining"]:
        out.write(f" (draining {', '.join(status['draining'])})")
    out.write(f"\ndials     {' -> '.join(status['dials'])}\n")
    ports = status["ports"]
    out.write(f"ports     grpc tcp/{ports['grpc']}  quic udp/{ports['quic']}\n")
    out.write(f"pid       {status.get('pid')}\n")
    if status.get("metrics_url"):
        out.write(f"metrics   {status['metrics_url']}\n")
    for transport, statuses in status["health"].items():
        overall = statuses.get("", "UNKNOWN")
        out.write(f"health    {transport}: {overall}\n")
    for peer in status["peers"]:
        out.write(
            f"peer      {peer['node_id'][:16]}… serves {', '.join(peer['serves']) or '-'} "
            f"({peer['source']})\n"
        )
    if args.metrics:
        _write_metrics_table(out, status["metrics"])
    return EXIT_OK


def _write_metrics_table(out: TextIO, snapshot: dict[str, Any]) -> None:
    out.write(f"\n{'transport':<10} {'method':<42} {'calls':>6} {'errors':>7} {'mean ms':>8}\n")
    for transport, methods in snapshot["transports"].items():
        for method, stats in methods.items():
            latency = stats["latency"]
            mean = 1000 * latency["sum"] / latency["count"] if latency["count"] else 0.0
            errors = sum(stats["errors"].values())
            out.write(
                f"{transport:<10} {method:<42} {stats['calls']:>6} {errors:>7} {mean:>8.2f}\n"
            )
    for fallback in snapshot["fallbacks"]:
        out.write(
            f"fallback {fallback['from_transport']} -> {fallback['to_transport']} "
            f"{fallback['method']}: {fallback['count']} ({fallback['reason']})\n"
        )


def _agent_stop(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from agent.control import ControlError, read_control_info

    state_dir = _state_dir(args)
    client = _client(state_dir)
    pid = client.info.pid
    client.request("stop")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            read_control_info(state_dir)
        except ControlError:
            break
        time.sleep(0.05)
    else:
        raise CommandError(f"the agent (pid {pid}) did not stop within {args.timeout}s")
    if args.json:
        _emit(out, {"stopped": True, "pid": pid})
    else:
        out.write(f"agent in {state_dir} (pid {pid}) stopped\n")
    return EXIT_OK


# -- rollout ----------------------------------------------------------------------------------


def _members(args: argparse.Namespace) -> list[Member]:
    if args.fleet:
        return read_fleet(args.fleet)
    folder = _state_dir(args)
    return [Member(folder.name or str(folder), folder)]


def _rollout(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from agent.control import ControlError
    from migration.fleet import FleetRuleError, check_stage_change, fleet_problems

    members = _members(args)
    clients: dict[str, Any] = {}
    stages: dict[str, RolloutStage] = {}
    rows: list[dict[str, Any]] = []
    for member in members:
        try:
            client = _client(member.state_dir)
            status = client.request("status")
        except ControlError as exc:
            if args.action != "status":
                raise CommandError(f"{member.name}: {exc}") from None
            rows.append({"name": member.name, "running": False, "error": str(exc)})
            continue
        clients[member.name] = client
        stages[member.name] = RolloutStage.parse(status["stage"])
        rows.append(
            {
                "name": member.name,
                "running": True,
                "node_id": status["node_id"],
                "stage": status["stage"],
                "serves": status["serves"],
                "dials": status["dials"],
            }
        )
    if args.action == "status":
        problems = fleet_problems(stages)
        if args.json:
            _emit(out, {"agents": rows, "legal": not problems, "problems": problems})
        else:
            for row in rows:
                if row["running"]:
                    out.write(
                        f"{row['name']:<16} {row['stage']:<15} serves "
                        f"{', '.join(row['serves']):<10} dials {' -> '.join(row['dials'])}\n"
                    )
                else:
                    out.write(f"{row['name']:<16} not running\n")
            for problem in problems:
                out.write(f"PROBLEM: {problem}\n")
        return EXIT_OK if not problems and all(r["running"] for r in rows) else EXIT_FAILED

    if args.node is not None and args.node not in clients:
        raise UsageError(f"no fleet member named {args.node!r}")
    targets = [args.node] if args.node else [m.name for m in members]
    # Plan every step first (one node, one stage at a time) and check each against the
    # fleet rules, so a refused change changes nothing.
    steps: list[tuple[str, RolloutStage]] = []
    planned = dict(stages)
    if args.action == "set":
        final = RolloutStage.parse(args.stage)

        def toward(name: str) -> RolloutStage:
            current = planned[name]
            return current.advance() if current.order < final.order else current.rollback()

        def legal(name: str) -> bool:
            try:
                check_stage_change(planned, name, toward(name))
            except FleetRuleError:
                return False
            return True

        # One step of one node at a time: the first node (in fleet order) whose next step
        # keeps the fleet legal (e.g. quic-only nodes step back before others leave
        # quic-preferred); if none can, the first one, and the check below refuses it.
        while pending := [n for n in targets if planned[n] is not final]:
            name = next((n for n in pending if legal(n)), pending[0])
            steps.append((name, toward(name)))
            planned[name] = steps[-1][1]
    else:
        for name in targets:
            try:
                current = planned[name]
                nxt = current.advance() if args.action == "advance" else current.rollback()
            except Exception as exc:
                raise CommandError(f"{name}: {exc}") from None
            steps.append((name, nxt))
            planned[name] = nxt
    refused: str | None = None
    if not (args.force or len(members) == 1):
        checked = dict(stages)
        for name, stage in steps:
            try:
                check_stage_change(checked, name, stage)
            except FleetRuleError as exc:
                refused = f"refused, nothing changed: {exc} (use --force to override)"
                steps = []
                break
            checked[name] = stage
    changes: list[dict[str, Any]] = []
    for name, stage in steps:
        try:
            result = clients[name].request("set_stage", stage=stage.value, reason=args.reason)
        except ControlError as exc:
            refused = f"failed at {name} -> {stage.value}: {exc}"
            break
        stages[name] = stage
        if result["changed"]:
            changes.append({"name": name, **result["change"]})
    if args.json:
        _emit(
            out,
            {
                "ok": refused is None,
                "changes": changes,
                "stages": {n: s.value for n, s in stages.items()},
                "error": refused,
            },
        )
    else:
        for change in changes:
            out.write(f"{change['name']}: {change['previous']} -> {change['stage']}\n")
        if not changes and refused is None:
            out.write("nothing to change\n")
        if refused is not None:
            err.write(f"quicshift rollout {args.action}: {refused}\n")
    return EXIT_OK if refused is None else EXIT_FAILED


# -- call / metrics ---------------------------------------------------------------------------


def _call(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from agent.control import ControlError

    try:
        request = json.loads(args.request)
    except ValueError as exc:
        raise UsageError(f"the request is not JSON: {exc}") from None
    caller = _client(_state_dir(args))
    target: Path | None = None
    if args.fleet:
        for member in read_fleet(args.fleet):
            if member.name == args.node:
                target = member.state_dir
    if target is None and Path(args.node).is_dir():
        target = Path(args.node)
    if target is not None:  # introduce the peer to the caller
        status = _client(target).request("status")
        node_id = status["node_id"]
        caller.request(
            "add_peer",
            node_id=node_id,
            host=status["host"],
            ports=status["ports"],
            serves=status["serves"],
        )
    else:
        node_id = args.node
    try:
        result = caller.request(
            "call",
            node_id=node_id,
            method=args.method,
            request=request,
            transport=args.transport,
            timeout=args.timeout,
        )
    except ControlError as exc:
        if exc.code in {"bad_request"}:
            raise UsageError(str(exc)) from None
        raise CommandError(f"{exc} [{exc.code}]") from None
    if args.json:
        _emit(out, result)
    else:
        _emit(out, result["response"])
        err.write(f"{result['method']} via {result['plan'][0]} ({result['reason']})\n")
    return EXIT_OK


def _metrics(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = _client(_state_dir(args))
    if args.json:
        _emit(out, client.request("metrics"))
    else:
        out.write(client.request("prometheus"))
    return EXIT_OK


def run_operator_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``agent``/``rollout``/``call``/``metrics``; returns the exit code."""
    from agent.control import ControlError

    command = args.command
    handlers: dict[tuple[str, str | None], Any] = {
        ("agent", "start"): _agent_start,
        ("agent", "status"): _agent_status,
        ("agent", "stop"): _agent_stop,
        ("call", None): _call,
        ("metrics", None): _metrics,
    }
    action = getattr(args, "action", None)
    if command in {"agent", "rollout"} and action is None:
        args.group_parser.print_help(err)
        return EXIT_USAGE
    handler = _rollout if command == "rollout" else handlers[(command, action)]
    label = " ".join(x for x in (command, action) if x)
    try:
        code: int = handler(args, out, err)
        return code
    except UsageError as exc:
        err.write(f"quicshift {label}: {exc}\n")
        return EXIT_USAGE
    except (CommandError, ControlError) as exc:
        err.write(f"quicshift {label}: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.flush()
