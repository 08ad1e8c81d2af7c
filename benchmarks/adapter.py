"""Benchmark of the grpc adapter (``migration.quic_grpc``) against grpc.aio and native quic_rpc.

    python -m benchmarks.adapter [--quick]

Three stacks serve the same two methods, each server in its own process, the clients here:

* ``grpc-aio``  — grpcio's ``grpc.aio`` over HTTP/2 on TCP+TLS (the stack being replaced);
* ``shim``      — ``migration.quic_grpc.aio`` over quic_rpc on QUIC (the adapter);
* ``native``    — quic_rpc's own ``RPCServer``/``RPCClient`` on QUIC (what the adapter adds to).

Methods, raw bytes (no protobuf, so only the stacks are measured):

* unary — 64-byte request, 64-byte response, one call at a time: latency p50/p90/p99 and
  calls per second; and 16 calls in flight: calls per second;
* server streaming — one call returning N messages of 1 KiB: messages per second and MB/s.

Results go to ``benchmarks/results/adapter.json`` with the shim's overhead over native
quic_rpc as ratios (shim time / native time; 1.0 = no overhead) and the same against
grpc.aio. Loopback only; figures depend on the machine — compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ._common import summarize_latencies, write_certs

RESULTS = Path(__file__).resolve().parent / "results" / "adapter.json"
STACKS = ("grpc-aio", "shim", "native")
UNARY = "/bench.Adapter/Unary"
STREAM = "/bench.Adapter/Stream"
PAYLOAD = 64
STREAM_MESSAGE = 1024


def _stream_request(count: int) -> bytes:
    return struct.pack(">II", count, STREAM_MESSAGE)


# -- servers (each in its own process) ----------------------------------------------------


async def _unary(request: bytes, context: Any) -> bytes:
    return b"r" * PAYLOAD


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    count, size = struct.unpack(">II", request)
    chunk = b"s" * size
    for _ in range(count):
        yield chunk


async def _serve(stack: str, certs: Path, ports: Any, stop: Any) -> None:
    key = (certs / "server.key").read_bytes()
    chain = (certs / "server.pem").read_bytes()
    if stack == "native":
        from quic_rpc.quic import QUICServer, QUICSocket, TLSCredentials
        from quic_rpc.rpc import RPCServer, server_streaming, unary

        rpc = RPCServer({UNARY: unary(_unary), STREAM: server_streaming(_stream)})
        sock = await QUICSocket.bind("127.0.0.1", 0)
        server = QUICServer(
            sock, TLSCredentials.load(key, chain, lambda c: None), None, rpc.handle_stream
        )
        await server.start()
        ports.put(sock.local_address[1])
        await asyncio.to_thread(stop.wait)
        await server.stop(0)
        await sock.close()
        return
    if stack == "grpc-aio":
        import grpc as g
    else:
        from migration import quic_grpc as g
    handler = g.method_handlers_generic_handler(
        "bench.Adapter",
        {
            "Unary": g.unary_unary_rpc_method_handler(_unary),
            "Stream": g.unary_stream_rpc_method_handler(_stream),
        },
    )
    server = g.aio.server(handlers=[handler])
    port = server.add_secure_port("127.0.0.1:0", g.ssl_server_credentials([(key, chain)]))
    await server.start()
    ports.put(port)
    await asyncio.to_thread(stop.wait)
    await server.stop(None)


def _server_main(stack: str, certs: str, ports: Any, stop: Any) -> None:
    asyncio.run(_serve(stack, Path(certs), ports, stop))


# -- clients --------------------------------------------------------------------------------


class _Client:
    unary: Callable[[bytes], Awaitable[bytes]]
    stream: Callable[[bytes], Awaitable[int]]
    close: Callable[[], Awaitable[None]]


async def _client(stack: str, port: int, certs: Path) -> _Client:
    ca = (certs / "ca.pem").read_bytes()
    client = _Client()
    if stack == "native":
        from migration.quic_grpc._credentials import ephemeral_identity
        from quic_rpc.quic import QUICSocket, TLSCredentials, ca_verifier, connect
        from quic_rpc.rpc import RPCClient

        identity = ephemeral_identity()
        sock = await QUICSocket.bind("127.0.0.1", 0)
        tls = TLSCredentials.load(
            identity.private_key_pem,
            identity.certificate_pem,
            ca_verifier(ca, server_name="localhost"),
        )
        conn = await connect(sock, "127.0.0.1", port, tls, server_name="localhost")
        rpc = RPCClient(conn)

        async def unary_native(request: bytes) -> bytes:
            response: bytes = await rpc.unary(UNARY, request)
            return response

        async def stream_native(request: bytes) -> int:
            return sum([1 async for _ in rpc.server_streaming(STREAM, request)])

        async def close_native() -> None:
            await conn.aclose(0)
            await sock.close()

        client.unary, client.stream, client.close = unary_native, stream_native, close_native
        return client
    if stack == "grpc-aio":
        import grpc as g
    else:
        from migration import quic_grpc as g
    channel = g.aio.secure_channel(f"localhost:{port}", g.ssl_channel_credentials(ca))
    unary_call = channel.unary_unary(UNARY)
    stream_call = channel.unary_stream(STREAM)

    async def unary_grpc(request: bytes) -> bytes:
        response: bytes = await unary_call(request)
        return response

    async def stream_grpc(request: bytes) -> int:
        return sum([1 async for _ in stream_call(request)])

    async def close_grpc() -> None:
        await channel.close()

    client.unary, client.stream, client.close = unary_grpc, stream_grpc, close_grpc
    return client


async def _measure(client: _Client, unary_calls: int, stream_messages: int) -> dict[str, Any]:
    request = b"q" * PAYLOAD
    for _ in range(50):
        await client.unary(request)
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(unary_calls):
        t0 = time.perf_counter()
        await client.unary(request)
        latencies.append(time.perf_counter() - t0)
    sequential = time.perf_counter() - started

    concurrency = 16
    per_worker = max(1, unary_calls // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await client.unary(request)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    concurrent = time.perf_counter() - started

    await client.stream(_stream_request(100))
    rates: list[float] = []
    for _ in range(3):
        started = time.perf_counter()
        received = await client.stream(_stream_request(stream_messages))
        elapsed = time.perf_counter() - started
        assert received == stream_messages
        rates.append(stream_messages / elapsed)
    rate = statistics.median(rates)
    return {
        "unary_sequential": {
            "calls": unary_calls,
            **summarize_latencies(latencies),
            "calls_per_s": round(unary_calls / sequential, 1),
        },
        "unary_concurrent": {
            "in_flight": concurrency,
            "calls": per_worker * concurrency,
            "calls_per_s": round(per_worker * concurrency / concurrent, 1),
        },
        "server_streaming": {
            "messages": stream_messages,
            "message_bytes": STREAM_MESSAGE,
            "messages_per_s": round(rate, 1),
            "mb_per_s": round(rate * STREAM_MESSAGE / 1e6, 2),
        },
    }


async def _run_stack(
    stack: str, certs: Path, unary_calls: int, stream_messages: int
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(target=_server_main, args=(stack, str(certs), ports, stop), daemon=True)
    process.start()
    try:
        port = await asyncio.to_thread(ports.get, True, 60)
        client = await _client(stack, port, certs)
        try:
            return await _measure(client, unary_calls, stream_messages)
        finally:
            await client.close()
    finally:
        stop.set()
        await asyncio.to_thread(process.join, 20)
        if process.is_alive():
            process.kill()


def _ratios(results: dict[str, dict[str, Any]], base: str) -> dict[str, float]:
    shim, other = results["shim"], results[base]
    return {
        "unary_p50_latency": round(
            shim["unary_sequential"]["p50_us"] / other["unary_sequential"]["p50_us"], 3
        ),
        "unary_sequential_time": round(
            other["unary_sequential"]["calls_per_s"] / shim["unary_sequential"]["calls_per_s"], 3
        ),
        "unary_concurrent_time": round(
            other["unary_concurrent"]["calls_per_s"] / shim["unary_concurrent"]["calls_per_s"], 3
        ),
        "server_streaming_time": round(
            other["server_streaming"]["messages_per_s"]
            / shim["server_streaming"]["messages_per_s"],
            3,
        ),
    }


async def main_async(quick: bool) -> dict[str, Any]:
    unary_calls = 300 if quick else 2000
    stream_messages = 2000 if quick else 20000
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_certs(certs)
        for stack in STACKS:
            print(f"benchmarking {stack} ...", file=sys.stderr)
            results[stack] = await _run_stack(stack, certs, unary_calls, stream_messages)
    return {
        "benchmark": "adapter",
        "description": __doc__.strip().splitlines()[0] if __doc__ else "",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "quick": quick,
        "topology": "each server in its own process, client in this process, 127.0.0.1",
        "results": results,
        "shim_over_native": _ratios(results, "native"),
        "shim_over_grpc_aio": _ratios(results, "grpc-aio"),
        "ratio_meaning": "shim time / other time for the same work (1.0 = same, 2.0 = twice as slow)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls and messages")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args.quick))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {
                "shim_over_native": report["shim_over_native"],
                "shim_over_grpc_aio": report["shim_over_grpc_aio"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
