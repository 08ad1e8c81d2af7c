"""Transport configuration: one frozen dataclass with validated, documented defaults."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .pmtu import BASE_DATAGRAM_SIZE, route_mtu

__all__ = ["DEFAULT_ALPN", "MAX_DATAGRAM_SIZE_LIMIT", "MIN_DATAGRAM_SIZE", "QUICConfig"]

DEFAULT_ALPN = "quicshift-rpc/1"
MIN_DATAGRAM_SIZE = 1200
"""RFC 9000: every QUIC path must carry 1,200-byte datagrams."""
MAX_DATAGRAM_SIZE_LIMIT = 65507
"""The largest UDP payload over IPv4 (65,535 less the IP and UDP headers)."""

_KIB = 1024
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class QUICConfig:
    """Settings shared by a :class:`~quic_rpc.quic.QUICServer` and its clients.

    Times are in seconds, sizes in bytes.

    * ``alpn`` — the one application protocol both ends must agree on.
    * ``idle_timeout`` — a connection with no packet from the peer for this long is
      dead (both ends advertise it; the smaller one wins).
    * ``keepalive_interval`` — send a PING after this long without hearing from the
      peer, which keeps NAT bindings open; must be shorter than ``idle_timeout``.
      ``None`` disables keepalive. No timer runs more often than this while idle.
    * ``handshake_timeout`` — ``connect()`` gives up after this long.
    * ``max_connections`` — a server refuses new connections beyond this.
    * ``max_streams`` — how many bidirectional streams the peer may have open at once
      on one connection (more wait in ``open_stream()``). An RPC server's
      ``RPCServerConfig.max_concurrent_calls_per_connection`` (256 by default) should not
      be lower, or callers beyond it are refused rather than made to wait.
    * ``connection_window`` / ``stream_window`` — initial receive flow-control windows:
      the peer may send at most this many bytes the application has not read yet.
    * ``max_connection_window`` / ``max_stream_window`` — how far those windows may
      grow. A window doubles when the application reads half of it within two round
      trips, i.e. when the window rather than the reader limits the transfer (a
      long fast path, or a busy host): a 2 MiB window caps a 50 ms path at about
      335 Mbit/s. A slow reader never grows its window. A maximum below its initial
      window means no growth.
    * ``stream_send_buffer`` — at most this many unacknowledged bytes are buffered per
      stream before ``send()`` waits (4 MiB: a lost packet holds the front of the
      buffer for about two round trips, so on a lossy long path a smaller buffer, not
      the congestion controller, caps a bulk transfer). Memory is only taken as data
      waits, so idle and small-call streams do not pay for it.
    * ``max_datagram_size`` — the largest UDP payload a connection sends (1,200..65,507;
      1,452 by default, which a 1,500-byte Ethernet path carries; LANs with jumbo
      frames can allow more). With ``pmtu_discovery`` it is the ceiling of the search,
      otherwise the size every datagram is padded or filled to. Handshake datagrams
      stay at most 16,383 bytes.
    * ``pmtu_discovery`` — path MTU discovery (RFC 8899; :mod:`quic_rpc.quic.pmtu`).
      Sockets always set Don't Fragment, as RFC 9000 requires, so a datagram larger
      than the path carries is dropped rather than fragmented. With discovery on (the
      default), a connection starts with 1,200-byte datagrams, which every QUIC path
      carries, and after the handshake probes up to ``max_datagram_size`` (capped by
      the local route's MTU): a path through a VPN or tunnel gets the largest size it
      carries, and a jumbo-frame LAN gets large datagrams when ``max_datagram_size``
      allows them. Off, every connection uses ``max_datagram_size`` from its first
      packet, which must then fit every path it is used on. Loopback peers with the
      loopback profile (below) need no discovery.
    * ``retry`` — the server validates client addresses with a Retry round trip.
    * ``graceful_stop_timeout`` — default deadline for in-flight streams on stop/close.
    * ``datagrams`` — enable unreliable datagrams (RFC 9221).
    * ``congestion_control`` — ``"reno"``, ``"cubic"`` (both loss-based: every lost
      packet halves or cuts the window, so random loss on a long path keeps them far
      below its capacity) or ``"bbr"`` (model-based: paces at a windowed-max estimate
      of the path's delivery rate and keeps about two bandwidth-delay products in
      flight; random loss does not lower its rate, a round losing more than a few
      percent of its packets lowers its ceiling). See :mod:`quic_rpc.quic.congestion`.
      The default is ``"bbr"``: across a 40 ms path with 1 % random loss it carries
      43-46 Mbit/s of a 50 Mbit/s link (what TCP with BBR gets) where Reno and CUBIC
      carry about 3. Like TCP's BBR, it takes most of a bottleneck it shares with CUBIC
      flows (84% in ``python -m benchmarks.fairness``, TCP BBR 92%); where an even
      split with loss-based traffic matters more than throughput under random loss,
      use ``"cubic"``.
    * ``pacing`` — pace sends by the congestion controller's rate. Turning it off
      only makes sense on loopback or a private LAN.
    * ``gso`` — use Linux UDP segmentation offload when the kernel supports it.
    * ``loopback_datagram_size`` — for a connection whose peer is a loopback address
      (127.0.0.0/8, ::1), where the path is this host's loopback device (MTU 64 KiB) and
      nothing queues between the ends, use datagrams of this size (65,000 by default)
      and no pacing: a bulk transfer costs about a fifteenth of the CPU per byte it
      costs at 1,452 bytes with pacing. The handshake still uses ``max_datagram_size``
      (handshake datagrams are padded to full size); the profile never makes datagrams
      smaller. ``None`` treats loopback like any other path.
    * ``session_resumption`` — TLS 1.3 session resumption, off by default. A server
      issues one single-use ticket per connection to clients that ask; a client asks,
      keeps tickets (see :class:`~quic_rpc.quic.SessionCache`) and offers one when it
      reconnects to the same address. A resumed handshake skips certificates and
      signatures but not the verify callbacks: each side runs its callback again over
      the peer chain the session was established with, so peers see the same identity
      and chain as after a full handshake. Resumption is 1-RTT only: 0-RTT application
      data is never sent or accepted (it could be replayed). Servers and clients both
      need it on to resume.
    * ``session_ticket_lifetime`` — a session (and every ticket from its resumptions)
      expires this long after the full handshake that authenticated the peer.
    * ``session_store_size`` — a server keeps at most this many unused tickets (the
      oldest are dropped; their clients then do a full handshake).
    * ``max_pto_backoff`` — the probe timeout doubles at most this many times in a row
      (0..16), so an unanswered sender probes at least every ``2**max_pto_backoff``
      probe timeouts; ``None`` doubles without bound as RFC 9002 6.2.1 says. Under heavy
      random loss an unbounded backoff leaves a connection silent for tens of seconds;
      a dead peer is still given up on after ``idle_timeout``. See
      :mod:`quic_rpc.quic.recovery`.
    """

    alpn: str = DEFAULT_ALPN
    idle_timeout: float = 30.0
    keepalive_interval: float | None = 10.0
    handshake_timeout: float = 10.0
    max_connections: int = 1024
    max_streams: int = 256
    connection_window: int = 16 * _MIB
    stream_window: int = 2 * _MIB
    max_connection_window: int = 32 * _MIB
    max_stream_window: int = 16 * _MIB
    stream_send_buffer: int = 4 * _MIB
    max_datagram_size: int = 1452
    pmtu_discovery: bool = True
    retry: bool = False
    graceful_stop_timeout: float = 5.0
    datagrams: bool = False
    congestion_control: Literal["reno", "cubic", "bbr"] = "bbr"
    initial_rtt: float = 0.1
    pacing: bool = True
    gso: bool = True
    loopback_datagram_size: int | None = 65000
    session_resumption: bool = False
    session_ticket_lifetime: float = 3600.0
    session_store_size: int = 4096
    max_pto_backoff: int | None = 3

    def __post_init__(self) -> None:
        if not isinstance(self.alpn, str) or not self.alpn or len(self.alpn.encode()) > 255:
            raise ConfigError("alpn must be a non-empty string of at most 255 bytes")
        for name in (
            "idle_timeout",
            "handshake_timeout",
            "graceful_stop_timeout",
            "initial_rtt",
            "session_ticket_lifetime",
        ):
            _positive_time(name, getattr(self, name))
        if self.keepalive_interval is not None:
            _positive_time("keepalive_interval", self.keepalive_interval)
            if self.keepalive_interval >= self.idle_timeout:
                raise ConfigError(
                    f"keepalive_interval ({self.keepalive_interval}) must be shorter than "
                    f"idle_timeout ({self.idle_timeout})"
                )
        _int_range("max_connections", self.max_connections, 1, 1 << 20)
        _int_range("max_streams", self.max_streams, 1, 1 << 20)
        _int_range("session_store_size", self.session_store_size, 1, 1 << 24)
        if self.max_pto_backoff is not None:
            _int_range("max_pto_backoff", self.max_pto_backoff, 0, 16)
        _int_range("stream_window", self.stream_window, 16 * _KIB, 1 << 30)
        _int_range("connection_window", self.connection_window, self.stream_window, 1 << 32)
        _int_range("max_stream_window", self.max_stream_window, 16 * _KIB, 1 << 30)
        _int_range("max_connection_window", self.max_connection_window, 16 * _KIB, 1 << 32)
        _int_range("stream_send_buffer", self.stream_send_buffer, 1 * _KIB, 1 << 30)
        _int_range(
            "max_datagram_size", self.max_datagram_size, MIN_DATAGRAM_SIZE, MAX_DATAGRAM_SIZE_LIMIT
        )
        if self.loopback_datagram_size is not None:
            _int_range(
                "loopback_datagram_size",
                self.loopback_datagram_size,
                MIN_DATAGRAM_SIZE,
                MAX_DATAGRAM_SIZE_LIMIT,
            )
        if self.congestion_control not in ("reno", "cubic", "bbr"):
            raise ConfigError("congestion_control must be 'reno', 'cubic' or 'bbr'")
        for name in ("retry", "datagrams", "pacing", "gso", "session_resumption", "pmtu_discovery"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool")

    @property
    def guaranteed_datagram_size(self) -> int:
        """The datagram size a connection can send at from its first packet: 1,200 with
        ``pmtu_discovery`` (the path may carry more once probed), otherwise
        ``max_datagram_size``. What carriers of fixed-size unreliable datagrams (such as
        relay fragments) should size them by."""
        return MIN_DATAGRAM_SIZE if self.pmtu_discovery else self.max_datagram_size


def _positive_time(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


def _int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def config_for_peer(config: QUICConfig, host: str) -> QUICConfig:
    """The settings a connection to ``host`` runs with: ``config``, or for a loopback
    peer its loopback profile (see ``QUICConfig.loopback_datagram_size``)."""
    if config.loopback_datagram_size is None or not _is_loopback(host):
        return config
    return _loopback_profile(config)


@functools.lru_cache(maxsize=64)
def _loopback_profile(config: QUICConfig) -> QUICConfig:
    # one object per config, shared by all its loopback connections
    size = config.loopback_datagram_size
    assert size is not None
    size = max(size, config.max_datagram_size)  # the profile never shrinks datagrams
    return dataclasses.replace(config, max_datagram_size=size, pacing=False)


def pmtu_ceiling(config: QUICConfig, host: str, port: int) -> int | None:
    """The largest datagram path MTU discovery tries towards ``(host, port)``, or None
    where the connection does not search (discovery off, or the loopback profile)."""
    if not config.pmtu_discovery:
        return None
    if config.loopback_datagram_size is not None and _is_loopback(host):
        return None
    ceiling = config.max_datagram_size
    route = route_mtu(host, port)
    if route is not None:
        ceiling = min(ceiling, route)
    return max(ceiling, BASE_DATAGRAM_SIZE)


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
