"""Network-namespace builder for tests.

A :class:`Lab` owns a set of network namespaces whose names all start with a per-lab
prefix (``qsnl-<pid>-<labid>-``).  It creates veth pairs directly inside the namespaces
(so interface names only need to be unique per namespace), bridges, addresses, routes
and sysctls, runs commands and Python processes inside a namespace, and tears
everything down again - also after failures, and a later run sweeps leftovers of
crashed runs (namespaces whose creating pid is dead).

Two ways to do network I/O inside a namespace:

* ``Namespace.socket(...)`` creates a socket *in this process* whose network namespace
  is the lab namespace (a short-lived helper thread ``setns()``-es into it, creates the
  socket and exits; a socket keeps the namespace it was created in).  The socket can then
  be used from asyncio like any other socket.
* ``await Namespace.spawn_python(...)`` starts ``ip netns exec NAME python3 ...`` as an
  asyncio subprocess; the child prints one JSON object per line on stdout and may read
  JSON lines from stdin (see :class:`NetnsProcess`).

Only TEST-NET addresses (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) may be
configured; :meth:`Namespace.add_addr` and :meth:`Namespace.add_route` refuse others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks.linklab import in_test_net

__all__ = [
    "NS_PREFIX",
    "REPO_ROOT",
    "Lab",
    "Namespace",
    "NetlabError",
    "NetnsProcess",
    "check_test_net",
    "netns_available",
    "sweep_stale",
]

NS_PREFIX = "qsnl"
REPO_ROOT = Path(__file__).resolve().parents[2]
_CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(rf"^{NS_PREFIX}-(\d+)-")
_lab_ids = itertools.count(1)


class NetlabError(RuntimeError):
    """A namespace/link/command operation of the lab failed."""


def check_test_net(addr: str) -> None:
    """Raise NetlabError unless ``addr`` (address or CIDR) lies in a TEST-NET range."""
    try:
        inside = in_test_net(addr)
    except ValueError as exc:
        raise NetlabError(f"not an IP address/network: {addr!r}") from exc
    if not inside:
        raise NetlabError(f"{addr} is not inside a TEST-NET range; the lab refuses it")


# ---------------------------------------------------------------------------------------
# availability


_available: tuple[bool, str] | None = None


def netns_available(tools: Sequence[str] = ("ip", "nft", "conntrack")) -> tuple[bool, str]:
    """Can this process build network namespaces?  Returns ``(ok, reason)``.

    Checks root, the needed tools, and actually creates and deletes a probe namespace.
    The probe result is cached for the process.
    """
    global _available
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return False, "network namespace tests need root (euid != 0)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return False, (
            f"missing tools: {', '.join(missing)} (apt-get install -y nftables conntrack iproute2)"
        )
    if _available is None:
        probe = f"{NS_PREFIX}-{os.getpid()}-probe"
        try:
            r = subprocess.run(
                ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20
            )
            if r.returncode != 0:
                _available = (False, f"'ip netns add' failed: {r.stderr.strip()}")
            else:
                r2 = subprocess.run(
                    ["ip", "netns", "exec", probe, "nft", "list", "ruleset"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                if r2.returncode != 0:
                    _available = (False, f"nft does not work in a namespace: {r2.stderr.strip()}")
                else:
                    _available = (True, "")
        except (OSError, subprocess.SubprocessError) as exc:
            _available = (False, f"cannot create a network namespace: {exc}")
        finally:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return _available


# ---------------------------------------------------------------------------------------
# low-level helpers


def _run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise NetlabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and r.returncode != 0:
        raise NetlabError(
            f"command failed (rc={r.returncode}): {' '.join(argv)}\n"
            f"stdout: {r.stdout.strip()}\nstderr: {r.stderr.strip()}"
        )
    return r


def _list_netns() -> list[str]:
    r = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _netns_pids(name: str) -> list[int]:
    r = _run(["ip", "netns", "pids", name], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_netns(name: str) -> None:
    for pid in _netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run(["ip", "netns", "del", name], check=False)


def sweep_stale(prefix: str = NS_PREFIX) -> list[str]:
    """Delete lab namespaces (``<prefix>-<pid>-...``) whose creating process is dead."""
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    removed = []
    for name in _list_netns():
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_netns(name)
            removed.append(name)
    return removed


_libc: Any = None


def _setns_fd(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# ---------------------------------------------------------------------------------------
# processes


class NetnsProcess:
    """A subprocess running inside a namespace, speaking JSON lines on stdout/stdin.

    Every stdout line that parses as a JSON object is a message; other lines are kept
    in :attr:`other_lines`.  stderr goes to a temporary file (see :meth:`stderr_text`).
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        argv: Sequence[str],
        namespace: str,
        stderr_file: IO[bytes],
    ) -> None:
        self.proc = proc
        self.argv = list(argv)
        self.namespace = namespace
        self._stderr = stderr_file
        self.messages: list[dict[str, Any]] = []
        self.other_lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def stderr_text(self, limit: int = 4000) -> str:
        try:
            self._stderr.flush()
            data = Path(self._stderr.name).read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")

    def describe(self) -> str:
        return (
            f"[{self.namespace}] {' '.join(self.argv)} (pid {self.pid}, rc={self.returncode})\n"
            f"--- stderr tail ---\n{self.stderr_text()}"
        )

    async def read_json(self, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Next JSON object from stdout.  Raises NetlabError on EOF or timeout."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NetlabError(f"no JSON message within {timeout}s from {self.describe()}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                raise NetlabError(
                    f"no JSON message within {timeout}s from {self.describe()}"
                ) from None
            if not line:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5)
                raise NetlabError(f"process ended before sending a message: {self.describe()}")
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                self.other_lines.append(text)
                continue
            if isinstance(obj, dict):
                self.messages.append(obj)
                return obj
            self.other_lines.append(text)

    async def expect(self, key: str, value: Any, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Read messages until one has ``msg[key] == value``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.read_json(max(0.001, deadline - time.monotonic()))
            if msg.get(key) == value:
                return msg

    async def send_json(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(Exception):
                await self.proc.stdin.wait_closed()

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise NetlabError(
                f"process did not exit within {timeout}s: {self.describe()}"
            ) from None

    async def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds.  Returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._close_files()
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:  # release the pipes now, not in __del__ after the loop closed
            transport.close()
        rc = self.proc.returncode
        assert rc is not None
        return rc

    def kill_now(self) -> None:
        """Synchronous last-resort kill (used by Lab.teardown)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self._close_files()

    def _close_files(self) -> None:
        with contextlib.suppress(OSError):
            self._stderr.close()
        with contextlib.suppress(OSError):
            os.unlink(self._stderr.name)


# ---------------------------------------------------------------------------------------
# namespaces


class Namespace:
    """One network namespace of a :class:`Lab`."""

    def __init__(self, lab: Lab, role: str, name: str) -> None:
        self.lab = lab
        self.role = role
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.role!r}, {self.name!r})"

    # -- commands ------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec``) and wait for it."""
        return _run(
            ["ip", "netns", "exec", self.name, *argv], input=input, check=check, timeout=timeout
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.name, *args], check=check)

    def nft(self, script: str) -> None:
        """Load an nft script (``nft -f -``) in the namespace."""
        self.run(["nft", "-f", "-"], input=script)

    def nft_json(self, *args: str) -> Any:
        r = self.run(["nft", "-j", *args])
        return json.loads(r.stdout)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    # -- configuration -------------------------------------------------------------
    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def add_addr(self, ifname: str, cidr: str) -> None:
        check_test_net(cidr)
        self.ip("addr", "add", cidr, "dev", ifname)
        self.link_up(ifname)

    def add_route(self, dest: str, via: str | None = None, dev: str | None = None) -> None:
        if dest != "default":
            check_test_net(dest)
        args = ["route", "add", dest]
        if via is not None:
            check_test_net(via)
            args += ["via", via]
        if dev is not None:
            args += ["dev", dev]
        self.ip(*args)

    def enable_forwarding(self) -> None:
        self.sysctl("net.ipv4.ip_forward", 1)

    def addresses(self) -> list[str]:
        data = json.loads(self.ip("-j", "-4", "addr", "show").stdout)
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in data
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        ]

    # -- in-process sockets --------------------------------------------------------
    def socket(
        self,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_DGRAM,
        proto: int = 0,
    ) -> socket.socket:
        """Create a socket living in this namespace, usable from this process."""
        result: list[socket.socket] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    _setns_fd(fd)
                finally:
                    os.close(fd)
                result.append(socket.socket(family, type, proto))
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=worker, name=f"setns-{self.name}", daemon=True)
        t.start()
        t.join()
        if errors:
            raise NetlabError(f"cannot create a socket in {self.name}: {errors[0]}") from errors[0]
        return result[0]

    # -- subprocesses --------------------------------------------------------------
    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> NetnsProcess:
        """Start ``argv`` inside the namespace with piped stdin/stdout."""
        full_env = dict(os.environ)
        pp = full_env.get("PYTHONPATH")
        full_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        errf = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".stderr", delete=False)
        cmd = ["ip", "netns", "exec", self.name, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errf,
                env=full_env,
                cwd=str(cwd) if cwd is not None else str(REPO_ROOT),
                limit=1 << 20,
            )
        except BaseException:
            errf.close()
            os.unlink(errf.name)
            raise
        p = NetnsProcess(proc, cmd, self.name, errf)
        self.lab._processes.append(p)
        return p

    async def spawn_python(
        self,
        args: Sequence[str],
        *,
        module: str | None = None,
        env: dict[str, str] | None = None,
    ) -> NetnsProcess:
        """Start ``python3 -m module args...`` (or ``python3 args...``) in the namespace."""
        argv = [sys.executable, "-u"]
        if module is not None:
            argv += ["-m", module]
        return await self.spawn([*argv, *args], env=env)

    async def exec(self, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, str, str]:  # noqa: ASYNC109
        """Run a command in the namespace without blocking the event loop."""
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.name,
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NetlabError(f"timed out: {' '.join(argv)} in {self.name}") from None
        rc = proc.returncode
        assert rc is not None
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


class Lab:
    """A set of namespaces with a guaranteed teardown.  Use as a context manager.

    Namespace names are ``qsnl-<pid>-<labid>-<role>``; the pid lets :func:`sweep_stale`
    recognise leftovers of dead runs without touching other live runs.
    """

    def __init__(self, tag: str = "") -> None:
        tag = re.sub(r"[^a-zA-Z0-9]", "", tag)[:12]
        self.prefix = f"{NS_PREFIX}-{os.getpid()}-{next(_lab_ids)}{tag}"
        self.namespaces: dict[str, Namespace] = {}
        self._processes: list[NetnsProcess] = []
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def add_namespace(self, role: str) -> Namespace:
        if not re.fullmatch(r"[A-Za-z0-9_]{1,16}", role):
            raise NetlabError(f"bad namespace role name {role!r}")
        if role in self.namespaces:
            raise NetlabError(f"namespace role {role!r} already exists")
        name = f"{self.prefix}-{role}"
        _run(["ip", "netns", "add", name])
        ns = Namespace(self, role, name)
        self.namespaces[role] = ns
        ns.link_up("lo")
        return ns

    def add_veth(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        """A veth pair with end ``a_if`` in ``a`` and ``b_if`` in ``b`` (both brought up)."""
        for n in (a_if, b_if):
            if len(n) > 15:
                raise NetlabError(f"interface name too long: {n!r}")
        _run(
            [
                "ip",
                "link",
                "add",
                a_if,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                b_if,
                "netns",
                b.name,
            ]
        )
        a.link_up(a_if)
        b.link_up(b_if)

    def connect(
        self,
        a: Namespace,
        a_if: str,
        a_cidr: str | None,
        b: Namespace,
        b_if: str,
        b_cidr: str | None,
    ) -> None:
        """veth pair plus addresses on either end."""
        self.add_veth(a, a_if, b, b_if)
        if a_cidr:
            a.add_addr(a_if, a_cidr)
        if b_cidr:
            b.add_addr(b_if, b_cidr)

    def add_bridge(self, ns: Namespace, name: str, ports: Iterable[str] = ()) -> None:
        ns.ip("link", "add", name, "type", "bridge")
        for port in ports:
            ns.ip("link", "set", port, "master", name)
        ns.link_up(name)

    async def stop_processes(self, grace: float = 3.0) -> None:
        """Stop (SIGTERM, then SIGKILL) every process started in the lab's namespaces."""
        await asyncio.gather(*(p.stop(grace) for p in self._processes), return_exceptions=True)

    def teardown(self) -> None:
        """Kill the lab's processes and delete its namespaces.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for p in self._processes:
            p.kill_now()
        errors = []
        for ns in self.namespaces.values():
            try:
                _delete_netns(ns.name)
            except NetlabError as exc:  # pragma: no cover - best effort
                errors.append(str(exc))
        # also anything with our prefix that was created outside add_namespace
        for name in _list_netns():
            if name.startswith(self.prefix + "-"):
                _delete_netns(name)
        if errors:
            raise NetlabError("teardown problems: " + "; ".join(errors))
