"""The QUIC agent's socket addresses (IPv4, IPv6, dual-stack) and keepalive settings."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent.identity import NodeIdentity
from agent.quic import Agent, AgentError, ConnectionManagerConfig
from protos.agent.v1 import common_pb2 as common
from quic_rpc.quic import QUICConfig

from .conftest import AgentFactory
from .stacks import settle

pytestmark = pytest.mark.timeout(60)


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback here")


async def _echo(conn: object, text: str) -> str:
    reply = await conn.stub.Echo(common.EchoMessage(message=text))  # type: ignore[attr-defined]
    message: str = reply.message
    return message


@needs_ipv6
async def test_ipv6_agents(make_agent: AgentFactory) -> None:
    a, b = await make_agent(host="::1"), await make_agent(host="::1")
    assert a.host == "::1"
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await _echo(conn, "v6") == "v6"
    seen = b.connection_manager.get_existing(a.node_id)
    assert seen is not None and seen.host == "::1" and seen.port == a.port


@needs_ipv6
async def test_dual_stack_agent_serves_both_families(make_agent: AgentFactory) -> None:
    dual = await make_agent(host="::")
    assert dual.bind_host == "::" and dual.host == "::1"
    v4 = await make_agent(host="127.0.0.1")
    v6 = await make_agent(host="::1")
    conn4 = await v4.connect(dual.node_id, "127.0.0.1", dual.port)
    conn6 = await v6.connect(dual.node_id, "::1", dual.port)
    assert await _echo(conn4, "4") == "4"
    assert await _echo(conn6, "6") == "6"
    seen4 = dual.connection_manager.get_existing(v4.node_id)
    assert seen4 is not None and seen4.host == "127.0.0.1"  # not ::ffff:127.0.0.1
    back = await dual.connect(v4.node_id)
    assert await _echo(back, "back") == "back"


async def test_keepalive_holds_idle_connections(make_agent: AgentFactory) -> None:
    # Generous margins: a loaded machine can stall the loop for a good fraction of a
    # second, and the idle timeout must not fire because of that.
    config = QUICConfig(idle_timeout=2.5, keepalive_interval=0.25)
    a = await make_agent(quic_config=config)
    b = await make_agent(quic_config=config)
    assert a.quic_config.keepalive_interval == 0.25
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await _echo(conn, "before") == "before"
    await asyncio.sleep(6.0)  # more than two idle timeouts with no call at all
    assert not conn.closed
    assert await _echo(conn, "after") == "after"


async def test_without_keepalive_dead_idle_connections_are_dropped(
    make_agent: AgentFactory,
) -> None:
    config = QUICConfig(idle_timeout=0.4, keepalive_interval=None)
    a = await make_agent(quic_config=config)
    b = await make_agent(quic_config=config)
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await _echo(conn, "x") == "x"
    assert await settle(lambda: conn.closed, tries=500)
    assert a.connection_manager.get_existing(b.node_id) is None
    again = await a.connect(b.node_id, b.host, b.port)  # a fresh dial
    assert again is not conn and await _echo(again, "y") == "y"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="idle_ttl"):
        ConnectionManagerConfig(idle_ttl=0)
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionManagerConfig(max_connections=0)
    with pytest.raises(ValueError, match="close_grace"):
        ConnectionManagerConfig(close_grace=-1)
    with pytest.raises(ValueError, match="stop_grace"):
        Agent("/nonexistent", stop_grace=-1)


async def test_a_failed_start_leaves_nothing(make_agent: AgentFactory) -> None:
    a = await make_agent()
    clash_dir = a.state_dir.parent / "clash"
    clash = Agent(clash_dir, port=a.port, host="127.0.0.1")
    with pytest.raises(OSError):
        await clash.start()  # the port is taken
    with pytest.raises(AgentError):
        _ = clash.port
    await clash.stop()  # idempotent after a failed start
    with pytest.raises(AgentError, match="starts once"):
        await clash.start()
    # the identity it made was kept and its state closed: a new agent opens both
    async with Agent(clash_dir) as again:
        assert again.node_id == NodeIdentity.load(clash_dir / "identity").node_id
        conn = await a.connect(again.node_id, again.host, again.port)
        assert await _echo(conn, "up") == "up"
