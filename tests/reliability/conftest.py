"""Shared fixtures for the reliability suite: a live RPC server over QUIC (and TCP mux),
raw-stream helpers that read back what the server answered, and a leak check."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from quic_rpc.quic import QUICConfig, QUICConnection, QUICServer, QUICSocket, ca_verifier, connect
from quic_rpc.rpc import (
    FrameDecoder,
    RPCClient,
    RPCServer,
    RPCServerConfig,
    ServerCallContext,
    TrailerReceived,
    client_streaming,
    server_streaming,
    unary,
)
from quic_rpc.rpc.errors import RemoteProtocolError
from quic_rpc.rpc.status import Status
from quic_rpc.streams import ByteStream, ConnectionLostError, StreamError, StreamResetError
from tests.quic.certs import PKI
from tests.quic.helpers import wait_for_condition


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every test must leave no task or file descriptor behind."""
    before = open_fds()
    yield
    current = asyncio.current_task()
    leftover: list[asyncio.Task[Any]] = []
    for _ in range(100):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftover:
            break
        await asyncio.sleep(0.02)
    assert not leftover, f"leaked tasks: {leftover}"
    assert open_fds() <= before, "leaked file descriptors"


@pytest.fixture(scope="session")
def pki() -> PKI:
    return PKI("p256")


@dataclass
class Counters:
    """Counts handler invocations: the proof that no handler ran for a hostile input."""

    calls: dict[str, int] = field(default_factory=dict)

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def make_manifest(counters: Counters) -> dict[str, Any]:
    async def echo(request: bytes, ctx: ServerCallContext) -> bytes:
        counters.hit("echo")
        return request

    async def numbers(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        counters.hit("numbers")
        for i in range(int(request or b"0")):
            yield i.to_bytes(4, "big") + b"\x00" * 60_000

    async def sleep(request: bytes, ctx: ServerCallContext) -> bytes:
        counters.hit("sleep")
        await asyncio.sleep(3600)
        return b""

    async def total(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
        counters.hit("sum")
        value = 0
        async for item in requests:
            value += int(item)
        counters.hit("sum_done")
        return str(value).encode()

    return {
        "/t.S/Echo": unary(echo),
        "/t.S/Sum": client_streaming(total),
        "/t.S/Numbers": server_streaming(numbers),
        "/t.S/Sleep": unary(sleep),
    }


@dataclass
class QUICRig:
    """An RPCServer served by a QUICServer, plus the means to dial it."""

    pki: PKI
    rpc: RPCServer
    server: QUICServer
    socket: QUICSocket
    counters: Counters
    quic_config: QUICConfig
    _sockets: list[QUICSocket] = field(default_factory=list)
    _conns: list[QUICConnection] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.socket.local_address[1]

    async def new_socket(self) -> QUICSocket:
        sock = await QUICSocket.bind("127.0.0.1", 0)
        self._sockets.append(sock)
        return sock

    async def dial(self, config: QUICConfig | None = None, **kwargs: Any) -> QUICConnection:
        sock = await self.new_socket()
        creds = kwargs.pop("credentials", None) or self.pki.credentials(
            ca_verifier(self.pki.root_pem), "client"
        )
        conn = await connect(
            sock, "127.0.0.1", self.port, creds, config or self.quic_config, **kwargs
        )
        self._conns.append(conn)
        return conn

    async def client(self) -> RPCClient:
        return RPCClient(await self.dial())

    async def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.abort()
        await self.server.abort()
        await self.rpc.stop(0)
        for sock in self._sockets:
            await sock.close()
        await self.socket.close()


RigFactory = Callable[..., Awaitable[QUICRig]]


@pytest.fixture
async def quic_rig(pki: PKI) -> AsyncIterator[RigFactory]:
    rigs: list[QUICRig] = []

    async def factory(
        rpc_config: RPCServerConfig | None = None,
        quic_config: QUICConfig | None = None,
        verify: Any = None,
        server_credentials: Any = None,
        manifest: dict[str, Any] | None = None,
    ) -> QUICRig:
        counters = Counters()
        rpc = RPCServer(manifest or make_manifest(counters), config=rpc_config)
        sock = await QUICSocket.bind("127.0.0.1", 0)
        qcfg = quic_config or QUICConfig()
        creds = server_credentials or pki.credentials(verify or ca_verifier(pki.root_pem), "server")
        server = QUICServer(sock, creds, qcfg, rpc.handle_stream)
        await server.start()
        rig = QUICRig(pki, rpc, server, sock, counters, qcfg)
        rigs.append(rig)
        return rig

    yield factory
    for rig in rigs:
        await rig.close()


# ----------------------------------------------------------------- raw stream helpers


@dataclass(frozen=True)
class Answer:
    """How the server ended a raw call stream."""

    kind: str  # "trailer", "reset", "eof" (no trailer), "lost"
    status: Status | None = None
    details: str = ""
    code: int | None = None


async def read_answer(stream: ByteStream, limit: float = 20.0) -> Answer:
    """Read the server's direction to its end and say how it ended."""
    decoder = FrameDecoder(max_message_size=1 << 24, max_header_size=1 << 20)
    trailer: TrailerReceived | None = None
    async with asyncio.timeout(limit):
        try:
            while data := await stream.receive():
                for event in decoder.feed(data):
                    if isinstance(event, TrailerReceived):
                        trailer = event
        except StreamResetError as exc:
            return Answer("reset", code=exc.code)
        except ConnectionLostError as exc:
            return Answer("lost", details=exc.reason)
        except RemoteProtocolError as exc:  # the server must never send malformed frames
            raise AssertionError(f"server sent malformed frames: {exc}") from exc
    if trailer is not None:
        return Answer("trailer", trailer.status, trailer.details)
    return Answer("eof")


async def send_raw(stream: ByteStream, data: bytes, *, eof: bool = True) -> None:
    """Write hostile bytes; the server may stop us early, which is fine."""
    with contextlib.suppress(StreamError):
        if data:
            await stream.send(data)
        if eof:
            await stream.send_eof()


async def assert_healthy(client: RPCClient, payload: bytes = b"still alive") -> None:
    """A good call on another connection (or the same one) still works."""
    assert await client.unary("/t.S/Echo", payload, timeout=20) == payload


# ----------------------------------------------------------- hostile-input targets

SMALL_LIMITS = RPCServerConfig(max_receive_message_size=64 * 1024, close_linger=0.2)


@dataclass
class Target:
    """One transport carrying an RPCServer: raw streams for the attacker, and two good
    clients — one on the attacker's connection and one on a separate connection."""

    name: str
    rpc: RPCServer
    counters: Counters
    open_raw: Callable[[], Awaitable[ByteStream]]
    same_conn: RPCClient
    other_conn: RPCClient


@contextlib.asynccontextmanager
async def _quic_target(make_rig: RigFactory) -> AsyncIterator[Target]:
    rig: QUICRig = await make_rig(rpc_config=SMALL_LIMITS)
    attacker = await rig.dial()
    other = await rig.dial()
    yield Target(
        "quic", rig.rpc, rig.counters, attacker.open_stream, RPCClient(attacker), RPCClient(other)
    )


@contextlib.asynccontextmanager
async def _tcp_target() -> AsyncIterator[Target]:
    from quic_rpc.transports.tcp import TCPServer, connect_tcp

    counters = Counters()
    rpc = RPCServer(make_manifest(counters), config=SMALL_LIMITS)
    server = TCPServer()
    await server.start("127.0.0.1", 0, rpc.handle_stream)
    attacker = await connect_tcp("127.0.0.1", server.port)
    other = await connect_tcp("127.0.0.1", server.port)
    try:
        yield Target(
            "tcp", rpc, counters, attacker.open_stream, RPCClient(attacker), RPCClient(other)
        )
    finally:
        await attacker.aclose()
        await other.aclose()
        await rpc.stop(0)
        await server.stop(0)


@pytest.fixture(params=["quic", "tcp"])
async def target(request: pytest.FixtureRequest, quic_rig: RigFactory) -> AsyncIterator[Target]:
    factory = _quic_target(quic_rig) if request.param == "quic" else _tcp_target()
    async with factory as t:
        yield t


async def wait_calls_drained(rpc: RPCServer) -> None:
    await wait_for_condition(lambda: rpc.active_calls == 0, 10)


# ------------------------------------------------------------------- UDP relay


class UDPRelay:
    """A loopback UDP relay between one client and a server: records every datagram with
    its direction and counts bytes each way. ``forward_up(index, data)`` decides whether
    the client's ``index``-th datagram goes through (default: all)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.up: list[bytes] = []
        self.down: list[bytes] = []
        self.bytes_up = 0
        self.bytes_down = 0
        self.forward_up: Callable[[int, bytes], bool] = lambda index, data: True
        self._client: tuple[str, int] | None = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        assert self._front is not None
        return int(self._front.get_extra_info("sockname")[1])

    @property
    def upstream(self) -> asyncio.DatagramTransport:
        """The socket the server sees as the client (for on-path injection)."""
        assert self._back is not None
        return self._back

    async def start(self) -> UDPRelay:
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                relay._client = (addr[0], addr[1])
                index = len(relay.up)
                relay.up.append(data)
                if relay.forward_up(index, data):
                    relay.bytes_up += len(data)
                    assert relay._back is not None
                    relay._back.sendto(data, relay.server)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                relay.down.append(data)
                relay.bytes_down += len(data)
                if relay._client is not None and relay._front is not None:
                    relay._front.sendto(data, relay._client)

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self._back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        return self

    def close(self) -> None:
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()


@pytest.fixture
async def udp_relay() -> AsyncIterator[Callable[[tuple[str, int]], Awaitable[UDPRelay]]]:
    relays: list[UDPRelay] = []

    async def factory(server: tuple[str, int]) -> UDPRelay:
        relay = await UDPRelay(server).start()
        relays.append(relay)
        return relay

    yield factory
    for relay in relays:
        relay.close()
    await asyncio.sleep(0)


async def raw_udp_socket() -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    return transport
