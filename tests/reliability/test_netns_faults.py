"""Network faults across real network namespaces, QUIC interop-runner style, at the RPC
level: client and server are separate processes (``tests.reliability.netns_rpc_peer``) in
their own namespaces, with a router or a link emulator namespace between them (TEST-NET
addresses only).

* handshake under 30 % loss both ways (nftables random drop on the router)
* 4 MiB down + 4 MiB up under 2 % loss, and under 2 % corruption (linkemu in the middle)
* a 5 s blackhole mid-download, then recovery on the same connection
* port rebinding mid-download (conntrack flush on a ``masquerade random`` router)
* the server process is SIGKILLed mid-download and restarted on the same address: the
  client reconnects and resumes after the last verified chunk
* graceful server shutdown drains in-flight calls and refuses new ones

Every transfer is sequence-numbered (chunk = 8-byte index + content derived from it) and
checked chunk by chunk, plus SHA-256 of the whole stream, in both directions. No assertion
is about elapsed time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import fixtures as _netlab_fixtures
from tests.netlab.namespaces import Lab, Namespace, NetnsProcess
from tests.netlab.nat import RA_WAN, S_ADDR, NatLab, set_forward_loss
from tests.quic_netns.pki import PkiFiles, write_pki
from tests.quic_netns.test_quic_netns import _emu_stats, _line_topology, _start_emu

from .netns_rpc_peer import CHUNK, stream_sha256

# the network-lab fixtures (tests/reliability/conftest.py does not load them)
netlab = _netlab_fixtures.netlab
nat_lab = _netlab_fixtures.nat_lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

PEER = "tests.reliability.netns_rpc_peer"
PORT = 4433
SERVER = f"203.0.113.10:{PORT}"
MIB = 1024 * 1024
N_4MIB = 4 * MIB // CHUNK  # 256 chunks


def _routed_topology(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    """cli 198.51.100.2 ── rtr (forwards) ── srv 203.0.113.10."""
    cli = lab.add_namespace("cli")
    rtr = lab.add_namespace("rtr")
    srv = lab.add_namespace("srv")
    lab.connect(cli, "eth0", "198.51.100.2/24", rtr, "left", "198.51.100.1/24")
    lab.connect(rtr, "right", "203.0.113.1/24", srv, "eth0", "203.0.113.10/24")
    cli.add_route("default", via="198.51.100.1")
    srv.add_route("default", via="203.0.113.1")
    rtr.enable_forwarding()
    return cli, rtr, srv


def _forward_drops(ns: Namespace) -> int:
    data = ns.nft_json("list", "table", "inet", "qsloss")
    return sum(
        int(expr["counter"]["packets"])
        for item in data.get("nftables", [])
        if "rule" in item
        for expr in item["rule"].get("expr", [])
        if "counter" in expr
    )


async def _server(ns: Namespace, pki: PkiFiles, bind: str = SERVER, *extra: str) -> NetnsProcess:
    proc = await ns.spawn_python(
        ["server", "--bind", bind, *pki.args("server"), *extra], module=PEER
    )
    ready = await proc.read_json(timeout=60)
    assert ready["event"] == "ready", proc.describe()
    return proc


class Driver:
    """Sends numbered commands to the client process and collects their answers."""

    def __init__(self, proc: NetnsProcess) -> None:
        self.proc = proc
        self.next_id = 0

    async def send(self, cmd: str, **kw: Any) -> int:
        self.next_id += 1
        await self.proc.send_json({"cmd": cmd, "id": self.next_id, **kw})
        return self.next_id

    async def wait(
        self,
        cmd_id: int,
        event: str | None = None,
        timeout: float = 240,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        while True:
            msg = await self.proc.read_json(timeout=timeout)
            if msg.get("id") != cmd_id:
                continue
            if msg.get("event") == "error":
                raise AssertionError(f"client error: {msg}\n{self.proc.describe()}")
            if event is None or msg.get("event") == event:
                return msg

    async def run(self, cmd: str, **kw: Any) -> dict[str, Any]:
        return await self.wait(await self.send(cmd, **kw))

    async def verified_transfer(self, count: int) -> dict[str, Any]:
        """Download then upload ``count`` chunks; both checked chunk by chunk + SHA-256."""
        down = await self.run("download", count=count)
        _check_download(down, count)
        await self.check_upload(count)
        return down

    async def check_upload(self, count: int) -> None:
        up = await self.run("upload", count=count)
        assert up["result"] == up["expected"] == f"{count}:{stream_sha256(0, count)}", up


def _check_download(down: dict[str, Any], count: int) -> None:
    assert "error" not in down, down
    assert down["chunks"] == count and down["sha256"] == stream_sha256(0, count), down


async def _client(ns: Namespace, pki: PkiFiles, server: str, *extra: str) -> Driver:
    proc = await ns.spawn_python(
        ["client", "--server", server, *pki.args("client"), *extra], module=PEER
    )
    return Driver(proc)


async def _quit(*procs: NetnsProcess) -> None:
    for proc in procs:
        await proc.send_json({"cmd": "quit"})
        await proc.expect("event", "stopped", timeout=30)
        assert await proc.wait(timeout=30) == 0, proc.describe()


async def test_handshake_under_30pct_loss_both_ways(netlab: Lab, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, rtr, srv = _routed_topology(netlab)
    set_forward_loss(rtr, [("left", "right", 30), ("right", "left", 30)])
    server = await _server(srv, pki)
    client = await _client(cli, pki, SERVER, "--handshake-timeout", "120")
    for attempt in range(3):  # three separate handshakes through the lossy router
        await client.run("connect")
        echo = await client.run("echo", payload=f"attempt {attempt}")
        assert echo["ok"], echo
        await client.check_upload(8)
    assert _forward_drops(rtr) > 0
    await _quit(client.proc, server)


@pytest.mark.parametrize("fault", ["loss", "corrupt"])
async def test_4mib_transfer_under_2pct_loss_or_corruption(
    netlab: Lab, tmp_path: Path, fault: str
) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    server = await _server(srv, pki)
    emu = await _start_emu(mid, f"--{fault}", "2")
    client = await _client(cli, pki, f"198.51.100.1:{PORT}")
    await client.run("connect")
    down = await client.verified_transfer(N_4MIB)
    assert down["retries"] == 0, down  # the same connection throughout
    stats = await _emu_stats(emu)
    key = "dropped_loss" if fault == "loss" else "corrupted"
    assert stats["c2s"][key] > 0 and stats["s2c"][key] > 0, stats
    await _quit(client.proc, server)
    await emu.stop()


async def test_5s_blackhole_then_recovery(netlab: Lab, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    server = await _server(srv, pki)
    emu = await _start_emu(mid)
    client = await _client(cli, pki, f"198.51.100.1:{PORT}")
    await client.run("connect")
    cmd_id = await client.send("download", count=128, pause_at=32)
    await client.wait(cmd_id, "paused")
    await emu.send_json({"cmd": "blackhole", "seconds": 5})
    assert (await emu.expect("event", "ok"))["cmd"] == "blackhole"
    await client.proc.send_json({"cmd": "continue"})
    down = await client.wait(cmd_id, "download_done")
    _check_download(down, 128)
    assert down["retries"] == 0, down  # recovered, not reconnected
    await client.check_upload(32)
    stats = await _emu_stats(emu)
    assert stats["s2c"]["dropped_blackhole"] + stats["c2s"]["dropped_blackhole"] > 0, stats
    await _quit(client.proc, server)
    await emu.stop()


async def test_port_rebinding_mid_transfer(nat_lab: Callable[..., NatLab], tmp_path: Path) -> None:
    nl = nat_lab(nat_a="rebinding", nat_b="cone")
    pki = write_pki(tmp_path / "pki")
    server = await _server(nl.s, pki, f"{S_ADDR}:{PORT}")
    client = await _client(nl.a, pki, f"{S_ADDR}:{PORT}")
    local_port = (await client.run("connect"))["local"][1]
    cmd_id = await client.send("download", count=N_4MIB, pause_at=64)
    await client.wait(cmd_id, "paused")
    before = nl.public_ports("rA", local_port)
    assert len(before) == 1, nl.conntrack_entries("rA")
    nl.flush_conntrack("rA")  # the NAT forgets the binding mid-transfer
    await client.proc.send_json({"cmd": "continue"})
    down = await client.wait(cmd_id, "download_done")
    _check_download(down, N_4MIB)
    assert down["retries"] == 0, down
    after = nl.public_ports("rA", local_port)
    assert after and after.isdisjoint(before), (before, after)
    # the server saw the download start from the old public port and the next call (same
    # connection) come from the new one
    blob = await server.expect("event", "blob_peer")
    assert blob["peer"] == [RA_WAN, *before], (blob, before)
    await client.check_upload(64)
    digest = await server.expect("event", "digest_peer")
    assert digest["peer"] == [RA_WAN, *after], (digest, after)
    await _quit(client.proc, server)


async def test_server_sigkill_and_restart_client_resumes(netlab: Lab, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, _, srv = _routed_topology(netlab)
    key = ["--reset-key", os.urandom(32).hex()]
    server = await _server(srv, pki, SERVER, *key)
    # a short idle timeout so the client notices a silent peer without a long wait
    client = await _client(cli, pki, SERVER, "--idle-timeout", "4")
    await client.run("connect")
    cmd_id = await client.send("download", count=N_4MIB, pause_at=64, reconnect_deadline=60)
    await client.wait(cmd_id, "paused")
    # paused after 1 MiB read, with a 2 MiB stream window: at least the last 1 MiB cannot
    # have left the server yet, so the client must notice the crash and resume
    server.proc.kill()  # SIGKILL: nothing more is sent, no close, no drain
    assert await server.wait(timeout=30) == -9
    server = await _server(srv, pki, SERVER, *key)  # same address, same reset key
    await client.proc.send_json({"cmd": "continue"})
    down = await client.wait(cmd_id, "download_done")
    _check_download(down, N_4MIB)  # every chunk exactly once, in order, intact
    print("after the crash:", {k: down[k] for k in ("chunks", "retries", "errors")})
    assert 1 <= down["retries"] <= 5, down
    assert set(down["errors"]) <= {
        "UNAVAILABLE",
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "ConnectionLostError",
    }, down
    await client.check_upload(64)
    await _quit(client.proc, server)


async def test_graceful_shutdown_drains_in_flight_calls(netlab: Lab, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, _, srv = _routed_topology(netlab)
    server = await _server(srv, pki)
    client = await _client(cli, pki, SERVER)
    await client.run("connect")
    slow_id = await client.send("slow", n=10)
    for _ in range(10):
        await server.expect("event", "slow_started")
    await server.send_json({"cmd": "drain", "grace": 60})
    closing = await server.expect("event", "closing")
    assert closing["active_calls"] == 10, closing
    late = await client.run("echo", payload="late")
    assert late["status"] == "UNAVAILABLE", late  # refused with a typed, retryable status
    await server.send_json({"cmd": "release"})
    slow = await client.wait(slow_id, "slow_done")
    assert slow["results"] == [f"done:{i}" for i in range(10)], slow  # every one, exact
    drained = await server.expect("event", "drained")
    assert drained["active_calls"] == 0, drained
    await _quit(client.proc, server)
