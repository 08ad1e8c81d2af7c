"""Every handler is timed and cancellable: a client cancel, the caller's deadline or the
server's handler timeout stop the handler, and the stop reaches the domain code."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.domains.pagination import Page, PageRequest
from agent.nodeid import NodeId
from agent.quic import Agent
from agent.servicer import node_id_to_proto
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from quic_rpc.rpc import RPCError, RPCServerConfig, Status

from .conftest import AgentFactory
from .stacks import settle

pytestmark = pytest.mark.timeout(60)

VAULT = "big"
VAULT_BYTES = bytes(range(256)) * 40_000  # ~10 MB: ~160 archive chunks


@dataclass
class ArchiveSpy:
    """Counts the archive chunks the vault domain produced and sees the archive closed."""

    produced: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


def spy_on_archive(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> ArchiveSpy:
    spy = ArchiveSpy()
    vaults = agent.vaults
    real = vaults.archive_chunks

    def archive_chunks(name: str, chunk_size: int) -> Generator[bytes, None, None]:
        inner = real(name, chunk_size)
        try:
            for chunk in inner:
                spy.produced += 1
                yield chunk
        finally:
            inner.close()
            spy.closed.set()

    monkeypatch.setattr(vaults, "archive_chunks", archive_chunks)
    return spy


async def vault_pair(make_agent: AgentFactory, **server_kwargs: Any) -> tuple[Agent, Any]:
    a = await make_agent(**server_kwargs)
    b = await make_agent()
    a.vaults.create_vault(VAULT)
    a.vaults.write_file(VAULT, "blob.bin", VAULT_BYTES)
    a.vaults.grant(VAULT, b.node_id)
    conn = await b.connect(a.node_id, a.host, a.port)
    return a, conn


async def test_cancelled_vault_pull_stops_the_archive(
    make_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, conn = await vault_pair(make_agent)
    total = len(a.vaults.archive_bytes(VAULT)) // (64 * 1024)
    spy = spy_on_archive(a, monkeypatch)
    call = conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name=VAULT))
    assert (await call.read()).chunk
    assert call.cancel()
    assert await settle(spy.closed.is_set)
    assert await settle(lambda: a.rpc_server.active_calls == 0)
    assert spy.produced < total
    assert await call.code() is Status.CANCELLED
    # the connection is fine for the next call
    reply = await conn.stub.Echo(common.EchoMessage(message="still here"))
    assert reply.message == "still here"


async def test_vault_pull_past_its_deadline_stops_the_archive(
    make_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, conn = await vault_pair(make_agent)
    total = len(a.vaults.archive_bytes(VAULT)) // (64 * 1024)
    spy = spy_on_archive(a, monkeypatch)
    call = conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name=VAULT), timeout=0.5)
    assert (await call.read()).chunk
    # read nothing more: the server blocks on flow control until the deadline
    assert await call.code() is Status.DEADLINE_EXCEEDED
    assert await settle(spy.closed.is_set)
    assert await settle(lambda: a.rpc_server.active_calls == 0)
    assert spy.produced < total


async def test_server_handler_timeout_bounds_every_call(
    make_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, conn = await vault_pair(make_agent, rpc_server_config=RPCServerConfig(handler_timeout=0.5))
    spy = spy_on_archive(a, monkeypatch)
    call = conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name=VAULT))  # no client deadline
    assert (await call.read()).chunk
    with pytest.raises(RPCError) as info:
        async for _ in call:
            await settle(lambda: False, tries=5)  # a slow reader
    assert info.value.status is Status.DEADLINE_EXCEEDED
    assert await settle(spy.closed.is_set)
    assert await settle(lambda: a.rpc_server.active_calls == 0)


class _CountingItems(tuple[Any, ...]):
    """A page's items that count how many the handler took."""

    taken = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            type(self).taken += 1
            yield item


@pytest.mark.parametrize("how", ["cancel", "deadline"])
async def test_closest_nodes_stream_stops_when_cancelled(
    make_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    a = await make_agent()
    b = await make_agent()
    for n in range(50):
        a.add_node(NodeId(bytes([n + 1]) * 32), "127.0.0.1", 20_000 + n)
    gate = threading.Event()
    entered = threading.Event()
    nodes = a.nodes
    real = nodes.closest_nodes_page

    class Items(_CountingItems):
        taken = 0

    def closest_nodes_page(target: NodeId, request: Any) -> Page[Any]:
        entered.set()
        gate.wait(30)  # the domain is busy until released
        page = real(target, request)
        return Page(Items(page.items), page.next_cursor, page.has_more)

    monkeypatch.setattr(nodes, "closest_nodes_page", closest_nodes_page)
    conn = await b.connect(a.node_id, a.host, a.port)
    request = pb.ClosestLocalNodesRequest(
        target=node_id_to_proto(b.node_id),
        pagination=common.PaginationRequest(page_size=50),
    )
    try:
        call = conn.stub.NodesClosestLocalNodesGet(
            request, timeout=0.5 if how == "deadline" else None
        )
        await call.wait_for_connection()
        assert await settle(entered.is_set)
        if how == "cancel":
            call.cancel()
        expected = Status.CANCELLED if how == "cancel" else Status.DEADLINE_EXCEEDED
        assert await call.code() is expected
        # the handler is gone while the domain call is still blocked
        assert await settle(lambda: a.rpc_server.active_calls == 0)
    finally:
        gate.set()
    await settle(lambda: False, tries=10)  # let the worker thread return
    assert Items.taken == 0  # the cancelled handler never streamed the page
    # the same method still works afterwards
    monkeypatch.setattr(nodes, "closest_nodes_page", real)
    items = [m async for m in conn.stub.NodesClosestLocalNodesGet(request)]
    stored = real(b.node_id, PageRequest(page_size=50)).items
    assert len(stored) > 1
    assert sum(1 for m in items if m.WhichOneof("result") == "node") == len(stored)
