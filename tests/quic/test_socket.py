"""One shared socket per agent: routing, many connections both ways, dead peers, NAT
rebinding, garbage, Retry, connection limits, hole-punch datagrams."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from quic_rpc.quic import (
    ConnectionLimitError,
    QUICConfig,
    QUICConnection,
    QUICServer,
    QUICSocket,
    connect,
    gso_supported,
)
from quic_rpc.streams import ByteStream, ConnectionLostError

from .certs import PKI, key_pem, pem
from .conftest import SocketFactory
from .helpers import echo_handler, hash_reader, read_all, request, wait_for_condition

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


async def test_many_connections_both_ways_through_shared_sockets(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    a = await make_socket()
    b = await make_socket()
    incoming: dict[str, list[QUICConnection]] = {"a": [], "b": []}
    server_a = QUICServer(
        a, server_creds, QUICConfig(), echo_handler, on_connection=incoming["a"].append
    )
    server_b = QUICServer(
        b, server_creds, QUICConfig(), echo_handler, on_connection=incoming["b"].append
    )
    await server_a.start()
    await server_b.start()
    count = 12

    async def dial(src: QUICSocket, dst: QUICSocket, index: int) -> QUICConnection:
        conn = await connect(src, *dst.local_address, client_creds)
        for n in range(3):
            payload = f"{index}:{n}".encode() * 100
            assert await request(conn, payload) == payload
        return conn

    conns = await asyncio.gather(
        *(dial(a, b, i) for i in range(count)), *(dial(b, a, i) for i in range(count))
    )
    # every client connection leaves from its agent's one socket
    assert all(c.local_address == a.local_address for c in conns[:count])
    assert all(c.local_address == b.local_address for c in conns[count:])
    assert len(incoming["a"]) == count and len(incoming["b"]) == count
    assert len(server_a.connections) == count and len(server_b.connections) == count
    assert {c.remote_address[1] for c in server_b.connections} == {a.local_address[1]}
    assert len(a.connections) == 2 * count  # its clients plus its server's connections
    await asyncio.gather(*(c.aclose() for c in conns))
    await server_a.stop()
    await server_b.stop()


async def test_killed_peer_detected_by_idle_timeout(
    make_socket: SocketFactory, pki: PKI, client_creds, tmp_path: Path
) -> None:
    key, chain = pki.leaf("server")
    (tmp_path / "root.pem").write_bytes(pki.root_pem)
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "chain.pem").write_bytes(pem(*chain))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.quic.peer_process",
        str(tmp_path / "root.pem"),
        str(tmp_path / "key.pem"),
        str(tmp_path / "chain.pem"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
        csock = await make_socket()
        config = QUICConfig(idle_timeout=1.0, keepalive_interval=0.3)
        conn = await connect(csock, "127.0.0.1", port, client_creds, config)
        assert await request(conn, b"alive") == b"alive"
        stream = await conn.open_stream()
        await stream.send(b"half a request")
        pending = asyncio.create_task(stream.receive())
        assert await pending == b"half a request"  # echo is live
        pending = asyncio.create_task(stream.receive())
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        with pytest.raises(ConnectionLostError) as info:
            await asyncio.wait_for(pending, 30)
        assert info.value.reason == "idle timeout"
        with pytest.raises(ConnectionLostError):
            await stream.send(b"more")
        with pytest.raises(ConnectionLostError):
            await conn.open_stream()
        await conn.wait_closed()
        assert csock.connections == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class _Relay(asyncio.DatagramProtocol):
    """A loopback 'NAT': forwards client→server from an outbound socket it can swap."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.outbound: list[asyncio.DatagramTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        self.outbound[-1].sendto(data, self.server)

    async def rebind(self) -> None:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if relay.front is not None and relay.client is not None:
                    relay.front.sendto(data, relay.client)

        transport, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        self.outbound.append(transport)

    def close(self) -> None:
        for transport in [self.front, *self.outbound]:
            if transport is not None:
                transport.close()


async def test_nat_rebinding_mid_transfer(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        if result.done():
            await echo_handler(stream)
            return
        result.set_result(await hash_reader(stream))
        await stream.send(b"done")
        await stream.send_eof()

    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(), handler)
    await server.start()
    loop = asyncio.get_running_loop()
    relay = _Relay(ssock.local_address)
    await relay.rebind()
    front, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    try:
        csock = await make_socket()
        conn = await connect(csock, *front.get_extra_info("sockname")[:2], client_creds)
        await wait_for_condition(lambda: bool(server.connections))
        sconn = server.connections[0]
        first_port = sconn.remote_address[1]
        stream = await conn.open_stream()
        block = os.urandom(64 * 1024)
        sent = 0
        for index in range(128):  # 8 MiB, rebinding half way
            if index == 64:
                await relay.rebind()
            await stream.send(block)
            sent += len(block)
        await stream.send_eof()
        total, _ = await asyncio.wait_for(result, 60)
        assert total == sent
        assert await read_all(stream) == b"done"
        assert sconn.remote_address[1] != first_port
        assert sconn.remote_address[1] == relay.outbound[-1].get_extra_info("sockname")[1]
        assert await request(conn, b"after") == b"after"
        await conn.aclose()
    finally:
        await server.stop()
        relay.close()
        await asyncio.sleep(0)


async def test_garbage_datagrams_do_not_disturb_live_connections(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        if result.done():
            await echo_handler(stream)
            return
        result.set_result(await hash_reader(stream))

    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(), handler)
    await server.start()
    csock = await make_socket()
    conn = await connect(csock, *ssock.local_address, client_creds)
    await wait_for_condition(lambda: bool(server.connections))
    known_cid = next(cid for cid, c in ssock._routes.items() if c is server.connections[0])
    stream = await conn.open_stream()
    rogue = await make_socket()
    garbage = [
        b"",
        b"\x00",
        b"\xff" * 5,
        os.urandom(40),
        os.urandom(1500),
        b"\xc0" + os.urandom(1300),  # long header with junk
        b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1300),  # v1 "Initial" of junk
        b"\x40" + known_cid + os.urandom(100),  # short header for a live cid, bad crypto
        b"\x40" + os.urandom(60),  # unknown short header: may draw a stateless reset
    ]
    block = os.urandom(64 * 1024)
    for index in range(64):
        if index % 8 == 0:
            for junk in garbage:
                rogue.send_punch(*ssock.local_address, payload=junk)
                csock.send_punch(*ssock.local_address, payload=junk)
        await stream.send(block)
    await stream.send_eof()
    total, _ = await asyncio.wait_for(result, 60)
    assert total == 64 * len(block)
    assert not conn.is_closed and len(server.connections) == 1
    assert await request(conn, b"still fine") == b"still fine"
    await conn.aclose()
    await server.stop()


async def test_unrouted_datagrams_reach_callback(make_socket: SocketFactory) -> None:
    a = await make_socket()
    b = await make_socket()
    got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
    b.on_unrouted = lambda data, addr: got.put_nowait((data, addr))
    a.send_punch(*b.local_address)
    data, addr = await asyncio.wait_for(got.get(), 5)
    assert data == b"\x00quicshift-punch" and addr == a.local_address
    a.send_punch(*b.local_address, payload=b"\x41custom")  # looks like a short header
    data, addr = await asyncio.wait_for(got.get(), 5)
    assert data == b"\x41custom"


async def test_a_wake_up_reads_a_bounded_batch(make_socket: SocketFactory) -> None:
    """With a megabyte queued on the socket, one wake-up reads at most about 256 KiB and
    lets the loop run (readers consume, credit goes back) before reading on; reading all
    of it first made bulk transfers run stop-and-wait, a window at a time."""
    import socket as pysocket

    receiver = await make_socket()
    ticks = 0
    per_tick: dict[int, int] = {}
    total = 64 * 16 * 1024

    def on_unrouted(data: bytes, addr: object) -> None:
        per_tick[ticks] = per_tick.get(ticks, 0) + len(data)

    receiver.on_unrouted = on_unrouted

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as sender:
        for i in range(64):  # queued before the loop gets to read any of it
            sender.sendto(b"\x00" + bytes([i]) * (16 * 1024 - 1), receiver.local_address)
    counting = asyncio.create_task(ticker())
    try:
        await wait_for_condition(lambda: sum(per_tick.values()) == total)
    finally:
        counting.cancel()
    assert max(per_tick.values()) <= 320 * 1024, per_tick  # 256 KiB, + one GRO batch
    assert len(per_tick) >= 4


async def test_retry_address_validation(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    config = QUICConfig(retry=True)
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler)
    await server.start()
    csock = await make_socket()
    conn = await connect(csock, *ssock.local_address, client_creds, config)
    assert await request(conn, b"validated") == b"validated"
    await conn.aclose()
    await server.stop()


async def test_max_connections_refuses_more(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(max_connections=2), echo_handler)
    await server.start()
    csock = await make_socket()
    first = [await connect(csock, *ssock.local_address, client_creds) for _ in range(2)]
    with pytest.raises(ConnectionLimitError, match="refused"):
        await connect(csock, *ssock.local_address, client_creds)
    assert server.refused >= 1
    await first[0].aclose()
    await wait_for_condition(lambda: len(server.connections) == 1)
    third = await connect(csock, *ssock.local_address, client_creds)
    for conn in (first[1], third):
        await conn.aclose()
    await server.stop()


async def test_keepalive_keeps_idle_connection_open(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    config = QUICConfig(idle_timeout=1.2, keepalive_interval=0.2)
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler)
    await server.start()
    csock = await make_socket()
    conn = await connect(csock, *ssock.local_address, client_creds, config)
    sent_before = conn.stats()["datagrams_sent"]
    await asyncio.sleep(3.0)  # several idle timeouts long
    assert not conn.is_closed
    assert conn.stats()["datagrams_sent"] > sent_before  # PINGs went out
    assert await request(conn, b"still here") == b"still here"
    await conn.aclose()
    await server.stop()


async def test_socket_close_aborts_connections(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
    await server.start()
    csock = await QUICSocket.bind("127.0.0.1", 0)
    conn = await connect(csock, *ssock.local_address, client_creds)
    stream = await conn.open_stream()
    await csock.close()
    with pytest.raises(ConnectionLostError):
        await stream.receive()
    assert conn.close_reason is not None and "socket closed" in conn.close_reason.reason
    await wait_for_condition(lambda: not server.connections)  # the peer saw our close
    await server.stop()


async def test_restarted_peer_stateless_reset_ends_connection(
    make_socket: SocketFactory, server_creds, client_creds
) -> None:
    key = os.urandom(32)
    ssock = await QUICSocket.bind("127.0.0.1", 0, reset_key=key)
    host, port = ssock.local_address
    server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
    await server.start()
    csock = await make_socket()
    conn = await connect(csock, host, port, client_creds, QUICConfig(idle_timeout=60))
    assert await request(conn, b"x" * 100) == b"x" * 100
    # the server process "restarts": all state lost, same port, same reset key
    ssock._connections.clear()
    ssock._routes.clear()
    for sconn in server.connections:
        sconn._finalized = True
        if sconn._timer is not None:
            sconn._timer.cancel()
    await ssock.close()
    restarted = await make_socket("127.0.0.1", port, reset_key=key)
    stream = await conn.open_stream()
    await stream.send(b"y" * 200)
    with pytest.raises(ConnectionLostError) as info:
        await asyncio.wait_for(stream.receive(), 10)
    assert "stateless reset" in info.value.reason
    assert restarted.connections == []


async def test_idle_connection_wakes_only_for_keepalive(
    make_socket: SocketFactory, server_creds, client_creds, monkeypatch
) -> None:
    wakeups = 0
    original = QUICConnection._on_timer

    def counting(self: QUICConnection) -> None:
        nonlocal wakeups
        wakeups += 1
        original(self)

    monkeypatch.setattr(QUICConnection, "_on_timer", counting)
    config = QUICConfig(idle_timeout=5.0, keepalive_interval=0.25)
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler)
    await server.start()
    csock = await make_socket()
    conn = await connect(csock, *ssock.local_address, client_creds, config)
    await wait_for_condition(lambda: bool(server.connections))
    sconn = server.connections[0]
    await asyncio.sleep(0.3)
    wakeups = 0
    sent_before = conn.datagrams_sent + sconn.datagrams_sent
    await asyncio.sleep(1.5)
    pings = conn.datagrams_sent + sconn.datagrams_sent - sent_before
    assert pings >= 1
    # each keepalive costs a few timer wake-ups (PING, delayed ACK); nothing spins
    assert wakeups <= 4 * pings + 4
    await conn.aclose()
    await server.stop()


async def test_gro_coalesced_datagrams_are_split(make_socket: SocketFactory) -> None:
    import socket as pysocket

    receiver = await make_socket()
    if not receiver.gro_enabled:
        pytest.skip("no UDP GSO/GRO on this platform")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    receiver.on_unrouted = lambda data, addr: got.put_nowait(data)
    segments = [b"\x00" + bytes([i]) * 99 for i in range(3)] + [b"\x00tail"]
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as sender:
        sender.sendmsg(
            [b"".join(segments)],
            [(17, 103, (100).to_bytes(2, sys.byteorder))],  # SOL_UDP, UDP_SEGMENT
            0,
            receiver.local_address,
        )
        received = [await asyncio.wait_for(got.get(), 5) for _ in segments]
    assert received == segments
    assert receiver.gro_batches == 1


# -- Don't Fragment and datagrams too big for the interface ------------------------------

_IP_MTU_DISCOVER = 10  # Linux: IPPROTO_IP option, and IP_PMTUDISC_PROBE is 3
_IPV6_MTU_DISCOVER = 23  # Linux: IPPROTO_IPV6 option, and IPV6_PMTUDISC_PROBE is 3
_PMTUDISC_PROBE = 3
_linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Don't Fragment is set on Linux only"
)


def _has_ipv6(host: str) -> bool:
    import socket as pysocket

    try:
        with pysocket.socket(pysocket.AF_INET6, pysocket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


@_linux_only
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1", marks=pytest.mark.skipif(not _has_ipv6("::1"), reason="no IPv6 loopback")
        ),
        pytest.param("::", marks=pytest.mark.skipif(not _has_ipv6("::"), reason="no IPv6")),
    ],
)
@pytest.mark.parametrize("io", ["selector", "transport"])
async def test_started_socket_sets_dont_fragment(
    make_socket: SocketFactory, host: str, io: str
) -> None:
    import socket as pysocket

    sock = await make_socket(host, io=io)
    assert sock.dont_fragment
    raw = sock._sock
    assert raw is not None
    if host == "127.0.0.1":
        assert raw.getsockopt(pysocket.IPPROTO_IP, _IP_MTU_DISCOVER) == _PMTUDISC_PROBE
    else:
        assert raw.getsockopt(pysocket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER) == _PMTUDISC_PROBE
    if host == "::":  # dual stack: IPv4-mapped traffic takes the IPv4 option
        assert raw.getsockopt(pysocket.IPPROTO_IP, _IP_MTU_DISCOVER) == _PMTUDISC_PROBE


@_linux_only
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::", marks=pytest.mark.skipif(not _has_ipv6("::"), reason="no IPv6")),
    ],
)
async def test_adopted_socket_sets_dont_fragment(host: str) -> None:
    import socket as pysocket

    family = pysocket.AF_INET if "." in host else pysocket.AF_INET6
    raw = pysocket.socket(family, pysocket.SOCK_DGRAM)
    if family == pysocket.AF_INET6:
        raw.setsockopt(pysocket.IPPROTO_IPV6, pysocket.IPV6_V6ONLY, 0)
    raw.bind((host, 0))
    sock = QUICSocket.from_socket(raw)
    assert not sock.dont_fragment  # not started yet
    async with sock:
        assert sock.dont_fragment
        assert raw.getsockopt(pysocket.IPPROTO_IP, _IP_MTU_DISCOVER) == _PMTUDISC_PROBE
        if family == pysocket.AF_INET6:
            assert raw.getsockopt(pysocket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER) == _PMTUDISC_PROBE


def _too_big_socket(limit: int, gso_error: int = errno.EMSGSIZE, gso_limit: int = 0) -> Any:
    """A bound UDP socket that refuses datagrams over ``limit`` bytes with EMSGSIZE, the
    way the kernel does with DF set and a smaller interface MTU. A GSO send whose segment
    size is over ``gso_limit`` (default: ``limit``) fails as a whole with ``gso_error``."""
    import socket as pysocket

    class TooBig(pysocket.socket):
        refused: list[int]
        calls: list[list[int]]
        """Every send: the datagram sizes it carried (several for a GSO send)."""

        def sendto(self, data: Any, *args: Any) -> int:
            self.calls.append([len(data)])
            if len(data) > limit:
                self.refused.append(len(data))
                raise OSError(errno.EMSGSIZE, "Message too long")
            return super().sendto(data, *args)

        def sendmsg(self, buffers: Any, ancdata: Any = (), *args: Any) -> int:
            segment = sum(len(b) for b in buffers)
            for level, kind, value in ancdata:
                if (level, kind) == (17, 103):  # SOL_UDP, UDP_SEGMENT
                    segment = int.from_bytes(value, sys.byteorder)
            total = sum(len(b) for b in buffers)
            self.calls.append([min(segment, total - n) for n in range(0, total, segment)])
            if segment > (gso_limit or limit):
                self.refused.append(segment)
                raise OSError(gso_error, os.strerror(gso_error))
            return super().sendmsg(buffers, ancdata, *args)

    raw = TooBig(pysocket.AF_INET, pysocket.SOCK_DGRAM)
    raw.refused = []
    raw.calls = []
    raw.bind(("127.0.0.1", 0))
    return raw


async def _collect(receiver: QUICSocket, count: int) -> list[bytes]:
    got: asyncio.Queue[bytes] = asyncio.Queue()
    receiver.on_unrouted = lambda data, addr: got.put_nowait(data)
    return [await asyncio.wait_for(got.get(), 5) for _ in range(count)]


@pytest.mark.parametrize("io", ["selector", "transport"])
async def test_datagram_too_big_for_interface_is_counted_and_dropped(
    make_socket: SocketFactory, io: str
) -> None:
    receiver = await make_socket()
    raw = _too_big_socket(1300)
    async with QUICSocket.from_socket(raw, io=io, gso=False) as sender:
        addr = receiver.local_address
        batch = [b"\x00big" + bytes(1400), b"\x00one" + bytes(900), b"\x00two" + bytes(1200)]
        collecting = asyncio.create_task(_collect(receiver, 2))
        sender._send_datagrams([(d, addr) for d in batch])  # no exception
        assert await collecting == batch[1:]  # the rest of the batch still went out
        assert sender.datagrams_too_big == 1
        assert raw.refused == [len(batch[0])]
        sender.send_punch(*addr, payload=b"\x00" + bytes(2000))  # any send path counts
        assert sender.datagrams_too_big == 2


@pytest.mark.parametrize(
    "gso_error",
    [errno.EMSGSIZE, errno.EINVAL],  # what older kernels return
    ids=["EMSGSIZE", "EINVAL"],
)
async def test_gso_batch_too_big_for_interface_keeps_gso(
    make_socket: SocketFactory, gso_error: int
) -> None:
    if not gso_supported():
        pytest.skip("no UDP GSO on this platform")
    receiver = await make_socket()
    raw = _too_big_socket(1300, gso_error)
    async with QUICSocket.from_socket(raw) as sender:
        assert sender.gso_enabled
        addr = receiver.local_address
        # one GSO batch of 1400, 1400, 1000 bytes (refused as a whole), then 1000, 1000
        big = [b"\x00" + bytes([i]) * 1399 for i in range(2)]
        small = [b"\x00" + bytes([10 + i]) * 999 for i in range(3)]
        collecting = asyncio.create_task(_collect(receiver, 3))
        sender._send_datagrams([(d, addr) for d in big + small])
        assert sorted(await collecting) == sorted(small)  # only the oversized ones lost
        assert sender.datagrams_too_big == 2
        assert sender.gso_enabled  # a size problem, not a GSO problem
        assert 1400 in raw.refused


async def test_gso_failing_for_other_reasons_is_turned_off(make_socket: SocketFactory) -> None:
    if not gso_supported():
        pytest.skip("no UDP GSO on this platform")
    receiver = await make_socket()
    raw = _too_big_socket(65000, errno.EINVAL, gso_limit=100)  # GSO fails, single sends pass
    async with QUICSocket.from_socket(raw) as sender:
        addr = receiver.local_address
        batch = [b"\x00" + bytes([i]) * 199 for i in range(3)]
        collecting = asyncio.create_task(_collect(receiver, 3))
        sender._send_datagrams([(d, addr) for d in batch])
        assert sorted(await collecting) == sorted(batch)
        assert sender.datagrams_too_big == 0
        assert not sender.gso_enabled


async def test_a_larger_datagram_does_not_share_a_gso_send_with_shorter_ones(
    make_socket: SocketFactory,
) -> None:
    """A GSO batch may travel as one packet up to where it is split (veth, a router in
    the same host), and is dropped whole at a hop too narrow for its segment size: a
    lone larger datagram (a path MTU probe) must not take the shorter ones behind it
    down with it. Measured in a netns lab: each lost probe also lost the datagram after
    it, until probes went out alone."""
    if not gso_supported():
        pytest.skip("no UDP GSO on this platform")
    receiver = await make_socket()
    raw = _too_big_socket(65000)
    async with QUICSocket.from_socket(raw) as sender:
        addr = receiver.local_address
        sizes = [1400, 1200, 1200, 1200, 1200, 500, 1400, 300, 1200, 1200]
        batch = [b"\x00" + bytes([i]) * (n - 1) for i, n in enumerate(sizes)]
        collecting = asyncio.create_task(_collect(receiver, len(batch)))
        sender._send_datagrams([(d, addr) for d in batch])
        assert sorted(await collecting) == sorted(batch)
        assert raw.calls == [[1400], [1200, 1200, 1200, 1200, 500], [1400], [300], [1200, 1200]]
