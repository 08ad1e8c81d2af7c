"""The node-to-node agent suite, once, on both stacks (``legacy`` and ``quic``).

Three agents (one with a rotated chain) call every AgentService method on each other;
handlers identify the caller from the chain the transport verified; paginated streams
return every item once; state survives a restart; stop leaves nothing open; an unknown
or wrong node is refused. The scenarios and assertions are those of
``tests/legacy/test_agent.py``; what differs by transport lives in :mod:`.stacks`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.domains.notifications import new_notification, sign_notification
from agent.identity import NodeIdentity
from agent.nodeid import NodeId
from agent.servicer import node_id_to_proto, request_cross_sign, signed_notification_to_proto
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2
from tests.legacy._support import collect_pages

from .stacks import STACK_NAMES, Stack, get_stack, open_fds

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]


def vault_for(reader: Any) -> str:
    return f"for-{str(reader.node_id)[:10]}"


@pytest.fixture(scope="module", params=STACK_NAMES)
def stack(request: pytest.FixtureRequest) -> Stack:
    return get_stack(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[Any]]:
    root = tmp_path_factory.mktemp(f"fleet-{stack.name}")
    identities = [
        NodeIdentity.generate("ed25519"),
        NodeIdentity.generate("p256"),
        NodeIdentity.generate("ed25519").rotate("p256"),  # a rotated chain in the fleet
    ]
    agents = [stack.make(root / f"agent-{i}", ident) for i, ident in enumerate(identities)]
    try:
        for agent in agents:
            await agent.start()
        for agent, other in itertools.permutations(agents, 2):
            agent.add_node(other.node_id, other.host, other.port)
            name = vault_for(other)
            agent.vaults.create_vault(name)
            agent.vaults.write_file(name, "hello.txt", f"{agent.node_id}".encode())
            agent.vaults.write_file(name, "big.bin", os.urandom(300_000))
            agent.vaults.grant(name, other.node_id)
        yield agents
    finally:
        for agent in agents:
            await agent.stop()


PAIRS = list(itertools.permutations(range(3), 2))


@pytest.mark.parametrize(("i", "j"), PAIRS)
async def test_every_method(stack: Stack, fleet: list[Any], i: int, j: int) -> None:
    src, dst = fleet[i], fleet[j]
    third = next(a for a in fleet if a is not src and a is not dst)
    conn = await src.connect(dst.node_id, dst.host, dst.port)
    assert conn.node_id == dst.node_id
    stub = conn.stub

    health = await conn.health.Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = await conn.health.List(health_pb2.HealthListRequest())
    assert "quicshift.agent.v1.AgentService" in listed.statuses

    echo = await stub.Echo(common.EchoMessage(message=f"ping {i}->{j}"))
    assert echo.message == f"ping {i}->{j}"

    closest, _ = await collect_pages(
        lambda p: stub.NodesClosestLocalNodesGet(
            pb.ClosestLocalNodesRequest(target=node_id_to_proto(src.node_id), pagination=p)
        ),
        "node",
        1,
    )
    got = [NodeId(bytes(n.node_id.id)) for n in closest]
    assert got[0] == src.node_id
    assert set(got) == {src.node_id, third.node_id}
    assert all(n.addresses[0].transports == [stack.transport] for n in closest)

    ours, theirs = await request_cross_sign(stub, src.identity, src.claims, dst.node_id, timeout=30)
    assert ours.claim.issuer == src.node_id and ours.claim.subject == dst.node_id
    assert {s.signer for s in ours.signatures} == {src.node_id, dst.node_id}
    assert dst.claims.get(src.node_id, ours.claim.sequence_number) == ours
    assert src.claims.get(dst.node_id, theirs.claim.sequence_number) == theirs

    claims, _ = await collect_pages(
        lambda p: stub.NodesClaimsGet(pb.ClaimsGetRequest(pagination=p)), "claim", 1
    )
    assert theirs.claim.claim_id in {bytes(c.claim.claim_id) for c in claims}

    punch = await stub.NodesHolePunchSignal(
        pb.HolePunchSignalRequest(
            target=node_id_to_proto(third.node_id), transports=[stack.transport]
        )
    )
    # The handler saw the caller where its packets come from, as the transport saw it.
    assert punch.requester_address.host == "127.0.0.1"
    assert punch.requester_address.port in stack.requester_ports(src, dst)

    notification = new_notification(src.node_id, "general", f"{i}->{j}".encode())
    signed = sign_notification(notification, src.identity)
    await stub.NotificationsSend(signed_notification_to_proto(signed))
    inbox = [e.notification for e in dst.notifications.all()]
    assert notification in inbox

    vaults, _ = await collect_pages(
        lambda p: stub.VaultsScan(pb.VaultsScanRequest(pagination=p)), "vault", 1
    )
    assert [v.vault_name for v in vaults] == [vault_for(src)]
    assert sorted(vaults[0].permissions) == ["pull", "scan"]

    data = b"".join(
        [m.chunk async for m in stub.VaultsPull(pb.VaultsPullRequest(vault_name=vault_for(src)))]
    )
    assert data == dst.vaults.archive_bytes(vault_for(src))
    with pytest.raises(stack.rpc_error) as denied:
        async for _ in stub.VaultsPull(pb.VaultsPullRequest(vault_name=vault_for(third))):
            pass
    assert stack.status_name(denied.value) == "PERMISSION_DENIED"


async def test_handler_identifies_caller_by_its_chain(stack: Stack, fleet: list[Any]) -> None:
    src, dst = fleet[2], fleet[0]  # src has a rotated chain
    assert len(src.identity.chain_der()) == 2
    conn = await src.connect(dst.node_id, dst.host, dst.port)
    # No sender chain in the message: the servicer must use the chain the transport saw.
    notification = new_notification(src.node_id, "general", b"chainless")
    message = signed_notification_to_proto(sign_notification(notification, src.identity))
    del message.sender_chain[:]
    await conn.stub.NotificationsSend(message)
    assert notification in [e.notification for e in dst.notifications.all()]
    # A notification signed by someone else is refused: the handler knows who called.
    other = fleet[1]
    forged = sign_notification(new_notification(other.node_id, "general", b"x"), other.identity)
    with pytest.raises(stack.rpc_error) as info:
        await conn.stub.NotificationsSend(signed_notification_to_proto(forged))
    assert stack.status_name(info.value) == "PERMISSION_DENIED"
    assert str(src.node_id) in stack.details(info.value)


async def test_paginated_streams_return_each_item_once(
    stack: Stack, fleet: list[Any], tmp_path: Path
) -> None:
    src = fleet[0]
    async with stack.make(tmp_path / "many", key_type="p256") as dst:
        extra = [NodeIdentity.generate().node_id for _ in range(23)]
        for n, node_id in enumerate(extra):
            dst.add_node(node_id, "127.0.0.1", 10_000 + n)
        names = [f"vault-{n:02d}" for n in range(11)]
        for name in names:
            dst.vaults.create_vault(name)
            dst.vaults.grant(name, src.node_id)
        conn = await src.connect(dst.node_id, dst.host, dst.port)
        for _ in range(5):
            await request_cross_sign(conn.stub, src.identity, src.claims, dst.node_id, timeout=30)
        stub = conn.stub
        for page_size in (1, 2, 7, 50):
            for order in (common.SORT_ORDER_ASC, common.SORT_ORDER_DESC):
                nodes, pages = await collect_pages(
                    lambda p: stub.NodesClosestLocalNodesGet(
                        pb.ClosestLocalNodesRequest(
                            target=node_id_to_proto(src.node_id), pagination=p
                        )
                    ),
                    "node",
                    page_size,
                    order=order,
                )
                ids = [NodeId(bytes(n.node_id.id)) for n in nodes]
                assert sorted(ids) == sorted(extra)
                assert pages == max(1, -(-len(extra) // page_size))
                vaults, _ = await collect_pages(
                    lambda p: stub.VaultsScan(pb.VaultsScanRequest(pagination=p)),
                    "vault",
                    page_size,
                    order=order,
                )
                expected = names if order == common.SORT_ORDER_ASC else names[::-1]
                assert [v.vault_name for v in vaults] == expected
                claims, _ = await collect_pages(
                    lambda p: stub.NodesClaimsGet(pb.ClaimsGetRequest(pagination=p)),
                    "claim",
                    page_size,
                    order=order,
                )
                seqs = [c.claim.sequence_number for c in claims]
                assert sorted(seqs) == list(range(1, 6))
                assert len(set(seqs)) == 5
        await src.disconnect(dst.node_id)


async def test_state_survives_restart(stack: Stack, fleet: list[Any], tmp_path: Path) -> None:
    peer = fleet[1]
    state_dir = tmp_path / "restart"
    first = stack.make(state_dir, key_type="p256")
    await first.start()
    node_id = first.node_id
    first.vaults.create_vault("kept")
    first.vaults.write_file("kept", "notes.txt", b"still here")
    first.vaults.grant("kept", peer.node_id)
    first.add_node(peer.node_id, peer.host, peer.port)
    conn = await peer.connect(node_id, first.host, first.port)
    ours, _ = await request_cross_sign(conn.stub, peer.identity, peer.claims, node_id, timeout=30)
    note = new_notification(peer.node_id, "general", b"remember me")
    await conn.stub.NotificationsSend(
        signed_notification_to_proto(sign_notification(note, peer.identity))
    )
    old_port = first.port
    await first.stop()
    await peer.disconnect(node_id)
    with pytest.raises(stack.agent_error):
        _ = first.port
    assert stack.port_closed(old_port)

    async with stack.make(state_dir) as second:
        assert second.node_id == node_id
        assert second.vaults.read_file("kept", "notes.txt") == b"still here"
        assert second.claims.get(peer.node_id, ours.claim.sequence_number) == ours
        assert note in [e.notification for e in second.notifications.all()]
        assert second.nodes.get_node(peer.node_id) is not None
        conn = await peer.connect(node_id, second.host, second.port)
        data = b"".join(
            [m.chunk async for m in conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name="kept"))]
        )
        assert data == second.vaults.archive_bytes("kept")
        await peer.disconnect(node_id)


async def test_stop_leaves_nothing_open(stack: Stack, tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    fds = open_fds()
    a = stack.make(tmp_path / "a")
    b = stack.make(tmp_path / "b")
    await a.start()
    await b.start()
    conn = await a.connect(b.node_id, b.host, b.port)
    await conn.stub.Echo(common.EchoMessage(message="x"))
    ports = stack.ports(a) + stack.ports(b)
    await a.stop()
    await b.stop()
    await a.stop()  # idempotent
    assert conn.closed
    for port in ports:
        assert stack.port_closed(port), port
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []
    if stack.name == "quic":  # grpc's own threads keep descriptors; ours must not
        assert open_fds() <= fds
    with pytest.raises(stack.agent_error):
        await stack.make(tmp_path / "a").connect(b.node_id)
    with pytest.raises(stack.agent_error):
        await a.start()


async def test_unknown_node_and_wrong_node(stack: Stack, fleet: list[Any]) -> None:
    src = fleet[0]
    stranger = NodeIdentity.generate().node_id
    with pytest.raises(stack.agent_error, match="not in the node graph"):
        await src.connect(stranger)
    # The stranger's id, but agent 1's address: agent 1 answers, and is refused.
    with pytest.raises(stack.mismatch_error) as info:
        await src.connect(stranger, fleet[1].host, fleet[1].port)
    assert getattr(info.value, "actual", None) == fleet[1].node_id
