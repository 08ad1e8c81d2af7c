"""Bulk upload across a real LAN segment: what path MTU discovery buys on jumbo frames.

    python -m benchmarks.lan [--mib 256] [--rows 1,2,3,4,5] [--out benchmarks/results]

On loopback ``quic_rpc.quic`` uses its loopback profile (65,000-byte datagrams); on any
other path a connection starts at 1,200-byte datagrams and path MTU discovery raises
that to ``min(QUICConfig.max_datagram_size, route MTU - 28)``. Bulk throughput over QUIC
is bound by CPU per packet (aioquic is Python), so the datagram size is most of the
story. This measures one bulk upload per row, client namespace to server namespace,
over veth links the tool builds itself (no emulator, no TUN; TEST-NET addresses)::

    direct:  cli 198.51.100.2 ──(MTU m)── srv 198.51.100.1
    routed:  cli 192.0.2.2 ──(MTU m)── rtr (forwarding) ──(MTU h)── srv 198.51.100.1

Rows (``--rows`` picks some by id; ``5`` is all of 5a-5d):

1. direct, MTU 1500, QUIC with the default config (``max_datagram_size`` 1452)
2. direct, MTU 9000, QUIC with the default config (the 1452 ceiling)
3. direct, MTU 9000, QUIC with ``max_datagram_size=8952``
4. routed, MTU 9000 with a 1500-MTU hop, QUIC with ``max_datagram_size=8952``
5. the reference: plain TCP (one socket, kernel default congestion control) at MTU
   1500 (5a) and 9000 (5b); grpc-direct (grpc.aio, the same kernel TCP plus TLS and
   HTTP/2) at 1500 (5c) and 9000 (5d)

QUIC rows are one ``quic_rpc.quic`` stream (pacing as the config has it: on), the same
config on both ends; TCP rows one blocking socket. The server and the client are
separate processes (``python -m benchmarks.lan serve|send ...`` inside the namespaces).
Goodput is timed at the receiver over the bytes after a warm-up (the first 16 MiB, at
most a quarter of the transfer); CPU per MiB is each process's own
``time.process_time()`` over the same part of the transfer (the client's from the moment
it has handed the warm-up bytes to the stack until the server's byte count arrives).
grpc-direct runs ``benchmarks.stacks``' bulk upload: a warm-up call, then one timed call
on the same channel, timed at the client. The QUIC rows also report each end's final
datagram size, lost path MTU probes and datagram counts; the TCP rows the MSS.

Needs root and ``ip``. Writes ``<out>/lan.json``; figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import json
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from .linklab import (
    NS_PREFIX,
    LinkError,
    _cmd,
    _delete_netns,
    check_test_net,
    netns_prerequisites,
    sweep_stale,
)

__all__ = [
    "ROWS",
    "Lan",
    "RowSpec",
    "available",
    "cpu_us_per_mib",
    "mbit_per_s",
    "path_limit",
    "render",
    "select_rows",
    "warmup_bytes",
]

MIB = 1 << 20
CHUNK = 64 * 1024
WARMUP_MAX = 16 * MIB
IPV4_UDP_OVERHEAD = 28
SETTLE_S = 10.0
"""At most this long, after its transfer, a QUIC end waits for its path MTU search to
finish before it reports its final datagram size (it normally finished long before)."""
COUNT = struct.Struct(">Q")

SERVER_ADDR = "198.51.100.1"
DIRECT_CLIENT = "198.51.100.2/24"
ROUTED_CLIENT = "192.0.2.2/24"
ROUTER_LEFT = "192.0.2.1/24"
ROUTER_RIGHT = "198.51.100.254/24"
_ROOT = Path(__file__).resolve().parent.parent

Stack = Literal["quic", "tcp", "grpc-direct"]
Role = Literal["cli", "rtr", "srv"]


@dataclass(frozen=True, slots=True)
class RowSpec:
    """One measurement: a path (link MTU, optional narrower hop) and a stack."""

    id: str
    mtu: int
    stack: Stack
    hop_mtu: int | None = None
    max_datagram_size: int | None = None
    """QUIC only: ``QUICConfig.max_datagram_size`` on both ends (None: the default)."""

    @property
    def path(self) -> str:
        return f"LAN {self.mtu}" + (f" via a {self.hop_mtu} hop" if self.hop_mtu else "")

    @property
    def label(self) -> str:
        if self.stack != "quic":
            return "plain TCP" if self.stack == "tcp" else "grpc-direct"
        if self.max_datagram_size is None:
            return "QUIC, default config"
        return f"QUIC, max_datagram_size={self.max_datagram_size}"


ROWS: tuple[RowSpec, ...] = (
    RowSpec("1", 1500, "quic"),
    RowSpec("2", 9000, "quic"),
    RowSpec("3", 9000, "quic", max_datagram_size=8952),
    RowSpec("4", 9000, "quic", hop_mtu=1500, max_datagram_size=8952),
    RowSpec("5a", 1500, "tcp"),
    RowSpec("5b", 9000, "tcp"),
    RowSpec("5c", 1500, "grpc-direct"),
    RowSpec("5d", 9000, "grpc-direct"),
)


# -- arithmetic (pure) ---------------------------------------------------------------------


def select_rows(text: str) -> list[RowSpec]:
    """``"all"`` or comma-separated row ids (``"3,4"``; ``"5"`` means 5a-5d), in table order."""
    if text.strip() == "all":
        return list(ROWS)
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    if not wanted:
        raise ValueError("no rows given")
    known = {r.id for r in ROWS} | {r.id.rstrip("abcd") for r in ROWS}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown rows {', '.join(unknown)}: choose from {sorted(known)}")
    return [r for r in ROWS if r.id in wanted or r.id.rstrip("abcd") in wanted]


def warmup_bytes(total: int) -> int:
    """The part of a ``total``-byte upload that is not timed: 16 MiB, at most a quarter."""
    return min(WARMUP_MAX, total // 4)


def path_limit(row: RowSpec) -> int:
    """The largest UDP payload (IPv4) the row's narrowest link carries."""
    return min(row.mtu, row.hop_mtu or row.mtu) - IPV4_UDP_OVERHEAD


def mbit_per_s(nbytes: int, seconds: float) -> float:
    return round(nbytes * 8 / seconds / 1e6, 1) if seconds > 0 else 0.0


def cpu_us_per_mib(cpu_s: float, nbytes: int) -> float:
    return round(cpu_s / (nbytes / MIB) * 1e6, 1) if nbytes > 0 else 0.0


def _pair(values: Sequence[Any]) -> str:
    return " / ".join("-" if v is None else f"{v:,.0f}" for v in values)


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of :func:`measure`'s rows."""
    lines = [
        "| row | path | stack | Mbit/s | client CPU µs/MiB | server CPU µs/MiB "
        "| datagram size / MSS (client / server) | probes lost (c / s) | datagrams sent (c / s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            error = (str(r["error"]).splitlines() or [""])[0].replace("|", "/")
            lines.append(f"| {r['row']} | {r['path']} | {r['stack']} | error: {error} |||||")
            continue
        size = r.get("datagram_size") or r.get("mss") or [None, None]
        lines.append(
            f"| {r['row']} | {r['path']} | {r['stack']} | {r['mbit_per_s']:,.1f} "
            f"| {r['client_cpu_us_per_mib']:,.0f} | {r['server_cpu_us_per_mib']:,.0f} "
            f"| {_pair(size)} | {_pair(r.get('pmtu_probes_lost') or [None, None])} "
            f"| {_pair(r.get('datagrams_sent') or [None, None])} |"
        )
    return "\n".join(lines)


# -- the topology -----------------------------------------------------------------------------

_lan_ids = itertools.count(1)
_open_lans: set[Lan] = set()


def _ip(command: str) -> None:
    """Run ``ip <command>`` (words without spaces); LinkError if it fails."""
    _cmd(["ip", *command.split()])


@atexit.register
def _close_leftovers() -> None:
    for lan in list(_open_lans):
        lan.close()


class Lan:
    """The namespaces of one row: ``cli`` ── ``srv`` on one veth link of MTU ``mtu``, or
    with ``hop_mtu``, ``cli`` ── ``rtr`` (MTU ``mtu``) ── ``srv`` (MTU ``hop_mtu``).

    Namespaces are ``qsbl-<pid>-lan<n>-<role>``: the lossy link's prefix, so
    :func:`benchmarks.linklab.sweep_stale` also deletes ours when a run was killed.
    ``with Lan(...)`` builds it and always deletes it (with whatever still runs inside),
    also on errors and Ctrl-C; an ``atexit`` hook is the safety net.
    """

    def __init__(self, mtu: int, hop_mtu: int | None = None) -> None:
        self.mtu = mtu
        self.hop_mtu = hop_mtu
        base = f"{NS_PREFIX}-{os.getpid()}-lan{next(_lan_ids)}"
        roles: tuple[Role, ...] = ("cli", "rtr", "srv") if hop_mtu else ("cli", "srv")
        self.names: dict[Role, str] = {role: f"{base}-{role}" for role in roles}
        self._created: list[str] = []

    def __enter__(self) -> Lan:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def exec_prefix(self, role: Role) -> list[str]:
        """argv prefix that runs a command inside ``role``'s namespace."""
        return ["ip", "netns", "exec", self.names[role]]

    def start(self) -> None:
        sweep_stale()
        _open_lans.add(self)
        try:
            for name in self.names.values():
                _ip(f"netns add {name}")
                self._created.append(name)
                _ip(f"-n {name} link set lo up")
            if self.hop_mtu is None:
                self._link(
                    "cli", "eth0", DIRECT_CLIENT, "srv", "eth0", f"{SERVER_ADDR}/24", self.mtu
                )
                return
            self._link("cli", "eth0", ROUTED_CLIENT, "rtr", "left", ROUTER_LEFT, self.mtu)
            self._link(
                "rtr", "right", ROUTER_RIGHT, "srv", "eth0", f"{SERVER_ADDR}/24", self.hop_mtu
            )
            _cmd([*self.exec_prefix("rtr"), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._route("cli", "198.51.100.0/24", ROUTER_LEFT)
            self._route("srv", "192.0.2.0/24", ROUTER_RIGHT)
        except BaseException:
            self.close()
            raise

    def _link(
        self, a: Role, a_if: str, a_cidr: str, b: Role, b_if: str, b_cidr: str, mtu: int
    ) -> None:
        check_test_net(a_cidr)
        check_test_net(b_cidr)
        na, nb = self.names[a], self.names[b]
        _ip(f"link add {a_if} netns {na} type veth peer name {b_if} netns {nb}")
        for ns, ifname, cidr in ((na, a_if, a_cidr), (nb, b_if, b_cidr)):
            _ip(f"-n {ns} link set dev {ifname} mtu {mtu}")
            _ip(f"-n {ns} addr add {cidr} dev {ifname}")
            _ip(f"-n {ns} link set dev {ifname} up")

    def _route(self, role: Role, net: str, via_cidr: str) -> None:
        via = via_cidr.split("/")[0]
        check_test_net(net)
        check_test_net(via)
        _ip(f"-n {self.names[role]} route add {net} via {via}")

    def close(self) -> None:
        """Delete the namespaces (killing what still runs in them). Idempotent."""
        while self._created:
            _delete_netns(self._created.pop())
        _open_lans.discard(self)


_availability: tuple[bool, str] | None = None


def available() -> tuple[bool, str]:
    """Can this process build the LAN? ``(True, "")`` or ``(False, reason)``; cached.

    Needs Linux, root and ``ip``, and actually builds a namespace with a veth pair."""
    global _availability
    if _availability is not None:
        return _availability
    missing = netns_prerequisites()
    if missing:
        return False, missing
    probe = f"{NS_PREFIX}-{os.getpid()}-lanprobe"
    try:
        _ip(f"netns add {probe}")
        _ip(f"-n {probe} link add p0 type veth peer name p1")
        _ip(f"-n {probe} link set dev p0 mtu 9000")
        _availability = (True, "")
    except LinkError as exc:
        _availability = (False, f"cannot build a namespace with a veth pair: {exc}")
    finally:
        _delete_netns(probe)
    return _availability


# -- the two ends (run inside the namespaces) ------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _quic_config(max_datagram_size: int | None) -> Any:
    """Both ends' ``QUICConfig``: the defaults, with ``max_datagram_size`` if given."""
    from quic_rpc.quic import QUICConfig

    if max_datagram_size is None:
        return QUICConfig(idle_timeout=60.0)
    return QUICConfig(idle_timeout=60.0, max_datagram_size=max_datagram_size)


def _pmtu_state(conn: Any) -> str | None:
    """The connection's path MTU search state (engine introspection, reported only)."""
    state = getattr(getattr(getattr(conn, "_engine", None), "_pmtu", None), "state", None)
    value = getattr(state, "value", state)
    return None if value is None else str(value)


async def _settle(conn: Any) -> str | None:
    deadline = time.monotonic() + SETTLE_S
    while _pmtu_state(conn) == "searching" and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the state belongs to the engine: nothing to wait on
    return _pmtu_state(conn)


def _quic_stats(conn: Any, state: str | None) -> dict[str, Any]:
    keep = (
        "datagram_size",
        "pmtu_probes_lost",
        "datagrams_sent",
        "datagrams_received",
        "packets_lost",
        "rtt_min",
        "cwnd",
    )
    stats = conn.stats()
    return {**{k: stats[k] for k in keep if k in stats}, "pmtu_state": state}


class _Marks:
    """Byte count of one direction, and the clocks when it passed the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.count = 0
        self.at_warm: tuple[int, float, float] | None = None  # (count, perf, cpu)

    def add(self, n: int) -> None:
        self.count += n
        if self.at_warm is None and self.count >= self.warmup:
            self.at_warm = (self.count, time.perf_counter(), time.process_time())

    def result(self) -> dict[str, Any]:
        """Timed bytes, seconds and CPU seconds from the warm-up mark until now."""
        now, cpu = time.perf_counter(), time.process_time()
        count, t0, cpu0 = self.at_warm or (self.count, now, cpu)
        return {
            "bytes": self.count,
            "timed_bytes": self.count - count,
            "seconds": now - t0,
            "cpu_s": cpu - cpu0,
        }


async def _serve_quic(args: argparse.Namespace) -> None:
    from benchmarks.stacks import _quic_credentials
    from quic_rpc.quic import QUICConnection, QUICServer, QUICSocket
    from quic_rpc.streams import ByteStream

    marks = _Marks(args.warmup)
    conns: list[QUICConnection] = []
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def sink(stream: ByteStream) -> None:
        while data := await stream.receive(1 << 20):
            marks.add(len(data))
        timed = marks.result()
        await stream.send(COUNT.pack(marks.count))
        await stream.send_eof()
        if not done.done():
            done.set_result(timed)

    sock = await QUICSocket.bind(args.host, 0)
    creds = _quic_credentials(Path(args.certs), "server")
    config = _quic_config(args.max_datagram_size)
    server = QUICServer(sock, creds, config, sink, on_connection=conns.append)
    await server.start()
    _emit({"ready": True, "port": sock.local_address[1]})
    timed = await done
    state = await _settle(conns[0])
    _emit({**timed, "stats": _quic_stats(conns[0], state)})
    with contextlib.suppress(TimeoutError):  # the client closes once it has the count
        await asyncio.wait_for(conns[0].wait_closed(), SETTLE_S + 10)
    await server.abort()
    await sock.close()


async def _send_quic(args: argparse.Namespace) -> None:
    from benchmarks.stacks import _quic_credentials
    from quic_rpc.quic import QUICSocket, connect

    sock = await QUICSocket.bind("0.0.0.0", 0)
    creds = _quic_credentials(Path(args.certs), "client")
    config = _quic_config(args.max_datagram_size)
    conn = await connect(sock, args.server, args.port, creds, config, "localhost")
    stream = await conn.open_stream()
    marks = _Marks(args.warmup)
    chunk = b"q" * CHUNK
    while marks.count < args.bytes:
        piece = chunk[: args.bytes - marks.count]
        await stream.send(piece)
        marks.add(len(piece))
    await stream.send_eof()
    reply = b""
    while len(reply) < COUNT.size and (data := await stream.receive()):
        reply += data
    timed = marks.result()
    state = await _settle(conn)
    _emit({**timed, "received": COUNT.unpack(reply)[0], "stats": _quic_stats(conn, state)})
    conn.abort()
    await sock.close()


def _tcp_info(sock: socket.socket) -> dict[str, Any]:
    cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return {
        "mss": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        "congestion_control": cc.split(b"\0", 1)[0].decode(),
    }


def _serve_tcp(args: argparse.Namespace) -> None:
    with socket.create_server((args.host, 0)) as listener:
        _emit({"ready": True, "port": listener.getsockname()[1]})
        conn, _ = listener.accept()
        with conn:
            marks = _Marks(args.warmup)
            buf = bytearray(1 << 20)
            while n := conn.recv_into(buf):
                marks.add(n)
            timed = marks.result()
            conn.sendall(COUNT.pack(marks.count))
            _emit({**timed, "stats": _tcp_info(conn)})


def _send_tcp(args: argparse.Namespace) -> None:
    with socket.create_connection((args.server, args.port)) as sock:
        marks = _Marks(args.warmup)
        chunk = b"t" * CHUNK
        while marks.count < args.bytes:
            piece = chunk[: args.bytes - marks.count]
            sock.sendall(piece)
            marks.add(len(piece))
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < COUNT.size and (data := sock.recv(64)):
            reply += data
        timed = marks.result()
        _emit({**timed, "received": COUNT.unpack(reply)[0], "stats": _tcp_info(sock)})


async def _serve_grpc(args: argparse.Namespace) -> None:
    """benchmarks.stacks' grpc-direct server; each stdin line is answered with this
    process's CPU seconds (the driver samples them at the client's phase changes)."""
    from benchmarks.stacks import start_server

    handle = await start_server("grpc-direct", Path(args.certs), host=args.host)
    _emit({"ready": True, "port": handle.port})
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        _emit({"cpu_s": time.process_time()})
    await handle.stop()


async def _send_grpc(args: argparse.Namespace) -> None:
    """A warm-up call, then (after a line on stdin) the timed call, on one channel."""
    from benchmarks.stacks import client_side

    side = await client_side("grpc-direct", Path(args.certs), args.port, {}, args.server)
    conn = await side.connect()
    chunk = b"g" * CHUNK
    warm = await conn.bulk(args.warmup, chunk)
    _emit({"warm": warm})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    timed_bytes = args.bytes - args.warmup
    t0, cpu0 = time.perf_counter(), time.process_time()
    got = await conn.bulk(timed_bytes, chunk)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    await conn.close()
    await side.aclose()
    timed = {"bytes": args.bytes, "timed_bytes": timed_bytes, "seconds": seconds, "cpu_s": cpu_s}
    _emit({**timed, "received": warm + got, "stats": {}})


# -- the driver ------------------------------------------------------------------------------


class _Child:
    """A ``serve``/``send`` process in a namespace: JSON lines on stdout, stderr to a file."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: IO[bytes], what: str) -> None:
        self.proc = proc
        self._stderr = stderr
        self.what = what

    @classmethod
    async def spawn(cls, prefix: Sequence[str], argv: Sequence[str], workdir: Path) -> _Child:
        what = f"{argv[0]} {argv[2]}"
        stderr = tempfile.NamedTemporaryFile(dir=workdir, suffix=".stderr", delete=False)
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-m", "benchmarks.lan", *argv,
            stdin=pipe, stdout=pipe, stderr=stderr, cwd=_ROOT,
        )  # fmt: skip
        return cls(proc, stderr, what)

    async def read(self, limit_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        except TimeoutError:
            raise RuntimeError(f"{self.what}: no answer within {limit_s:.0f} s") from None
        if not line:
            await self.proc.wait()
            last = (self.stderr().strip().splitlines() or ["(no stderr)"])[-1]
            raise RuntimeError(f"{self.what} exited ({self.proc.returncode}): {last}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_text(errors="replace")[-2000:]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        self._stderr.close()


def _limit_s(total: int) -> float:
    """How long a transfer may take before it counts as hung: 10 Mbit/s, plus a minute."""
    return 60.0 + total * 8 / 10e6


async def _transfer(
    lan: Lan, row: RowSpec, certs: Path, total: int, warmup: int, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one upload; the client's and the server's results."""
    common = ["--certs", str(certs), "--bytes", str(total), "--warmup", str(warmup)]
    if row.max_datagram_size:
        common += ["--max-datagram-size", str(row.max_datagram_size)]
    limit = _limit_s(total)
    server = await _Child.spawn(
        lan.exec_prefix("srv"),
        ["serve", "--kind", row.stack, "--host", SERVER_ADDR, *common],
        workdir,
    )
    try:
        ready = await server.read(60)
        client = await _Child.spawn(
            lan.exec_prefix("cli"),
            ["send", "--kind", row.stack, "--server", SERVER_ADDR, "--port", str(ready["port"]),
             *common],
            workdir,
        )  # fmt: skip
        try:
            if row.stack != "grpc-direct":
                sent = await client.read(limit)
                return sent, await server.read(limit)
            await client.read(limit)  # the warm-up call is done
            await server.write("cpu")
            cpu0 = (await server.read(10))["cpu_s"]
            await client.write("go")
            sent = await client.read(limit)
            await server.write("cpu")
            cpu1 = (await server.read(10))["cpu_s"]
            return sent, {"timed_bytes": sent["timed_bytes"], "cpu_s": cpu1 - cpu0, "stats": {}}
        finally:
            await client.stop()
    finally:
        await server.stop()


def _row_result(row: RowSpec, sent: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    if sent.get("received") != sent["bytes"]:
        raise RuntimeError(f"server counted {sent.get('received')} of {sent['bytes']} bytes")
    timer = sent if row.stack == "grpc-direct" else got
    out: dict[str, Any] = {
        "row": row.id,
        "path": row.path,
        "stack": row.label,
        "link_mtu": row.mtu,
        "hop_mtu": row.hop_mtu,
        "path_limit": path_limit(row),
        "bytes": sent["bytes"],
        "timed_bytes": timer["timed_bytes"],
        "seconds": round(timer["seconds"], 3),
        "mbit_per_s": mbit_per_s(timer["timed_bytes"], timer["seconds"]),
        "client_cpu_us_per_mib": cpu_us_per_mib(sent["cpu_s"], sent["timed_bytes"]),
        "server_cpu_us_per_mib": cpu_us_per_mib(got["cpu_s"], got["timed_bytes"]),
        "timed_at": "client (second call)" if row.stack == "grpc-direct" else "server",
    }
    c, s = sent["stats"], got["stats"]
    if row.stack == "quic":
        config = _quic_config(row.max_datagram_size)
        out.update(
            max_datagram_size=config.max_datagram_size,
            pmtu_discovery=config.pmtu_discovery,
            pacing=config.pacing,
            congestion_control=config.congestion_control,
            datagram_size=[int(c["datagram_size"]), int(s["datagram_size"])],
            pmtu_probes_lost=[int(c["pmtu_probes_lost"]), int(s["pmtu_probes_lost"])],
            pmtu_state=[c["pmtu_state"], s["pmtu_state"]],
            datagrams_sent=[int(c["datagrams_sent"]), int(s["datagrams_sent"])],
            datagrams_received=[int(c["datagrams_received"]), int(s["datagrams_received"])],
            packets_lost=[int(c["packets_lost"]), int(s["packets_lost"])],
        )
    elif row.stack == "tcp":
        out.update(mss=[c["mss"], s["mss"]], congestion_control=c["congestion_control"])
    return out


async def measure(
    rows: Sequence[RowSpec], total: int, certs: Path, workdir: Path
) -> list[dict[str, Any]]:
    """One upload of ``total`` bytes per row, each on a freshly built LAN. A row that
    fails is reported with its ``error``; the others still run."""
    warmup = warmup_bytes(total)
    results: list[dict[str, Any]] = []
    for row in rows:
        try:
            with Lan(row.mtu, row.hop_mtu) as lan:
                sent, got = await _transfer(lan, row, certs, total, warmup, workdir)
            results.append(_row_result(row, sent, got))
        except (RuntimeError, OSError, ValueError, KeyError) as exc:  # the run goes on
            error = f"{type(exc).__name__}: {exc}"
            results.append({"row": row.id, "path": row.path, "stack": row.label, "error": error})
        print(json.dumps(results[-1]), flush=True)
    return results


@contextlib.contextmanager
def _certs() -> Iterator[Path]:
    from benchmarks._common import write_certs

    with tempfile.TemporaryDirectory(prefix="quicshift-lan-") as tmp:
        certs = Path(tmp)
        write_certs(certs, extra_ips=[SERVER_ADDR])
        yield certs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", nargs="?", default="drive", choices=["drive", "serve", "send"])
    parser.add_argument("--mib", type=int, default=256, help="MiB per upload (default 256)")
    parser.add_argument(
        "--rows", type=select_rows, default=list(ROWS), help="row ids, e.g. 3,4 (default: all)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    internal = argparse.SUPPRESS
    parser.add_argument("--kind", choices=["quic", "tcp", "grpc-direct"], help=internal)
    parser.add_argument("--host", help=internal)
    parser.add_argument("--server", help=internal)
    parser.add_argument("--port", type=int, help=internal)
    parser.add_argument("--certs", help=internal)
    parser.add_argument("--bytes", type=int, help=internal)
    parser.add_argument("--warmup", type=int, help=internal)
    parser.add_argument("--max-datagram-size", type=int, help=internal)
    args = parser.parse_args(argv)
    if args.role == "serve":
        if args.kind == "tcp":
            _serve_tcp(args)
        else:
            asyncio.run(_serve_quic(args) if args.kind == "quic" else _serve_grpc(args))
        return 0
    if args.role == "send":
        if args.kind == "tcp":
            _send_tcp(args)
        else:
            asyncio.run(_send_quic(args) if args.kind == "quic" else _send_grpc(args))
        return 0
    if args.mib < 1:
        parser.error("--mib must be at least 1")
    ok, reason = available()
    if not ok:
        print(f"skipped: {reason}")
        return 0
    from benchmarks._common import machine_info

    started = time.time()
    command = "python -m benchmarks.lan " + " ".join(sys.argv[1:] if argv is None else argv)
    with _certs() as certs:
        rows = asyncio.run(measure(args.rows, args.mib * MIB, certs, certs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "lan",
        "command": command.strip(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "mib": args.mib,
        "warmup_mib": round(warmup_bytes(args.mib * MIB) / MIB, 2),
        "notes": [
            "veth links between network namespaces on one host: no emulator, no TUN; "
            "client and server are separate processes sharing the host's CPUs",
            "QUIC: one quic_rpc.quic stream, same QUICConfig on both ends, pacing on "
            "(the default off loopback), path MTU discovery on",
            "timed at the receiver over the bytes after the warm-up; CPU per MiB is each "
            "process's time.process_time() over the same part",
            "TCP: one blocking socket each side, the namespace's default congestion control; "
            "grpc.aio (grpc-direct) rides on the same kernel TCP, adding TLS and HTTP/2",
            "veth does TSO/GSO, so TCP hands the kernel 64 KiB segments whatever the MTU",
        ],
        "rows": rows,
    }
    (out / "lan.json").write_text(json.dumps(result, indent=2) + "\n")
    print(render(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
