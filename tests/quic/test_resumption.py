"""TLS session resumption with mutual TLS, and the caches behind it (no 0-RTT)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509

from quic_rpc.quic import (
    CertificateRejectedByPeerError,
    HandshakeError,
    PeerCertificateRejectedError,
    QUICConfig,
    QUICConnection,
    QUICServer,
    ServerSessionStore,
    SessionCache,
    TLSCredentials,
    VerificationError,
    ca_verifier,
    connect,
)
from quic_rpc.quic import engine as engine_module
from quic_rpc.quic.tls import _ClientSession, _ServerSession

from .certs import PKI
from .conftest import SocketFactory
from .helpers import echo_handler, request, wait_for_condition

RESUME = QUICConfig(session_resumption=True)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _server(
    make_socket: SocketFactory, credentials: TLSCredentials, config: QUICConfig = RESUME
) -> tuple[QUICServer, list[QUICConnection]]:
    sock = await make_socket()
    accepted: list[QUICConnection] = []
    server = QUICServer(sock, credentials, config, echo_handler, on_connection=accepted.append)
    await server.start()
    return server, accepted


async def _dial(
    sock: Any,
    server: QUICServer,
    credentials: TLSCredentials,
    config: QUICConfig = RESUME,
    **kwargs: Any,
) -> QUICConnection:
    conn = await connect(sock, *server.socket.local_address, credentials, config, **kwargs)
    assert await request(conn, b"ping") == b"ping"
    return conn


def _resumed(conn: QUICConnection) -> bool:
    return bool(conn._engine.session_resumed)


async def test_resumed_connection_reports_the_verified_identities(
    make_socket: SocketFactory, pki: PKI
) -> None:
    server, accepted = await _server(make_socket, pki.credentials(ca_verifier(pki.root_pem), "srv"))
    client_creds = pki.credentials(ca_verifier(pki.root_pem, server_name="localhost"), "cli")
    csock = await make_socket()

    first = await _dial(csock, server, client_creds, server_name="localhost")
    assert not _resumed(first) and not _resumed(accepted[0])
    assert len(client_creds.sessions) == 1  # the ticket came with HANDSHAKE_DONE
    await first.aclose()

    for round_ in range(3):  # each resumption hands out a fresh single-use ticket
        again = await _dial(csock, server, client_creds, server_name="localhost")
        served = accepted[-1]
        assert _resumed(again) and _resumed(served), round_
        # exactly what the full handshake reported, on both ends
        assert served.peer_chain == accepted[0].peer_chain == client_creds.chain_der
        assert served.peer_identity == accepted[0].peer_identity
        assert isinstance(served.peer_identity, x509.Certificate)
        assert served.peer_info.remote_chain == accepted[0].peer_info.remote_chain
        assert served.peer_info.identity == accepted[0].peer_info.identity
        assert again.peer_chain == first.peer_chain == server._credentials.chain_der
        assert again.peer_identity == first.peer_identity
        assert again.alpn == first.alpn
        await again.aclose()
    assert server.session_store is not None and len(server.session_store) == 1
    await server.stop()


async def test_off_by_default_and_needs_both_ends(make_socket: SocketFactory, pki: PKI) -> None:
    assert QUICConfig().session_resumption is False
    verify = ca_verifier(pki.root_pem)
    csock = await make_socket()
    client_creds = pki.credentials(verify, "cli")
    # the server does not resume: no tickets, every connection a full handshake
    server, _ = await _server(make_socket, pki.credentials(verify, "srv"), QUICConfig())
    assert server.session_store is None
    for _ in range(2):
        conn = await _dial(csock, server, client_creds)
        assert not _resumed(conn)
        await conn.aclose()
    assert len(client_creds.sessions) == 0
    await server.stop()
    # the client does not ask: the server issues nothing
    server, _ = await _server(make_socket, pki.credentials(verify, "srv"))
    conn = await _dial(csock, server, client_creds, QUICConfig())
    assert server.session_store is not None and len(server.session_store) == 0
    await conn.aclose()
    await server.stop()


async def test_ticket_of_server_a_proves_nothing_to_server_b(
    make_socket: SocketFactory, pki: PKI
) -> None:
    verify = ca_verifier(pki.root_pem)
    server_a, _ = await _server(make_socket, pki.credentials(verify, "server-a"))
    server_b, accepted_b = await _server(make_socket, pki.credentials(verify, "server-b"))
    client_creds = pki.credentials(verify, "cli")
    csock = await make_socket()
    conn = await _dial(csock, server_a, client_creds)
    await conn.aclose()

    # A's ticket offered to B (as if B had taken over A's address): B does not know it,
    # the handshake is a full one and the client sees B's own, verified, chain.
    cache = client_creds.sessions
    key_a = SessionCache._key(
        server_a.socket.local_address, None, RESUME.alpn, client_creds.chain_der
    )
    key_b = SessionCache._key(
        server_b.socket.local_address, None, RESUME.alpn, client_creds.chain_der
    )
    session = cache._take(key_a)
    assert session is not None
    cache._put(key_b, session)
    conn = await _dial(csock, server_b, client_creds)
    assert not _resumed(conn) and not _resumed(accepted_b[-1])
    assert conn.peer_chain == server_b._credentials.chain_der
    assert conn.peer_identity.subject.rfc4514_string() == "CN=server-b"
    await conn.aclose()

    # Even sharing A's session store, B resumes none of A's tickets: each session is
    # bound to the identity that issued it.
    server_b._sessions = server_a.session_store
    for engine in list(server_b._all):
        engine._engine._session_store = server_a.session_store
    conn = await _dial(csock, server_a, client_creds)  # a fresh ticket from A
    await conn.aclose()
    session = cache._take(key_a)
    assert session is not None
    cache._put(key_b, session)
    store = server_a.session_store
    assert store is not None and len(store) >= 1
    conn = await _dial(csock, server_b, client_creds)
    assert not _resumed(conn)
    assert conn.peer_identity.subject.rfc4514_string() == "CN=server-b"
    await conn.aclose()
    await server_a.stop()
    await server_b.stop()


async def test_expected_server_identity_is_checked_before_offering(
    make_socket: SocketFactory, pki: PKI
) -> None:
    """A ticket is offered only if this connection's verify callback accepts the chain
    of the server it came from; otherwise a full handshake checks the server anew."""
    server, _ = await _server(make_socket, pki.credentials(ca_verifier(pki.root_pem), "srv"))
    csock = await make_socket()
    key, chain = pki.leaf("cli")
    cache = SessionCache()
    trusting = TLSCredentials(key, chain, ca_verifier(pki.root_pem))
    conn = await _dial(csock, server, trusting, session_cache=cache)
    await conn.aclose()
    assert len(cache) == 1
    calls: list[Sequence[bytes]] = []

    def expects_another_node(peer_chain: Sequence[bytes]) -> Any:
        calls.append(peer_chain)
        raise VerificationError("expected node other")

    picky = TLSCredentials(key, chain, expects_another_node)
    with pytest.raises(PeerCertificateRejectedError, match="expected node other"):
        await connect(csock, *server.socket.local_address, picky, RESUME, session_cache=cache)
    # asked once for the stored chain (no offer), once in the full handshake
    assert len(calls) == 2
    assert len(cache) == 0
    await server.stop()


async def test_unknown_or_expired_tickets_fall_back_to_full_handshakes(
    make_socket: SocketFactory, pki: PKI
) -> None:
    verify = ca_verifier(pki.root_pem)
    server, accepted = await _server(make_socket, pki.credentials(verify, "srv"))
    store = server.session_store
    assert store is not None
    server_clock = Clock()
    store._clock = server_clock
    client_clock = Clock()
    cache = SessionCache(clock=client_clock)
    client_creds = pki.credentials(verify, "cli")
    csock = await make_socket()

    async def dial() -> QUICConnection:
        conn = await _dial(csock, server, client_creds, session_cache=cache)
        await conn.aclose()
        return conn

    # the server forgot the ticket (restart, eviction): a full handshake, then resumption
    await dial()
    store.clear()
    assert not _resumed(await dial())
    assert _resumed(await dial())
    # the ticket expired on the server only: the client offers it, the server refuses
    server_clock.now += RESUME.session_ticket_lifetime + 1
    assert not _resumed(await dial())
    assert accepted[-1].peer_chain == client_creds.chain_der  # verified in full again
    # a session lives session_ticket_lifetime from its full handshake, resumptions or not
    # (the client clock has not moved since that one)
    assert _resumed(await dial())
    client_clock.now += RESUME.session_ticket_lifetime / 2
    assert _resumed(await dial())
    client_clock.now += RESUME.session_ticket_lifetime / 2
    assert len(cache) == 1
    assert not _resumed(await dial())  # expired at the client: not even offered
    await server.stop()


async def test_server_runs_its_verifier_again_on_resumption(
    make_socket: SocketFactory, pki: PKI
) -> None:
    """A client chain the server's callback rejects now (revoked, expired) cannot resume:
    the full handshake that follows rejects it as usual."""
    inner = ca_verifier(pki.root_pem)
    revoked: set[bytes] = set()
    seen: list[Sequence[bytes]] = []

    def verify(chain: Sequence[bytes]) -> Any:
        seen.append(chain)
        if chain[0] in revoked:
            raise VerificationError("leaf is revoked")
        return inner(chain)

    server, _ = await _server(make_socket, pki.credentials(verify, "srv"))
    client_creds = pki.credentials(inner, "cli")
    csock = await make_socket()
    conn = await _dial(csock, server, client_creds)
    await conn.aclose()
    conn = await _dial(csock, server, client_creds)
    assert _resumed(conn)
    assert len(seen) == 2  # the resumption ran the callback too
    await conn.aclose()
    revoked.add(client_creds.chain_der[0])
    with pytest.raises(CertificateRejectedByPeerError, match="revoked"):
        await connect(csock, *server.socket.local_address, client_creds, RESUME)
    await wait_for_condition(lambda: bool(server.handshake_failures))
    await server.stop()


async def test_verifier_still_rejects_bad_chains(make_socket: SocketFactory, pki: PKI) -> None:
    """With accepted chains remembered and sessions resumable, a chain from another CA
    is still rejected in a full handshake, and cannot ride on anyone's session."""
    verify = ca_verifier(pki.root_pem)
    server, accepted = await _server(make_socket, pki.credentials(verify, "srv"))
    csock = await make_socket()
    good = pki.credentials(verify, "cli")
    conn = await _dial(csock, server, good, session_cache=(shared := SessionCache()))
    await conn.aclose()
    rogue = PKI("p256", "rogue-root").credentials(verify, "cli")
    with pytest.raises(CertificateRejectedByPeerError, match="certificate chain rejected"):
        await connect(csock, *server.socket.local_address, rogue, RESUME, session_cache=shared)
    await wait_for_condition(lambda: bool(server.handshake_failures))
    assert len(shared) == 1  # the good client's ticket was not offered for the rogue
    conn = await _dial(csock, server, good, session_cache=shared)
    assert _resumed(conn) and accepted[-1].peer_chain == good.chain_der
    await conn.aclose()
    await server.stop()


async def test_no_zero_rtt(make_socket: SocketFactory, pki: PKI) -> None:
    verify = ca_verifier(pki.root_pem)
    server, _ = await _server(make_socket, pki.credentials(verify, "srv"))
    client_creds = pki.credentials(verify, "cli")
    csock = await make_socket()
    conn = await _dial(csock, server, client_creds)
    await conn.aclose()
    store = server.session_store
    assert store is not None
    (issued,) = store._sessions.values()
    assert issued.ticket.max_early_data_size is None  # our tickets never allow 0-RTT
    (kept,) = next(iter(client_creds.sessions._tickets.values()))
    assert kept.ticket.max_early_data_size is None
    await server.stop()


def test_server_aborts_a_client_offering_early_data(pki: PKI) -> None:
    """A client that sends early_data anyway (aioquic's own client, with a ticket we
    doctored to allow it) is refused with illegal_parameter before any 0-RTT key exists."""
    verify = ca_verifier(pki.root_pem)
    server_creds = pki.credentials(verify, "srv")
    client_creds = pki.credentials(verify, "cli")
    store = ServerSessionStore()
    config = RESUME
    peer = ("127.0.0.1", 4433)

    def handshake(ticket: Any, received: list[Any]) -> tuple[QuicConnection, Any]:
        qc = QuicConfiguration(is_client=True, alpn_protocols=[config.alpn], connection_id_length=8)
        qc.certificate = client_creds.chain[0]
        qc.private_key = client_creds.private_key
        qc.verify_mode = 0
        qc.session_ticket = ticket
        client = QuicConnection(configuration=qc, session_ticket_handler=received.append)
        now = 1.0
        client.connect(peer, now=now)
        server = None
        for _ in range(6):
            now += 0.05
            out = client.datagrams_to_send(now=now)
            if not out:
                break
            if server is None:
                server = engine_module.EngineConnection(
                    config=config,
                    credentials=server_creds,
                    is_client=False,
                    reset_key=b"k" * 32,
                    original_destination_connection_id=client._peer_cid.cid,
                    session_store=store,
                )
            for data, _ in out:
                server.receive_datagram(data, peer, now=now)
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, peer, now=now)
        return client, server

    received: list[Any] = []
    _, server = handshake(None, received)
    assert server.peer_verified and received
    doctored = received[-1]
    doctored.max_early_data_size = 0xFFFFFFFF
    _, server = handshake(doctored, [])
    assert server.is_closing
    event = server.close_event
    assert event is not None and event.error_code == 0x100 + 47  # illegal_parameter
    assert not server.peer_verified


def test_caches_are_bounded() -> None:
    cache = SessionCache(3, per_server=2)
    for index in range(10):
        cache._put(("s", index % 4), _ClientSession(object(), (b"c",), 0.0, float("inf")))
        assert len(cache) <= 3
        assert all(len(v) <= 2 for v in cache._tickets.values())
    assert len(cache) == 3
    store = ServerSessionStore(2)
    for index in range(5):
        store._add(bytes([index]), _ServerSession(object(), (b"c",), (b"s",), 0.0, 1e18))
    assert len(store) == 2
    assert store._pop(b"\x00") is None and store._pop(b"\x04") is not None
    assert store._pop(b"\x04") is None  # single use
    with pytest.raises(ValueError):
        SessionCache(0)
    with pytest.raises(ValueError):
        ServerSessionStore(0)


def test_ca_verifier_cache_is_bounded_and_exact(pki: PKI) -> None:
    verify = ca_verifier(pki.root_pem, cache_size=2)
    chains = [pki.credentials(verify, f"n{i}").chain_der for i in range(4)]
    for chain in chains:
        assert verify(chain).subject.rfc4514_string().startswith("CN=n")
    assert len(verify._accepted) == 2  # type: ignore[attr-defined]
    # a chain is remembered by its exact bytes: anything else is verified in full
    rogue = PKI("p256", "rogue-root").credentials(verify, "n0").chain_der
    with pytest.raises(VerificationError, match="certificate chain rejected"):
        verify(rogue)
    with pytest.raises(VerificationError):
        verify((chains[3][0] + b"\x00",))
    uncached = ca_verifier(pki.root_pem, cache_size=0)
    assert uncached(chains[0]) == verify(chains[0])
    assert len(uncached._accepted) == 0  # type: ignore[attr-defined]


async def test_resumption_under_concurrent_connects(make_socket: SocketFactory, pki: PKI) -> None:
    verify = ca_verifier(pki.root_pem)
    server, accepted = await _server(make_socket, pki.credentials(verify, "srv"))
    client_creds = pki.credentials(verify, "cli")
    csock = await make_socket()
    first = await asyncio.gather(*(_dial(csock, server, client_creds) for _ in range(4)))
    for conn in first:
        await conn.aclose()
    assert len(client_creds.sessions) == 4
    again = await asyncio.gather(*(_dial(csock, server, client_creds) for _ in range(6)))
    assert sum(_resumed(c) for c in again) == 4  # one ticket each, the rest in full
    assert all(a.peer_chain == client_creds.chain_der for a in accepted)
    for conn in again:
        await conn.aclose()
    await server.stop()


async def test_handshake_error_types_unchanged_with_resumption(
    make_socket: SocketFactory, pki: PKI
) -> None:
    other = PKI("p256", "other-root")
    server, _ = await _server(make_socket, other.credentials(ca_verifier(other.root_pem), "srv"))
    csock = await make_socket()
    with pytest.raises(HandshakeError):
        await connect(
            csock,
            *server.socket.local_address,
            pki.credentials(ca_verifier(pki.root_pem), "cli"),
            RESUME,
        )
    await wait_for_condition(lambda: bool(server.handshake_failures))
    await server.stop()
