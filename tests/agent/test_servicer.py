"""AgentServicer over a real grpc.aio server on 127.0.0.1, driven by the generated stub."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from agent.connection_info import ConnectionInfo, ConnectionInfoError
from agent.domains import (
    AgentState,
    ClaimStore,
    NodeAddress,
    NodeGraph,
    NotificationInbox,
    VaultPermission,
    VaultStore,
    new_claim,
    new_notification,
    sign_claim,
    sign_notification,
    verify_cross_signed,
)
from agent.domains.claims import SignedClaim
from agent.identity import NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import (
    AgentServicer,
    CrossSignError,
    HolePunchRelayError,
    RequesterAddress,
    request_cross_sign,
    signed_claim_from_proto,
    signed_claim_to_proto,
    signed_notification_to_proto,
)
from agent.status import FallbackStatusCode, StatusCode, status_number
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import agent_service_pb2_grpc as _pb_grpc
from protos.agent.v1 import common_pb2 as common

pb_grpc: Any = _pb_grpc  # generated grpc code carries no type hints

pytestmark = pytest.mark.timeout(60)

CALLER_HOST = "127.0.0.1"
CALLER_PORT = 40000


@dataclass
class Caller:
    """What the injected connection_info returns; tests swap the identity."""

    identity: NodeIdentity
    known: bool = True

    def info(self, context: Any) -> ConnectionInfo:
        if not self.known:
            raise ConnectionInfoError("no verified peer on this connection")
        return ConnectionInfo(
            remote_node_id=self.identity.node_id,
            remote_host=CALLER_HOST,
            remote_port=CALLER_PORT,
            remote_chain=tuple(self.identity.chain_der()),
        )


@dataclass
class Relay:
    calls: list[tuple[NodeId, RequesterAddress]] = field(default_factory=list)
    error: Exception | None = None

    async def __call__(self, target: NodeId, requester: RequesterAddress) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((target, requester))


@dataclass
class Env:
    server_identity: NodeIdentity
    caller: Caller
    state: AgentState
    nodes: NodeGraph
    claims: ClaimStore
    inbox: NotificationInbox
    vaults: VaultStore
    relay: Relay
    stub: Any  # AgentServiceStub
    client_claims: ClaimStore
    client_vaults: VaultStore


@pytest.fixture(scope="module")
def server_identity() -> NodeIdentity:
    return NodeIdentity.generate()


@pytest.fixture(scope="module")
def caller_identity() -> NodeIdentity:
    return NodeIdentity.generate("p256")


@pytest.fixture
def states(tmp_path: Path) -> Iterator[tuple[AgentState, AgentState]]:
    with AgentState.open(tmp_path / "server") as s, AgentState.open(tmp_path / "client") as c:
        yield s, c


@pytest.fixture
async def env(
    states: tuple[AgentState, AgentState],
    server_identity: NodeIdentity,
    caller_identity: NodeIdentity,
) -> AsyncIterator[Env]:
    state, client_state = states
    caller = Caller(caller_identity)
    relay = Relay()
    nodes = NodeGraph(state, server_identity.node_id)
    claims = ClaimStore(state)
    inbox = NotificationInbox(state)
    vaults = VaultStore(state)
    servicer = AgentServicer(
        identity=server_identity,
        nodes=nodes,
        claims=claims,
        notifications=inbox,
        vaults=vaults,
        connection_info=caller.info,
        hole_punch_relay=relay,
        vault_chunk_size=1024,
    )
    server = grpc.aio.server()
    pb_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Env(
            server_identity=server_identity,
            caller=caller,
            state=state,
            nodes=nodes,
            claims=claims,
            inbox=inbox,
            vaults=vaults,
            relay=relay,
            stub=pb_grpc.AgentServiceStub(channel),
            client_claims=ClaimStore(client_state),
            client_vaults=VaultStore(client_state),
        )
    finally:
        await channel.close(None)
        await server.stop(None)


async def expect_status(awaitable: Any, code: grpc.StatusCode, match: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    assert match in details
    return details


async def collect(call: Any) -> list[Any]:
    return [message async for message in call]


def nid(node_id: NodeId) -> common.NodeId:
    return common.NodeId(id=node_id.raw)


# -- unary ----------------------------------------------------------------------------------


async def test_echo(env: Env) -> None:
    reply = await env.stub.Echo(common.EchoMessage(message="hello ✓"))
    assert reply.message == "hello ✓"


async def test_unidentified_caller_is_unauthenticated(env: Env) -> None:
    env.caller.known = False
    await expect_status(
        collect(env.stub.VaultsScan(pb.VaultsScanRequest())), grpc.StatusCode.UNAUTHENTICATED
    )


def test_status_codes_match_grpc() -> None:
    # grpc is loaded in this process, so agent code gets grpc's own members
    assert StatusCode.NOT_FOUND is grpc.StatusCode.NOT_FOUND
    with pytest.raises(AttributeError):
        _ = StatusCode.NO_SUCH_CODE
    for code in grpc.StatusCode:
        fallback = FallbackStatusCode[code.name]
        assert fallback.value == code.value
        assert status_number(fallback) == status_number(code)
    with pytest.raises(TypeError):
        status_number("OK")


# -- nodes -----------------------------------------------------------------------------------


async def test_closest_nodes_paginated_stream(env: Env) -> None:
    nodes = [NodeId(os.urandom(32)) for _ in range(23)]
    for n in nodes:
        env.nodes.set_node(n, [NodeAddress("192.0.2.9", 1314, ("grpc", "quic"))], last_seen_ms=5)
    target = NodeId(os.urandom(32))
    seen: list[NodeId] = []
    cursor = b""
    pages = 0
    while True:
        messages = await collect(
            env.stub.NodesClosestLocalNodesGet(
                pb.ClosestLocalNodesRequest(
                    target=nid(target),
                    pagination=common.PaginationRequest(page_size=7, cursor=cursor),
                )
            )
        )
        pages += 1
        *items, last = messages
        assert all(m.WhichOneof("result") == "node" for m in items)
        assert last.WhichOneof("result") == "page"
        for m in items:
            seen.append(NodeId(m.node.node_id.id))
            assert m.node.addresses[0].transports == ["grpc", "quic"]
            assert m.node.last_seen_ms == 5
        if not last.page.has_more:
            break
        cursor = last.page.next_cursor
    assert pages == 4
    assert seen == sorted(nodes, key=target.distance)
    desc = await collect(
        env.stub.NodesClosestLocalNodesGet(
            pb.ClosestLocalNodesRequest(
                target=nid(target),
                pagination=common.PaginationRequest(page_size=3, order=common.SORT_ORDER_DESC),
            )
        )
    )
    assert [NodeId(m.node.node_id.id) for m in desc[:-1]] == seen[::-1][:3]


@pytest.mark.parametrize(
    ("request_message", "match"),
    [
        (pb.ClosestLocalNodesRequest(), "target node id is required"),
        (pb.ClosestLocalNodesRequest(target=common.NodeId(id=b"short")), "must be 32 bytes"),
        (
            pb.ClosestLocalNodesRequest(
                target=common.NodeId(id=bytes(32)),
                pagination=common.PaginationRequest(page_size=5000),
            ),
            "page_size",
        ),
        (
            pb.ClosestLocalNodesRequest(
                target=common.NodeId(id=bytes(32)),
                pagination=common.PaginationRequest(cursor=b"garbage"),
            ),
            "cursor",
        ),
        (
            pb.ClosestLocalNodesRequest(
                target=common.NodeId(id=bytes(32)),
                pagination=common.PaginationRequest(order=7),  # type: ignore[arg-type]
            ),
            "sort order",
        ),
    ],
)
async def test_closest_nodes_rejects_bad_input(
    env: Env, request_message: pb.ClosestLocalNodesRequest, match: str
) -> None:
    await expect_status(
        collect(env.stub.NodesClosestLocalNodesGet(request_message)),
        grpc.StatusCode.INVALID_ARGUMENT,
        match,
    )


async def test_hole_punch_signal(env: Env) -> None:
    target = NodeId(os.urandom(32))
    request = pb.HolePunchSignalRequest(target=nid(target), transports=["quic"])
    await expect_status(env.stub.NodesHolePunchSignal(request), grpc.StatusCode.NOT_FOUND)
    env.nodes.set_node(target, [NodeAddress("203.0.113.4", 55)])
    reply = await env.stub.NodesHolePunchSignal(request)
    assert (reply.requester_address.host, reply.requester_address.port) == (
        CALLER_HOST,
        CALLER_PORT,
    )
    assert list(reply.requester_address.transports) == ["quic"]
    [(relayed_target, requester)] = env.relay.calls
    assert relayed_target == target
    assert requester.node_id == env.caller.identity.node_id
    assert requester.address == NodeAddress(CALLER_HOST, CALLER_PORT, ("quic",))
    env.relay.error = HolePunchRelayError("no connection")
    await expect_status(env.stub.NodesHolePunchSignal(request), grpc.StatusCode.UNAVAILABLE)
    env.relay.error = LookupError("gone")
    await expect_status(env.stub.NodesHolePunchSignal(request), grpc.StatusCode.NOT_FOUND)
    for bad, match in [
        (pb.HolePunchSignalRequest(), "required"),
        (pb.HolePunchSignalRequest(target=nid(env.caller.identity.node_id)), "caller"),
        (pb.HolePunchSignalRequest(target=nid(env.server_identity.node_id)), "callee"),
        (pb.HolePunchSignalRequest(target=nid(target), transports=["NOT OK"]), "transport"),
    ]:
        await expect_status(
            env.stub.NodesHolePunchSignal(bad), grpc.StatusCode.INVALID_ARGUMENT, match
        )


async def test_hole_punch_without_relay_is_unimplemented(
    tmp_path: Path, server_identity: NodeIdentity, caller_identity: NodeIdentity
) -> None:
    with AgentState.open(tmp_path) as state:
        servicer = AgentServicer(
            identity=server_identity,
            nodes=NodeGraph(state, server_identity.node_id),
            claims=ClaimStore(state),
            notifications=NotificationInbox(state),
            vaults=VaultStore(state),
            connection_info=Caller(caller_identity).info,
        )
        request = pb.HolePunchSignalRequest(target=common.NodeId(id=os.urandom(32)))
        with pytest.raises(AbortCalled) as info:
            await servicer.NodesHolePunchSignal(request, FakeContext())
        assert info.value.code == StatusCode.UNIMPLEMENTED


# -- claims --------------------------------------------------------------------------------


async def test_cross_sign_both_sides_hold_doubly_signed_claims(env: Env) -> None:
    caller = env.caller.identity
    server = env.server_identity
    ours, theirs = await request_cross_sign(
        env.stub, caller, env.client_claims, server.node_id, data=b"link", timeout=30
    )
    for signed in (ours, theirs):
        verify_cross_signed(signed)
    assert ours.claim.issuer == caller.node_id and ours.claim.data == b"link"
    assert theirs.claim.issuer == server.node_id and theirs.claim.subject == caller.node_id
    assert env.client_claims.claims_for(caller.node_id) == [ours]
    assert env.client_claims.claims_for(server.node_id) == [theirs]
    assert env.claims.claims_for(caller.node_id) == [ours]
    assert env.claims.claims_for(server.node_id) == [theirs]

    second, _ = await request_cross_sign(env.stub, caller, env.client_claims, server.node_id)
    assert second.claim.sequence_number == ours.claim.sequence_number + 1
    messages = await collect(
        env.stub.NodesClaimsGet(
            pb.ClaimsGetRequest(pagination=common.PaginationRequest(page_size=1))
        )
    )
    assert [m.WhichOneof("result") for m in messages] == ["claim", "page"]
    assert signed_claim_from_proto(messages[0].claim) == theirs
    assert messages[1].page.has_more
    rest = await collect(
        env.stub.NodesClaimsGet(
            pb.ClaimsGetRequest(
                pagination=common.PaginationRequest(cursor=messages[1].page.next_cursor)
            )
        )
    )
    assert [signed_claim_from_proto(m.claim).claim.sequence_number for m in rest[:-1]] == [
        theirs.claim.sequence_number + 1
    ]
    assert not rest[-1].page.has_more


def initial_request(signed: SignedClaim) -> pb.CrossSignClaimRequest:
    return pb.CrossSignClaimRequest(initial_claim=signed_claim_to_proto(signed))


async def test_cross_sign_rejects_a_claim_not_issued_by_the_caller(env: Env) -> None:
    mallory = NodeIdentity.generate()
    claim = new_claim(mallory.node_id, env.server_identity.node_id, 1)
    call = env.stub.NodesCrossSignClaim()
    await call.write(initial_request(SignedClaim(claim, (sign_claim(claim, mallory),))))
    await expect_status(call.read(), grpc.StatusCode.PERMISSION_DENIED, "not the caller")


async def test_cross_sign_rejects_bad_signatures_and_steps(env: Env) -> None:
    caller = env.caller.identity
    server_id = env.server_identity.node_id
    claim = new_claim(caller.node_id, server_id, 1)
    good = SignedClaim(claim, (sign_claim(claim, caller),))

    other = new_claim(caller.node_id, server_id, 1, data=b"different")
    forged = SignedClaim(claim, (sign_claim(other, caller),))
    call = env.stub.NodesCrossSignClaim()
    await call.write(initial_request(forged))
    await expect_status(call.read(), grpc.StatusCode.UNAUTHENTICATED)

    wrong_subject = new_claim(caller.node_id, NodeId(os.urandom(32)), 1)
    call = env.stub.NodesCrossSignClaim()
    await call.write(
        initial_request(SignedClaim(wrong_subject, (sign_claim(wrong_subject, caller),)))
    )
    await expect_status(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "subject")

    call = env.stub.NodesCrossSignClaim()
    await call.done_writing()
    await expect_status(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "ended the stream")

    call = env.stub.NodesCrossSignClaim()
    await call.write(pb.CrossSignClaimRequest(countersigned_claim=signed_claim_to_proto(good)))
    await expect_status(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "initial_claim")

    # Step 3 with a tampered counter-claim: nothing is stored on the callee.
    call = env.stub.NodesCrossSignClaim()
    await call.write(initial_request(good))
    response = await call.read()
    counter = signed_claim_from_proto(response.counter_claim)
    verify_cross_signed(signed_claim_from_proto(response.countersigned_claim))
    altered = new_claim(
        counter.claim.issuer, counter.claim.subject, counter.claim.sequence_number, data=b"x"
    )
    tampered = SignedClaim(altered, (*counter.signatures, sign_claim(altered, caller)))
    await call.write(pb.CrossSignClaimRequest(countersigned_claim=signed_claim_to_proto(tampered)))
    await call.done_writing()
    await expect_status(call.read(), grpc.StatusCode.INVALID_ARGUMENT, "counter-claim")
    assert env.claims.claims_for(caller.node_id) == []
    assert env.claims.claims_for(server_id) == []


async def test_cross_sign_client_reports_refusal(env: Env) -> None:
    with pytest.raises(CrossSignError):
        await request_cross_sign(
            env.stub, env.caller.identity, env.client_claims, NodeId(os.urandom(32))
        )
    assert env.client_claims.claims_for(env.caller.identity.node_id) == []


# -- notifications ------------------------------------------------------------------------


async def test_notifications_send(env: Env) -> None:
    caller = env.caller.identity
    signed = sign_notification(new_notification(caller.node_id, "general", b"hi"), caller)
    await env.stub.NotificationsSend(signed_notification_to_proto(signed))
    [entry] = env.inbox.all()
    assert entry.notification == signed.notification and not entry.read

    no_chain = signed_notification_to_proto(
        sign_notification(new_notification(caller.node_id, "general", b"2"), caller)
    )
    del no_chain.sender_chain[:]  # the callee falls back to the connection's chain
    await env.stub.NotificationsSend(no_chain)
    assert len(env.inbox) == 2

    mallory = NodeIdentity.generate()
    spoofed = sign_notification(new_notification(mallory.node_id, "general", b"x"), mallory)
    await expect_status(
        env.stub.NotificationsSend(signed_notification_to_proto(spoofed)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    bad = signed_notification_to_proto(signed)
    bad.notification.data = b"tampered"
    await expect_status(env.stub.NotificationsSend(bad), grpc.StatusCode.UNAUTHENTICATED)
    await expect_status(
        env.stub.NotificationsSend(pb.SignedNotification()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no notification",
    )
    assert len(env.inbox) == 2


# -- vaults ----------------------------------------------------------------------------------


async def test_vaults_scan_lists_only_permitted_vaults(env: Env) -> None:
    me = env.caller.identity.node_id
    for i in range(7):
        env.vaults.create_vault(f"vault-{i}")
        if i % 2 == 0:
            env.vaults.grant(
                f"vault-{i}", me, VaultPermission.SCAN if i == 0 else VaultPermission.ALL
            )
    env.vaults.grant("vault-1", NodeId(os.urandom(32)))
    names: list[str] = []
    cursor = b""
    while True:
        messages = await collect(
            env.stub.VaultsScan(
                pb.VaultsScanRequest(
                    pagination=common.PaginationRequest(page_size=3, cursor=cursor)
                )
            )
        )
        names += [m.vault.vault_name for m in messages[:-1]]
        if (
            messages[0].WhichOneof("result") == "vault"
            and messages[0].vault.vault_name == "vault-0"
        ):
            assert list(messages[0].vault.permissions) == ["scan"]
            assert len(messages[0].vault.vault_id) == 16
        if not messages[-1].page.has_more:
            break
        cursor = messages[-1].page.next_cursor
    assert names == ["vault-0", "vault-2", "vault-4", "vault-6"]


async def test_vaults_pull(env: Env) -> None:
    me = env.caller.identity.node_id
    env.vaults.create_vault("docs")
    files = {"readme": b"read me", "big/blob": os.urandom(10_000), "empty": b""}
    for path, data in files.items():
        env.vaults.write_file("docs", path, data)
    env.vaults.grant("docs", me, VaultPermission.PULL)
    messages = await collect(env.stub.VaultsPull(pb.VaultsPullRequest(vault_name="docs")))
    assert len(messages) > 5  # chunked at 1024 bytes
    assert b"".join(m.chunk for m in messages) == env.vaults.archive_bytes("docs")
    env.client_vaults.import_archive("docs-copy", (m.chunk for m in messages))
    copy = {
        p: env.client_vaults.read_file("docs-copy", p)
        for p in env.client_vaults.list_files("docs-copy")
    }
    assert copy == files

    env.vaults.create_vault("secret")
    env.vaults.grant("secret", me, VaultPermission.SCAN)
    await expect_status(
        collect(env.stub.VaultsPull(pb.VaultsPullRequest(vault_name="secret"))),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        collect(env.stub.VaultsPull(pb.VaultsPullRequest(vault_name="absent"))),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        collect(env.stub.VaultsPull(pb.VaultsPullRequest(vault_name=""))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_vaults_pull_cancelled_midway_releases_the_stream(env: Env) -> None:
    me = env.caller.identity.node_id
    env.vaults.create_vault("large")
    env.vaults.write_file("large", "data", os.urandom(200_000))
    env.vaults.grant("large", me)
    call = env.stub.VaultsPull(pb.VaultsPullRequest(vault_name="large"))
    first = await call.read()
    assert first.chunk
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED

    async def reader_released() -> None:
        while env.vaults._readers:  # noqa: ASYNC110 - released by a worker thread
            await asyncio.sleep(0.01)

    # The server's handler is cancelled and its archive reader closed.
    await asyncio.wait_for(reader_released(), timeout=30)
    env.vaults.write_file("large", "data", b"small now")
    messages = await collect(env.stub.VaultsPull(pb.VaultsPullRequest(vault_name="large")))
    assert b"".join(m.chunk for m in messages) == env.vaults.archive_bytes("large")


# -- deadline handling without a network ---------------------------------------------------


class AbortCalled(Exception):
    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise AbortCalled(code, details)

    def time_remaining(self) -> float | None:
        return self.remaining


async def test_streams_stop_when_the_deadline_has_passed(env: Env) -> None:
    servicer = AgentServicer(
        identity=env.server_identity,
        nodes=env.nodes,
        claims=env.claims,
        notifications=env.inbox,
        vaults=env.vaults,
        connection_info=env.caller.info,
    )
    env.nodes.set_node(NodeId(os.urandom(32)), [])
    env.vaults.create_vault("v")
    env.vaults.grant("v", env.caller.identity.node_id)
    request = pb.ClosestLocalNodesRequest(target=common.NodeId(id=os.urandom(32)))
    with pytest.raises(AbortCalled) as info:
        async for _ in servicer.NodesClosestLocalNodesGet(request, FakeContext(remaining=0.0)):
            pass
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(AbortCalled) as info:
        async for _ in servicer.VaultsPull(pb.VaultsPullRequest(vault_name="v"), FakeContext(0.0)):
            pass
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    messages = [
        m async for m in servicer.VaultsPull(pb.VaultsPullRequest(vault_name="v"), FakeContext(5.0))
    ]
    assert b"".join(m.chunk for m in messages) == env.vaults.archive_bytes("v")


def test_servicer_imports_without_grpc() -> None:
    """The quic-only stage runs the same servicer with grpcio absent."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        sys.modules["grpc"] = None
        from agent.servicer import AgentServicer
        from agent.status import FallbackStatusCode, StatusCode
        assert AgentServicer.__mro__[1] is object, AgentServicer.__mro__
        assert StatusCode.NOT_FOUND is FallbackStatusCode.NOT_FOUND
        assert hasattr(AgentServicer, "VaultsPull")
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
