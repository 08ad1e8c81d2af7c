"""NodeConnectionManager and NodeConnection on QUIC: dedupe, reuse, expiry, reverse
calls, wrong nodes, bounds and stopping under load."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.domains.notifications import new_notification, sign_notification
from agent.identity import NodeIdentity
from agent.identity_testing import ca_issued_identity
from agent.quic import (
    AgentError,
    ConnectionFailedError,
    ConnectionLimitReachedError,
    ConnectionManagerConfig,
    ConnectionManagerStoppedError,
    ConnectRefusedError,
    NodeConnection,
    NodeIdMismatchError,
    PeerRejectedUsError,
)
from agent.servicer import signed_notification_to_proto
from protos.agent.v1 import agent_service_pb2 as pb
from protos.agent.v1 import common_pb2 as common
from protos.grpc.health.v1 import health_pb2
from quic_rpc.quic import QUICSocket, TLSCredentials
from quic_rpc.rpc import RPCError, Status

from .conftest import AgentFactory
from .stacks import settle

pytestmark = pytest.mark.timeout(60)


async def echo(conn: NodeConnection, text: str = "x") -> str:
    reply = await conn.stub.Echo(common.EchoMessage(message=text))
    message: str = reply.message
    return message


def watch(conn: NodeConnection) -> Any:
    """A call that stays open (Health.Watch) and keeps its connection busy."""
    return conn.health.Watch(health_pb2.HealthCheckRequest(service=""))


async def test_concurrent_dials_share_one_handshake(make_agent: AgentFactory) -> None:
    a, b = await make_agent(), await make_agent()
    manager = a.connection_manager
    conns = await asyncio.gather(
        *(manager.get_connection(b.node_id, b.host, b.port) for _ in range(12))
    )
    assert all(c is conns[0] for c in conns)
    assert manager.dials_started == 1
    assert len(a.socket.connections) == 1
    assert await settle(lambda: len(b.quic_server.connections) == 1)
    assert await echo(conns[0], "one") == "one"


async def test_failed_dial_is_shared_and_leaves_nothing(make_agent: AgentFactory) -> None:
    a, b = await make_agent(), await make_agent()
    stranger = NodeIdentity.generate().node_id
    results = await asyncio.gather(
        *(a.connect(stranger, b.host, b.port) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, NodeIdMismatchError) for r in results)
    mismatch = results[0]
    assert isinstance(mismatch, NodeIdMismatchError)
    assert (mismatch.expected, mismatch.actual) == (stranger, b.node_id)
    assert mismatch.code == "node_id_mismatch"
    assert a.connection_manager.dials_started == 1
    assert await settle(lambda: not a.socket.connections)
    assert a.connection_manager.connections == []
    # the right id at that address works afterwards
    conn = await a.connect(b.node_id, b.host, b.port)
    assert conn.node_id == b.node_id


async def test_connections_are_reused(make_agent: AgentFactory) -> None:
    a, b = await make_agent(), await make_agent()
    a.add_node(b.node_id, b.host, b.port)
    first = await a.connect(b.node_id)
    again = await a.connect(b.node_id, b.host, b.port)
    assert again is first
    assert first.direction == "outgoing"
    for n in range(5):
        assert await echo(again, str(n)) == str(n)
    assert a.connection_manager.dials_started == 1
    assert len(a.socket.connections) == 1
    await a.disconnect(b.node_id)
    assert first.closed
    redialled = await a.connect(b.node_id)
    assert redialled is not first and not redialled.closed
    assert a.connection_manager.dials_started == 2


async def test_idle_connections_expire_busy_ones_do_not(make_agent: AgentFactory) -> None:
    a = await make_agent(connections=ConnectionManagerConfig(idle_ttl=0.2))
    b = await make_agent()  # its default TTL is long: the expiry is a's
    conn = await a.connect(b.node_id, b.host, b.port)
    call = watch(conn)
    assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
    await asyncio.sleep(1.0)  # several TTLs with a call open on the connection
    assert not conn.closed
    assert a.connection_manager.get_existing(b.node_id) is conn
    call.cancel()
    assert await settle(lambda: conn.closed)
    assert a.connection_manager.get_existing(b.node_id) is None
    assert a.connection_manager.expired == 1
    # the callee let go of the incoming side too
    assert await settle(lambda: not b.connection_manager.connections)
    again = await a.connect(b.node_id, b.host, b.port)
    assert await echo(again) == "x"


async def test_callee_calls_back_over_the_incoming_connection(make_agent: AgentFactory) -> None:
    a, b = await make_agent(), await make_agent()
    conn = await a.connect(b.node_id, b.host, b.port)
    assert await echo(conn) == "x"
    # b never heard of a's address, yet reaches it: over the connection a dialled
    assert b.nodes.get_node(a.node_id) is None
    back = await b.connect(a.node_id)
    assert back.direction == "incoming"
    assert back.node_id == a.node_id
    assert back.quic_connection in b.quic_server.connections
    assert await echo(back, "back") == "back"
    # a's handler knows b is calling: a notification from b is accepted as b's
    note = new_notification(b.node_id, "general", b"over the same connection")
    await back.stub.NotificationsSend(
        signed_notification_to_proto(sign_notification(note, b.identity))
    )
    assert note in [e.notification for e in a.notifications.all()]
    assert b.connection_manager.dials_started == 0
    assert len(a.socket.connections) == 1 and len(b.socket.connections) == 1
    # and a's dial is still the one a uses
    assert await a.connect(b.node_id) is conn


async def test_connection_info_matches_the_caller(make_agent: AgentFactory) -> None:
    rotated = NodeIdentity.generate("ed25519").rotate("p256")
    a = await make_agent(identity=rotated)
    b = await make_agent()
    seen: list[Any] = []
    original = b.connection_info

    def spy(context: Any) -> Any:
        info = original(context)
        seen.append(info)
        return info

    b.servicer._connection_info = spy
    conn = await a.connect(b.node_id, b.host, b.port)
    note = new_notification(a.node_id, "general", b"who")
    await conn.stub.NotificationsSend(
        signed_notification_to_proto(sign_notification(note, a.identity))
    )
    (info,) = seen
    assert info.remote_node_id == a.node_id
    assert (info.remote_host, info.remote_port) == ("127.0.0.1", a.port)
    assert info.remote_chain == tuple(rotated.chain_der())


async def test_a_node_without_a_node_certificate_cannot_connect(make_agent: AgentFactory) -> None:
    b = await make_agent()
    outsider = ca_issued_identity("p256")
    async with QUICSocket("127.0.0.1", 0) as sock:
        creds = TLSCredentials.load(
            outsider.private_key_pem(), outsider.chain_pem(), lambda chain: None
        )
        with pytest.raises(PeerRejectedUsError):
            await NodeConnection.connect(b.node_id, b.host, b.port, sock, creds, timeout=10)
        assert not sock.connections
    assert b.connection_manager.connections == []


async def test_nobody_answering_times_out(make_agent: AgentFactory) -> None:
    a = await make_agent()
    async with QUICSocket("127.0.0.1", 0) as silent:  # bound, but no server on it
        port = silent.local_address[1]
        with pytest.raises(ConnectionFailedError) as info:
            await NodeConnection.connect(
                NodeIdentity.generate().node_id,
                "127.0.0.1",
                port,
                a.socket,
                TLSCredentials.load(
                    a.identity.private_key_pem(), a.identity.chain_pem(), lambda c: None
                ),
                timeout=0.3,
            )
        assert info.value.code == "connect_timeout"
    assert await settle(lambda: not a.socket.connections)


async def test_bounded_connections_evict_idle_lru(make_agent: AgentFactory) -> None:
    a = await make_agent(connections=ConnectionManagerConfig(max_connections=2))
    b, c, d, e = [await make_agent() for _ in range(4)]
    conn_b = await a.connect(b.node_id, b.host, b.port)
    conn_c = await a.connect(c.node_id, c.host, c.port)
    assert await echo(conn_b) == "x"  # b is now the most recently used
    conn_d = await a.connect(d.node_id, d.host, d.port)
    assert await settle(lambda: conn_c.closed)  # c was the least recently used idle one
    assert not conn_b.closed
    assert {x.node_id for x in a.connection_manager.connections} == {b.node_id, d.node_id}
    assert a.connection_manager.evicted == 1
    # both busy: no room for e
    calls = [watch(conn_b), watch(conn_d)]
    for call in calls:
        await call.read()
    with pytest.raises(ConnectionLimitReachedError, match="busy"):
        await a.connect(e.node_id, e.host, e.port)
    assert a.connection_manager.dials_started == 3
    calls[0].cancel()
    await settle(lambda: conn_b.active_streams == 0)
    conn_e = await a.connect(e.node_id, e.host, e.port)
    assert await echo(conn_e) == "x"
    assert conn_b.closed and not conn_d.closed
    calls[1].cancel()


async def test_incoming_connections_count_towards_the_bound(make_agent: AgentFactory) -> None:
    a = await make_agent(connections=ConnectionManagerConfig(max_connections=1))
    b, c = await make_agent(), await make_agent()
    from_b = await b.connect(a.node_id, a.host, a.port)
    call = watch(from_b)
    await call.read()
    assert await settle(lambda: len(a.connection_manager.connections) == 1)
    # a is full and its one connection busy: c's connection is refused on arrival
    try:
        from_c = await c.connect(a.node_id, a.host, a.port)
    except ConnectRefusedError as exc:
        assert "too many connections" in str(exc)
    else:  # the handshake completed just before the refusal arrived
        assert await settle(lambda: from_c.closed)
        with pytest.raises(RPCError) as info:
            await echo(from_c)
        assert info.value.status is Status.UNAVAILABLE
    assert a.connection_manager.connections == [a.connection_manager.get_existing(b.node_id)]
    call.cancel()


async def test_stop_under_load(make_agent: AgentFactory) -> None:
    a, b = await make_agent(stop_grace=0.2), await make_agent()
    name = "big"
    a.vaults.create_vault(name)
    a.vaults.write_file(name, "blob.bin", bytes(range(256)) * 40_000)  # ~10 MB
    a.vaults.grant(name, b.node_id)
    conn = await b.connect(a.node_id, a.host, a.port)
    pulls = [conn.stub.VaultsPull(pb.VaultsPullRequest(vault_name=name)) for _ in range(3)]
    for pull in pulls:
        await pull.read()  # started, then left unread: the server blocks on flow control
    watches = [watch(conn) for _ in range(3)]
    for call in watches:
        await call.read()
    echoes = [asyncio.ensure_future(echo(conn, str(n))) for n in range(20)]
    assert await settle(lambda: a.rpc_server.active_calls >= 6)
    manager = a.connection_manager
    await a.stop()
    for call in [*pulls, *watches]:
        with pytest.raises(RPCError) as info:
            async for _ in call:
                pass
        assert info.value.status in (Status.UNAVAILABLE, Status.CANCELLED)
    outcomes = await asyncio.gather(*echoes, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, str) or (
            isinstance(outcome, RPCError) and outcome.status is Status.UNAVAILABLE
        ), outcome
    assert await settle(lambda: conn.closed)
    with pytest.raises(RPCError) as after:
        await echo(conn)
    assert after.value.status is Status.UNAVAILABLE
    with pytest.raises(ConnectionManagerStoppedError):
        await manager.get_connection(b.node_id, b.host, b.port)
    with pytest.raises(AgentError):
        await a.connect(b.node_id, b.host, b.port)


def _one_shared_connection(a: Any, b: Any) -> bool:
    held_a = a.connection_manager.get_existing(b.node_id)
    held_b = b.connection_manager.get_existing(a.node_id)
    return (
        held_a is not None
        and held_b is not None
        and len(a.socket.connections) == 1
        and len(b.socket.connections) == 1
        and held_a.quic_connection in a.socket.connections
        and held_b.quic_connection in b.socket.connections
    )


@pytest.mark.parametrize("attempt", range(3))
async def test_simultaneous_dials_settle_on_one_connection(
    make_agent: AgentFactory, attempt: int
) -> None:
    a, b = await make_agent(), await make_agent()
    ab, ba = await asyncio.gather(
        a.connect(b.node_id, b.host, b.port), b.connect(a.node_id, a.host, a.port)
    )
    assert await echo(ab) == "x" and await echo(ba) == "x"
    assert await settle(lambda: _one_shared_connection(a, b))
    held_a = a.connection_manager.get_existing(b.node_id)
    held_b = b.connection_manager.get_existing(a.node_id)
    assert held_a is not None and held_b is not None
    # both hold the same QUIC connection: the one the smaller node id dialled
    assert held_a.quic_connection.local_address[1] == held_b.port
    expected = "outgoing" if a.node_id < b.node_id else "incoming"
    assert held_a.direction == expected
    assert await echo(held_a, "a") == "a" and await echo(held_b, "b") == "b"


@pytest.mark.parametrize("attempt", range(4))
async def test_calls_during_simultaneous_dials_all_succeed(
    make_agent: AgentFactory, attempt: int
) -> None:
    """While both nodes dial each other, each keeps calling the other over whatever
    connection it gets: no call may land on the connection the other end is closing
    (it refuses new streams there, which callers would see as UNAVAILABLE)."""
    a, b = await make_agent(), await make_agent()

    async def keep_calling(src: Any, dst: Any) -> int:
        ok = 0
        for i in range(25):
            conn = await src.connect(dst.node_id, dst.host, dst.port)
            assert await echo(conn, f"{i}") == f"{i}"
            ok += 1
        return ok

    assert await asyncio.gather(keep_calling(a, b), keep_calling(b, a)) == [25, 25]
    assert await settle(lambda: _one_shared_connection(a, b))


async def test_a_winning_dial_under_way_hides_the_peers_connection(
    make_agent: AgentFactory,
) -> None:
    small, big = sorted([await make_agent(), await make_agent()], key=lambda x: x.node_id)
    manager = small.connection_manager
    async with QUICSocket("127.0.0.1", 0) as silent:  # the dial hangs: nobody answers
        dialling = asyncio.ensure_future(
            manager.get_connection(
                big.node_id, "127.0.0.1", silent.local_address[1], dial_timeout=1.0
            )
        )
        assert await settle(lambda: manager.dials_started == 1)
        incoming = await big.connect(small.node_id, small.host, small.port)
        assert await settle(lambda: manager.get_existing(big.node_id) is not None)
        # the node's connection is held, but ours would replace it: nobody starts on it
        assert manager.reusable(big.node_id) is None
        waiting = asyncio.ensure_future(small.connect(big.node_id, big.host, big.port))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # our dial times out: the node's connection is the one to use after all
        conn = await waiting
        with pytest.raises(ConnectionFailedError):
            await dialling
        assert conn.direction == "incoming" and conn.node_id == big.node_id
        assert await echo(conn, "back") == "back" and await echo(incoming) == "x"


async def test_stop_while_dialling_fails_the_dial_cleanly(make_agent: AgentFactory) -> None:
    a = await make_agent()
    async with QUICSocket("127.0.0.1", 0) as silent:  # nobody answers: the dial hangs
        stranger = NodeIdentity.generate().node_id
        dialling = asyncio.ensure_future(a.connect(stranger, "127.0.0.1", silent.local_address[1]))
        assert await settle(lambda: a.connection_manager.dials_started == 1)
        await a.stop()
        with pytest.raises(AgentError, match="stopped while connecting"):
            await dialling
