"""The reference agent on the new stack: quic_rpc over QUIC, no grpc anywhere.

:class:`Agent` owns, for one node:

* its identity and domains in ``<state_dir>`` (the same layout as
  :class:`agent.legacy.LegacyAgent`, via :mod:`agent.wiring`: a state dir moves between
  stacks unchanged);
* one :class:`~quic_rpc.quic.QUICSocket` (IPv4 or IPv6; ``"::"`` is dual-stack) shared by
  the server side and every dial (hole punching needs the same source port);
* a :class:`~quic_rpc.quic.QUICServer` feeding an :class:`~quic_rpc.rpc.RPCServer` with
  the handler manifest: the :class:`~agent.servicer.AgentServicer` bound from the
  service descriptor plus ``grpc.health.v1.Health``;
* the :class:`NodeConnectionManager` with this node's connections in both directions.

Every handler runs as its own task under the call's deadline; a client cancel, a peer
reset, the deadline or :meth:`Agent.stop` cancel it, and the cancellation reaches the
domain code (streams stop producing, vault archives are closed).

The servicer learns who is calling from :meth:`Agent.connection_info`: the node id the
transport verified from the peer's certificate chain, the address the datagrams came
from, and the chain itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from agent.connection_info import ConnectionInfo, ConnectionInfoError
from agent.domains.claims import ClaimStore
from agent.domains.nodes import NodeAddress, NodeGraph
from agent.domains.notifications import NotificationInbox
from agent.domains.vaults import VaultStore
from agent.identity import KeyType, NodeIdentity, node_verifier
from agent.nodeid import NodeId
from agent.servicer import (
    AgentServicer,
    HolePunchRelayError,
    RequesterAddress,
    node_id_to_proto,
)
from agent.wiring import AgentDomains, load_identity, open_domains
from migration.quic_grpc.descriptor import merge_manifests, native_manifest
from migration.quic_grpc.health import SERVING, AioHealthServicer, HealthState, health_manifest
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from quic_rpc.quic import QUICConfig, QUICConnection, QUICServer, QUICSocket, TLSCredentials
from quic_rpc.quic.relay import is_relay_host
from quic_rpc.rpc import RPCClientConfig, RPCError, RPCServer, RPCServerConfig, Status
from quic_rpc.streams import ByteStream, PeerInfo

from .connection_manager import ConnectionManagerConfig, NodeConnectionManager
from .hole_punch import HolePunchConfig, HolePuncher
from .node_connection import AGENT_SERVICE, NodeConnection, NodeConnectionError
from .relay import RelayConfig, RelayService

__all__ = ["AGENT_SERVICE_NAME", "DEFAULT_HANDLER_TIMEOUT", "QUIC_TRANSPORT", "Agent", "AgentError"]

_log = logging.getLogger(__name__)

AGENT_SERVICE_NAME: Final = AGENT_SERVICE.full_name
QUIC_TRANSPORT: Final = "quic"
DEFAULT_HANDLER_TIMEOUT: Final = 300.0
"""Upper bound on any one call's duration unless ``rpc_server_config`` says otherwise."""

T = TypeVar("T")
_UNSPECIFIED: Final = {"::": "::1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1"}


class AgentError(Exception):
    """The agent was misused (wrong state) or cannot find a node."""

    code = "agent"


class Agent:
    """One node on QUIC: identity, domains, socket, RPC server and connections."""

    def __init__(
        self,
        state_dir: str | Path,
        identity: NodeIdentity | None = None,
        *,
        key_type: KeyType = "ed25519",
        host: str = "127.0.0.1",
        port: int = 0,
        public_host: str | None = None,
        quic_config: QUICConfig | None = None,
        connections: ConnectionManagerConfig | None = None,
        rpc_server_config: RPCServerConfig | None = None,
        rpc_client_config: RPCClientConfig | None = None,
        stop_grace: float = 1.0,
        domains: AgentDomains | None = None,
        servicer: AgentServicer | None = None,
        hole_punch: HolePunchConfig | None = None,
        relay: RelayConfig | None = None,
        record_incoming_peers: bool = False,
    ) -> None:
        """``identity`` replaces the stored one (and is saved); without it the stored one
        is loaded, or a new ``key_type`` identity generated and saved.

        ``host``/``port``: where the one UDP socket binds (``"::"`` for dual-stack).
        ``public_host``: where other nodes reach it (default ``host``; for an unspecified
        bind address, the loopback address of that family).
        ``quic_config`` holds the keepalive (``keepalive_interval``, ``idle_timeout``) and
        transport limits; ``connections`` the connection manager's TTL and bounds;
        ``rpc_server_config`` the call limits (default: every call is cut at
        :data:`DEFAULT_HANDLER_TIMEOUT` seconds, or the caller's tighter deadline);
        ``stop_grace`` how long in-flight calls may run on :meth:`stop`.
        ``domains`` and ``servicer`` (with ``identity``, which is then not saved) share an
        already open node with another stack (:class:`agent.dual.DualStackAgent`): this
        agent serves them and leaves the domains open on :meth:`stop`.
        ``hole_punch`` tunes :meth:`connect_via` and punching for others; ``relay`` the
        relay (``RelayConfig(serve=True)`` on signalling/seed nodes; relaying needs
        ``QUICConfig(datagrams=True)`` on every node involved).
        ``record_incoming_peers``: put every node that dials in into the node graph at its
        address as seen here (seed/signalling nodes, so they can signal to it).
        """
        if stop_grace < 0:
            raise ValueError("stop_grace must be >= 0")
        if domains is not None and identity is None:
            raise AgentError("injected domains need the node identity too")
        self._domains_arg = domains
        self._servicer_arg = servicer
        self._hole_punch_config = hole_punch
        self._relay_config = relay
        self._record_incoming_peers = record_incoming_peers
        self._hole_puncher: HolePuncher | None = None
        self._relay: RelayService | None = None
        self._state_dir = Path(state_dir)
        self._identity_arg = identity
        self._key_type: KeyType = key_type
        self._host = host
        self._port = port
        self._public_host = public_host or _UNSPECIFIED.get(host, host)
        self._quic_config = quic_config if quic_config is not None else QUICConfig()
        self._manager_config = connections if connections is not None else ConnectionManagerConfig()
        self._rpc_server_config = (
            rpc_server_config
            if rpc_server_config is not None
            else RPCServerConfig(handler_timeout=DEFAULT_HANDLER_TIMEOUT)
        )
        self._rpc_client_config = rpc_client_config
        self._stop_grace = stop_grace
        self._identity: NodeIdentity | None = None
        self._domains: AgentDomains | None = None
        self._servicer: AgentServicer | None = None
        self._health = HealthState()
        self._rpc_server: RPCServer | None = None
        self._socket: QUICSocket | None = None
        self._quic_server: QUICServer | None = None
        self._manager: NodeConnectionManager | None = None
        self._started = False
        self._stopped = False
        self._stopping: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        node = "?" if self._identity is None else str(self._identity.node_id)[:12] + "…"
        where = "" if self._socket is None else f" {self._socket.local_address}"
        return f"<Agent {node}{where}>"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load or make the identity, open the domains, bind the socket and serve."""
        if self._started or self._stopped:
            raise AgentError("an Agent starts once; make a new one to restart")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        _log.info("agent %s serving on %s:%d", self.node_id, self.host, self.port)

    async def _start(self) -> None:
        if self._domains_arg is not None and self._identity_arg is not None:
            identity, domains = self._identity_arg, self._domains_arg
            self._identity, self._domains = identity, domains
        else:
            identity = await asyncio.to_thread(
                load_identity, self._state_dir, self._identity_arg, self._key_type
            )
            self._identity = identity
            self._domains = domains = await asyncio.to_thread(
                open_domains, self._state_dir, identity.node_id
            )
        self._servicer = servicer = self._servicer_arg or AgentServicer(
            identity=identity,
            nodes=domains.nodes,
            claims=domains.claims,
            notifications=domains.notifications,
            vaults=domains.vaults,
            connection_info=self.connection_info,
            hole_punch_relay=self._relay_hole_punch,
            hole_punch_target=self._hole_punch_target,
        )
        manifest = merge_manifests(
            native_manifest(AGENT_SERVICE, servicer),
            health_manifest(AioHealthServicer(self._health)),
        )
        self._rpc_server = RPCServer(manifest, config=self._rpc_server_config)
        credentials = TLSCredentials.load(
            identity.private_key_pem(), identity.chain_pem(), node_verifier()
        )
        self._socket = socket = QUICSocket(self._host, self._port)
        await socket.start()
        self._hole_puncher = puncher = HolePuncher(self, self._hole_punch_config)
        socket.on_unrouted = puncher.punch_received
        loop = asyncio.get_running_loop()
        self._relay = relay = RelayService(
            socket,
            identity.node_id,
            self._existing_connection,
            self._quic_config,
            self._relay_config,
            clock=loop.time,
        )
        self._manager = NodeConnectionManager(
            socket,
            credentials,
            quic_config=self._quic_config,
            config=self._manager_config,
            stream_handler=self._handle_stream,
            rpc_config=self._rpc_client_config,
            node_id=identity.node_id,
            on_connection_added=relay.attach,
        )
        self._quic_server = QUICServer(
            socket,
            credentials,
            self._quic_config,
            self._handle_stream,
            on_connection=self._incoming_connection,
        )
        await self._quic_server.start()
        self._health.set(AGENT_SERVICE_NAME, SERVING)

    async def stop(self) -> None:
        """Stop serving and close everything; idempotent, safe after a failed start.

        New calls are refused at once; calls in flight get ``stop_grace`` seconds, then
        their handlers are cancelled and their callers get UNAVAILABLE. Connections,
        the socket and the state are closed; no task, timer or descriptor is left.
        """
        self._stopped = True
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self._health.enter_graceful_shutdown()
        if self._hole_puncher is not None:
            await self._hole_puncher.close()
        if self._rpc_server is not None:
            await self._rpc_server.stop(self._stop_grace)
        if self._manager is not None:
            # Streams still open (a finished handler's unsent response, our own calls)
            # get the connection manager's close_grace before their connections close.
            await self._manager.stop()
        if self._relay is not None:
            self._relay.close()
        if self._quic_server is not None:
            await self._quic_server.stop(0.0)
        if self._socket is not None:
            await self._socket.close()
        if self._domains is not None and self._domains_arg is None:
            await asyncio.to_thread(self._domains.close)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what it is ------------------------------------------------------------------

    def _require(self, value: T | None, what: str) -> T:
        if value is None or self._stopped:
            raise AgentError(f"the agent is not running ({what} unavailable)")
        return value

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self._quic_server is not None

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def identity(self) -> NodeIdentity:
        return self._require(self._identity, "identity")

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def host(self) -> str:
        """The host other nodes reach this agent on (see ``public_host``)."""
        return self._public_host

    @property
    def bind_host(self) -> str:
        """The address the socket is bound to (``::`` is dual-stack, any address)."""
        return self._host

    @property
    def port(self) -> int:
        """The UDP port of the agent's one socket."""
        return self.socket.local_address[1]

    @property
    def address(self) -> NodeAddress:
        return NodeAddress(host=self.host, port=self.port, transports=(QUIC_TRANSPORT,))

    @property
    def quic_config(self) -> QUICConfig:
        """Transport settings, keepalive included (``keepalive_interval``, ``idle_timeout``)."""
        return self._quic_config

    @property
    def socket(self) -> QUICSocket:
        return self._require(self._socket, "socket")

    @property
    def quic_server(self) -> QUICServer:
        return self._require(self._quic_server, "QUIC server")

    @property
    def rpc_server(self) -> RPCServer:
        return self._require(self._rpc_server, "RPC server")

    @property
    def connection_manager(self) -> NodeConnectionManager:
        return self._require(self._manager, "connection manager")

    @property
    def health_state(self) -> HealthState:
        return self._health

    @property
    def nodes(self) -> NodeGraph:
        return self._require(self._domains, "node graph").nodes

    @property
    def claims(self) -> ClaimStore:
        return self._require(self._domains, "claims").claims

    @property
    def notifications(self) -> NotificationInbox:
        return self._require(self._domains, "notifications").notifications

    @property
    def vaults(self) -> VaultStore:
        return self._require(self._domains, "vaults").vaults

    @property
    def servicer(self) -> AgentServicer:
        return self._require(self._servicer, "servicer")

    # -- serving ---------------------------------------------------------------------

    async def _handle_stream(self, stream: ByteStream) -> None:
        """Every stream a peer opens, on incoming and dialled connections alike."""
        manager = self._manager
        server = self._rpc_server
        if manager is not None:
            manager.note_incoming_stream(stream.peer_info.identity)
        if server is None:  # unreachable: streams arrive only once serving
            stream.abort(0x2)
            return
        await server.handle_stream(stream)

    def connection_info(self, context: Any) -> ConnectionInfo:
        """The servicer's ``connection_info(context)``: the verified caller of a call.

        ``context`` is the grpc-shaped servicer context (its ``peer_info()``) or a
        quic_rpc ``ServerCallContext`` (its ``peer_info``).
        """
        peer: Any = getattr(context, "peer_info", None)
        if callable(peer):
            peer = peer()
        if not isinstance(peer, PeerInfo):
            raise ConnectionInfoError("the call carries no transport peer info")
        if not isinstance(peer.identity, NodeId):
            raise ConnectionInfoError(f"peer identity is not a node id: {peer.identity!r}")
        try:
            return ConnectionInfo(
                remote_node_id=peer.identity,
                remote_host=peer.remote_host,
                remote_port=peer.remote_port,
                remote_chain=peer.remote_chain,
            )
        except (TypeError, ValueError) as exc:
            raise ConnectionInfoError(f"bad peer info: {exc}") from exc

    # -- other nodes -----------------------------------------------------------------

    def add_node(self, node_id: NodeId, host: str, port: int) -> None:
        """Record where a node is (in the node graph) so it can be reached by id."""
        self.nodes.set_node(node_id, [NodeAddress(host, port, (QUIC_TRANSPORT,))])

    async def connect(
        self, node_id: NodeId, host: str | None = None, port: int | None = None
    ) -> NodeConnection:
        """A ready connection to ``node_id``: the open one (dialled or accepted, on
        whatever address: the node's id was verified), else a new dial to ``host:port``
        or, without them, to the node graph's QUIC address.

        Raises :class:`AgentError` for an unknown node and
        :class:`~agent.quic.ConnectionFailedError` subclasses when it cannot connect
        (:class:`~agent.quic.NodeIdMismatchError` if another node answers).
        """
        manager = self.connection_manager
        existing = manager.reusable(node_id)
        if existing is not None:  # its id was verified: whatever address it is on
            existing.touch()
            return existing
        if host is None or port is None:
            host, port = await self._lookup(node_id)
        try:
            return await manager.get_connection(node_id, host, port)
        except NodeConnectionError:
            if self._stopped:
                raise AgentError("the agent stopped while connecting") from None
            raise

    async def disconnect(self, node_id: NodeId) -> None:
        """Close the connection to ``node_id`` if there is one."""
        if self._manager is not None:
            await self._manager.close_connection(node_id)

    async def _lookup(self, node_id: NodeId) -> tuple[str, int]:
        record = await asyncio.to_thread(self.nodes.get_node, node_id)
        if record is None:
            raise AgentError(f"node {node_id} is not in the node graph")
        addresses: Sequence[NodeAddress] = record.addresses
        for address in addresses:
            if not address.transports or QUIC_TRANSPORT in address.transports:
                return address.host, address.port
        raise AgentError(f"node {node_id} has no {QUIC_TRANSPORT} address")

    async def _relay_hole_punch(
        self, target: NodeId, requester: RequesterAddress
    ) -> NodeAddress | None:
        """Forward a hole punch to ``target`` over our connection to it (the one it
        dialled, or a new dial): it then punches towards the requester's address as we
        saw it. Returns the target's address as we see it (None if relayed)."""
        try:
            conn = await self.connect(target)
            await conn.stub.NodesHolePunchSignal(
                pb.HolePunchSignalRequest(
                    target=node_id_to_proto(target),
                    transports=list(requester.address.transports),
                    requester=common.NodeInfo(
                        node_id=node_id_to_proto(requester.node_id),
                        addresses=[
                            common.NodeAddress(
                                host=requester.address.host,
                                port=requester.address.port,
                                transports=list(requester.address.transports),
                            )
                        ],
                    ),
                ),
                timeout=self._manager_config.connect_timeout,
            )
        except AgentError as exc:
            raise LookupError(str(exc)) from exc
        except RPCError as exc:
            if exc.status != Status.UNIMPLEMENTED:
                raise HolePunchRelayError(f"{type(exc).__name__}: {exc}") from exc
            # an older node (or another stack) that does not punch: it is reachable,
            # which is all a signal could promise before
            _log.info("node %s does not hole punch; signalled as reachable", target)
        except Exception as exc:  # connection failures: all "unreachable"
            raise HolePunchRelayError(f"{type(exc).__name__}: {exc}") from exc
        _log.info(
            "relayed hole punch: %s should reach %s at %s:%d",
            target,
            requester.node_id,
            requester.address.host,
            requester.address.port,
        )
        if is_relay_host(conn.host):
            return None
        return NodeAddress(host=conn.host, port=conn.port, transports=(QUIC_TRANSPORT,))

    async def _hole_punch_target(self, requester: RequesterAddress, signaller: NodeId) -> None:
        puncher = self._hole_puncher
        if puncher is None or self._stopped:
            raise HolePunchRelayError("the agent is not running")
        await puncher.punch_towards(requester, signaller)

    # -- hole punching and relaying ----------------------------------------------------

    @property
    def hole_puncher(self) -> HolePuncher:
        """Hole punching state: ``results``, ``stats``, ``config``."""
        return self._require(self._hole_puncher, "hole puncher")

    @property
    def relay(self) -> RelayService:
        """The relay service (paths to relayed peers; forwarding if ``serve``)."""
        return self._require(self._relay, "relay")

    async def connect_via(self, node_id: NodeId, signaller: NodeId) -> NodeConnection:
        """A connection to ``node_id``: the open one, else a direct one after a hole
        punch signalled through ``signaller``, else (symmetric NAT) one relayed by it.
        Raises :class:`~agent.quic.hole_punch.HolePunchError` if nothing worked; the
        outcome is in :attr:`hole_puncher` ``.results``."""
        return await self.hole_puncher.connect(node_id, signaller)

    def _existing_connection(self, node_id: NodeId) -> NodeConnection | None:
        manager = self._manager
        return None if manager is None else manager.get_existing(node_id)

    def _incoming_connection(self, connection: QUICConnection) -> None:
        manager = self._manager
        if manager is None:
            return
        conn = manager.register_incoming(connection)
        if conn is None or not self._record_incoming_peers or is_relay_host(conn.host):
            return
        try:
            self.nodes.set_node(
                conn.node_id, [NodeAddress(conn.host, conn.port, (QUIC_TRANSPORT,))]
            )
        except Exception as exc:
            _log.warning("cannot record %s at %s:%d: %s", conn.node_id, conn.host, conn.port, exc)
