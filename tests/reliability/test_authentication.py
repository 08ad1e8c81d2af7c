"""Authentication on every path: no handler runs for a peer whose chain was not
verified — on QUIC with the agent's node verifier (no certificate, untrusted, expired,
not yet valid, broken chain, forged or inconsistent node id, someone else's id,
revoked or rotated-away key) and on TCP/TLS with a verify callback. An instrumented
handler counts every invocation; a verified peer on another connection keeps working."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from cryptography import x509

from agent.identity import NodeIdentity, node_verifier
from agent.identity_testing import (
    broken_chain_identity,
    ca_issued_identity,
    expired_identity,
    inconsistent_node_id_identity,
    not_yet_valid_identity,
    untrusted_root_identity,
)
from quic_rpc.quic import (
    CertificateRejectedByPeerError,
    HandshakeError,
    PeerCertificateRejectedError,
    QUICConfig,
    TLSCredentials,
)
from quic_rpc.quic import engine as engine_module
from quic_rpc.rpc import RPCClient, RPCServer
from tests.quic.helpers import wait_for_condition

from .conftest import Counters, QUICRig, RigFactory, assert_healthy, make_manifest


def creds(identity: NodeIdentity, verify: Callable[[Sequence[bytes]], Any]) -> TLSCredentials:
    return TLSCredentials.load(identity.private_key_pem(), identity.chain_pem(), verify)


@pytest.fixture
def server_node() -> NodeIdentity:
    return NodeIdentity.generate("ed25519")


async def node_rig(
    quic_rig: RigFactory, server_node: NodeIdentity, **verifier: Any
) -> tuple[QUICRig, RPCClient]:
    rig = await quic_rig(server_credentials=creds(server_node, node_verifier(**verifier)))
    friend = NodeIdentity.generate("p256")
    good = RPCClient(await rig.dial(credentials=creds(friend, node_verifier(server_node.node_id))))
    await assert_healthy(good)
    return rig, good


async def refused(rig: QUICRig, good: RPCClient, identity: NodeIdentity, text: str) -> None:
    """The server refuses ``identity`` with bad_certificate naming ``text``; nothing ran."""
    with pytest.raises(CertificateRejectedByPeerError) as info:
        await rig.dial(credentials=creds(identity, node_verifier()))
    assert info.value.error_code == 0x12A
    failure = rig.server.handshake_failures[-1].error
    assert isinstance(failure, PeerCertificateRejectedError)
    assert text in str(failure), failure
    await assert_healthy(good)
    assert rig.counters.calls == {"echo": 2}, "a handler ran for an unverified peer"
    assert len(rig.server.connections) == 1


BAD_NODES: list[tuple[str, Callable[[], NodeIdentity], str]] = [
    ("expired", lambda: expired_identity("p256"), "CertificateExpiredError"),
    ("expired-rotated-leaf", lambda: expired_identity(rotated=True), "CertificateExpiredError"),
    ("not-yet-valid", lambda: not_yet_valid_identity(), "CertificateNotYetValidError"),
    ("broken-chain", lambda: broken_chain_identity(), "BrokenChainError"),
    ("untrusted-root", lambda: untrusted_root_identity(), "UntrustedRootError"),
    ("inconsistent-node-id", lambda: inconsistent_node_id_identity(), "InconsistentNodeIdError"),
    ("plain-ca-cert", lambda: ca_issued_identity("p256"), "MissingNodeIdError"),
]


@pytest.mark.parametrize(("name", "make", "error"), BAD_NODES, ids=[n for n, _, _ in BAD_NODES])
async def test_unverified_node_is_refused(
    quic_rig: RigFactory, server_node: NodeIdentity, name: str, make: Any, error: str
) -> None:
    rig, good = await node_rig(quic_rig, server_node)
    await refused(rig, good, make(), error)


async def test_no_client_certificate(
    quic_rig: RigFactory, server_node: NodeIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that answers the CertificateRequest with an empty Certificate."""
    rig, good = await node_rig(quic_rig, server_node)
    original = engine_module._quic_configuration

    def anonymous(*args: Any, is_client: bool, **kwargs: Any) -> Any:
        qc = original(*args, is_client=is_client, **kwargs)
        if is_client:
            qc.certificate = None
            qc.certificate_chain = []
            qc.private_key = None
        return qc

    monkeypatch.setattr(engine_module, "_quic_configuration", anonymous)
    with pytest.raises(CertificateRejectedByPeerError):
        await rig.dial(credentials=creds(NodeIdentity.generate(), node_verifier()))
    monkeypatch.undo()
    assert "sent no certificate" in str(rig.server.handshake_failures[-1].error)
    await assert_healthy(good)
    assert rig.counters.calls == {"echo": 2}


async def test_peer_cannot_claim_another_nodes_id(
    quic_rig: RigFactory, server_node: NodeIdentity
) -> None:
    """An impostor's self-made chain naming the victim's id, or the victim's genuine
    chain presented with the impostor's key: both refused; the victim still gets in and
    is identified as itself."""
    rig, good = await node_rig(quic_rig, server_node)
    victim = NodeIdentity.generate("ed25519")
    impostor = untrusted_root_identity("ed25519", claimed_node_id=victim.node_id)
    assert impostor.node_id == victim.node_id
    await refused(rig, good, impostor, "UntrustedRootError")

    stolen = creds(victim, node_verifier())
    thief_key = NodeIdentity.generate("ed25519").private_key
    object.__setattr__(stolen, "private_key", thief_key)  # what an attacker's stack does
    with pytest.raises(HandshakeError):
        await rig.dial(QUICConfig(handshake_timeout=5), credentials=stolen)
    assert rig.counters.calls == {"echo": 2}

    conn = await rig.dial(credentials=creds(victim, node_verifier(server_node.node_id)))
    await wait_for_condition(lambda: len(rig.server.connections) == 2)
    ids = {c.peer_identity for c in rig.server.connections}
    assert victim.node_id in ids
    await assert_healthy(RPCClient(conn))


async def test_client_refuses_server_with_unexpected_node_id(
    quic_rig: RigFactory, server_node: NodeIdentity
) -> None:
    """A client dialling node A that reaches node B (B's chain is valid) sends nothing."""
    rig, _ = await node_rig(quic_rig, server_node)
    expected = NodeIdentity.generate().node_id
    with pytest.raises(PeerCertificateRejectedError, match="NodeIdMismatchError"):
        await rig.dial(credentials=creds(NodeIdentity.generate(), node_verifier(expected)))
    assert rig.counters.calls == {"echo": 1}


async def test_revoked_and_rotated_away_keys(
    quic_rig: RigFactory, server_node: NodeIdentity
) -> None:
    """The agent revokes a node's old key after rotation: the old identity is refused,
    the rotated one (whose chain still contains the old key as issuer) is accepted."""
    old = NodeIdentity.generate("ed25519")
    new = old.rotate()
    revoked = {old.certificate.serial_number}

    def is_revoked(cert: x509.Certificate) -> bool:
        return cert.serial_number in revoked

    rig, good = await node_rig(quic_rig, server_node, is_revoked=is_revoked)
    await refused(rig, good, old, "RevokedCertificateError")
    conn = await rig.dial(credentials=creds(new, node_verifier(server_node.node_id)))
    await assert_healthy(RPCClient(conn))
    await wait_for_condition(lambda: len(rig.server.connections) == 2)
    assert {c.peer_identity for c in rig.server.connections} >= {new.node_id}


async def test_peer_identity_reaches_handlers(
    quic_rig: RigFactory, server_node: NodeIdentity
) -> None:
    """Handlers see the verified node id, never a claimed one."""
    seen: list[Any] = []

    async def whoami(request: bytes, ctx: Any) -> bytes:
        seen.append(ctx.peer_info.identity)
        return str(ctx.peer_info.identity).encode()

    from quic_rpc.rpc import unary

    counters = Counters()
    rig = await quic_rig(
        server_credentials=creds(server_node, node_verifier()),
        manifest=make_manifest(counters) | {"/t.S/WhoAmI": unary(whoami)},
    )
    me = NodeIdentity.generate().rotate()
    conn = await rig.dial(credentials=creds(me, node_verifier(server_node.node_id)))
    assert await RPCClient(conn).unary("/t.S/WhoAmI", b"") == str(me.node_id).encode()
    assert seen == [me.node_id]


# ------------------------------------------------------------------------- TCP/TLS


@pytest.fixture
async def tls_server() -> AsyncIterator[Callable[..., Any]]:
    from quic_rpc.transports.tcp import TCPServer

    servers: list[tuple[TCPServer, RPCServer]] = []

    async def start(verify: Any, *, tls: bool = True) -> tuple[Any, Counters]:
        from tests.transports.tls_certs import make_pki

        counters = Counters()
        rpc = RPCServer(make_manifest(counters))
        server = TCPServer()
        ssl = make_pki().server_context if tls else None
        await server.start("127.0.0.1", 0, rpc.handle_stream, ssl, verify=verify)
        servers.append((server, rpc))
        return server, counters

    yield start
    for server, rpc in servers:
        await rpc.stop(0)
        await server.stop(0)


def _only(name: str) -> Callable[[Sequence[bytes]], str]:
    from tests.transports.tls_certs import common_name

    def verify(chain: Sequence[bytes]) -> str:
        cn = common_name(chain)
        if cn != name:
            raise PermissionError(f"{cn} is not {name}")
        return cn

    return verify


async def _tls_attempt(server: Any, context: Any) -> Any:
    from quic_rpc.transports.tcp import connect_tcp

    conn = await connect_tcp("127.0.0.1", server.port, ssl=context, server_hostname="localhost")
    return conn


@pytest.mark.parametrize("case", ["anonymous", "wrong-identity", "plain-tcp-no-chain"])
async def test_tcp_unverified_peer_runs_no_handler(tls_server: Any, case: str) -> None:
    from quic_rpc.transports.tcp import connect_tcp
    from tests.transports.tls_certs import make_pki

    pki = make_pki()
    if case == "plain-tcp-no-chain":
        server, counters = await tls_server(node_verifier(), tls=False)
        attacker_ctx = None
    else:
        verify = _only("client.test" if case == "anonymous" else "alice")
        server, counters = await tls_server(verify)
        attacker_ctx = pki.anonymous_client_context if case == "anonymous" else pki.client_context
    with pytest.raises(Exception) as info:  # TLS alert, or the mux's typed refusal
        conn = await connect_tcp(
            "127.0.0.1",
            server.port,
            ssl=attacker_ctx,
            server_hostname="localhost" if attacker_ctx else None,
        )
        try:
            await RPCClient(conn).unary("/t.S/Echo", b"x", timeout=10)
        finally:
            await conn.aclose()
    assert not isinstance(info.value, AssertionError)
    assert counters.total == 0, "a handler ran for an unverified peer over TCP"


@pytest.mark.parametrize("behaviour", ["CancelledError", "BaseException", "async"])
async def test_tcp_misbehaving_verifier_fails_closed(tls_server: Any, behaviour: str) -> None:
    from quic_rpc.transports.tcp import PeerVerificationError
    from tests.transports.tls_certs import make_pki

    class Weird(BaseException):
        pass

    def verify(chain: Sequence[bytes]) -> Any:
        if behaviour == "async":

            async def later() -> str:
                return "accepted?"

            return later()
        raise asyncio.CancelledError() if behaviour == "CancelledError" else Weird("x")

    server, counters = await tls_server(verify)
    from quic_rpc.transports.tcp import TCPConfig, connect_tcp

    with pytest.raises(PeerVerificationError):
        conn = await connect_tcp(
            "127.0.0.1",
            server.port,
            ssl=make_pki().client_context,
            server_hostname="localhost",
            config=TCPConfig(handshake_timeout=3),
        )
        try:
            await RPCClient(conn).unary("/t.S/Echo", b"x", timeout=5)
        finally:
            await conn.aclose()
    assert counters.total == 0
