"""A lossy, delayed IP link between two network namespaces, emulated in userspace.

Why TUN: ``tc qdisc ... netem`` does not exist on the machines this runs on (no kernel
module), and the stacks under test use different transports — grpc runs over TCP, QUIC
over UDP — so the impairment has to act on IP packets, the same for both. A UDP relay
would not do for TCP, and nftables can drop packets but cannot delay them.

The lab::

    client ns  192.0.2.1/24  lk0 (TUN) ──┐                ┌── lk0 (TUN)  198.51.100.1/24  server ns
                                         └─ link router ──┘
                                   (this module, one process)

Each namespace gets one TUN device (``IFF_TUN | IFF_NO_PI``: raw IPv4 packets) with a
route to the other side's TEST-NET subnet through it. The router process opens both
devices (``setns`` into each namespace, then ``ioctl(TUNSETIFF)`` on ``/dev/net/tun``)
and moves every IPv4 packet from one device to the other through a :class:`LinkModel`
per direction: random loss first (``random.Random`` seeded per direction), then a
bottleneck of ``rate_mbit`` with a bounded FIFO (tail drop when the backlog would
exceed ``queue_bytes``, one bandwidth-delay product by default), then a fixed one-way
propagation delay. The defaults (:data:`DEFAULT_LINK`) are 20 ms each way (40 ms RTT),
1 % loss each way, 50 Mbit/s. Delays are lower bounds: a packet is never written before
its due time (the router wakes with millisecond granularity, so it can be up to ~1 ms
late, more if the machine is overloaded; the router asks for a higher CPU priority to
keep that small). Only IPv4 is forwarded (IPv6 is disabled on the devices).

Both devices exist only while the router holds them open, so they vanish with it. The
namespaces (``qsbl-<pid>-<n>-client`` / ``-server``, unique per process and link) are
deleted by :meth:`LossyLink.close` — also on errors and Ctrl-C (``async with``, and an
``atexit`` safety net) — and a later run deletes leftovers of a run that was killed
(namespaces whose creating pid is dead). Only TEST-NET addresses are configured, and
nothing is configured outside the two namespaces.

Use::

    async with LossyLink(LinkSpec(delay_ms=20, loss_pct=1)) as link:
        # start processes with link.exec_prefix("server") / ("client"), e.g.
        # ip netns exec <ns> python -m ...; the server binds link.server_addr
        stats = await link.stats()   # per direction: packets, lost, queue drops, ...

The router process itself is ``python -m benchmarks.linklab router ...`` (internal): it
prints ``{"ready": true}`` (or ``{"ready": false, "error": ...}``) on stdout, answers
``stats`` lines on stdin with a JSON line, and exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CLIENT_ADDR",
    "DEFAULT_LINK",
    "SERVER_ADDR",
    "LinkError",
    "LinkModel",
    "LinkSpec",
    "LossyLink",
    "available",
    "check_test_net",
    "in_test_net",
    "sweep_stale",
]

CLIENT_ADDR = "192.0.2.1"
SERVER_ADDR = "198.51.100.1"
_CLIENT_NET = "192.0.2.0/24"
_SERVER_NET = "198.51.100.0/24"
DEVICE = "lk0"
NS_PREFIX = "qsbl"
Side = Literal["client", "server"]

_TEST_NETS = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")
_ROOT = Path(__file__).resolve().parent.parent
_link_ids = itertools.count(1)


class LinkError(RuntimeError):
    """The link could not be built or its router failed; the message says why."""


def in_test_net(addr: str) -> bool:
    """Whether ``addr`` (address or CIDR) lies inside TEST-NET-1/2/3 (RFC 5737), the
    only addresses network tests and benchmarks may give their hosts. Raises
    ValueError if ``addr`` is not an IP address or network."""
    net = ipaddress.ip_network(addr, strict=False)
    return isinstance(net, ipaddress.IPv4Network) and any(net.subnet_of(t) for t in _TEST_NETS)


def check_test_net(addr: str) -> None:
    """Raise :class:`LinkError` unless ``addr`` (address or CIDR) is inside TEST-NET-1/2/3."""
    try:
        inside = in_test_net(addr)
    except ValueError as exc:
        raise LinkError(f"not an IP address/network: {addr!r}") from exc
    if not inside:
        raise LinkError(f"{addr} is not inside a TEST-NET range; the link lab refuses it")


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction's impairment (both directions get the same, with their own RNG).

    ``queue_bytes`` bounds the bottleneck's backlog (tail drop beyond it); ``None`` means
    one bandwidth-delay product (``rate * 2 * delay``), at least 64 KiB.
    ``tcp_congestion_control`` sets ``net.ipv4.tcp_congestion_control`` in both
    namespaces; ``None`` keeps the kernel's default, which is what a grpc user gets.
    """

    delay_ms: float = 20.0
    loss_pct: float = 1.0
    rate_mbit: float = 50.0
    queue_bytes: int | None = None
    seed: int = 1
    tcp_congestion_control: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay_ms <= 10_000:
            raise ValueError(f"delay_ms must be within 0..10000, got {self.delay_ms}")
        if not 0.0 <= self.loss_pct <= 100.0:
            raise ValueError(f"loss_pct must be within 0..100, got {self.loss_pct}")
        if not 0.0 < self.rate_mbit <= 100_000:
            raise ValueError(f"rate_mbit must be within (0, 100000], got {self.rate_mbit}")
        if self.queue_bytes is not None and self.queue_bytes < 1500:
            raise ValueError(f"queue_bytes must be at least 1500, got {self.queue_bytes}")
        cc = self.tcp_congestion_control
        if cc is not None and not re.fullmatch(r"[a-z0-9_]{1,16}", cc):
            raise ValueError(f"bad tcp_congestion_control {cc!r}")

    @property
    def effective_queue_bytes(self) -> int:
        if self.queue_bytes is not None:
            return self.queue_bytes
        bdp = self.rate_mbit * 1e6 / 8 * (2 * self.delay_ms / 1000)
        return max(64 * 1024, round(bdp))

    def describe(self) -> str:
        text = (
            f"{self.delay_ms:g} ms one-way delay each direction ({2 * self.delay_ms:g} ms RTT), "
            f"{self.loss_pct:g}% random loss each direction, {self.rate_mbit:g} Mbit/s, "
            f"{self.effective_queue_bytes:,}-byte queue (tail drop)"
        )
        if self.tcp_congestion_control:
            text += f", TCP congestion control {self.tcp_congestion_control}"
        return text

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["queue_bytes"] = self.effective_queue_bytes
        return data


DEFAULT_LINK = LinkSpec()
"""The lossy link of the benchmark: 40 ms RTT, 1 % loss per direction, 50 Mbit/s."""


# -- the router ----------------------------------------------------------------------------


class LinkModel:
    """One direction of the link, as a virtual clock: no timers per packet.

    :meth:`arrive` decides a packet's fate at the time it enters the link (loss, tail
    drop) and, if it survives, when it leaves (serialisation at ``rate`` after the ones
    before it, plus the propagation delay). Departure times never decrease, so the
    pending packets form a FIFO; :meth:`due` hands out the ones whose time has come.
    """

    def __init__(self, spec: LinkSpec, seed: int) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self._bytes_per_s = spec.rate_mbit * 1e6 / 8
        self._delay_s = spec.delay_ms / 1000
        self._queue_limit = spec.effective_queue_bytes
        self._busy_until = 0.0
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.packets = 0
        self.bytes = 0
        self.lost = 0
        self.queue_drops = 0
        self.forwarded = 0
        self.write_errors = 0
        self.not_ipv4 = 0
        self.max_backlog_bytes = 0

    def arrive(self, packet: bytes, now: float) -> bool:
        """Take a packet in at ``now``; False if it was dropped."""
        self.packets += 1
        self.bytes += len(packet)
        if not packet or packet[0] >> 4 != 4:
            self.not_ipv4 += 1
            return False
        if self.spec.loss_pct and self._rng.random() * 100.0 < self.spec.loss_pct:
            self.lost += 1
            return False
        start = max(now, self._busy_until)
        backlog = round((start - now) * self._bytes_per_s)
        if backlog + len(packet) > self._queue_limit:
            self.queue_drops += 1
            return False
        self.max_backlog_bytes = max(self.max_backlog_bytes, backlog + len(packet))
        self._busy_until = start + len(packet) / self._bytes_per_s
        self._pending.append((self._busy_until + self._delay_s, packet))
        return True

    def next_due(self) -> float | None:
        return self._pending[0][0] if self._pending else None

    def due(self, now: float) -> list[bytes]:
        """The packets whose departure time is ``<= now``, in order (removed)."""
        out: list[bytes] = []
        while self._pending and self._pending[0][0] <= now:
            out.append(self._pending.popleft()[1])
        return out

    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "lost": self.lost,
            "queue_drops": self.queue_drops,
            "forwarded": self.forwarded,
            "in_flight": len(self._pending),
            "write_errors": self.write_errors,
            "not_ipv4": self.not_ipv4,
            "max_backlog_bytes": self.max_backlog_bytes,
        }


_libc: Any = None


def _setns(namespace: str) -> None:
    """Move the calling thread into network namespace ``namespace`` (``/run/netns``)."""
    global _libc
    fd = os.open(_NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)  # Python >= 3.12
        if setns is not None:
            setns(fd, _CLONE_NEWNET)
            return
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _open_tun(name: str) -> int:
    """A new TUN device ``name`` in the current network namespace; returns its fd."""
    import fcntl  # POSIX only; the rest of the module imports anywhere

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _run_router(client_ns: str, server_ns: str, spec: LinkSpec) -> int:
    out = sys.stdout
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us (stdin EOF)
    try:
        _setns(client_ns)
        client_fd = _open_tun(DEVICE)
        _setns(server_ns)
        server_fd = _open_tun(DEVICE)
    except OSError as exc:
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    with contextlib.suppress(OSError):
        os.nice(-10)  # the link should not add scheduling delay of its own
    c2s = LinkModel(spec, spec.seed * 2)
    s2c = LinkModel(spec, spec.seed * 2 + 1)
    routes = {client_fd: (c2s, server_fd), server_fd: (s2c, client_fd)}
    sel = selectors.DefaultSelector()
    for fd in routes:
        sel.register(fd, selectors.EVENT_READ, fd)
    stdin_fd = sys.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_READ, None)
    pending_line = b""
    out.write(json.dumps({"ready": True, "device": DEVICE, "pid": os.getpid()}) + "\n")
    out.flush()

    def stats() -> dict[str, Any]:
        return {"c2s": c2s.stats(), "s2c": s2c.stats()}

    clock = time.monotonic
    running = True
    while running:
        dues = [d for d in (c2s.next_due(), s2c.next_due()) if d is not None]
        timeout = max(0.0, min(dues) - clock()) if dues else None
        for key, _ in sel.select(timeout):
            if key.data is None:
                try:
                    chunk = os.read(stdin_fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    running = False
                    break
                pending_line += chunk
                while b"\n" in pending_line:
                    line, pending_line = pending_line.split(b"\n", 1)
                    if line.strip() == b"stats":
                        out.write(json.dumps(stats()) + "\n")
                        out.flush()
                continue
            model, _ = routes[key.data]
            now = clock()
            for _ in range(256):
                try:
                    packet = os.read(key.data, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                model.arrive(packet, now)
        now = clock()
        for model, out_fd in routes.values():
            for packet in model.due(now):
                try:
                    os.write(out_fd, packet)
                    model.forwarded += 1
                except OSError:
                    model.write_errors += 1
    out.write(json.dumps({"final": stats()}) + "\n")
    out.flush()
    for fd in routes:
        os.close(fd)
    return 0


# -- the orchestrator side ----------------------------------------------------------------


def _cmd(argv: Sequence[str], *, check: bool = True, timeout: float = 20.0) -> str:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LinkError(f"{' '.join(argv)}: {exc}") from exc
    if check and r.returncode != 0:
        raise LinkError(f"{' '.join(argv)} failed (rc={r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _list_netns() -> list[str]:
    with contextlib.suppress(LinkError):
        out = _cmd(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in out.splitlines() if line.strip()]
    return []


def _delete_netns(name: str) -> None:
    """Kill what still runs in namespace ``name`` (processes a link started), delete it."""
    with contextlib.suppress(LinkError):
        for pid in _cmd(["ip", "netns", "pids", name], check=False).split():
            if pid.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        _cmd(["ip", "netns", "del", name], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete link namespaces (``qsbl-<pid>-...``) left by runs whose process is gone."""
    pattern = re.compile(rf"^{NS_PREFIX}-(\d+)-")
    removed = []
    for name in _list_netns():
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_netns(name)
            removed.append(name)
    return removed


_availability: tuple[bool, str] | None = None


def netns_prerequisites(what: str = "") -> str:
    """Why this process cannot create network namespaces (and ``what`` else it needs
    root for), or "" if it can try: Linux, root and ``ip``."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces" + (f" and {what}" if what else "")
    if shutil.which("ip") is None:
        return "the 'ip' tool (iproute2) is missing"
    return ""


def available() -> tuple[bool, str]:
    """Can this process build a link? ``(True, "")`` or ``(False, reason)``; cached.

    Needs Linux, root, ``ip`` and ``/dev/net/tun``, and actually creates a probe
    namespace with a TUN device in it (and deletes it again).
    """
    global _availability
    if _availability is not None:
        return _availability
    missing = netns_prerequisites("TUN devices")
    if missing:
        return False, missing
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing (no TUN support)"
    probe = f"{NS_PREFIX}-{os.getpid()}-probe"
    try:
        _cmd(["ip", "netns", "add", probe])
        _cmd(["ip", "-n", probe, "tuntap", "add", "dev", "probe0", "mode", "tun"])
        _availability = (True, "")
    except LinkError as exc:
        _availability = (False, f"cannot build a namespace with a TUN device: {exc}")
    finally:
        _delete_netns(probe)
    return _availability


_open_links: set[LossyLink] = set()


@atexit.register
def _close_leftovers() -> None:
    for link in list(_open_links):
        link.close()


class LossyLink:
    """Two namespaces joined by the TUN link router; see the module docstring.

    ``async with`` builds it and always tears it down; :meth:`close` is synchronous and
    idempotent, so it also runs inside cancellation.
    """

    def __init__(self, spec: LinkSpec = DEFAULT_LINK) -> None:
        for addr in (CLIENT_ADDR, SERVER_ADDR, _CLIENT_NET, _SERVER_NET):
            check_test_net(addr)
        self.spec = spec
        base = f"{NS_PREFIX}-{os.getpid()}-{next(_link_ids)}"
        self.client_ns = f"{base}-client"
        self.server_ns = f"{base}-server"
        self.client_addr = CLIENT_ADDR
        self.server_addr = SERVER_ADDR
        self._router: asyncio.subprocess.Process | None = None
        self._created: list[str] = []
        self._stats_lock = asyncio.Lock()
        self.tcp_congestion_control: str | None = None

    async def __aenter__(self) -> LossyLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def namespace(self, side: Side) -> str:
        return self.client_ns if side == "client" else self.server_ns

    def exec_prefix(self, side: Side) -> list[str]:
        """argv prefix that runs a command inside ``side``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(side)]

    async def start(self) -> None:
        """Create the namespaces and the router, configure addresses; LinkError if not."""
        ok, reason = available()
        if not ok:
            raise LinkError(reason)
        sweep_stale()
        _open_links.add(self)
        try:
            for ns in (self.client_ns, self.server_ns):
                _cmd(["ip", "netns", "add", ns])
                self._created.append(ns)
                _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
            await self._start_router()
            self._configure("client", f"{CLIENT_ADDR}/24", _SERVER_NET)
            self._configure("server", f"{SERVER_ADDR}/24", _CLIENT_NET)
            self.tcp_congestion_control = _cmd(
                [*self.exec_prefix("client"), "sysctl", "-n", "net.ipv4.tcp_congestion_control"]
            ).strip()
        except BaseException:
            self.close()
            raise

    async def _start_router(self) -> None:
        spec = self.spec
        argv = [
            sys.executable,
            "-m",
            "benchmarks.linklab",
            "router",
            "--client-netns",
            self.client_ns,
            "--server-netns",
            self.server_ns,
            "--delay-ms",
            repr(spec.delay_ms),
            "--loss",
            repr(spec.loss_pct),
            "--rate-mbit",
            repr(spec.rate_mbit),
            "--queue-bytes",
            str(spec.effective_queue_bytes),
            "--seed",
            str(spec.seed),
        ]
        self._router = await asyncio.create_subprocess_exec(
            *argv,
            cwd=_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        hello = await self._read_line(20.0)
        if not hello.get("ready"):
            raise LinkError(f"link router did not start: {hello.get('error', hello)}")

    def _configure(self, side: Side, cidr: str, peer_net: str) -> None:
        check_test_net(cidr)
        check_test_net(peer_net)
        ns = self.namespace(side)
        with contextlib.suppress(LinkError):  # only IPv4 crosses the link
            _cmd(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{DEVICE}.disable_ipv6=1",
                ]
            )
        cc = self.spec.tcp_congestion_control
        if cc:
            _cmd(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    f"net.ipv4.tcp_congestion_control={cc}",
                ]
            )
        _cmd(["ip", "-n", ns, "addr", "add", cidr, "dev", DEVICE])
        _cmd(["ip", "-n", ns, "link", "set", DEVICE, "up"])
        _cmd(["ip", "-n", ns, "route", "add", peer_net, "dev", DEVICE])

    async def _read_line(self, limit_s: float) -> dict[str, Any]:
        assert self._router is not None and self._router.stdout is not None
        try:
            line = await asyncio.wait_for(self._router.stdout.readline(), limit_s)
        except TimeoutError:
            raise LinkError(f"link router: no answer within {limit_s:.0f}s") from None
        if not line:
            err = b""
            if self._router.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    err = await asyncio.wait_for(self._router.stderr.read(), 2)
            raise LinkError(f"link router exited: {err.decode(errors='replace')[-500:]}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def stats(self) -> dict[str, Any]:
        """Counters of both directions (``c2s``, ``s2c``) since the link was built."""
        async with self._stats_lock:
            if self._router is None or self._router.stdin is None:
                raise LinkError("the link is not running")
            self._router.stdin.write(b"stats\n")
            await self._router.stdin.drain()
            return await self._read_line(10.0)

    def socket(self, side: Side, kind: socket.SocketKind = socket.SOCK_DGRAM) -> socket.socket:
        """An IPv4 socket of this process that lives in ``side``'s namespace (for tests)."""
        made: list[socket.socket | BaseException] = []

        def create() -> None:
            try:
                _setns(self.namespace(side))
                made.append(socket.socket(socket.AF_INET, kind))
            except BaseException as exc:
                made.append(exc)

        thread = threading.Thread(target=create, name=f"netns-socket-{side}")
        thread.start()
        thread.join()
        result = made[0]
        if isinstance(result, BaseException):
            raise LinkError(f"cannot create a socket in {self.namespace(side)}: {result}")
        return result

    async def aclose(self) -> None:
        router = self._router
        if router is not None and router.returncode is None and router.stdin is not None:
            with contextlib.suppress(Exception):
                router.stdin.close()
                await asyncio.wait_for(router.wait(), 3)
        self.close()

    def close(self) -> None:
        """Stop the router and delete both namespaces (and anything still in them)."""
        router, self._router = self._router, None
        if router is not None:
            transport = getattr(router, "_transport", None)
            popen = transport.get_extra_info("subprocess") if transport is not None else None
            if popen is not None:
                with contextlib.suppress(OSError):
                    popen.kill()  # a no-op once it has exited
            if transport is not None:  # release the pipes now, not after the loop closed
                with contextlib.suppress(Exception):
                    transport.close()
        while self._created:
            _delete_netns(self._created.pop())
        _open_links.discard(self)


# -- command line (the router process) ------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.linklab")
    sub = parser.add_subparsers(dest="command", required=True)
    router = sub.add_parser("router", help="internal: run the link between two namespaces")
    router.add_argument("--client-netns", required=True)
    router.add_argument("--server-netns", required=True)
    router.add_argument("--delay-ms", type=float, default=DEFAULT_LINK.delay_ms)
    router.add_argument("--loss", type=float, default=DEFAULT_LINK.loss_pct)
    router.add_argument("--rate-mbit", type=float, default=DEFAULT_LINK.rate_mbit)
    router.add_argument("--queue-bytes", type=int, default=None)
    router.add_argument("--seed", type=int, default=DEFAULT_LINK.seed)
    args = parser.parse_args(argv)
    spec = LinkSpec(
        delay_ms=args.delay_ms,
        loss_pct=args.loss,
        rate_mbit=args.rate_mbit,
        queue_bytes=args.queue_bytes,
        seed=args.seed,
    )
    return _run_router(args.client_netns, args.server_netns, spec)


if __name__ == "__main__":
    raise SystemExit(main())
