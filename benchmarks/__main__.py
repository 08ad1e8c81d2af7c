"""``python -m benchmarks``: every workload on every stack, side by side, in one run.

    python -m benchmarks [--quick] [--scale F] [--workloads a,b] [--stacks x,y]
                         [--out benchmarks/results]

Stacks: grpc-direct (grpc.aio, TCP + TLS), grpc-proxy (grpc.aio through the legacy
forward + reverse proxy pair), adapter-quic (migration.quic_grpc over QUIC), native-quic
(quic_rpc over QUIC); on request native-quic-lo (native QUIC with 16,000-byte datagrams
and pacing off, loopback/LAN only). Workloads: connect, unary, concurrent, stream, bulk, idle.
Writes ``<out>/stacks-<quick|full>.json``, ``<out>/latest.md`` and ``<out>/latest.png``
(the chart needs matplotlib). Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

from ._common import ROOT, machine_info
from .harness import run_all
from .report import build_report, write_outputs
from .stacks import EXTRA_STACKS, STACKS
from .workloads import WORKLOADS, workload_params


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
    args = parser.parse_args(argv)
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
    results = asyncio.run(
        run_all(
            stacks,
            workloads,
            {w: params[w] for w in workloads},
            log_dir=args.out / "logs",
            rounds=args.rounds,
        )
    )
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
