"""QUIC engines side by side, sans-IO: what a faster engine would buy.

    python -m benchmarks.engines [--calls 20000] [--mib 64] [--out benchmarks/results]

quic_rpc.quic runs on aioquic. Most of a unary call's CPU, and of bulk at 1,452-byte
datagrams, is aioquic's per-packet Python (RESULTS.md, "Unary p50/p99"). This measures the
engines alone, without sockets, event loop or RPC layers: a client and a server
``QuicConnection`` of each installed engine exchange datagrams in memory, in one process.

* ``unary``: a request of 64 bytes on a new stream, a response of 64 bytes, one
  datagram each way (as quic_rpc sends a unary call), with delayed-ACK timers fired
  every other call. CPU time per call for both ends together.
* ``bulk``: ``--mib`` MiB on one stream in datagrams of at most 1,452 bytes. CPU time per
  MiB for both ends together.

Engines: the installed aioquic, and qh3 if it is importable (``pip install qh3``; it is
not a dependency of this project). Both run with their own defaults: this is the raw
engine, not ``quic_rpc.quic.engine``'s extensions of aioquic (flow control by
consumption, mutual TLS), which qh3 lacks (see RESULTS.md). Writes
``<out>/engines.json``; figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ._common import machine_info, write_certs

CLIENT_ADDR = ("192.0.2.2", 50000)
SERVER_ADDR = ("192.0.2.1", 4433)
MIB = 1024 * 1024
ENGINES = ("aioquic", "qh3")


def _modules(engine: str) -> tuple[ModuleType, ModuleType, ModuleType] | None:
    try:
        config = importlib.import_module(f"{engine}.quic.configuration")
        connection = importlib.import_module(f"{engine}.quic.connection")
        events = importlib.import_module(f"{engine}.quic.events")
    except ImportError:
        return None
    return config, connection, events


class _Pair:
    """A client and a server connection of one engine, joined in memory."""

    def __init__(self, engine: str, cert: Path, key: Path) -> None:
        modules = _modules(engine)
        assert modules is not None
        config_mod, connection_mod, self.events = modules
        client_config = config_mod.QuicConfiguration(
            is_client=True,
            alpn_protocols=["bench"],
            verify_mode=ssl.CERT_NONE,
            server_name="localhost",
            max_datagram_size=1452,
        )
        server_config = config_mod.QuicConfiguration(
            is_client=False, alpn_protocols=["bench"], max_datagram_size=1452
        )
        server_config.load_cert_chain(str(cert), str(key))
        self.now = 1.0
        """A made-up clock: pacing and timers cost no waiting (and no spinning)."""
        self.client = connection_mod.QuicConnection(configuration=client_config)
        self.client.connect(SERVER_ADDR, now=self.now)
        self.server = connection_mod.QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        while self._pump(self.client, self.server, CLIENT_ADDR) + self._pump(
            self.server, self.client, SERVER_ADDR
        ):
            pass
        for conn in (self.client, self.server):
            while conn.next_event() is not None:
                pass

    def _pump(self, sender: Any, receiver: Any, addr: tuple[str, int]) -> int:
        self.now += 0.00005
        count = 0
        for data, _ in sender.datagrams_to_send(now=self.now):
            receiver.receive_datagram(data, addr, now=self.now)
            count += 1
        return count

    def _fire_timers(self) -> None:
        """Move the clock to the earliest timer due within 30 ms and fire it."""
        timers = [(t, c) for c in (self.client, self.server) if (t := c.get_timer()) is not None]
        if not timers:
            return
        due, conn = min(timers, key=lambda item: item[0])
        if due <= self.now + 0.03:
            self.now = max(self.now, due)
            conn.handle_timer(now=self.now)

    def call(self, payload: bytes) -> None:
        client, server = self.client, self.server
        stream_id = client.get_next_available_stream_id()
        client.send_stream_data(stream_id, payload, end_stream=True)
        self._pump(client, server, CLIENT_ADDR)
        data_received = self.events.StreamDataReceived
        while (event := server.next_event()) is not None:
            if isinstance(event, data_received) and event.end_stream:
                server.send_stream_data(event.stream_id, payload, end_stream=True)
        self._pump(server, client, SERVER_ADDR)
        while client.next_event() is not None:
            pass

    def unary(self, calls: int) -> float:
        payload = b"u" * 64
        for _ in range(min(2000, calls)):
            self.call(payload)
        start = time.process_time()
        for index in range(calls):
            self.call(payload)
            if index % 2:
                self._fire_timers()
                self._pump(self.client, self.server, CLIENT_ADDR)
                self._pump(self.server, self.client, SERVER_ADDR)
        return (time.process_time() - start) / calls

    def bulk(self, mib: int) -> float:
        client, server = self.client, self.server
        stream_id = client.get_next_available_stream_id()
        block = b"b" * MIB
        received = target = 0
        data_received = self.events.StreamDataReceived
        start = time.process_time()
        for _ in range(mib):
            client.send_stream_data(stream_id, block)
            target += MIB
            idle = 0
            while received < target:
                sent = self._pump(client, server, CLIENT_ADDR)
                while (event := server.next_event()) is not None:
                    if isinstance(event, data_received):
                        received += len(event.data)
                self._pump(server, client, SERVER_ADDR)
                while client.next_event() is not None:
                    pass
                if sent:
                    idle = 0
                    continue
                idle += 1
                if idle > 10_000:
                    raise RuntimeError(f"bulk stalled at {received} of {target} bytes")
                self._fire_timers()
        elapsed = time.process_time() - start
        if received != mib * MIB:
            raise RuntimeError(f"bulk moved {received} bytes, expected {mib * MIB}")
        return elapsed / mib


def _version(engine: str) -> str | None:
    try:
        module = importlib.import_module(engine)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "?"))


def measure(calls: int, mib: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quicshift-engines-") as tmp:
        write_certs(Path(tmp))
        cert, key = Path(tmp) / "server.pem", Path(tmp) / "server.key"
        for engine in ENGINES:
            version = _version(engine)
            if version is None or _modules(engine) is None:
                rows.append({"engine": engine, "installed": False})
                continue
            unary = _Pair(engine, cert, key).unary(calls)
            bulk = _Pair(engine, cert, key).bulk(mib)
            rows.append(
                {
                    "engine": engine,
                    "version": version,
                    "installed": True,
                    "unary_cpu_us_per_call": round(unary * 1e6, 1),
                    "bulk_cpu_ms_per_mib": round(bulk * 1e3, 2),
                }
            )
    base = next((r for r in rows if r["engine"] == "aioquic" and r["installed"]), None)
    for row in rows:
        if base is not None and row.get("installed"):
            row["unary_speedup"] = round(
                base["unary_cpu_us_per_call"] / row["unary_cpu_us_per_call"], 2
            )
            row["bulk_speedup"] = round(base["bulk_cpu_ms_per_mib"] / row["bulk_cpu_ms_per_mib"], 2)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | version | unary: CPU per call, both ends | bulk: CPU per MiB, both ends |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if not row.get("installed"):
            lines.append(f"| {row['engine']} | not installed | - | - |")
            continue
        lines.append(
            f"| {row['engine']} | {row['version']} | {row['unary_cpu_us_per_call']:,.1f} µs "
            f"({row['unary_speedup']}x) | {row['bulk_cpu_ms_per_mib']:,.2f} ms "
            f"({row['bulk_speedup']}x) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.calls < 1 or args.mib < 1:
        parser.error("--calls and --mib must be positive")
    started = time.time()
    rows = measure(args.calls, args.mib)
    report = {
        "benchmark": "engines",
        "command": "python -m benchmarks.engines "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "calls": args.calls,
        "mib": args.mib,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(json.dumps(report, indent=2) + "\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
