"""A node closes a connection (idle expiry, LRU eviction, graceful close) just as the
other node starts a call on it: the call is refused unprocessed, retried transparently
on a new connection to the same node, and succeeds — exactly once, over QUIC."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.domains.notifications import new_notification, sign_notification
from agent.quic import Agent, ConnectionManagerConfig, NodeConnection
from agent.servicer import signed_notification_to_proto
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2
from quic_rpc.rpc import RPCClientConfig, RPCError, Status
from quic_rpc.rpc.errors import CallRefusedError

from .conftest import AgentFactory
from .stacks import settle

pytestmark = pytest.mark.timeout(60)


async def echo(conn: NodeConnection, text: str = "x") -> str:
    reply = await conn.stub.Echo(common.EchoMessage(message=text))
    message: str = reply.message
    return message


async def notify(conn: NodeConnection, sender: Agent, text: bytes) -> Any:
    note = new_notification(sender.node_id, "general", text)
    await conn.stub.NotificationsSend(
        signed_notification_to_proto(sign_notification(note, sender.identity))
    )
    return note


def received(agent: Agent, note: Any) -> int:
    return [e.notification for e in agent.notifications.all()].count(note)


def held(agent: Agent, peer: Agent) -> NodeConnection:
    conn = agent.connection_manager.get_existing(peer.node_id)
    assert conn is not None
    return conn


async def quiet(*conns: NodeConnection) -> bool:
    """Every stream of the warm-up calls is gone, on both ends."""
    return await settle(lambda: all(c.active_streams == 0 for c in conns))


def make_idle(agent: Agent, conn: NodeConnection) -> None:
    """Date ``conn``'s last use back one ``idle_ttl``: it is due to expire."""
    conn.last_used -= agent.connection_manager.config.idle_ttl


@pytest.mark.parametrize("order", ["close-then-call", "call-then-close"])
async def test_a_call_racing_the_callees_idle_close_succeeds(
    make_agent: AgentFactory, order: str
) -> None:
    a, b = await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn, "warm") == "warm"
    b_side = held(b, a)
    assert await quiet(conn, b_side)
    make_idle(b, b_side)
    expire = b.connection_manager._check_expiry  # what b's idle timer runs
    # Deterministic race: the caller's stream and b's close cross on the wire. a holds
    # `conn` from before and knows nothing of b's timer.
    if order == "close-then-call":
        expire(a.node_id)
        call = asyncio.ensure_future(notify(conn, a, b"race"))
    else:
        call = asyncio.ensure_future(notify(conn, a, b"race"))
        await asyncio.sleep(0)  # the call's stream is open and its request sent
        expire(a.node_id)
    note = await call  # no error: refused unprocessed, retried on a new connection
    assert b.connection_manager.expired == 1 and b_side.closed
    assert received(b, note) == 1  # ran on b, exactly once
    assert conn.closed and conn.replaceable
    again = held(a, b)
    assert again is not conn and again.node_id == b.node_id
    assert again.quic_connection.peer_identity == b.node_id
    assert a.connection_manager.dials_started == 2
    # the old stub keeps working, over the new connection (no further dial)
    assert await echo(conn, "old stub") == "old stub"
    assert await echo(await a.connect(b.node_id), "new") == "new"
    assert a.connection_manager.dials_started == 2


async def test_a_call_racing_its_own_sides_idle_close_succeeds(make_agent: AgentFactory) -> None:
    """The callee calls back over the connection the caller dialled just as the caller's
    own idle timer closes it: the callee re-dials the caller."""
    a, b = await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn) == "x"
    back = held(b, a)
    assert back.direction == "incoming"
    assert await quiet(conn, back)
    make_idle(a, conn)
    a.connection_manager._check_expiry(b.node_id)
    assert await echo(back, "back") == "back"
    assert back.closed and a.connection_manager.expired == 1
    assert b.connection_manager.dials_started == 1
    assert held(b, a).direction == "outgoing" and held(b, a).node_id == a.node_id


async def test_a_call_racing_an_lru_eviction_succeeds(make_agent: AgentFactory) -> None:
    b = await make_agent(connections=ConnectionManagerConfig(max_connections=2))
    a, c, d = await make_agent(), await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn) == "x"
    from_d = await d.connect(b.node_id, b.host, b.port)
    assert await echo(from_d) == "x"  # d's connection is now b's most recently used
    a_side, d_side = held(b, a), held(b, d)
    assert await quiet(conn, from_d, a_side, d_side)
    # b dials c: full, it evicts its least recently used idle connection, a's — just
    # as a starts a call on it
    dial = asyncio.ensure_future(b.connect(c.node_id, c.host, c.port))
    call = asyncio.ensure_future(notify(conn, a, b"evicted"))
    note = await call
    await dial
    assert a_side.closed and b.connection_manager.evicted >= 1
    assert received(b, note) == 1
    assert conn.closed and held(a, b) is not conn and held(a, b).node_id == b.node_id
    assert a.connection_manager.dials_started == 2


async def test_a_stream_refused_on_a_closing_connection_is_retried_elsewhere(
    make_agent: AgentFactory,
) -> None:
    """b closes its connection gracefully (a call of a's still runs on it): it refuses
    new streams there with REFUSED_STREAM. a's next call is retried on a new connection,
    and a hands the refusing one out no more."""
    a, b = await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    watch = conn.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    b_side = held(b, a)
    closing = asyncio.ensure_future(b_side.close(30.0))  # waits for the watch
    await asyncio.sleep(0)
    note = await notify(conn, a, b"refused")
    assert received(b, note) == 1
    assert conn.retired and not conn.closed  # the watch still runs on it
    assert held(a, b) is not conn and held(a, b).node_id == b.node_id
    assert a.connection_manager.dials_started == 2
    assert not closing.done()
    watch.cancel()
    await asyncio.wait_for(closing, 30)
    assert await settle(lambda: conn.closed)


async def test_without_retries_the_race_surfaces_as_refused(make_agent: AgentFactory) -> None:
    a = await make_agent(rpc_client_config=RPCClientConfig(transparent_retries=0))
    b = await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn) == "x"
    b_side = held(b, a)
    assert await quiet(conn, b_side)
    make_idle(b, b_side)
    b.connection_manager._check_expiry(a.node_id)
    with pytest.raises(CallRefusedError) as info:
        await echo(conn, "race")
    assert info.value.status is Status.UNAVAILABLE
    # the caller may send it again: its stub dials anew
    assert await echo(conn, "again") == "again"


async def test_a_stopped_node_is_not_redialled(make_agent: AgentFactory) -> None:
    """A node that stops closes its connections as gone, not as refusing: callers get
    UNAVAILABLE at once, as before, instead of dialling a node that is not there."""
    a, b = await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn) == "x"
    await b.stop()
    assert await settle(lambda: conn.closed)
    assert not conn.replaceable
    with pytest.raises(RPCError) as info:
        await echo(conn)
    assert info.value.status is Status.UNAVAILABLE
    assert a.connection_manager.dials_started == 1
