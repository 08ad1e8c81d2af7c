"""The agent's node-id verifier plugged into the QUIC transport unchanged."""

from __future__ import annotations

import pytest

from agent.identity import NodeIdentity, node_verifier
from agent.identity_testing import (
    broken_chain_identity,
    expired_identity,
    untrusted_root_identity,
)
from quic_rpc.quic import (
    CertificateRejectedByPeerError,
    PeerCertificateRejectedError,
    QUICConfig,
    QUICServer,
    TLSCredentials,
    connect,
)

from .conftest import SocketFactory
from .helpers import echo_handler, request, wait_for_condition


def _credentials(identity: NodeIdentity, verify: object) -> TLSCredentials:
    return TLSCredentials.load(identity.private_key_pem(), identity.chain_pem(), verify)  # type: ignore[arg-type]


async def _serve(make_socket: SocketFactory, identity: NodeIdentity) -> QUICServer:
    sock = await make_socket()
    server = QUICServer(sock, _credentials(identity, node_verifier()), QUICConfig(), echo_handler)
    await server.start()
    return server


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
async def test_node_ids_verified_both_ways(make_socket: SocketFactory, key_type: str) -> None:
    server_node = NodeIdentity.generate(key_type)  # type: ignore[arg-type]
    client_node = NodeIdentity.generate(key_type)  # type: ignore[arg-type]
    server = await _serve(make_socket, server_node)
    csock = await make_socket()
    conn = await connect(
        csock,
        *server.socket.local_address,
        _credentials(client_node, node_verifier(server_node.node_id)),
    )
    assert conn.peer_identity == server_node.node_id
    assert conn.peer_info.identity == server_node.node_id
    assert conn.peer_chain == tuple(server_node.chain_der())
    await wait_for_condition(lambda: bool(server.connections))
    assert server.connections[0].peer_identity == client_node.node_id
    assert await request(conn, b"node to node") == b"node to node"
    await conn.aclose()
    await server.stop()


async def test_rotated_node_keeps_its_id(make_socket: SocketFactory) -> None:
    server_node = NodeIdentity.generate("ed25519").rotate().rotate("p256")
    client_node = NodeIdentity.generate("p256").rotate()
    server = await _serve(make_socket, server_node)
    csock = await make_socket()
    conn = await connect(
        csock,
        *server.socket.local_address,
        _credentials(client_node, node_verifier(server_node.node_id)),
    )
    assert conn.peer_identity == server_node.node_id
    await wait_for_condition(lambda: bool(server.connections))
    assert server.connections[0].peer_identity == client_node.node_id
    await conn.aclose()
    await server.stop()


async def test_client_rejects_unexpected_server_node(make_socket: SocketFactory) -> None:
    server = await _serve(make_socket, NodeIdentity.generate())
    expected = NodeIdentity.generate().node_id
    csock = await make_socket()
    with pytest.raises(PeerCertificateRejectedError, match="NodeIdMismatchError"):
        await connect(
            csock,
            *server.socket.local_address,
            _credentials(NodeIdentity.generate(), node_verifier(expected)),
        )
    await wait_for_condition(lambda: bool(server.handshake_failures))
    assert isinstance(server.handshake_failures[-1].error, CertificateRejectedByPeerError)
    await server.stop()


@pytest.mark.parametrize(
    ("make_identity", "error_name"),
    [
        (expired_identity, "CertificateExpiredError"),
        (lambda: expired_identity(rotated=True), "CertificateExpiredError"),
        (broken_chain_identity, "BrokenChainError"),
        (untrusted_root_identity, "UntrustedRootError"),
    ],
)
async def test_server_rejects_bad_node_chains(
    make_socket: SocketFactory, make_identity: object, error_name: str
) -> None:
    server_node = NodeIdentity.generate()
    server = await _serve(make_socket, server_node)
    csock = await make_socket()
    bad = make_identity()  # type: ignore[operator]
    with pytest.raises(CertificateRejectedByPeerError, match=error_name):
        await connect(
            csock,
            *server.socket.local_address,
            _credentials(bad, node_verifier(server_node.node_id)),
        )
    await wait_for_condition(lambda: bool(server.handshake_failures))
    failure = server.handshake_failures[-1].error
    assert isinstance(failure, PeerCertificateRejectedError)
    assert error_name in str(failure)
    await server.stop()
