"""Datagram packetization-layer path MTU discovery (RFC 8899, RFC 9000 section 14.3).

QUIC datagrams must never be fragmented by IP (RFC 9000 section 14), so the sockets set
Don't Fragment and a connection may only send datagrams the path is known to carry. It
starts at :data:`BASE_DATAGRAM_SIZE` (1,200 bytes, which every QUIC path must carry),
and once the handshake is confirmed the engine sends *probes*: a packet of just PING and
PADDING at a candidate size. An acknowledged probe proves the size; a lost one says
nothing for certain (random loss), so a size is given up on only after
:data:`MAX_PROBES` probes at it are lost in a row. Probe losses never count as
congestion.

The search first tries the ceiling (the configured maximum, capped by the local route's
MTU), since most paths carry it, and then bisects between the largest size proved and
the smallest given up on, until the two are within :data:`SEARCH_PRECISION` bytes.
After a search that ended below the ceiling, it runs again every
:data:`RAISE_INTERVAL` seconds (a route may have changed). If the path stops carrying
the proved size (a black hole: :meth:`PathMTUSearch.black_hole`), the connection drops
back to the base size and searches again after :data:`BLACK_HOLE_RETRY` seconds.

:class:`PathMTUSearch` is sans-IO: the engine asks it what to probe and tells it what
happened; it owns no timers and no packets.
"""

from __future__ import annotations

import enum
import ipaddress
import socket

__all__ = [
    "BASE_DATAGRAM_SIZE",
    "BLACK_HOLE_RETRY",
    "MAX_PROBES",
    "RAISE_INTERVAL",
    "SEARCH_PRECISION",
    "PMTUState",
    "PathMTUSearch",
    "route_mtu",
    "udp_payload_limit",
]

BASE_DATAGRAM_SIZE = 1200
"""The size every QUIC path carries (RFC 9000 section 14)."""

MAX_PROBES = 3
"""Probes lost in a row at one size before it is given up on (RFC 8899 MAX_PROBES)."""

SEARCH_PRECISION = 20
"""The search stops once the largest proved and smallest failed sizes are this close."""

RAISE_INTERVAL = 600.0
"""Seconds after a search ended below the ceiling before it runs again
(RFC 8899 PMTU_RAISE_TIMER)."""

BLACK_HOLE_RETRY = 60.0
"""Seconds after falling back to the base size before searching again."""

_IP_MTU = getattr(socket, "IP_MTU", 14)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
_IPV4_UDP_OVERHEAD = 28
_IPV6_UDP_OVERHEAD = 48


class PMTUState(enum.Enum):
    """Where a search is (the names of RFC 8899 section 5.2)."""

    DISABLED = "disabled"
    """Not started yet (handshake), or discovery is off."""
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search_complete"
    ERROR = "error"
    """The path stopped carrying the proved size: back at the base size for a while."""


class PathMTUSearch:
    """One connection's search for the largest datagram its path carries.

    ``ceiling`` is the largest size worth trying (at least ``base``). Sizes are UDP
    payload sizes, as QUIC counts them.
    """

    def __init__(self, *, ceiling: int, base: int = BASE_DATAGRAM_SIZE) -> None:
        if base < BASE_DATAGRAM_SIZE:
            raise ValueError(f"base must be at least {BASE_DATAGRAM_SIZE}, got {base}")
        self.base = base
        self.ceiling = max(ceiling, base)
        self.size = base
        """The largest size proved (what the connection sends at)."""
        self.state = PMTUState.DISABLED
        self.probes_sent = 0
        self.probes_lost = 0
        self._failed = self.ceiling + 1
        """The smallest size given up on in this search (exclusive upper bound)."""
        self._candidate: int | None = None
        self._losses = 0
        """Probes at ``_candidate`` lost in a row."""
        self._in_flight: int | None = None
        """The size of the probe awaiting its fate (one at a time)."""
        self._resume_at: float | None = None

    def start(self) -> None:
        """The handshake is confirmed: begin searching (a no-op once started)."""
        if self.state is PMTUState.DISABLED:
            self._begin_search()

    def probe_size(self, now: float) -> int | None:
        """The size to probe at now, or None (nothing to probe, or a probe in flight)."""
        if self._in_flight is not None:
            return None
        if self.state is not PMTUState.SEARCHING:
            if self._resume_at is None or now < self._resume_at:
                return None
            self._resume_at = None
            self._begin_search()
        return self._candidate

    def probe_sent(self, size: int) -> None:
        self._in_flight = size
        self.probes_sent += 1

    def probe_acked(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes was acknowledged: the path carries it."""
        if size != self._in_flight:
            return  # from before a black hole reset; ignore
        self._in_flight = None
        self._losses = 0
        if size > self.size:
            self.size = size
        self._next_candidate(now)

    def probe_lost(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes was declared lost."""
        if size != self._in_flight:
            return
        self._in_flight = None
        self.probes_lost += 1
        self._losses += 1
        if self._losses < MAX_PROBES:
            return  # try the same size again
        self._losses = 0
        self._failed = min(self._failed, size)
        self._next_candidate(now)

    def black_hole(self, now: float) -> bool:
        """Packets of the proved size stopped getting through: fall back to the base
        size. Returns True if the size changed."""
        if self.size <= self.base:
            return False
        self.size = self.base
        self.state = PMTUState.ERROR
        self._in_flight = None
        self._candidate = None
        self._losses = 0
        self._resume_at = now + BLACK_HOLE_RETRY
        return True

    def new_path(self) -> None:
        """The peer is now reached at another address: nothing proved on the old path
        holds (RFC 9000 section 14.2.1). Back to the base size, and search again."""
        self.size = self.base
        self._in_flight = None
        self._resume_at = None
        if self.state is not PMTUState.DISABLED:
            self._begin_search()

    # -- the search ------------------------------------------------------------------

    def _begin_search(self) -> None:
        self._failed = self.ceiling + 1
        self._losses = 0
        if self.size >= self.ceiling:
            self.state = PMTUState.SEARCH_COMPLETE
            self._candidate = None
            return
        self.state = PMTUState.SEARCHING
        self._candidate = self.ceiling

    def _next_candidate(self, now: float) -> None:
        low, high = self.size, self._failed  # proved, first size given up on
        if high - low <= SEARCH_PRECISION or low >= self.ceiling:
            self.state = PMTUState.SEARCH_COMPLETE
            self._candidate = None
            if low < self.ceiling:
                self._resume_at = now + RAISE_INTERVAL
            return
        self._candidate = (low + high) // 2


def udp_payload_limit(mtu: int, family: int) -> int:
    """The largest UDP payload an IP packet of ``mtu`` bytes carries."""
    overhead = _IPV6_UDP_OVERHEAD if family == socket.AF_INET6 else _IPV4_UDP_OVERHEAD
    return mtu - overhead


def route_mtu(host: str, port: int) -> int | None:
    """The largest UDP payload the local route towards ``(host, port)`` carries, from
    the kernel (Linux ``IP_MTU`` on a connected socket: the outgoing device's MTU, or a
    smaller path MTU the kernel has learned). None where the platform cannot tell, and
    for anything but an IP address (names are never resolved here).

    Connecting a UDP socket sends nothing; this costs a few system calls."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name (a relay's virtual address): never resolve it here
    try:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            if family == socket.AF_INET6:
                mtu = sock.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    family = socket.AF_INET  # an IPv4 packet on the wire
            else:
                mtu = sock.getsockopt(socket.IPPROTO_IP, _IP_MTU)
    except (OSError, ValueError):
        return None
    if not isinstance(mtu, int) or mtu <= 0:
        return None
    return udp_payload_limit(mtu, family)
