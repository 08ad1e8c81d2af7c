"""A bound on the probe timeout's exponential backoff (RFC 9002 section 6.2.1).

When a probe timeout (PTO) fires without an acknowledgment having arrived since the
previous one, aioquic doubles the next one: the timer is ``PTO * 2**pto_count`` and only
an ACK resets the count. That is the RFC's rule, and on a path where a probe round trip
(the probe going out *and* its ACK coming back) usually succeeds it costs little. On a
lossy path it does not: with loss ``l`` in each direction a round trip fails with
probability ``f = 1 - (1 - l)**2``, and ``k`` failures in a row (probability ``f**k``)
leave the sender silent for ``2**k`` PTOs. The recovery time then has a power-law tail,
``P(wait > t) ~ t**-log2(1/f)``, and once ``f >= 1/2`` (about 29 % loss each way) its mean
is infinite. Measured through a router dropping 30 % of packets each way (f = 0.51, RTT
about 4 ms, PTO about 37 ms): a 128 KiB upload needs 10-50 PTOs, and runs of 6-8
unanswered probes turned single uploads into 15-30 s silences with the next probe
scheduled 9 s out, while the loss rate seen by the probes was the path's 30 %.

:func:`limit_probe_backoff` stops the doubling after ``max_backoff`` doublings, so
probes keep going out at least every ``PTO * 2**max_backoff`` and recovery is as
quick as the path allows once a probe and its ACK get through. This deviates from the
RFC's "MUST double" (TCP lets its retransmission timer be bounded too, RFC 6298 section
2.5, though at no less than 60 s; the bound here is relative to the PTO and so much
tighter), and what the backoff protects is still protected:

* a probe is one packet (aioquic sends one, not the two the RFC allows) and is the only
  packet the congestion window does not limit, so a congested path is offered at most
  one packet beyond the window every ``2**max_backoff`` PTOs; the congestion
  controller still reacts to the losses (persistent congestion still collapses the
  window): only the timer's growth changes;
* a dead path is still ended by the idle timeout: probes do not restart the idle timer
  (only the first ack-eliciting packet after a receipt does, RFC 9000 section 10.1), so
  a silent peer is given up on after ``idle_timeout`` having been sent at most about
  ``idle_timeout / (PTO * 2**max_backoff) + max_backoff`` probes;
* the anti-amplification limit is untouched: a server that has no room to send does not
  arm its PTO at all (aioquic checks that before applying any backoff);
* the client's rule that the backoff is not reset before it knows its address is
  validated (RFC 9002 section 6.2.1, which protects a busy server) still holds: the
  count stays high, it just does not grow past the bound.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.recovery import QuicPacketRecovery

__all__ = [
    "MAX_PTO_BACKOFF_LIMIT",
    "limit_probe_backoff",
    "probe_backoff",
]

MAX_PTO_BACKOFF_LIMIT = 16
"""A larger bound is the RFC's unbounded backoff for any practical purpose."""


def limit_probe_backoff(recovery: QuicPacketRecovery, max_backoff: int | None) -> None:
    """Let ``recovery``'s probe timeout double at most ``max_backoff`` times in a row.

    ``None`` leaves aioquic's unbounded backoff in place. The transport uses
    ``QUICConfig.max_pto_backoff`` (3 by default: probes at least every 8 PTOs, about
    0.3 s on a LAN and 1.6 s in a handshake before the first RTT sample with the
    default 100 ms initial RTT). The bound applies to every packet number space and
    both roles; it only changes how far the backoff count grows, not when it resets or
    when the timer is armed.
    """
    if max_backoff is None:
        return
    if isinstance(max_backoff, bool) or not 0 <= max_backoff <= MAX_PTO_BACKOFF_LIMIT:
        raise ValueError(f"max_backoff must be in [0, {MAX_PTO_BACKOFF_LIMIT}] or None")
    on_timeout = recovery.on_loss_detection_timeout

    def on_loss_detection_timeout(**kwargs: Any) -> None:
        on_timeout(**kwargs)
        # aioquic increments the count when a PTO (not a loss-time timer) fires; the
        # timer it arms next is get_probe_timeout() * 2**count.
        if recovery._pto_count > max_backoff:
            recovery._pto_count = max_backoff

    setattr(recovery, "on_loss_detection_timeout", on_loss_detection_timeout)  # noqa: B010


def probe_backoff(recovery: QuicPacketRecovery) -> int:
    """How many times the probe timeout is doubled right now (0 after an ACK)."""
    return int(recovery._pto_count)
