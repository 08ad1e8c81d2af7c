"""RPC-level peer for the netns fault tests: ``python -m tests.reliability.netns_rpc_peer
server|client`` (JSON lines on stdout, JSON commands on stdin, like tests.quic_netns.peer).

Transfers are sequence-numbered: chunk ``i`` is its 8-byte index followed by content derived
from the index (:func:`chunk`), so loss, duplication, reordering and corruption all show up.

Server: ``server --bind HOST:PORT --ca --cert --key [--reset-key HEX]``; methods
``/t.S/Echo`` (unary), ``/t.S/Blob`` (server streaming; request ``b"start:count"``),
``/t.S/Digest`` (client streaming; checks every chunk, answers ``b"count:" + sha256``),
``/t.S/Slow`` (unary; waits for ``{"cmd": "release"}``, answers ``b"done:" + request``).
Blob and Digest print ``blob_peer``/``digest_peer``: the client address when the call began.
Commands: ``drain`` (``RPCServer.stop(grace)`` in the background; prints ``closing`` then
``drained``), ``release``, ``quit``. Prints ``slow_started`` for every Slow call.

Client: ``client --server HOST:PORT --ca --cert --key``; commands (each answered by an
event with the same ``id``): ``connect`` (retries until ``deadline`` s), ``echo``,
``download`` (``count``, ``pause_at``: print ``paused`` at that chunk and wait for
``continue``; on UNAVAILABLE/CANCELLED/connection loss it reconnects and resumes after the
last verified chunk, counting retries), ``upload`` (``count``), ``slow`` (``n`` calls in the
background; ``slow_done`` lists the results), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket, TLSCredentials, ca_verifier, connect
from quic_rpc.rpc import (
    RPCClient,
    RPCError,
    RPCServer,
    ServerCallContext,
    Status,
    client_streaming,
    server_streaming,
    unary,
)
from quic_rpc.streams import ConnectionLostError, StreamError

CHUNK = 16 * 1024
RETRYABLE = (Status.UNAVAILABLE, Status.CANCELLED, Status.DEADLINE_EXCEEDED)


def chunk(index: int) -> bytes:
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return index.to_bytes(8, "big") + (seed * (CHUNK // 32 + 1))[: CHUNK - 8]


def stream_sha256(start: int, count: int) -> str:
    h = hashlib.sha256()
    for i in range(start, start + count):
        h.update(chunk(i))
    return h.hexdigest()


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def credentials(args: argparse.Namespace) -> TLSCredentials:
    return TLSCredentials.load(
        Path(args.key).read_bytes(),
        Path(args.cert).read_bytes(),
        ca_verifier(Path(args.ca).read_bytes()),
    )


def qconfig(args: argparse.Namespace) -> QUICConfig:
    return QUICConfig(
        idle_timeout=args.idle_timeout,
        keepalive_interval=min(5.0, args.idle_timeout / 3),
        handshake_timeout=args.handshake_timeout,
    )


async def commands() -> AsyncIterator[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                yield obj
    yield {"cmd": "quit"}


# ------------------------------------------------------------------------------- server


async def run_server(args: argparse.Namespace) -> int:
    release = asyncio.Event()

    async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
        return request

    async def blob(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        start, count = (int(x) for x in request.split(b":"))
        emit({"event": "blob_peer", "start": start, "count": count, "peer": peer(ctx)})
        for index in range(start, start + count):
            yield chunk(index)

    def peer(ctx: ServerCallContext) -> list[Any]:
        # the client address as the server sees it when the call starts
        info = ctx.peer_info
        return [] if info is None else [info.remote_host, info.remote_port]

    async def digest(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
        emit({"event": "digest_peer", "peer": peer(ctx)})
        h = hashlib.sha256()
        expected = 0
        async for item in requests:
            if item != chunk(expected):
                return b"mismatch at %d" % expected
            expected += 1
            h.update(item)
        return b"%d:" % expected + h.hexdigest().encode()

    async def slow(request: bytes, ctx: ServerCallContext) -> bytes:
        emit({"event": "slow_started", "request": request.decode()})
        await release.wait()
        return b"done:" + request

    rpc = RPCServer(
        {
            "/t.S/Echo": unary(echo),
            "/t.S/Blob": server_streaming(blob),
            "/t.S/Digest": client_streaming(digest),
            "/t.S/Slow": unary(slow),
        }
    )
    host, port = hostport(args.bind)
    reset_key = bytes.fromhex(args.reset_key) if args.reset_key else None
    sock = await QUICSocket.bind(host, port, reset_key=reset_key)
    server = QUICServer(sock, credentials(args), qconfig(args), rpc.handle_stream)
    await server.start()
    emit({"event": "ready", "port": sock.local_address[1]})
    tasks: set[asyncio.Task[Any]] = set()

    async def drain(grace: float) -> None:
        stopping = asyncio.ensure_future(rpc.stop(grace=grace))
        while not rpc.closing:  # noqa: ASYNC110 - set by stop() at its first step
            await asyncio.sleep(0.01)
        emit({"event": "closing", "active_calls": rpc.active_calls})
        await stopping
        emit({"event": "drained", "active_calls": rpc.active_calls})

    try:
        async for cmd in commands():
            name = cmd.get("cmd")
            if name == "quit":
                break
            if name == "release":
                release.set()
                emit({"event": "ok", "cmd": name})
            elif name == "drain":
                t = asyncio.ensure_future(drain(float(cmd.get("grace", 30))))
                tasks.add(t)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await server.stop(grace=1.0)
        await rpc.stop(0)
        await sock.close()
    emit({"event": "stopped"})
    return 0


# ------------------------------------------------------------------------------- client


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host, self.port = hostport(args.server)
        self.sock: QUICSocket | None = None
        self.conn: Any = None
        self.rpc: RPCClient | None = None
        self.continue_event = asyncio.Event()
        self.handshakes = 0

    async def connect(self, deadline: float) -> int:
        """(Re)connect; retries until ``deadline`` seconds have passed. Returns attempts."""
        if self.conn is not None:
            self.conn.abort()
        if self.sock is None:
            self.sock = await QUICSocket.bind(self.args.bind_host, 0)
        attempts = 0
        end = time.monotonic() + deadline
        while True:
            attempts += 1
            try:
                self.conn = await connect(
                    self.sock,
                    self.host,
                    self.port,
                    credentials(self.args),
                    qconfig(self.args),
                    "server",
                )
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.3)
        self.rpc = RPCClient(self.conn)
        self.handshakes += 1
        return attempts

    async def download(self, cmd: dict[str, Any]) -> dict[str, Any]:
        count = int(cmd["count"])
        pause_at = cmd.get("pause_at")
        h = hashlib.sha256()
        got = 0  # chunks verified so far: the next expected sequence number
        retries = 0
        errors: list[str] = []
        while got < count:
            assert self.rpc is not None
            try:
                call = self.rpc.server_streaming(
                    "/t.S/Blob",
                    b"%d:%d" % (got, count - got),
                    timeout=float(cmd.get("timeout", 120)),
                )
                async for item in call:
                    if item != chunk(got):
                        seq = int.from_bytes(item[:8], "big") if len(item) >= 8 else -1
                        return {"error": f"chunk {got}: got seq {seq}, len {len(item)}"}
                    h.update(item)
                    got += 1
                    if pause_at is not None and got == pause_at:
                        self.continue_event.clear()
                        emit({"event": "paused", "id": cmd.get("id"), "chunks": got})
                        await self.continue_event.wait()
                if got < count:
                    return {"error": f"stream ended early at {got}"}
            except (RPCError, ConnectionLostError, StreamError) as exc:
                status = getattr(exc, "status", None)
                if status is not None and status not in RETRYABLE:
                    return {"error": f"{type(exc).__name__}: {exc}"}
                retries += 1
                errors.append(status.name if status is not None else type(exc).__name__)
                if retries > 5:
                    return {"error": f"too many retries: {errors}"}
                await self.connect(float(cmd.get("reconnect_deadline", 60)))
        return {"chunks": got, "sha256": h.hexdigest(), "retries": retries, "errors": errors}

    async def run_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["cmd"]
        if name == "connect":
            attempts = await self.connect(float(cmd.get("deadline", 0)))
            assert self.sock is not None
            return {"attempts": attempts, "local": list(self.sock.local_address)}
        assert self.rpc is not None
        if name == "echo":
            payload = cmd.get("payload", "ping").encode()
            try:
                answer = await self.rpc.unary("/t.S/Echo", payload, timeout=cmd.get("timeout", 30))
            except RPCError as exc:
                return {"status": exc.status.name}
            return {"status": "OK", "ok": answer == payload}
        if name == "download":
            return await self.download(cmd)
        if name == "upload":
            count = int(cmd["count"])
            result = await self.rpc.client_streaming(
                "/t.S/Digest", (chunk(i) for i in range(count)), timeout=120
            )
            return {"result": result.decode(), "expected": f"{count}:{stream_sha256(0, count)}"}
        if name == "slow":
            calls = [
                asyncio.ensure_future(self.rpc.unary("/t.S/Slow", b"%d" % i, timeout=120))
                for i in range(int(cmd["n"]))
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            return {
                "results": [
                    r.decode() if isinstance(r, bytes) else f"{type(r).__name__}: {r}"
                    for r in results
                ]
            }
        if name == "stats":
            return {"stats": dict(self.conn.stats()), "closed": self.conn.is_closed}
        raise ValueError(f"unknown command {name!r}")


async def run_client(args: argparse.Namespace) -> int:
    client = Client(args)
    tasks: set[asyncio.Task[Any]] = set()

    async def one(cmd: dict[str, Any]) -> None:
        try:
            result = await client.run_command(cmd)
            emit({"event": f"{cmd['cmd']}_done", "id": cmd.get("id"), **result})
        except Exception as exc:
            emit(
                {
                    "event": "error",
                    "id": cmd.get("id"),
                    "cmd": cmd.get("cmd"),
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            )

    try:
        async for cmd in commands():
            if cmd.get("cmd") == "quit":
                break
            if cmd.get("cmd") == "continue":
                client.continue_event.set()
                continue
            t = asyncio.ensure_future(one(cmd))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        for t in tasks:
            t.cancel()
        if client.conn is not None:
            client.conn.abort()
        if client.sock is not None:
            await client.sock.close()
    emit({"event": "stopped"})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.netns_rpc_peer")
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        sp = sub.add_parser(role)
        sp.add_argument("--ca", required=True)
        sp.add_argument("--cert", required=True)
        sp.add_argument("--key", required=True)
        sp.add_argument("--idle-timeout", type=float, default=30.0)
        sp.add_argument("--handshake-timeout", type=float, default=60.0)
        if role == "server":
            sp.add_argument("--bind", required=True)
            sp.add_argument("--reset-key", default="")
        else:
            sp.add_argument("--server", required=True)
            sp.add_argument("--bind-host", default="0.0.0.0")
    args = p.parse_args(argv)
    return asyncio.run(run_server(args) if args.role == "server" else run_client(args))


if __name__ == "__main__":
    sys.exit(main())
