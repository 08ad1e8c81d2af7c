"""Userspace UDP link emulator (tc netem is not available on these machines).

A UDP "middlebox": clients send to the emulator's *listen* address as if it were the
server; for every client address the emulator opens its own upstream socket towards the
*target* (so the server sees one distinct source port per client, and replies find their
way back to the right client).  Each direction - ``c2s`` (client→server) and ``s2c`` - has
its own :class:`Impairment`: one-way delay, jitter, random loss, corruption (one byte
flipped), duplication, reordering (a packet held back by an extra gap) and blackholes
(drop everything for a while: scheduled windows, a timed blackhole, or on/off toggle).

Use it in-process (``LinkEmulator``) or as a process, also inside a network namespace::

    python -m tests.netlab.linkemu --listen 127.0.0.1:0 --target 127.0.0.1:4433 \\
        --delay-ms 20 --loss 5 [--set s2c.corrupt_pct=1] [--blackhole 3:2] [--seed 1]

The process prints ``{"event": "ready", "listen": [host, port], ...}`` as its first stdout
line and then accepts JSON commands, one per line, on stdin (and, with ``--control
HOST:PORT``, as UDP datagrams; replies go back the same way):

* ``{"cmd": "stats"}``  → ``{"event": "stats", "c2s": {...}, "s2c": {...}, "sessions": n}``
* ``{"cmd": "set", "direction": "both"|"c2s"|"s2c", "delay_ms": 20, ...}``
* ``{"cmd": "blackhole", "seconds": 2.0, "direction": "both"}`` (timed) or
  ``{"cmd": "blackhole", "on": true|false}`` (toggle)
* ``{"cmd": "rebind"}`` - give every session a new upstream socket (new source port)
* ``{"cmd": "reset_stats"}``, ``{"cmd": "quit"}``

Every command except ``stats`` is answered with ``{"event": "ok", "cmd": ...}`` (or
``{"event": "error", ...}``).  Stdin EOF ends the process unless ``--no-stdin`` is given.

Delays are lower bounds: a packet is never sent before its due time.  Timing uses one
timer per direction over a heap ordered by (due time, arrival sequence), so with a fixed
delay and no jitter/reorder the packet order is preserved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import heapq
import json
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = [
    "DirectionStats",
    "Impairment",
    "LinkEmulator",
    "main",
    "parse_hostport",
]

Addr = tuple[str, int]
DIRECTIONS = ("c2s", "s2c")


@dataclass
class Impairment:
    """What happens to datagrams travelling in one direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform in [-jitter, +jitter], result clamped at >= 0
    loss_pct: float = 0.0
    corrupt_pct: float = 0.0  # flip one byte
    duplicate_pct: float = 0.0  # send an extra copy
    reorder_pct: float = 0.0  # hold a packet back by reorder_gap_ms extra
    reorder_gap_ms: float = 10.0

    def validate(self) -> None:
        for name in ("loss_pct", "corrupt_pct", "duplicate_pct", "reorder_pct"):
            v = getattr(self, name)
            if not 0.0 <= v <= 100.0:
                raise ValueError(f"{name} must be within 0..100, got {v}")
        for name in ("delay_ms", "jitter_ms", "reorder_gap_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def update(self, **kwargs: Any) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in kwargs.items():
            if k not in names:
                raise ValueError(f"unknown impairment setting {k!r}")
            setattr(self, k, float(v))
        self.validate()


@dataclass
class DirectionStats:
    received: int = 0  # datagrams that arrived at the emulator
    forwarded: int = 0  # datagrams sent on (duplicates included)
    bytes_received: int = 0
    bytes_forwarded: int = 0
    dropped_loss: int = 0
    dropped_blackhole: int = 0
    corrupted: int = 0
    duplicated: int = 0
    reordered: int = 0
    send_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def parse_hostport(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


_SOCKET_BUFFER = 4 << 20


def _udp_socket(family: int) -> socket.socket:
    """A non-blocking UDP socket with large buffers (bursts must not overflow it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    linux = sys.platform.startswith("linux")
    for opt, force in (
        (socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", 33 if linux else None)),
        (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", 32 if linux else None)),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force if force is not None else opt, _SOCKET_BUFFER)
        except OSError:  # not privileged: the unforced option is capped by rmem_max
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
    return sock


class _ListenProtocol(asyncio.DatagramProtocol):
    def __init__(self, emu: LinkEmulator) -> None:
        self.emu = emu

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.emu._from_client(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP errors etc.
        pass


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, emu: LinkEmulator, session: _Session) -> None:
        self.emu = emu
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.emu._from_server(data, self.session)

    def error_received(self, exc: Exception) -> None:
        pass


@dataclass
class _Session:
    client: Addr
    transport: asyncio.DatagramTransport | None = None
    last_seen: float = 0.0
    pending: list[bytes] = field(default_factory=list)  # while the upstream socket opens


class LinkEmulator:
    """The emulator; see the module docstring.  ``await start()`` / ``await close()``."""

    def __init__(
        self,
        listen: Addr,
        target: Addr,
        c2s: Impairment | None = None,
        s2c: Impairment | None = None,
        *,
        upstream_bind: str | None = None,
        blackhole_windows: list[tuple[float, float]] | None = None,
        seed: int | None = None,
        session_idle_timeout: float = 120.0,
    ) -> None:
        self.listen_requested = listen
        self.target = target
        self.impairments: dict[str, Impairment] = {
            "c2s": c2s or Impairment(),
            "s2c": s2c or Impairment(),
        }
        for imp in self.impairments.values():
            imp.validate()
        self.upstream_bind = upstream_bind
        self.blackhole_windows = list(blackhole_windows or [])
        self.rng = random.Random(seed)
        self.session_idle_timeout = session_idle_timeout
        self.stats: dict[str, DirectionStats] = {d: DirectionStats() for d in DIRECTIONS}
        self.sessions: dict[Addr, _Session] = {}
        self._blackhole_on: dict[str, bool] = {d: False for d in DIRECTIONS}
        self._blackhole_until: dict[str, float] = {d: 0.0 for d in DIRECTIONS}
        self._heap: dict[str, list[tuple[float, int, Callable[[], None]]]] = {
            d: [] for d in DIRECTIONS
        }
        self._timers: dict[str, asyncio.TimerHandle | None] = {d: None for d in DIRECTIONS}
        self._seq = 0
        self._listen: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> Addr:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        family = socket.AF_INET6 if ":" in self.listen_requested[0] else socket.AF_INET
        sock = _udp_socket(family)
        try:
            sock.bind(self.listen_requested)
        except OSError:
            sock.close()
            raise
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _ListenProtocol(self), sock=sock
        )
        self._listen = transport
        self._reaper = asyncio.create_task(self._reap_idle())
        return self.listen_address

    @property
    def started_at(self) -> float:
        """Event-loop time of ``start()``; scheduled blackhole windows count from here."""
        return self._t0

    @property
    def listen_address(self) -> Addr:
        assert self._listen is not None, "not started"
        a = self._listen.get_extra_info("sockname")
        return (a[0], a[1])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for d in DIRECTIONS:
            t = self._timers[d]
            if t is not None:
                t.cancel()
            self._heap[d].clear()
        for s in self.sessions.values():
            if s.transport is not None:
                s.transport.close()
        self.sessions.clear()
        if self._listen is not None:
            self._listen.close()

    async def __aenter__(self) -> LinkEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- control --------------------------------------------------------------------
    def _dirs(self, direction: str) -> tuple[str, ...]:
        if direction == "both":
            return DIRECTIONS
        if direction in DIRECTIONS:
            return (direction,)
        raise ValueError(f"direction must be 'c2s', 's2c' or 'both', got {direction!r}")

    def set_impairment(self, direction: str = "both", **settings: Any) -> None:
        for d in self._dirs(direction):
            self.impairments[d].update(**settings)

    def blackhole(
        self, seconds: float | None = None, *, on: bool | None = None, direction: str = "both"
    ) -> None:
        """Drop everything: for ``seconds`` from now, or switch it ``on``/off."""
        assert self._loop is not None, "not started"
        for d in self._dirs(direction):
            if seconds is not None:
                self._blackhole_until[d] = self._loop.time() + float(seconds)
            if on is not None:
                self._blackhole_on[d] = on
                if not on:
                    self._blackhole_until[d] = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "c2s": self.stats["c2s"].as_dict(),
            "s2c": self.stats["s2c"].as_dict(),
            "sessions": len(self.sessions),
            "upstream_ports": sorted(
                s.transport.get_extra_info("sockname")[1]
                for s in self.sessions.values()
                if s.transport is not None
            ),
        }

    def reset_stats(self) -> None:
        self.stats = {d: DirectionStats() for d in DIRECTIONS}

    async def rebind(self) -> None:
        """Give every session a fresh upstream socket, i.e. a new source port."""
        for s in list(self.sessions.values()):
            old = s.transport
            s.transport = None
            await self._open_upstream(s)
            if old is not None:
                old.close()

    async def handle_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Execute one JSON control command; returns the reply object."""
        name = cmd.get("cmd")
        try:
            if name == "stats":
                return {"event": "stats", **self.snapshot()}
            if name == "set":
                settings = {k: v for k, v in cmd.items() if k not in ("cmd", "direction")}
                self.set_impairment(cmd.get("direction", "both"), **settings)
            elif name == "blackhole":
                self.blackhole(
                    cmd.get("seconds"), on=cmd.get("on"), direction=cmd.get("direction", "both")
                )
            elif name == "rebind":
                await self.rebind()
            elif name == "reset_stats":
                self.reset_stats()
            elif name == "quit":
                pass
            else:
                raise ValueError(f"unknown command {name!r}")
        except (ValueError, TypeError) as exc:
            return {"event": "error", "cmd": name, "error": str(exc)}
        return {"event": "ok", "cmd": name}

    # -- data path ------------------------------------------------------------------
    def _blackholed(self, d: str, now: float) -> bool:
        if self._blackhole_on[d] or now < self._blackhole_until[d]:
            return True
        rel = now - self._t0
        return any(start <= rel < start + dur for start, dur in self.blackhole_windows)

    def _from_client(self, data: bytes, client: Addr) -> None:
        assert self._loop is not None
        s = self.sessions.get(client)
        if s is None:
            s = _Session(client=client)
            self.sessions[client] = s
            self._loop.create_task(self._open_upstream(s))
        s.last_seen = self._loop.time()
        self._impair("c2s", data, lambda payload: self._send_upstream(s, payload))

    def _from_server(self, data: bytes, s: _Session) -> None:
        assert self._loop is not None
        s.last_seen = self._loop.time()
        self._impair("s2c", data, lambda payload: self._send_to_client(s, payload))

    async def _open_upstream(self, s: _Session) -> None:
        assert self._loop is not None
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        sock = _udp_socket(family)
        try:
            if self.upstream_bind:
                sock.bind((self.upstream_bind, 0))
            sock.connect(self.target)
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _UpstreamProtocol(self, s), sock=sock
            )
        except OSError:
            sock.close()
            self.stats["c2s"].send_errors += len(s.pending)
            s.pending.clear()
            self.sessions.pop(s.client, None)
            return
        if self._closed:
            transport.close()
            return
        s.transport = transport
        pending, s.pending = s.pending, []
        for payload in pending:
            self._send_upstream(s, payload)

    def _send_upstream(self, s: _Session, payload: bytes) -> None:
        if s.transport is None:
            s.pending.append(payload)
            return
        try:
            s.transport.sendto(payload)
        except OSError:
            self.stats["c2s"].send_errors += 1

    def _send_to_client(self, s: _Session, payload: bytes) -> None:
        if self._listen is None or self._closed:
            return
        try:
            self._listen.sendto(payload, s.client)
        except OSError:
            self.stats["s2c"].send_errors += 1

    def _impair(self, d: str, data: bytes, send: Callable[[bytes], None]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        st = self.stats[d]
        imp = self.impairments[d]
        rng = self.rng
        st.received += 1
        st.bytes_received += len(data)
        if self._blackholed(d, now):
            st.dropped_blackhole += 1
            return
        if imp.loss_pct > 0 and rng.random() * 100.0 < imp.loss_pct:
            st.dropped_loss += 1
            return
        if data and imp.corrupt_pct > 0 and rng.random() * 100.0 < imp.corrupt_pct:
            buf = bytearray(data)
            buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
            data = bytes(buf)
            st.corrupted += 1
        copies = 1
        if imp.duplicate_pct > 0 and rng.random() * 100.0 < imp.duplicate_pct:
            copies = 2
            st.duplicated += 1
        for _ in range(copies):
            delay = imp.delay_ms
            if imp.jitter_ms > 0:
                delay = max(0.0, delay + rng.uniform(-imp.jitter_ms, imp.jitter_ms))
            if imp.reorder_pct > 0 and rng.random() * 100.0 < imp.reorder_pct:
                delay += imp.reorder_gap_ms
                st.reordered += 1
            payload = data

            def fire(payload: bytes = payload) -> None:
                st_now = self.stats[d]
                st_now.forwarded += 1
                st_now.bytes_forwarded += len(payload)
                send(payload)

            if delay <= 0 and not self._heap[d]:
                fire()
            else:
                self._schedule(d, now + delay / 1000.0, fire)

    def _schedule(self, d: str, due: float, fire: Callable[[], None]) -> None:
        assert self._loop is not None
        self._seq += 1
        heap = self._heap[d]
        heapq.heappush(heap, (due, self._seq, fire))
        timer = self._timers[d]
        if timer is None or due < timer.when():
            if timer is not None:
                timer.cancel()
            self._timers[d] = self._loop.call_at(due, self._run_due, d)

    def _run_due(self, d: str) -> None:
        assert self._loop is not None
        self._timers[d] = None
        heap = self._heap[d]
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            _, _, fire = heapq.heappop(heap)
            fire()
        if heap:
            self._timers[d] = self._loop.call_at(heap[0][0], self._run_due, d)

    async def _reap_idle(self) -> None:
        assert self._loop is not None
        interval = max(0.5, min(10.0, self.session_idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            cutoff = self._loop.time() - self.session_idle_timeout
            for key, s in list(self.sessions.items()):
                if s.last_seen < cutoff:
                    if s.transport is not None:
                        s.transport.close()
                    del self.sessions[key]


# ---------------------------------------------------------------------------------------
# command line


def _parse_set(items: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {d: {} for d in DIRECTIONS}
    for item in items:
        key, sep, value = item.partition("=")
        direction, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set expects DIR.NAME=VALUE, got {item!r}")
        dirs = DIRECTIONS if direction == "both" else (direction,)
        for d in dirs:
            if d not in out:
                raise ValueError(f"bad direction in --set {item!r}")
            out[d][name] = float(value)
    return out


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.netlab.linkemu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", required=True, help="HOST:PORT clients send to (port 0 = any)")
    p.add_argument("--target", required=True, help="HOST:PORT of the server")
    p.add_argument("--upstream-bind", default=None, help="local address for upstream sockets")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="loss %% each direction")
    p.add_argument("--corrupt", type=float, default=0.0, help="corruption %% each direction")
    p.add_argument("--duplicate", type=float, default=0.0, help="duplication %% each direction")
    p.add_argument("--reorder", type=float, default=0.0, help="reorder %% each direction")
    p.add_argument("--reorder-gap-ms", type=float, default=10.0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DIR.NAME=VALUE",
        help="per-direction override, DIR in c2s/s2c/both, e.g. s2c.loss_pct=3",
    )
    p.add_argument(
        "--blackhole",
        action="append",
        default=[],
        metavar="START:DURATION",
        help="scheduled blackhole window in seconds after start (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--control", default=None, help="HOST:PORT for UDP JSON control datagrams")
    p.add_argument("--no-stdin", action="store_true", help="no stdin control; run until killed")
    p.add_argument("--session-timeout", type=float, default=120.0)
    return p


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _ControlProtocol(asyncio.DatagramProtocol):
    def __init__(self, emu: LinkEmulator, done: asyncio.Event) -> None:
        self.emu = emu
        self.done = done
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's selector datagram transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        asyncio.get_running_loop().create_task(self._handle(data, addr))

    async def _handle(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            cmd = json.loads(data)
            if not isinstance(cmd, dict):
                raise ValueError("command must be a JSON object")
            reply = await self.emu.handle_command(cmd)
        except ValueError as exc:
            reply = {"event": "error", "error": str(exc)}
            cmd = {}
        if self.transport is not None:
            self.transport.sendto(json.dumps(reply).encode(), addr)
        if cmd.get("cmd") == "quit":
            self.done.set()


async def _amain(args: argparse.Namespace) -> int:
    base = {
        "delay_ms": args.delay_ms,
        "jitter_ms": args.jitter_ms,
        "loss_pct": args.loss,
        "corrupt_pct": args.corrupt,
        "duplicate_pct": args.duplicate,
        "reorder_pct": args.reorder,
        "reorder_gap_ms": args.reorder_gap_ms,
    }
    overrides = _parse_set(args.set)
    imps = {}
    for d in DIRECTIONS:
        imp = Impairment()
        imp.update(**{**base, **overrides[d]})
        imps[d] = imp
    windows = []
    for w in args.blackhole:
        start, _, dur = w.partition(":")
        windows.append((float(start), float(dur)))
    emu = LinkEmulator(
        parse_hostport(args.listen),
        parse_hostport(args.target),
        imps["c2s"],
        imps["s2c"],
        upstream_bind=args.upstream_bind,
        blackhole_windows=windows,
        seed=args.seed,
        session_idle_timeout=args.session_timeout,
    )
    listen = await emu.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    control_addr = None
    control_transport = None
    if args.control:
        control_transport, _ = await loop.create_datagram_endpoint(
            lambda: _ControlProtocol(emu, done), local_addr=parse_hostport(args.control)
        )
        ca = control_transport.get_extra_info("sockname")
        control_addr = [ca[0], ca[1]]
    _emit(
        {
            "event": "ready",
            "listen": [listen[0], listen[1]],
            "target": list(emu.target),
            "control": control_addr,
            "c2s": dataclasses.asdict(emu.impairments["c2s"]),
            "s2c": dataclasses.asdict(emu.impairments["s2c"]),
        }
    )

    async def stdin_loop() -> None:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                done.set()
                return
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                cmd = json.loads(text)
                if not isinstance(cmd, dict):
                    raise ValueError("command must be a JSON object")
            except ValueError as exc:
                _emit({"event": "error", "error": str(exc)})
                continue
            _emit(await emu.handle_command(cmd))
            if cmd.get("cmd") == "quit":
                done.set()
                return

    stdin_task = None if args.no_stdin else asyncio.create_task(stdin_loop())
    try:
        await done.wait()
    finally:
        if stdin_task is not None:
            stdin_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stdin_task
        if control_transport is not None:
            control_transport.close()
        await emu.close()
    _emit({"event": "stopped", **emu.snapshot()})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return asyncio.run(_amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
