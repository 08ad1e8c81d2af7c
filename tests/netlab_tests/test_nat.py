"""The NAT lab reproduces the verified table of shared/NETWORK-TESTING.md.

Plain UDP sockets bound to one port on each side, a rendezvous on S that tells each peer
the other's public endpoint, then both punch.  Packet ordering is made deterministic
(A punches first, then B) so the "no firewall" row fails for the documented reason."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.netlab.nat import A_ADDR, RA_WAN, RB_WAN, S_ADDR, NatKind, NatLab

pytestmark = pytest.mark.netns

PORT = 40000
RENDEZVOUS = (S_ADDR, 3478)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux value; not in Python 3.11
NatFactory = Callable[..., NatLab]


@dataclass
class Punch:
    a_public: tuple[str, int]  # as seen by S
    b_public: tuple[str, int]
    a_got_from_b: int
    b_got_from_a: int

    @property
    def ok(self) -> bool:
        return self.a_got_from_b > 0 and self.b_got_from_a > 0


def _drain(sock: socket.socket, expect_from: tuple[str, int], wait: float) -> int:
    sock.settimeout(wait)
    n = 0
    while True:
        try:
            _, addr = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            return n
        if addr == expect_from:
            n += 1


def _punch(nl: NatLab, rounds: int = 5) -> tuple[Punch, socket.socket, socket.socket]:
    s = nl.s.socket()
    a = nl.a.socket()
    b = nl.b.socket()
    s.bind(RENDEZVOUS)
    s.settimeout(10)
    a.bind(("0.0.0.0", PORT))
    b.bind(("0.0.0.0", PORT))
    try:
        # register with the rendezvous server; it learns the public endpoints
        a.sendto(b"register", RENDEZVOUS)
        _, a_pub = s.recvfrom(100)
        b.sendto(b"register", RENDEZVOUS)
        _, b_pub = s.recvfrom(100)
        s.sendto(f"{b_pub[0]}:{b_pub[1]}".encode(), a_pub)
        s.sendto(f"{a_pub[0]}:{a_pub[1]}".encode(), b_pub)
        a.settimeout(10)
        b.settimeout(10)
        a_learned = a.recvfrom(100)[0].decode().rsplit(":", 1)
        b_learned = b.recvfrom(100)[0].decode().rsplit(":", 1)
        peer_of_a = (a_learned[0], int(a_learned[1]))
        peer_of_b = (b_learned[0], int(b_learned[1]))
        for _ in range(rounds):
            a.sendto(b"punch-from-a", peer_of_a)
            time.sleep(0.02)  # ordering (A first), not a timing assertion
            b.sendto(b"punch-from-b", peer_of_b)
            time.sleep(0.02)
        got_a = _drain(a, peer_of_a, 0.5)
        got_b = _drain(b, peer_of_b, 0.5)
    except BaseException:
        for x in (a, b):
            x.close()
        raise
    finally:
        s.close()
    return Punch((a_pub[0], a_pub[1]), (b_pub[0], b_pub[1]), got_a, got_b), a, b


def test_punch_succeeds_between_two_cone_nats_and_bypasses_s(nat_lab: NatFactory) -> None:
    nl = nat_lab("cone", "cone")
    result, a, b = _punch(nl)
    try:
        assert result.a_public == (RA_WAN, PORT)  # port-preserving
        assert result.b_public == (RB_WAN, PORT)
        assert result.ok, result

        # direct traffic from now on must not pass through S
        nl.reset_s_counters()
        ra_before = nl.router_counters("rA")["wan_tx_other"]
        a.settimeout(10)
        b.settimeout(10)
        for i in range(20):
            a.sendto(b"a%d" % i, result.b_public)
            assert b.recvfrom(100) == (b"a%d" % i, result.a_public)
            b.sendto(b"b%d" % i, result.a_public)
            assert a.recvfrom(100) == (b"b%d" % i, result.b_public)
        sc = nl.s_counters()
        assert sc["rx_from_ra"] == 0 and sc["rx_from_rb"] == 0, sc
        assert sc["tx_to_ra"] == 0 and sc["tx_to_rb"] == 0, sc
        assert sc["fwd_total"] == 0
        assert nl.router_counters("rA")["wan_tx_other"] - ra_before >= 20
    finally:
        a.close()
        b.close()


def test_punch_fails_between_cone_nats_without_router_firewall(nat_lab: NatFactory) -> None:
    nl = nat_lab("cone", "cone", firewall=False)
    result, a, b = _punch(nl)
    a.close()
    b.close()
    assert not result.ok, result
    # rB remapped B's outgoing punch away from port 40000 (stale conntrack entry)
    assert nl.public_ports("rB", PORT) - {PORT}


@pytest.mark.parametrize(("nat_a", "nat_b"), [("symmetric", "cone"), ("cone", "symmetric")])
def test_punch_fails_with_a_symmetric_nat(
    nat_lab: NatFactory, nat_a: NatKind, nat_b: NatKind
) -> None:
    nl = nat_lab(nat_a, nat_b)
    result, a, b = _punch(nl)
    a.close()
    b.close()
    assert not result.a_got_from_b and not result.b_got_from_a, result
    sym = "rA" if nat_a == "symmetric" else "rB"
    seen_by_s = result.a_public if sym == "rA" else result.b_public
    # a different public port per destination
    assert len(nl.public_ports(sym, PORT)) >= 2
    assert seen_by_s[1] in nl.public_ports(sym, PORT)


@pytest.mark.parametrize(("kind", "rebinds"), [("rebinding", True), ("cone", False)])
def test_conntrack_flush_rebinds_only_with_random_masquerade(
    nat_lab: NatFactory, kind: NatKind, rebinds: bool
) -> None:
    nl = nat_lab(kind, "cone")
    s = nl.s.socket()
    a = nl.a.socket()
    try:
        s.bind(RENDEZVOUS)
        s.settimeout(10)
        a.bind((A_ADDR, PORT))
        ports = []
        for _ in range(3):
            a.sendto(b"hi", RENDEZVOUS)
            _, addr = s.recvfrom(100)
            assert addr[0] == RA_WAN
            ports.append(addr[1])
            a.sendto(b"again", RENDEZVOUS)  # same binding while conntrack keeps it
            assert s.recvfrom(100)[1] == addr
            nl.flush_conntrack("rA")
        if rebinds:
            assert len(set(ports)) == 3, ports
        else:
            assert ports == [PORT] * 3
    finally:
        s.close()
        a.close()


def test_random_loss_per_direction(nat_lab: NatFactory) -> None:
    nl = nat_lab("cone", "cone")
    nl.set_loss("rA", upstream=30, downstream=0)
    s = nl.s.socket()
    a = nl.a.socket()
    n = 400
    for x in (s, a):  # the bursts below must not overflow the default receive buffer
        x.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    try:
        s.bind(RENDEZVOUS)
        a.bind((A_ADDR, PORT))
        # open the mapping reliably first (a lost first packet would leave no binding)
        nl.clear_loss("rA")
        a.sendto(b"open", RENDEZVOUS)
        s.settimeout(10)
        _, a_pub = s.recvfrom(100)
        nl.set_loss("rA", upstream=30, downstream=0)

        for i in range(n):
            a.sendto(b"up%d" % i, RENDEZVOUS)
        up = _drain(s, a_pub, 0.5)
        for i in range(n):
            s.sendto(b"down%d" % i, a_pub)
        down = _drain(a, RENDEZVOUS, 0.5)
        # 30 % upstream loss: mean 280 of 400, sd ~9 - a wide band
        assert 200 <= up <= 360, up
        assert down == n  # downstream untouched
        nl.clear_loss("rA")
        for i in range(50):
            a.sendto(b"clear%d" % i, RENDEZVOUS)
        assert _drain(s, a_pub, 0.5) == 50
    finally:
        s.close()
        a.close()
