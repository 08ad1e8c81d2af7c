"""QUIC transport across network namespaces: server and client are separate Python
processes (``tests.quic_netns.peer``) in different namespaces.

(a) 8 MiB each way, at the same time, over a path with 40 ms RTT and 5 % loss per
    direction (userspace link emulator for the delay; loss from the emulator or from
    nftables in the kernel) - both payloads arrive intact (sha256).
(b) the client's NAT (``masquerade random``) loses its bindings mid-transfer
    (``conntrack -F``, three times), so the client's packets come out of a new public
    port each time: the connection migrates and the transfer completes intact.
Plus: a link that corrupts, duplicates, reorders and jitters; a blackhole mid-transfer.

No assertion is about speed; the only timing check is the RTT lower bound the emulated
delay guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.netlab.namespaces import Lab, Namespace, NetnsProcess
from tests.netlab.nat import RA_WAN, S_ADDR, NatLab, host_loss_drops, set_host_loss

from .peer import expected_sha256
from .pki import PkiFiles, write_pki

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

MIB = 1024 * 1024
CLIENT_SEED = 101
SERVER_SEED = 202
PORT = 4433
PEER = "tests.quic_netns.peer"
EMU = "tests.netlab.linkemu"


async def _start_server(ns: Namespace, pki: PkiFiles, bind: str, size: int) -> NetnsProcess:
    server = await ns.spawn_python(
        [
            "server",
            "--bind",
            bind,
            *pki.args("server"),
            "--send-bytes",
            str(size),
            "--seed",
            str(SERVER_SEED),
        ],
        module=PEER,
    )
    ready = await server.read_json(timeout=60)
    assert ready["event"] == "ready", server.describe()
    return server


async def _start_client(
    ns: Namespace, pki: PkiFiles, target: str, size: int, *extra: str
) -> NetnsProcess:
    client = await ns.spawn_python(
        [
            "client",
            "--server",
            target,
            *pki.args("client"),
            "--send-bytes",
            str(size),
            "--seed",
            str(CLIENT_SEED),
            *extra,
        ],
        module=PEER,
    )
    connected = await _read_until(client, {"connected"}, timeout=90)
    assert connected["event"] == "connected", (connected, client.describe())
    return client


async def _start_emu(ns: Namespace, *args: str) -> NetnsProcess:
    emu = await ns.spawn_python(
        [
            "--listen",
            f"198.51.100.1:{PORT}",
            "--target",
            f"203.0.113.10:{PORT}",
            "--upstream-bind",
            "203.0.113.1",
            "--seed",
            "9",
            *args,
        ],
        module=EMU,
    )
    ready = await emu.read_json(timeout=60)
    assert ready["event"] == "ready", emu.describe()
    return emu


async def _emu_stats(emu: NetnsProcess) -> dict[str, Any]:
    await emu.send_json({"cmd": "stats"})
    return await emu.expect("event", "stats")


async def _read_until(proc: NetnsProcess, events: set[str], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    msg = await proc.read_json(timeout=timeout)
    while msg.get("event") not in events | {"error"}:
        msg = await proc.read_json(timeout=timeout)
    return msg


async def _finish(
    client: NetnsProcess, server: NetnsProcess, size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait for both ends, check both payloads arrived intact, shut the server down."""
    done = await _read_until(client, {"done"}, timeout=500)
    assert done["event"] == "done", (done, client.describe(), server.describe())
    server_done = await _read_until(server, {"stream_done", "stream_error"}, timeout=120)
    client_to_server = expected_sha256(size, CLIENT_SEED)
    server_to_client = expected_sha256(size, SERVER_SEED)
    assert done["sent"] == size and done["sha256_sent"] == client_to_server
    assert done["received"] == size
    assert done["sha256_received"] == server_to_client
    assert server_done["event"] == "stream_done", server_done
    assert server_done["received"] == size
    assert server_done["sha256_received"] == client_to_server
    assert server_done["sha256_sent"] == server_to_client
    closed = await _read_until(client, {"closed"}, timeout=300)
    assert closed["event"] == "closed", closed
    assert await client.wait(timeout=30) == 0, client.describe()
    await server.send_json({"cmd": "quit"})
    await server.expect("event", "stopped")
    await server.stop()
    return done, server_done


def _line_topology(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    """cli 198.51.100.2 ── mid (198.51.100.1 | 203.0.113.1) ── srv 203.0.113.10.

    mid does not forward: the only way across is the link emulator running in it."""
    cli = lab.add_namespace("cli")
    mid = lab.add_namespace("mid")
    srv = lab.add_namespace("srv")
    lab.connect(cli, "eth0", "198.51.100.2/24", mid, "left", "198.51.100.1/24")
    lab.connect(mid, "right", "203.0.113.1/24", srv, "eth0", "203.0.113.10/24")
    return cli, mid, srv


@pytest.mark.slow
@pytest.mark.parametrize("loss_by", ["linkemu", "nftables"])
async def test_8mib_both_ways_over_lossy_40ms_path(
    netlab: Lab, tmp_path: Path, loss_by: str
) -> None:
    size = 8 * MIB
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    if loss_by == "nftables":
        # 5 % of what the client sends and 5 % of what it receives, dropped by the kernel
        set_host_loss(cli, "eth0", egress=5, ingress=5)
    emu_loss = "5" if loss_by == "linkemu" else "0"
    server = await _start_server(srv, pki, f"203.0.113.10:{PORT}", size)
    emu = await _start_emu(mid, "--delay-ms", "20", "--loss", emu_loss)
    client = await _start_client(cli, pki, f"198.51.100.1:{PORT}", size)

    done, _ = await _finish(client, server, size)

    # the path really was that bad: lower bound of the RTT, and packets were lost.
    # (rtt_smoothed, not rtt_min: the transport stamps a whole receive batch with one
    # clock reading, so single samples can come out below the path's real RTT.)
    assert done["stats"]["rtt_smoothed"] >= 0.040, done["stats"]
    assert done["stats"]["packets_lost"] > 0, done["stats"]
    stats = await _emu_stats(emu)
    if loss_by == "linkemu":
        assert stats["c2s"]["dropped_loss"] > 0 and stats["s2c"]["dropped_loss"] > 0, stats
    else:
        drops = host_loss_drops(cli)
        assert drops["egress"] > 0 and drops["ingress"] > 0, drops
    await emu.stop()


async def test_transfer_over_corrupting_duplicating_reordering_link(
    netlab: Lab, tmp_path: Path
) -> None:
    size = 2 * MIB
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    server = await _start_server(srv, pki, f"203.0.113.10:{PORT}", size)
    emu = await _start_emu(
        mid,
        "--delay-ms",
        "5",
        "--jitter-ms",
        "3",
        "--corrupt",
        "2",
        "--duplicate",
        "2",
        "--reorder",
        "3",
        "--reorder-gap-ms",
        "15",
    )
    client = await _start_client(cli, pki, f"198.51.100.1:{PORT}", size)
    await _finish(client, server, size)
    stats = await _emu_stats(emu)
    for d in ("c2s", "s2c"):
        assert stats[d]["corrupted"] > 0, stats
        assert stats[d]["duplicated"] > 0, stats
        assert stats[d]["reordered"] > 0, stats
    await emu.stop()


async def test_transfer_survives_a_blackhole(netlab: Lab, tmp_path: Path) -> None:
    size = 2 * MIB
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    server = await _start_server(srv, pki, f"203.0.113.10:{PORT}", size)
    emu = await _start_emu(mid, "--delay-ms", "10")
    client = await _start_client(
        cli, pki, f"198.51.100.1:{PORT}", size, "--pause-at", str(size // 2)
    )
    paused = await _read_until(client, {"paused"}, timeout=300)
    assert paused["event"] == "paused", paused
    # nothing gets through for 3 s (well below the 30 s idle timeout), in both directions
    await emu.send_json({"cmd": "blackhole", "seconds": 3})
    assert (await emu.expect("event", "ok"))["cmd"] == "blackhole"
    await client.send_json({"cmd": "continue"})
    await _finish(client, server, size)
    stats = await _emu_stats(emu)
    assert stats["c2s"]["dropped_blackhole"] > 0, stats
    await emu.stop()


async def _binding_after_traffic(nl: NatLab, client_port: int) -> set[int]:
    """rA's public ports for the client, once the client has sent something through it
    (up to 10 s; empty if it never did)."""
    for _ in range(200):
        ports = nl.public_ports("rA", client_port)
        if ports:
            return ports
        await asyncio.sleep(0.05)
    return set()


async def test_transfer_survives_nat_rebinding(
    nat_lab: Callable[..., NatLab], tmp_path: Path
) -> None:
    size = 8 * MIB
    nl = nat_lab(nat_a="rebinding", nat_b="cone")
    pki = write_pki(tmp_path / "pki")
    server = await _start_server(nl.s, pki, f"{S_ADDR}:{PORT}", size)
    pauses = [size // 4, size // 2, 3 * size // 4]
    extra = [arg for p in pauses for arg in ("--pause-at", str(p))]
    client = await _start_client(nl.a, pki, f"{S_ADDR}:{PORT}", size, *extra)
    client_port = client.messages[-1]["local"][1]

    bindings: list[set[int]] = []
    for _ in pauses:
        paused = await _read_until(client, {"paused"}, timeout=300)
        assert paused["event"] == "paused", (paused, client.describe())
        # The client reports the pause once its writes reach that point. With a send
        # buffer larger than what is left to the pause, they all fit in the buffer before
        # a packet leaves, so the binding after a flush may appear a moment later.
        bindings.append(await _binding_after_traffic(nl, client_port))
        assert len(bindings[-1]) == 1, nl.conntrack_entries("rA")
        # the NAT forgets every binding while the transfer is in progress
        nl.flush_conntrack("rA")
        await client.send_json({"cmd": "continue"})

    _, server_done = await _finish(client, server, size)
    bindings.append(nl.public_ports("rA", client_port))
    ports = [next(iter(b)) for b in bindings]
    assert len(set(ports)) == len(ports), ports  # every flush gave a new public port

    # the server saw the client move from one public port to the next, mid-stream
    seen = [tuple(a) for a in server_done["peer_addresses"]]
    assert all(host == RA_WAN for host, _ in seen), seen
    assert [port for _, port in seen] == ports, (seen, ports)
