"""quic_rpc.quic.relay.RelayPath on its own: two sockets whose only link is an in-memory
carrier (a list of fragments moved by the test's loop), with small fragments and loss."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable

import pytest

from quic_rpc.quic import QUICConfig, QUICServer, QUICSocket, ca_verifier, connect
from quic_rpc.quic.relay import RelayPath, RelayPathError, is_relay_host
from tests.quic.certs import PKI
from tests.quic.helpers import echo_handler, request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sockets() -> AsyncIterator[tuple[QUICSocket, QUICSocket]]:
    a = await QUICSocket.bind("127.0.0.1", 0)
    b = await QUICSocket.bind("127.0.0.1", 0)
    yield a, b
    await a.close()
    await b.close()


def _carrier(
    loss: float, rng: random.Random
) -> tuple[Callable[[bytes], None], Callable[[RelayPath], None]]:
    """A send function and a way to say where it delivers (on the next loop turn)."""
    target: list[RelayPath] = []
    loop = asyncio.get_running_loop()

    def send(fragment: bytes) -> None:
        if rng.random() >= loss:
            loop.call_soon(target[0].receive, fragment)

    return send, target.append


@pytest.mark.parametrize("loss", [0.0, 0.05])
async def test_connection_over_relay_path(
    sockets: tuple[QUICSocket, QUICSocket], loss: float
) -> None:
    sock_a, sock_b = sockets
    pki = PKI("p256")
    verify = ca_verifier(pki.root_pem)
    rng = random.Random(7)
    send_ab, set_b = _carrier(loss, rng)
    send_ba, set_a = _carrier(loss, rng)
    path_a = RelayPath(sock_a, "to-b", send_ab, fragment_size=500)  # b as a sees it
    path_b = RelayPath(sock_b, "to-a", send_ba, fragment_size=500)  # a as b sees it
    set_b(path_b)
    set_a(path_a)
    path_a.open()
    path_b.open()
    assert is_relay_host(path_a.host) and not is_relay_host("203.0.113.10")
    config = QUICConfig(idle_timeout=10.0, keepalive_interval=2.0)
    server = QUICServer(sock_b, pki.credentials(verify, "server"), config, echo_handler)
    await server.start()
    conn = await connect(
        sock_a, path_a.host, path_a.port, pki.credentials(verify, "client"), config
    )
    payload = os.urandom(200_000)
    assert await request(conn, payload) == payload
    assert conn.remote_address == path_a.address
    assert server.connections[0].remote_address == path_b.address
    assert path_a.packets_sent > 0 and path_b.packets_received > 0
    with pytest.raises(RelayPathError):
        RelayPath(sock_a, "to-b", send_ab, fragment_size=500).open()  # taken
    await conn.aclose()
    await server.stop()
    path_a.close()
    path_b.close()
    assert not sock_a._virtual_paths and not sock_b._virtual_paths


async def test_bad_paths(sockets: tuple[QUICSocket, QUICSocket]) -> None:
    sock_a, _ = sockets
    with pytest.raises(RelayPathError):
        RelayPath(sock_a, "bad label!", lambda f: None, fragment_size=500)
    with pytest.raises(RelayPathError):
        RelayPath(sock_a, "ok", lambda f: None, fragment_size=10)
    path = RelayPath(sock_a, "ok", lambda f: None, fragment_size=500)
    path.close()  # closing an unopened path is fine
    path.receive(b"\x00\x00\x11x")  # and a closed path ignores what arrives
    assert path.packets_received == 0
