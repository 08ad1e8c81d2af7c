"""QUIC agents as processes behind real NAT routers (network namespaces, TEST-NET only).

::

   A 198.51.100.2 ── rA (NAT) 203.0.113.2 ─┐
                                            ├─ bridge ── S 203.0.113.10 (seed: signals, relays)
   B 192.0.2.2    ── rB (NAT) 203.0.113.3 ─┘

A and B each dial S; A asks S to signal B (``Agent.connect_via``). Every router has the
home-router firewall (``ct state new drop`` on its wan), so B is only reachable once a punch
opened rB.

* cone NAT on both sides: A and B connect directly; the traffic between them does not
  touch S; every agent method works both ways; a conntrack flush on both routers mid-session
  does not break it;
* symmetric NAT at A, or at B: punching fails within its bound, S relays the end-to-end encrypted
  session, every method works both ways, and S never saw the plaintext;
* A's NAT rebinds (``masquerade random`` + conntrack flush) mid-session: its connections
  (to S, and the relayed one to B) survive, and S sees A on a new port.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.netlab.namespaces import Namespace, NetnsProcess
from tests.netlab.nat import RA_WAN, RB_WAN, S_ADDR, NatLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

NODE = "tests.agent_nat.node"
S_PORT = 4433
A_PORT = 40001
B_PORT = 40002
BULK = 200_000
METHODS = {
    "Health",
    "Echo",
    "NodesClosestLocalNodesGet",
    "NodesCrossSignClaim",
    "NodesClaimsGet",
    "NodesHolePunchSignal",
    "NotificationsSend",
    "VaultsScan",
    "VaultsPull",
}


class Peer:
    def __init__(self, proc: NetnsProcess, node_id: str, port: int) -> None:
        self.proc = proc
        self.node_id = node_id
        self.port = port

    async def call(self, cmd: str, timeout: float = 60.0, **kwargs: Any) -> dict[str, Any]:  # noqa: ASYNC109
        await self.proc.send_json({"cmd": cmd, **kwargs})
        reply = await self.proc.expect("cmd", cmd, timeout=timeout)
        assert reply["ok"], (reply, self.proc.describe())
        return reply


async def _spawn(ns: Namespace, state: Path, bind: str, *extra: str) -> Peer:
    proc = await ns.spawn_python(["--state", str(state), "--bind", bind, *extra], module=NODE)
    ready = await proc.read_json(timeout=60)
    assert ready.get("event") == "ready", proc.describe()
    return Peer(proc, ready["node_id"], ready["port"])


async def _fleet(nl: NatLab, tmp_path: Path) -> tuple[Peer, Peer, Peer]:
    s = await _spawn(nl.s, tmp_path / "s", f"{S_ADDR}:{S_PORT}", "--seed")
    a = await _spawn(nl.a, tmp_path / "a", f"0.0.0.0:{A_PORT}")
    b = await _spawn(nl.b, tmp_path / "b", f"0.0.0.0:{B_PORT}")
    for peer in (a, b):
        await peer.call("connect", node_id=s.node_id, host=S_ADDR, port=S_PORT)
    seen = {c["node_id"]: c for c in (await s.call("stats"))["connections"]}
    assert seen[a.node_id]["host"] == RA_WAN  # S learns the public addresses
    assert seen[b.node_id]["host"] == RB_WAN
    return s, a, b


async def _all_methods(a: Peer, b: Peer, s: Peer, secret: str) -> list[dict[str, Any]]:
    await a.call("share_vault", peer=b.node_id, secret=secret, bulk=BULK)
    await b.call("share_vault", peer=a.node_id, secret=secret, bulk=BULK)
    replies = []
    for src, dst in ((a, b), (b, a)):
        reply = await src.call(
            "methods", timeout=120, peer=dst.node_id, secret=secret, third=s.node_id
        )
        assert reply["results"] == dict.fromkeys(METHODS, "ok"), reply
        assert reply["pulled"] > BULK
        replies.append(reply)
    return replies


async def test_cone_nat_direct_after_punch(nat_lab: Callable[..., NatLab], tmp_path: Path) -> None:
    nl = nat_lab("cone", "cone")
    s, a, b = await _fleet(nl, tmp_path)
    result = await a.call("connect_via", node_id=b.node_id, signaller=s.node_id)
    assert result["method"] == "direct", result
    assert result["own_public"] == [RA_WAN, A_PORT]  # port-preserving NAT, as S saw it
    assert result["target_public"] == [RB_WAN, B_PORT]
    assert (result["host"], result["port"]) == (RB_WAN, B_PORT)
    b_stats = await b.call("stats")
    assert b_stats["punch"]["punches_started"] == 1
    assert b_stats["punch"]["punch_datagrams_sent"] >= 1

    nl.reset_s_counters()
    ra_before = nl.router_counters("rA")
    secret = "NAT-DIRECT-" + secrets.token_hex(8)
    await _all_methods(a, b, s, secret)
    s_after = nl.s_counters()
    ra_after = nl.router_counters("rA")
    moved = 2 * BULK
    # A and B talk over the bridge, rA <-> rB: S forwards nothing and hears little
    # (keepalives only), while rA sent and received the bulk to and from someone else.
    assert s_after["fwd_total"] == 0
    assert s_after["rx_total_bytes"] < moved // 10, s_after
    assert ra_after["wan_tx_other_bytes"] - ra_before["wan_tx_other_bytes"] > BULK
    assert ra_after["wan_rx_other_bytes"] - ra_before["wan_rx_other_bytes"] > BULK
    assert (await s.call("stats"))["relay"]["forwarded_frames"] == 0

    # Both routers lose their bindings mid-session: the cone NATs map the same ports
    # again and the session carries on.
    dials = (await a.call("stats"))["dials_started"]
    nl.flush_conntrack("rA")
    nl.flush_conntrack("rB")
    for src, dst in ((a, b), (b, a), (a, b)):
        echo = await src.call("echo", peer=dst.node_id, message="after flush")
        assert echo["message"] == "after flush"
    assert (await a.call("stats"))["dials_started"] == dials  # no reconnection


@pytest.mark.parametrize("symmetric", ["rA", "rB"])
async def test_symmetric_nat_relayed_end_to_end(
    nat_lab: Callable[..., NatLab], tmp_path: Path, symmetric: str
) -> None:
    nl = nat_lab(*(("symmetric", "cone") if symmetric == "rA" else ("cone", "symmetric")))
    s, a, b = await _fleet(nl, tmp_path)
    result = await a.call("connect_via", timeout=90, node_id=b.node_id, signaller=s.node_id)
    assert result["method"] == "relay", result
    assert result["attempts"] >= 1 and "direct dial" in result["error"]
    assert result["host"].endswith(".invalid")
    secret = "NAT-RELAYED-" + secrets.token_hex(8)
    replies = await _all_methods(a, b, s, secret)
    assert all(r["via"][0].endswith(".invalid") for r in replies)
    stats = (await s.call("stats"))["relay"]
    assert stats["forwarded_frames"] > 0
    assert stats["forwarded_bytes"] > 2 * BULK  # the vaults crossed S...
    assert stats["captured"] == stats["forwarded_bytes"]  # ...all of it was captured...
    capture = await s.call("capture_contains", needle=secret)
    assert capture["contains"] is False  # ...and none of it is plaintext
    # the symmetric NAT gave its node another public port towards the peer than towards S
    private_port = A_PORT if symmetric == "rA" else B_PORT
    assert len(nl.public_ports(symmetric, private_port)) >= 2


async def test_rebinding_nat_keeps_sessions(nat_lab: Callable[..., NatLab], tmp_path: Path) -> None:
    nl = nat_lab("rebinding", "cone")
    s, a, b = await _fleet(nl, tmp_path)
    result = await a.call("connect_via", timeout=90, node_id=b.node_id, signaller=s.node_id)
    assert result["method"] in ("direct", "relay"), result
    echo = await a.call("echo", peer=b.node_id, message="before")
    assert echo["message"] == "before"
    dials = (await a.call("stats"))["dials_started"]
    ports_seen = set()
    for round_ in range(3):
        before = {c["node_id"]: c for c in (await s.call("stats"))["connections"]}
        ports_seen.add(before[a.node_id]["remote"][1])
        nl.flush_conntrack("rA")
        for src, dst in ((a, b), (b, a), (a, s), (s, a)):
            reply = await src.call("echo", peer=dst.node_id, message=f"round {round_}")
            assert reply["message"] == f"round {round_}"
    after = {c["node_id"]: c for c in (await s.call("stats"))["connections"]}
    ports_seen.add(after[a.node_id]["remote"][1])
    assert len(ports_seen) >= 2, ports_seen  # A's NAT did rebind, and S followed it
    assert (await a.call("stats"))["dials_started"] == dials  # the sessions survived
