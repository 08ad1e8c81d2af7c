"""QUIC transport across network namespaces: server and client are separate Python
processes (``tests.quic_netns.peer``) in different namespaces.

(a) 8 MiB each way, at the same time, over a path with 40 ms RTT and 5 % loss per
    direction (userspace link emulator for the delay; loss from the emulator or from
    nftables in the kernel) - both payloads arrive intact (sha256).
(b) the client's NAT (``masquerade random``) loses its bindings mid-transfer
    (``conntrack -F``), so the client's packets come out of a new public port: the
    connection migrates and the transfer completes intact.

No assertion is about speed; the only timing check is the RTT lower bound the emulated
delay guarantees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.netlab.namespaces import Lab, Namespace, NetnsProcess
from tests.netlab.nat import RA_WAN, S_ADDR, NatLab, host_loss_drops, set_host_loss

from .peer import expected_sha256
from .pki import PkiFiles, write_pki

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(600)]

SIZE = 8 * 1024 * 1024
CLIENT_SEED = 101
SERVER_SEED = 202
PORT = 4433
PEER = "tests.quic_netns.peer"


async def _start_server(ns: Namespace, pki: PkiFiles, bind: str) -> NetnsProcess:
    server = await ns.spawn_python(
        [
            "server",
            "--bind",
            bind,
            *pki.args("server"),
            "--send-bytes",
            str(SIZE),
            "--seed",
            str(SERVER_SEED),
        ],
        module=PEER,
    )
    ready = await server.read_json(timeout=60)
    assert ready["event"] == "ready", server.describe()
    return server


async def _client(ns: Namespace, pki: PkiFiles, target: str, *extra: str) -> NetnsProcess:
    return await ns.spawn_python(
        [
            "client",
            "--server",
            target,
            *pki.args("client"),
            "--send-bytes",
            str(SIZE),
            "--seed",
            str(CLIENT_SEED),
            *extra,
        ],
        module=PEER,
    )


async def _read_until(proc: NetnsProcess, events: set[str], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    msg = await proc.read_json(timeout=timeout)
    while msg.get("event") not in events | {"error"}:
        msg = await proc.read_json(timeout=timeout)
    return msg


def _check_transfer(done: dict[str, Any], server_done: dict[str, Any]) -> None:
    client_to_server = expected_sha256(SIZE, CLIENT_SEED)
    server_to_client = expected_sha256(SIZE, SERVER_SEED)
    assert done["event"] == "done", done
    assert done["sent"] == SIZE and done["sha256_sent"] == client_to_server
    assert done["received"] == SIZE
    assert done["sha256_received"] == server_to_client
    assert server_done["event"] == "stream_done", server_done
    assert server_done["received"] == SIZE
    assert server_done["sha256_received"] == client_to_server
    assert server_done["sha256_sent"] == server_to_client


def _line_topology(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    """cli 198.51.100.2 ── mid (198.51.100.1 | 203.0.113.1) ── srv 203.0.113.10.

    mid does not forward: the only way across is the link emulator running in it."""
    cli = lab.add_namespace("cli")
    mid = lab.add_namespace("mid")
    srv = lab.add_namespace("srv")
    lab.connect(cli, "eth0", "198.51.100.2/24", mid, "left", "198.51.100.1/24")
    lab.connect(mid, "right", "203.0.113.1/24", srv, "eth0", "203.0.113.10/24")
    return cli, mid, srv


@pytest.mark.parametrize("loss_by", ["linkemu", "nftables"])
async def test_8mib_both_ways_over_lossy_40ms_path(
    netlab: Lab, tmp_path: Path, loss_by: str
) -> None:
    pki = write_pki(tmp_path / "pki")
    cli, mid, srv = _line_topology(netlab)
    emu_loss = "5" if loss_by == "linkemu" else "0"
    if loss_by == "nftables":
        # 5 % of what the client sends and 5 % of what it receives, dropped by the kernel
        set_host_loss(cli, "eth0", egress=5, ingress=5)

    server = await _start_server(srv, pki, f"203.0.113.10:{PORT}")
    emu = await mid.spawn_python(
        [
            "--listen",
            f"198.51.100.1:{PORT}",
            "--target",
            f"203.0.113.10:{PORT}",
            "--upstream-bind",
            "203.0.113.1",
            "--delay-ms",
            "20",
            "--loss",
            emu_loss,
            "--seed",
            "9",
        ],
        module="tests.netlab.linkemu",
    )
    ready = await emu.read_json(timeout=60)
    assert ready["event"] == "ready", emu.describe()

    client = await _client(cli, pki, f"198.51.100.1:{PORT}")
    connected = await _read_until(client, {"connected"}, timeout=90)
    assert connected["event"] == "connected", (connected, client.describe())
    done = await _read_until(client, {"done"}, timeout=500)
    assert done["event"] == "done", (done, client.describe(), server.describe())
    server_done = await _read_until(server, {"stream_done", "stream_error"}, timeout=60)
    _check_transfer(done, server_done)

    # the path really was that bad: lower bound of the RTT, and packets were lost.
    # (rtt_smoothed, not rtt_min: the transport stamps a whole receive batch with one
    # clock reading, so single samples can come out below the path's real RTT.)
    assert done["stats"]["rtt_smoothed"] >= 0.040, done["stats"]
    await emu.send_json({"cmd": "stats"})
    stats = await emu.expect("event", "stats")
    if loss_by == "linkemu":
        assert stats["c2s"]["dropped_loss"] > 0 and stats["s2c"]["dropped_loss"] > 0, stats
    else:
        drops = host_loss_drops(cli)
        assert drops["egress"] > 0 and drops["ingress"] > 0, drops
    assert done["stats"]["packets_lost"] > 0

    assert await client.wait(timeout=30) == 0, client.describe()
    await server.send_json({"cmd": "quit"})
    await server.expect("event", "stopped")
    await emu.stop()
    await server.stop()


async def test_transfer_survives_nat_rebinding(
    nat_lab: Callable[..., NatLab], tmp_path: Path
) -> None:
    nl = nat_lab(nat_a="rebinding", nat_b="cone")
    pki = write_pki(tmp_path / "pki")
    server = await _start_server(nl.s, pki, f"{S_ADDR}:{PORT}")
    client = await _client(
        nl.a,
        pki,
        f"{S_ADDR}:{PORT}",
        "--pause-at",
        str(SIZE // 3),
    )
    connected = await _read_until(client, {"connected"}, timeout=90)
    assert connected["event"] == "connected", (connected, client.describe())
    client_port = connected["local"][1]

    paused = await _read_until(client, {"paused"}, timeout=300)
    assert paused["event"] == "paused", (paused, client.describe())
    before = nl.public_ports("rA", client_port)
    assert len(before) == 1, nl.conntrack_entries("rA")
    # the NAT forgets every binding while the transfer is in progress
    nl.flush_conntrack("rA")
    await client.send_json({"cmd": "continue"})

    done = await _read_until(client, {"done"}, timeout=300)
    assert done["event"] == "done", (done, client.describe(), server.describe())
    server_done = await _read_until(server, {"stream_done", "stream_error"}, timeout=60)
    _check_transfer(done, server_done)

    after = nl.public_ports("rA", client_port)
    assert after and not (after & before), (before, after)
    # the server saw the client move from one public port to another, mid-stream
    seen = [tuple(a) for a in server_done["peer_addresses"]]
    assert all(host == RA_WAN for host, _ in seen), seen
    assert len({port for _, port in seen}) >= 2, seen
    assert seen[0][1] in before and seen[-1][1] in after, (seen, before, after)

    assert await client.wait(timeout=30) == 0, client.describe()
    await server.send_json({"cmd": "quit"})
    await server.expect("event", "stopped")
    await server.stop()
