"""The lossy link of the benchmarks (``benchmarks.linklab``) and the ``lossy-*`` workloads.

The link tests build network namespaces and TUN devices: they need root, ``ip`` and
/dev/net/tun. Without them they skip with the reason - except when
``QUICSHIFT_REQUIRE_NETNS=1`` (CI), where they fail, as the other namespace tests do.
Only lower bounds on time are checked, never how fast anything is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import pytest

from benchmarks import harness, linklab
from benchmarks.linklab import LinkModel, LinkSpec, LossyLink
from benchmarks.report import build_report, render_markdown
from benchmarks.workloads import LOSSY_WORKLOADS, METRICS, WORKLOADS, workload_params

from .netns import namespaces, require

PORT = 9100
SO_RCVBUFFORCE = 33  # Linux; not in the socket module


def require_link() -> None:
    require(linklab.available, "lossy link")


# -- without namespaces ------------------------------------------------------------------


def test_link_model_delays_rate_limits_and_drops_deterministically() -> None:
    spec = LinkSpec(delay_ms=20, loss_pct=0, rate_mbit=8, queue_bytes=3000)  # 1 byte/µs
    model = LinkModel(spec, seed=1)
    packet = b"\x45" + bytes(999)  # an IPv4 packet of 1,000 bytes
    assert model.arrive(packet, now=10.0)
    assert model.arrive(packet, now=10.0)  # waits behind the first
    assert model.arrive(packet, now=10.0)
    assert not model.arrive(packet, now=10.0)  # the 3,000-byte queue is full: tail drop
    assert model.next_due() == pytest.approx(10.0 + 0.001 + 0.020)
    assert model.due(10.020) == []
    assert len(model.due(10.0215)) == 1
    assert len(model.due(10.030)) == 2
    assert model.stats()["queue_drops"] == 1
    assert not model.arrive(b"\x60" + bytes(99), now=11.0)  # IPv6 is not forwarded
    assert model.stats()["not_ipv4"] == 1

    def fates(seed: int) -> list[bool]:
        lossy = LinkModel(LinkSpec(delay_ms=0, loss_pct=20, rate_mbit=1000), seed)
        return [lossy.arrive(b"\x45" + bytes(99), now=float(i)) for i in range(1000)]

    assert fates(7) == fates(7)
    assert fates(7) != fates(8)
    assert 100 <= fates(7).count(False) <= 300


def test_link_spec_validates_and_describes() -> None:
    assert LinkSpec().effective_queue_bytes == 250_000  # one BDP at 50 Mbit/s, 40 ms
    assert "40 ms RTT" in LinkSpec().describe() and "1% random loss" in LinkSpec().describe()
    for bad in ({"loss_pct": 101}, {"delay_ms": -1}, {"rate_mbit": 0}, {"queue_bytes": 10}):
        with pytest.raises(ValueError):
            LinkSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LinkSpec(tcp_congestion_control="reno; rm -rf /")
    for ok in ("192.0.2.1", "198.51.100.0/24", "203.0.113.7/32"):
        linklab.check_test_net(ok)
    for bad_addr in ("10.0.0.1", "8.8.8.8", "192.0.3.1", "::1", "junk"):
        with pytest.raises(linklab.LinkError):
            linklab.check_test_net(bad_addr)


def test_lossy_workloads_are_selectable_and_in_the_default_run() -> None:
    assert set(LOSSY_WORKLOADS) <= set(WORKLOADS)
    for quick in (False, True):
        params = workload_params(quick)
        for workload in LOSSY_WORKLOADS:
            assert all(value > 0 for value in params[workload].values()), workload
    assert {m.workload for m in METRICS} >= set(LOSSY_WORKLOADS)


def test_require_link_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linklab, "available", lambda: (False, "no root here"))
    monkeypatch.setenv("QUICSHIFT_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="no root here"):
        require_link()
    monkeypatch.delenv("QUICSHIFT_REQUIRE_NETNS")
    with pytest.raises(pytest.skip.Exception, match="no root here"):
        require_link()


async def test_lossy_workloads_are_skipped_with_the_reason_without_a_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(linklab, "available", lambda: (False, "needs root (test)"))
    params = workload_params(True, 0.05)
    results = await harness.run_all(
        ["grpc-direct", "native-quic-1452"],
        list(LOSSY_WORKLOADS),
        {w: params[w] for w in LOSSY_WORKLOADS},
        log=lambda line: None,
    )
    for workload in LOSSY_WORKLOADS:
        assert results["grpc-direct"][workload] == {
            "skipped": "no lossy link on this machine: needs root (test)"
        }
        assert "loopback only" in results["native-quic-1452"][workload]["skipped"]
    report = build_report(
        results,
        mode="quick",
        scale=0.05,
        command="python -m benchmarks",
        machine={},
        params={w: params[w] for w in LOSSY_WORKLOADS},
        started_utc="2026-01-01T00:00:00Z",
        duration_s=1.0,
    )
    assert report["targets"] == []
    markdown = render_markdown(report)
    assert "| lossy link: unary p50 | ms | skipped | skipped |" in markdown
    assert "## Skipped" in markdown and "needs root (test)" in markdown


# -- across a real link ----------------------------------------------------------------------


def _echo_server(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            continue
        sock.sendto(data, addr)


@pytest.mark.netns
@pytest.mark.timeout(60)
async def test_link_delays_udp_and_tcp_by_the_round_trip_and_cleans_up() -> None:
    require_link()
    link = LossyLink(LinkSpec(delay_ms=20, loss_pct=0))
    names = {link.client_ns, link.server_ns}
    async with link:
        assert names <= namespaces()
        server = link.socket("server")
        client = link.socket("client")
        stop = threading.Event()
        echo = threading.Thread(target=_echo_server, args=(server, stop))
        try:
            server.bind((link.server_addr, PORT))
            client.bind((link.client_addr, 0))
            client.settimeout(5)
            echo.start()
            rtts = []
            for i in range(10):
                t0 = time.perf_counter()
                client.sendto(b"ping %d" % i, (link.server_addr, PORT))
                data, _ = client.recvfrom(2048)
                rtts.append(time.perf_counter() - t0)
                assert data == b"ping %d" % i
            assert min(rtts) >= 0.035, rtts

            listener = link.socket("server", socket.SOCK_STREAM)
            dialer = link.socket("client", socket.SOCK_STREAM)
            with listener, dialer:
                listener.bind((link.server_addr, PORT))
                listener.listen()
                dialer.settimeout(5)
                t0 = time.perf_counter()
                await asyncio.to_thread(dialer.connect, (link.server_addr, PORT))
                assert time.perf_counter() - t0 >= 0.035  # SYN, SYN-ACK: one round trip
        finally:
            stop.set()
            if echo.is_alive():
                echo.join()
            server.close()
            client.close()
        stats = await link.stats()
        assert stats["c2s"]["lost"] == stats["s2c"]["lost"] == 0
        assert stats["c2s"]["forwarded"] >= 10 and stats["s2c"]["forwarded"] >= 10
    assert not names & namespaces()


@pytest.mark.netns
@pytest.mark.timeout(60)
async def test_link_drops_the_configured_share_per_direction() -> None:
    require_link()
    count = 500
    async with LossyLink(LinkSpec(delay_ms=1, loss_pct=20, seed=3)) as link:
        server = link.socket("server")
        client = link.socket("client")
        with server, client:
            server.bind((link.server_addr, PORT))
            client.bind((link.client_addr, PORT))
            for sock in (server, client):
                try:  # root may exceed net.core.rmem_max
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.settimeout(0.5)

            def received(sock: socket.socket) -> int:
                got = 0
                while True:
                    try:
                        sock.recv(2048)
                    except TimeoutError:
                        return got
                    got += 1

            for sender, receiver, to in (
                (client, server, (link.server_addr, PORT)),
                (server, client, (link.client_addr, PORT)),
            ):
                counting = asyncio.create_task(asyncio.to_thread(received, receiver))
                for i in range(count):
                    sender.sendto(b"%d" % i, to)
                    if i % 25 == 24:
                        await asyncio.sleep(0.002)  # well below any queue or buffer limit
                lost = count - await counting
                assert 0.05 * count <= lost <= 0.40 * count, lost
        stats = await link.stats()
    for direction in ("c2s", "s2c"):
        assert stats[direction]["queue_drops"] == 0
        assert 0.05 * count <= stats[direction]["lost"] <= 0.40 * count, stats


def _sane(stack: str, workload: str, result: dict[str, Any]) -> None:
    assert "error" not in result and "skipped" not in result, (stack, workload, result)
    for metric in METRICS:
        if metric.workload == workload:
            value = result[metric.key]
            assert isinstance(value, int | float) and value > 0, (stack, metric.key, value)
    for direction in ("c2s", "s2c"):
        assert result["link"][direction]["packets"] > 0, (stack, workload, result["link"])
    assert result["tcp_congestion_control"]


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_lossy_workloads_run_through_the_harness() -> None:
    require_link()
    params = workload_params(True, 0.05)
    before = namespaces()
    results = await harness.run_all(
        ["grpc-direct", "native-quic"],
        list(LOSSY_WORKLOADS),
        {w: params[w] for w in LOSSY_WORKLOADS},
        log=print,
    )
    for stack, per in results.items():
        assert list(per) == list(LOSSY_WORKLOADS)
        for workload, result in per.items():
            _sane(stack, workload, result)
        assert per["lossy-unary"]["p50_ms"] >= 35  # one 40 ms round trip per call
    leftovers = {n for n in namespaces() - before if n.startswith(f"qsbl-{os.getpid()}-")}
    assert not leftovers
