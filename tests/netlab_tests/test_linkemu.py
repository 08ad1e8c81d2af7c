"""The userspace link emulator: forwarding, delay, loss, corruption, duplication,
reordering, blackholes, rebinding, control channel.  Loopback only (no root needed),
except the last test, which runs it in a middle namespace.

All assertions are on counts or on lower bounds of delays, never on speed."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.netlab.linkemu import DirectionStats, Impairment, LinkEmulator
from tests.netlab.namespaces import REPO_ROOT, Lab

from .helpers import close, udp_endpoint

EmuFactory = Callable[..., Awaitable[LinkEmulator]]


async def test_forwards_both_directions_per_client_sessions(
    linkemu_factory: EmuFactory,
) -> None:
    server = await udp_endpoint(echo=True)
    emu = await linkemu_factory(server.address)
    c1 = await udp_endpoint()
    c2 = await udp_endpoint()
    try:
        assert c1.transport and c2.transport
        for i in range(20):
            c1.transport.sendto(b"one-%d" % i, emu.listen_address)
            c2.transport.sendto(b"two-%d" % i, emu.listen_address)
        assert await c1.wait_for_count(20)
        assert await c2.wait_for_count(20)
        assert {d for d, _ in c1.received} == {b"one-%d" % i for i in range(20)}
        assert {d for d, _ in c2.received} == {b"two-%d" % i for i in range(20)}
        # replies come from the emulator's listen address, as if it were the server
        assert {a for _, a in c1.received} == {emu.listen_address}
        # the server sees one distinct upstream source per client
        assert len({a for _, a in server.received}) == 2
        snap = emu.snapshot()
        assert snap["sessions"] == 2
        assert snap["c2s"]["received"] == snap["c2s"]["forwarded"] == 40
        assert snap["s2c"]["received"] == snap["s2c"]["forwarded"] == 40
    finally:
        close(server, c1, c2)


async def test_delay_is_a_lower_bound_of_rtt_and_order_is_kept(
    linkemu_factory: EmuFactory,
) -> None:
    server = await udp_endpoint(echo=True)
    delay = Impairment(delay_ms=20)
    emu = await linkemu_factory(server.address, c2s=delay, s2c=Impairment(delay_ms=20))
    client = await udp_endpoint()
    loop = asyncio.get_running_loop()
    try:
        assert client.transport
        rtts = []
        for i in range(5):
            t0 = loop.time()
            client.transport.sendto(b"ping-%d" % i, emu.listen_address)
            assert await client.wait_for_count(i + 1)
            rtts.append(loop.time() - t0)
        # correctness lower bound: 2 x 20 ms one-way delay
        assert min(rtts) >= 0.040
        # a burst with fixed delay and no jitter arrives in order
        n0 = len(client.received)
        for i in range(50):
            client.transport.sendto(b"seq-%03d" % i, emu.listen_address)
        assert await client.wait_for_count(n0 + 50)
        assert [d for d, _ in client.received[n0:]] == [b"seq-%03d" % i for i in range(50)]
    finally:
        close(server, client)


async def test_jitter_keeps_the_lower_bound_and_delivers_everything(
    linkemu_factory: EmuFactory,
) -> None:
    server = await udp_endpoint(echo=True)
    emu = await linkemu_factory(server.address, c2s=Impairment(delay_ms=30, jitter_ms=20), seed=4)
    client = await udp_endpoint()
    loop = asyncio.get_running_loop()
    try:
        assert client.transport
        sent_at: dict[bytes, float] = {}
        for i in range(60):
            tag = b"j%02d" % i
            sent_at[tag] = loop.time()
            client.transport.sendto(tag, emu.listen_address)
        assert await client.wait_for_count(60)
        # nothing may come back sooner than delay - jitter = 10 ms after it was sent
        for (tag, _), arrived in zip(client.received, client.arrival, strict=True):
            assert arrived - sent_at[tag] >= 0.010
        got = [d for d, _ in client.received]
        assert sorted(got) == sorted(sent_at)
        assert got != sorted(got)  # +-20 ms jitter on a burst reorders it
        assert emu.stats["c2s"].forwarded == 60
    finally:
        close(server, client)


async def test_loss_is_counted_and_matches_delivery(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(server.address, c2s=Impairment(loss_pct=30), seed=7)
    client = await udp_endpoint()
    try:
        assert client.transport
        n = 1000
        st = emu.stats["c2s"]
        for i in range(n):
            client.transport.sendto(b"x%d" % i, emu.listen_address)
            if i % 50 == 49:  # pace: let the emulator take each burst
                await _until_received(st, i + 1)
        await server.settle()
        assert st.received == n
        assert st.dropped_loss + st.forwarded == n
        assert len(server.received) == st.forwarded
        # 30 % of 1000: mean 300, sd ~14.5 - a very wide band, not a flaky one
        assert 200 <= st.dropped_loss <= 400
        assert emu.stats["s2c"].received == 0
    finally:
        close(server, client)


async def test_corruption_flips_exactly_one_byte(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(server.address, c2s=Impairment(corrupt_pct=100), seed=3)
    client = await udp_endpoint()
    try:
        assert client.transport
        payloads = [bytes([i]) * 64 for i in range(30)]
        for p in payloads:
            client.transport.sendto(p, emu.listen_address)
        assert await server.wait_for_count(30)
        assert emu.stats["c2s"].corrupted == 30
        for p, (got, _) in zip(payloads, server.received, strict=True):
            assert len(got) == len(p)
            assert sum(a != b for a, b in zip(p, got, strict=True)) == 1
    finally:
        close(server, client)


async def test_partial_corruption_counts(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(server.address, c2s=Impairment(corrupt_pct=25), seed=11)
    client = await udp_endpoint()
    try:
        assert client.transport
        payloads = [b"%04d" % i + b"\x00" * 60 for i in range(200)]
        for p in payloads:
            client.transport.sendto(p, emu.listen_address)
        assert await server.wait_for_count(200)
        changed = sum(got != p for p, (got, _) in zip(payloads, server.received, strict=True))
        assert changed == emu.stats["c2s"].corrupted
        assert 0 < changed < 200
    finally:
        close(server, client)


async def test_duplication(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(server.address, c2s=Impairment(duplicate_pct=100))
    client = await udp_endpoint()
    try:
        assert client.transport
        for i in range(25):
            client.transport.sendto(b"d%d" % i, emu.listen_address)
        assert await server.wait_for_count(50)
        await server.settle()
        assert len(server.received) == 50
        assert emu.stats["c2s"].duplicated == 25
        assert emu.stats["c2s"].forwarded == 50
    finally:
        close(server, client)


async def test_reordering(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(
        server.address, c2s=Impairment(reorder_pct=50, reorder_gap_ms=300), seed=5
    )
    client = await udp_endpoint()
    try:
        assert client.transport
        for i in range(40):
            client.transport.sendto(b"%03d" % i, emu.listen_address)
        assert await server.wait_for_count(40)
        seq = [int(d) for d, _ in server.received]
        assert sorted(seq) == list(range(40))  # nothing lost
        assert emu.stats["c2s"].reordered > 0
        assert seq != sorted(seq)  # held-back packets overtaken by later ones
    finally:
        close(server, client)


async def test_blackhole_toggle_and_timed(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint(echo=True)
    emu = await linkemu_factory(server.address)
    client = await udp_endpoint()
    loop = asyncio.get_running_loop()
    try:
        assert client.transport
        client.transport.sendto(b"before", emu.listen_address)
        assert await client.wait_for_count(1)

        emu.blackhole(on=True)
        for _ in range(10):
            client.transport.sendto(b"lost", emu.listen_address)
        await asyncio.sleep(0.3)
        assert len(server.received) == 1
        assert emu.stats["c2s"].dropped_blackhole == 10
        emu.blackhole(on=False)
        client.transport.sendto(b"after", emu.listen_address)
        assert await client.wait_for_count(2)

        # timed blackhole, one direction only: requests reach the server, replies do not
        emu.blackhole(1.0, direction="s2c")
        until = loop.time() + 1.0
        client.transport.sendto(b"req-in-window", emu.listen_address)
        assert await server.wait_for_count(3)
        await asyncio.sleep(0.1)
        if loop.time() < until:  # only meaningful if we are still inside the window
            assert len(client.received) == 2
        await asyncio.sleep(max(0.0, until - loop.time()) + 0.05)
        client.transport.sendto(b"req-after-window", emu.listen_address)
        assert await client.wait_for_count(3)
        assert client.received[-1][0] == b"req-after-window"
        assert emu.stats["s2c"].dropped_blackhole >= 1
    finally:
        close(server, client)


async def test_scheduled_blackhole_window(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint()
    emu = await linkemu_factory(server.address, blackhole_windows=[(0.0, 1.0)])
    client = await udp_endpoint()
    loop = asyncio.get_running_loop()
    try:
        assert client.transport
        client.transport.sendto(b"early", emu.listen_address)
        await _until_received(emu.stats["c2s"], 1)
        if loop.time() - emu.started_at >= 1.0:
            pytest.skip("the machine stalled past the whole window before the first packet")
        assert emu.stats["c2s"].dropped_blackhole == 1
        await asyncio.sleep(max(0.0, emu.started_at + 1.05 - loop.time()))
        client.transport.sendto(b"late", emu.listen_address)
        assert await server.wait_for_count(1)
        assert [d for d, _ in server.received] == [b"late"]
        assert emu.stats["c2s"].dropped_blackhole == 1
    finally:
        close(server, client)


async def test_rebind_gives_new_upstream_port(linkemu_factory: EmuFactory) -> None:
    server = await udp_endpoint(echo=True)
    emu = await linkemu_factory(server.address)
    client = await udp_endpoint()
    try:
        assert client.transport
        client.transport.sendto(b"a", emu.listen_address)
        assert await client.wait_for_count(1)
        await emu.rebind()
        client.transport.sendto(b"b", emu.listen_address)
        assert await client.wait_for_count(2)  # the reply still finds the client
        ports = [a[1] for _, a in server.received]
        assert len(ports) == 2 and ports[0] != ports[1]
    finally:
        close(server, client)


def test_impairment_validation() -> None:
    with pytest.raises(ValueError):
        Impairment(loss_pct=101).validate()
    with pytest.raises(ValueError):
        Impairment().update(nonsense=1)
    with pytest.raises(ValueError):
        Impairment(delay_ms=-1).validate()


async def _spawn_emu(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.netlab.linkemu",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
    )


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line, "linkemu process ended unexpectedly"
    obj = json.loads(line)
    assert isinstance(obj, dict)
    return obj


async def _cmd(proc: asyncio.subprocess.Process, cmd: dict[str, Any]) -> dict[str, Any]:
    assert proc.stdin
    proc.stdin.write(json.dumps(cmd).encode() + b"\n")
    await proc.stdin.drain()
    return await _line(proc)


async def test_process_mode_stdin_and_udp_control() -> None:
    server = await udp_endpoint(echo=True)
    client = await udp_endpoint()
    proc = await _spawn_emu(
        "--listen",
        "127.0.0.1:0",
        "--target",
        f"127.0.0.1:{server.address[1]}",
        "--delay-ms",
        "5",
        "--seed",
        "1",
        "--control",
        "127.0.0.1:0",
    )
    try:
        ready = await _line(proc)
        assert ready["event"] == "ready"
        listen = (ready["listen"][0], ready["listen"][1])
        assert client.transport
        for i in range(10):
            client.transport.sendto(b"p%d" % i, listen)
        assert await client.wait_for_count(10)

        stats = await _cmd(proc, {"cmd": "stats"})
        assert stats["event"] == "stats"
        assert stats["c2s"]["forwarded"] == 10

        assert (await _cmd(proc, {"cmd": "set", "direction": "c2s", "loss_pct": 100}))[
            "event"
        ] == "ok"
        for _ in range(10):
            client.transport.sendto(b"gone", listen)
        await asyncio.sleep(0.3)
        assert len(client.received) == 10

        # the same commands over the UDP control port
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctl.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            control = (ready["control"][0], ready["control"][1])
            await loop.sock_sendto(ctl, json.dumps({"cmd": "stats"}).encode(), control)
            data = await asyncio.wait_for(loop.sock_recv(ctl, 65536), 10)
            remote = json.loads(data)
            assert remote["c2s"]["dropped_loss"] == 10
            assert (await _cmd(proc, {"cmd": "bogus"}))["event"] == "error"
        finally:
            ctl.close()

        bye = await _cmd(proc, {"cmd": "quit"})
        assert bye == {"event": "ok", "cmd": "quit"}
        stopped = await _line(proc)
        assert stopped["event"] == "stopped"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        close(server, client)


@pytest.mark.netns
async def test_linkemu_in_middle_namespace(netlab: Lab) -> None:
    """client ns ── mid ns (linkemu) ── server ns, routed only through the emulator."""
    cli = netlab.add_namespace("cli")
    mid = netlab.add_namespace("mid")
    srv = netlab.add_namespace("srv")
    netlab.connect(cli, "eth0", "198.51.100.2/24", mid, "left", "198.51.100.1/24")
    netlab.connect(mid, "right", "203.0.113.1/24", srv, "eth0", "203.0.113.10/24")
    # no ip_forward in mid: the only way across is the emulator

    server = await udp_endpoint(echo=True, sock=_bound(srv.socket(), ("203.0.113.10", 5000)))
    client = await udp_endpoint(sock=_bound(cli.socket(), ("198.51.100.2", 0)))
    emu = await mid.spawn_python(
        [
            "--listen",
            "198.51.100.1:5000",
            "--target",
            "203.0.113.10:5000",
            "--upstream-bind",
            "203.0.113.1",
            "--delay-ms",
            "10",
            "--loss",
            "20",
            "--seed",
            "2",
        ],
        module="tests.netlab.linkemu",
    )
    try:
        ready = await emu.read_json()
        assert ready["event"] == "ready", emu.describe()
        assert client.transport
        for i in range(200):
            client.transport.sendto(b"m%d" % i, ("198.51.100.1", 5000))
            if i % 20 == 19:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await client.settle()
        await emu.send_json({"cmd": "stats"})
        st = await emu.expect("event", "stats")
        c2s, s2c = st["c2s"], st["s2c"]
        assert c2s["received"] == 200
        assert c2s["forwarded"] + c2s["dropped_loss"] == 200
        assert len(server.received) == c2s["forwarded"]
        assert {a for _, a in server.received} == {
            ("203.0.113.1", a[1]) for _, a in server.received
        }
        assert s2c["received"] == len(server.received)
        assert len(client.received) == s2c["forwarded"]
        assert 0 < len(client.received) < 200
    finally:
        await emu.stop()
        close(server, client)


async def _until_received(st: DirectionStats, n: int, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while st.received < n and loop.time() < end:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.005)


def _bound(sock: socket.socket, addr: tuple[str, int]) -> socket.socket:
    sock.bind(addr)
    return sock
