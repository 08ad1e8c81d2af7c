"""A model-based congestion controller for aioquic, registered as ``"bbr"``.

Loss-based controllers (Reno, CUBIC) read every lost packet as congestion, so on a path
with random loss their window stays near ``1.22 * MSS / (RTT * sqrt(p))`` whatever the
path's capacity. This controller instead builds a model of the path from what is
delivered — in the style of BBR:

* **bottleneck bandwidth** — a windowed maximum (over the last ``BW_WINDOW_ROUNDS``
  round trips) of delivery-rate samples, one per acknowledged packet. Samples taken
  while the sender was application-limited never lower the estimate.
* **round-trip propagation time** — a windowed minimum of RTT samples (10 s).
* **pacing** at ``gain * bandwidth``, with a gain cycle in PROBE_BW that probes for
  more (1.25), drains what the probe queued (0.75) and cruises (1.0);
* **congestion window** ``≈ 2 * BDP`` plus an allowance for ACK aggregation, so that the
  window bounds what is in flight while the pacer sets the rate.

States: STARTUP (doubles the rate each round until the bandwidth stops growing or a
round loses too much), DRAIN (empties the queue STARTUP built), PROBE_BW (steady state)
and PROBE_RTT (every 10 s without a new minimum RTT the window shrinks to
``MIN_WINDOW_PACKETS`` for at least 200 ms and a round trip, to re-measure it).

Random loss does not change the rate. A round that loses more than ``LOSS_THRESHOLD`` of
its packets (and at least ``LOSS_MIN_PACKETS``) ends STARTUP and lowers a ceiling on the
data in flight (``inflight_hi``, never below ``LOSS_FLOOR_GAIN`` times the BDP); rounds
of probing without heavy loss raise the ceiling again until it no longer binds.

Per-packet delivery state lives in a side table keyed by packet number space and
number; acknowledged, lost and expired packets leave it, and it is capped.

aioquic's own pacer derives its rate from ``cwnd / srtt``. :func:`install_pacer` puts a
:class:`ModelPacer` on a connection's loss recovery instead, which paces at this
controller's rate and tells it when the sender runs out of data (application-limited).
Without that hook the controller still works — paced by aioquic at ``cwnd / srtt``, and
without application-limited detection.

Sans-IO: every method takes the time it is called at; nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery
from aioquic.tls import Epoch

__all__ = [
    "BBR_NAME",
    "BBRCongestionControl",
    "BBRMode",
    "ModelPacer",
    "install_pacer",
    "set_datagram_size",
]

BBR_NAME = "bbr"

STARTUP_GAIN = 2.0 / math.log(2.0)
"""Pacing and window gain in STARTUP: doubles the delivery rate every round trip."""
DRAIN_GAIN = 1.0 / STARTUP_GAIN
DRAIN_MAX_ROUNDS = 3
CWND_GAIN = 2.0
"""Window gain in PROBE_BW: room for the data in flight and delayed/aggregated ACKs."""
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
PACING_MARGIN = 0.99
"""Pace slightly below the estimate so that a standing queue drains."""
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
PROBE_RTT_DURATION = 0.2
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
MIN_WINDOW_PACKETS = 4
LOSS_THRESHOLD = 0.03
"""A round losing more than this fraction of its packets is congestion, not noise."""
LOSS_MIN_PACKETS = 6
"""…and it must lose at least this many packets (small rounds are noisy)."""
LOSS_CEILING_BETA = 0.7
LOSS_FLOOR_GAIN = 1.25
"""The in-flight ceiling never drops below this many BDPs: the pacer sets the rate."""
CEILING_GROWTH = 1.25
PROBE_ROOM_GROWTH = 1.15
"""A probe that raises the estimate this much means the model is far off: STARTUP again."""
ACK_AGGREGATION_ROUNDS = 5
SEND_QUANTUM_TIME = 0.001
"""The pacer releases bursts of up to this much time at the pacing rate…"""
MAX_SEND_QUANTUM = 64 * 1024
PACER_BURST_TIME = 0.010
"""…and lets credit build up for this long (the event loop's timers fire late)."""
_SHRINK_AT = 32
"""Once the side table held this many packets, it is replaced by a new dict when empty."""
MAX_TRACKED_PACKETS = 1 << 16
"""Side-table cap: far above any window, only a caller that loses track reaches it."""
_MIN_RTT_SAMPLE = 1e-6
_REFRESH_STEP = 1.002
"""Rate, BDP and target follow a growing estimate in steps of 0.2 % (and at once when
the estimate falls, or at every new round)."""


_SHARED_RNG = random.Random()
"""Picks where a PROBE_BW gain cycle starts (not security-relevant)."""


class BBRMode(enum.Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


# per-packet record: delivered, delivered_time, first_sent_time, app_limited, tx_in_flight
_Record = tuple[int, float, float, bool, int]


class BBRCongestionControl(QuicCongestionControl):
    """Model-based congestion control (see the module docstring)."""

    __slots__ = (
        "_agg_epoch_acked",
        "_agg_epoch_start",
        "_agg_index",
        "_agg_max",
        "_agg_rounds",
        "_app_limited_until",
        "_bdp",
        "_bw_rounds",
        "_cycle_deadline",
        "_cycle_index",
        "_cycle_lost",
        "_cycle_stamp",
        "_delivered_time",
        "_drain_start_round",
        "_first_sent_time",
        "_full_bw",
        "_full_bw_count",
        "_initial_cwnd",
        "_last_sample_app_limited",
        "_lossy_since_probe",
        "_mds",
        "_min_cwnd",
        "_min_rtt_stamp",
        "_next_round_delivered",
        "_pacer",
        "_pacing_rate",
        "_packets",
        "_prior_cwnd",
        "_probe_rtt_done_at",
        "_probe_rtt_round_done",
        "_probe_start_bw",
        "_refreshed_bw",
        "_rng",
        "_round_acked_packets",
        "_round_loss_handled",
        "_round_lost_packets",
        "_round_max_bw",
        "_round_start",
        "_sample_min_interval",
        "_table_grown",
        "_target",
        "cwnd_gain",
        "delivered",
        "filled_pipe",
        "inflight_hi",
        "max_bw",
        "min_rtt",
        "mode",
        "pacing_gain",
        "round_count",
        "rounds_too_lossy",
        "startup_restarts",
    )

    def __init__(self, *, max_datagram_size: int, rng: random.Random | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self._min_cwnd = MIN_WINDOW_PACKETS * max_datagram_size
        self._initial_cwnd = K_INITIAL_WINDOW * max_datagram_size
        self._rng = rng if rng is not None else _SHARED_RNG  # one per connection: ~3 KiB
        self.mode = BBRMode.STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN

        # delivery-rate estimation
        self._packets: dict[int, _Record] = {}
        self._table_grown = False
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0
        """Delivered count at which the current application-limited period ends; 0 = none."""

        # round trips, counted in delivered data
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_start = False

        # bandwidth filter: (round, max sample in that round), newest last
        self._bw_rounds: list[tuple[int, float]] = []
        self.max_bw = 0.0
        """Bytes per second."""

        # min RTT filter
        self.min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._probe_rtt_done_at: float | None = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0

        # STARTUP exit
        self.filled_pipe = False
        self._drain_start_round = 0
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._last_sample_app_limited = True

        # PROBE_BW gain cycle
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._cycle_lost = False
        self._probe_start_bw = 0.0
        self.startup_restarts = 0
        """Times a probe found so much room that the rate was searched for anew."""

        # loss per round, and the in-flight ceiling it sets
        self._round_acked_packets = 0
        self._round_lost_packets = 0
        self._round_loss_handled = False
        self._lossy_since_probe = False
        self.inflight_hi: int | None = None
        self.rounds_too_lossy = 0

        # ACK aggregation: the most acknowledged beyond bw * interval, over ~10 rounds
        self._agg_epoch_start = 0.0
        self._agg_epoch_acked = 0
        self._agg_max = [0, 0]
        self._agg_index = 0
        self._agg_rounds = 0

        self._pacer: ModelPacer | None = None
        self._pacing_rate = 0.0
        self._round_max_bw = 0.0
        self._sample_min_interval = 0.0
        """Samples over a shorter interval are dropped: the min RTT once known."""
        self._bdp = self._initial_cwnd
        self._target = self._initial_cwnd
        self._cycle_deadline = 0.0
        self._refreshed_bw = 0.0
        """The bandwidth the derived values were computed from (within ``_REFRESH_STEP``)."""

    # -- the model, as others read it ------------------------------------------------

    @property
    def pacing_rate(self) -> float:
        """Bytes per second the pacer releases; 0 until there is anything to base it on."""
        return self._pacing_rate

    @property
    def tracked_packets(self) -> int:
        """Packets in the side table (sent, in flight, not yet acked, lost or expired)."""
        return len(self._packets)

    def bdp(self, gain: float = 1.0) -> int:
        """``gain`` times the estimated bandwidth-delay product, in bytes."""
        if self.max_bw <= 0 or math.isinf(self.min_rtt):
            return int(gain * self._initial_cwnd)
        return int(gain * self.max_bw * self.min_rtt)

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data["bbr_mode"] = self.mode.value
        data["bbr_bw"] = round(self.max_bw)
        data["bbr_pacing_rate"] = round(self._pacing_rate)
        if not math.isinf(self.min_rtt):
            data["bbr_min_rtt"] = self.min_rtt
        if self.inflight_hi is not None:
            data["bbr_inflight_hi"] = self.inflight_hi
        return data

    # -- aioquic's interface -------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        size = packet.sent_bytes
        sent_time = packet.sent_time
        if sent_time is None:
            sent_time = self._delivered_time
        if self.bytes_in_flight <= 0:
            # Nothing in flight: the next sample's interval starts now, so an idle
            # period never dilutes a delivery-rate sample.
            self._first_sent_time = self._delivered_time = sent_time
        in_flight = self.bytes_in_flight = self.bytes_in_flight + size
        pacer = self._pacer
        if pacer is not None and pacer.ran_dry:
            # This batch ended because the application had no more to send, with room
            # left: its packets are application-limited too (a request/response flow
            # sends every packet so; marked only afterwards, its samples would pass for
            # the path's rate and end STARTUP at a fraction of it).
            self._app_limited_until = max(self.delivered + in_flight, 1)
        packets = self._packets
        if len(packets) >= _SHRINK_AT:
            if len(packets) >= MAX_TRACKED_PACKETS:
                del packets[next(iter(packets))]
            self._table_grown = True
        epoch = packet.epoch
        slot = _ONE_RTT_SLOT if epoch is _ONE_RTT else _EPOCH_SLOT[epoch]
        packets[packet.packet_number * 4 + slot] = (
            self.delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until != 0,
            in_flight,
        )
        if pacer is not None and size < self._mds:
            pacer.on_packet_sent(size)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        size = packet.sent_bytes
        in_flight = self.bytes_in_flight - size
        self.bytes_in_flight = in_flight if in_flight > 0 else 0
        delivered = self.delivered = self.delivered + size
        self._delivered_time = now
        if self._app_limited_until and delivered > self._app_limited_until:
            self._app_limited_until = 0
        epoch = packet.epoch
        slot = _ONE_RTT_SLOT if epoch is _ONE_RTT else _EPOCH_SLOT[epoch]
        packets = self._packets
        record = packets.pop(packet.packet_number * 4 + slot, None)
        if not packets and self._table_grown:
            # a dict keeps its largest size: an idle connection should not
            self._packets = {}
            self._table_grown = False
        self._round_start = False
        if record is not None:
            p_delivered, p_delivered_time, p_first_sent, p_app_limited, _ = record
            if p_delivered >= self._next_round_delivered:
                self._start_round()
            sent_time = packet.sent_time
            if sent_time is None:
                sent_time = now
            self._first_sent_time = sent_time
            interval = sent_time - p_first_sent
            ack_elapsed = now - p_delivered_time
            if ack_elapsed > interval:
                interval = ack_elapsed
            # A sample over less than the min RTT is ACK compression, not bandwidth.
            if interval > 0 and interval >= self._sample_min_interval:
                rate = (delivered - p_delivered) / interval
                self._last_sample_app_limited = p_app_limited
                if rate > self._round_max_bw or self._round_start:
                    if not p_app_limited or rate >= self.max_bw:
                        self._add_bw_sample(rate)
        self._round_acked_packets += 1
        if self.max_bw > 0:
            self._update_ack_aggregation(now, size)
        self._update_model(now)
        # the window: grows by what is delivered, up to the model's target
        if self.mode is BBRMode.PROBE_RTT:
            self.congestion_window = self._min_cwnd
            return
        cwnd = self.congestion_window
        target = self._target
        if self.filled_pipe:
            cwnd += size
            if cwnd > target:
                cwnd = target
        elif cwnd < target or delivered < self._initial_cwnd:
            cwnd += size
        self.congestion_window = cwnd if cwnd > self._min_cwnd else self._min_cwnd

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        # Keys discarded with their packet number space, or data a probe timeout
        # retransmits early: neither delivered nor a congestion signal.
        table = self._packets
        for packet in packets:
            self.bytes_in_flight = max(0, self.bytes_in_flight - packet.sent_bytes)
            table.pop(_key(packet), None)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        table = self._packets
        count = 0
        for packet in packets:
            self.bytes_in_flight = max(0, self.bytes_in_flight - packet.sent_bytes)
            table.pop(_key(packet), None)
            count += 1
        if not count:
            return
        self._round_lost_packets += count
        self._cycle_lost = True
        if not self._round_loss_handled and self._round_too_lossy():
            self._round_loss_handled = True
            self._on_heavy_loss(now)

    def on_persistent_congestion(self) -> None:
        # Nothing got through for several PTOs: restart from the minimum window and grow
        # back by what is delivered (doubling per round trip) up to the model's target.
        self.congestion_window = self._min_cwnd
        self._agg_max = [0, 0]
        self._agg_epoch_acked = 0
        self._refresh()

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if rtt < _MIN_RTT_SAMPLE:
            rtt = _MIN_RTT_SAMPLE
        min_rtt = self.min_rtt
        probing = self.mode is BBRMode.PROBE_RTT
        expired = now > self._min_rtt_stamp + MIN_RTT_WINDOW and min_rtt != math.inf
        if rtt <= min_rtt or (expired and not probing):
            self._min_rtt_stamp = now
            if rtt == min_rtt:
                return
            self.min_rtt = rtt
            self._sample_min_interval = rtt
            if expired and not probing:
                self._enter_probe_rtt()
            self._refresh()

    # -- what the pacer reports -----------------------------------------------------------

    def on_app_limited(self) -> None:
        """The sender had room to send (window and pacing) but nothing to send: samples
        until everything now in flight is delivered may be low and must not count."""
        self._app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    # -- the model ------------------------------------------------------------------------

    def _start_round(self) -> None:
        self._next_round_delivered = self.delivered
        self.round_count += 1
        self._round_start = True
        self._round_max_bw = 0.0
        self._round_acked_packets = 0
        self._round_lost_packets = 0
        self._round_loss_handled = False

    def _add_bw_sample(self, rate: float) -> None:
        rounds = self._bw_rounds
        current = self.round_count
        if rate > self._round_max_bw:
            self._round_max_bw = rate
        if rounds and rounds[-1][0] == current:
            if rate <= rounds[-1][1]:
                return
            rounds[-1] = (current, rate)
            if rate > self.max_bw:
                self.max_bw = rate
                if rate > self._refreshed_bw * _REFRESH_STEP:
                    self._refresh()
            return
        rounds.append((current, rate))
        oldest = current - BW_WINDOW_ROUNDS
        while rounds[0][0] <= oldest:
            del rounds[0]
        max_bw = max(value for _, value in rounds)
        if max_bw != self.max_bw:
            self.max_bw = max_bw
            self._refresh()
        elif max_bw > self._refreshed_bw:
            self._refresh()

    def _round_too_lossy(self) -> bool:
        lost = self._round_lost_packets
        if lost < LOSS_MIN_PACKETS:
            return False
        return lost > LOSS_THRESHOLD * (lost + self._round_acked_packets)

    def _on_heavy_loss(self, now: float) -> None:
        self.rounds_too_lossy += 1
        self._lossy_since_probe = True
        floor = max(self.bdp(LOSS_FLOOR_GAIN), self._min_cwnd)
        current = self.inflight_hi if self.inflight_hi is not None else self.congestion_window
        self.inflight_hi = max(floor, int(LOSS_CEILING_BETA * current))
        if self.mode is BBRMode.STARTUP:
            self.filled_pipe = True
            self._enter_drain()
        elif self.mode is BBRMode.PROBE_BW and self.pacing_gain > 1.0:
            self._advance_cycle(now)
        self._refresh()

    def _update_model(self, now: float) -> None:
        mode = self.mode
        if self._round_start:
            if mode is BBRMode.STARTUP and not self.filled_pipe:
                self._check_full_pipe()
            self._agg_rounds += 1
            if self._agg_rounds >= ACK_AGGREGATION_ROUNDS:
                self._agg_rounds = 0
                self._agg_index ^= 1
                self._agg_max[self._agg_index] = 0
                self._refresh()
        if mode is BBRMode.PROBE_BW:
            if now > self._cycle_deadline or (
                self.pacing_gain < 1.0 and self.bytes_in_flight <= self._bdp
            ):
                self._update_cycle(now)
        elif mode is BBRMode.STARTUP:
            if self.filled_pipe:
                self._enter_drain()
        elif mode is BBRMode.DRAIN:
            if (
                self.bytes_in_flight <= self._bdp
                or self.round_count - self._drain_start_round > DRAIN_MAX_ROUNDS
            ):
                # (pacing drains the queue; a connection not paced by the model only
                # drains as far as its window lets it, so DRAIN has a time limit)
                self._enter_probe_bw(now)
        elif mode is BBRMode.PROBE_RTT:
            self._update_probe_rtt(now)

    def _check_full_pipe(self) -> None:
        if self._last_sample_app_limited:
            return
        if self.max_bw >= self._full_bw * FULL_BW_GROWTH:
            self._full_bw = self.max_bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _enter_drain(self) -> None:
        self.mode = BBRMode.DRAIN
        self._drain_start_round = self.round_count
        self.pacing_gain = DRAIN_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self._refresh()

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = BBRMode.PROBE_BW
        self.cwnd_gain = CWND_GAIN
        # start anywhere but in the draining phase, so that flows do not synchronise
        index = self._rng.randrange(len(PROBE_BW_GAINS) - 1)
        self._cycle_index = index + 1 if index >= 1 else index
        self._cycle_stamp = now
        self._cycle_lost = False
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
        self._probe_start_bw = self.max_bw if self.pacing_gain > 1.0 else 0.0
        self._refresh()

    def _update_cycle(self, now: float) -> None:
        elapsed = now - self._cycle_stamp
        full_length = elapsed > self.min_rtt
        gain = self.pacing_gain
        if gain > 1.0:
            done = full_length and (
                self._cycle_lost
                or self.bytes_in_flight >= self.bdp(gain)
                or elapsed > 4 * self.min_rtt
            )
        elif gain < 1.0:
            done = full_length or self.bytes_in_flight <= self._bdp
        else:
            done = full_length
        if done:
            self._advance_cycle(now)

    def _advance_cycle(self, now: float) -> None:
        if self.pacing_gain < 1.0 and self._probe_found_room():
            self._restart_startup()
            return
        self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
        self._cycle_stamp = now
        self._cycle_lost = False
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
        if self.pacing_gain > 1.0:
            self._probe_start_bw = self.max_bw
            # a new probe: raise a loss ceiling that the last cycle did not hit
            if self.inflight_hi is not None and not self._lossy_since_probe:
                raised = int(self.inflight_hi * CEILING_GROWTH) + self._mds
                self.inflight_hi = None if raised >= self._model_target() else raised
            self._lossy_since_probe = False
        self._refresh()

    def _probe_found_room(self) -> bool:
        """The last probe (its packets are acknowledged by the end of the phase after
        it) raised the estimate by ``PROBE_ROOM_GROWTH`` or more, with data to spare and
        no loss: the path has room the model does not know of. This happens when the
        estimate was made while the application sent little (many small calls, then a
        bulk transfer on the same connection); a probe only gains 25 % per cycle, so
        finding, say, 100x more would take seconds."""
        start = self._probe_start_bw
        self._probe_start_bw = 0.0
        return (
            start > 0.0
            and not self._cycle_lost
            and not self._last_sample_app_limited
            and self.max_bw >= PROBE_ROOM_GROWTH * start
        )

    def _restart_startup(self) -> None:
        """Find the path's rate again as at the start: exponential growth until it stops
        growing (or a round loses too much), then drain and cruise."""
        self.startup_restarts += 1
        self.mode = BBRMode.STARTUP
        self.filled_pipe = False
        self._full_bw = self.max_bw
        self._full_bw_count = 0
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self._refresh()

    def _enter_probe_rtt(self) -> None:
        if self.mode is not BBRMode.PROBE_RTT:
            self._prior_cwnd = max(self._prior_cwnd, self.congestion_window)
        self.mode = BBRMode.PROBE_RTT
        self.pacing_gain = 1.0
        self.cwnd_gain = 1.0
        self._probe_rtt_done_at = None
        self._probe_rtt_round_done = False
        self._refresh()

    def _update_probe_rtt(self, now: float) -> None:
        if self._probe_rtt_done_at is None:
            if self.bytes_in_flight <= self._min_cwnd:
                self._probe_rtt_done_at = now + max(PROBE_RTT_DURATION, self._rtt_or(0.0))
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.delivered
            return
        if self._round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done_at:
            self._min_rtt_stamp = now
            self.congestion_window = max(self.congestion_window, self._prior_cwnd)
            self._prior_cwnd = 0
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self.mode = BBRMode.STARTUP
                self.pacing_gain = self.cwnd_gain = STARTUP_GAIN
                self._refresh()

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        # How far ACKs run ahead of the estimated rate (delayed ACKs, receivers that
        # process datagrams in batches): the window needs that much extra room.
        epoch_acked = self._agg_epoch_acked
        expected = self.max_bw * (now - self._agg_epoch_start)
        if epoch_acked <= expected or epoch_acked + acked > (
            self.congestion_window + 2 * self._mds
        ):
            self._agg_epoch_start = now
            epoch_acked = 0
            expected = 0.0
        epoch_acked = self._agg_epoch_acked = epoch_acked + acked
        extra = int(epoch_acked - expected)
        if extra >= self._agg_max[self._agg_index] + self._mds:  # whole packets only
            self._agg_max[self._agg_index] = min(extra, self.congestion_window)
            if self.filled_pipe:
                self._refresh()

    def _model_target(self) -> int:
        """The window the model asks for, before the loss ceiling."""
        if self.max_bw <= 0 or math.isinf(self.min_rtt):
            return max(self._initial_cwnd, self.congestion_window)
        quantum = max(self._mds, min(int(self._pacing_rate * SEND_QUANTUM_TIME), MAX_SEND_QUANTUM))
        target = self.bdp(self.cwnd_gain) + 3 * quantum
        if self.filled_pipe:
            target += max(self._agg_max)
        return target

    def _refresh(self) -> None:
        """Derive the pacing rate, the BDP and the target window from the model, after
        any of their inputs (bandwidth, min RTT, gains, ceiling, aggregation) changed."""
        if self.max_bw > 0:
            rate = self.pacing_gain * self.max_bw * PACING_MARGIN
            if self.filled_pipe or rate > self._pacing_rate:
                self._pacing_rate = rate
        elif not math.isinf(self.min_rtt):
            # no delivery sample yet: the initial window over the first RTT
            self._pacing_rate = STARTUP_GAIN * self.congestion_window / self.min_rtt
        self._refreshed_bw = self.max_bw
        self._bdp = self.bdp()
        target = self._model_target()
        if self.inflight_hi is not None and target > self.inflight_hi:
            target = self.inflight_hi
        self._target = max(target, self._min_cwnd)
        self._cycle_deadline = self._cycle_stamp + self._rtt_or(0.0)

    def _rtt_or(self, default: float) -> float:
        return default if math.isinf(self.min_rtt) else self.min_rtt


_EPOCH_SLOT: dict[Epoch, int] = {epoch: index for index, epoch in enumerate(Epoch)}
_ONE_RTT = Epoch.ONE_RTT
_ONE_RTT_SLOT = _EPOCH_SLOT[_ONE_RTT]


def _key(packet: QuicSentPacket) -> int:
    # Initial, Handshake and application packets are numbered separately.
    epoch = packet.epoch
    slot = _ONE_RTT_SLOT if epoch is _ONE_RTT else _EPOCH_SLOT[epoch]
    return packet.packet_number * 4 + slot


class ModelPacer(QuicPacketPacer):
    """A token-bucket pacer that follows a :class:`BBRCongestionControl`'s pacing rate.

    It also tells the controller when the sender was offered a send (window and pacing
    allowed one) and built nothing: the application had nothing to send. With
    ``paced=False`` it never holds a packet back but still does that reporting.

    aioquic asks :meth:`next_send_time` before building each packet and calls
    :meth:`update_after_send` after building one; the built packets reach the controller
    (``on_packet_sent``) only when the whole batch is flushed, with their real sizes.
    """

    __slots__ = (
        "_batch_built",
        "_batch_time",
        "_cc",
        "_credit",
        "_grant_had_room",
        "_granted",
        "_paced",
        "_stamp",
    )

    def __init__(self, controller: BBRCongestionControl, *, paced: bool = True) -> None:
        super().__init__(max_datagram_size=controller._mds)
        self._cc = controller
        self._paced = paced
        self._credit = 0.0
        self._stamp: float | None = None
        self._granted = False
        self._grant_had_room = False
        self._batch_time: float | None = None
        self._batch_built = 0
        controller._pacer = self

    def _burst(self, rate: float) -> float:
        mds = self._max_datagram_size
        return max(2.0 * mds, min(rate * PACER_BURST_TIME, float(MAX_SEND_QUANTUM)))

    def _refill(self, now: float, rate: float) -> None:
        if self._stamp is None:
            self._credit = self._burst(rate)
        elif now > self._stamp:
            self._credit = min(self._credit + (now - self._stamp) * rate, self._burst(rate))
        self._stamp = now

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]
        cc = self._cc
        if self._batch_time != now:
            self._batch_time = now
            self._batch_built = 0
        if self._granted and self._grant_had_room:
            # the last offered send built nothing although the window had room
            cc.on_app_limited()
        self._granted = False
        if self._paced:
            rate = cc.pacing_rate
            if rate > 0:
                self._refill(now, rate)
                if self._credit <= 0:
                    return now + (self._max_datagram_size - self._credit) / rate
        self._granted = True
        mds = self._max_datagram_size
        in_flight = cc.bytes_in_flight + self._batch_built * mds
        self._grant_had_room = in_flight + mds <= cc.congestion_window
        return None

    @property
    def ran_dry(self) -> bool:
        """The last send offered (with room in the window) built nothing: the sender is
        out of data, so what it just sent is all the application had."""
        return self._granted and self._grant_had_room

    def update_after_send(self, now: float) -> None:
        self._granted = False
        if self._batch_time != now:
            self._batch_time = now
            self._batch_built = 0
        self._batch_built += 1
        if self._paced:
            rate = self._cc.pacing_rate
            if rate > 0:
                self._refill(now, rate)
                mds = self._max_datagram_size
                self._credit = max(self._credit - mds, -float(mds))

    def on_packet_sent(self, size: int) -> None:
        """The controller saw a built packet's real size: refund the difference."""
        if self._paced and self._stamp is not None:
            refund = self._max_datagram_size - size
            if refund > 0:
                self._credit = min(self._credit + refund, self._burst(self._cc.pacing_rate))

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        # The rate comes from the controller's model, not from cwnd / srtt.
        return None


def install_pacer(recovery: QuicPacketRecovery, *, paced: bool = True) -> bool:
    """Pace ``recovery``'s connection at its controller's model rate (see
    :class:`ModelPacer`). Returns False (and changes nothing) if the connection does not
    use :class:`BBRCongestionControl`."""
    controller = recovery._cc
    if not isinstance(controller, BBRCongestionControl):
        return False
    recovery._pacer = ModelPacer(controller, paced=paced)
    return True


def set_datagram_size(recovery: QuicPacketRecovery, size: int, *, initial: bool = False) -> None:
    """``recovery``'s connection now sends datagrams of ``size`` bytes (path MTU
    discovery proved a new size, or fell back): size the controller's per-packet
    quantities (minimum window, increments) and the pacer's charge per packet by it. A
    pacer charging a larger size than the packets have would pace at a fraction of the
    rate. ``initial``: nothing was sent yet, so the initial window follows too
    (RFC 9002 section 7.2: at most ten datagrams)."""
    cc = recovery._cc
    if isinstance(cc, BBRCongestionControl):
        cc._mds = size
        cc._min_cwnd = MIN_WINDOW_PACKETS * size
        cc._initial_cwnd = K_INITIAL_WINDOW * size
        if initial:
            cc._bdp = cc._target = cc._initial_cwnd
    else:
        if hasattr(cc, "_max_datagram_size"):
            cc._max_datagram_size = size
        if hasattr(cc, "additive_increase_factor"):  # CUBIC's Reno-friendly region
            cc.additive_increase_factor = size
    if initial:
        cc.congestion_window = K_INITIAL_WINDOW * size
    pacer = recovery._pacer
    if hasattr(pacer, "_max_datagram_size"):
        pacer._max_datagram_size = size


register_congestion_control(BBR_NAME, BBRCongestionControl)
