"""The reference agent on the legacy stack: grpc.aio behind the TLS proxy pair.

:class:`LegacyAgent` owns, for one node:

* its identity (``<state_dir>/identity``: generated on first start, reloaded after);
* its domains (node graph, claims, notifications, vaults) in ``<state_dir>``;
* the :class:`~agent.servicer.AgentServicer`, served by a grpc.aio server on loopback;
* the reverse proxy (public TLS port; tells the servicer who is calling);
* the forward proxy and the :class:`~legacy_grpc.NodeConnection`\\ s to other nodes.

``await agent.start()`` brings all of it up; ``await agent.stop()`` takes it all down,
leaving nothing open. Start a new ``LegacyAgent`` on the same ``state_dir`` to restart.

Hole punching on this stack: the reverse proxy is a public TCP listener, so "signalling"
a target means checking that this node can reach it (a health check through the forward
proxy); the servicer then returns the requester's address as seen here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from agent.connection_info import ConnectionInfo, ConnectionInfoError
from agent.domains.claims import ClaimStore
from agent.domains.nodes import NodeAddress, NodeGraph
from agent.domains.notifications import NotificationInbox
from agent.domains.state import AgentState
from agent.domains.vaults import VaultStore
from agent.identity import KeyType, NodeIdentity, node_verifier
from agent.nodeid import NodeId
from agent.servicer import AgentServicer, HolePunchRelayError, RequesterAddress
from agent.wiring import IDENTITY_DIR_NAME, AgentDomains, load_identity, open_domains
from legacy_grpc import (
    AgentGRPCServer,
    ForwardProxy,
    NodeConnection,
    ProxyCredentials,
    ReverseProxy,
    ServiceBinding,
    TLSCredentials,
)
from protos.agent.v1 import agent_service_pb2_grpc
from protos.grpc.health.v1 import health_pb2

__all__ = [
    "AGENT_SERVICE_NAME",
    "IDENTITY_DIR_NAME",
    "LEGACY_TRANSPORT",
    "LegacyAgent",
    "LegacyAgentError",
]

logger = logging.getLogger(__name__)

AGENT_SERVICE_NAME: Final = "quicshift.agent.v1.AgentService"
LEGACY_TRANSPORT: Final = "grpc"


class LegacyAgentError(Exception):
    """The legacy agent was misused (wrong state) or cannot reach a node."""

    code = "legacy_agent"


class LegacyAgent:
    """One node of the existing deployment, on gRPC and the TLS proxy pair."""

    def __init__(
        self,
        state_dir: str | Path,
        identity: NodeIdentity | None = None,
        *,
        key_type: KeyType = "ed25519",
        host: str = "127.0.0.1",
        port: int = 0,
        proxy_auth: ProxyCredentials | None = None,
        connect_timeout: float = 10.0,
        stop_grace: float = 1.0,
        domains: AgentDomains | None = None,
        servicer: AgentServicer | None = None,
    ) -> None:
        """``identity`` replaces the stored one (and is saved); without it the stored one
        is loaded, or a new ``key_type`` identity generated and saved.

        ``domains`` and ``servicer`` (with ``identity``, which is then not saved) share an
        already open node with another stack (:class:`agent.dual.DualStackAgent`): this
        agent serves them and leaves the domains open on :meth:`stop`.

        The forward proxy listens on loopback and dials peers *as this node*, so it always
        requires Basic proxy credentials: ``proxy_auth``, or random ones made per start
        (this agent's NodeConnections carry them; other local processes do not).
        """
        self._state_dir = Path(state_dir)
        self._identity_arg = identity
        self._key_type: KeyType = key_type
        self._host = host
        self._port = port
        self._proxy_auth = proxy_auth
        self._connect_timeout = connect_timeout
        self._stop_grace = stop_grace
        if domains is not None and identity is None:
            raise LegacyAgentError("injected domains need the node identity too")
        self._domains_arg = domains
        self._servicer_arg = servicer
        self._identity: NodeIdentity | None = None
        self._state: AgentState | None = None
        self._nodes: NodeGraph | None = None
        self._claims: ClaimStore | None = None
        self._inbox: NotificationInbox | None = None
        self._vaults: VaultStore | None = None
        self._servicer: AgentServicer | None = None
        self._credentials: TLSCredentials | None = None
        self._server: AgentGRPCServer | None = None
        self._reverse: ReverseProxy | None = None
        self._forward: ForwardProxy | None = None
        self._connections: dict[NodeId, NodeConnection] = {}
        self._connect_locks: dict[NodeId, asyncio.Lock] = {}
        self._started = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._started or self._stopped:
            raise LegacyAgentError("a LegacyAgent starts once; make a new one to restart")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        logger.info("legacy agent %s serving on %s:%d", self.node_id, self._host, self.port)

    async def _start(self) -> None:
        if self._domains_arg is not None and self._identity_arg is not None:
            identity, domains = self._identity_arg, self._domains_arg
            self._identity = identity
        else:
            identity = await asyncio.to_thread(self._load_identity)
            self._identity = identity
            domains = await asyncio.to_thread(open_domains, self._state_dir, identity.node_id)
            self._state = domains.state
        self._nodes = domains.nodes
        self._claims = domains.claims
        self._inbox = domains.notifications
        self._vaults = domains.vaults
        self._servicer = self._servicer_arg or AgentServicer(
            identity=identity,
            nodes=self._nodes,
            claims=self._claims,
            notifications=self._inbox,
            vaults=self._vaults,
            connection_info=self.connection_info,
            hole_punch_relay=self._relay_hole_punch,
        )
        self._server = AgentGRPCServer(
            [
                ServiceBinding(
                    agent_service_pb2_grpc.add_AgentServiceServicer_to_server,
                    self._servicer,
                    AGENT_SERVICE_NAME,
                )
            ]
        )
        backend_port = await self._server.start()
        self._credentials = TLSCredentials(identity.private_key_pem(), identity.chain_pem())
        verify = node_verifier()
        self._reverse = ReverseProxy(
            self._credentials, verify, backend_port, host=self._host, port=self._port
        )
        await self._reverse.start()
        self._forward = ForwardProxy(
            self._credentials,
            verify,
            NodeId.parse,
            auth=self._proxy_auth or ProxyCredentials("agent", secrets.token_urlsafe(24)),
            connect_timeout=self._connect_timeout,
        )
        await self._forward.start()

    def _load_identity(self) -> NodeIdentity:
        return load_identity(self._state_dir, self._identity_arg, self._key_type)

    async def stop(self) -> None:
        """Stop serving and close everything; idempotent, safe after a failed start.

        The gRPC server stops first: new calls are refused and calls in flight get
        ``stop_grace`` seconds to finish through the still open reverse proxy.
        """
        self._stopped = True
        if self._server is not None:
            await self._server.stop(self._stop_grace)
        if self._reverse is not None:
            await self._reverse.stop()
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()
        if self._forward is not None:
            await self._forward.stop()
        if self._state is not None and not self._state.closed:
            await asyncio.to_thread(self._state.close)
        if self._credentials is not None:
            self._credentials.close()

    async def __aenter__(self) -> LegacyAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what it is ------------------------------------------------------------------

    def _require(self, value: Any, what: str) -> Any:
        if value is None or self._stopped:
            raise LegacyAgentError(f"the agent is not running ({what} unavailable)")
        return value

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def identity(self) -> NodeIdentity:
        identity: NodeIdentity = self._require(self._identity, "identity")
        return identity

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The public port (the reverse proxy's)."""
        reverse: ReverseProxy = self._require(self._reverse, "reverse proxy")
        return reverse.port

    @property
    def address(self) -> NodeAddress:
        return NodeAddress(host=self._host, port=self.port, transports=(LEGACY_TRANSPORT,))

    @property
    def nodes(self) -> NodeGraph:
        nodes: NodeGraph = self._require(self._nodes, "node graph")
        return nodes

    @property
    def claims(self) -> ClaimStore:
        claims: ClaimStore = self._require(self._claims, "claims")
        return claims

    @property
    def notifications(self) -> NotificationInbox:
        inbox: NotificationInbox = self._require(self._inbox, "notifications")
        return inbox

    @property
    def vaults(self) -> VaultStore:
        vaults: VaultStore = self._require(self._vaults, "vaults")
        return vaults

    @property
    def servicer(self) -> AgentServicer:
        servicer: AgentServicer = self._require(self._servicer, "servicer")
        return servicer

    @property
    def grpc_server(self) -> AgentGRPCServer:
        server: AgentGRPCServer = self._require(self._server, "gRPC server")
        return server

    @property
    def reverse_proxy(self) -> ReverseProxy:
        reverse: ReverseProxy = self._require(self._reverse, "reverse proxy")
        return reverse

    @property
    def forward_proxy(self) -> ForwardProxy:
        forward: ForwardProxy = self._require(self._forward, "forward proxy")
        return forward

    # -- who is calling ------------------------------------------------------------------

    def connection_info(self, context: Any) -> ConnectionInfo:
        """The servicer's ``connection_info(context)``: the caller, via the reverse proxy."""
        if self._reverse is None:
            raise ConnectionInfoError("the agent is not serving")
        try:
            info = self._reverse.connection_info_for_peer(context.peer())
        except ValueError as exc:
            raise ConnectionInfoError(str(exc)) from exc
        if info is None:
            raise ConnectionInfoError(f"no proxied connection for peer {context.peer()}")
        if not isinstance(info.node_id, NodeId):
            raise ConnectionInfoError(f"peer identity is not a node id: {info.node_id!r}")
        return ConnectionInfo(
            remote_node_id=info.node_id,
            remote_host=info.remote_host,
            remote_port=info.remote_port,
            remote_chain=info.remote_chain,
        )

    # -- other nodes -----------------------------------------------------------------------

    def add_node(self, node_id: NodeId, host: str, port: int) -> None:
        """Record where a node is (in the node graph) so it can be reached by id."""
        self.nodes.set_node(node_id, [NodeAddress(host, port, (LEGACY_TRANSPORT,))])

    async def connect(
        self, node_id: NodeId, host: str | None = None, port: int | None = None
    ) -> NodeConnection:
        """A ready connection to ``node_id`` (reused while open).

        Without ``host``/``port`` the node graph's first legacy address is used. Raises
        :class:`LegacyAgentError` for an unknown node and
        :class:`~legacy_grpc.ConnectionFailedError` subclasses when it cannot connect.
        """
        forward: ForwardProxy = self._require(self._forward, "forward proxy")
        lock = self._connect_locks.setdefault(node_id, asyncio.Lock())
        async with lock:
            existing = self._connections.get(node_id)
            if existing is not None and not existing.closed:
                if host is None or (existing.host, existing.port) == (host, port):
                    return existing
                await existing.close()
            if host is None or port is None:
                host, port = await self._lookup(node_id)
            conn = await NodeConnection.connect(
                node_id, host, port, forward, timeout=self._connect_timeout
            )
            if self._stopped:
                await conn.close()
                raise LegacyAgentError("the agent stopped while connecting")
            self._connections[node_id] = conn
            return conn

    async def disconnect(self, node_id: NodeId) -> None:
        conn = self._connections.pop(node_id, None)
        if conn is not None:
            await conn.close()

    async def _lookup(self, node_id: NodeId) -> tuple[str, int]:
        record = await asyncio.to_thread(self.nodes.get_node, node_id)
        if record is None:
            raise LegacyAgentError(f"node {node_id} is not in the node graph")
        addresses: Sequence[NodeAddress] = record.addresses
        for address in addresses:
            if not address.transports or LEGACY_TRANSPORT in address.transports:
                return address.host, address.port
        raise LegacyAgentError(f"node {node_id} has no {LEGACY_TRANSPORT} address")

    async def _relay_hole_punch(self, target: NodeId, requester: RequesterAddress) -> None:
        try:
            conn = await self.connect(target)
            await conn.health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self._connect_timeout
            )
        except LegacyAgentError as exc:
            raise LookupError(str(exc)) from exc
        except Exception as exc:  # ConnectionFailedError, grpc errors: all "unreachable"
            raise HolePunchRelayError(f"{type(exc).__name__}: {exc}") from exc
        logger.info(
            "relayed hole punch: %s should reach %s at %s:%d",
            target,
            requester.node_id,
            requester.address.host,
            requester.address.port,
        )
