"""The model-based congestion controller ("bbr"), driven without I/O.

Most tests run aioquic's real loss recovery (``QuicPacketRecovery``: ACK processing,
loss detection, probe timeouts) with this controller against a simulated path — a
bottleneck of fixed rate with a tail-drop queue, a propagation delay and seeded random
loss — on a simulated clock. The last tests move real data over loopback QUIC.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace
from aioquic.tls import Epoch
from hypothesis import given, settings
from hypothesis import strategies as st

from quic_rpc.quic import QUICConfig, QUICServer, QUICStream, connect
from quic_rpc.quic.congestion import (
    MAX_TRACKED_PACKETS,
    MIN_WINDOW_PACKETS,
    BBRCongestionControl,
    BBRMode,
    ModelPacer,
    install_pacer,
)
from quic_rpc.streams import ByteStream

from .helpers import chunk, hash_reader, read_all

MDS = 1200
MBIT = 1e6 / 8
"""Bytes per second in one Mbit/s."""
MIN_CWND = MIN_WINDOW_PACKETS * MDS


def _packet(
    number: int, sent_time: float, size: int = MDS, epoch: Epoch = Epoch.ONE_RTT
) -> QuicSentPacket:
    return QuicSentPacket(
        epoch=epoch,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=sent_time,
        sent_bytes=size,
    )


@dataclass
class Path:
    """One direction of a path: random loss, then a rate-limited tail-drop queue, then a
    fixed delay. ACKs come back after the same delay and are never lost."""

    rate_mbit: float
    rtt: float
    loss: float = 0.0
    queue_bdp: float = 1.0
    seed: int = 1
    blackout: tuple[float, float] | None = None
    """(start, end): every packet sent in between is lost."""
    longer_after: tuple[float, float] | None = None
    """(time, seconds): from ``time`` on the one-way delay is this much longer."""
    rng: random.Random = field(init=False)
    busy_until: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def rate(self) -> float:
        return self.rate_mbit * MBIT

    @property
    def bdp(self) -> float:
        return self.rate * self.rtt

    def arrival(self, now: float, size: int) -> float | None:
        """When a packet sent ``now`` reaches the receiver; None if it is dropped."""
        if self.blackout is not None and self.blackout[0] <= now < self.blackout[1]:
            return None
        if self.loss and self.rng.random() < self.loss:
            return None
        start = max(now, self.busy_until)
        if (start - now) * self.rate > max(self.queue_bdp * self.bdp, 4 * MDS):
            return None  # tail drop
        self.busy_until = start + size / self.rate
        delay = self.rtt / 2
        if self.longer_after is not None and now >= self.longer_after[0]:
            delay += self.longer_after[1]
        return self.busy_until + delay


class Sim:
    """A sender driven by aioquic's loss recovery across a :class:`Path`, on a fake clock.

    ``app_rate`` (bytes/s) limits what the application offers; ``None`` is a bulk
    sender that always has data. ``hook`` installs :class:`ModelPacer`; without it the
    controller runs under aioquic's own pacer (or none, with ``paced=False``).
    """

    def __init__(
        self,
        path: Path,
        cc: str = "bbr",
        *,
        paced: bool = True,
        hook: bool = True,
        ack_every: int = 1,
    ) -> None:
        self.path = path
        self.probes = 0
        recovery = self.recovery = QuicPacketRecovery(
            congestion_control_algorithm=cc,
            initial_rtt=0.1,
            max_datagram_size=MDS,
            peer_completed_address_validation=True,
            send_probe=self._probe,
        )
        recovery.handshake_confirmed = True
        self.space = QuicPacketSpace(is_application_data=True)
        recovery.spaces = [self.space]
        self.cc = recovery._cc
        if isinstance(self.cc, BBRCongestionControl):
            self.cc._rng = random.Random(7)
        if cc == "bbr" and hook:
            assert install_pacer(recovery, paced=paced)
        elif not paced:
            recovery._pacer.next_send_time = lambda now: None  # type: ignore[method-assign]
        self.now = 0.0
        self.next_pn = 0
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.received = RangeSet()
        self.unacked_arrivals = 0
        self.ack_every = ack_every
        self.delivered_bytes = 0
        self.app_rate: float | None = None
        self.app_credit = 0.0
        self.modes: list[BBRMode] = []
        self.min_cwnd_seen = math.inf

    def _probe(self) -> None:
        self.probes += 1

    def _on_delivery(self, state: QuicDeliveryState, size: int) -> None:
        if state == QuicDeliveryState.ACKED:
            self.delivered_bytes += size

    def _push(self, when: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, kind, payload))

    def _send(self) -> float | None:
        """Send what window, pacing and the application allow; the next pacing time."""
        recovery = self.recovery
        while True:
            probe = self.probes > 0
            if not probe:
                if recovery.congestion_window - recovery.bytes_in_flight < MDS:
                    return None
                wait = recovery._pacer.next_send_time(self.now)
                if wait is not None:
                    return float(wait)
                if self.app_rate is not None and self.app_credit < MDS:
                    return None
            else:
                self.probes -= 1
            packet = _packet(self.next_pn, self.now)
            packet.delivery_handlers.append((self._on_delivery, (MDS,)))
            self.next_pn += 1
            if self.app_rate is not None:
                self.app_credit = max(0.0, self.app_credit - MDS)
            recovery._pacer.update_after_send(self.now)
            recovery.on_packet_sent(packet=packet, space=self.space)
            arrival = self.path.arrival(self.now, MDS)
            if arrival is not None:
                self._push(arrival, "arrive", packet.packet_number)

    def _arrive(self, pn: int) -> None:
        self.received.add(pn)
        while len(self.received) > 32:  # a receiver reports a bounded number of ranges
            self.received.shift()
        self.unacked_arrivals += 1
        if self.unacked_arrivals >= self.ack_every:
            self.unacked_arrivals = 0
            ranges = RangeSet()
            for r in self.received:
                ranges.add(r.start, r.stop)
            self._push(self.now + self.path.rtt / 2, "ack", ranges)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            pacing_at = self._send()
            candidates = [end]
            if self.events:
                candidates.append(self.events[0][0])
            if pacing_at is not None:
                candidates.append(pacing_at)
            loss_at = self.recovery.get_loss_detection_time(amplification_limited=False)
            if loss_at is not None:
                # (aioquic can leave a loss time a rounding error in the past)
                candidates.append(max(loss_at, self.now + 1e-9))
            if self.app_rate is not None and self.app_credit < MDS:
                candidates.append(self.now + max((MDS - self.app_credit) / self.app_rate, 1e-6))
            step_to = max(self.now, min(candidates))
            if self.app_rate is not None:
                self.app_credit = min(
                    self.app_credit + (step_to - self.now) * self.app_rate, 16.0 * MDS
                )
            self.now = step_to
            while self.events and self.events[0][0] <= self.now:
                _, _, kind, payload = heapq.heappop(self.events)
                if kind == "arrive":
                    self._arrive(payload)
                else:
                    self.recovery.on_ack_received(
                        ack_rangeset=payload, ack_delay=0.0, now=self.now, space=self.space
                    )
            loss_at = self.recovery.get_loss_detection_time(amplification_limited=False)
            if loss_at is not None and loss_at <= self.now:
                self.recovery.on_loss_detection_timeout(now=self.now)
            self._observe()

    def _observe(self) -> None:
        cc = self.cc
        self.min_cwnd_seen = min(self.min_cwnd_seen, cc.congestion_window)
        if isinstance(cc, BBRCongestionControl) and (not self.modes or self.modes[-1] != cc.mode):
            self.modes.append(cc.mode)

    def goodput(self, seconds: float) -> float:
        """Bytes per second delivered over the next ``seconds`` of simulated time."""
        before = self.delivered_bytes
        self.run(seconds)
        return (self.delivered_bytes - before) / seconds

    def check_bookkeeping(self) -> None:
        cc = self.cc
        outstanding = [p for p in self.space.sent_packets.values() if p.in_flight]
        assert cc.bytes_in_flight == sum(p.sent_bytes for p in outstanding)
        if isinstance(cc, BBRCongestionControl):
            assert cc.tracked_packets == len(outstanding)


def _bbr(sim: Sim) -> BBRCongestionControl:
    assert isinstance(sim.cc, BBRCongestionControl)
    return sim.cc


# -- the model ---------------------------------------------------------------------------


def test_registered_and_installed() -> None:
    sim = Sim(Path(rate_mbit=10, rtt=0.04))
    assert isinstance(sim.cc, BBRCongestionControl)
    assert isinstance(sim.recovery._pacer, ModelPacer)
    reno = QuicPacketRecovery(
        congestion_control_algorithm="reno",
        initial_rtt=0.1,
        max_datagram_size=MDS,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    assert install_pacer(reno) is False
    assert not isinstance(reno._pacer, ModelPacer)


def test_startup_grows_exponentially() -> None:
    path = Path(rate_mbit=200, rtt=0.05)  # BDP ~1 MB: startup lasts many rounds
    sim = Sim(path)
    cc = _bbr(sim)
    assert cc.congestion_window == 10 * MDS  # the initial window
    delivered_per_round = []
    for _ in range(6):
        before = sim.delivered_bytes
        sim.run(path.rtt)
        delivered_per_round.append(sim.delivered_bytes - before)
    assert cc.mode is BBRMode.STARTUP
    # after the first round trip, every round delivers at least ~1.7x the one before
    for earlier, later in itertools.pairwise(delivered_per_round[1:]):
        assert later >= 1.7 * earlier, delivered_per_round
    assert cc.congestion_window > 20 * 10 * MDS


def test_bandwidth_estimate_converges_to_bottleneck() -> None:
    path = Path(rate_mbit=10, rtt=0.04)
    sim = Sim(path)
    sim.run(3.0)
    cc = _bbr(sim)
    assert cc.filled_pipe
    assert BBRMode.DRAIN in sim.modes and cc.mode is BBRMode.PROBE_BW
    assert 0.9 * path.rate <= cc.max_bw <= 1.1 * path.rate
    assert path.rtt <= cc.min_rtt <= path.rtt * 1.1
    assert 0.7 * path.rate <= cc.pacing_rate <= 1.3 * path.rate
    assert cc.congestion_window >= path.bdp
    assert sim.goodput(2.0) >= 0.9 * path.rate
    sim.check_bookkeeping()


def test_random_loss_does_not_collapse_rate_while_reno_does() -> None:
    def run(cc: str) -> tuple[Sim, float]:
        sim = Sim(Path(rate_mbit=10, rtt=0.04, loss=0.01, seed=3), cc)
        sim.run(3.0)
        return sim, sim.goodput(4.0)

    bbr, bbr_goodput = run("bbr")
    _, reno_goodput = run("reno")
    rate = bbr.path.rate
    cc = _bbr(bbr)
    assert bbr_goodput >= 0.85 * rate
    assert cc.max_bw >= 0.85 * rate
    assert cc.pacing_rate >= 0.6 * rate
    assert cc.congestion_window >= bbr.path.bdp
    assert reno_goodput < 0.6 * rate  # loss-based: bounded by ~1.22 MSS / (RTT sqrt(p))
    assert bbr_goodput > 1.5 * reno_goodput
    bbr.check_bookkeeping()


def test_heavy_loss_lowers_the_ceiling_but_not_below_the_bdp() -> None:
    # A shallow queue: STARTUP's overshoot loses far more than random loss would.
    path = Path(rate_mbit=10, rtt=0.04, queue_bdp=0.1)
    sim = Sim(path)
    sim.run(3.0)
    cc = _bbr(sim)
    assert cc.rounds_too_lossy >= 1
    assert cc.filled_pipe and cc.mode is BBRMode.PROBE_BW
    assert sim.goodput(3.0) >= 0.85 * path.rate
    if cc.inflight_hi is not None:
        assert cc.inflight_hi >= cc.bdp()


def test_app_limited_samples_do_not_lower_the_estimate() -> None:
    path = Path(rate_mbit=10, rtt=0.04)

    def run(hook: bool) -> float:
        sim = Sim(Path(rate_mbit=10, rtt=0.04), hook=hook)
        sim.run(3.0)
        assert _bbr(sim).max_bw >= 0.9 * path.rate
        sim.app_rate = 0.1 * path.rate  # 30 s later the application sends 1/10 as much
        sim.run(3.0)  # ~75 round trips, far longer than the bandwidth window
        sim.check_bookkeeping()
        return _bbr(sim).max_bw

    assert run(hook=True) >= 0.9 * path.rate
    # Without the pacer hook nothing reports application-limited periods: the estimate
    # follows the application's rate down. (This is why the engine installs the hook.)
    assert run(hook=False) < 0.5 * path.rate


def test_small_calls_then_bulk_find_the_path_rate_quickly() -> None:
    """A connection that first carries only small calls (every packet it sends is all
    the application has) and then a bulk transfer: the small calls' samples must not end
    STARTUP at a fraction of the path, so the transfer gets the path's rate at once."""
    path = Path(rate_mbit=50, rtt=0.04, loss=0.01, seed=5)
    sim = Sim(path)
    sim.app_rate = 0.01 * path.rate
    sim.run(4.0)
    cc = _bbr(sim)
    assert not cc.filled_pipe or cc.max_bw >= 0.8 * path.rate
    sim.app_rate = None
    sim.run(1.0)  # 25 round trips
    assert cc.max_bw >= 0.8 * path.rate
    assert sim.goodput(1.0) >= 0.8 * path.rate
    sim.check_bookkeeping()


def test_a_probe_that_finds_much_more_room_restarts_startup() -> None:
    """Without the pacer hook nothing reports the quiet period, so the model settles at
    the application's small rate; when a bulk transfer follows, a probe that raises the
    estimate by 15 % or more sends it back to STARTUP rather than gaining 25 % a cycle."""
    path = Path(rate_mbit=50, rtt=0.04, loss=0.01, seed=5)
    sim = Sim(path, hook=False)
    sim.app_rate = 0.01 * path.rate
    sim.run(4.0)
    cc = _bbr(sim)
    assert cc.filled_pipe and cc.max_bw < 0.2 * path.rate
    sim.app_rate = None
    sim.run(1.5)  # about 37 round trips; 25 % per 8-round cycle would reach ~0.05x
    assert cc.startup_restarts >= 1
    assert cc.max_bw >= 0.8 * path.rate
    sim.check_bookkeeping()


def test_probe_rtt_after_ten_seconds_without_a_lower_rtt() -> None:
    # The path gets 5 ms longer after 1 s, so the minimum RTT seen first is never seen
    # again and expires after 10 s: PROBE_RTT drains to the minimum window, re-measures.
    path = Path(rate_mbit=5, rtt=0.04, longer_after=(1.0, 0.005))
    sim = Sim(path)
    cwnd_in_probe_rtt = []
    sim.run(9.5)
    cc = _bbr(sim)
    assert cc.min_rtt < 0.045
    assert BBRMode.PROBE_RTT not in sim.modes
    for _ in range(200):
        sim.run(0.01)
        if cc.mode is BBRMode.PROBE_RTT:
            cwnd_in_probe_rtt.append(cc.congestion_window)
    assert BBRMode.PROBE_RTT in sim.modes
    assert min(cwnd_in_probe_rtt) == MIN_CWND
    assert cc.mode is BBRMode.PROBE_BW
    assert cc.min_rtt >= 0.045  # the new, longer path
    assert sim.goodput(2.0) >= 0.85 * path.rate


def test_persistent_congestion_restarts_from_the_minimum_window() -> None:
    path = Path(rate_mbit=10, rtt=0.04)
    sim = Sim(path)
    cc = _bbr(sim)
    sim.run(3.0)
    cc.on_persistent_congestion()  # as aioquic reports it, after its losses
    assert cc.congestion_window == MIN_CWND
    sim.run(0.5)  # grows back by what is delivered, doubling per round trip
    assert cc.congestion_window >= path.bdp
    assert sim.goodput(2.0) >= 0.85 * path.rate
    sim.check_bookkeeping()


def test_recovers_from_a_blackout() -> None:
    # 1.5 s where every packet is lost: probe timeouts, then a burst of losses
    path = Path(rate_mbit=10, rtt=0.04, blackout=(3.0, 4.5))
    sim = Sim(path)
    sim.run(2.5)
    assert sim.goodput(0.5) > 0.8 * path.rate
    sim.run(3.0)
    assert sim.goodput(2.0) >= 0.85 * path.rate
    assert sim.min_cwnd_seen >= MIN_CWND
    sim.check_bookkeeping()


def test_packets_expired_on_key_discard_leave_no_trace() -> None:
    recovery = QuicPacketRecovery(
        congestion_control_algorithm="bbr",
        initial_rtt=0.1,
        max_datagram_size=MDS,
        peer_completed_address_validation=True,
        send_probe=lambda: None,
    )
    install_pacer(recovery)
    initial = QuicPacketSpace()
    handshake = QuicPacketSpace()
    application = QuicPacketSpace(is_application_data=True)
    recovery.spaces = [initial, handshake, application]
    cc = recovery._cc
    assert isinstance(cc, BBRCongestionControl)
    # the same packet numbers in every space: they must not collide in the side table
    for space, epoch in ((initial, Epoch.INITIAL), (handshake, Epoch.HANDSHAKE)):
        for pn in range(3):
            recovery.on_packet_sent(packet=_packet(pn, 0.0, epoch=epoch), space=space)
    for pn in range(3):
        recovery.on_packet_sent(packet=_packet(pn, 0.0), space=application)
    assert cc.tracked_packets == 9
    assert cc.bytes_in_flight == 9 * MDS
    recovery.discard_space(initial)
    recovery.discard_space(handshake)
    assert cc.tracked_packets == 3
    assert cc.bytes_in_flight == 3 * MDS
    ranges = RangeSet()
    ranges.add(0, 3)
    recovery.on_ack_received(ack_rangeset=ranges, ack_delay=0.0, now=0.05, space=application)
    assert cc.tracked_packets == 0
    assert cc.bytes_in_flight == 0
    assert cc.delivered == 3 * MDS
    assert cc.congestion_window >= MIN_CWND


def test_side_table_stays_bounded() -> None:
    sim = Sim(Path(rate_mbit=20, rtt=0.02, loss=0.05, seed=5))
    for _ in range(20):
        sim.run(0.25)
        sim.check_bookkeeping()  # only packets still in flight are tracked
    cc = _bbr(sim)
    assert cc.tracked_packets <= cc.congestion_window // MDS + 10
    # A caller that never reports acks or losses cannot make it grow past its cap.
    lone = BBRCongestionControl(max_datagram_size=MDS)
    for pn in range(MAX_TRACKED_PACKETS + 100):
        lone.on_packet_sent(packet=_packet(pn, pn * 1e-6))
    assert lone.tracked_packets == MAX_TRACKED_PACKETS


@pytest.mark.parametrize("hook", [True, False])
def test_tiny_rtt_unpaced_loopback(hook: bool) -> None:
    # Loopback: 60 µs, no pacing, ACKs every other packet. The window must keep the
    # path busy although its BDP is under one packet.
    path = Path(rate_mbit=200, rtt=0.00006, queue_bdp=2000)
    sim = Sim(path, paced=False, hook=hook, ack_every=2)
    sim.run(0.3)
    cc = _bbr(sim)
    assert cc.congestion_window >= MIN_CWND
    assert math.isfinite(cc.pacing_rate) and cc.pacing_rate > 0
    assert cc.min_rtt >= 0.00006
    assert sim.goodput(0.3) >= 0.8 * path.rate
    sim.check_bookkeeping()


def test_paced_at_the_model_rate() -> None:
    path = Path(rate_mbit=10, rtt=0.04)
    sim = Sim(path)
    sim.run(3.0)
    cc = _bbr(sim)
    pacer = sim.recovery._pacer
    assert isinstance(pacer, ModelPacer)
    # With an empty bucket the next packet waits exactly as long as the rate says.
    now = sim.now + 1.0
    assert pacer.next_send_time(now) is None  # the bucket refilled while idle
    while (wait := pacer.next_send_time(now)) is None:
        pacer.update_after_send(now)
    assert wait > now
    assert wait - now == pytest.approx((MDS - pacer._credit) / cc.pacing_rate)
    # aioquic's cwnd/srtt rate updates do not override the model
    rate = cc.pacing_rate
    pacer.update_rate(congestion_window=10 * MDS, smoothed_rtt=10.0)
    assert pacer.next_send_time(now) == wait
    assert cc.pacing_rate == rate


# -- arbitrary event sequences -----------------------------------------------------------

_events = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 40), st.sampled_from([100, 1200, 1452])),
        st.tuples(st.just("ack"), st.integers(0, 40), st.integers(1, 40)),
        st.tuples(st.just("lose"), st.integers(0, 40), st.integers(1, 10)),
        st.tuples(st.just("expire"), st.integers(0, 40), st.integers(1, 10)),
        st.tuples(st.just("rtt"), st.floats(1e-7, 20.0), st.just(0)),
        st.tuples(st.just("wait"), st.floats(0.0, 15.0), st.just(0)),
        st.tuples(st.just("persistent"), st.just(0), st.just(0)),
        st.tuples(st.just("pace"), st.integers(0, 5), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(events=_events, paced=st.booleans())
def test_arbitrary_event_sequences(events: list[tuple[str, Any, Any]], paced: bool) -> None:
    cc = BBRCongestionControl(max_datagram_size=MDS, rng=random.Random(1))
    pacer = ModelPacer(cc, paced=paced)
    now = 1000.0
    outstanding: dict[int, QuicSentPacket] = {}
    next_pn = 0
    for kind, a, b in events:
        if kind == "send":
            for _ in range(a):
                pacer.next_send_time(now)
                pacer.update_after_send(now)
                packet = _packet(next_pn, now, size=b)
                next_pn += 1
                outstanding[packet.packet_number] = packet
                cc.on_packet_sent(packet=packet)
                now += 1e-5
        elif kind in ("ack", "lose", "expire"):
            chosen = sorted(outstanding)[a : a + b]
            packets = [outstanding.pop(pn) for pn in chosen]
            if kind == "ack":
                for packet in packets:
                    cc.on_packet_acked(now=now, packet=packet)
            elif kind == "lose":
                cc.on_packets_lost(now=now, packets=packets)
            else:
                cc.on_packets_expired(packets=packets)
        elif kind == "rtt":
            cc.on_rtt_measurement(now=now, rtt=a)
        elif kind == "wait":
            now += a
        elif kind == "persistent":
            cc.on_persistent_congestion()
        else:
            for _ in range(a):
                when = pacer.next_send_time(now)
                assert when is None or (math.isfinite(when) and when > now)
        assert cc.congestion_window >= MIN_CWND
        assert cc.bytes_in_flight == sum(p.sent_bytes for p in outstanding.values())
        assert cc.tracked_packets == len(outstanding)
        assert cc.pacing_rate >= 0 and math.isfinite(cc.pacing_rate)
        assert cc.max_bw >= 0 and math.isfinite(cc.max_bw)
        assert len(cc._bw_rounds) <= 11
        assert isinstance(cc.get_log_data()["cwnd"], int)


# -- over real QUIC ----------------------------------------------------------------------

MiB = 1024 * 1024


@pytest.mark.parametrize(
    "loopback_datagram_size",
    [65000, None],  # the loopback profile (no pacing), and 1,452 bytes with pacing
    ids=["loopback-profile", "paced-1452"],
)
async def test_transfer_with_bbr_is_intact(
    make_socket, server_creds, client_creds, loopback_datagram_size: int | None
) -> None:
    config = QUICConfig(congestion_control="bbr", loopback_datagram_size=loopback_datagram_size)
    result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def handler(stream: ByteStream) -> None:
        result.set_result(await hash_reader(stream))
        await stream.send(b"ok")
        await stream.send_eof()

    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, server_creds, config, handler)
    await server.start()
    host, port = ssock.local_address
    conn = await connect(csock, host, port, client_creds, config)
    try:
        engine = conn._engine  # type: ignore[attr-defined]
        assert isinstance(engine._loss._cc, BBRCongestionControl)
        assert isinstance(engine._loss._pacer, ModelPacer)
        stream = await conn.open_stream()
        assert isinstance(stream, QUICStream)
        block = os.urandom(MiB)
        digest = hashlib.sha256()
        size = 16 if loopback_datagram_size else 8
        for index in range(size):
            data = chunk(index, MiB, block)
            digest.update(data)
            await stream.send(data)
        await stream.send_eof()
        total, received = await asyncio.wait_for(result, 60)
        assert total == size * MiB
        assert received == digest.digest()
        assert await read_all(stream) == b"ok"
        cc = engine._loss._cc
        assert cc.max_bw > 0 and cc.congestion_window >= MIN_WINDOW_PACKETS * 1200
        assert cc.tracked_packets <= sum(len(s.sent_packets) for s in engine._loss.spaces)
    finally:
        await conn.aclose()
        await server.stop()
