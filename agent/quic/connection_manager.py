"""NodeConnectionManager: at most one live NodeConnection per peer, bounded and expiring.

* ``await get_connection(node_id, host, port)`` returns the open connection to the node,
  dialling if there is none; concurrent callers for the same node share one dial.
* Connections the peers dial in are registered too (:meth:`register_incoming`, the
  QUICServer's ``on_connection``): calling such a node back reuses that connection.
* When two nodes dial each other at once, both keep the same one of the two connections:
  the one dialled by the node with the smaller id. The other is closed by its dialler
  (after its in-flight calls, within ``close_grace``); a newer incoming connection from
  the same node replaces an older incoming one (the peer reconnected). While our dial
  that will win is under way, calls wait for it rather than start on the node's
  connection, which the node refuses new streams on once it sees ours.
* A connection with no stream open for ``idle_ttl`` seconds is closed. Each connection
  has one timer, re-armed lazily, so idle connections cost no CPU in between.
* At most ``max_connections`` (held + being dialled). A new one evicts the least
  recently used idle connection; if every connection is busy the dial fails with
  :class:`ConnectionLimitReachedError`.
* Idle expiry and eviction close a connection at once, in the same step that found no
  stream open on it, with code 0x2 (:meth:`NodeConnection.close_idle`): a call the peer
  started on it meanwhile (the two ends' timers are independent) was not processed, so
  the peer's RPC client sends it again, and its manager gives or dials a new
  connection for it. A connection on which the peer refuses a stream (it is closing
  it, or stopping) is retired: no longer handed out, closed once its calls are done
  (or, if the manager stops first, with the others under the stop's grace).
  Stubs of retired or so-closed connections keep working: their new calls go to the
  node's current connection (:meth:`successor`).
* ``await stop()`` cancels dials, closes every connection and leaves no task or timer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from agent.nodeid import NodeId
from quic_rpc.quic import QUICConfig, QUICConnection, QUICSocket, TLSCredentials
from quic_rpc.rpc import RPCClientConfig
from quic_rpc.streams import StreamHandler

from .node_connection import DEFAULT_CONNECT_TIMEOUT, NodeConnection, NodeConnectionError

__all__ = [
    "REFUSED_CONNECTION_CODE",
    "ConnectionLimitReachedError",
    "ConnectionManagerConfig",
    "ConnectionManagerError",
    "ConnectionManagerStoppedError",
    "NodeConnectionManager",
]

_log = logging.getLogger(__name__)

REFUSED_CONNECTION_CODE = 0x2
"""Close code for incoming connections the manager refuses (no room, stopping, no node
id): CONNECTION_REFUSED's value, so a dialler still handshaking gets
:class:`~agent.quic.ConnectRefusedError`."""


class ConnectionManagerError(NodeConnectionError):
    """Base of the connection manager's own errors."""

    code: ClassVar[str] = "connection_manager"


class ConnectionManagerStoppedError(ConnectionManagerError):
    """The manager is stopped (or stopped while the dial was under way)."""

    code = "connection_manager_stopped"


class ConnectionLimitReachedError(ConnectionManagerError):
    """``max_connections`` are held and all are busy: no idle one can be evicted."""

    code = "connection_limit_reached"


@dataclass(frozen=True, slots=True)
class ConnectionManagerConfig:
    """Connection manager settings (seconds, counts).

    * ``idle_ttl`` (60 s) — close a connection after this long without a stream open.
    * ``max_connections`` (64) — connections held plus dials in progress.
    * ``connect_timeout`` (10 s) — a dial gives up after this long.
    * ``close_grace`` (1 s) — on :meth:`NodeConnectionManager.stop`, in-flight calls get
      this long to finish before their connection closes under them.
    """

    idle_ttl: float = 60.0
    max_connections: int = 64
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    close_grace: float = 1.0

    def __post_init__(self) -> None:
        for name in ("idle_ttl", "connect_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        grace = self.close_grace
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise ValueError(f"close_grace must be >= 0 seconds, got {grace!r}")
        limit = self.max_connections
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_connections must be a positive int, got {limit!r}")


class NodeConnectionManager:
    """Owns this node's connections to other nodes, both the dialled and the accepted."""

    def __init__(
        self,
        socket: QUICSocket,
        credentials: TLSCredentials,
        *,
        quic_config: QUICConfig | None = None,
        config: ConnectionManagerConfig | None = None,
        stream_handler: StreamHandler | None = None,
        rpc_config: RPCClientConfig | None = None,
        node_id: NodeId | None = None,
        on_connection_added: Callable[[NodeConnection], None] | None = None,
    ) -> None:
        """``credentials``: our key and chain (the verifier is set per dial).
        ``on_connection_added`` is called with each connection the manager starts holding
        (dialled or incoming).
        ``stream_handler`` serves the calls peers make over connections we dialled.
        ``node_id``: this node's id, which settles simultaneous dials (without it, the
        connection registered first stays)."""
        self._node_id = node_id
        self._socket = socket
        self._credentials = credentials
        self._quic_config = quic_config
        self.config = config if config is not None else ConnectionManagerConfig()
        self._stream_handler = stream_handler
        self._rpc_config = rpc_config
        self._on_connection_added = on_connection_added
        self._loop = asyncio.get_running_loop()
        # most recently used last
        self._connections: OrderedDict[NodeId, NodeConnection] = OrderedDict()
        self._dials: dict[NodeId, asyncio.Task[NodeConnection]] = {}
        self._timers: dict[NodeId, asyncio.TimerHandle] = {}
        # connections no longer held, each closing in a task of its own
        self._closing: dict[asyncio.Task[None], NodeConnection] = {}
        self._stopped = False
        self.dials_started = 0
        """How many dials (handshakes) this manager has started."""
        self.expired = 0
        self.evicted = 0

    def __repr__(self) -> str:
        return (
            f"<NodeConnectionManager connections={len(self._connections)} "
            f"dialling={len(self._dials)}>"
        )

    # -- looking ---------------------------------------------------------------------

    @property
    def connections(self) -> list[NodeConnection]:
        """Open connections, least recently used first."""
        return [c for c in self._connections.values() if not c.closed]

    def __len__(self) -> int:
        return len(self.connections)

    def __iter__(self) -> Iterator[NodeConnection]:
        return iter(self.connections)

    def get_existing(self, node_id: NodeId) -> NodeConnection | None:
        """The open connection to ``node_id``, if any (without dialling)."""
        conn = self._connections.get(node_id)
        if conn is None:
            return None
        if not conn.usable:
            self._forget(node_id, conn)
            return None
        return conn

    def reusable(self, node_id: NodeId) -> NodeConnection | None:
        """The open connection to ``node_id`` that a new call may start on now: None if
        there is none, or if it is the node's and our own dial, which both ends keep, is
        under way (the node refuses new streams on its connection once it sees ours).
        :meth:`get_connection` then waits for that dial."""
        existing = self.get_existing(node_id)
        if existing is None:
            return None
        if node_id in self._dials and self._dial_wins(existing):
            return None
        return existing

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- dialling --------------------------------------------------------------------

    async def get_connection(
        self, node_id: NodeId, host: str, port: int, *, dial_timeout: float | None = None
    ) -> NodeConnection:
        """The open connection to ``node_id``, or a new one dialled to ``host:port``.

        An open connection is reused whatever address it was made on (the node is the
        same: its id was verified). Concurrent calls for one node share one dial.
        Raises :class:`~agent.quic.ConnectionFailedError` subclasses if the dial fails,
        :class:`ConnectionLimitReachedError` if no slot can be freed and
        :class:`ConnectionManagerStoppedError` once stopped. ``dial_timeout`` bounds a new
        dial (default ``config.connect_timeout``).
        """
        self._check_running()
        existing = self.get_existing(node_id)
        dial = self._dials.get(node_id)
        if existing is not None:
            if dial is None or not self._dial_wins(existing):
                existing.touch()
                return existing
            # The node dialled us while our own dial to it is under way, and ours is the
            # one both ends keep: the node closes its connection (refusing new streams on
            # it) the moment it sees ours, so a call must not start on it. Wait for ours.
            try:
                return await self._await_dial(dial)
            except ConnectionManagerError:
                raise
            except Exception:
                fallback = self.get_existing(node_id)
                if fallback is None:
                    raise
                fallback.touch()  # our dial failed, so the node's connection stays
                return fallback
        if dial is None:
            self._make_room(extra=1)
            dial = self._loop.create_task(self._dial(node_id, host, port, dial_timeout))
            self._dials[node_id] = dial
            dial.add_done_callback(functools.partial(self._dial_done, node_id))
        return await self._await_dial(dial)

    async def _await_dial(self, dial: asyncio.Task[NodeConnection]) -> NodeConnection:
        try:
            return await asyncio.shield(dial)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if dial.cancelled() and (current is None or not current.cancelling()):
                raise ConnectionManagerStoppedError(
                    "the connection manager stopped while dialling"
                ) from None
            raise

    async def _dial(
        self, node_id: NodeId, host: str, port: int, dial_timeout: float | None = None
    ) -> NodeConnection:
        self.dials_started += 1
        conn = await NodeConnection.connect(
            node_id,
            host,
            port,
            self._socket,
            self._credentials,
            config=self._quic_config,
            timeout=self.config.connect_timeout if dial_timeout is None else dial_timeout,
            stream_handler=self._stream_handler,
            rpc_config=self._rpc_config,
            on_activity=self._on_activity,
            successor=self.successor,
            on_refused=self._on_refused,
        )
        if self._stopped:
            await conn.close()
            raise ConnectionManagerStoppedError("the connection manager stopped while dialling")
        raced = self.get_existing(node_id)
        if raced is not None and not self._prefer(conn, raced):
            # the node dialled us meanwhile and its connection is the one both keep
            _log.debug("simultaneous dial: keeping %r, closing our %r", raced, conn)
            conn.retire()
            self._close_later(conn, self.config.close_grace)
            raced.touch()
            return raced
        self._add(conn)  # replaces an incoming loser, which its dialler closes
        return conn

    def _dial_done(self, node_id: NodeId, task: asyncio.Task[NodeConnection]) -> None:
        if self._dials.get(node_id) is task:
            del self._dials[node_id]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it through the shield

    # -- incoming --------------------------------------------------------------------

    def register_incoming(self, connection: QUICConnection) -> NodeConnection | None:
        """Track a connection a peer dialled (use as the QUICServer's ``on_connection``).

        Returns the NodeConnection now held for that peer, or None if the connection was
        refused (manager stopped, or every slot busy: it is then closed).
        """
        if self._stopped:
            connection.close(REFUSED_CONNECTION_CODE, "node shutting down")
            return None
        try:
            conn = NodeConnection.incoming(
                connection,
                rpc_config=self._rpc_config,
                on_activity=self._on_activity,
                successor=self.successor,
                on_refused=self._on_refused,
            )
        except NodeConnectionError as exc:
            _log.warning("refusing %r: %s", connection, exc)
            connection.close(REFUSED_CONNECTION_CODE, "no node identity")
            return None
        existing = self.get_existing(conn.node_id)
        if existing is not None:
            if not self._prefer(conn, existing):
                # the one held stays; the new one still serves its dialler's calls
                # until the dialler closes it as the loser
                return existing
            _log.debug("incoming %r replaces %r", conn, existing)
            self._forget(existing.node_id, existing)
            existing.retire()
            if existing.direction == "outgoing":
                self._close_later(existing, self.config.close_grace)
            self._add(conn)
            return conn
        try:
            self._make_room(extra=1)
        except ConnectionLimitReachedError as exc:
            _log.warning("refusing incoming %r: %s", connection, exc)
            connection.close(REFUSED_CONNECTION_CODE, "too many connections")
            return None
        self._add(conn)
        return conn

    async def successor(self, old: NodeConnection) -> NodeConnection:
        """The connection that takes over from ``old`` (retired, or closed as refusing)
        for new calls: the node's held connection, else a new dial to the address ``old``
        was on — with :meth:`get_connection`'s rules (shared dials, a winning dial under
        way is waited for, bounds). The node id is the same: it is verified as ever."""
        if self._connections.get(old.node_id) is old:
            self._forget(old.node_id, old)
        conn = await self.get_connection(old.node_id, old.host, old.port)
        if conn is old:  # unreachable: get_existing drops connections that are not usable
            raise ConnectionManagerError(f"no other connection to node {old.node_id}")
        return conn

    def _on_refused(self, conn: NodeConnection) -> None:
        """The peer refused a stream on ``conn`` (it is closing it, or stopping): hand it
        out no more, and close it once the calls on it are done."""
        if self._connections.get(conn.node_id) is conn:
            self._forget(conn.node_id, conn)
        if not self._stopped:
            self._close_later(conn, None)

    def note_incoming_stream(self, node_id: object) -> None:
        """Mark the connection to ``node_id`` used (a peer opened a stream on it)."""
        if isinstance(node_id, NodeId):
            conn = self._connections.get(node_id)
            if conn is not None and not conn.closed:
                conn.touch()

    # -- bookkeeping -----------------------------------------------------------------

    def _prefer(self, new: NodeConnection, held: NodeConnection) -> bool:
        """Whether ``new`` should replace ``held`` (two connections to one peer)."""
        if new.direction == held.direction:
            return new.direction == "incoming"  # the peer reconnected: newest wins
        if self._node_id is None:
            return False
        # both ends keep the connection dialled by the smaller node id
        dialler = self._node_id if new.direction == "outgoing" else new.node_id
        other = new.node_id if new.direction == "outgoing" else self._node_id
        return dialler < other

    def _dial_wins(self, held: NodeConnection) -> bool:
        """Whether a connection we are dialling now will replace ``held``."""
        if held.direction == "outgoing" or self._node_id is None:
            return False
        return self._node_id < held.node_id

    def _check_running(self) -> None:
        if self._stopped:
            raise ConnectionManagerStoppedError("the connection manager is stopped")

    def _add(self, conn: NodeConnection) -> None:
        self._connections[conn.node_id] = conn
        self._connections.move_to_end(conn.node_id)
        self._arm(conn.node_id, conn.last_used + self.config.idle_ttl)
        if self._on_connection_added is not None:
            try:
                self._on_connection_added(conn)
            except Exception:
                _log.exception("on_connection_added failed for %r", conn)

    def _on_activity(self, conn: NodeConnection) -> None:
        if self._connections.get(conn.node_id) is conn:
            self._connections.move_to_end(conn.node_id)

    def _forget(self, node_id: NodeId, conn: NodeConnection) -> None:
        if self._connections.get(node_id) is conn:
            del self._connections[node_id]
        timer = self._timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, node_id: NodeId, when: float) -> None:
        timer = self._timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        self._timers[node_id] = self._loop.call_at(when, self._check_expiry, node_id)

    def _check_expiry(self, node_id: NodeId) -> None:
        timer = self._timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()  # when not run by the timer itself
        conn = self._connections.get(node_id)
        if conn is None or self._stopped:
            return
        if conn.closed:
            self._forget(node_id, conn)
            return
        ttl = self.config.idle_ttl
        now = self._loop.time()
        if conn.active_streams:
            self._arm(node_id, now + ttl)  # busy: look again one ttl later
            return
        due = conn.last_used + ttl
        if now < due:
            self._arm(node_id, due)
            return
        # Closed right here, in the step that saw no stream open: had it waited for a
        # task, a call the peer starts meanwhile could begin to run and then be cut.
        # As it is, such a call is refused unprocessed and the peer sends it again.
        if not conn.close_idle():  # unreachable: no stream is open
            self._arm(node_id, now + ttl)
            return
        _log.debug("closed %r: idle for %.1fs", conn, now - conn.last_used)
        self.expired += 1
        self._forget(node_id, conn)
        self._close_later(conn)

    def _make_room(self, extra: int) -> None:
        """Ensure ``extra`` more connections fit, evicting LRU idle ones if needed."""
        for node_id, conn in list(self._connections.items()):
            if conn.closed:
                self._forget(node_id, conn)
        limit = self.config.max_connections
        while len(self._connections) + len(self._dials) + extra > limit:
            victim = next(
                ((n, c) for n, c in self._connections.items() if c.active_streams == 0), None
            )
            if victim is None:
                raise ConnectionLimitReachedError(
                    f"all {limit} connections are busy "
                    f"({len(self._connections)} open, {len(self._dials)} dialling)"
                )
            node_id, conn = victim
            _log.debug("evicting idle %r to make room", conn)
            self.evicted += 1
            self._forget(node_id, conn)
            conn.close_idle()  # at once, as in _check_expiry: nothing can start on it
            self._close_later(conn)

    def _close_later(self, conn: NodeConnection, grace: float | None = 0.0) -> None:
        task = self._loop.create_task(conn.close(grace))
        self._closing[task] = conn
        task.add_done_callback(self._closing_done)

    def _closing_done(self, task: asyncio.Task[None]) -> None:
        self._closing.pop(task, None)

    # -- closing ---------------------------------------------------------------------

    async def close_connection(self, node_id: NodeId) -> None:
        """Close the connection to ``node_id`` now, if there is one."""
        conn = self._connections.get(node_id)
        if conn is not None:
            self._forget(node_id, conn)
            await conn.close()

    async def stop(self, grace: float | None = None) -> None:
        """Cancel dials and close every connection (in-flight calls get ``grace``
        seconds, default ``config.close_grace``), the retired ones still closing too.
        Idempotent."""
        self._stopped = True
        grace = self.config.close_grace if grace is None else grace
        dials = list(self._dials.values())
        for dial in dials:
            dial.cancel()
        if dials:
            await asyncio.gather(*dials, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        # those closing already (retired) close by this grace too, if it ends sooner
        conns = [*self._connections.values(), *self._closing.values()]
        self._connections.clear()
        if conns:
            await asyncio.gather(*(c.close(grace) for c in conns), return_exceptions=True)
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
