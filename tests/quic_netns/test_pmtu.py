"""Path MTU discovery across routed network namespaces: server and client are separate
``tests.quic_netns.peer`` processes, and a router namespace forwards between them::

    cli 198.51.100.2 ── router (198.51.100.1 | 203.0.113.1, forwarding) ── srv 203.0.113.10

Interface MTUs are set on both ends of each link. The sockets set Don't Fragment, so a
datagram larger than a hop carries is dropped by the router (with an ICMP "fragmentation
needed"), never fragmented: each test checks ``FragCreates`` in ``/proc/net/snmp`` of all
three namespaces stays put, and that the connections end at the size the narrowest hop
carries.

(a) 1500-byte links to the router, 1280 beyond it; ceiling 1452: both ends end in
    [1200, 1252] (1280 - 28), probes above the hop were lost and the router refused them.
(b) jumbo frames (MTU 9000) end to end; ceiling 8952: both ends reach 8952.
(c) jumbo LAN (9000) with a 4000-byte hop; ceiling 8952: the client's search (it starts
    at its own link's 8972, capped by the 8952 ceiling) converges to within 40 bytes
    below 3972; the server's route MTU already says 3972.

Each transfers 2 MiB each way and checks both payloads (sha256). No timing assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.netlab.namespaces import Lab, Namespace

from .pki import write_pki
from .test_quic_netns import PEER, PORT, _finish, _read_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

MIB = 1024 * 1024
SIZE = 2 * MIB
CLIENT_SEED = 101  # as in test_quic_netns (its _finish checks the digests)
SERVER_SEED = 202
IPV4_UDP_OVERHEAD = 28
SETTLE = 20.0
"""Seconds a peer waits, after its transfer, for its path MTU search to finish before it
reports its stats (the search goes on on an idle connection too; it normally finishes
during the transfer)."""


@dataclass
class Routed:
    cli: Namespace
    router: Namespace
    srv: Namespace

    @property
    def all(self) -> dict[str, Namespace]:
        return {"cli": self.cli, "router": self.router, "srv": self.srv}


def _set_mtu(ns: Namespace, ifname: str, mtu: int) -> None:
    ns.ip("link", "set", "dev", ifname, "mtu", str(mtu))


def _routed_topology(lab: Lab, left_mtu: int, right_mtu: int) -> Routed:
    """cli ── router ── srv, the router forwarding; ``left_mtu`` on both ends of the
    cli-router link, ``right_mtu`` on both ends of the router-srv link."""
    cli = lab.add_namespace("cli")
    router = lab.add_namespace("router")
    srv = lab.add_namespace("srv")
    lab.connect(cli, "eth0", "198.51.100.2/24", router, "left", "198.51.100.1/24")
    lab.connect(router, "right", "203.0.113.1/24", srv, "eth0", "203.0.113.10/24")
    for ns, ifname, mtu in (
        (cli, "eth0", left_mtu),
        (router, "left", left_mtu),
        (router, "right", right_mtu),
        (srv, "eth0", right_mtu),
    ):
        _set_mtu(ns, ifname, mtu)
    router.enable_forwarding()
    cli.add_route("203.0.113.0/24", via="198.51.100.1")
    srv.add_route("198.51.100.0/24", via="203.0.113.1")
    return Routed(cli, router, srv)


async def _snmp(ns: Namespace) -> dict[str, int]:
    """The ``Ip:``, ``Icmp:`` and ``Udp:`` counters of ``/proc/net/snmp`` in ``ns``, as
    ``"Ip.FragCreates"`` etc."""
    rc, out, err = await ns.exec(["cat", "/proc/net/snmp"])
    assert rc == 0, err
    counters: dict[str, int] = {}
    lines = out.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=True):  # "Ip: names" / "Ip: 1 2"
        name, _, keys = header.partition(":")
        if name in ("Ip", "Icmp", "Udp"):
            numbers = values.partition(":")[2].split()
            counters.update(
                {f"{name}.{k}": int(v) for k, v in zip(keys.split(), numbers, strict=True)}
            )
    return counters


async def _all_snmp(lab: Routed) -> dict[str, dict[str, int]]:
    return {role: await _snmp(ns) for role, ns in lab.all.items()}


def _increase(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], key: str
) -> dict[str, int]:
    return {role: after[role][key] - before[role][key] for role in before}


async def _transfer(
    lab: Routed, tmp_path: Path, max_datagram_size: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Server in srv, client in cli, 2 MiB each way with path MTU discovery on; returns
    the client's ``connected`` and ``done`` messages and the server's ``stream_done``."""
    pki = write_pki(tmp_path / "pki")
    common = [
        "--send-bytes",
        str(SIZE),
        "--max-datagram-size",
        str(max_datagram_size),
        "--pmtu-discovery",
        "--await-pmtu",
        str(SETTLE),
    ]
    server = await lab.srv.spawn_python(
        [
            "server",
            "--bind",
            f"203.0.113.10:{PORT}",
            *pki.args("server"),
            *common,
            "--seed",
            str(SERVER_SEED),
        ],
        module=PEER,
    )
    ready = await server.read_json(timeout=60)
    assert ready["event"] == "ready", server.describe()
    assert ready["dont_fragment"], ready
    client = await lab.cli.spawn_python(
        [
            "client",
            "--server",
            f"203.0.113.10:{PORT}",
            *pki.args("client"),
            *common,
            "--seed",
            str(CLIENT_SEED),
        ],
        module=PEER,
    )
    connected = await _read_until(client, {"connected"}, timeout=60)
    assert connected["event"] == "connected", (connected, client.describe(), server.describe())
    assert connected["dont_fragment"], connected
    done, server_done = await _finish(client, server, SIZE)
    return connected, done, server_done


def _assert_nothing_but_probes_lost(
    done: dict[str, Any], server_done: dict[str, Any], rcvbuf_drops: dict[str, int], info: str
) -> None:
    """The path itself loses nothing; the only datagrams allowed to go missing are
    probes (not counted in ``packets_lost``) and ones a receive buffer overflowed with.
    (A GSO send that put a regular datagram behind a probe lost both at the router.)"""
    assert done["stats"]["packets_lost"] <= rcvbuf_drops["srv"], info
    assert server_done["stats"]["packets_lost"] <= rcvbuf_drops["cli"], info


@dataclass
class _Run:
    """One transfer across the lab, with the kernel counters it moved."""

    connected: dict[str, Any]
    done: dict[str, Any]
    server_done: dict[str, Any]
    frags: dict[str, int]
    """``Ip.FragCreates`` increase per namespace."""
    refused: dict[str, int]
    """``Icmp.OutDestUnreachs`` increase per namespace."""
    drops: dict[str, int]
    """``Udp.RcvbufErrors`` increase per namespace."""

    @property
    def info(self) -> str:
        return _describe(
            self.connected,
            self.done,
            self.server_done,
            frag_creates=self.frags,
            dest_unreach=self.refused,
            rcvbuf=self.drops,
        )


async def _measured_transfer(lab: Routed, tmp_path: Path, ceiling: int) -> _Run:
    before = await _all_snmp(lab)
    connected, done, server_done = await _transfer(lab, tmp_path, ceiling)
    after = await _all_snmp(lab)
    return _Run(
        connected,
        done,
        server_done,
        frags=_increase(before, after, "Ip.FragCreates"),
        refused=_increase(before, after, "Icmp.OutDestUnreachs"),
        drops=_increase(before, after, "Udp.RcvbufErrors"),
    )


def _describe(*messages: dict[str, Any], **extra: Any) -> str:
    parts = [
        f"{m['event']}: datagram_size={m.get('stats', {}).get('datagram_size')} "
        f"pmtu_state={m.get('pmtu_state')} stats={m.get('stats')}"
        for m in messages
    ]
    parts += [f"{k}={v}" for k, v in extra.items()]
    return "\n".join(parts)


async def test_narrow_middle_link(netlab: Lab, tmp_path: Path) -> None:
    """1500 | 1280: discovery finds the 1280-byte hop, nothing is fragmented."""
    run = await _measured_transfer(_routed_topology(netlab, 1500, 1280), tmp_path, 1452)
    done, server_done, info = run.done, run.server_done, run.info

    assert run.connected["stats"]["datagram_size"] == 1200, info  # the handshake's size
    limit = 1280 - IPV4_UDP_OVERHEAD
    assert 1200 <= done["stats"]["datagram_size"] <= limit, info
    assert 1200 <= server_done["stats"]["datagram_size"] <= limit, info
    assert done["pmtu_state"] in (None, "search_complete"), info
    assert server_done["pmtu_state"] in (None, "search_complete"), info
    # the client's probes above the hop (its own link carries 1472) were lost ...
    assert done["stats"]["pmtu_probes_lost"] >= 3, info
    # ... because the router refused them (ICMP fragmentation needed), not fragmented
    assert run.refused["router"] > 0, info
    assert run.frags == {"cli": 0, "router": 0, "srv": 0}, info
    _assert_nothing_but_probes_lost(done, server_done, run.drops, info)


async def test_jumbo_path(netlab: Lab, tmp_path: Path) -> None:
    """9000 | 9000: both ends reach the 8952-byte ceiling."""
    run = await _measured_transfer(_routed_topology(netlab, 9000, 9000), tmp_path, 8952)
    done, server_done, info = run.done, run.server_done, run.info

    assert run.connected["stats"]["datagram_size"] == 1200, info
    assert done["stats"]["datagram_size"] == 8952, info
    assert server_done["stats"]["datagram_size"] == 8952, info
    assert done["stats"]["pmtu_probes_lost"] == 0, info
    assert run.frags == {"cli": 0, "router": 0, "srv": 0}, info
    _assert_nothing_but_probes_lost(done, server_done, run.drops, info)


async def test_jumbo_lan_with_a_narrower_hop(netlab: Lab, tmp_path: Path) -> None:
    """9000 | 4000: the client's search converges just below the hop's 3972 bytes."""
    run = await _measured_transfer(_routed_topology(netlab, 9000, 4000), tmp_path, 8952)
    done, server_done, info = run.done, run.server_done, run.info

    hop = 4000 - IPV4_UDP_OVERHEAD
    assert run.connected["stats"]["datagram_size"] == 1200, info
    assert hop - 40 <= done["stats"]["datagram_size"] <= hop, info
    assert done["pmtu_state"] in (None, "search_complete"), info
    # the server's own link is the narrow one: its route MTU caps the search there
    assert hop - 40 <= server_done["stats"]["datagram_size"] <= hop, info
    assert done["stats"]["pmtu_probes_lost"] >= 3, info
    assert run.refused["router"] > 0, info
    assert run.frags == {"cli": 0, "router": 0, "srv": 0}, info
    _assert_nothing_but_probes_lost(done, server_done, run.drops, info)
