"""Sharing a bottleneck: two bulk flows through the same emulated link at the same time.

    python -m benchmarks.fairness [--seconds 30] [--loss 0,1]
        [--pairs quic:bbr+tcp:cubic,quic:bbr+tcp:bbr,tcp:bbr+tcp:cubic,quic:cubic+tcp:cubic]
        [--out benchmarks/results]

QUIC's congestion controller is its own (``QUICConfig.congestion_control``, BBR by
default); TCP's is the kernel's. A model-based controller next to a loss-based one can
take more than its share, or less, so this measures it. Each pair names two flows,
``quic:<cc>`` (one ``quic_rpc.quic`` stream) or ``tcp:<cc>`` (one plain socket with
``TCP_CONGESTION``); both upload from the client namespace to the server namespace of a
:class:`~benchmarks.linklab.LossyLink` (50 Mbit/s, 40 ms RTT, one-BDP tail-drop queue,
the given random loss), first each alone, then together. The server counts what arrives
per flow; the figures are goodput after a warm-up, the first flow's share of the total,
and Jain's fairness index ((a + b)² / 2(a² + b²): 1.0 is an even split, 0.5 one flow
taking everything). ``tcp:bbr+tcp:cubic`` is the kernel's own BBR against CUBIC, the
reference for what a BBR flow does to a CUBIC one on this link.

Needs root, ``ip`` and ``/dev/net/tun`` (as the lossy-link workloads). Writes
``<out>/fairness.json``; figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .linklab import DEFAULT_LINK, SERVER_ADDR, LinkSpec, LossyLink, available

QUIC_PORT = 4600
TCP_PORTS = (4601, 4602)
CHUNK = 64 * 1024
SAMPLE_S = 0.5
DEFAULT_PAIRS = (
    "quic:bbr+tcp:cubic",
    "quic:bbr+tcp:bbr",
    "tcp:bbr+tcp:cubic",
    "quic:cubic+tcp:cubic",
)
CONTROLLERS = {"quic": ("reno", "cubic", "bbr"), "tcp": ("reno", "cubic", "bbr")}

Flow = tuple[str, str]
"""(kind, congestion controller): ``("quic", "bbr")``, ``("tcp", "cubic")``."""


def parse_pair(text: str) -> tuple[Flow, Flow]:
    """``"quic:bbr+tcp:cubic"`` -> ``(("quic", "bbr"), ("tcp", "cubic"))``."""
    flows: list[Flow] = []
    for part in text.split("+"):
        kind, _, cc = part.partition(":")
        if kind not in CONTROLLERS or cc not in CONTROLLERS[kind]:
            raise ValueError(
                f"bad flow {part!r}: expected quic:<cc> or tcp:<cc>, cc in reno/cubic/bbr"
            )
        flows.append((kind, cc))
    if len(flows) != 2 or flows == [("quic", flows[0][1]), ("quic", flows[1][1])]:
        raise ValueError(f"bad pair {text!r}: two flows, at most one of them QUIC")
    return flows[0], flows[1]


def counters(flows: Sequence[Flow]) -> list[str]:
    """The server-side counter each flow lands in: ``quic``, ``tcp1``, ``tcp2``."""
    names: list[str] = []
    for kind, _ in flows:
        names.append(
            "quic" if kind == "quic" else f"tcp{1 + sum(n.startswith('tcp') for n in names)}"
        )
    return names


def goodput(samples: Sequence[dict[str, Any]], key: str, warmup: float) -> float:
    """Mbit/s of counter ``key`` from the first sample at or after ``warmup`` to the last."""
    kept = [s for s in samples if s["t"] >= warmup]
    if len(kept) < 2:
        return 0.0
    first, last = kept[0], kept[-1]
    return float((last[key] - first[key]) * 8 / (last["t"] - first["t"]) / 1e6)


def jain(a: float, b: float) -> float:
    """Jain's fairness index of two rates."""
    return round((a + b) ** 2 / (2 * (a * a + b * b)), 3) if a or b else 0.0


# -- the two ends (run inside the namespaces) -------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from benchmarks.stacks import _quic_credentials
    from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket
    from quic_rpc.streams import ByteStream

    counts = {"quic": 0, "tcp1": 0, "tcp2": 0}

    async def quic_sink(stream: ByteStream) -> None:
        while data := await stream.receive(1 << 20):
            counts["quic"] += len(data)

    def tcp_sink(key: str) -> Any:
        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1 << 20):
                counts[key] += len(data)
            writer.close()

        return sink

    sock = await QUICSocket.bind(args.host, QUIC_PORT)
    creds = _quic_credentials(Path(args.certs), "server")
    server = QUICServer(sock, creds, QUICConfig(idle_timeout=60.0), quic_sink)
    await server.start()
    tcp1 = await asyncio.start_server(tcp_sink("tcp1"), args.host, TCP_PORTS[0])
    tcp2 = await asyncio.start_server(tcp_sink("tcp2"), args.host, TCP_PORTS[1])
    async with tcp1, tcp2:
        print(json.dumps({"ready": True}), flush=True)
        start = time.monotonic()
        while True:
            await asyncio.sleep(SAMPLE_S)
            print(json.dumps({"t": round(time.monotonic() - start, 3), **counts}), flush=True)


async def _send(args: argparse.Namespace) -> None:
    from benchmarks.stacks import _quic_credentials
    from quic_rpc.quic import QUICConfig, QUICSocket, connect

    chunk = b"f" * CHUNK
    deadline = time.monotonic() + args.seconds

    async def quic_flow(cc: str) -> None:
        config = QUICConfig(congestion_control=cc, idle_timeout=60.0)  # type: ignore[arg-type]
        sock = await QUICSocket.bind("0.0.0.0", 0)
        creds = _quic_credentials(Path(args.certs), "client")
        conn = await connect(sock, args.server, QUIC_PORT, creds, config, "localhost")
        stream = await conn.open_stream()
        while time.monotonic() < deadline:
            await stream.send(chunk)
        stream.reset(0)
        conn.abort()
        await sock.close()

    async def tcp_flow(cc: str, port: int) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, (args.server, port))
        _, writer = await asyncio.open_connection(sock=raw)
        while time.monotonic() < deadline:
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()

    runs = []
    ports = iter(TCP_PORTS)
    for spec in args.flow:
        kind, cc = spec.split(":")
        runs.append(quic_flow(cc) if kind == "quic" else tcp_flow(cc, next(ports)))
    await asyncio.gather(*runs)


# -- the driver --------------------------------------------------------------------------


async def _run(link: LossyLink, certs: Path, seconds: float, flows: Sequence[Flow]) -> list[float]:
    """Run ``flows`` at the same time; their goodputs in Mbit/s, in order."""
    py = sys.executable
    serve = await asyncio.create_subprocess_exec(
        *link.exec_prefix("server"), py, "-m", "benchmarks.fairness", "_serve",
        "--host", link.server_addr, "--certs", str(certs),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        ready = json.loads(await asyncio.wait_for(serve.stdout.readline(), 60))
        if not ready.get("ready"):
            raise RuntimeError(f"fairness server failed: {ready}")
        send = await asyncio.create_subprocess_exec(
            *link.exec_prefix("client"), py, "-m", "benchmarks.fairness", "_send",
            "--server", link.server_addr, "--certs", str(certs), "--seconds", str(seconds),
            *(arg for kind, cc in flows for arg in ("--flow", f"{kind}:{cc}")),
        )  # fmt: skip
        keys = counters(flows)
        samples: list[dict[str, Any]] = []
        started: float | None = None
        while send.returncode is None:
            sample = json.loads(await asyncio.wait_for(serve.stdout.readline(), 30))
            if started is None and any(sample[k] for k in keys):
                started = sample["t"]
            if started is not None:
                samples.append({**sample, "t": sample["t"] - started})
            if sample["t"] > seconds + 60:  # the sender hangs: stop it, fail below
                send.kill()
        if await send.wait():
            raise RuntimeError(f"fairness sender exited with {send.returncode}")
        warmup = min(5.0, seconds / 3)
        return [round(goodput(samples, key, warmup), 2) for key in keys]
    finally:
        if serve.returncode is None:
            serve.kill()
        await serve.wait()


async def measure(
    pairs: Sequence[tuple[Flow, Flow]], losses: Sequence[float], seconds: float, certs: Path
) -> list[dict[str, Any]]:
    """One row per (loss, pair): each flow alone (measured once per loss), then together."""
    rows: list[dict[str, Any]] = []
    for loss in losses:
        spec: LinkSpec = replace(DEFAULT_LINK, loss_pct=loss, tcp_congestion_control=None)
        alone: dict[Flow, float] = {}
        for pair in pairs:
            for flow in pair:
                if flow not in alone:
                    async with LossyLink(spec) as link:
                        alone[flow] = (await _run(link, certs, seconds, [flow]))[0]
            async with LossyLink(spec) as link:
                a, b = await _run(link, certs, seconds, pair)
            rows.append(
                {
                    "loss_pct": loss,
                    "pair": "+".join(f"{kind}:{cc}" for kind, cc in pair),
                    "alone_mbit": [alone[pair[0]], alone[pair[1]]],
                    "together_mbit": [a, b],
                    "first_share": round(a / (a + b), 3) if a + b else 0.0,
                    "jain": jain(a, b),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| loss | flows (A + B) | A alone | B alone | together: A / B (Mbit/s) | A's share | Jain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["together_mbit"]
        lines.append(
            f"| {r['loss_pct']:g}% | {r['pair'].replace('+', ' + ')} | {r['alone_mbit'][0]} | "
            f"{r['alone_mbit'][1]} | {a} / {b} | {r['first_share']:.0%} | {r['jain']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fairness", description=__doc__)
    parser.add_argument("role", nargs="?", default="drive", choices=["drive", "_serve", "_send"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--loss", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 1.0]
    )
    parser.add_argument("--pairs", type=lambda s: [parse_pair(p) for p in s.split(",")],
                        default=[parse_pair(p) for p in DEFAULT_PAIRS])  # fmt: skip
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--flow", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "_serve":
        asyncio.run(_serve(args))
        return 0
    if args.role == "_send":
        asyncio.run(_send(args))
        return 0
    ok, reason = available()
    if not ok:
        print(f"skipped: {reason}")
        return 0
    from benchmarks._common import write_certs

    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_certs(certs, extra_ips=[SERVER_ADDR])
        rows = asyncio.run(measure(args.pairs, args.loss, args.seconds, certs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "fairness", "link": DEFAULT_LINK.describe(), "seconds": args.seconds}
    (out / "fairness.json").write_text(json.dumps({**result, "rows": rows}, indent=2) + "\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
