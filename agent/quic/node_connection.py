"""NodeConnection on the QUIC stack: an RPC client over one verified QUIC connection.

The public surface mirrors :class:`legacy_grpc.NodeConnection` — ``connect(...)``,
``node_id``, ``host``, ``port``, ``stub`` (alias ``client``), ``health``, ``closed``,
``await close()`` — so code holding a connection does not care which stack made it.
``stub`` is the ``AgentService`` stub bound from the protobuf descriptor onto an
:class:`~quic_rpc.rpc.RPCClient`: same method names and call shapes as the generated
stub, with :class:`~quic_rpc.rpc.RPCError` for failed calls.

The remote node id is proven during the handshake: the peer's certificate chain goes
through :func:`agent.identity.node_verifier` with the node id we asked for. A different
node answering fails the dial with :class:`NodeIdMismatchError`; nothing stays open.

A connection also works in the other direction: one the peer dialled (server side of
the QUIC connection) is wrapped the same way with :meth:`NodeConnection.incoming`, and
its stub calls the peer back over that same QUIC connection.

Refused calls. Either end may close a connection it no longer wants (idle, evicted, the
loser of a simultaneous dial, the node stopping) while the other end starts a call on
it. The RPC client retries a call the peer refused before processing it
(``RPCClientConfig.transparent_retries``); this module makes the retry land on a usable
connection to the same node:

* a connection on which the peer refused a stream (REFUSED_STREAM) is *retired*: its
  manager stops handing it out and closes it once its calls are done;
* a connection closed with :data:`~quic_rpc.quic.REFUSED_STREAM_CODE` (0x2) was closed
  by an end that had no stream open on it (:meth:`NodeConnection.close_idle`): a call
  that got no response on it was not processed, and is retried;
* the stub of a retired connection, or of one closed that way, is still good: new calls
  (and the retries) go to the node's current connection, which the manager returns or
  dials (verified as the same node id). One closed otherwise (the node stopped or
  vanished, :meth:`close`) fails its calls with UNAVAILABLE as before.

No ``grpc`` import anywhere on this path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final, Literal

from agent.identity import NodeIdMismatchError as _IdentityMismatch
from agent.identity import NodeVerificationError, node_verifier
from agent.identity.verification import ChainElement
from agent.nodeid import NodeId
from migration.quic_grpc.descriptor import stub_class
from migration.quic_grpc.health import health_stub
from protos.agent.v1 import agent_service_pb2
from quic_rpc.quic import (
    REFUSED_STREAM_CODE,
    CertificateRejectedByPeerError,
    ConnectionLimitError,
    HandshakeError,
    HandshakeTimeoutError,
    PeerCertificateRejectedError,
    QUICConfig,
    QUICConnection,
    QUICSocket,
    TLSCredentials,
    connect,
)
from quic_rpc.rpc import RPCClient, RPCClientConfig
from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    StreamError,
    StreamHandler,
    StreamResetError,
)

__all__ = [
    "AGENT_SERVICE",
    "DEFAULT_CONNECT_TIMEOUT",
    "AgentServiceStub",
    "ConnectRefusedError",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "Direction",
    "NodeConnection",
    "NodeConnectionError",
    "NodeIdMismatchError",
    "PeerRejectedUsError",
    "PeerVerificationError",
]

_log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
AGENT_SERVICE: Final = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
AgentServiceStub: Final[type] = stub_class(AGENT_SERVICE)
"""``AgentServiceStub(rpc_client)``: the AgentService stub bound from its descriptor."""

Direction = Literal["outgoing", "incoming"]
Successor = Callable[["NodeConnection"], Awaitable["NodeConnection"]]
"""``successor(conn)``: the connection to ``conn``'s node that replaces it (its manager's)."""


class NodeConnectionError(Exception):
    """Base of the QUIC NodeConnection errors; each class has a stable ``code``."""

    code: ClassVar[str] = "node_connection"


class ConnectionFailedError(NodeConnectionError):
    """No connection to the node could be made; subclasses say why."""

    code = "connection_failed"


class ConnectTimeoutError(ConnectionFailedError):
    """The handshake did not complete in time (nobody answering, or packets lost)."""

    code = "connect_timeout"


class ConnectRefusedError(ConnectionFailedError):
    """The peer refused the connection (e.g. it is at its connection limit)."""

    code = "connect_refused"


class PeerVerificationError(ConnectionFailedError):
    """The peer's certificate chain does not prove a node identity."""

    code = "peer_verification_failed"


class PeerRejectedUsError(ConnectionFailedError):
    """The peer rejected our certificate chain."""

    code = "peer_rejected"


class NodeIdMismatchError(PeerVerificationError):
    """Another node answered than the one dialled (``expected`` vs ``actual``)."""

    code = "node_id_mismatch"

    def __init__(self, expected: NodeId, actual: NodeId) -> None:
        super().__init__(f"expected node {expected} but reached node {actual}")
        self.expected = expected
        self.actual = actual


class _RecordingVerifier:
    """``node_verifier(expected)`` that remembers why it rejected a chain."""

    def __init__(self, expected: NodeId) -> None:
        self._verify = node_verifier(expected)
        self.rejected: NodeVerificationError | None = None

    def __call__(self, chain: Sequence[ChainElement]) -> NodeId:
        try:
            return self._verify(chain)
        except NodeVerificationError as exc:
            self.rejected = exc
            raise


class _NodeOpener:
    """The StreamOpener of a NodeConnection's RPC client.

    Opens on the node connection's own QUIC connection while it is usable (marking it
    used). Once it is retired, or closed saying nothing unanswered was processed, it
    opens on the successor its manager gives for the same node instead. Hears from the
    RPC client which streams the peer refused (``stream_refused``).
    """

    __slots__ = ("_node",)

    def __init__(self, node: NodeConnection) -> None:
        self._node = node

    async def open_stream(self) -> ByteStream:
        node = self._node
        target = node if node.usable else await node._successor_or_self()
        target.touch()
        return await target._connection.open_stream()

    def stream_refused(self, stream: ByteStream, error: BaseException) -> bool:
        return self._node._stream_refused(stream, error)


class NodeConnection:
    """An open, verified QUIC connection to one peer node, with its RPC stubs."""

    def __init__(
        self,
        node_id: NodeId,
        connection: QUICConnection,
        *,
        direction: Direction,
        rpc_config: RPCClientConfig | None = None,
        on_activity: Callable[[NodeConnection], None] | None = None,
        successor: Successor | None = None,
        on_refused: Callable[[NodeConnection], None] | None = None,
    ) -> None:
        """Wrap an *established* connection whose peer proved ``node_id``.

        Use :meth:`connect` or :meth:`incoming` rather than calling this directly.
        ``on_activity`` is called when a call starts on it; ``successor`` gives the
        connection that takes over once this one is retired or refusing (without it,
        calls fail as the connection does); ``on_refused`` is called once when the peer
        refuses a stream on it (it is then retired).
        """
        if not isinstance(node_id, NodeId):
            raise TypeError(f"node_id must be a NodeId, not {type(node_id).__name__}")
        self._node_id = node_id
        self._connection = connection
        self._direction: Direction = direction
        self._on_activity = on_activity
        self._successor = successor
        self._on_refused = on_refused
        self._retired = False
        self._last_successor: NodeConnection | None = None
        self._loop = asyncio.get_running_loop()
        self.last_used = self._loop.time()
        """When a call last started on this connection (either way), in loop time."""
        host, port = connection.remote_address
        self._host = host
        self._port = port
        self._client = RPCClient(_NodeOpener(self), config=rpc_config)
        self._stub: Any = AgentServiceStub(self._client)
        self._health: Any = health_stub(self._client)
        # graceful closes under way, each with an earlier deadline than the one before
        self._closing: list[asyncio.Future[None]] = []
        self._close_deadline = math.inf

    def __repr__(self) -> str:
        state = "closed" if self.closed else "retired" if self._retired else "open"
        return (
            f"<NodeConnection {self._direction} {str(self._node_id)[:12]}… "
            f"{self._host}:{self._port} {state}>"
        )

    # -- making one ----------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        target_node_id: NodeId,
        host: str,
        port: int,
        socket: QUICSocket,
        credentials: TLSCredentials,
        *,
        config: QUICConfig | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,  # noqa: ASYNC109 - as the legacy API
        stream_handler: StreamHandler | None = None,
        rpc_config: RPCClientConfig | None = None,
        on_activity: Callable[[NodeConnection], None] | None = None,
        successor: Successor | None = None,
        on_refused: Callable[[NodeConnection], None] | None = None,
    ) -> NodeConnection:
        """Dial ``target_node_id`` at ``host:port`` from ``socket``.

        ``credentials`` carry our key and chain; their ``verify`` is replaced by a
        verifier that insists on ``target_node_id``. ``stream_handler`` serves calls the
        peer makes back over this connection. Returns once both sides accepted each
        other. Raises a :class:`ConnectionFailedError` subclass saying why not; nothing
        stays open on failure.
        """
        if not isinstance(target_node_id, NodeId):
            raise TypeError(f"target_node_id must be a NodeId, not {type(target_node_id).__name__}")
        verifier = _RecordingVerifier(target_node_id)
        creds = dataclasses.replace(credentials, verify=verifier)
        try:
            async with asyncio.timeout(timeout):
                conn = await connect(
                    socket, host, port, creds, config, stream_handler=stream_handler
                )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                f"no connection to node {target_node_id} at {host}:{port} within {timeout:g}s"
            ) from exc
        except HandshakeTimeoutError as exc:
            raise ConnectTimeoutError(
                f"no connection to node {target_node_id} at {host}:{port}: {exc}"
            ) from exc
        except PeerCertificateRejectedError as exc:
            rejected = verifier.rejected
            if isinstance(rejected, _IdentityMismatch):
                raise NodeIdMismatchError(rejected.expected, rejected.actual) from rejected
            raise PeerVerificationError(
                f"node at {host}:{port} failed verification as {target_node_id}: "
                f"{rejected if rejected is not None else exc}"
            ) from (rejected or exc)
        except CertificateRejectedByPeerError as exc:
            raise PeerRejectedUsError(
                f"node {target_node_id} at {host}:{port} rejected our certificate: {exc}"
            ) from exc
        except ConnectionLimitError as exc:
            raise ConnectRefusedError(
                f"node {target_node_id} at {host}:{port} refused the connection: {exc}"
            ) from exc
        except (HandshakeError, OSError) as exc:
            raise ConnectionFailedError(
                f"cannot connect to node {target_node_id} at {host}:{port}: {exc}"
            ) from exc
        identity = conn.peer_identity
        if identity != target_node_id:  # the verifier makes this unreachable
            conn.abort("peer identity mismatch")
            await conn.wait_closed()
            raise NodeIdMismatchError(target_node_id, identity)
        return cls(
            target_node_id,
            conn,
            direction="outgoing",
            rpc_config=rpc_config,
            on_activity=on_activity,
            successor=successor,
            on_refused=on_refused,
        )

    @classmethod
    def incoming(
        cls,
        connection: QUICConnection,
        *,
        rpc_config: RPCClientConfig | None = None,
        on_activity: Callable[[NodeConnection], None] | None = None,
        successor: Successor | None = None,
        on_refused: Callable[[NodeConnection], None] | None = None,
    ) -> NodeConnection:
        """Wrap a connection a peer dialled (already verified by the server's verifier)."""
        identity = connection.peer_identity
        if not isinstance(identity, NodeId):
            raise PeerVerificationError(
                f"the peer of {connection!r} has no verified node id ({identity!r})"
            )
        return cls(
            identity,
            connection,
            direction="incoming",
            rpc_config=rpc_config,
            on_activity=on_activity,
            successor=successor,
            on_refused=on_refused,
        )

    # -- what it is --------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    @property
    def host(self) -> str:
        """The peer's host as dialled or as seen (incoming)."""
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def direction(self) -> Direction:
        """``"outgoing"`` if this node dialled, ``"incoming"`` if the peer did."""
        return self._direction

    @property
    def stub(self) -> Any:
        """The ``AgentService`` client stub (descriptor-bound, on :attr:`rpc_client`).

        Once this connection is retired (or closed as refusing), its calls go to the
        node's current connection (see the module docstring)."""
        return self._stub

    @property
    def client(self) -> Any:
        """Alias of :attr:`stub`."""
        return self._stub

    @property
    def health(self) -> Any:
        """The ``grpc.health.v1.Health`` client stub."""
        return self._health

    @property
    def rpc_client(self) -> RPCClient:
        return self._client

    @property
    def quic_connection(self) -> QUICConnection:
        return self._connection

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The peer's certificate chain (DER, leaf first) as verified."""
        return self._connection.peer_chain

    @property
    def active_streams(self) -> int:
        """Streams open on the connection, in either direction (0 means idle)."""
        return self._connection.streams

    @property
    def closed(self) -> bool:
        return self._connection.is_closed

    @property
    def retired(self) -> bool:
        """No new call starts on it: the peer refused a stream on it, or its manager
        replaced or closed it. Its calls in flight go on."""
        return self._retired

    @property
    def usable(self) -> bool:
        """New calls may start on this connection (open and not retired)."""
        return not self._retired and not self._connection.is_closed

    @property
    def replaceable(self) -> bool:
        """Its calls may go to a successor: it is retired, or was closed by an end that
        had no stream open on it (code 0x2), so that nothing unanswered was processed.
        Not after :meth:`close`, nor when the peer stopped or vanished."""
        if self._retired:
            return True
        lost = self._connection.close_reason
        return lost is not None and lost.error_code == REFUSED_STREAM_CODE

    def retire(self) -> None:
        """Start no new call on it (new calls go to its successor). Idempotent."""
        self._retired = True

    def close_idle(self) -> bool:
        """Close at once if no stream is open on it, with code 0x2
        (:data:`~quic_rpc.quic.REFUSED_STREAM_CODE`): the peer then knows that a call it
        started meanwhile was not processed, and sends it again elsewhere. Returns False,
        doing nothing, if a stream is open. ``await close()`` then waits until closed."""
        if self._connection.streams:
            return False
        self._retired = True
        self._connection.close(REFUSED_STREAM_CODE, "idle connection closed")
        return True

    async def _successor_or_self(self) -> NodeConnection:
        """The connection a new call on this one goes to: its successor if it is
        replaceable (raises StreamError if none can be had), else itself."""
        successor = self._successor
        if successor is None or not self.replaceable:
            return self
        try:
            conn = await successor(self)
        except (NodeConnectionError, OSError) as exc:
            raise StreamError(f"no connection to node {self._node_id}: {exc}") from exc
        if conn is self or not conn.usable or conn.node_id != self._node_id:
            raise StreamError(f"no usable connection to node {self._node_id}")
        self._last_successor = conn
        return conn

    def _stream_refused(self, stream: ByteStream, error: BaseException) -> bool:
        """A call's stream failed before any response byte (the RPC client's hook).
        Whether the peer is known not to have processed it; retires the connection that
        refused it."""
        if isinstance(error, StreamResetError):
            if error.code != REFUSED_STREAM_CODE:
                return False
            owner = self._owner_of(stream)
            if owner is not None:
                owner._refused()
            return True
        # a connection closed with 0x2 is closed, hence no longer handed out anyway
        return isinstance(error, ConnectionLostError) and error.error_code == REFUSED_STREAM_CODE

    def _owner_of(self, stream: ByteStream) -> NodeConnection | None:
        """Which connection ``stream`` was opened on: this one while it is usable (it
        never becomes usable again once not), else the one whose peer info it carries."""
        if self.usable:
            return self
        info = stream.peer_info
        for conn in (self, self._last_successor):
            if conn is not None and info is conn._connection.peer_info:
                return conn
        return None

    def _refused(self) -> None:
        if self._retired or self._connection.is_closed:
            return
        _log.debug("%r refused a stream: retiring it", self)
        self._retired = True
        if self._on_refused is not None:
            try:
                self._on_refused(self)
            except Exception:
                _log.exception("on_refused failed for %r", self)

    def touch(self) -> None:
        """Mark the connection as used now (it is then the most recently used)."""
        self.last_used = self._loop.time()
        if self._on_activity is not None:
            self._on_activity(self)

    async def close(self, grace: float | None = 0.0) -> None:
        """Close the connection once no call runs on it; calls still running after
        ``grace`` seconds (None: the QUIC config's ``graceful_stop_timeout``) fail with
        UNAVAILABLE. Idempotent; concurrent closers wait for the same close, and one
        whose deadline is earlier than the close under way brings it forward (None
        counts as the latest)."""
        deadline = math.inf if grace is None else self._loop.time() + grace
        if not self._closing or deadline < self._close_deadline:
            _log.debug("closing %r (grace %s, %d streams open)", self, grace, self.active_streams)
            self._close_deadline = deadline
            self._closing.append(
                asyncio.ensure_future(
                    self._connection.aclose(grace, reason="node connection closed")
                )
            )
        for closing in list(self._closing):
            await asyncio.shield(closing)

    async def __aenter__(self) -> NodeConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
