"""``python -m benchmarks``: every workload on every stack, side by side, in one run.

    python -m benchmarks [--quick] [--scale F] [--workloads a,b] [--stacks x,y]
                         [--out benchmarks/results] [--lossy-tcp-cc NAME]
                         [--quic-cc {reno,cubic,bbr}]

Stacks: grpc-direct (grpc.aio, TCP + TLS), grpc-proxy (grpc.aio through the legacy
forward + reverse proxy pair), adapter-quic (migration.quic_grpc over QUIC), native-quic
(quic_rpc over QUIC); on request native-quic-1452 (native QUIC with its loopback profile off:
1,452-byte datagrams and pacing, as across any real network). Workloads: connect, unary, concurrent, stream, bulk, idle
on loopback, and lossy-unary, lossy-bulk, lossy-streams across an emulated lossy link (two
network namespaces, 40 ms RTT, 1% loss per direction; needs root, ``ip`` and /dev/net/tun,
otherwise reported as skipped; see benchmarks/linklab.py).
Writes ``<out>/stacks-<quick|full>.json``, ``<out>/latest.md`` and ``<out>/latest.png``
(the chart needs matplotlib). Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ._common import ROOT, machine_info
from .harness import run_all
from .report import build_report, write_outputs
from .stacks import EXTRA_STACKS, QUIC_CC_CHOICES, STACKS
from .workloads import LOSSY_LINK, WORKLOADS, workload_params

T = TypeVar("T")


def _names(
    text: str, allowed: tuple[str, ...], what: str, parser: argparse.ArgumentParser
) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        parser.error(
            f"unknown or no {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return names


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does, so its cleanup runs (the lossy
    link's namespaces, the child processes)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every workload's size (default 1)"
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument(
        "--stacks",
        default=",".join(STACKS),
        help=f"comma-separated (default: all; also available: {', '.join(EXTRA_STACKS)})",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the per-call workloads, rotating the stack order; report medians "
        "(idle runs once). Useful on a busy machine.",
    )
    parser.add_argument(
        "--lossy-tcp-cc",
        metavar="NAME",
        help="TCP congestion control in the lossy link's namespaces (default: the kernel's "
        "default; a namespace accepts only net.ipv4.tcp_allowed_congestion_control, "
        "e.g. reno to compare with the QUIC stacks' Reno)",
    )
    parser.add_argument(
        "--quic-cc",
        choices=QUIC_CC_CHOICES,
        help="congestion control of the QUIC stacks (default: QUICConfig's, reno); "
        "recorded in each of their results (quic_congestion_control)",
    )
    args = parser.parse_args(argv)
    try:
        link = replace(LOSSY_LINK, tcp_congestion_control=args.lossy_tcp_cc)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.scale <= 100:
        parser.error("--scale must be in (0, 100]")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be in [1, 20]")
    workloads = _names(args.workloads, WORKLOADS, "workloads", parser)
    stacks = _names(args.stacks, STACKS + EXTRA_STACKS, "stacks", parser)
    params = workload_params(args.quick, args.scale)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.monotonic()
    print(
        f"{command}\n{machine['cpu_count']} CPUs, {machine['cpu_model']}, load {machine.get('load_average')}"
    )
    for old in (args.out / "logs").glob("*.log"):
        old.unlink()
    try:
        results = asyncio.run(
            _cancel_on_sigterm(
                run_all(
                    stacks,
                    workloads,
                    {w: params[w] for w in workloads},
                    log_dir=args.out / "logs",
                    rounds=args.rounds,
                    link=link,
                    quic_cc=args.quic_cc,
                )
            )
        )
    except asyncio.CancelledError:
        print("terminated", file=sys.stderr)
        return 143
    report = build_report(
        results,
        mode="quick" if args.quick else "full",
        scale=args.scale,
        rounds=args.rounds,
        command=command,
        machine=machine,
        params={w: params[w] for w in workloads},
        started_utc=started,
        duration_s=time.monotonic() - t0,
        link=link,
    )
    for path in write_outputs(report, args.out):
        print(f"wrote {path}")
    missed = [t for t in report["targets"] if t["met"] is False]
    print(
        f"targets: {sum(1 for t in report['targets'] if t['met'])} met, {len(missed)} missed, "
        f"{sum(1 for t in report['targets'] if t['met'] is None)} without data"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
