"""quic_rpc against grpc.aio, side by side in one run.

    python -m benchmarks.rpc_unary [--quick] [--stacks quic_rpc-quic,quic_rpc-tls,grpc-aio]

Two measurements per stack, each with the server in its own process on loopback:

* unary latency — sequential calls, 64-byte request and response: p50 / p99 / mean (µs)
  and calls per second;
* server streaming — one call that streams N 64-byte messages: messages per second
  (best of three runs).

Stacks: ``quic_rpc-quic`` (quic_rpc.rpc over quic_rpc.quic, mutual TLS 1.3),
``quic_rpc-tls`` (quic_rpc.rpc over the multiplexed TCP+TLS transport) and ``grpc-aio``
(grpc.aio over TCP+TLS with generic handlers, bytes in and out, no codegen). Stacks
whose packages are missing are skipped. Results go to ``benchmarks/results/rpc.json``
with each quic_rpc stack's ratio to grpc.aio (latency: lower is better, < 1 means
faster than grpc; throughput: higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import ssl
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ._common import percentile, write_certs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rpc.json"
STACKS = ("quic_rpc-quic", "quic_rpc-tls", "grpc-aio")
ECHO = "/bench.Bench/Echo"
STREAM = "/bench.Bench/Stream"
PAYLOAD = b"x" * 64
COUNT = struct.Struct(">Q")


def _available(stack: str) -> bool:
    need = {
        "quic_rpc-quic": "quic_rpc.quic",
        "quic_rpc-tls": "quic_rpc.transports.tcp",
        "grpc-aio": "grpc",
    }[stack]
    try:
        return importlib.util.find_spec(need) is not None
    except ModuleNotFoundError:
        return False


def _quic_credentials(certs: Path, role: str) -> Any:
    from quic_rpc.quic import TLSCredentials, ca_verifier

    return TLSCredentials.load(
        (certs / f"{role}.key").read_bytes(),
        (certs / f"{role}.pem").read_bytes(),
        ca_verifier((certs / "ca.pem").read_bytes()),
    )


# -- servers (child process) -------------------------------------------------------------


def _rpc_manifest() -> Any:
    from quic_rpc.rpc import ServerCallContext, server_streaming, unary

    async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
        return request

    async def stream(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        (n,) = COUNT.unpack(request)
        for _ in range(n):
            yield PAYLOAD

    return {ECHO: unary(echo), STREAM: server_streaming(stream)}


async def _serve_rpc_quic(certs: Path) -> int:
    from quic_rpc.quic import QUICServer, QUICSocket
    from quic_rpc.rpc import RPCServer

    server = RPCServer(_rpc_manifest())
    sock = await QUICSocket.bind("127.0.0.1", 0)
    quic = QUICServer(sock, _quic_credentials(certs, "server"), None, server.handle_stream)
    await quic.start()
    return int(sock.local_address[1])


async def _serve_rpc_tls(certs: Path) -> int:
    from quic_rpc.rpc import RPCServer
    from quic_rpc.transports.tcp import TCPServer

    server = RPCServer(_rpc_manifest())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    tcp = TCPServer()
    await tcp.start("127.0.0.1", 0, server.handle_stream, ssl=context)
    return tcp.port


async def _serve_grpc(certs: Path) -> int:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        (n,) = COUNT.unpack(request)
        for _ in range(n):
            yield PAYLOAD

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    _KEEP.append(server)
    return int(port)


_KEEP: list[Any] = []


async def _serve(stack: str, certs: Path) -> None:
    serve = {"quic_rpc-quic": _serve_rpc_quic, "quic_rpc-tls": _serve_rpc_tls}.get(
        stack, _serve_grpc
    )
    port = await serve(certs)
    print(port, flush=True)
    await asyncio.Event().wait()


# -- clients (this process) --------------------------------------------------------------

Unary = Callable[[bytes], Awaitable[bytes]]
Streaming = Callable[[int], Awaitable[int]]
Close = Callable[[], Awaitable[None]]


def _rpc_callers(client: Any) -> tuple[Unary, Streaming]:
    async def unary(payload: bytes) -> bytes:
        result: bytes = await client.unary(ECHO, payload)
        return result

    async def streaming(n: int) -> int:
        count = 0
        async for _ in client.server_streaming(STREAM, COUNT.pack(n)):
            count += 1
        return count

    return unary, streaming


async def _client_rpc_quic(certs: Path, port: int) -> tuple[Unary, Streaming, Close]:
    from quic_rpc.quic import QUICSocket, connect
    from quic_rpc.rpc import RPCClient

    sock = await QUICSocket.bind("127.0.0.1", 0)
    conn = await connect(sock, "127.0.0.1", port, _quic_credentials(certs, "client"))
    unary, streaming = _rpc_callers(RPCClient(conn))

    async def close() -> None:
        await conn.aclose()
        await sock.close()

    return unary, streaming, close


async def _client_rpc_tls(certs: Path, port: int) -> tuple[Unary, Streaming, Close]:
    from quic_rpc.rpc import RPCClient
    from quic_rpc.transports.tcp import connect_tcp

    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    conn = await connect_tcp("127.0.0.1", port, ssl=context, server_hostname="localhost")
    unary, streaming = _rpc_callers(RPCClient(conn))
    return unary, streaming, conn.aclose


async def _client_grpc(certs: Path, port: int) -> tuple[Unary, Streaming, Close]:
    import grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    channel = grpc.aio.secure_channel(f"localhost:{port}", credentials)
    echo = channel.unary_unary(ECHO, None, None)
    stream = channel.unary_stream(STREAM, None, None)

    async def unary(payload: bytes) -> bytes:
        result: bytes = await echo(payload)
        return result

    async def streaming(n: int) -> int:
        count = 0
        async for _ in stream(COUNT.pack(n)):
            count += 1
        return count

    async def close() -> None:
        await channel.close(None)

    return unary, streaming, close


async def _measure(stack: str, certs: Path, port: int, calls: int, messages: int) -> dict[str, Any]:
    connect = {"quic_rpc-quic": _client_rpc_quic, "quic_rpc-tls": _client_rpc_tls}.get(
        stack, _client_grpc
    )
    unary, streaming, close = await connect(certs, port)
    try:
        for _ in range(max(100, calls // 10)):  # warm up
            assert await unary(PAYLOAD) == PAYLOAD
        samples: list[float] = []
        clock = time.perf_counter
        started = clock()
        for _ in range(calls):
            t0 = clock()
            await unary(PAYLOAD)
            samples.append(clock() - t0)
        total = clock() - started
        samples.sort()
        await streaming(min(1000, messages))  # warm up
        rates = []
        for _ in range(3):
            t0 = clock()
            got = await streaming(messages)
            rates.append(got / (clock() - t0))
            assert got == messages
    finally:
        await close()
    return {
        "unary_latency_us": {
            "p50": round(percentile(samples, 50) * 1e6, 1),
            "p99": round(percentile(samples, 99) * 1e6, 1),
            "mean": round(statistics.fmean(samples) * 1e6, 1),
        },
        "unary_calls_per_s": round(calls / total),
        "server_streaming_msgs_per_s": round(max(rates)),
        "calls": calls,
        "stream_messages": messages,
    }


async def _run_stack(stack: str, certs: Path, calls: int, messages: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.rpc_unary",
        "--serve",
        stack,
        "--certs",
        str(certs),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
        return await _measure(stack, certs, port, calls, messages)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _main(quick: bool, stacks: list[str]) -> dict[str, Any]:
    calls = 1000 if quick else 5000
    messages = 5000 if quick else 50000
    results: dict[str, Any] = {}
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_certs(certs)
        for stack in stacks:
            if not _available(stack):
                skipped.append(stack)
                print(f"{stack:14s} skipped (not installed)", flush=True)
                continue
            results[stack] = await _run_stack(stack, certs, calls, messages)
            print(f"{stack:14s} {json.dumps(results[stack])}", flush=True)
    base = results.get("grpc-aio")
    if base is not None:
        for stack, result in results.items():
            if stack == "grpc-aio":
                continue
            result["vs_grpc_aio"] = {
                "unary_latency_p50": round(
                    result["unary_latency_us"]["p50"] / base["unary_latency_us"]["p50"], 2
                ),
                "unary_latency_p99": round(
                    result["unary_latency_us"]["p99"] / base["unary_latency_us"]["p99"], 2
                ),
                "server_streaming_throughput": round(
                    result["server_streaming_msgs_per_s"] / base["server_streaming_msgs_per_s"], 2
                ),
            }
    return {
        "benchmark": "rpc_unary",
        "mode": "quick" if quick else "full",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "notes": "server in a separate process on loopback; sequential 64-byte unary calls "
        "on one connection; server streaming = one call of N 64-byte messages (best of 3); "
        "ratios: latency < 1 and throughput > 1 favour quic_rpc",
        "skipped": skipped,
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and messages")
    parser.add_argument("--stacks", default=",".join(STACKS), help="comma-separated subset")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.certs))
        return
    stacks = [s for s in args.stacks.split(",") if s]
    unknown = set(stacks) - set(STACKS)
    if unknown:
        parser.error(f"unknown stacks: {', '.join(sorted(unknown))}")
    report = asyncio.run(_main(args.quick, stacks))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for stack, result in report["results"].items():
        ratio = result.get("vs_grpc_aio")
        if ratio:
            print(
                f"{stack} / grpc.aio: unary p50 x{ratio['unary_latency_p50']}, "
                f"p99 x{ratio['unary_latency_p99']}, "
                f"streaming throughput x{ratio['server_streaming_throughput']}"
            )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
