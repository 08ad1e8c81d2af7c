"""The agent service implementation, written against the ``grpc.aio`` servicer API only.

One :class:`AgentServicer` runs on every transport: on grpc.aio directly, and on QUIC
through the grpc-compatible shim. It uses only ``context.abort``,
``context.time_remaining``, ``context.invocation_metadata`` and ``context.peer``, and it
learns who is calling from the injected ``connection_info(context)`` callable.

Domain errors become statuses in one place, :func:`_domain_errors`:

=============================  ===================
InvalidInputError (and bad ids) INVALID_ARGUMENT
NotFoundError                   NOT_FOUND
SignatureVerificationError      UNAUTHENTICATED
ClaimConflictError, exists      ALREADY_EXISTS
StateClosedError                UNAVAILABLE
other DomainError               INTERNAL
=============================  ===================

Paginated streams send the items, then one final message carrying the page info.
Also here: the proto <-> domain converters and :func:`request_cross_sign`, the caller's
half of the cross-signing exchange.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from agent.connection_info import ConnectionInfo, ConnectionInfoError, ConnectionInfoGetter
from agent.domains.claims import (
    Claim,
    ClaimSignature,
    ClaimStore,
    SignedClaim,
    new_claim,
    sign_claim,
    verify_claim_signature,
    verify_cross_signed,
)
from agent.domains.errors import (
    ClaimConflictError,
    DomainError,
    InvalidInputError,
    NotFoundError,
    SignatureVerificationError,
    StateClosedError,
    VaultExistsError,
)
from agent.domains.nodes import NodeAddress, NodeGraph, NodeRecord
from agent.domains.notifications import (
    Notification,
    NotificationInbox,
    SignedNotification,
    verify_notification,
)
from agent.domains.pagination import Page, PageRequest, SortOrder
from agent.domains.signing import SigningIdentity
from agent.domains.vault_archive import DEFAULT_CHUNK_SIZE
from agent.domains.vaults import VaultStore, check_vault_name
from agent.nodeid import NODE_ID_LENGTH, NodeId
from agent.status import StatusCode
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common

if TYPE_CHECKING:
    from protos.agent.v1.agent_service_pb2_grpc import AgentServiceServicer as _ServicerBase
else:
    # The servicer implements every method itself, so it needs nothing from the generated
    # base class — and importing that class would import grpcio, which the quic-only
    # stage must not load even where it is installed. Both `add_..._to_server` and the
    # descriptor binding take any object with the methods.
    _ServicerBase = object

__all__ = [
    "AgentServicer",
    "CrossSignError",
    "HolePunchRelay",
    "HolePunchRelayError",
    "HolePunchTarget",
    "RequesterAddress",
    "ServicerContextLike",
    "node_id_from_proto",
    "node_id_to_proto",
    "node_record_to_proto",
    "page_request_from_proto",
    "page_to_proto",
    "request_cross_sign",
    "signed_claim_from_proto",
    "signed_claim_to_proto",
    "signed_notification_from_proto",
    "signed_notification_to_proto",
]


class ServicerContextLike(Protocol):
    """The part of ``grpc.aio.ServicerContext`` the servicer uses."""

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn: ...

    def time_remaining(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class RequesterAddress:
    """The node asking for a hole punch and its address as the signalling node sees it."""

    node_id: NodeId
    address: NodeAddress


HolePunchRelay = Callable[[NodeId, RequesterAddress], Awaitable[NodeAddress | None]]
"""``hole_punch_relay(target_node_id, requester)``: tell ``target`` to punch towards the
requester; returns the target's address as this node sees it, if known. Raises
:class:`HolePunchRelayError` (→ UNAVAILABLE) if the target cannot be reached,
LookupError (→ NOT_FOUND) if it is unknown."""

HolePunchTarget = Callable[[RequesterAddress, NodeId], Awaitable[None]]
"""``hole_punch_target(requester, signaller)``: this node is the target of a hole punch
that ``signaller`` forwarded; start punching towards ``requester`` (do not wait for it)."""


class HolePunchRelayError(Exception):
    """The relay could not deliver the hole-punch request to the target."""

    code = "hole_punch_relay_failed"


class CrossSignError(Exception):
    """The cross-signing exchange failed on the caller's side (peer misbehaved or refused)."""

    code = "cross_sign_failed"


# -- converters -----------------------------------------------------------------------


def node_id_to_proto(node_id: NodeId) -> common.NodeId:
    return common.NodeId(id=node_id.raw)


def node_id_from_proto(message: common.NodeId, what: str = "node id") -> NodeId:
    """Raises InvalidInputError with a clear message for a malformed id."""
    raw = message.id
    if len(raw) != NODE_ID_LENGTH:
        raise InvalidInputError(f"{what} must be {NODE_ID_LENGTH} bytes, got {len(raw)}")
    return NodeId(raw)


def _required_node_id(parent: Any, field: str, what: str) -> NodeId:
    if not parent.HasField(field):
        raise InvalidInputError(f"{what} is required")
    return node_id_from_proto(getattr(parent, field), what)


def node_record_to_proto(node: NodeRecord) -> common.NodeInfo:
    return common.NodeInfo(
        node_id=node_id_to_proto(node.node_id),
        addresses=[
            common.NodeAddress(host=a.host, port=a.port, transports=list(a.transports))
            for a in node.addresses
        ],
        last_seen_ms=node.last_seen_ms,
    )


def page_request_from_proto(message: common.PaginationRequest) -> PageRequest:
    if message.order == common.SORT_ORDER_ASC:
        order = SortOrder.ASC
    elif message.order == common.SORT_ORDER_DESC:
        order = SortOrder.DESC
    else:
        raise InvalidInputError(f"unknown sort order {message.order}")
    return PageRequest(page_size=message.page_size, cursor=message.cursor, order=order)


def page_to_proto(page: Page[Any]) -> common.PaginationResponse:
    return common.PaginationResponse(next_cursor=page.next_cursor, has_more=page.has_more)


def signed_claim_to_proto(signed: SignedClaim) -> common.SignedClaim:
    claim = signed.claim
    return common.SignedClaim(
        claim=common.Claim(
            claim_id=claim.claim_id,
            issuer=node_id_to_proto(claim.issuer),
            subject=node_id_to_proto(claim.subject),
            type=claim.type,
            data=claim.data,
            issued_at_ms=claim.issued_at_ms,
            sequence_number=claim.sequence_number,
        ),
        signatures=[
            common.ClaimSignature(
                signer=node_id_to_proto(s.signer),
                signer_chain=list(s.signer_chain),
                signature=s.signature,
            )
            for s in signed.signatures
        ],
    )


def signed_claim_from_proto(
    message: common.SignedClaim, *, default_chains: dict[NodeId, tuple[bytes, ...]] | None = None
) -> SignedClaim:
    """Parse a signed claim; a signature without a chain takes ``default_chains[signer]``."""
    if not message.HasField("claim"):
        raise InvalidInputError("signed claim has no claim")
    c = message.claim
    claim = Claim(
        claim_id=c.claim_id,
        issuer=_required_node_id(c, "issuer", "claim issuer"),
        subject=_required_node_id(c, "subject", "claim subject"),
        type=c.type,
        data=c.data,
        issued_at_ms=c.issued_at_ms,
        sequence_number=c.sequence_number,
    )
    signatures = []
    for s in message.signatures:
        signer = _required_node_id(s, "signer", "claim signer")
        chain = tuple(s.signer_chain) or (default_chains or {}).get(signer, ())
        signatures.append(ClaimSignature(signer=signer, signer_chain=chain, signature=s.signature))
    return SignedClaim(claim=claim, signatures=tuple(signatures))


def signed_notification_to_proto(signed: SignedNotification) -> pb.SignedNotification:
    n = signed.notification
    return pb.SignedNotification(
        notification=pb.Notification(
            notification_id=n.notification_id,
            sender=node_id_to_proto(n.sender),
            type=n.type,
            data=n.data,
            sent_at_ms=n.sent_at_ms,
        ),
        sender_chain=list(signed.sender_chain),
        signature=signed.signature,
    )


def signed_notification_from_proto(
    message: pb.SignedNotification, *, default_chain: tuple[bytes, ...] = ()
) -> SignedNotification:
    if not message.HasField("notification"):
        raise InvalidInputError("signed notification has no notification")
    n = message.notification
    notification = Notification(
        notification_id=n.notification_id,
        sender=_required_node_id(n, "sender", "notification sender"),
        type=n.type,
        data=n.data,
        sent_at_ms=n.sent_at_ms,
    )
    return SignedNotification(
        notification=notification,
        sender_chain=tuple(message.sender_chain) or default_chain,
        signature=message.signature,
    )


# -- the servicer -----------------------------------------------------------------------


@asynccontextmanager
async def _domain_errors(context: ServicerContextLike) -> AsyncIterator[None]:
    """Turn domain errors raised in the block into call statuses (the one mapping)."""
    try:
        yield
    except InvalidInputError as exc:
        await context.abort(StatusCode.INVALID_ARGUMENT, str(exc))
    except NotFoundError as exc:
        await context.abort(StatusCode.NOT_FOUND, str(exc))
    except SignatureVerificationError as exc:
        await context.abort(StatusCode.UNAUTHENTICATED, str(exc))
    except (ClaimConflictError, VaultExistsError) as exc:
        await context.abort(StatusCode.ALREADY_EXISTS, str(exc))
    except StateClosedError:
        await context.abort(StatusCode.UNAVAILABLE, "the agent is shutting down")
    except DomainError as exc:
        await context.abort(StatusCode.INTERNAL, f"agent error: {exc.code}")


async def _check_deadline(context: ServicerContextLike) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await context.abort(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


class AgentServicer(_ServicerBase):
    """``quicshift.agent.v1.AgentService`` over the agent's domains."""

    def __init__(
        self,
        *,
        identity: SigningIdentity,
        nodes: NodeGraph,
        claims: ClaimStore,
        notifications: NotificationInbox,
        vaults: VaultStore,
        connection_info: ConnectionInfoGetter,
        hole_punch_relay: HolePunchRelay | None = None,
        hole_punch_target: HolePunchTarget | None = None,
        vault_chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if vault_chunk_size < 1:
            raise ValueError("vault_chunk_size must be positive")
        self._identity = identity
        self._nodes = nodes
        self._claims = claims
        self._inbox = notifications
        self._vaults = vaults
        self._connection_info = connection_info
        self._hole_punch_relay = hole_punch_relay
        self._hole_punch_target = hole_punch_target
        self._chunk_size = vault_chunk_size

    @property
    def node_id(self) -> NodeId:
        return self._identity.node_id

    async def _caller(self, context: ServicerContextLike) -> ConnectionInfo:
        try:
            info = self._connection_info(context)
        except (ConnectionInfoError, LookupError) as exc:
            await context.abort(StatusCode.UNAUTHENTICATED, f"caller is not identified: {exc}")
        if not isinstance(info, ConnectionInfo):
            await context.abort(StatusCode.UNAUTHENTICATED, "caller is not identified")
        return info

    # -- unary ---------------------------------------------------------------------

    async def Echo(
        self, request: common.EchoMessage, context: ServicerContextLike
    ) -> common.EchoMessage:
        return common.EchoMessage(message=request.message)

    async def NodesHolePunchSignal(
        self, request: pb.HolePunchSignalRequest, context: ServicerContextLike
    ) -> pb.HolePunchSignalResponse:
        caller = await self._caller(context)
        if request.HasField("requester"):
            return await self._hole_punch_requested(request, caller, context)
        async with _domain_errors(context):
            target = _required_node_id(request, "target", "target node id")
            if target == caller.remote_node_id:
                raise InvalidInputError("the target must be another node than the caller")
            if target == self.node_id:
                raise InvalidInputError("the target must be another node than the callee")
            try:
                address = NodeAddress(
                    host=caller.remote_host,
                    port=caller.remote_port,
                    transports=tuple(request.transports),
                )
            except InvalidInputError as exc:
                if caller.remote_port == 0 or not caller.remote_host:
                    raise InvalidInputError("the caller's address is unknown") from exc
                raise
            relay = self._hole_punch_relay
            if relay is None:
                await context.abort(
                    StatusCode.UNIMPLEMENTED, "this node does not relay hole punches"
                )
            if await asyncio.to_thread(self._nodes.get_node, target) is None:
                raise NotFoundError(f"node {target} is not known to this node")
        requester = RequesterAddress(node_id=caller.remote_node_id, address=address)
        try:
            target_address = await relay(target, requester)
        except HolePunchRelayError as exc:
            await context.abort(StatusCode.UNAVAILABLE, f"cannot reach node {target}: {exc}")
        except LookupError:
            await context.abort(StatusCode.NOT_FOUND, f"node {target} is not known to this node")
        reply = pb.HolePunchSignalResponse(
            requester_address=common.NodeAddress(
                host=address.host, port=address.port, transports=list(address.transports)
            )
        )
        if isinstance(target_address, NodeAddress):
            reply.target_address.CopyFrom(
                common.NodeAddress(
                    host=target_address.host,
                    port=target_address.port,
                    transports=list(target_address.transports),
                )
            )
        return reply

    async def _hole_punch_requested(
        self,
        request: pb.HolePunchSignalRequest,
        caller: ConnectionInfo,
        context: ServicerContextLike,
    ) -> pb.HolePunchSignalResponse:
        """A signalling node (the caller) forwards a hole punch: we are its target."""
        async with _domain_errors(context):
            target = _required_node_id(request, "target", "target node id")
            if target != self.node_id:
                raise InvalidInputError("a forwarded hole punch must target the callee")
            info = request.requester
            requester_id = _required_node_id(info, "node_id", "requester node id")
            if requester_id in (self.node_id, caller.remote_node_id):
                raise InvalidInputError("the requester must be a third node")
            if len(info.addresses) != 1:
                raise InvalidInputError("the requester needs exactly one address")
            wire = info.addresses[0]
            address = NodeAddress(host=wire.host, port=wire.port, transports=tuple(wire.transports))
            punch = self._hole_punch_target
            if punch is None:
                await context.abort(StatusCode.UNIMPLEMENTED, "this node does not hole punch")
        requester = RequesterAddress(node_id=requester_id, address=address)
        try:
            await punch(requester, caller.remote_node_id)
        except HolePunchRelayError as exc:
            await context.abort(StatusCode.UNAVAILABLE, f"cannot hole punch: {exc}")
        return pb.HolePunchSignalResponse(
            requester_address=common.NodeAddress(
                host=address.host, port=address.port, transports=list(address.transports)
            )
        )

    async def NotificationsSend(
        self, request: pb.SignedNotification, context: ServicerContextLike
    ) -> common.Empty:
        caller = await self._caller(context)
        async with _domain_errors(context):
            signed = signed_notification_from_proto(request, default_chain=caller.remote_chain)
            if signed.notification.sender != caller.remote_node_id:
                await context.abort(
                    StatusCode.PERMISSION_DENIED,
                    f"notification sender {signed.notification.sender} is not the caller "
                    f"{caller.remote_node_id}",
                )
            await asyncio.to_thread(verify_notification, signed)
            await asyncio.to_thread(self._inbox.add, signed.notification)
        return common.Empty()

    # -- server streaming ------------------------------------------------------------

    async def NodesClosestLocalNodesGet(
        self, request: pb.ClosestLocalNodesRequest, context: ServicerContextLike
    ) -> AsyncIterator[pb.ClosestLocalNodesResponse]:
        async with _domain_errors(context):
            target = _required_node_id(request, "target", "target node id")
            page_request = page_request_from_proto(request.pagination)
            page = await asyncio.to_thread(self._nodes.closest_nodes_page, target, page_request)
        for node in page.items:
            await _check_deadline(context)
            yield pb.ClosestLocalNodesResponse(node=node_record_to_proto(node))
        yield pb.ClosestLocalNodesResponse(page=page_to_proto(page))

    async def NodesClaimsGet(
        self, request: pb.ClaimsGetRequest, context: ServicerContextLike
    ) -> AsyncIterator[pb.ClaimsGetResponse]:
        async with _domain_errors(context):
            page_request = page_request_from_proto(request.pagination)
            page = await asyncio.to_thread(self._claims.claims_page, self.node_id, page_request)
        for signed in page.items:
            await _check_deadline(context)
            yield pb.ClaimsGetResponse(claim=signed_claim_to_proto(signed))
        yield pb.ClaimsGetResponse(page=page_to_proto(page))

    async def VaultsScan(
        self, request: pb.VaultsScanRequest, context: ServicerContextLike
    ) -> AsyncIterator[pb.VaultsScanResponse]:
        caller = await self._caller(context)
        async with _domain_errors(context):
            page_request = page_request_from_proto(request.pagination)
            page = await asyncio.to_thread(
                self._vaults.scan_page, caller.remote_node_id, page_request
            )
        for vault in page.items:
            await _check_deadline(context)
            yield pb.VaultsScanResponse(
                vault=pb.VaultInfo(
                    vault_id=vault.info.vault_id,
                    vault_name=vault.info.name,
                    permissions=vault.permissions.names(),
                )
            )
        yield pb.VaultsScanResponse(page=page_to_proto(page))

    async def VaultsPull(
        self, request: pb.VaultsPullRequest, context: ServicerContextLike
    ) -> AsyncIterator[pb.VaultsPullResponse]:
        caller = await self._caller(context)
        async with _domain_errors(context):
            name = check_vault_name(request.vault_name)
            if await asyncio.to_thread(self._vaults.get_vault, name) is None:
                raise NotFoundError(f"no vault named {name!r}")
            allowed = await asyncio.to_thread(self._vaults.can_pull, name, caller.remote_node_id)
        if not allowed:
            await context.abort(
                StatusCode.PERMISSION_DENIED, f"node {caller.remote_node_id} may not pull {name!r}"
            )
        chunks = self._vaults.archive_chunks(name, self._chunk_size)
        step_lock = threading.Lock()

        def step() -> bytes | None:
            with step_lock:
                return next(chunks, None)

        def close() -> None:
            with step_lock:  # waits for a step still running in a worker thread
                chunks.close()

        try:
            while True:
                await _check_deadline(context)
                async with _domain_errors(context):
                    chunk = await asyncio.to_thread(step)
                if chunk is None:
                    return
                yield pb.VaultsPullResponse(chunk=chunk)
        finally:
            # Never block the event loop on the lock: close from a worker thread.
            try:
                asyncio.get_running_loop().run_in_executor(None, close)
            except RuntimeError:  # the loop or its executor is shutting down
                close()

    # -- duplex ------------------------------------------------------------------------

    async def NodesCrossSignClaim(
        self,
        request_iterator: AsyncIterator[pb.CrossSignClaimRequest],
        context: ServicerContextLike,
    ) -> AsyncIterator[pb.CrossSignClaimResponse]:
        caller = await self._caller(context)
        requests = aiter(request_iterator)
        own = self.node_id
        chains = {caller.remote_node_id: caller.remote_chain} if caller.remote_chain else {}

        first = await self._next_step(requests, context, "initial_claim")
        async with _domain_errors(context):
            theirs = signed_claim_from_proto(first.initial_claim, default_chains=chains)
            claim = theirs.claim
            if claim.issuer != caller.remote_node_id:
                await context.abort(
                    StatusCode.PERMISSION_DENIED,
                    f"claim issuer {claim.issuer} is not the caller {caller.remote_node_id}",
                )
            if claim.subject != own:
                raise InvalidInputError(f"claim subject {claim.subject} is not this node {own}")
            issuer_signature = theirs.signature_of(claim.issuer)
            if issuer_signature is None or len(theirs.signatures) != 1:
                raise InvalidInputError("the initial claim must carry only the issuer's signature")
            await asyncio.to_thread(verify_claim_signature, claim, issuer_signature)
            existing = await asyncio.to_thread(
                self._claims.get, claim.issuer, claim.sequence_number
            )
            if existing is not None and existing.claim != claim:
                raise ClaimConflictError(
                    f"node {claim.issuer} already has claim {claim.sequence_number}"
                )
            countersigned = theirs.with_signature(
                await asyncio.to_thread(sign_claim, claim, self._identity)
            )
            sequence = await asyncio.to_thread(self._claims.allocate_sequence, own)
            counter = new_claim(own, claim.issuer, sequence, claim_type=claim.type)
            counter_signed = SignedClaim(
                claim=counter,
                signatures=(await asyncio.to_thread(sign_claim, counter, self._identity),),
            )
        await _check_deadline(context)
        yield pb.CrossSignClaimResponse(
            countersigned_claim=signed_claim_to_proto(countersigned),
            counter_claim=signed_claim_to_proto(counter_signed),
        )

        second = await self._next_step(requests, context, "countersigned_claim")
        async with _domain_errors(context):
            returned = signed_claim_from_proto(second.countersigned_claim, default_chains=chains)
            if returned.claim != counter:
                raise InvalidInputError("the countersigned claim is not the counter-claim sent")
            if returned.signature_of(own) != counter_signed.signatures[0]:
                raise InvalidInputError("the countersigned claim does not carry our signature")
            await asyncio.to_thread(verify_cross_signed, returned)
            await asyncio.to_thread(self._claims.add, countersigned, verify=False)
            await asyncio.to_thread(self._claims.add, returned, verify=False)

    @staticmethod
    async def _next_step(
        requests: AsyncIterator[pb.CrossSignClaimRequest],
        context: ServicerContextLike,
        step: str,
    ) -> pb.CrossSignClaimRequest:
        await _check_deadline(context)
        try:
            message = await anext(requests)
        except StopAsyncIteration:
            await context.abort(
                StatusCode.INVALID_ARGUMENT, f"the caller ended the stream before sending {step}"
            )
        if message.WhichOneof("step") != step:
            await context.abort(StatusCode.INVALID_ARGUMENT, f"expected {step} in this step")
        return message


# -- the caller's half of cross-signing ----------------------------------------------------


async def request_cross_sign(
    stub: Any,
    identity: SigningIdentity,
    claims: ClaimStore,
    peer_node_id: NodeId,
    *,
    claim_type: str = "node",
    data: bytes = b"",
    timeout: float | None = None,  # noqa: ASYNC109 - the RPC's deadline, as in grpc
    metadata: Any = None,
) -> tuple[SignedClaim, SignedClaim]:
    """Run the cross-signing exchange as the caller over an ``AgentService`` stub.

    Returns ``(our claim, their counter-claim)``, both doubly signed and stored in
    ``claims`` once the callee has ended the call with OK. Raises CrossSignError if the
    peer answers with anything invalid or the call fails.
    """
    own = identity.node_id
    sequence = await asyncio.to_thread(claims.allocate_sequence, own)
    claim = new_claim(own, peer_node_id, sequence, claim_type=claim_type, data=data)
    ours = SignedClaim(
        claim=claim, signatures=(await asyncio.to_thread(sign_claim, claim, identity),)
    )
    kwargs: dict[str, Any] = {"timeout": timeout}
    if metadata is not None:
        kwargs["metadata"] = metadata
    call = stub.NodesCrossSignClaim(**kwargs)
    try:
        await call.write(pb.CrossSignClaimRequest(initial_claim=signed_claim_to_proto(ours)))
        response = await call.read()
        if not isinstance(response, pb.CrossSignClaimResponse):
            code = await call.code()
            raise CrossSignError(f"peer ended the exchange: {code} {await call.details()}")
        try:
            countersigned = signed_claim_from_proto(response.countersigned_claim)
            counter = signed_claim_from_proto(response.counter_claim)
            if (
                countersigned.claim != claim
                or countersigned.signature_of(own) != ours.signatures[0]
            ):
                raise CrossSignError("peer altered our claim or our signature")
            await asyncio.to_thread(verify_cross_signed, countersigned)
            c = counter.claim
            if c.issuer != peer_node_id or c.subject != own:
                raise CrossSignError("peer's counter-claim names the wrong nodes")
            peer_signature = counter.signature_of(peer_node_id)
            if peer_signature is None or len(counter.signatures) != 1:
                raise CrossSignError("peer's counter-claim must carry only the peer's signature")
            await asyncio.to_thread(verify_claim_signature, c, peer_signature)
        except (InvalidInputError, SignatureVerificationError) as exc:
            raise CrossSignError(f"peer sent an invalid response: {exc}") from exc
        counter_done = counter.with_signature(await asyncio.to_thread(sign_claim, c, identity))
        await call.write(
            pb.CrossSignClaimRequest(countersigned_claim=signed_claim_to_proto(counter_done))
        )
        await call.done_writing()
        code = await call.code()
        if getattr(code, "name", None) != "OK":
            raise CrossSignError(f"peer refused the exchange: {code} {await call.details()}")
    except CrossSignError:
        call.cancel()
        raise
    except Exception as exc:
        call.cancel()
        raise CrossSignError(f"cross-signing with {peer_node_id} failed: {exc}") from exc
    await asyncio.to_thread(claims.add, countersigned, verify=False)
    await asyncio.to_thread(claims.add, counter_done, verify=False)
    return countersigned, counter_done
