"""Mutual TLS: the verify callback runs on both sides; every failure is typed on both ends."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509

from quic_rpc.quic import (
    CertificateRejectedByPeerError,
    HandshakeError,
    HandshakeTimeoutError,
    PeerCertificateRejectedError,
    PeerVerificationError,
    QUICConfig,
    QUICServer,
    TLSCredentials,
    ca_verifier,
    connect,
)
from quic_rpc.quic import engine as engine_module

from .certs import PKI, make_cert, make_key
from .conftest import SocketFactory
from .helpers import echo_handler, request, wait_for_condition

NOW = dt.datetime.now(dt.UTC)


async def _attempt(
    make_socket: SocketFactory, server_creds: TLSCredentials, client_creds: TLSCredentials
) -> tuple[BaseException | None, QUICServer]:
    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(), echo_handler)
    await server.start()
    error: BaseException | None = None
    try:
        conn = await connect(csock, *ssock.local_address, client_creds)
    except HandshakeError as exc:
        error = exc
    else:
        assert await request(conn, b"ok") == b"ok"
        await conn.aclose()
    if error is not None:
        await wait_for_condition(lambda: bool(server.handshake_failures))
    await server.stop()
    return error, server


def _assert_server_rejected_client(
    error: BaseException | None, server: QUICServer, text: str
) -> None:
    """The server's verifier rejected the client: typed errors on both ends."""
    assert isinstance(error, CertificateRejectedByPeerError), error
    assert error.error_code == 0x12A
    assert "rejected our certificate" in str(error)
    assert text in str(error)  # the server's reason travels in the close frame
    assert not server.connections
    failure = server.handshake_failures[-1].error
    assert isinstance(failure, PeerCertificateRejectedError)
    assert text in str(failure)


def _assert_client_rejected_server(
    error: BaseException | None, server: QUICServer, text: str
) -> None:
    assert isinstance(error, PeerCertificateRejectedError), error
    assert error.error_code == 0x12A
    assert text in str(error)
    failure = server.handshake_failures[-1].error
    assert isinstance(failure, CertificateRejectedByPeerError)
    assert isinstance(failure, PeerVerificationError)


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
async def test_valid_chain_accepted(make_socket, kind) -> None:
    pki = PKI(kind)
    verify = ca_verifier(pki.root_pem)
    error, _ = await _attempt(
        make_socket, pki.credentials(verify, "server"), pki.credentials(verify, "client")
    )
    assert error is None


async def test_mixed_key_types_and_pem_loading(make_socket, pki_ed) -> None:
    from .certs import key_pem, pem

    verify = ca_verifier(pki_ed.root_pem)
    key, chain = pki_ed.leaf("client", kind="p256")
    client = TLSCredentials.load(key_pem(key), pem(*chain), verify)
    error, _ = await _attempt(make_socket, pki_ed.credentials(verify, "server"), client)
    assert error is None


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
async def test_rotated_chain_accepted(make_socket, kind) -> None:
    pki = PKI(kind)
    verify = ca_verifier(pki.root_pem)
    key, chain = pki.rotated("client", rotations=2)
    assert len(chain) == 3
    error, _ = await _attempt(
        make_socket, pki.credentials(verify, "server"), TLSCredentials(key, chain, verify)
    )
    assert error is None


async def test_identity_returned_by_verify_is_exposed(make_socket, pki) -> None:
    seen: list[Sequence[bytes]] = []

    def verify(chain: Sequence[bytes]) -> str:
        seen.append(chain)
        return x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()

    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, pki.credentials(verify, "server"), QUICConfig(), echo_handler)
    await server.start()
    conn = await connect(csock, *ssock.local_address, pki.credentials(verify, "client"))
    assert conn.peer_identity == "CN=server"
    assert conn.peer_info.identity == "CN=server"
    await wait_for_condition(lambda: bool(server.connections))
    assert server.connections[0].peer_identity == "CN=client"
    assert len(seen) == 2 and all(isinstance(c[0], bytes) for c in seen)
    await conn.aclose()
    await server.stop()


async def test_untrusted_client_root(make_socket, pki) -> None:
    other = PKI("p256", "other-root")
    verify = ca_verifier(pki.root_pem)
    error, server = await _attempt(
        make_socket, pki.credentials(verify, "server"), other.credentials(verify, "client")
    )
    _assert_server_rejected_client(error, server, "unable to get local issuer certificate")


async def test_untrusted_server_root(make_socket, pki) -> None:
    other = PKI("ed25519", "other-root")
    error, server = await _attempt(
        make_socket,
        other.credentials(ca_verifier(pki.root_pem), "server"),
        pki.credentials(ca_verifier(pki.root_pem), "client"),
    )
    _assert_client_rejected_server(error, server, "unable to get local issuer certificate")


async def test_expired_client_certificate(make_socket, pki) -> None:
    verify = ca_verifier(pki.root_pem)
    expired = pki.credentials(
        verify,
        "client",
        not_before=NOW - dt.timedelta(days=10),
        not_after=NOW - dt.timedelta(days=1),
    )
    error, server = await _attempt(make_socket, pki.credentials(verify, "server"), expired)
    _assert_server_rejected_client(error, server, "has expired")


async def test_not_yet_valid_server_certificate(make_socket, pki) -> None:
    verify = ca_verifier(pki.root_pem)
    future = pki.credentials(
        verify,
        "server",
        not_before=NOW + dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=10),
    )
    error, server = await _attempt(make_socket, future, pki.credentials(verify, "client"))
    _assert_client_rejected_server(error, server, "not valid yet")


async def test_verifier_rejecting_identity(make_socket, pki) -> None:
    def only_alice(chain: Sequence[bytes]) -> str:
        name = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
        if name != "CN=alice":
            raise ValueError(f"unexpected node {name}")
        return name

    error, server = await _attempt(
        make_socket, pki.credentials(only_alice, "alice"), pki.credentials(only_alice, "mallory")
    )
    _assert_server_rejected_client(error, server, "unexpected node CN=mallory")


async def test_broken_chain_missing_intermediate(make_socket, pki) -> None:
    verify = ca_verifier(pki.root_pem)
    inter_key = make_key("p256")
    inter = make_cert(inter_key, "intermediate", pki.key, pki.cert, ca=True)
    leaf_key = make_key("p256")
    leaf = make_cert(leaf_key, "client", inter_key, inter)
    # with the intermediate the chain verifies ...
    error, _ = await _attempt(
        make_socket,
        pki.credentials(verify, "server"),
        TLSCredentials(leaf_key, (leaf, inter), verify),
    )
    assert error is None
    # ... without it, or with an unrelated certificate in its place, it does not
    unrelated = PKI("p256", "unrelated").cert
    for chain in ((leaf,), (leaf, unrelated)):
        error, server = await _attempt(
            make_socket, pki.credentials(verify, "server"), TLSCredentials(leaf_key, chain, verify)
        )
        _assert_server_rejected_client(error, server, "certificate chain rejected")


async def test_no_client_certificate(make_socket, pki, monkeypatch) -> None:
    verify = ca_verifier(pki.root_pem)
    original = engine_module._quic_configuration

    def without_certificate(*args: object, **kwargs: object) -> object:
        configuration = original(*args, **kwargs)  # type: ignore[arg-type]
        if configuration.is_client:
            configuration.certificate = None
            configuration.private_key = None
        return configuration

    monkeypatch.setattr(engine_module, "_quic_configuration", without_certificate)
    error, server = await _attempt(
        make_socket, pki.credentials(verify, "server"), pki.credentials(verify, "client")
    )
    _assert_server_rejected_client(error, server, "sent no certificate")


async def test_server_hostname_check(make_socket, pki) -> None:
    ok = ca_verifier(pki.root_pem, server_name="localhost")
    bad = ca_verifier(pki.root_pem, server_name="other.example")
    server_creds = pki.credentials(ca_verifier(pki.root_pem), "server")
    error, _ = await _attempt(make_socket, server_creds, pki.credentials(ok, "client"))
    assert error is None
    error, server = await _attempt(make_socket, server_creds, pki.credentials(bad, "client"))
    _assert_client_rejected_server(error, server, "other.example")


async def test_handshake_timeout_without_server(make_socket, client_creds) -> None:
    silent = await make_socket()  # nobody serves on it
    csock = await make_socket()
    with pytest.raises(HandshakeTimeoutError):
        await connect(csock, *silent.local_address, client_creds, QUICConfig(handshake_timeout=0.3))
    assert csock.connections == []


async def test_alpn_mismatch_fails_cleanly(make_socket, server_creds, client_creds) -> None:
    ssock = await make_socket()
    csock = await make_socket()
    server = QUICServer(ssock, server_creds, QUICConfig(alpn="other/1"), echo_handler)
    await server.start()
    with pytest.raises(HandshakeError) as info:
        await connect(csock, *ssock.local_address, client_creds, QUICConfig())
    assert not isinstance(info.value, PeerVerificationError)
    await server.stop()
    await asyncio.sleep(0)
