"""The NAT lab from shared/NETWORK-TESTING.md.

::

   A 198.51.100.2 ── rA (NAT) 203.0.113.2 ─┐
                                            ├─ bridge "public" 203.0.113.0/24 ── S 203.0.113.10
   B 192.0.2.2    ── rB (NAT) 203.0.113.3 ─┘

The bridge lives in its own namespace (``pub``).  Each router has a ``lan`` and a ``wan``
interface, an nftables table ``ip qsnat`` with the masquerade rule (kind per router) and
the home-router input firewall ``iifname wan ct state new drop``, and an ``inet qsloss``
table for per-direction random loss.  S has named nft counters (``inet qscount``) so a test
can show that traffic between A and B does not pass through S.

NAT kinds:

* ``"cone"``      - ``masquerade`` (port-preserving; endpoint-independent in practice)
* ``"symmetric"`` - ``masquerade random,fully-random`` (new public port per destination)
* ``"rebinding"`` - ``masquerade random`` (a new random port for every new conntrack entry,
  so :meth:`NatLab.flush_conntrack` makes a running flow come out on a new port)
* ``"none"``      - plain routing, no NAT
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .namespaces import Lab, Namespace, NetlabError

__all__ = [
    "A_ADDR",
    "B_ADDR",
    "RA_LAN",
    "RA_WAN",
    "RB_LAN",
    "RB_WAN",
    "S_ADDR",
    "NatKind",
    "NatLab",
    "build_nat_lab",
    "clear_forward_loss",
    "conntrack_flush",
    "host_loss_drops",
    "read_counters",
    "set_forward_loss",
    "set_host_loss",
]

NatKind = Literal["cone", "symmetric", "rebinding", "none"]

A_ADDR = "198.51.100.2"
RA_LAN = "198.51.100.1"
RA_WAN = "203.0.113.2"
B_ADDR = "192.0.2.2"
RB_LAN = "192.0.2.1"
RB_WAN = "203.0.113.3"
S_ADDR = "203.0.113.10"

_MASQ = {
    "cone": "masquerade",
    "symmetric": "masquerade random,fully-random",
    "rebinding": "masquerade random",
}


def _check_pct(pct: float) -> int:
    if not 0 <= pct <= 100:
        raise NetlabError(f"loss percentage out of range: {pct}")
    return round(pct)


def set_forward_loss(
    ns: Namespace,
    rules: list[tuple[str, str, float]],
) -> None:
    """Random loss on forwarded packets: ``rules`` = [(in_if, out_if, percent), ...].

    Replaces any previous loss rules of this namespace (table ``inet qsloss``).
    Uses ``numgen random mod 100 < N drop`` (integer percentages).
    """
    lines = [
        "table inet qsloss {",
        "  chain forward {",
        "    type filter hook forward priority -10; policy accept;",
    ]
    for in_if, out_if, pct in rules:
        n = _check_pct(pct)
        if n > 0:
            lines.append(
                f'    iifname "{in_if}" oifname "{out_if}" numgen random mod 100 < {n} counter drop'
            )
    lines += ["  }", "}"]
    clear_forward_loss(ns)
    ns.nft("\n".join(lines) + "\n")


def clear_forward_loss(ns: Namespace) -> None:
    ns.run(["nft", "delete", "table", "inet", "qsloss"], check=False)


def conntrack_flush(ns: Namespace) -> None:
    """``conntrack -F`` in the namespace (drops all NAT bindings)."""
    r = ns.run(["conntrack", "-F"], check=False)
    if r.returncode != 0 and "0 flow entries" not in (r.stdout + r.stderr):
        raise NetlabError(f"conntrack -F failed in {ns.name}: {r.stderr.strip()}")


def read_counters(ns: Namespace, family: str = "inet", table: str = "qscount") -> dict[str, int]:
    """Named nft counters of a table: ``{name: packets}`` (plus ``name+'_bytes'``)."""
    data = ns.nft_json("list", "counters", "table", family, table)
    out: dict[str, int] = {}
    for item in data.get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == table:
            out[c["name"]] = int(c["packets"])
            out[c["name"] + "_bytes"] = int(c["bytes"])
    return out


@dataclass
class NatLab:
    lab: Lab
    a: Namespace
    ra: Namespace
    b: Namespace
    rb: Namespace
    s: Namespace
    pub: Namespace
    kinds: dict[str, NatKind] = field(default_factory=dict)
    firewall: dict[str, bool] = field(default_factory=dict)

    A_ADDR = A_ADDR
    B_ADDR = B_ADDR
    RA_WAN = RA_WAN
    RB_WAN = RB_WAN
    S_ADDR = S_ADDR

    def router(self, which: str | Namespace) -> Namespace:
        if isinstance(which, Namespace):
            return which
        key = which.lower()
        if key in ("ra", "a"):
            return self.ra
        if key in ("rb", "b"):
            return self.rb
        raise NetlabError(f"unknown router {which!r} (use 'rA' or 'rB')")

    def wan_addr(self, which: str | Namespace) -> str:
        return RA_WAN if self.router(which) is self.ra else RB_WAN

    # -- NAT and firewall ------------------------------------------------------------
    def set_nat(self, which: str | Namespace, kind: NatKind, firewall: bool = True) -> None:
        """(Re)configure a router's NAT kind and its wan input firewall."""
        r = self.router(which)
        if kind not in (*_MASQ, "none"):
            raise NetlabError(f"unknown NAT kind {kind!r}")
        r.run(["nft", "delete", "table", "ip", "qsnat"], check=False)
        lines = ["table ip qsnat {"]
        if kind != "none":
            lines += [
                "  chain postrouting {",
                "    type nat hook postrouting priority 100; policy accept;",
                f'    oifname "wan" {_MASQ[kind]}',
                "  }",
            ]
        if firewall:
            lines += [
                "  chain input {",
                "    type filter hook input priority 0; policy accept;",
                '    iifname "wan" ct state new counter drop',
                "  }",
            ]
        lines.append("}")
        r.nft("\n".join(lines) + "\n")
        conntrack_flush(r)
        self.kinds[r.role] = kind
        self.firewall[r.role] = firewall

    def flush_conntrack(self, which: str | Namespace) -> None:
        conntrack_flush(self.router(which))

    def conntrack_entries(self, which: str | Namespace) -> list[str]:
        r = self.router(which).run(["conntrack", "-L"], check=False)
        return [ln for ln in r.stdout.splitlines() if ln.strip()]

    def public_ports(self, which: str | Namespace, private_port: int) -> set[int]:
        """Public (post-NAT) source ports of UDP flows from ``private_port`` behind a router.

        Read from the reply tuple of conntrack entries: ``dport`` of the reply direction.
        """
        ports: set[int] = set()
        for ln in self.conntrack_entries(which):
            if not ln.startswith("udp"):
                continue
            fields = ln.split()
            sports = [f for f in fields if f.startswith("sport=")]
            dports = [f for f in fields if f.startswith("dport=")]
            if len(sports) >= 2 and len(dports) >= 2 and sports[0] == f"sport={private_port}":
                ports.add(int(dports[1].split("=", 1)[1]))
        return ports

    # -- loss ------------------------------------------------------------------------
    def set_loss(self, which: str | Namespace, upstream: float = 0, downstream: float = 0) -> None:
        """Random loss at a router: ``upstream`` = lan→wan %, ``downstream`` = wan→lan %."""
        set_forward_loss(self.router(which), [("lan", "wan", upstream), ("wan", "lan", downstream)])

    def clear_loss(self, which: str | Namespace) -> None:
        clear_forward_loss(self.router(which))

    # -- counters on S ------------------------------------------------------------------
    def s_counters(self) -> dict[str, int]:
        """Packets seen by S: ``rx_from_ra``, ``rx_from_rb``, ``rx_total``, ``tx_to_ra``,
        ``tx_to_rb``, ``tx_total``, ``fwd_total`` (plus ``*_bytes``)."""
        return read_counters(self.s)

    def reset_s_counters(self) -> None:
        self.s.run(["nft", "reset", "counters", "table", "inet", "qscount"])

    def router_counters(self, which: str | Namespace) -> dict[str, int]:
        """Per-router: ``wan_tx_to_s``, ``wan_tx_other``, ``wan_rx_from_s``, ``wan_rx_other``."""
        return read_counters(self.router(which))


def _install_s_counters(s: Namespace) -> None:
    s.nft(
        f"""
table inet qscount {{
  counter rx_from_ra {{ }}
  counter rx_from_rb {{ }}
  counter rx_total {{ }}
  counter tx_to_ra {{ }}
  counter tx_to_rb {{ }}
  counter tx_total {{ }}
  counter fwd_total {{ }}
  chain c_pre {{
    type filter hook prerouting priority -300; policy accept;
    ip saddr {RA_WAN} counter name rx_from_ra
    ip saddr {RB_WAN} counter name rx_from_rb
    iifname != "lo" counter name rx_total
  }}
  chain c_fwd {{
    type filter hook forward priority 0; policy accept;
    counter name fwd_total
  }}
  chain c_out {{
    type filter hook output priority -300; policy accept;
    ip daddr {RA_WAN} counter name tx_to_ra
    ip daddr {RB_WAN} counter name tx_to_rb
    oifname != "lo" counter name tx_total
  }}
}}
"""
    )


def _install_router_counters(r: Namespace) -> None:
    r.nft(
        f"""
table inet qscount {{
  counter wan_tx_to_s {{ }}
  counter wan_tx_other {{ }}
  counter wan_rx_from_s {{ }}
  counter wan_rx_other {{ }}
  chain c_post {{
    type filter hook postrouting priority 300; policy accept;
    oifname "wan" ip daddr {S_ADDR} counter name wan_tx_to_s
    oifname "wan" ip daddr != {S_ADDR} counter name wan_tx_other
  }}
  chain c_pre {{
    type filter hook prerouting priority -300; policy accept;
    iifname "wan" ip saddr {S_ADDR} counter name wan_rx_from_s
    iifname "wan" ip saddr != {S_ADDR} counter name wan_rx_other
  }}
}}
"""
    )


def build_nat_lab(
    lab: Lab,
    nat_a: NatKind = "cone",
    nat_b: NatKind = "cone",
    firewall: bool = True,
) -> NatLab:
    """Build the A/rA/B/rB/S topology inside ``lab`` and configure both routers."""
    a = lab.add_namespace("A")
    ra = lab.add_namespace("rA")
    b = lab.add_namespace("B")
    rb = lab.add_namespace("rB")
    s = lab.add_namespace("S")
    pub = lab.add_namespace("pub")

    lab.connect(a, "eth0", f"{A_ADDR}/24", ra, "lan", f"{RA_LAN}/24")
    lab.connect(b, "eth0", f"{B_ADDR}/24", rb, "lan", f"{RB_LAN}/24")
    lab.connect(ra, "wan", f"{RA_WAN}/24", pub, "p_ra", None)
    lab.connect(rb, "wan", f"{RB_WAN}/24", pub, "p_rb", None)
    lab.connect(s, "eth0", f"{S_ADDR}/24", pub, "p_s", None)
    lab.add_bridge(pub, "br0", ["p_ra", "p_rb", "p_s"])

    a.add_route("default", via=RA_LAN)
    b.add_route("default", via=RB_LAN)
    for r in (ra, rb):
        r.enable_forwarding()
        _install_router_counters(r)
    _install_s_counters(s)

    nl = NatLab(lab=lab, a=a, ra=ra, b=b, rb=rb, s=s, pub=pub)
    nl.set_nat(ra, nat_a, firewall)
    nl.set_nat(rb, nat_b, firewall)
    return nl


def set_host_loss(ns: Namespace, ifname: str, egress: float = 0, ingress: float = 0) -> None:
    """Random loss on a host's own traffic through ``ifname`` (table ``inet qshostloss``):
    ``egress`` % of packets it sends, ``ingress`` % of packets it receives are dropped."""
    lines = ["table inet qshostloss {"]
    for chain, hook, key, pct in (
        ("c_out", "output", "oifname", egress),
        ("c_in", "input", "iifname", ingress),
    ):
        n = _check_pct(pct)
        lines += [
            f"  chain {chain} {{",
            f"    type filter hook {hook} priority -10; policy accept;",
        ]
        if n > 0:
            lines.append(f'    {key} "{ifname}" numgen random mod 100 < {n} counter drop')
        lines.append("  }")
    lines.append("}")
    ns.run(["nft", "delete", "table", "inet", "qshostloss"], check=False)
    ns.nft("\n".join(lines) + "\n")


def host_loss_drops(ns: Namespace) -> dict[str, int]:
    """Packets dropped so far by :func:`set_host_loss`: ``{"egress": n, "ingress": n}``."""
    data = ns.nft_json("list", "table", "inet", "qshostloss")
    out = {"egress": 0, "ingress": 0}
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                key = "egress" if rule.get("chain") == "c_out" else "ingress"
                out[key] += int(expr["counter"]["packets"])
    return out
