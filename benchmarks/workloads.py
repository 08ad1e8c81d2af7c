"""The workloads: their sizes, the client-side code that runs them, what they report.

Each workload's client part runs in the client process against one stack's
:class:`~benchmarks.stacks.ClientSide`. The idle-connections workload also needs the
server process's RSS and CPU time; :mod:`benchmarks.harness` measures those around the
client's ``idle_open`` / ``idle_close`` steps.

The ``lossy-*`` workloads (:data:`LOSSY_WORKLOADS`) run with the server and the client in
two network namespaces joined by the userspace link of :mod:`benchmarks.linklab`
(:data:`LOSSY_LINK`: 40 ms RTT, 1 % loss per direction): sequential unary calls, one
bulk upload, and many concurrent callers on one connection — the case where a lost
TCP segment stalls every HTTP/2 stream behind it, and a lost QUIC packet only the
streams whose data it carried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from ._common import summarize_latencies
from .linklab import DEFAULT_LINK, LinkSpec
from .stacks import BenchConnection, ClientSide

__all__ = [
    "LOSSY_LINK",
    "LOSSY_WORKLOADS",
    "METRICS",
    "TARGETS",
    "WORKLOADS",
    "Metric",
    "Target",
    "workload_params",
]

LOSSY_WORKLOADS = ("lossy-unary", "lossy-bulk", "lossy-streams")
WORKLOADS = ("connect", "unary", "concurrent", "stream", "bulk", "idle", *LOSSY_WORKLOADS)
LOSSY_LINK: LinkSpec = DEFAULT_LINK
"""The link the lossy workloads run across (the kernel's default TCP congestion control)."""

_MIB = 1 << 20
PAYLOAD = b"x" * 64


@dataclass(frozen=True, slots=True)
class Metric:
    """One reported figure: where it is in a workload's result and which way is better."""

    workload: str
    key: str
    label: str
    unit: str
    better: Literal["lower", "higher"]


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for the QUIC stacks: a ratio to grpc-direct, or an absolute bound."""

    workload: str
    key: str
    op: Literal["<=", ">="]
    value: float
    ratio: bool = True

    def describe(self) -> str:
        return f"{self.op} {self.value:g}{'x' if self.ratio else ''}"

    def met(self, value: float) -> bool:
        return value <= self.value if self.op == "<=" else value >= self.value


METRICS: tuple[Metric, ...] = (
    Metric("connect", "cold_p50_ms", "cold connect + 1st call p50", "ms", "lower"),
    Metric("connect", "resumed_p50_ms", "resumed connect + 1st call p50", "ms", "lower"),
    Metric("unary", "p50_us", "unary p50", "µs", "lower"),
    Metric("unary", "p99_us", "unary p99", "µs", "lower"),
    Metric("unary", "calls_per_s", "unary sequential", "calls/s", "higher"),
    Metric("unary", "server_cpu_us_per_unit", "unary: server CPU per call", "µs", "lower"),
    Metric("unary", "client_cpu_us_per_unit", "unary: client CPU per call", "µs", "lower"),
    Metric("concurrent", "calls_per_s", "100 concurrent callers", "calls/s", "higher"),
    Metric("concurrent", "p99_us", "100 concurrent callers p99", "µs", "lower"),
    Metric("stream", "msgs_per_s", "server streaming", "msgs/s", "higher"),
    Metric("stream", "server_cpu_us_per_unit", "streaming: server CPU per msg", "µs", "lower"),
    Metric("bulk", "mbit_per_s", "bulk upload, one stream", "Mbit/s", "higher"),
    Metric("bulk", "client_cpu_us_per_unit", "bulk: sender CPU per MiB", "µs", "lower"),
    Metric("bulk", "server_cpu_us_per_unit", "bulk: receiver CPU per MiB", "µs", "lower"),
    Metric("idle", "rss_per_conn_kib", "server RSS per idle connection", "KiB", "lower"),
    Metric("idle", "server_cpu_pct", "server CPU while idle", "% of a core", "lower"),
    Metric("idle", "client_cpu_pct", "client CPU while idle", "% of a core", "lower"),
    Metric("lossy-unary", "p50_ms", "lossy link: unary p50", "ms", "lower"),
    Metric("lossy-unary", "p99_ms", "lossy link: unary p99", "ms", "lower"),
    Metric("lossy-bulk", "mbit_per_s", "lossy link: bulk upload, one stream", "Mbit/s", "higher"),
    Metric("lossy-streams", "calls_per_s", "lossy link: concurrent callers", "calls/s", "higher"),
    Metric("lossy-streams", "p99_ms", "lossy link: concurrent callers p99", "ms", "lower"),
)

TARGETS: tuple[Target, ...] = (
    Target("connect", "cold_p50_ms", "<=", 1.0),
    Target("unary", "p50_us", "<=", 0.7),
    Target("unary", "p99_us", "<=", 0.7),
    Target("concurrent", "calls_per_s", ">=", 1.5),
    Target("stream", "msgs_per_s", ">=", 1.0),
    Target("bulk", "mbit_per_s", ">=", 0.5),
    Target("idle", "rss_per_conn_kib", "<=", 64.0, ratio=False),
    Target("lossy-unary", "p50_ms", "<=", 0.7),
    Target("lossy-unary", "p99_ms", "<=", 0.7),
    Target("lossy-bulk", "mbit_per_s", ">=", 1.0),
    Target("lossy-streams", "calls_per_s", ">=", 1.0),
)


def workload_params(quick: bool, scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """Sizes of every workload for a full or quick run, multiplied by ``scale``."""

    def n(full: int, fast: int, floor: int = 1) -> int:
        return max(floor, round((fast if quick else full) * scale))

    return {
        "connect": {"repeats": n(40, 10, 3)},
        "unary": {"warmup": n(500, 100, 10), "calls": n(5000, 1000, 50), "size": 64},
        "concurrent": {"callers": 100, "calls_per_caller": n(100, 20, 2), "size": 64},
        "stream": {"messages": n(100_000, 10_000, 100), "size": 64},
        "bulk": {"bytes": n(256, 16, 1) * _MIB, "chunk": 64 * 1024},
        "idle": {
            "connections": n(1000, 100, 5),
            "settle_s": 2.0 if not quick else 0.5,
            # at least one keepalive interval (5 s) even in quick mode
            "window_s": 15.0 if not quick else 5.0,
        },
        # Across the lossy link every call costs at least one 40 ms round trip.
        "lossy-unary": {"warmup": n(20, 5, 2), "calls": n(500, 50, 10), "size": 64},
        "lossy-bulk": {
            "bytes": n(16384, 1024, 64) * 1024,  # 16 MiB, 1 MiB quick
            "warmup_bytes": n(256, 128, 16) * 1024,
            "chunk": 64 * 1024,
        },
        # Small calls: 50 of them per round trip fit in a few packets, so the connection is
        # not congestion-window bound (1 KiB calls would need ~35 packets per round trip,
        # more than a loss-based controller keeps open at 1 % loss) and what the figure
        # shows is how far one lost packet stalls the other calls: head-of-line blocking.
        "lossy-streams": {"callers": 50, "calls_per_caller": n(100, 10, 2), "size": 64},
    }


# -- client-side runners -----------------------------------------------------------------

Runner = Callable[
    [ClientSide, BenchConnection, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]
]


async def _first_call(side: ClientSide, resume: bool) -> float:
    clock = time.perf_counter
    t0 = clock()
    conn = await side.connect(resume=resume)
    await conn.unary(PAYLOAD)
    elapsed = clock() - t0
    await conn.close()
    return elapsed


def _ms(summary: dict[str, float]) -> dict[str, float]:
    return {
        k.replace("_us", "_ms"): (round(v / 1000, 3) if k.endswith("_us") else v)
        for k, v in summary.items()
    }


async def run_connect(side: ClientSide, conn: BenchConnection, p: dict[str, Any]) -> dict[str, Any]:
    """Cold and (where the stack has it) resumed connects; ``*_client_cpu_ms`` is the
    client process's CPU time per connect, first call and close included."""
    cpu = time.process_time
    await _first_call(side, False)  # warm up lazy imports and code paths
    cpu0 = cpu()
    cold = [await _first_call(side, False) for _ in range(p["repeats"])]
    result: dict[str, Any] = {"cold": _ms(summarize_latencies(cold))}
    result["cold_p50_ms"] = result["cold"]["p50_ms"]
    result["cold_client_cpu_ms"] = round((cpu() - cpu0) / p["repeats"] * 1000, 3)
    result["resumption"] = side.resumption_note
    if side.supports_resumption:
        await _first_call(side, True)  # fills the session cache
        cpu0 = cpu()
        resumed = [await _first_call(side, True) for _ in range(p["repeats"])]
        result["resumed"] = _ms(summarize_latencies(resumed))
        result["resumed_p50_ms"] = result["resumed"]["p50_ms"]
        result["resumed_client_cpu_ms"] = round((cpu() - cpu0) / p["repeats"] * 1000, 3)
    return result


async def run_unary(side: ClientSide, conn: BenchConnection, p: dict[str, Any]) -> dict[str, Any]:
    payload = b"x" * p["size"]
    for _ in range(p["warmup"]):
        if await conn.unary(payload) != payload:
            raise RuntimeError("echo mismatch")
    clock = time.perf_counter
    samples: list[float] = []
    started = clock()
    for _ in range(p["calls"]):
        t0 = clock()
        await conn.unary(payload)
        samples.append(clock() - t0)
    total = clock() - started
    summary = summarize_latencies(samples)
    return {
        **summary,
        "calls_per_s": round(p["calls"] / total, 1),
    }


async def run_concurrent(
    side: ClientSide, conn: BenchConnection, p: dict[str, Any]
) -> dict[str, Any]:
    samples, total = await _concurrent_callers(conn, p, warmup_calls=2)
    return {
        **summarize_latencies(samples),
        "calls_per_s": round(len(samples) / total, 1),
        "callers": p["callers"],
    }


async def _concurrent_callers(
    conn: BenchConnection, p: dict[str, Any], *, warmup_calls: int
) -> tuple[list[float], float]:
    """``callers`` tasks each make ``calls_per_caller`` echo calls of ``size`` bytes one
    after another on ``conn`` (after ``warmup_calls`` each): every call's latency and
    the seconds until the last caller finished."""
    payload = b"x" * p["size"]
    clock = time.perf_counter
    samples: list[float] = []

    async def caller(calls: int, record: bool) -> None:
        for _ in range(calls):
            t0 = clock()
            if await conn.unary(payload) != payload:
                raise RuntimeError("echo mismatch")
            if record:
                samples.append(clock() - t0)

    await asyncio.gather(*(caller(warmup_calls, False) for _ in range(p["callers"])))
    started = clock()
    await asyncio.gather(*(caller(p["calls_per_caller"], True) for _ in range(p["callers"])))
    return samples, clock() - started


async def run_stream(side: ClientSide, conn: BenchConnection, p: dict[str, Any]) -> dict[str, Any]:
    await conn.stream(min(1000, p["messages"]), p["size"])  # warm up
    clock = time.perf_counter
    t0 = clock()
    got = await conn.stream(p["messages"], p["size"])
    elapsed = clock() - t0
    if got != p["messages"]:
        raise RuntimeError(f"received {got} of {p['messages']} messages")
    return {"msgs_per_s": round(got / elapsed, 1), "seconds": round(elapsed, 3)}


async def run_bulk(side: ClientSide, conn: BenchConnection, p: dict[str, Any]) -> dict[str, Any]:
    elapsed = await _timed_upload(conn, p["bytes"], p["chunk"], warmup=_MIB)
    return {
        "mbit_per_s": round(p["bytes"] * 8 / elapsed / 1e6, 1),
        "seconds": round(elapsed, 3),
        "mib": p["bytes"] // _MIB,
    }


async def _timed_upload(
    conn: BenchConnection, total: int, chunk_size: int, *, warmup: int
) -> float:
    """Upload ``warmup`` bytes (growing windows), then ``total`` bytes, checked against the
    server's count: the seconds the second upload took."""
    chunk = b"b" * chunk_size
    await conn.bulk(warmup, chunk)
    clock = time.perf_counter
    t0 = clock()
    got = await conn.bulk(total, chunk)
    elapsed = clock() - t0
    if got != total:
        raise RuntimeError(f"server counted {got} of {total} bytes")
    return elapsed


def _to_ms(summary: dict[str, float]) -> dict[str, float]:
    """A latency summary in ms (keys ``p50_ms``, ...) instead of µs."""
    return {
        (k[:-3] + "_ms" if k.endswith("_us") else k): (
            round(v / 1000, 2) if k.endswith("_us") else v
        )
        for k, v in summary.items()
    }


async def run_lossy_unary(
    side: ClientSide, conn: BenchConnection, p: dict[str, Any]
) -> dict[str, Any]:
    """Sequential unary calls across the lossy link: latency p50 / p99 in ms."""
    result = await run_unary(side, conn, p)
    return {**_to_ms(result), "calls_per_s": result["calls_per_s"]}


async def run_lossy_bulk(
    side: ClientSide, conn: BenchConnection, p: dict[str, Any]
) -> dict[str, Any]:
    """One upload of ``bytes`` on one stream across the lossy link, in Mbit/s."""
    elapsed = await _timed_upload(conn, p["bytes"], p["chunk"], warmup=p["warmup_bytes"])
    return {
        "mbit_per_s": round(p["bytes"] * 8 / elapsed / 1e6, 2),
        "seconds": round(elapsed, 3),
        "mib": round(p["bytes"] / _MIB, 3),
    }


async def run_lossy_streams(
    side: ClientSide, conn: BenchConnection, p: dict[str, Any]
) -> dict[str, Any]:
    """``callers`` concurrent unary callers on one connection across the lossy link.

    Each caller makes ``calls_per_caller`` calls of ``size`` bytes one after another, so
    about ``callers`` calls are in flight at any time: the head-of-line blocking case.
    Reports calls/s, the time until the last caller finished, and per-call latency.
    """
    samples, total = await _concurrent_callers(conn, p, warmup_calls=1)
    return {
        **_to_ms(summarize_latencies(samples)),
        "calls_per_s": round(len(samples) / total, 1),
        "seconds": round(total, 3),
        "callers": p["callers"],
    }


RUNNERS: dict[str, Runner] = {
    "connect": run_connect,
    "unary": run_unary,
    "concurrent": run_concurrent,
    "stream": run_stream,
    "bulk": run_bulk,
    "lossy-unary": run_lossy_unary,
    "lossy-bulk": run_lossy_bulk,
    "lossy-streams": run_lossy_streams,
}


async def open_idle(side: ClientSide, count: int, parallel: int = 16) -> list[BenchConnection]:
    """``count`` connections, each established by one unary call, then left idle."""
    conns: list[BenchConnection] = []
    gate = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with gate:
            conn = await side.connect()
            conns.append(conn)
            await conn.unary(PAYLOAD)

    await asyncio.gather(*(one() for _ in range(count)))
    return conns


async def close_idle(conns: list[BenchConnection], parallel: int = 64) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(conn: BenchConnection) -> None:
        async with gate:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                pass

    await asyncio.gather(*(one(c) for c in conns))
