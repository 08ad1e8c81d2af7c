"""QUIC transfer runner for the netns tests: ``python -m tests.quic_netns.peer server|client``.

Every message is one JSON object per stdout line; commands arrive as JSON lines on stdin.

Server::

    python -m tests.quic_netns.peer server --bind 203.0.113.10:4433 \\
        --ca ca.pem --cert server.pem --key server.key --send-bytes N --seed 2

  prints ``{"event": "ready", "port": ...}``; for every stream the peer opens it reads
  everything (sha256) while sending ``N`` seeded pseudo-random bytes, then prints
  ``{"event": "stream_done", "received", "sha256_received", "sent", "sha256_sent",
  "peer_addresses": [[host, port], ...]}`` (every client address seen during the stream, in
  order - a NAT rebinding shows up as a second entry), ``"stats"`` (the connection's
  ``stats()``) and ``"pmtu_state"``.  Stdin EOF or ``{"cmd": "quit"}`` stops it
  (``{"event": "stopped"}``).

Client::

    python -m tests.quic_netns.peer client --server 203.0.113.10:4433 \\
        --ca ... --cert ... --key ... --send-bytes N --seed 1 [--pause-at BYTES]

  connects (mutual TLS against the CA), opens one stream, sends ``N`` seeded bytes + EOF
  while reading everything the server sends; prints ``connected``, ``progress`` events,
  and ``done`` with sizes, sha256 digests and connection stats.  With ``--pause-at`` (may
  be repeated) it stops sending after that many bytes, prints ``paused`` and waits for
  ``{"cmd": "continue"}`` on stdin (receiving goes on meanwhile).  Errors are reported as
  ``{"event": "error", "error": ...}`` with exit status 1.

Both::

    --max-datagram-size N        QUICConfig.max_datagram_size (default 1350): with path MTU
                                 discovery the ceiling of the search, without it the size
                                 every datagram is sent at
    --pmtu-discovery / --no-pmtu-discovery
                                 QUICConfig.pmtu_discovery (default: QUICConfig's default)
    --await-pmtu SECONDS         before reporting ``done`` / ``stream_done`` (and their
                                 stats), wait up to SECONDS for the connection's path MTU
                                 search to finish (default 0: report at once)

  ``ready`` and ``connected`` carry ``"dont_fragment"`` (the socket's DF setting);
  ``connected``, ``done`` and ``stream_done`` carry ``"pmtu_state"``: the state of the
  connection's path MTU search (``"searching"``, ``"search_complete"``, ...; null where
  the transport does not tell).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from quic_rpc.quic import (
    QUICConfig,
    QUICConnection,
    QUICServer,
    QUICSocket,
    TLSCredentials,
    ca_verifier,
    connect,
)
from quic_rpc.streams import ByteStream

CHUNK = 64 * 1024


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def payload(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes; both ends (and the test) can recompute them."""
    return random.Random(seed).randbytes(size)


def expected_sha256(size: int, seed: int) -> str:
    return hashlib.sha256(payload(size, seed)).hexdigest()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def credentials(args: argparse.Namespace) -> TLSCredentials:
    ca = Path(args.ca).read_bytes()
    return TLSCredentials.load(
        Path(args.key).read_bytes(), Path(args.cert).read_bytes(), ca_verifier(ca)
    )


def config(args: argparse.Namespace) -> QUICConfig:
    extra: dict[str, Any] = {}
    if args.pmtu_discovery is not None:
        extra["pmtu_discovery"] = args.pmtu_discovery
    return QUICConfig(
        idle_timeout=args.idle_timeout,
        keepalive_interval=min(5.0, args.idle_timeout / 3),
        handshake_timeout=args.handshake_timeout,
        max_datagram_size=args.max_datagram_size,
        **extra,
    )


def pmtu_state(conn: QUICConnection) -> str | None:
    """The state of the connection's path MTU search, where the engine has one (test
    introspection: not part of the public API)."""
    search = getattr(getattr(conn, "_engine", None), "_pmtu", None)
    state = getattr(search, "state", None)
    value = getattr(state, "value", state)
    return None if value is None else str(value)


async def await_pmtu(conn: QUICConnection, limit: float) -> str | None:
    """Wait up to ``limit`` seconds while the path MTU search is still running (probes
    go on also on an idle connection); return its state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while pmtu_state(conn) == "searching" and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # no event to wait on: the state belongs to the engine
    return pmtu_state(conn)


class StdinCommands:
    """JSON commands from stdin, delivered to waiters by name; EOF is ``"eof"``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self._task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                await self._queue.put({"cmd": "eof"})
                return
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    await self._queue.put(obj)

    async def wait_for(self, *names: str) -> dict[str, Any]:
        while True:
            cmd = await self._queue.get()
            if cmd.get("cmd") in names:
                return cmd

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def send_all(
    stream: ByteStream,
    data: bytes,
    on_progress: Any = None,
) -> None:
    view = memoryview(data)
    for off in range(0, len(data), CHUNK):
        if on_progress is not None:
            await on_progress(off)
        await stream.send(bytes(view[off : off + CHUNK]))
    await stream.send_eof()


# ---------------------------------------------------------------------------------------
# server


async def run_server(args: argparse.Namespace) -> int:
    data = payload(args.send_bytes, args.seed)
    sent_digest = hashlib.sha256(data).hexdigest()

    connections: list[QUICConnection] = []

    def connection_of(stream: ByteStream) -> QUICConnection | None:
        info = stream.peer_info
        for conn in reversed(connections):
            if conn.remote_address == (info.remote_host, info.remote_port):
                return conn
        return connections[-1] if connections else None

    async def handler(stream: ByteStream) -> None:
        seen: list[tuple[str, int]] = []

        def note_peer() -> None:
            info = stream.peer_info
            addr = (info.remote_host, info.remote_port)
            if not seen or seen[-1] != addr:
                seen.append(addr)

        note_peer()
        digest = hashlib.sha256()
        received = 0

        async def reader() -> None:
            nonlocal received
            while chunk := await stream.receive(1 << 20):
                digest.update(chunk)
                received += len(chunk)
                note_peer()

        async def progress(_off: int) -> None:
            note_peer()

        started = time.monotonic()
        try:
            await asyncio.gather(reader(), send_all(stream, data, progress))
        except Exception as exc:
            note_peer()
            emit(
                {
                    "event": "stream_error",
                    "error": f"{type(exc).__name__}: {exc}",
                    "received": received,
                    "peer_addresses": [list(a) for a in seen],
                }
            )
            raise
        note_peer()
        seconds = time.monotonic() - started
        conn = connection_of(stream)
        state = None
        if conn is not None:
            state = await await_pmtu(conn, args.await_pmtu)
        info = stream.peer_info
        emit(
            {
                "event": "stream_done",
                "received": received,
                "sha256_received": digest.hexdigest(),
                "sent": len(data),
                "sha256_sent": sent_digest,
                "peer_addresses": [list(a) for a in seen],
                "seconds": seconds,
                "stats": dict(info.stats()) if info.stats is not None else {},
                "pmtu_state": state,
            }
        )

    host, port = hostport(args.bind)
    sock = await QUICSocket.bind(host, port)
    server = QUICServer(
        sock, credentials(args), config(args), handler, on_connection=connections.append
    )
    await server.start()
    commands = StdinCommands()
    await commands.start()
    emit(
        {
            "event": "ready",
            "host": sock.local_address[0],
            "port": sock.local_address[1],
            "dont_fragment": sock.dont_fragment,
        }
    )
    try:
        await commands.wait_for("quit", "eof")
    finally:
        commands.stop()
        with contextlib.suppress(Exception):
            await server.stop(grace=1.0)
        await sock.close()
    emit({"event": "stopped"})
    return 0


# ---------------------------------------------------------------------------------------
# client


async def run_client(args: argparse.Namespace) -> int:
    data = payload(args.send_bytes, args.seed)
    commands = StdinCommands()
    await commands.start()
    host, port = hostport(args.server)
    sock = await QUICSocket.bind(args.bind_host, args.bind_port)
    try:
        started = time.monotonic()
        conn = await connect(sock, host, port, credentials(args), config(args), "server")
        emit(
            {
                "event": "connected",
                "local": list(sock.local_address),
                "remote": list(conn.remote_address),
                "dont_fragment": sock.dont_fragment,
                "stats": dict(conn.stats()),
                "pmtu_state": pmtu_state(conn),
            }
        )
        stream = await conn.open_stream()
        digest = hashlib.sha256()
        received = 0
        sent = 0
        next_report = args.progress_every
        pause_points = sorted(args.pause_at)

        def report() -> None:
            nonlocal next_report
            if sent + received >= next_report:
                next_report = sent + received + args.progress_every
                emit({"event": "progress", "sent": sent, "received": received})

        async def on_send(off: int) -> None:
            nonlocal sent
            sent = off
            report()
            if pause_points and off >= pause_points[0]:
                del pause_points[0]
                emit({"event": "paused", "sent": off, "received": received})
                await commands.wait_for("continue")
                emit({"event": "resumed", "sent": off, "received": received})

        async def reader() -> None:
            nonlocal received
            while chunk := await stream.receive(1 << 20):
                digest.update(chunk)
                received += len(chunk)
                report()

        async def writer() -> None:
            nonlocal sent
            await send_all(stream, data, on_send)
            sent = len(data)

        await asyncio.gather(reader(), writer())
        elapsed = time.monotonic() - started
        state = await await_pmtu(conn, args.await_pmtu)
        emit(
            {
                "event": "done",
                "sent": len(data),
                "sha256_sent": hashlib.sha256(data).hexdigest(),
                "received": received,
                "sha256_received": digest.hexdigest(),
                "seconds": elapsed,
                "stats": dict(conn.stats()),
                "pmtu_state": state,
            }
        )
        # graceful close: waits until the server acknowledged everything we sent
        await conn.aclose(args.close_grace)
        emit({"event": "closed"})
        return 0
    except Exception as exc:
        emit(
            {
                "event": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        )
        return 1
    finally:
        commands.stop()
        await sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.quic_netns.peer")
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        sp = sub.add_parser(role)
        sp.add_argument("--ca", required=True)
        sp.add_argument("--cert", required=True)
        sp.add_argument("--key", required=True)
        sp.add_argument("--send-bytes", type=int, default=0)
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--idle-timeout", type=float, default=30.0)
        sp.add_argument("--handshake-timeout", type=float, default=30.0)
        sp.add_argument(
            "--max-datagram-size",
            type=int,
            default=1350,
            help="largest UDP payload (with path MTU discovery: the ceiling of the search)",
        )
        sp.add_argument(
            "--pmtu-discovery",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="path MTU discovery on/off (default: QUICConfig's default)",
        )
        sp.add_argument("--await-pmtu", type=float, default=0.0, metavar="SECONDS")
        if role == "server":
            sp.add_argument("--bind", required=True, help="HOST:PORT")
        else:
            sp.add_argument("--server", required=True, help="HOST:PORT")
            sp.add_argument("--bind-host", default="0.0.0.0")
            sp.add_argument("--bind-port", type=int, default=0)
            sp.add_argument("--progress-every", type=int, default=512 * 1024)
            sp.add_argument("--pause-at", type=int, action="append", default=[])
            sp.add_argument("--close-grace", type=float, default=300.0)
    args = p.parse_args(argv)
    runner = run_server if args.role == "server" else run_client
    return asyncio.run(runner(args))


if __name__ == "__main__":
    sys.exit(main())
