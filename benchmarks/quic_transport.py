"""Benchmark of the QUIC transport against stock aioquic and TCP+TLS, in one run.

    python -m benchmarks.quic_transport [--quick]

Each server runs in its own process; the client side runs here. Two measurements:

* latency — request/response round trip of 64 bytes each way. QUIC: a new
  bidirectional stream per request on one connection. TCP+TLS: length-prefixed
  messages on one persistent connection (TCP has no cheap streams).
* bulk — one stream (one TCP connection) uploads N bytes; the server reads them all and
  answers with the count. Throughput is N / time until the answer arrived.

Variants: ``quicshift`` (this package, default QUICConfig), ``quicshift-loopback``
(this package tuned for loopback: 65,000-byte datagrams, pacing off — not for real
networks), ``aioquic`` (``aioquic.asyncio.serve``/``connect``, 1,452-byte datagrams,
same as our default), ``tcp-tls`` (asyncio streams with ssl). Results go to
``benchmarks/results/quic_transport.json`` with ratios to TCP+TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._common import percentile, write_certs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quic_transport.json"
ALPN = "quicshift-bench/1"
ECHO = b"E"
SINK = b"S"
VARIANTS = ("quicshift", "quicshift-loopback", "aioquic", "tcp-tls")


def _quicshift_config(variant: str) -> Any:
    from quic_rpc.quic import QUICConfig

    if variant == "quicshift-loopback":
        return QUICConfig(alpn=ALPN, max_datagram_size=65000, pacing=False)
    return QUICConfig(alpn=ALPN)


def _credentials(certs: Path, role: str) -> Any:
    from quic_rpc.quic import TLSCredentials, ca_verifier

    return TLSCredentials.load(
        (certs / f"{role}.key").read_bytes(),
        (certs / f"{role}.pem").read_bytes(),
        ca_verifier((certs / "ca.pem").read_bytes()),
    )


# -- servers (run in a child process) -------------------------------------------------


async def _serve_quicshift(variant: str, certs: Path) -> int:
    from quic_rpc.quic import QUICServer, QUICSocket
    from quic_rpc.streams import ByteStream

    async def handler(stream: ByteStream) -> None:
        mode = await stream.receive(1)
        if mode == ECHO:
            while data := await stream.receive():
                await stream.send(data)
        else:
            total = 0
            while data := await stream.receive(1 << 20):
                total += len(data)
            await stream.send(struct.pack("!Q", total))
        await stream.send_eof()

    sock = await QUICSocket.bind("127.0.0.1", 0)
    server = QUICServer(sock, _credentials(certs, "server"), _quicshift_config(variant), handler)
    await server.start()
    return sock.local_address[1]


def _aioquic_configuration(certs: Path, *, is_client: bool) -> Any:
    from aioquic.quic.configuration import QuicConfiguration

    configuration = QuicConfiguration(
        alpn_protocols=[ALPN], is_client=is_client, max_datagram_size=1452
    )
    if is_client:
        configuration.load_verify_locations(str(certs / "ca.pem"))
    else:
        configuration.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))
    return configuration


async def _serve_aioquic(certs: Path) -> int:
    from aioquic.asyncio.server import serve

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = await reader.readexactly(1)
        if mode == ECHO:
            while data := await reader.read(65536):
                writer.write(data)
        else:
            total = 0
            while data := await reader.read(1 << 20):
                total += len(data)
            writer.write(struct.pack("!Q", total))
        writer.write_eof()

    tasks: set[asyncio.Task[None]] = set()

    def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    port = _free_udp_port()
    await serve(
        "127.0.0.1",
        port,
        configuration=_aioquic_configuration(certs, is_client=False),
        stream_handler=stream_handler,
    )
    return port


async def _serve_tcp_tls(certs: Path) -> int:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs / "server.pem"), str(certs / "server.key"))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            mode = await reader.readexactly(1)
            if mode == ECHO:
                while True:
                    header = await reader.readexactly(4)
                    body = await reader.readexactly(struct.unpack("!I", header)[0])
                    writer.write(header + body)
            else:  # TLS over asyncio cannot half-close: the upload is length-prefixed
                size = struct.unpack("!Q", await reader.readexactly(8))[0]
                total = 0
                while total < size and (data := await reader.read(min(1 << 20, size - total))):
                    total += len(data)
                writer.write(struct.pack("!Q", total))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return int(server.sockets[0].getsockname()[1])


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serve(variant: str, certs: Path) -> None:
    if variant.startswith("quicshift"):
        port = await _serve_quicshift(variant, certs)
    elif variant == "aioquic":
        port = await _serve_aioquic(certs)
    else:
        port = await _serve_tcp_tls(certs)
    print(port, flush=True)
    await asyncio.Event().wait()


# -- clients (this process) ------------------------------------------------------------

Request = Callable[[bytes], Awaitable[bytes]]
Upload = Callable[[int], Awaitable[int]]


async def _client_quicshift(
    variant: str, certs: Path, port: int
) -> tuple[Request, Upload, Callable[[], Awaitable[None]]]:
    from quic_rpc.quic import QUICSocket, connect

    sock = await QUICSocket.bind("127.0.0.1", 0)
    conn = await connect(
        sock, "127.0.0.1", port, _credentials(certs, "client"), _quicshift_config(variant)
    )

    async def request(payload: bytes) -> bytes:
        stream = await conn.open_stream()
        await stream.send(ECHO + payload)
        await stream.send_eof()
        parts = []
        while data := await stream.receive():
            parts.append(data)
        return b"".join(parts)

    async def upload(size: int) -> int:
        stream = await conn.open_stream()
        await stream.send(SINK)
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            await stream.send(piece)
            left -= len(piece)
        await stream.send_eof()
        reply = b""
        while data := await stream.receive():
            reply += data
        return int(struct.unpack("!Q", reply)[0])

    async def close() -> None:
        await conn.aclose()
        await sock.close()

    return request, upload, close


async def _client_aioquic(
    certs: Path, port: int
) -> tuple[Request, Upload, Callable[[], Awaitable[None]]]:
    from aioquic.asyncio.client import connect

    manager = connect(
        "127.0.0.1", port, configuration=_aioquic_configuration(certs, is_client=True)
    )
    protocol = await manager.__aenter__()

    async def request(payload: bytes) -> bytes:
        reader, writer = await protocol.create_stream()
        writer.write(ECHO + payload)
        writer.write_eof()
        return await reader.read()

    async def upload(size: int) -> int:
        reader, writer = await protocol.create_stream()
        writer.write(SINK)
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            writer.write(piece)  # stock aioquic buffers without limit; drain() is a no-op
            await writer.drain()
            left -= len(piece)
        writer.write_eof()
        return int(struct.unpack("!Q", await reader.readexactly(8))[0])

    async def close() -> None:
        await manager.__aexit__(None, None, None)

    return request, upload, close


async def _client_tcp_tls(
    certs: Path, port: int
) -> tuple[Request, Upload, Callable[[], Awaitable[None]]]:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    writer.write(ECHO)

    async def request(payload: bytes) -> bytes:
        writer.write(struct.pack("!I", len(payload)) + payload)
        header = await reader.readexactly(4)
        return await reader.readexactly(struct.unpack("!I", header)[0])

    async def upload(size: int) -> int:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        w.write(SINK + struct.pack("!Q", size))
        block = os.urandom(1 << 20)
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            w.write(piece)
            await w.drain()
            left -= len(piece)
        total = int(struct.unpack("!Q", await r.readexactly(8))[0])
        w.close()
        return total

    async def close() -> None:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    return request, upload, close


async def _measure(
    variant: str, certs: Path, port: int, requests: int, bulk: int
) -> dict[str, Any]:
    if variant.startswith("quicshift"):
        request, upload, close = await _client_quicshift(variant, certs, port)
    elif variant == "aioquic":
        request, upload, close = await _client_aioquic(certs, port)
    else:
        request, upload, close = await _client_tcp_tls(certs, port)
    payload = os.urandom(64)
    try:
        for _ in range(min(50, requests)):  # warm-up
            assert await request(payload) == payload
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            reply = await request(payload)
            samples.append(time.perf_counter() - start)
            if reply != payload:
                raise RuntimeError(f"{variant}: echo mismatch")
        start = time.perf_counter()
        received = await upload(bulk)
        elapsed = time.perf_counter() - start
        if received != bulk:
            raise RuntimeError(f"{variant}: server got {received} of {bulk} bytes")
    finally:
        await close()
    samples.sort()
    return {
        "latency_us": {
            "p50": round(percentile(samples, 50) * 1e6, 1),
            "p90": round(percentile(samples, 90) * 1e6, 1),
            "p99": round(percentile(samples, 99) * 1e6, 1),
            "mean": round(statistics.fmean(samples) * 1e6, 1),
            "requests": requests,
        },
        "bulk": {
            "bytes": bulk,
            "seconds": round(elapsed, 3),
            "mbit_s": round(bulk * 8 / elapsed / 1e6, 1),
        },
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latency = {
        key: round(statistics.median(run["latency_us"][key] for run in runs), 1)
        for key in ("p50", "p90", "p99", "mean")
    }
    latency["requests"] = runs[0]["latency_us"]["requests"]
    mbit_s = round(statistics.median(run["bulk"]["mbit_s"] for run in runs), 1)
    return {
        "latency_us": latency,
        "bulk": {"bytes": runs[0]["bulk"]["bytes"], "mbit_s": mbit_s},
    }


async def _run_variant(variant: str, certs: Path, requests: int, bulk: int) -> dict[str, Any]:
    root = ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.quic_transport",
        "--serve",
        variant,
        "--certs",
        str(certs),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
        return await _measure(variant, certs, port, requests, bulk)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _main(quick: bool, variants: list[str], rounds: int) -> dict[str, Any]:
    requests = 500 if quick else 2000
    bulk = (16 if quick else 64) * 1024 * 1024
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_certs(certs)
        # Variants take turns round by round, so load from other processes on the
        # machine spreads over all of them instead of skewing one.
        for round_index in range(rounds):
            for variant in variants:
                run = await _run_variant(variant, certs, requests, bulk)
                runs[variant].append(run)
                print(f"round {round_index + 1} {variant:20s} {json.dumps(run)}", flush=True)
    results = {variant: _median_of(variant_runs) for variant, variant_runs in runs.items()}
    base = results.get("tcp-tls")
    if base is not None:
        for result in results.values():
            result["vs_tcp_tls"] = {
                "latency_p50": round(result["latency_us"]["p50"] / base["latency_us"]["p50"], 2),
                "latency_p99": round(result["latency_us"]["p99"] / base["latency_us"]["p99"], 2),
                "throughput": round(result["bulk"]["mbit_s"] / base["bulk"]["mbit_s"], 3),
            }
    for variant, result in results.items():
        result["rounds"] = runs[variant]
    from quic_rpc.quic import gso_supported

    return {
        "benchmark": "quic_transport",
        "mode": "quick" if quick else "full",
        "rounds": rounds,
        "aggregation": "median over rounds of each figure",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gso": gso_supported(),
        },
        "notes": "server in a separate process, loopback; QUIC latency = new stream per "
        "request; TCP+TLS latency = messages on one persistent connection; "
        "bulk = single-stream upload",
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, 16 MiB bulk")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per variant (default 1 quick, 3 full)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.certs))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    report = asyncio.run(_main(args.quick, variants, rounds))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
