"""The namespace builder: links, addresses, in-process sockets, processes, teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.netlab import fixtures
from tests.netlab.namespaces import (
    NS_PREFIX,
    Lab,
    NetlabError,
    check_test_net,
    sweep_stale,
)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.strip()}


def test_only_test_net_addresses_are_accepted() -> None:
    for ok in ("192.0.2.5/24", "198.51.100.1", "203.0.113.0/24"):
        check_test_net(ok)
    for bad in ("10.0.0.1/24", "8.8.8.8", "192.0.3.1/24", "203.0.112.0/23", "::1", "junk"):
        with pytest.raises(NetlabError):
            check_test_net(bad)


def test_require_netns_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixtures, "netns_available", lambda: (False, "no root here"))
    monkeypatch.setenv("QUICSHIFT_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="no root here"):
        fixtures.require_netns()
    monkeypatch.delenv("QUICSHIFT_REQUIRE_NETNS")
    with pytest.raises(pytest.skip.Exception, match="no root here"):
        fixtures.require_netns()


@pytest.mark.netns
def test_veth_addresses_and_in_process_sockets(netlab: Lab) -> None:
    a = netlab.add_namespace("a")
    b = netlab.add_namespace("b")
    netlab.connect(a, "eth0", "192.0.2.1/24", b, "eth0", "192.0.2.2/24")
    assert "192.0.2.1/24" in a.addresses()
    assert "192.0.2.2/24" in b.addresses()
    with pytest.raises(NetlabError):
        a.add_addr("eth0", "10.1.2.3/24")

    sa = a.socket()
    sb = b.socket()
    try:
        sb.bind(("192.0.2.2", 9000))
        sb.settimeout(10)
        sa.bind(("192.0.2.1", 0))
        sa.sendto(b"hello", ("192.0.2.2", 9000))
        data, addr = sb.recvfrom(100)
        assert data == b"hello" and addr[0] == "192.0.2.1"
    finally:
        sa.close()
        sb.close()


@pytest.mark.netns
def test_router_and_bridge(netlab: Lab) -> None:
    left = netlab.add_namespace("left")
    router = netlab.add_namespace("router")
    sw = netlab.add_namespace("sw")
    h1 = netlab.add_namespace("h1")
    h2 = netlab.add_namespace("h2")
    netlab.connect(left, "eth0", "198.51.100.2/24", router, "lan", "198.51.100.1/24")
    netlab.connect(router, "wan", "203.0.113.1/24", sw, "p0", None)
    netlab.connect(h1, "eth0", "203.0.113.11/24", sw, "p1", None)
    netlab.connect(h2, "eth0", "203.0.113.12/24", sw, "p2", None)
    netlab.add_bridge(sw, "br0", ["p0", "p1", "p2"])
    router.enable_forwarding()
    left.add_route("default", via="198.51.100.1")
    h2.add_route("198.51.100.0/24", via="203.0.113.1")

    recv = h2.socket()
    send = left.socket()
    try:
        recv.bind(("203.0.113.12", 7000))
        recv.settimeout(10)
        send.sendto(b"routed", ("203.0.113.12", 7000))
        data, addr = recv.recvfrom(100)
        assert data == b"routed" and addr[0] == "198.51.100.2"
    finally:
        recv.close()
        send.close()


@pytest.mark.netns
async def test_python_process_json_protocol(netlab: Lab) -> None:
    ns = netlab.add_namespace("p")
    ns.ip("addr", "add", "203.0.113.5/24", "dev", "lo")
    code = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('203.0.113.5', 0))\n"
        "print(json.dumps({'event': 'ready', 'addr': s.getsockname()}))\n"
        "print('not json')\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps({'event': 'echo', 'got': json.loads(line)}))\n"
    )
    p = await ns.spawn_python(["-c", code])
    try:
        ready = await p.read_json()
        assert ready["event"] == "ready" and ready["addr"][0] == "203.0.113.5"
        await p.send_json({"n": 1})
        echo = await p.expect("event", "echo")
        assert echo["got"] == {"n": 1}
        assert p.other_lines == ["not json"]
        await p.close_stdin()
        assert await p.wait() == 0
    finally:
        await p.stop()

    rc, out, _ = await ns.exec(["ip", "-j", "-4", "addr", "show", "dev", "lo"])
    assert rc == 0 and "203.0.113.5" in json.dumps(json.loads(out))

    failing = await ns.spawn_python(["-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    with pytest.raises(NetlabError, match="boom"):
        await failing.read_json()
    assert await failing.wait() == 3
    await failing.stop()


@pytest.mark.netns
def test_teardown_removes_everything_even_after_failure() -> None:
    fixtures.require_netns()
    names: set[str] = set()
    with pytest.raises(RuntimeError), Lab("tdown") as lab:
        a = lab.add_namespace("a")
        b = lab.add_namespace("b")
        lab.connect(a, "x", "192.0.2.1/24", b, "y", "192.0.2.2/24")
        names = {a.name, b.name}
        assert names <= _netns_names()
        raise RuntimeError("test body failed")
    assert not names & _netns_names()


@pytest.mark.netns
def test_sweep_removes_namespaces_of_dead_runs_only() -> None:
    fixtures.require_netns()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{NS_PREFIX}-{dead.pid}-9-stale"
    live = f"{NS_PREFIX}-{os.getpid()}-9-live"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        removed = sweep_stale()
        assert stale in removed
        assert live not in removed
        assert live in _netns_names()
        assert stale not in _netns_names()
    finally:
        for n in (stale, live):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
