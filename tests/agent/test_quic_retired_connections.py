"""A QUIC agent's retired connection (the peer refused a stream on it): it closes once
its calls are done, and stopping the agent or its connection manager closes it under
the stop's own grace — never after the QUIC config's longer graceful close timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.quic import Agent, ConnectionManagerConfig, NodeConnection
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2
from quic_rpc.quic import QUICConfig
from quic_rpc.rpc import RPCError, Status

pytestmark = pytest.mark.timeout(60)

QUIC_GRACE = 5.0
"""The QUIC graceful close timeout (the default, spelled out)."""
CLOSE_GRACE = 0.2
"""The connection manager's stop grace: far below QUIC_GRACE."""
BOUND = 3.0
"""What a stop or a close may take here: well above CLOSE_GRACE, well below QUIC_GRACE."""


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    """Two started agents, ``a`` with a short close grace; both stopped afterwards."""
    a = Agent(
        tmp_path / "a",
        quic_config=QUICConfig(graceful_stop_timeout=QUIC_GRACE),
        connections=ConnectionManagerConfig(close_grace=CLOSE_GRACE),
    )
    b = Agent(tmp_path / "b")
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def retired_with_a_call_running(a: Agent, b: Agent) -> tuple[NodeConnection, Any]:
    """a's connection to b, retired because b refused a stream on it (b is closing it
    gracefully), with a health watch of a's still running on it."""
    conn = await a.connect(b.node_id, b.host, b.port)
    watch = conn.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    b_side = b.connection_manager.get_existing(a.node_id)
    assert b_side is not None
    closing = asyncio.ensure_future(b_side.close(30.0))  # waits for the watch
    await asyncio.sleep(0)
    # refused on the closing connection, retried on a new one
    reply = await conn.stub.Echo(common.EchoMessage(message="retried"))
    assert reply.message == "retried"
    assert conn.retired and not conn.closed  # the watch still runs on it
    assert not closing.done()
    return conn, watch


@pytest.mark.parametrize("stopping", ["agent", "manager"])
async def test_stop_closes_a_retired_connection_under_its_own_grace(
    pair: tuple[Agent, Agent], stopping: str
) -> None:
    a, b = pair
    conn, watch = await retired_with_a_call_running(a, b)
    stop = a.stop() if stopping == "agent" else a.connection_manager.stop()
    await asyncio.wait_for(stop, BOUND)  # not QUIC_GRACE
    assert conn.closed
    with pytest.raises(RPCError) as info:  # cut by the stop, after its grace
        await asyncio.wait_for(watch.read(), BOUND)
    assert info.value.status is Status.UNAVAILABLE


async def test_a_retired_connection_closes_once_its_calls_are_done(
    pair: tuple[Agent, Agent],
) -> None:
    a, b = pair
    conn, watch = await retired_with_a_call_running(a, b)
    watch.cancel()
    await asyncio.wait_for(conn.quic_connection.wait_closed(), BOUND)
    assert conn.closed
    await asyncio.wait_for(a.stop(), BOUND)
