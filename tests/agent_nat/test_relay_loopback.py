"""Relay paths, relay limits and hole punching outcomes on loopback (no namespaces)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.quic import Agent
from agent.quic.hole_punch import HolePunchConfig, HolePunchError
from agent.quic.relay import RelayConfig, TokenBucket
from protos.agent.v1 import common_pb2 as common
from quic_rpc.quic import QUICConfig
from quic_rpc.quic.relay import (
    FRAGMENT_HEADER_SIZE,
    MAX_FRAGMENTS,
    RelayPathError,
    _Reassembler,
    is_relay_host,
    split_packet,
)

pytestmark = pytest.mark.timeout(60)

QUIC = QUICConfig(datagrams=True, keepalive_interval=2.0, idle_timeout=20.0)
Factory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[Factory]:
    agents: list[Agent] = []

    async def make(name: str, **kwargs: Any) -> Agent:
        kwargs.setdefault("quic_config", QUIC)
        agent = Agent(tmp_path / name, **kwargs)
        agents.append(agent)
        await agent.start()
        return agent

    yield make
    for agent in agents:
        await agent.stop()


def test_split_and_reassemble_in_any_order() -> None:
    data = os.urandom(3000)
    frags = split_packet(7, data, 1000)
    assert len(frags) == 4 and all(len(f) <= 1000 for f in frags)
    r = _Reassembler()
    assert [r.feed(f) for f in reversed(frags[1:])] == [None, None, None]
    assert r.feed(frags[0]) == data
    assert r.feed(split_packet(8, b"x", 100)[0]) == b"x"
    assert r.feed(b"\x00\x01") is None and r.dropped == 1  # too short
    with pytest.raises(RelayPathError):
        split_packet(1, bytes(MAX_FRAGMENTS * 10 + 1), 10 + FRAGMENT_HEADER_SIZE)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=100.0, burst=200, now=0.0)
    assert bucket.take(200, 0.0)
    assert not bucket.take(1, 0.0)
    assert bucket.take(100, 1.0)
    assert not bucket.take(150, 1.5)
    with pytest.raises(ValueError):
        RelayConfig(bandwidth=0)


async def _relayed(src: Agent, dst: Agent, relay: Agent, dial_timeout: float = 10.0) -> Any:
    for node in (src, dst):
        node.add_node(relay.node_id, relay.host, relay.port)
        await node.connect(relay.node_id)
    path = src.relay.path_to(relay.node_id, dst.node_id)
    return await src.connection_manager.get_connection(
        dst.node_id, path.host, path.port, dial_timeout=dial_timeout
    )


async def test_relayed_session_is_end_to_end(make_agent: Factory) -> None:
    s = await make_agent("s", relay=RelayConfig(serve=True, capture_bytes=1 << 20))
    a = await make_agent("a")
    b = await make_agent("b")
    conn = await _relayed(a, b, s)
    assert is_relay_host(conn.host)
    assert conn.peer_chain and conn.node_id == b.node_id  # B's chain, verified by A
    secret = "RELAY-LOOPBACK-SECRET " * 100  # several packets' worth: fragments
    reply = await conn.stub.Echo(common.EchoMessage(message=secret))
    assert reply.message == secret
    back = await b.connect(a.node_id)  # B calls back over the relayed connection
    assert is_relay_host(back.host)
    assert (await back.stub.Echo(common.EchoMessage(message="back"))).message == "back"
    assert s.relay.stats.forwarded_frames > 0
    assert s.relay.captured and b"RELAY-LOOPBACK-SECRET" not in s.relay.captured
    assert s.relay.sessions == 2  # a->b and b->a


async def test_relay_refuses_when_not_serving_and_over_limits(make_agent: Factory) -> None:
    s = await make_agent("s")  # not a relay
    a = await make_agent("a")
    b = await make_agent("b")
    with pytest.raises(Exception):  # noqa: B017 - any ConnectionFailedError subclass
        await _relayed(a, b, s, dial_timeout=2)
    assert s.relay.stats.dropped_not_serving > 0
    assert s.relay.stats.forwarded_frames == 0


async def test_relay_bandwidth_limit(make_agent: Factory) -> None:
    s = await make_agent("s", relay=RelayConfig(serve=True, bandwidth=1.0, burst=200_000))
    a = await make_agent("a")
    b = await make_agent("b")
    conn = await _relayed(a, b, s)
    with pytest.raises(Exception):  # noqa: B017 - the call outlives its deadline
        await conn.stub.Echo(common.EchoMessage(message="x" * 400_000), timeout=3)
    assert s.relay.stats.dropped_rate > 0


async def test_relay_session_limit(make_agent: Factory) -> None:
    s = await make_agent("s", relay=RelayConfig(serve=True, max_sessions_per_peer=1))
    a = await make_agent("a")
    b = await make_agent("b")
    await _relayed(a, b, s)
    c = await make_agent("c")
    c.add_node(s.node_id, s.host, s.port)
    await c.connect(s.node_id)
    path = a.relay.path_to(s.node_id, c.node_id)
    with pytest.raises(Exception):  # noqa: B017 - a second destination for a: refused
        await a.connection_manager.get_connection(c.node_id, path.host, path.port, dial_timeout=2)
    assert s.relay.stats.dropped_session_limit > 0


async def test_punch_failure_is_bounded_and_observable(make_agent: Factory) -> None:
    s = await make_agent("s", record_incoming_peers=True)
    punch = HolePunchConfig(dial_attempt_timeout=0.3, dial_timeout=1.0, relay_fallback=False)
    a = await make_agent("a", hole_punch=punch)
    b = await make_agent("b")
    for node in (a, b):
        node.add_node(s.node_id, s.host, s.port)
        await node.connect(s.node_id)
    # B takes no direct connection (as if its NAT dropped them): the punch can't succeed.
    await b.quic_server.stop(0)
    with pytest.raises(HolePunchError):
        await a.connect_via(b.node_id, s.node_id)
    [result] = a.hole_puncher.results
    assert not result.ok and result.method is None and result.attempts >= 1
    assert a.hole_puncher.stats.direct_failed == 1 and a.hole_puncher.stats.failed == 1
    assert b.hole_puncher.stats.punches_started == 1  # B was told and punched


async def test_punch_success_on_loopback(make_agent: Factory) -> None:
    s = await make_agent("s", record_incoming_peers=True)
    a = await make_agent("a")
    b = await make_agent("b")
    for node in (a, b):
        node.add_node(s.node_id, s.host, s.port)
        await node.connect(s.node_id)
    conn = await a.connect_via(b.node_id, s.node_id)
    assert conn.node_id == b.node_id and conn.port == b.port
    assert a.hole_puncher.results[-1].method == "direct"
    assert (await a.connect_via(b.node_id, s.node_id)) is conn
    assert a.hole_puncher.results[-1].method == "existing"


async def test_signalling_failure_is_a_hole_punch_error(make_agent: Factory) -> None:
    s = await make_agent("s")
    a = await make_agent("a")
    stranger = await make_agent("stranger")
    a.add_node(s.node_id, s.host, s.port)
    with pytest.raises(HolePunchError, match=r"NOT_FOUND|not known"):
        await a.connect_via(stranger.node_id, s.node_id)  # S never heard of it
    [result] = a.hole_puncher.results
    assert not result.ok and "signalling" in result.error


async def test_unused_relay_paths_are_pruned(make_agent: Factory) -> None:
    s = await make_agent("s", relay=RelayConfig(serve=True))
    a = await make_agent("a", relay=RelayConfig(max_paths=1))
    b = await make_agent("b")
    c = await make_agent("c")
    conn = await _relayed(a, b, s)
    with pytest.raises(RuntimeError, match="at most 1"):
        a.relay.path_to(s.node_id, c.node_id)  # the path to b is in use
    await conn.close()
    path = a.relay.path_to(s.node_id, c.node_id)  # now b's path can go
    assert [p.host for p in a.relay.paths] == [path.host]


async def test_signal_to_a_node_that_does_not_punch(make_agent: Factory) -> None:
    s = await make_agent("s", record_incoming_peers=True)
    a = await make_agent("a")
    b = await make_agent("b")
    for node in (a, b):
        node.add_node(s.node_id, s.host, s.port)
        await node.connect(s.node_id)
    b.servicer._hole_punch_target = None  # an older node: UNIMPLEMENTED for punch requests
    conn = await a.connect_via(b.node_id, s.node_id)  # still signalled, then dialled
    assert conn.node_id == b.node_id and a.hole_puncher.results[-1].method == "direct"
    assert b.hole_puncher.stats.punches_started == 0
