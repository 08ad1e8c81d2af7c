"""The dual-stack agent: one node served on the legacy gRPC stack and on QUIC at once.

:class:`DualStackAgent` owns one identity, one set of domains (node graph, claims,
notifications, vaults) and ONE :class:`~agent.servicer.AgentServicer`, and serves them on

* the legacy stack — a :class:`agent.legacy.LegacyAgent` (grpc.aio behind the reverse TLS
  proxy, forward CONNECT proxy for dialling) — while the rollout stage serves ``grpc``;
* the new stack — an :class:`agent.quic.Agent` (one UDP socket, QUIC, quic_rpc) — while
  the stage serves ``quic``.

Both stacks are built from the same injected identity, domains and servicer, so both see
the same state. The stage (:class:`~migration.rollout.RolloutStage`) is persisted in
``<state_dir>/rollout.json``; :meth:`DualStackAgent.set_stage` changes it on a running
agent without a restart and without failing calls in flight:

1. a stack the new stage serves is started *before* the dial preference changes;
2. the stage is persisted and the advertisement updated (new calls use the new stage);
3. a stack the new stage no longer serves is advertised NOT_SERVING, then drained —
   outgoing calls on it may finish within ``drain_grace`` seconds, incoming calls are let
   finish by the stack's own graceful stop (new ones are refused with UNAVAILABLE, which
   callers at ``quic-preferred`` fall back from) — and only then stopped.

In ``quic-only`` the legacy stack is not started and nothing from ``grpc`` or
``legacy_grpc`` is imported: :mod:`agent.legacy` is imported lazily, only when a stage
serves gRPC.

Transports a node serves are advertised through ``grpc.health.v1`` on every transport
it serves: the service names ``quicshift.transport.grpc`` and ``quicshift.transport.quic``
are SERVING while the stage serves that transport, NOT_SERVING otherwise (so a
``Health/List`` over either transport is the node's transport advertisement, and each
transport's own health is its ``""`` and agent-service entries). A caller records what it
learnt per peer (:meth:`DualStackAgent.add_node` seeds it from configuration; a
``Health/List`` refreshes it in the background when older than ``peer_info_ttl``, and at
once when a call found no usable transport), and keeps the node graph's
``NodeAddress.transports`` in step.

Calls: :meth:`DualStackAgent.call` (one method, JSON-free, protobuf in and out) and
:meth:`DualStackAgent.call_with` (any exchange over a connection's stubs) choose the
transports with :class:`~migration.rollout.TransportChooser`, fall back to the next one
within the :class:`~migration.rollout.FallbackPolicy` budget when the stage allows it,
and record every attempt (transport, method, status, latency) and every fallback (with
its reason) in the agent's :class:`~migration.metrics.MetricsRegistry`. The fallback
budget bounds the *dials* and failed attempts; a call that got through runs under its own
deadline (``timeout``), so long streams are never cut by the fallback budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agent.connection_info import ConnectionInfo, ConnectionInfoError
from agent.domains.claims import ClaimStore
from agent.domains.nodes import NodeAddress, NodeGraph
from agent.domains.notifications import NotificationInbox
from agent.domains.vaults import VaultStore
from agent.identity import KeyType, NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import AgentServicer, HolePunchRelayError, RequesterAddress
from agent.wiring import AgentDomains, load_identity, open_domains
from migration.metrics import MetricsRegistry, status_name_of
from migration.rollout import (
    GRPC,
    QUIC,
    TRANSPORTS,
    Attempt,
    FallbackExhaustedError,
    FallbackPolicy,
    NoCommonTransportError,
    RolloutStage,
    RolloutState,
    StageChange,
    TransportChooser,
    TransportPlan,
)
from protos.agent.v1 import agent_service_pb2
from protos.grpc.health.v1 import health_pb2

if TYPE_CHECKING:
    from agent.legacy import LegacyAgent
    from agent.quic import Agent as QUICAgent
    from quic_rpc.quic import QUICConfig

__all__ = [
    "DEFAULT_DRAIN_GRACE",
    "DEFAULT_DRAIN_NOTICE",
    "DEFAULT_PEER_INFO_TTL",
    "TRANSPORT_HEALTH_PREFIX",
    "DualStackAgent",
    "DualStackAgentError",
    "MethodSpec",
    "PeerConnection",
    "PeerInfo",
    "TransportNotRunningError",
    "last_call_transport",
    "method_spec",
    "peer_addresses_from_json",
    "transport_health_name",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSPORT_HEALTH_PREFIX: Final = "quicshift.transport."
DEFAULT_DRAIN_GRACE: Final = 5.0
DEFAULT_PEER_INFO_TTL: Final = 10.0
DEFAULT_DRAIN_NOTICE: Final = 2 * DEFAULT_PEER_INFO_TTL
AGENT_SERVICE_NAME: Final = "quicshift.agent.v1.AgentService"
HEALTH_SERVICE_NAME: Final = "grpc.health.v1.Health"
_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING
_UNSPECIFIED: Final = {"::": "::1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1"}


_LAST_TRANSPORT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "quicshift_last_call_transport", default=None
)


def last_call_transport() -> str | None:
    """The transport the latest successful call made from this task ran on."""
    return _LAST_TRANSPORT.get()


def transport_health_name(transport: str) -> str:
    """The health service name that advertises ``transport``."""
    return TRANSPORT_HEALTH_PREFIX + transport


class DualStackAgentError(Exception):
    """The agent was misused (wrong state, unknown node, bad method) or a stage change
    could not be made; ``code`` is stable."""

    code = "dual_agent"


class TransportNotRunningError(DualStackAgentError, ConnectionError):
    """The transport's stack is not running (or is draining) in this agent; a
    :class:`ConnectionError`, so a fallback-capable stage moves on to the next one."""

    code = "transport_not_running"


# -- methods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One RPC method of the agent (``AgentService`` or ``Health``)."""

    service: str  # "AgentService" | "Health"
    name: str
    client_streaming: bool
    server_streaming: bool
    request_type: Any
    response_type: Any

    @property
    def label(self) -> str:
        """The metrics label: ``AgentService/Echo``, ``Health/Check``."""
        return f"{self.service}/{self.name}"


def _specs() -> dict[str, MethodSpec]:
    from google.protobuf import message_factory

    specs: dict[str, MethodSpec] = {}
    for descriptor, short in (
        (agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"], "AgentService"),
        (health_pb2.DESCRIPTOR.services_by_name["Health"], "Health"),
    ):
        for method in descriptor.methods:
            spec = MethodSpec(
                service=short,
                name=method.name,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                request_type=message_factory.GetMessageClass(method.input_type),
                response_type=message_factory.GetMessageClass(method.output_type),
            )
            for key in (method.name, spec.label, f"{descriptor.full_name}/{method.name}"):
                specs.setdefault(key.lower(), spec)
    return specs


_SPECS: dict[str, MethodSpec] | None = None


def method_spec(method: str) -> MethodSpec:
    """The method named ``Echo``, ``AgentService/Echo``, ``Health/Check`` or by its full
    name (``/quicshift.agent.v1.AgentService/Echo``); case-insensitive."""
    global _SPECS
    if _SPECS is None:
        _SPECS = _specs()
    spec = _SPECS.get(method.strip().lstrip("/").lower())
    if spec is None:
        names = sorted({s.label for s in _SPECS.values()})
        raise DualStackAgentError(f"unknown method {method!r}; expected one of {', '.join(names)}")
    return spec


def _status_of(exc: BaseException) -> str:
    """The status name to record for a failed attempt."""
    code = status_name_of(exc)
    if code is not None:
        return code
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, ConnectionError | OSError) or any(
        cls.__name__ == "ConnectionFailedError" for cls in type(exc).__mro__
    ):
        return "UNAVAILABLE"
    return "UNKNOWN"


# -- peers ------------------------------------------------------------------------------------


@dataclass
class PeerInfo:
    """What this agent knows about a peer: where each transport is, which it serves."""

    node_id: NodeId
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    serves: tuple[str, ...] = ()
    learnt_at: float | None = None  # monotonic; None: configured, never confirmed

    def served_addresses(self) -> list[NodeAddress]:
        return [
            NodeAddress(host, port, (transport,))
            for transport, (host, port) in self.addresses.items()
            if transport in self.serves
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "serves": list(self.serves),
            "addresses": {t: f"{h}:{p}" for t, (h, p) in sorted(self.addresses.items())},
            "source": "configured" if self.learnt_at is None else "advertised",
        }


@dataclass(frozen=True)
class PeerConnection:
    """A ready connection to a peer on one transport, with its grpc-shaped stubs."""

    transport: str
    node_id: NodeId
    connection: Any

    @property
    def stub(self) -> Any:
        """The ``AgentService`` stub."""
        return self.connection.stub

    @property
    def health(self) -> Any:
        """The ``grpc.health.v1.Health`` stub."""
        return self.connection.health


def _free_port(host: str, kind: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


# -- the agent --------------------------------------------------------------------------------


class DualStackAgent:
    """One node on both stacks, its stage persisted and changeable while it runs."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        stage: RolloutStage | str | None = None,
        identity: NodeIdentity | None = None,
        key_type: KeyType = "ed25519",
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        quic_port: int = 0,
        fallback: FallbackPolicy | None = None,
        metrics: MetricsRegistry | None = None,
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        drain_notice: float = DEFAULT_DRAIN_NOTICE,
        peer_info_ttl: float = DEFAULT_PEER_INFO_TTL,
        connect_timeout: float = 10.0,
        quic_config: QUICConfig | None = None,
    ) -> None:
        """``stage`` overrides (and persists) the stored stage; without it the stored
        stage is used, ``legacy`` for a new state dir. ``grpc_port`` is the TCP port of
        the reverse proxy, ``quic_port`` the UDP port; 0 picks free ones, kept for the
        agent's life so a stack restarted by a rollback is found where it was.
        ``drain_notice``: how long a stack the stage stops serving keeps serving while it
        is advertised NOT_SERVING, so that peers learn it (within their
        ``peer_info_ttl``) before it is drained. ``drain_grace``: how long calls in flight
        on it may then run. ``peer_info_ttl``: how old a peer's advertisement may get before it is
        refreshed (in the background)."""
        if drain_grace < 0 or drain_notice < 0:
            raise ValueError("drain_grace and drain_notice must be >= 0")
        if peer_info_ttl <= 0:
            raise ValueError("peer_info_ttl must be positive")
        self._state_dir = Path(state_dir)
        self._stage_arg = None if stage is None else RolloutStage.parse(stage)
        self._identity_arg = identity
        self._key_type: KeyType = key_type
        self._host = host
        self._public_host = _UNSPECIFIED.get(host, host)
        self._ports: dict[str, int] = {GRPC: grpc_port, QUIC: quic_port}
        self._fallback = fallback or FallbackPolicy()
        self._metrics = metrics if metrics is not None else MetricsRegistry()
        self._drain_grace = drain_grace
        self._drain_notice = drain_notice
        self._peer_info_ttl = peer_info_ttl
        self._connect_timeout = connect_timeout
        self._quic_config = quic_config
        self._identity: NodeIdentity | None = None
        self._domains: AgentDomains | None = None
        self._servicer: AgentServicer | None = None
        self._rollout: RolloutState | None = None
        self._chooser = TransportChooser(lambda: self.stage)
        self._stacks: dict[str, Any] = {}
        self._draining: set[str] = set()
        self._stage_lock = asyncio.Lock()
        self._peers: dict[NodeId, PeerInfo] = {}
        self._refreshing: dict[NodeId, asyncio.Task[bool]] = {}
        self._inflight: dict[str, int] = {t: 0 for t in TRANSPORTS}
        self._idle: dict[str, asyncio.Event] = {t: asyncio.Event() for t in TRANSPORTS}
        for event in self._idle.values():
            event.set()
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        node = "?" if self._identity is None else str(self._identity.node_id)[:12] + "…"
        stage = "?" if self._rollout is None else self._rollout.stage.value
        return f"<DualStackAgent {node} {stage}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the identity, domains and stage; start the stacks the stage serves."""
        if self._started or self._stopped:
            raise DualStackAgentError("a DualStackAgent starts once; make a new one to restart")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        _log.info(
            "dual-stack agent %s at stage %s serving %s",
            self.node_id,
            self.stage,
            ", ".join(self.stage.serves),
        )

    async def _start(self) -> None:
        self._rollout = rollout = await asyncio.to_thread(
            RolloutState.load, self._state_dir, default=self._stage_arg or RolloutStage.LEGACY
        )
        if self._stage_arg is not None and rollout.stage is not self._stage_arg:
            await asyncio.to_thread(rollout.set, self._stage_arg, "agent started with --stage")
        elif not rollout.path.exists():  # a new state dir: persist the stage it starts at
            await asyncio.to_thread(rollout.save)
        identity = await asyncio.to_thread(
            load_identity, self._state_dir, self._identity_arg, self._key_type
        )
        self._identity = identity
        self._domains = domains = await asyncio.to_thread(
            open_domains, self._state_dir, identity.node_id
        )
        self._servicer = AgentServicer(
            identity=identity,
            nodes=domains.nodes,
            claims=domains.claims,
            notifications=domains.notifications,
            vaults=domains.vaults,
            connection_info=self.connection_info,
            hole_punch_relay=self._relay_hole_punch,
            hole_punch_target=self._hole_punch_target,
        )
        for record in await asyncio.to_thread(domains.nodes.all_nodes):
            info = PeerInfo(record.node_id)
            for address in record.addresses:
                for transport in address.transports or (GRPC,):
                    if transport in TRANSPORTS:
                        info.addresses[transport] = (address.host, address.port)
            info.serves = tuple(t for t in TRANSPORTS if t in info.addresses)
            self._peers[record.node_id] = info
        if self._ports[GRPC] == 0:
            self._ports[GRPC] = _free_port(self._host, socket.SOCK_STREAM)
        if self._ports[QUIC] == 0:
            self._ports[QUIC] = _free_port(self._host, socket.SOCK_DGRAM)
        for transport in rollout.stage.serves:
            await self._start_stack(transport)
        self._advertise()

    async def stop(self) -> None:
        """Stop both stacks (in-flight calls get ``drain_grace``) and close the state;
        idempotent, safe after a failed start."""
        self._stopped = True
        refreshes = list(self._refreshing.values())
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)
        for transport in list(self._stacks):
            await self._stop_stack(transport)
        if self._domains is not None:
            await asyncio.to_thread(self._domains.close)

    async def __aenter__(self) -> DualStackAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_stack(self, transport: str) -> None:
        identity = self.identity
        domains = self._require(self._domains, "domains")
        servicer = self._require(self._servicer, "servicer")
        stack: Any
        if transport == GRPC:
            try:
                from agent.legacy import LegacyAgent  # lazy: quic-only never imports grpc
            except ImportError as exc:
                raise DualStackAgentError(
                    f"serving gRPC needs grpcio and legacy_grpc (pip install "
                    f"'quicshift[legacy]'), which cannot be imported: {exc}"
                ) from exc

            stack = LegacyAgent(
                self._state_dir,
                identity,
                host=self._host,
                port=self._ports[GRPC],
                connect_timeout=self._connect_timeout,
                stop_grace=self._drain_grace,
                domains=domains,
                servicer=servicer,
            )
        else:
            from agent.quic import Agent, ConnectionManagerConfig

            stack = Agent(
                self._state_dir,
                identity,
                host=self._host,
                port=self._ports[QUIC],
                quic_config=self._quic_config,
                connections=ConnectionManagerConfig(
                    connect_timeout=self._connect_timeout,
                    close_grace=min(self._drain_grace, 5.0),
                ),
                stop_grace=self._drain_grace,
                domains=domains,
                servicer=servicer,
            )
        try:
            await stack.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DualStackAgentError(
                    f"cannot start {transport}: port {self._ports[transport]} is in use"
                ) from exc
            raise
        self._stacks[transport] = stack
        self._ports[transport] = stack.port

    async def _stop_stack(self, transport: str) -> None:
        stack = self._stacks.get(transport)
        if stack is None:
            return
        self._draining.add(transport)
        try:
            await stack.stop()
        finally:
            self._stacks.pop(transport, None)
            self._draining.discard(transport)

    async def _drain_and_stop(self, transport: str) -> None:
        """Advertise ``transport`` NOT_SERVING but keep serving it for ``drain_notice``
        seconds (peers learn it meanwhile and stop dialling it), then let outgoing calls
        on it finish (up to ``drain_grace``) and stop the stack (incoming calls in flight
        get ``drain_grace``; new ones are refused)."""
        self._advertise()
        if self._drain_notice > 0:
            await asyncio.sleep(self._drain_notice)
        self._draining.add(transport)
        self._advertise()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_grace):
                await self._idle[transport].wait()
        await self._stop_stack(transport)

    # -- the stage --------------------------------------------------------------------------

    @property
    def stage(self) -> RolloutStage:
        return self._require(self._rollout, "rollout state").stage

    @property
    def rollout(self) -> RolloutState:
        return self._require(self._rollout, "rollout state")

    async def set_stage(self, stage: RolloutStage | str, reason: str = "") -> StageChange | None:
        """Move the running agent to ``stage`` (persisted); ``None`` if already there.

        Starts what the new stage serves before switching, drains and stops what it no
        longer serves after. If a stack cannot start, the stage is unchanged and the
        error raised (:class:`DualStackAgentError`).
        """
        target = RolloutStage.parse(stage)
        async with self._stage_lock:
            rollout = self.rollout
            if target is rollout.stage:
                return None
            started: list[str] = []
            try:
                for transport in target.serves:
                    if transport not in self._stacks:
                        await self._start_stack(transport)
                        started.append(transport)
                change = await asyncio.to_thread(rollout.set, target, reason)
            except BaseException:
                for transport in started:
                    await self._stop_stack(transport)
                raise
            self._advertise()
            _log.info("agent %s: stage %s -> %s", self.node_id, change and change.previous, target)
            for transport in TRANSPORTS:
                if transport not in target.serves and transport in self._stacks:
                    await self._drain_and_stop(transport)
            self._advertise()
            return change

    async def advance(self, reason: str = "") -> StageChange | None:
        """One stage forward (:class:`~migration.rollout.StageLimitError` at the end)."""
        return await self.set_stage(self.stage.advance(), reason)

    async def rollback(self, reason: str = "") -> StageChange | None:
        """One stage back (:class:`~migration.rollout.StageLimitError` at ``legacy``)."""
        return await self.set_stage(self.stage.rollback(), reason)

    def _advertise(self) -> None:
        """Tell every running stack's health service which transports are served."""
        served = {
            t: t in self.stage.serves and t in self._stacks and t not in self._draining
            for t in TRANSPORTS
        }
        for transport, stack in self._stacks.items():
            for name, serving in served.items():
                self._set_health(transport, stack, transport_health_name(name), serving)

    @staticmethod
    def _set_health(transport: str, stack: Any, service: str, serving: bool) -> None:
        if transport == GRPC:
            stack.grpc_server.health.set_serving(service, serving)
        else:
            stack.health_state.set(service, _SERVING if serving else _NOT_SERVING)

    # -- what it is -------------------------------------------------------------------------

    def _require(self, value: T | None, what: str) -> T:
        if value is None or self._stopped:
            raise DualStackAgentError(f"the agent is not running ({what} unavailable)")
        return value

    @property
    def running(self) -> bool:
        return self._started and not self._stopped and self._rollout is not None

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
        return self._public_host

    @property
    def metrics(self) -> MetricsRegistry:
        return self._metrics

    @property
    def fallback_policy(self) -> FallbackPolicy:
        return self._fallback

    @property
    def ports(self) -> dict[str, int]:
        """The port of each transport (TCP for grpc, UDP for quic), served or not."""
        return dict(self._ports)

    @property
    def serves(self) -> tuple[str, ...]:
        """The transports served now (the stage's, minus any draining)."""
        return tuple(t for t in self.stage.serves if t in self._stacks and t not in self._draining)

    @property
    def node_addresses(self) -> list[NodeAddress]:
        """Where each transport of this node is (served now or not): what a peer is
        configured with; :attr:`serves` says which are served."""
        return [NodeAddress(self.host, self._ports[t], (t,)) for t in TRANSPORTS]

    @property
    def running_transports(self) -> tuple[str, ...]:
        return tuple(t for t in TRANSPORTS if t in self._stacks)

    def stack(self, transport: str) -> Any:
        """The running stack of ``transport`` (a LegacyAgent or a quic Agent)."""
        stack = self._stacks.get(transport)
        if stack is None:
            raise TransportNotRunningError(f"the {transport} stack is not running")
        return stack

    @property
    def legacy(self) -> LegacyAgent:
        legacy: LegacyAgent = self.stack(GRPC)
        return legacy

    @property
    def quic(self) -> QUICAgent:
        quic: QUICAgent = self.stack(QUIC)
        return quic

    @property
    def servicer(self) -> AgentServicer:
        return self._require(self._servicer, "servicer")

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

    def in_flight(self, transport: str | None = None) -> int:
        """Outgoing calls in flight on ``transport`` (all transports without it)."""
        if transport is None:
            return sum(self._inflight.values())
        return self._inflight[transport]

    def health(self) -> dict[str, dict[str, str]]:
        """Per running transport, its health statuses by service name."""
        names = ["", AGENT_SERVICE_NAME, *(transport_health_name(t) for t in TRANSPORTS)]
        result: dict[str, dict[str, str]] = {}
        for transport, stack in self._stacks.items():
            statuses: dict[str, str] = {}
            for name in names:
                if transport == GRPC:
                    value = stack.grpc_server.health.status(name)
                else:
                    value = stack.health_state.get(name)
                if value is not None:
                    statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(value)
            result[transport] = statuses
        return result

    def status(self) -> dict[str, Any]:
        """Everything an operator asks about, as JSON-able data."""
        stage = self.stage
        return {
            "node_id": str(self.node_id),
            "state_dir": str(self._state_dir),
            "stage": stage.value,
            "serves": list(self.serves),
            "dials": list(stage.dial_order),
            "running": list(self.running_transports),
            "draining": sorted(self._draining),
            "host": self.host,
            "ports": self.ports,
            "in_flight": dict(self._inflight),
            "health": self.health(),
            "peers": [p.to_json() for p in self._peers.values()],
            "history": [c.to_json() for c in self.rollout.history[-10:]],
        }

    # -- who is calling ---------------------------------------------------------------------

    def connection_info(self, context: Any) -> ConnectionInfo:
        """The servicer's ``connection_info(context)`` for calls on either stack: QUIC
        contexts carry ``peer_info``, grpc.aio ones are resolved via the reverse proxy."""
        transport = QUIC if hasattr(context, "peer_info") else GRPC
        stack = self._stacks.get(transport)
        if stack is None:
            raise ConnectionInfoError(f"the {transport} stack is not serving")
        info: ConnectionInfo = stack.connection_info(context)
        return info

    async def _relay_hole_punch(
        self, target: NodeId, requester: RequesterAddress
    ) -> NodeAddress | None:
        """The servicer's ``hole_punch_relay``. When the requester asks for QUIC and this
        node dials QUIC to a target that serves it, the signal is forwarded over QUIC
        (the target then punches towards the requester, as on the QUIC stack); otherwise
        it is a reachability check of the target, as on the legacy stack."""
        info = self._peers.get(target)
        if info is None:
            raise LookupError(f"node {target} is not known")
        forward = (
            QUIC in requester.address.transports
            and QUIC in self.stage.dial_order
            and QUIC in info.serves
            and QUIC in self._stacks
        )
        try:
            if forward:
                await self._forward_hole_punch(target, requester)
            else:
                await self.call(target, "Health/Check", health_pb2.HealthCheckRequest(service=""))
        except Exception as exc:
            raise HolePunchRelayError(f"{type(exc).__name__}: {exc}") from exc
        _log.info(
            "relayed hole punch (%s): %s should reach %s at %s:%d",
            "forwarded over quic" if forward else "reachability",
            target,
            requester.node_id,
            requester.address.host,
            requester.address.port,
        )
        if forward and QUIC in info.addresses:
            host, port = info.addresses[QUIC]
            return NodeAddress(host, port, (QUIC,))
        return None

    async def _forward_hole_punch(self, target: NodeId, requester: RequesterAddress) -> None:
        from agent.servicer import node_id_to_proto
        from protos.agent.v1 import common_pb2

        request = agent_service_pb2.HolePunchSignalRequest(
            target=node_id_to_proto(target),
            transports=list(requester.address.transports),
            requester=common_pb2.NodeInfo(
                node_id=node_id_to_proto(requester.node_id),
                addresses=[
                    common_pb2.NodeAddress(
                        host=requester.address.host,
                        port=requester.address.port,
                        transports=list(requester.address.transports),
                    )
                ],
            ),
        )
        try:
            await self.call(
                target,
                "NodesHolePunchSignal",
                request,
                transport=QUIC,
                timeout=self._connect_timeout,
            )
        except Exception as exc:
            if status_name_of(exc) != "UNIMPLEMENTED":
                raise
            # a node that does not punch: it is reachable, all a signal promised before
            _log.info("node %s does not hole punch; signalled as reachable", target)

    async def _hole_punch_target(self, requester: RequesterAddress, signaller: NodeId) -> None:
        """The servicer's ``hole_punch_target``: punch towards the requester from the
        QUIC stack (its one UDP socket)."""
        stack = self._stacks.get(QUIC)
        if stack is None or QUIC in self._draining:
            raise HolePunchRelayError("this node does not serve quic now")
        await stack.hole_puncher.punch_towards(requester, signaller)

    # -- peers ------------------------------------------------------------------------------

    def add_node(
        self,
        node_id: NodeId,
        addresses: Iterable[NodeAddress],
        *,
        serves: Iterable[str] | None = None,
    ) -> PeerInfo:
        """Record where a peer's transports are and which it serves (default: every
        transport of ``addresses``; an address without transports is gRPC, as peers from
        before advertising). Calls keep it up to date from the peer's advertisement."""
        if node_id == self.node_id:
            raise DualStackAgentError("an agent does not add itself as a peer")
        info = self._peers.get(node_id) or PeerInfo(node_id)
        for address in addresses:
            for transport in address.transports or (GRPC,):
                if transport in TRANSPORTS:
                    info.addresses[transport] = (address.host, address.port)
        wanted = tuple(info.addresses) if serves is None else tuple(serves)
        info.serves = tuple(t for t in TRANSPORTS if t in wanted and t in info.addresses)
        info.learnt_at = None
        self._peers[node_id] = info
        self.nodes.set_node(node_id, info.served_addresses())
        return info

    def peer(self, node_id: NodeId) -> PeerInfo:
        info = self._peers.get(node_id)
        if info is None:
            raise DualStackAgentError(f"node {node_id} is not known (add_node it first)")
        return info

    @property
    def peers(self) -> list[PeerInfo]:
        return list(self._peers.values())

    async def refresh_peer(self, node_id: NodeId) -> bool:
        """Ask the peer which transports it serves (``Health/List`` over a transport this
        agent runs); True when that changed what this agent knew."""
        running = self._refreshing.get(node_id)
        if running is not None and not running.done():
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._refresh(node_id))
        self._refreshing[node_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing.get(node_id) is task:
                del self._refreshing[node_id]

    async def refresh_peers(self) -> None:
        """Refresh every known peer's advertisement."""
        await asyncio.gather(*(self.refresh_peer(p) for p in list(self._peers)))

    async def _list_over(self, transport: str, node_id: NodeId) -> dict[str, int]:
        """The peer's transport advertisement, asked over ``transport``."""
        async with asyncio.timeout(self._fallback.attempt_timeout):
            conn = await self._open(transport, node_id)
            reply = await conn.health.List(health_pb2.HealthListRequest())
        return {
            name[len(TRANSPORT_HEALTH_PREFIX) :]: response.status
            for name, response in reply.statuses.items()
            if name.startswith(TRANSPORT_HEALTH_PREFIX)
        }

    async def _refresh(self, node_id: NodeId) -> bool:
        """Ask over every transport this agent runs at once; the first advertisement
        that comes back is the answer (a peer that advertises nothing serves what
        answered, and what was believed and did not fail now)."""
        info = self.peer(node_id)
        candidates = [t for t in self._stacks if t in info.addresses and t not in self._draining]
        tasks = {asyncio.ensure_future(self._list_over(t, node_id)): t for t in candidates}
        advertised: dict[str, int] | None = None
        answered: set[str] = set()
        failed: set[str] = set()
        try:
            pending = set(tasks)
            while pending and advertised is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        _log.debug(
                            "refreshing %s over %s: %s", node_id, tasks[task], task.exception()
                        )
                        failed.add(tasks[task])
                    elif task.result():
                        advertised = task.result()
                    else:
                        answered.add(tasks[task])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if advertised is not None:
            serves = tuple(t for t in TRANSPORTS if advertised.get(t) == _SERVING)
        elif answered:
            serves = tuple(
                t for t in TRANSPORTS if t in answered or (t in info.serves and t not in failed)
            )
        else:
            return False  # unreachable now: keep what is known
        serves = tuple(t for t in serves if t in info.addresses)
        changed = serves != info.serves
        info.serves = serves
        info.learnt_at = time.monotonic()
        if changed and not self._stopped:
            await asyncio.to_thread(self.nodes.set_node, node_id, info.served_addresses())
        return changed

    def _maybe_refresh_in_background(self, info: PeerInfo, *, force: bool = False) -> None:
        fresh = (
            not force
            and info.learnt_at is not None
            and time.monotonic() - info.learnt_at < self._peer_info_ttl
        )
        if fresh or info.node_id in self._refreshing or self._stopped:
            return
        task = asyncio.ensure_future(self._refresh(info.node_id))
        self._refreshing[info.node_id] = task

        def done(t: asyncio.Task[bool]) -> None:
            if self._refreshing.get(info.node_id) is t:
                del self._refreshing[info.node_id]
            if not t.cancelled() and t.exception() is not None:
                _log.debug("background refresh of %s failed: %s", info.node_id, t.exception())

        task.add_done_callback(done)

    # -- dialling ---------------------------------------------------------------------------

    async def _open(self, transport: str, node_id: NodeId) -> Any:
        """The stack's connection to ``node_id`` on ``transport`` (reused while usable)."""
        stack = self._stacks.get(transport)
        if stack is None or transport in self._draining:
            raise TransportNotRunningError(f"this agent does not run {transport} now")
        info = self.peer(node_id)
        address = info.addresses.get(transport)
        if address is None:
            raise NoCommonTransportError(self.stage, info.serves, dials=(transport,))
        host, port = address
        conn = await stack.connect(node_id, host, port)
        if transport == GRPC and _channel_failed(conn):
            await stack.disconnect(node_id)  # a failed channel backs off: dial afresh
            conn = await stack.connect(node_id, host, port)
        return conn

    def plan(self, node_id: NodeId, *, transport: str | None = None) -> TransportPlan:
        """The transports a call to ``node_id`` would try now, in order, and why."""
        return self._chooser.choose(self.peer(node_id).serves, override=transport)

    async def connect(self, node_id: NodeId, *, transport: str | None = None) -> PeerConnection:
        """A ready connection to ``node_id`` on the transport the stage picks (or
        ``transport``), falling back on connection failure where the stage allows.
        Calls made on it are not metered; prefer :meth:`call` / :meth:`call_with`."""

        async def operation(conn: PeerConnection) -> PeerConnection:
            return conn

        return await self._dial(node_id, "connect", operation, transport, None, meter=False)

    async def call(
        self,
        node_id: NodeId,
        method: str,
        request: Any,
        *,
        transport: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's deadline, as in grpc
    ) -> Any:
        """Call one agent method on ``node_id``: the response message, or the list of
        messages of a server-streaming method. For client-streaming methods ``request``
        is an iterable of messages (or one message)."""
        spec = method_spec(method)

        async def operation(conn: PeerConnection) -> Any:
            stub = conn.health if spec.service == "Health" else conn.stub
            rpc = getattr(stub, spec.name)
            kwargs: dict[str, Any] = {}
            if timeout is not None:
                kwargs["timeout"] = timeout
            argument: Any = request
            if spec.client_streaming:
                messages = [request] if hasattr(request, "SerializeToString") else list(request)
                argument = iter(messages)
            result = rpc(argument, **kwargs)
            if spec.server_streaming:
                return [message async for message in result]
            return await result

        return await self.call_with(
            node_id, spec.label, operation, transport=transport, timeout=timeout
        )

    async def call_with(
        self,
        node_id: NodeId,
        method: str,
        operation: Callable[[PeerConnection], Awaitable[T]],
        *,
        transport: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the whole call's deadline
    ) -> T:
        """Run ``operation(connection)`` — any exchange over the connection's stubs,
        e.g. a bidirectional protocol — as the call ``method`` (its metrics label), on
        the transport the stage picks, with fallback and metrics as :meth:`call`."""
        return await self._dial(node_id, method, operation, transport, timeout, meter=True)

    async def _dial(
        self,
        node_id: NodeId,
        method: str,
        operation: Callable[[PeerConnection], Awaitable[T]],
        override: str | None,
        timeout: float | None,  # noqa: ASYNC109
        *,
        meter: bool,
    ) -> T:
        if self._stopped or not self._started:
            raise DualStackAgentError("the agent is not running")
        info = self.peer(node_id)
        self._maybe_refresh_in_background(info)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for round_ in (0, 1):  # a second round only if the peer's advertisement changed
            try:
                plan = self._chooser.choose(info.serves, override=override)
            except NoCommonTransportError:
                if round_ == 0 and await self._learn_new_plan(node_id, (), override):
                    continue
                raise
            tried = plan.transports
            try:
                return await self._run_plan(plan, node_id, method, operation, deadline, meter=meter)
            except FallbackExhaustedError:
                if round_ == 0 and await self._learn_new_plan(node_id, tried, override):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _learn_new_plan(
        self, node_id: NodeId, tried: tuple[str, ...], override: str | None
    ) -> bool:
        """Refresh the peer's advertisement; True if the plan is now different."""
        if override is not None:
            return False
        await self.refresh_peer(node_id)
        try:
            plan = self._chooser.choose(self.peer(node_id).serves)
        except NoCommonTransportError:
            return False
        return plan.transports != tried

    async def _run_plan(
        self,
        plan: TransportPlan,
        node_id: NodeId,
        method: str,
        operation: Callable[[PeerConnection], Awaitable[T]],
        deadline: float | None,
        *,
        meter: bool,
    ) -> T:
        """Try the plan's transports in order. Dials and failed attempts spend the
        fallback budget; the attempt that gets through runs to the call's deadline."""
        policy = self._fallback
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + policy.budget
        attempts: list[Attempt] = []
        transports = plan.transports
        for index, transport in enumerate(transports):
            last = index == len(transports) - 1
            now = loop.time()
            if now >= budget_end:
                raise FallbackExhaustedError(attempts, budget_spent=True)
            dial_limit = budget_end if last else min(budget_end, now + policy.attempt_timeout)
            if deadline is not None:
                dial_limit = min(dial_limit, deadline)
            try:
                return await self._attempt(
                    transport, node_id, method, operation, dial_limit, deadline, meter=meter
                )
            except Exception as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise  # the caller's deadline: nothing left to fall back with
                reason = policy.fallback_reason(exc)
                if reason is None:
                    raise
                attempts.append(Attempt(transport, reason))
                if last:
                    raise FallbackExhaustedError(
                        attempts, budget_spent=loop.time() >= budget_end
                    ) from exc
                nxt = transports[index + 1]
                self._maybe_refresh_in_background(self.peer(node_id), force=True)
                if meter:
                    self._metrics.record_fallback(transport, nxt, method, reason)
                _log.info(
                    "%s to %s: %s failed (%s), trying %s", method, node_id, transport, reason, nxt
                )
        raise FallbackExhaustedError(attempts, budget_spent=False)  # an empty plan

    async def _attempt(
        self,
        transport: str,
        node_id: NodeId,
        method: str,
        operation: Callable[[PeerConnection], Awaitable[T]],
        dial_limit: float,
        deadline: float | None,
        *,
        meter: bool,
    ) -> T:
        self._inflight[transport] += 1
        self._idle[transport].clear()
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(dial_limit):
                conn = await self._open(transport, node_id)
            async with asyncio.timeout_at(deadline):
                result = await operation(PeerConnection(transport, node_id, conn))
        except BaseException as exc:
            if meter:
                self._metrics.record_call(
                    transport, method, _status_of(exc), time.perf_counter() - started
                )
            raise
        finally:
            self._inflight[transport] -= 1
            if self._inflight[transport] == 0:
                self._idle[transport].set()
        if meter:
            self._metrics.record_call(transport, method, "OK", time.perf_counter() - started)
        _LAST_TRANSPORT.set(transport)
        return result


def _channel_failed(conn: Any) -> bool:
    """A legacy connection whose grpc channel is in TRANSIENT_FAILURE or SHUTDOWN."""
    channel = getattr(conn, "channel", None)
    if channel is None:
        return False
    state = channel.get_state(try_to_connect=False)
    return getattr(state, "name", "") in {"TRANSIENT_FAILURE", "SHUTDOWN"}


def peer_addresses_from_json(data: Mapping[str, Any]) -> list[NodeAddress]:
    """``{"host": h, "ports": {"grpc": p, "quic": q}}`` → the node's addresses."""
    host = str(data["host"])
    ports: Mapping[str, Any] = data["ports"]
    return [NodeAddress(host, int(ports[t]), (t,)) for t in TRANSPORTS if ports.get(t)]
