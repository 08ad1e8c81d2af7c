"""Relaying for nodes that cannot reach each other directly (symmetric NAT).

Every agent runs a :class:`RelayService` on its connections' QUIC DATAGRAM frames
(``QUICConfig(datagrams=True)``). Two roles:

* **Endpoint** (A and B): a :class:`~quic_rpc.quic.relay.RelayPath` per (relay node,
  peer node) gives the socket a virtual address for the peer. A dials B on it; the
  A↔B QUIC connection is an ordinary mutual-TLS connection end to end, whose packets
  (fragmented to fit) ride in DATAGRAM frames on A's connection to the relay. B gets
  them from the relay on *its* connection to the relay and accepts the connection
  from the virtual address of A.
* **Relay** (S, with ``RelayConfig(serve=True)``): swaps the destination for the
  source and forwards each frame from the source's connection onto the destination's.
  It sees only encrypted QUIC packets. It is bounded: a token bucket per source node
  (bandwidth), at most ``max_sessions_per_peer`` destinations per source and
  ``max_sessions`` (source, destination) pairs at once; idle pairs expire.

Frames (one per DATAGRAM)::

    0x01 | destination node id (32 bytes) | fragment     endpoint → relay
    0x02 | source node id (32 bytes)      | fragment     relay → endpoint
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agent.nodeid import NODE_ID_LENGTH, NodeId
from quic_rpc.quic import QUICConfig, QUICSocket
from quic_rpc.quic.relay import RelayPath, is_relay_host

from .node_connection import NodeConnection

__all__ = [
    "DELIVER",
    "FORWARD",
    "RelayConfig",
    "RelayService",
    "RelayStats",
    "TokenBucket",
    "is_relay_host",
]

_log = logging.getLogger(__name__)

FORWARD: Final = 0x01
DELIVER: Final = 0x02
_HEADER: Final = 1 + NODE_ID_LENGTH
_DATAGRAM_OVERHEAD: Final = 64
"""What ``QUICConnection.send_datagram`` keeps free of the datagram size."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Relay settings (bytes, seconds, counts).

    * ``serve`` — forward frames for other nodes (seed/signalling nodes).
    * ``bandwidth`` / ``burst`` — token bucket per source node at the relay.
    * ``max_sessions_per_peer`` — destinations one source may use at once.
    * ``max_sessions`` — (source, destination) pairs the relay carries at once.
    * ``session_idle`` — a pair with no frame for this long no longer counts.
    * ``max_paths`` — relayed peers an endpoint keeps paths for.
    * ``capture_bytes`` — keep up to this many forwarded bytes for inspection
      (debugging and tests; 0 keeps none). A digest of everything forwarded is always kept.
    """

    serve: bool = False
    bandwidth: float = 4_000_000.0
    burst: int = 512 * 1024
    max_sessions_per_peer: int = 8
    max_sessions: int = 256
    session_idle: float = 60.0
    max_paths: int = 64
    capture_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("bandwidth", "session_idle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name in ("burst", "max_sessions_per_peer", "max_sessions", "max_paths"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        value = self.capture_bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"capture_bytes must be an int >= 0, got {value!r}")


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` at once; time is passed in."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, size: int, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if size > self._tokens:
            return False
        self._tokens -= size
        return True


@dataclass(slots=True)
class RelayStats:
    """Counters of one node's relay service (both roles)."""

    forwarded_frames: int = 0
    forwarded_bytes: int = 0
    dropped_not_serving: int = 0
    dropped_no_route: int = 0
    dropped_rate: int = 0
    dropped_session_limit: int = 0
    dropped_malformed: int = 0
    dropped_path_limit: int = 0
    delivered_frames: int = 0
    sent_frames: int = 0


class RelayService:
    """One node's relay endpoint and (if configured) relay; see the module docstring."""

    def __init__(
        self,
        socket: QUICSocket,
        node_id: NodeId,
        get_connection: Callable[[NodeId], NodeConnection | None],
        quic_config: QUICConfig,
        config: RelayConfig | None = None,
        *,
        clock: Callable[[], float],
    ) -> None:
        """``get_connection(node_id)``: the open connection to a node, if any."""
        self._socket = socket
        self._node_id = node_id
        self._get_connection = get_connection
        # fragments must fit the carrier connection from its first packet, before path
        # MTU discovery has proved anything larger
        size = quic_config.guaranteed_datagram_size
        self._fragment_size = size - _DATAGRAM_OVERHEAD - _HEADER
        self.enabled = quic_config.datagrams
        self.config = config if config is not None else RelayConfig()
        self._clock = clock
        self._paths: dict[tuple[NodeId, NodeId], RelayPath] = {}
        self._buckets: dict[NodeId, TokenBucket] = {}
        self._sessions: OrderedDict[tuple[NodeId, NodeId], float] = OrderedDict()
        self._digest = hashlib.sha256()
        self._capture = bytearray()
        self.stats = RelayStats()
        self._closed = False

    def __repr__(self) -> str:
        role = "relay" if self.config.serve else "endpoint"
        return f"<RelayService {role} paths={len(self._paths)} sessions={len(self._sessions)}>"

    # -- wiring ----------------------------------------------------------------------

    def attach(self, conn: NodeConnection) -> None:
        """Take the DATAGRAM frames of ``conn`` (the manager calls this for each one)."""
        if not self.enabled:
            return
        peer = conn.node_id
        conn.quic_connection.on_datagram = lambda data: self._on_datagram(peer, data)

    def close(self) -> None:
        """Remove every relay path from the socket; idempotent."""
        self._closed = True
        for path in self._paths.values():
            path.close()
        self._paths.clear()
        self._sessions.clear()
        self._buckets.clear()

    # -- endpoint --------------------------------------------------------------------

    def path_to(self, relay: NodeId, peer: NodeId) -> RelayPath:
        """The relay path to ``peer`` through ``relay`` (opened on first use)."""
        if not self.enabled:
            raise RuntimeError("relaying needs QUIC datagrams (QUICConfig(datagrams=True))")
        if self._closed:
            raise RuntimeError("the relay service is closed")
        key = (relay, peer)
        path = self._paths.get(key)
        if path is not None:
            return path
        if len(self._paths) >= self.config.max_paths:
            self._prune_paths()
        if len(self._paths) >= self.config.max_paths:
            raise RuntimeError(f"at most {self.config.max_paths} relay paths")
        header = bytes([FORWARD]) + peer.raw

        def send_fragment(fragment: bytes) -> None:
            conn = self._get_connection(relay)
            if conn is None:
                raise ConnectionError(f"no connection to relay {relay}")
            conn.quic_connection.send_datagram(header + fragment)
            self.stats.sent_frames += 1

        label = f"{peer.raw[:8].hex()}-{relay.raw[:4].hex()}"
        path = RelayPath(self._socket, label, send_fragment, fragment_size=self._fragment_size)
        path.open()
        self._paths[key] = path
        return path

    def _prune_paths(self) -> None:
        """Close the paths no connection uses any more."""
        in_use = {conn.remote_address for conn in self._socket.connections}
        for key, path in list(self._paths.items()):
            if path.address not in in_use:
                path.close()
                del self._paths[key]

    @property
    def paths(self) -> list[RelayPath]:
        return list(self._paths.values())

    # -- relay -----------------------------------------------------------------------

    @property
    def forwarded_digest(self) -> str:
        """sha256 of every fragment payload forwarded, in order (hex)."""
        return self._digest.hexdigest()

    @property
    def captured(self) -> bytes:
        """The first ``config.capture_bytes`` forwarded payload bytes."""
        return bytes(self._capture)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def _on_datagram(self, source: NodeId, data: bytes) -> None:
        if self._closed or len(data) <= _HEADER:
            self.stats.dropped_malformed += 1
            return
        kind = data[0]
        try:
            other = NodeId(bytes(data[1:_HEADER]))
        except ValueError:
            self.stats.dropped_malformed += 1
            return
        if kind == FORWARD:
            self._forward(source, other, data)
        elif kind == DELIVER:
            self._deliver(source, other, data[_HEADER:])
        else:
            self.stats.dropped_malformed += 1

    def _forward(self, source: NodeId, destination: NodeId, data: bytes) -> None:
        config = self.config
        if not config.serve:
            self.stats.dropped_not_serving += 1
            return
        if destination in (source, self._node_id):
            self.stats.dropped_malformed += 1
            return
        now = self._clock()
        if not self._admit(source, destination, now):
            self.stats.dropped_session_limit += 1
            return
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(config.bandwidth, config.burst, now)
        if not bucket.take(len(data), now):
            self.stats.dropped_rate += 1
            return
        conn = self._get_connection(destination)
        if conn is None:
            self.stats.dropped_no_route += 1
            return
        payload = data[_HEADER:]
        try:
            conn.quic_connection.send_datagram(bytes([DELIVER]) + source.raw + payload)
        except Exception as exc:
            self.stats.dropped_no_route += 1
            _log.debug("relay to %s failed: %s", destination, exc)
            return
        self.stats.forwarded_frames += 1
        self.stats.forwarded_bytes += len(payload)
        self._digest.update(payload)
        room = config.capture_bytes - len(self._capture)
        if room > 0:
            self._capture += payload[:room]

    def _admit(self, source: NodeId, destination: NodeId, now: float) -> bool:
        """Count the (source, destination) session; False if a limit forbids a new one."""
        key = (source, destination)
        sessions = self._sessions
        if key in sessions:
            sessions[key] = now
            sessions.move_to_end(key)
            return True
        cutoff = now - self.config.session_idle
        while sessions and next(iter(sessions.values())) < cutoff:
            sessions.popitem(last=False)
        if len(sessions) >= self.config.max_sessions:
            return False
        if sum(1 for s, _ in sessions if s == source) >= self.config.max_sessions_per_peer:
            return False
        # Sessions are also limited from the other end: a node can't be flooded by peers.
        if sum(1 for _, d in sessions if d == destination) >= self.config.max_sessions_per_peer:
            return False
        sessions[key] = now
        return True

    # -- endpoint receive ------------------------------------------------------------

    def _deliver(self, relay: NodeId, source: NodeId, fragment: bytes) -> None:
        key = (relay, source)
        path = self._paths.get(key)
        if path is None:
            try:
                path = self.path_to(relay, source)
            except RuntimeError:
                self.stats.dropped_path_limit += 1
                return
            _log.info("relayed session from %s through %s", source, relay)
        self.stats.delivered_frames += 1
        path.receive(fragment)
