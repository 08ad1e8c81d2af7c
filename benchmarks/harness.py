"""Process harness: a server process and a client process per stack, driven over JSON lines.

Roles (``python -m benchmarks.harness server|client ...``) are started by
:func:`run_all`; each writes one JSON object per line on its stdout and the client reads
commands, one JSON object per line, on its stdin:

* server → ``{"ready": true, "port": ..., "info": {...}, "pid": ...}`` or
  ``{"ready": false, "error": "..."}``; it serves until its stdin closes.
* client → ``{"ready": ...}`` the same way, then for each command
  ``{"cmd": "run", "workload": w, "params": {...}}``, ``{"cmd": "idle_open", "count": n}``,
  ``{"cmd": "idle_close"}`` or ``{"cmd": "stop"}`` one reply
  ``{"ok": true, "result": {...}}`` / ``{"ok": false, "error": "..."}``.

A stack that fails to start, or a workload that fails or times out, becomes an error
row; the run goes on. The orchestrator samples the server's RSS and CPU time with psutil
for the idle-connections workload.

The ``lossy-*`` workloads run each stack's server and client in two network namespaces
joined by :class:`~benchmarks.linklab.LossyLink` (``ip netns exec <ns> python -m
benchmarks.harness ... --host <addr>``): one link per stack and round, built before
and torn down after that stack's lossy workloads. Where no link can be built (not
root, no ``ip``, no TUN) those workloads are reported as ``{"skipped": reason}``.
Each lossy result carries the link's counters over the command (``link``: packets,
random losses, queue drops per direction).

``quic_cc`` (``--quic-cc`` on the children) picks the QUIC stacks' congestion controller;
each of their results records the one used (``quic_congestion_control``).

Set ``QUICSHIFT_BENCH_PROFILE=<dir>`` to run every child under cProfile (CPU time);
each writes ``<dir>/<role>-<stack>.pstats`` when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]

from . import linklab
from ._common import ROOT, write_certs
from .stacks import EXTRA_STACKS, QUIC_CC_CHOICES, QUIC_STACKS, STACKS
from .workloads import LOSSY_LINK, LOSSY_WORKLOADS, WORKLOADS

__all__ = ["run_all"]

PROFILE_ENV = "QUICSHIFT_BENCH_PROFILE"
Log = Callable[[str], None]


# -- child processes ---------------------------------------------------------------------


def _protocol_out() -> IO[str]:
    """The real stdout for protocol lines; everything else printed goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr
    return out


def _emit(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:500]


async def _server_role(
    out: IO[str], stack: str, certs: Path, max_connections: int, host: str
) -> None:
    from .stacks import start_server

    try:
        handle = await start_server(stack, certs, max_connections=max_connections, host=host)
    except Exception as exc:
        traceback.print_exc()
        _emit(out, {"ready": False, "error": _error_text(exc)})
        return
    _emit(out, {"ready": True, "port": handle.port, "info": handle.info, "pid": os.getpid()})
    reader = await _stdin_reader()
    while await reader.readline():
        pass
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.stop(), 5)


async def _client_role(
    out: IO[str], stack: str, certs: Path, port: int, info: str, host: str
) -> None:
    from .stacks import BenchConnection, client_side
    from .workloads import PAYLOAD, RUNNERS, close_idle, open_idle

    try:
        side = await client_side(stack, certs, port, json.loads(info), host)
    except Exception as exc:
        traceback.print_exc()
        _emit(out, {"ready": False, "error": _error_text(exc)})
        return
    _emit(out, {"ready": True, "pid": os.getpid()})
    reader = await _stdin_reader()
    main: BenchConnection | None = None
    idle: list[BenchConnection] = []
    try:
        while line := await reader.readline():
            command = json.loads(line)
            cmd = command.get("cmd")
            try:
                if cmd == "stop":
                    _emit(out, {"ok": True, "result": {}})
                    break
                if cmd == "run":
                    if main is None:
                        main = await side.connect()
                        await main.unary(PAYLOAD)
                    runner = RUNNERS[command["workload"]]
                    result = await runner(side, main, command["params"])
                elif cmd == "idle_open":
                    t0 = time.perf_counter()
                    idle.extend(await open_idle(side, int(command["count"])))
                    result = {"open": len(idle), "seconds": round(time.perf_counter() - t0, 3)}
                elif cmd == "idle_close":
                    await close_idle(idle)
                    result = {"closed": len(idle)}
                    idle = []
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                _emit(out, {"ok": True, "result": result})
            except Exception as exc:
                traceback.print_exc()
                _emit(out, {"ok": False, "error": _error_text(exc)})
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close_idle(idle), 10)
            if main is not None:
                await asyncio.wait_for(main.close(), 5)
            await asyncio.wait_for(side.aclose(), 5)


def _child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--stack", choices=STACKS + EXTRA_STACKS, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--info", default="{}")
    parser.add_argument("--max-connections", type=int, default=1024)
    parser.add_argument(
        "--host", default="127.0.0.1", help="server: address to bind; client: to dial"
    )
    parser.add_argument("--quic-cc", choices=QUIC_CC_CHOICES)
    args = parser.parse_args(argv)
    if args.quic_cc is not None:
        from . import stacks

        stacks.QUIC_CONGESTION_CONTROL = args.quic_cc
    out = _protocol_out()
    if args.role == "server":
        coro = _server_role(out, args.stack, args.certs, args.max_connections, args.host)
    else:
        coro = _client_role(out, args.stack, args.certs, args.port, args.info, args.host)
    profile_dir = os.environ.get(PROFILE_ENV)
    if not profile_dir:
        asyncio.run(coro)
        return
    import cProfile

    # CPU time, not wall time: on a busy machine a syscall that wakes the peer process
    # (sendto on loopback) otherwise "takes" as long as this process stays preempted.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        asyncio.run(coro)
    finally:
        profiler.disable()
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"{args.role}-{args.stack}.pstats"))


# -- orchestrator --------------------------------------------------------------------------


class ChildError(Exception):
    """A child process failed to start, answered with an error, died or timed out."""


class Child:
    """One child process speaking JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    log_dir: Path | None = None
    """Where children's stderr goes (``<name>.log``, appended); None discards it."""

    @classmethod
    async def spawn(
        cls, name: str, *args: str, limit_s: float = 60.0, prefix: Sequence[str] = ()
    ) -> tuple[Child, dict[str, Any]]:
        """Start ``python -m benchmarks.harness *args`` and wait for its hello line.

        ``prefix`` goes before the interpreter, e.g. ``ip netns exec <ns>`` (which execs
        it, so the pid is still the Python process's).
        """
        stderr: Any = asyncio.subprocess.DEVNULL
        if os.environ.get("QUICSHIFT_BENCH_VERBOSE"):
            stderr = None
        elif cls.log_dir is not None:
            cls.log_dir.mkdir(parents=True, exist_ok=True)
            stderr = (cls.log_dir / f"{name.replace(' ', '-')}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "benchmarks.harness",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=1 << 20,
        )
        if hasattr(stderr, "close"):
            stderr.close()  # the child has its own copy
        child = cls(proc, name)
        try:
            hello = await child.receive(limit_s)
        except BaseException:
            await child.kill()
            raise
        if not hello.get("ready"):
            await child.close()
            raise ChildError(f"{name} did not start: {hello.get('error', hello)}")
        return child, hello

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def receive(self, limit_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        except TimeoutError:
            raise ChildError(f"{self.name}: no answer within {limit_s:.0f}s") from None
        if not line:
            code = await self.proc.wait()
            raise ChildError(f"{self.name} exited (code {code})")
        message: dict[str, Any] = json.loads(line)
        return message

    async def request(self, command: dict[str, Any], limit_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await self.receive(limit_s)
        if not reply.get("ok"):
            raise ChildError(str(reply.get("error", reply)))
        result: dict[str, Any] = reply["result"]
        return result

    async def close(self, limit_s: float = 10.0) -> None:
        """Close stdin (the child's signal to finish) and wait; kill if it hangs."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), limit_s)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a stack's two processes run and how the client reaches the server."""

    server_host: str = "127.0.0.1"
    server_prefix: tuple[str, ...] = ()
    client_prefix: tuple[str, ...] = ()
    tag: str = ""
    """Appended to the children's names (and so to their log files)."""

    @classmethod
    def across(cls, link: linklab.LossyLink) -> Placement:
        """Server in the link's server namespace, client in its client namespace."""
        return cls(
            server_host=link.server_addr,
            server_prefix=tuple(link.exec_prefix("server")),
            client_prefix=tuple(link.exec_prefix("client")),
            tag=" lossy",
        )


LOOPBACK = Placement()


class StackSession:
    """The server and client processes of one stack, (re)started on demand."""

    quic_cc: str | None = None
    """The QUIC stacks' congestion controller (``None``: ``QUICConfig``'s default)."""

    def __init__(
        self,
        stack: str,
        certs: Path,
        max_connections: int = 1024,
        placement: Placement = LOOPBACK,
    ) -> None:
        self.stack = stack
        self.certs = certs
        self.max_connections = max_connections
        self.placement = placement
        self.server: Child | None = None
        self.client: Child | None = None

    async def start(self) -> None:
        where = self.placement
        cc = ("--quic-cc", self.quic_cc) if self.quic_cc is not None else ()
        self.server, hello = await Child.spawn(
            f"{self.stack} server{where.tag}",
            "server",
            *cc,
            "--stack",
            self.stack,
            "--certs",
            str(self.certs),
            "--max-connections",
            str(self.max_connections),
            "--host",
            where.server_host,
            prefix=where.server_prefix,
        )
        try:
            self.client, _ = await Child.spawn(
                f"{self.stack} client{where.tag}",
                "client",
                *cc,
                "--stack",
                self.stack,
                "--certs",
                str(self.certs),
                "--port",
                str(hello["port"]),
                "--info",
                json.dumps(hello.get("info", {})),
                "--host",
                where.server_host,
                prefix=where.client_prefix,
            )
        except BaseException:
            await self.stop()
            raise

    async def ensure(self) -> tuple[Child, Child]:
        if self.server is None or self.client is None:
            await self.start()
        assert self.server is not None and self.client is not None
        return self.server, self.client

    async def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.request({"cmd": "stop"}, 15)
            await self.client.close()
            self.client = None
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def abort(self) -> None:
        for child in (self.client, self.server):
            if child is not None:
                await child.kill()
        self.client = self.server = None


def _timeout(workload: str, params: dict[str, Any]) -> float:
    if workload == "bulk":
        return 90.0 + float(params["bytes"]) / 1e6  # gives up below ~8 Mbit/s
    if workload == "stream":
        return 20.0 + float(params["messages"]) / 1000  # gives up below ~1,000 msgs/s
    if workload == "lossy-bulk":
        return 90.0 + float(params["bytes"]) * 8 / 0.5e6  # gives up below ~0.5 Mbit/s
    if workload == "lossy-unary":  # gives up above ~250 ms per call on average
        return 60.0 + 0.25 * float(params["warmup"] + params["calls"])
    if workload == "lossy-streams":  # gives up below ~20 calls/s
        return 60.0 + float(params["callers"] * (1 + params["calls_per_caller"])) / 20
    return {"connect": 120.0, "unary": 120.0, "concurrent": 180.0}.get(workload, 120.0)


async def _run_workloads(
    stack: str,
    certs: Path,
    workloads: list[str],
    params: dict[str, Any],
    log: Log,
    link: linklab.LossyLink | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    placement = LOOPBACK if link is None else Placement.across(link)
    session = StackSession(stack, certs, placement=placement)
    start_error: str | None = None
    try:
        for workload in workloads:
            t0 = time.monotonic()
            if start_error is not None:
                results[workload] = {"error": start_error}
                continue
            try:
                try:
                    server, client = await session.ensure()
                except ChildError as exc:
                    start_error = f"stack failed to start: {exc}"
                    raise ChildError(start_error) from exc
                cpu0 = _cpu_pair(server, client)
                link0 = await _link_stats(link)
                result = await client.request(
                    {"cmd": "run", "workload": workload, "params": params[workload]},
                    _timeout(workload, params[workload]),
                )
                result.update(
                    _cpu_cost(workload, params[workload], cpu0, _cpu_pair(server, client))
                )
                if link is not None:
                    result["link"] = _link_delta(link0, await _link_stats(link))
            except ChildError as exc:
                result = {"error": str(exc)}
                await session.abort()  # a clean slate for the next workload
            results[workload] = result
            log(f"  {stack:14s} {workload:13s} {_brief(result)}  ({time.monotonic() - t0:.1f}s)")
    finally:
        await session.stop()
    return results


_LOOPBACK_ONLY = {
    "native-quic-1452": "the same as native-quic across the link (1,452-byte datagrams and "
    "pacing are every non-loopback path's settings): measured on loopback only",
}


async def _run_lossy(
    stack: str,
    certs: Path,
    workloads: list[str],
    params: dict[str, Any],
    log: Log,
    spec: linklab.LinkSpec = LOSSY_LINK,
) -> dict[str, Any]:
    """The lossy workloads of one stack across a fresh :class:`LossyLink`."""
    reason = _LOOPBACK_ONLY.get(stack)
    if reason is None:
        ok, why = linklab.available()
        reason = None if ok else f"no lossy link on this machine: {why}"
    if reason is not None:
        for workload in workloads:
            log(f"  {stack:14s} {workload:13s} skipped: {reason}")
        return {w: {"skipped": reason} for w in workloads}
    link = linklab.LossyLink(spec)
    try:
        try:
            await link.start()
        except linklab.LinkError as exc:
            # available() said yes, so this is a failure of this run, not of the machine
            log(f"  {stack:14s} lossy link failed: {exc}")
            return {w: {"error": f"lossy link failed: {exc}"} for w in workloads}
        results = await _run_workloads(stack, certs, workloads, params, log, link)
        for result in results.values():
            if "error" not in result:
                result["tcp_congestion_control"] = link.tcp_congestion_control
        return results
    finally:
        await link.aclose()


async def _link_stats(link: linklab.LossyLink | None) -> dict[str, Any] | None:
    if link is None:
        return None
    try:
        return await link.stats()
    except (linklab.LinkError, OSError, ValueError) as exc:
        raise ChildError(f"lossy link: {exc}") from exc


_LINK_KEYS = ("packets", "lost", "queue_drops", "forwarded")


def _link_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """What the link did during one command, per direction, with the loss in percent."""
    if before is None or after is None:
        return {}
    delta: dict[str, dict[str, Any]] = {}
    for direction in ("c2s", "s2c"):
        row = {k: after[direction][k] - before[direction][k] for k in _LINK_KEYS}
        row["loss_pct"] = round(100 * row["lost"] / row["packets"], 2) if row["packets"] else 0.0
        delta[direction] = row
    return delta


def _cpu_seconds(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user) + float(times.system)


def _cpu_pair(server: Child, client: Child) -> tuple[float, float] | None:
    """CPU seconds used so far by the server and the client process."""
    try:
        return _cpu_seconds(psutil.Process(server.pid)), _cpu_seconds(psutil.Process(client.pid))
    except Exception:
        return None


def _work_units(workload: str, p: dict[str, Any]) -> tuple[str, float] | None:
    """What one command of ``workload`` did, warm-ups included (see workloads.py)."""
    if workload == "unary":
        return "call", p["warmup"] + p["calls"]
    if workload == "concurrent":
        return "call", p["callers"] * (2 + p["calls_per_caller"])
    if workload == "stream":
        return "msg", p["messages"] + min(1000, p["messages"])
    if workload == "bulk":
        return "MiB", p["bytes"] / (1 << 20) + 1
    if workload == "lossy-unary":
        return "call", p["warmup"] + p["calls"]
    if workload == "lossy-streams":
        return "call", p["callers"] * (1 + p["calls_per_caller"])
    if workload == "lossy-bulk":
        return "MiB", (p["bytes"] + p["warmup_bytes"]) / (1 << 20)
    return None


def _cpu_cost(
    workload: str,
    params: dict[str, Any],
    before: tuple[float, float] | None,
    after: tuple[float, float] | None,
) -> dict[str, Any]:
    """Process CPU time the command cost each side: stable even when latency is noisy."""
    if before is None or after is None:
        return {}
    server_s, client_s = after[0] - before[0], after[1] - before[1]
    cost: dict[str, Any] = {"server_cpu_s": round(server_s, 3), "client_cpu_s": round(client_s, 3)}
    units = _work_units(workload, params)
    if units is not None:
        unit, count = units
        cost["cpu_unit"] = unit
        cost["server_cpu_us_per_unit"] = round(server_s / count * 1e6, 1)
        cost["client_cpu_us_per_unit"] = round(client_s / count * 1e6, 1)
    return cost


async def _run_idle(stack: str, certs: Path, params: dict[str, Any], log: Log) -> dict[str, Any]:
    count = params["connections"]
    session = StackSession(stack, certs, max_connections=count + 64)
    t0 = time.monotonic()
    try:
        server, client = await session.ensure()
        server_ps = psutil.Process(server.pid)
        client_ps = psutil.Process(client.pid)
        await client.request({"cmd": "idle_open", "count": 1}, 60)  # code paths warm
        await asyncio.sleep(params["settle_s"])
        rss_before = server_ps.memory_info().rss
        opened = await client.request({"cmd": "idle_open", "count": count}, 60 + 0.5 * count)
        await asyncio.sleep(params["settle_s"])
        rss_open = server_ps.memory_info().rss
        server_cpu0, client_cpu0 = _cpu_seconds(server_ps), _cpu_seconds(client_ps)
        w0 = time.monotonic()
        await asyncio.sleep(params["window_s"])
        window = time.monotonic() - w0
        server_cpu = _cpu_seconds(server_ps) - server_cpu0
        client_cpu = _cpu_seconds(client_ps) - client_cpu0
        rss_after = server_ps.memory_info().rss
        await client.request({"cmd": "idle_close"}, 60 + 0.1 * count)
        result: dict[str, Any] = {
            "connections": count,
            "open_seconds": opened["seconds"],
            "server_rss_before_mib": round(rss_before / (1 << 20), 2),
            "server_rss_open_mib": round(rss_open / (1 << 20), 2),
            "server_rss_after_window_mib": round(rss_after / (1 << 20), 2),
            "rss_per_conn_kib": round((max(rss_open, rss_after) - rss_before) / count / 1024, 1),
            "window_s": round(window, 2),
            "server_cpu_pct": round(100 * server_cpu / window, 2),
            "client_cpu_pct": round(100 * client_cpu / window, 2),
            "server_cpu_ms_per_conn_per_min": round(1000 * server_cpu / window * 60 / count, 3),
        }
    except (ChildError, psutil.Error) as exc:
        result = {"error": str(exc)}
        await session.abort()
    finally:
        await session.stop()
    log(f"  {stack:14s} {'idle':11s} {_brief(result)}  ({time.monotonic() - t0:.1f}s)")
    return result


_BRIEF_KEYS = (
    "error",
    "skipped",
    "cold_p50_ms",
    "resumed_p50_ms",
    "p50_us",
    "p99_us",
    "p50_ms",
    "p99_ms",
    "calls_per_s",
    "msgs_per_s",
    "mbit_per_s",
    "rss_per_conn_kib",
    "server_cpu_pct",
    "server_cpu_us_per_unit",
    "client_cpu_us_per_unit",
)


def _brief(result: dict[str, Any]) -> str:
    text = " ".join(f"{k}={result[k]}" for k in _BRIEF_KEYS if k in result)
    link = result.get("link")
    if link:
        text += f" loss c2s/s2c={link['c2s']['loss_pct']}%/{link['s2c']['loss_pct']}%"
    return text


async def run_all(
    stacks: list[str],
    workloads: list[str],
    params: dict[str, Any],
    log: Log = print,
    log_dir: Path | None = None,
    rounds: int = 1,
    link: linklab.LinkSpec = LOSSY_LINK,
    quic_cc: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every workload for every stack, in this run; returns ``{stack: {workload: result}}``.

    With ``rounds`` > 1 the per-call workloads run that many times, the stack order
    rotating each round so that no stack always meets the same background load; each
    figure is then the median over the rounds (every round is kept under ``"rounds"``).
    The idle-connections workload runs once, in the first round. Children's stderr
    (tracebacks of failed workloads) goes to ``log_dir/<child>.log``. The ``lossy-*``
    workloads run across a fresh ``link`` per stack and round. ``quic_cc`` names the
    QUIC stacks' congestion controller (``None``: ``QUICConfig``'s default).
    """
    from quic_rpc.quic import QUICConfig

    Child.log_dir = log_dir
    if quic_cc is not None and quic_cc not in QUIC_CC_CHOICES:
        raise ValueError(f"unknown QUIC congestion control {quic_cc!r}")
    StackSession.quic_cc = quic_cc
    quic_cc_used = quic_cc or QUICConfig().congestion_control
    unknown = (set(stacks) - set(STACKS + EXTRA_STACKS)) | (set(workloads) - set(WORKLOADS))
    if unknown:
        raise ValueError(f"unknown stacks or workloads: {sorted(unknown)}")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    per_call = [w for w in workloads if w != "idle" and w not in LOSSY_WORKLOADS]
    lossy = [w for w in workloads if w in LOSSY_WORKLOADS]
    collected: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in stacks}
    idle: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="quicshift-bench-") as tmp:
        certs = Path(tmp)
        write_certs(certs, extra_ips=(linklab.SERVER_ADDR,))
        for round_index in range(rounds):
            shift = round_index % len(stacks)
            for stack in stacks[shift:] + stacks[:shift]:
                log(f"{stack}:" if rounds == 1 else f"{stack} (round {round_index + 1}/{rounds}):")
                if per_call:
                    got = await _run_workloads(stack, certs, per_call, params, log)
                    for workload, result in got.items():
                        collected[stack].setdefault(workload, []).append(result)
                if lossy:
                    got = await _run_lossy(stack, certs, lossy, params, log, link)
                    for workload, result in got.items():
                        collected[stack].setdefault(workload, []).append(result)
                if "idle" in workloads and round_index == 0:
                    idle[stack] = await _run_idle(stack, certs, params["idle"], log)
    results: dict[str, dict[str, Any]] = {}
    for stack in stacks:
        results[stack] = {w: combine_rounds(collected[stack][w]) for w in per_call + lossy}
        if stack in QUIC_STACKS:
            for result in results[stack].values():
                result["quic_congestion_control"] = quic_cc_used
        if stack in idle:
            results[stack]["idle"] = idle[stack]
    return results


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds: the median of every number, the rest from round 1.

    Rounds that failed are left out (listed under ``"errors"``); if all failed, the
    result is the first error.
    """
    if len(rounds) == 1:
        return rounds[0]
    good = [r for r in rounds if "error" not in r]
    errors = [r["error"] for r in rounds if "error" in r]
    if not good:
        return {"error": errors[0], "errors": errors}
    combined = _median_of(good)
    combined["rounds"] = rounds
    if errors:
        combined["errors"] = errors
    return combined


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    combined: dict[str, Any] = {}
    for key, first in results[0].items():
        values = [r.get(key) for r in results]
        if isinstance(first, bool) or not all(isinstance(v, int | float) for v in values):
            if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
                combined[key] = _median_of([v for v in values if isinstance(v, dict)])
            else:
                combined[key] = first
        else:
            combined[key] = round(statistics.median(float(v) for v in values if v is not None), 3)
    return combined


if __name__ == "__main__":
    _child_main()
