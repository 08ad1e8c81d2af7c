"""Idle connections release what the handshake needed once it is confirmed.

aioquic allocates a 16 KiB TLS output buffer per epoch (Initial, Handshake, 1-RTT) and
keeps all three for the connection's life, and builds a per-connection table of frame
handlers with a fresh set of allowed epochs in every entry. The engine drops the first
two buffers once the handshake is confirmed, replaces the 1-RTT one by a 4 KiB buffer
(after the handshake TLS only writes a session ticket there) and shares the epoch sets.
Measured with tracemalloc (server and client in one process, aioquic 1.7.2): about 197
KiB per client+server pair with none of this, 128 KiB with the two buffers released,
about 90 KiB with all of it. The bound of 115 KiB per pair leaves about 25 % headroom
for noise and version drift, and fails if a side still holds a 16 KiB buffer.
"""

from __future__ import annotations

import gc
import tracemalloc

from aioquic.tls import Epoch

from quic_rpc.quic import QUICConfig, QUICConnection, QUICServer, TLSCredentials, connect

from .conftest import SocketFactory
from .helpers import echo_handler, request, wait_for_condition

KiB = 1024
N = 40
PAIR_BOUND = 115 * KiB


def _released(conn: QUICConnection) -> bool:
    engine = conn._engine
    return (
        set(engine._crypto_buffers) == {Epoch.ONE_RTT}
        and set(engine._crypto_streams) == {Epoch.ONE_RTT}
        and engine._crypto_buffers[Epoch.ONE_RTT].capacity <= 4096
    )


async def test_idle_connection_memory_after_handshake(
    make_socket: SocketFactory, server_creds: TLSCredentials, client_creds: TLSCredentials
) -> None:
    config = QUICConfig()
    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, server_creds, config, echo_handler)
    await server.start()
    host, port = ssock.local_address
    warm = await connect(csock, host, port, client_creds, config)  # imports, caches
    assert await request(warm, b"warm") == b"warm"

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        conns = [await connect(csock, host, port, client_creds, config) for _ in range(N)]
        await wait_for_condition(lambda: len(server.connections) == N + 1)
        await wait_for_condition(lambda: all(_released(c) for c in server.connections))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_pair = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / N
    assert per_pair < PAIR_BOUND, f"{per_pair / KiB:.1f} KiB per idle connection pair"
    assert all(_released(c) for c in conns)

    # The connections still work after the release: a round trip, then a key update
    # requested by each side in turn, each followed by another round trip.
    conn = conns[-1]
    assert await request(conn, b"after release") == b"after release"
    peer = next(c for c in server.connections if _peer_of(c, conn))
    for updater in (conn, peer):
        engine = updater._engine
        phase = engine._cryptos[Epoch.ONE_RTT].send.key_phase
        engine.request_key_update()
        updater._schedule_flush()
        payload = b"after key update %d" % phase
        assert await request(conn, payload) == payload
        assert engine._cryptos[Epoch.ONE_RTT].send.key_phase != phase
        # the peer followed: it decrypted in the new phase and answered in it
        assert conn._engine._cryptos[Epoch.ONE_RTT].recv.key_phase == (
            engine._cryptos[Epoch.ONE_RTT].send.key_phase
        )
    for c in [warm, *conns]:
        c.abort("test done")


def _peer_of(server_side: QUICConnection, client_side: QUICConnection) -> bool:
    """Whether ``server_side`` is the server end of ``client_side``."""
    return bool(
        server_side._engine._peer_cid.cid in client_side._engine.host_cids()
        or client_side._engine._peer_cid.cid in server_side._engine.host_cids()
    )
