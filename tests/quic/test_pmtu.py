"""Path MTU discovery: the sans-IO search (``quic_rpc.quic.pmtu``) and the engine that
sends its probes.

The engine tests drive a client and a server ``EngineConnection`` in memory on a
made-up clock, across a "path" that drops every datagram larger than its MTU (as a
router does with Don't Fragment set), so no socket and no wall clock is involved. The
peer addresses are TEST-NET addresses no socket is bound to."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quic_rpc.quic import QUICConfig, QUICServer, TLSCredentials, connect
from quic_rpc.quic.config import pmtu_ceiling
from quic_rpc.quic.engine import EngineConnection, events
from quic_rpc.quic.errors import ConfigError, DatagramError
from quic_rpc.quic.pmtu import (
    BASE_DATAGRAM_SIZE,
    BLACK_HOLE_RETRY,
    MAX_PROBES,
    RAISE_INTERVAL,
    SEARCH_PRECISION,
    PathMTUSearch,
    PMTUState,
    route_mtu,
    udp_payload_limit,
)

from .conftest import SocketFactory
from .helpers import echo_handler, request, wait_for_condition

SERVER_ADDR = ("192.0.2.1", 4433)
CLIENT_ADDR = ("198.51.100.2", 50000)
CONFIG = QUICConfig(idle_timeout=60.0, keepalive_interval=None)


# -- the search on its own ---------------------------------------------------------


def _run_search(
    search: PathMTUSearch,
    carries: Callable[[int], bool],
    now: float = 0.0,
    limit: int = 200,
) -> list[int]:
    """Answer probes with ``carries(size)`` until the search stops asking; the sizes
    probed, in order."""
    search.start()
    probed: list[int] = []
    for _ in range(limit):
        size = search.probe_size(now)
        if size is None:
            break
        probed.append(size)
        search.probe_sent(size)
        assert search.probe_size(now) is None  # one probe at a time
        if carries(size):
            search.probe_acked(size, now)
        else:
            search.probe_lost(size, now)
    return probed


def test_a_path_carrying_the_ceiling_takes_one_probe() -> None:
    search = PathMTUSearch(ceiling=1452)
    assert search.size == BASE_DATAGRAM_SIZE and search.state is PMTUState.DISABLED
    assert search.probe_size(0.0) is None  # not before the handshake
    assert _run_search(search, lambda size: True) == [1452]
    assert search.size == 1452 and search.state is PMTUState.SEARCH_COMPLETE
    assert search.probe_size(1e9) is None  # nothing more to find


def test_a_size_is_given_up_only_after_max_probes_losses() -> None:
    search = PathMTUSearch(ceiling=1452)
    probed = _run_search(search, lambda size: size <= 1400)
    assert probed[:MAX_PROBES] == [1452] * MAX_PROBES
    assert probed[MAX_PROBES] == (1200 + 1452) // 2
    assert search.probes_lost >= MAX_PROBES


def test_a_random_loss_does_not_shrink_the_result() -> None:
    """Two of the three probes at the ceiling are lost; the third gets through."""
    answers = iter([False, False, True])
    search = PathMTUSearch(ceiling=1452)
    assert _run_search(search, lambda size: next(answers)) == [1452] * 3
    assert search.size == 1452


@settings(max_examples=300, deadline=None)
@given(
    ceiling=st.integers(BASE_DATAGRAM_SIZE, 65507),
    mtu=st.integers(BASE_DATAGRAM_SIZE, 65507),
    seed=st.integers(0, 2**32),
)
def test_the_search_converges_below_the_path_mtu(ceiling: int, mtu: int, seed: int) -> None:
    """Whatever the path carries, with random loss of up to two probes in a row: the
    result is never above what the path carries, and within the search precision of
    it (or of the ceiling)."""
    rng = random.Random(seed)
    streak = 0

    def carries(size: int) -> bool:
        nonlocal streak
        if size > mtu:
            return False
        if streak < MAX_PROBES - 1 and rng.random() < 0.3:
            streak += 1
            return False  # a random loss of a probe the path does carry
        streak = 0
        return True

    search = PathMTUSearch(ceiling=ceiling)
    probed = _run_search(search, carries)
    target = min(mtu, ceiling)
    assert search.size <= target
    assert target - search.size <= SEARCH_PRECISION
    assert search.state is PMTUState.SEARCH_COMPLETE
    assert len(probed) <= MAX_PROBES * 20  # a bisection, not a sweep


def test_a_search_ending_below_the_ceiling_runs_again_later() -> None:
    search = PathMTUSearch(ceiling=1452)
    _run_search(search, lambda size: size <= 1300)
    assert search.size <= 1300 and search.state is PMTUState.SEARCH_COMPLETE
    assert search.probe_size(RAISE_INTERVAL - 1) is None
    # the route changed: the ceiling now gets through
    assert search.probe_size(RAISE_INTERVAL + 1) == 1452
    search.probe_sent(1452)
    search.probe_acked(1452, RAISE_INTERVAL + 1)
    assert search.size == 1452


def test_a_black_hole_falls_back_to_the_base_and_searches_later() -> None:
    search = PathMTUSearch(ceiling=1452)
    _run_search(search, lambda size: True)
    assert search.black_hole(10.0)
    assert search.size == BASE_DATAGRAM_SIZE and search.state is PMTUState.ERROR
    assert not search.black_hole(11.0)  # already at the base
    assert search.probe_size(10.0 + BLACK_HOLE_RETRY - 1) is None
    probed = _run_search(search, lambda size: size <= 1350, now=10.0 + BLACK_HOLE_RETRY)
    assert probed[0] == 1452
    assert 1350 - SEARCH_PRECISION <= search.size <= 1350


def test_a_new_path_starts_over_from_the_base() -> None:
    search = PathMTUSearch(ceiling=1452)
    search.new_path()  # before the handshake: nothing to do
    assert search.state is PMTUState.DISABLED
    _run_search(search, lambda size: True)
    assert search.size == 1452
    search.new_path()
    assert search.size == BASE_DATAGRAM_SIZE and search.state is PMTUState.SEARCHING
    assert search.probe_size(0.0) == 1452


def test_a_late_answer_to_an_abandoned_probe_is_ignored() -> None:
    search = PathMTUSearch(ceiling=9000)
    search.start()
    assert search.probe_size(0.0) == 9000
    search.probe_sent(9000)
    search.black_hole(1.0)  # nothing proved yet: no change, but keep the probe
    search.probe_acked(8000, 1.0)  # not the probe in flight
    assert search.size == BASE_DATAGRAM_SIZE


def test_a_ceiling_at_the_base_never_probes() -> None:
    search = PathMTUSearch(ceiling=1000)
    assert search.ceiling == BASE_DATAGRAM_SIZE
    assert _run_search(search, lambda size: True) == []
    assert search.state is PMTUState.SEARCH_COMPLETE
    with pytest.raises(ValueError):
        PathMTUSearch(ceiling=1452, base=1000)


def test_udp_payload_limits() -> None:
    assert udp_payload_limit(1500, socket.AF_INET) == 1472
    assert udp_payload_limit(1500, socket.AF_INET6) == 1452
    assert udp_payload_limit(1280, socket.AF_INET) == 1252


def test_route_mtu_of_loopback() -> None:
    # Linux loopback has a 64 KiB MTU; elsewhere the platform may not say
    limit = route_mtu("127.0.0.1", 9)
    assert limit is None or limit >= 1472
    assert route_mtu("not an address", 9) is None
    assert route_mtu("relay-abc.invalid", 9) is None  # a name is never resolved
    mapped = route_mtu("::ffff:127.0.0.1", 9)
    assert mapped is None or mapped >= 1472


def test_pmtu_ceiling_follows_the_config() -> None:
    assert pmtu_ceiling(QUICConfig(pmtu_discovery=False), "192.0.2.1", 4433) is None
    # loopback peers use the loopback profile, which needs no discovery
    assert pmtu_ceiling(QUICConfig(), "127.0.0.1", 4433) is None
    loop = pmtu_ceiling(QUICConfig(loopback_datagram_size=None), "127.0.0.1", 4433)
    assert loop is not None and BASE_DATAGRAM_SIZE <= loop <= 1452
    with pytest.raises(ConfigError):
        QUICConfig(pmtu_discovery="yes")  # type: ignore[arg-type]


# -- the engine ----------------------------------------------------------------------


@dataclass
class Path:
    """Both directions between the engines; drops datagrams larger than ``mtu``."""

    mtu: int
    sizes: list[int] = field(default_factory=list)
    """Sizes of the datagrams the path carried."""
    dropped: list[int] = field(default_factory=list)

    def carry(self, data: bytes) -> bool:
        if len(data) > self.mtu:
            self.dropped.append(len(data))
            return False
        self.sizes.append(len(data))
        return True


class Pair:
    def __init__(
        self,
        client_creds: TLSCredentials,
        server_creds: TLSCredentials,
        path: Path,
        ceiling: int = 1452,
        config: QUICConfig = CONFIG,
    ) -> None:
        self.path = path
        self.now = 1.0
        self.client = EngineConnection(
            config=config,
            credentials=client_creds,
            is_client=True,
            reset_key=b"c" * 32,
            handshake_datagram_size=config.max_datagram_size,
            pmtu_ceiling=ceiling,
        )
        self.client.connect(SERVER_ADDR, now=self.now)
        self.server = EngineConnection(
            config=config,
            credentials=server_creds,
            is_client=False,
            reset_key=b"s" * 32,
            original_destination_connection_id=self.client._peer_cid.cid,
            handshake_datagram_size=config.max_datagram_size,
            pmtu_ceiling=ceiling,
        )
        self.received: dict[int, bytearray] = {}
        self.client_addr = CLIENT_ADDR

    def step(self, dt: float = 0.005) -> None:
        """Deliver what each side sends, with ``dt`` of delay each way; fire timers."""
        for sender, receiver, addr in (
            (self.client, self.server, self.client_addr),
            (self.server, self.client, SERVER_ADDR),
        ):
            self.now += dt
            for engine in (self.client, self.server):
                timer = engine.get_timer()
                if timer is not None and timer <= self.now:
                    engine.handle_timer(now=self.now)
            for data, _ in sender.datagrams_to_send(now=self.now):
                if self.path.carry(data):
                    receiver.receive_datagram(data, addr, now=self.now)
            while (event := receiver.next_event()) is not None:
                if isinstance(event, events.StreamDataReceived):
                    self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
                    receiver.data_consumed(event.stream_id, len(event.data))

    def run(self, steps: int, dt: float = 0.005) -> None:
        for _ in range(steps):
            self.step(dt)

    def handshake(self) -> None:
        for _ in range(50):
            self.step()
            if self.client.handshake_confirmed and self.server.handshake_confirmed:
                return
        raise AssertionError("no handshake")


def test_handshake_and_probing_stay_within_a_narrow_path(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """A 1,300-byte path: the handshake fits (1,200-byte datagrams), probes above the
    path are dropped, and both ends settle just below 1,300."""
    pair = Pair(client_creds, server_creds, Path(mtu=1300))
    assert pair.client.datagram_size == BASE_DATAGRAM_SIZE
    pair.handshake()
    assert max(pair.path.sizes) <= BASE_DATAGRAM_SIZE
    assert all(size == 1452 for size in pair.path.dropped)  # at most the first probe
    pair.run(400)
    for engine in (pair.client, pair.server):
        assert 1300 - SEARCH_PRECISION <= engine.datagram_size <= 1300
        stats = engine.stats()
        assert stats["datagram_size"] == engine.datagram_size
        assert stats["pmtu_probes_lost"] >= MAX_PROBES  # the 1,452 probes
        assert stats["packets_lost"] == 0  # probe losses are not losses
    assert pair.path.dropped and min(pair.path.dropped) > 1300


def test_probe_losses_do_not_shrink_the_congestion_window(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    pair = Pair(client_creds, server_creds, Path(mtu=1250))
    pair.handshake()
    cwnd = pair.client.stats()["cwnd"]
    pair.run(400)
    assert pair.client.stats()["pmtu_probes_lost"] >= MAX_PROBES
    assert pair.client.stats()["cwnd"] >= cwnd
    assert pair.client.stats()["bytes_in_flight"] == 0


def test_data_after_discovery_uses_the_discovered_size(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    jumbo = QUICConfig(idle_timeout=60.0, keepalive_interval=None, max_datagram_size=8952)
    pair = Pair(client_creds, server_creds, Path(mtu=9000), ceiling=9000, config=jumbo)
    pair.handshake()
    pair.run(40)
    assert pair.client.datagram_size == 8952
    sid = pair.client.get_next_available_stream_id()
    payload = random.Random(1).randbytes(400_000)
    pair.client.send_stream_data(sid, payload, end_stream=True)
    pair.path.sizes.clear()
    pair.run(200)
    assert bytes(pair.received[sid]) == payload
    assert max(pair.path.sizes) == 8952
    assert not pair.path.dropped


def test_a_path_that_shrinks_falls_back_and_recovers(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """The path stops carrying 1,452 (a route change into a tunnel) in the middle of a
    transfer: the sender falls back to 1,200 bytes, the data arrives, and a later
    search finds the new size."""
    path = Path(mtu=1500)
    long_idle = QUICConfig(idle_timeout=600.0, keepalive_interval=None)
    pair = Pair(client_creds, server_creds, path, config=long_idle)
    pair.handshake()
    pair.run(40)
    assert pair.client.datagram_size == 1452
    sid = pair.client.get_next_available_stream_id()
    payload = random.Random(2).randbytes(300_000)
    pair.client.send_stream_data(sid, payload, end_stream=True)
    pair.run(3)
    path.mtu = 1350
    pair.run(2000, dt=0.01)
    assert bytes(pair.received.get(sid, b"")) == payload
    assert pair.client.datagram_size == BASE_DATAGRAM_SIZE
    assert pair.client._pmtu is not None and pair.client._pmtu.state is PMTUState.ERROR
    # after BLACK_HOLE_RETRY, the next flush searches again
    pair.run(int(BLACK_HOLE_RETRY) // 2 + 2, dt=1.0)
    pair.client.send_ping(1)
    pair.run(200)
    assert 1350 - SEARCH_PRECISION <= pair.client.datagram_size <= 1350


def test_a_peer_at_a_new_address_gets_a_new_search(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """The client moves to another IP address (migration): the server drops back to
    the base size for it and probes the new path; a port change alone keeps the size."""
    pair = Pair(client_creds, server_creds, Path(mtu=1500))
    pair.handshake()
    pair.run(20)
    assert pair.server.datagram_size == 1452
    pair.client_addr = (CLIENT_ADDR[0], CLIENT_ADDR[1] + 1)  # NAT rebinding
    pair.client.send_ping(1)
    pair.run(20)
    assert pair.server._network_paths[0].addr == pair.client_addr
    assert pair.server._pmtu is not None and pair.server._pmtu.probes_sent == 1
    pair.path.mtu = 1300
    pair.client_addr = ("198.51.100.3", CLIENT_ADDR[1])  # another network
    pair.client.send_ping(2)
    pair.run(5)
    assert pair.server._network_paths[0].addr == pair.client_addr
    assert pair.server.datagram_size <= 1300
    pair.run(400)
    assert 1300 - SEARCH_PRECISION <= pair.server.datagram_size <= 1300


@pytest.mark.parametrize("controller", ["bbr", "cubic", "reno"])
def test_the_controller_and_pacer_follow_the_datagram_size(
    client_creds: TLSCredentials, server_creds: TLSCredentials, controller: str
) -> None:
    """A 9,000-byte ceiling over a path carrying 1,400: the initial window is ten
    1,200-byte datagrams, and afterwards the controller and the pacer count packets of
    the size actually sent (charging 9,000 bytes per packet would pace at a sixth of
    the rate)."""
    config = QUICConfig(
        idle_timeout=60.0,
        keepalive_interval=None,
        max_datagram_size=9000,
        congestion_control=controller,  # type: ignore[arg-type]
    )
    pair = Pair(client_creds, server_creds, Path(mtu=1400), ceiling=9000, config=config)
    loss = pair.client._loss
    assert loss.congestion_window == 10 * BASE_DATAGRAM_SIZE
    pair.handshake()
    pair.run(400)
    size = pair.client.datagram_size
    assert 1400 - SEARCH_PRECISION <= size <= 1400
    assert loss._pacer._max_datagram_size == size
    cc = loss._cc
    assert getattr(cc, "_mds", getattr(cc, "_max_datagram_size", None)) == size


def test_no_discovery_without_a_ceiling(
    client_creds: TLSCredentials, server_creds: TLSCredentials
) -> None:
    """Engines built without ``pmtu_ceiling`` (discovery off, the loopback profile) use
    the configured size and never probe."""
    client = EngineConnection(
        config=CONFIG, credentials=client_creds, is_client=True, reset_key=b"c" * 32
    )
    assert client.datagram_size == CONFIG.max_datagram_size
    assert client.stats()["pmtu_probes_lost"] == 0


# -- over real sockets ---------------------------------------------------------------


async def test_datagram_room_follows_the_discovered_size(
    make_socket: SocketFactory, server_creds: TLSCredentials, client_creds: TLSCredentials
) -> None:
    """Loopback without the loopback profile: discovery proves 1,452 bytes (the
    ceiling), and unreliable datagrams may then use it."""
    config = QUICConfig(loopback_datagram_size=None, datagrams=True)
    assert config.guaranteed_datagram_size == BASE_DATAGRAM_SIZE
    assert QUICConfig(pmtu_discovery=False).guaranteed_datagram_size == 1452
    ssock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler)
    await server.start()
    conn = await connect(await make_socket(), *ssock.local_address, client_creds, config)
    await wait_for_condition(lambda: conn.stats()["datagram_size"] == 1452)
    assert conn.max_datagram_payload == 1452 - 64
    conn.send_datagram(b"d" * conn.max_datagram_payload)
    with pytest.raises(DatagramError, match="at most 1388"):
        conn.send_datagram(b"d" * 1400)
    assert await request(conn, b"still fine") == b"still fine"
    assert conn.stats()["pmtu_probes_lost"] == 0
    await conn.aclose()
    await server.stop()
