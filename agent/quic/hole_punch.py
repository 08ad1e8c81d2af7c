"""Hole punching through a signalling node, with the relay as the fallback.

A wants B; both hold a connection to S (e.g. a seed). A calls
``S.NodesHolePunchSignal(target=B)``. S forwards the request to B over B's connection to
S (``HolePunchSignalRequest.requester`` = A's node id and A's address *as S sees it*)
and answers A with A's address as S saw it and B's address as S sees it. Then:

* B (:meth:`HolePuncher.punch_towards`) sends punch datagrams from its one socket to A's
  public address — several, with exponential backoff, for at most ``punch_duration``,
  stopping early once A is connected — which opens B's NAT for A's packets;
* A (:meth:`HolePuncher.connect`) dials B's public address from its own socket (which
  opens A's NAT for B's packets): attempts with growing timeouts and backoff, for at
  most ``dial_timeout`` in all;
* if no attempt succeeds (a symmetric NAT maps A or B to another public port per
  destination), A reaches B through S's relay (:mod:`agent.quic.relay`) when
  ``relay_fallback`` is set.

Every outcome is a :class:`HolePunchResult` (kept in :attr:`HolePuncher.results`, passed
to ``on_result``, logged) and counted in :class:`HolePunchStats`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from agent.domains.nodes import NodeAddress
from agent.nodeid import NodeId
from agent.servicer import RequesterAddress, node_id_to_proto
from protos.agent.v1 import agent_service_pb2 as pb

from .node_connection import ConnectionFailedError, NodeConnection

if TYPE_CHECKING:
    from .agent import Agent

__all__ = [
    "HolePunchConfig",
    "HolePunchError",
    "HolePunchResult",
    "HolePunchStats",
    "HolePuncher",
]

_log = logging.getLogger(__name__)
_RESULTS_KEPT = 64

Method = Literal["existing", "direct", "relay"]


class HolePunchError(ConnectionFailedError):
    """Neither a direct connection after punching nor the relay reached the node."""

    code = "hole_punch_failed"


@dataclass(frozen=True, slots=True)
class HolePunchConfig:
    """Hole punching settings (seconds, counts).

    * ``punch_interval`` — first gap between punch datagrams; doubles up to
      ``punch_max_interval``.
    * ``punch_duration`` — the target punches for at most this long.
    * ``dial_attempt_timeout`` — the requester's first direct dial attempt; each next one
      gets ``dial_backoff`` times longer; all of them end within ``dial_timeout``.
    * ``relay_fallback`` — reach the node through the signalling node's relay when
      punching fails.
    * ``relay_timeout`` — the relayed dial gives up after this long.
    * ``max_concurrent_punches`` — punch requests served at once (more are refused, so
      nobody can make this node spray datagrams).
    """

    punch_interval: float = 0.05
    punch_max_interval: float = 1.0
    punch_duration: float = 8.0
    dial_attempt_timeout: float = 1.0
    dial_backoff: float = 1.5
    dial_timeout: float = 6.0
    relay_fallback: bool = True
    relay_timeout: float = 10.0
    max_concurrent_punches: int = 16

    def __post_init__(self) -> None:
        for name in (
            "punch_interval",
            "punch_max_interval",
            "punch_duration",
            "dial_attempt_timeout",
            "dial_timeout",
            "relay_timeout",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not self.dial_backoff >= 1:
            raise ValueError("dial_backoff must be >= 1")
        limit = self.max_concurrent_punches
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrent_punches must be a positive int, got {limit!r}")


@dataclass(frozen=True, slots=True)
class HolePunchResult:
    """How a connection to ``node_id`` through ``signaller`` came about (or didn't)."""

    node_id: NodeId
    signaller: NodeId
    ok: bool
    method: Method | None
    """``"direct"`` after a punch, ``"relay"``, ``"existing"``; None on failure."""
    host: str = ""
    port: int = 0
    """Where the node was reached (a ``relay-….invalid`` address when relayed)."""
    attempts: int = 0
    """Direct dial attempts made."""
    own_public_address: NodeAddress | None = None
    """This node's address as the signaller saw it."""
    target_public_address: NodeAddress | None = None
    error: str = ""


@dataclass(slots=True)
class HolePunchStats:
    signals_sent: int = 0
    direct_ok: int = 0
    direct_failed: int = 0
    relayed: int = 0
    failed: int = 0
    punches_started: int = 0
    punches_refused: int = 0
    punch_datagrams_sent: int = 0
    punch_datagrams_received: int = 0
    peers_punched: list[str] = field(default_factory=list)


class HolePuncher:
    """Both sides of hole punching for one :class:`~agent.quic.Agent`."""

    def __init__(
        self,
        agent: Agent,
        config: HolePunchConfig | None = None,
        *,
        on_result: Callable[[HolePunchResult], None] | None = None,
    ) -> None:
        self._agent = agent
        self.config = config if config is not None else HolePunchConfig()
        self.on_result = on_result
        self.results: deque[HolePunchResult] = deque(maxlen=_RESULTS_KEPT)
        self.stats = HolePunchStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- requester (A) ---------------------------------------------------------------

    async def connect(self, target: NodeId, signaller: NodeId) -> NodeConnection:
        """A connection to ``target``: the open one, else punched through ``signaller``
        (which this node must be able to connect to), else relayed by it.

        Raises :class:`HolePunchError` when nothing worked (the result says why)."""
        agent = self._agent
        manager = agent.connection_manager
        existing = manager.reusable(target)
        if existing is not None:
            existing.touch()
            self._record(
                HolePunchResult(target, signaller, True, "existing", existing.host, existing.port)
            )
            return existing
        config = self.config
        try:
            s_conn = await agent.connect(signaller)
            self.stats.signals_sent += 1
            reply = await s_conn.stub.NodesHolePunchSignal(
                pb.HolePunchSignalRequest(target=node_id_to_proto(target), transports=["quic"]),
                timeout=manager.config.connect_timeout,
            )
        except Exception as exc:  # signaller unknown or unreachable, or it refused
            error = f"signalling through {signaller} failed: {type(exc).__name__}: {exc}"
            self.stats.failed += 1
            self._record(HolePunchResult(target, signaller, False, None, error=error))
            raise HolePunchError(f"cannot reach node {target}: {error}") from exc
        own = _address(reply.requester_address) if reply.HasField("requester_address") else None
        public = _address(reply.target_address) if reply.HasField("target_address") else None
        attempts = 0
        error = "the signalling node does not know the target's address"
        if public is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + config.dial_timeout
            attempt_timeout = config.dial_attempt_timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                attempts += 1
                try:
                    conn = await manager.get_connection(
                        target,
                        public.host,
                        public.port,
                        dial_timeout=min(attempt_timeout, remaining),
                    )
                except ConnectionFailedError as exc:
                    error = f"direct dial to {public.host}:{public.port} failed: {exc}"
                    attempt_timeout *= config.dial_backoff
                    continue
                self.stats.direct_ok += 1
                self._record(
                    HolePunchResult(
                        target,
                        signaller,
                        True,
                        "direct",
                        conn.host,
                        conn.port,
                        attempts,
                        own,
                        public,
                    )
                )
                return conn
            self.stats.direct_failed += 1
            _log.info("hole punch to %s via %s failed: %s", target, signaller, error)
        if config.relay_fallback and agent.relay.enabled:
            try:
                path = agent.relay.path_to(signaller, target)
                conn = await manager.get_connection(
                    target, path.host, path.port, dial_timeout=config.relay_timeout
                )
            except (ConnectionFailedError, RuntimeError) as exc:
                error = f"{error}; relay through {signaller} failed: {exc}"
            else:
                self.stats.relayed += 1
                self._record(
                    HolePunchResult(
                        target,
                        signaller,
                        True,
                        "relay",
                        conn.host,
                        conn.port,
                        attempts,
                        own,
                        public,
                        error,
                    )
                )
                return conn
        self.stats.failed += 1
        self._record(
            HolePunchResult(
                target,
                signaller,
                False,
                None,
                attempts=attempts,
                own_public_address=own,
                target_public_address=public,
                error=error,
            )
        )
        raise HolePunchError(f"cannot reach node {target} through {signaller}: {error}")

    # -- target (B) ------------------------------------------------------------------

    async def punch_towards(self, requester: RequesterAddress, signaller: NodeId) -> None:
        """The servicer's ``hole_punch_target``: punch towards the requester (background)."""
        if self._closed:
            raise RuntimeError("hole puncher stopped")
        if len(self._tasks) >= self.config.max_concurrent_punches:
            self.stats.punches_refused += 1
            _log.warning("not punching towards %s: too many punches running", requester.node_id)
            return
        self.stats.punches_started += 1
        self.stats.peers_punched.append(str(requester.node_id))
        del self.stats.peers_punched[:-_RESULTS_KEPT]
        _log.info(
            "punching towards %s at %s:%d (asked by %s)",
            requester.node_id,
            requester.address.host,
            requester.address.port,
            signaller,
        )
        task = asyncio.get_running_loop().create_task(self._punch(requester))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _punch(self, requester: RequesterAddress) -> None:
        agent = self._agent
        config = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.punch_duration
        interval = config.punch_interval
        host, port = requester.address.host, requester.address.port
        while loop.time() < deadline and agent.running:
            if agent.connection_manager.get_existing(requester.node_id) is not None:
                return  # the requester got through
            try:
                agent.socket.send_punch(host, port)
            except OSError as exc:
                _log.info("cannot punch towards %s:%d: %s", host, port, exc)
                return
            self.stats.punch_datagrams_sent += 1
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
            interval = min(interval * 2, config.punch_max_interval)

    def punch_received(self, data: bytes, peer: tuple[str, int]) -> None:
        """The socket's ``on_unrouted``: count punch datagrams that reached us."""
        self.stats.punch_datagrams_received += 1

    async def close(self) -> None:
        """Stop punching; idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _record(self, result: HolePunchResult) -> None:
        self.results.append(result)
        if result.ok:
            _log.info(
                "reached %s (%s) at %s:%d", result.node_id, result.method, result.host, result.port
            )
        callback = self.on_result
        if callback is not None:
            try:
                callback(result)
            except Exception:
                _log.exception("hole punch on_result callback failed")


def _address(message: object) -> NodeAddress | None:
    host = getattr(message, "host", "")
    port = getattr(message, "port", 0)
    transports = tuple(getattr(message, "transports", ()))
    try:
        return NodeAddress(host=host, port=int(port), transports=transports)
    except ValueError:
        return None
