"""Mutual TLS: auth context and peer identities in grpc's shape, and custom verifiers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from migration import quic_grpc

from .conftest import STACKS, stack_module
from .pki import PKI

pytestmark = pytest.mark.timeout(120)


def _serve(g: Any, creds: Any, seen: dict[str, Any]) -> tuple[Any, int, ThreadPoolExecutor]:
    def unary(request: bytes, context: Any) -> bytes:
        seen["auth"] = context.auth_context()
        seen["identities"] = context.peer_identities()
        seen["key"] = context.peer_identity_key()
        seen["peer_info"] = getattr(context, "peer_info", lambda: None)()
        return request

    pool = ThreadPoolExecutor(2)
    server = g.server(pool)
    server.add_generic_rpc_handlers(
        (g.method_handlers_generic_handler("t.T", {"U": g.unary_unary_rpc_method_handler(unary)}),)
    )
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    return server, port, pool


@pytest.mark.parametrize("stack", STACKS)
def test_mutual_tls_auth_context(stack: str, pki: PKI) -> None:
    g = stack_module(stack)
    seen: dict[str, Any] = {}
    server, port, pool = _serve(
        g,
        g.ssl_server_credentials(
            [(pki.server_key_pem, pki.server_chain_pem)],
            root_certificates=pki.ca_pem,
            require_client_auth=True,
        ),
        seen,
    )
    creds = g.ssl_channel_credentials(pki.ca_pem, pki.client_key_pem, pki.client_chain_pem)
    try:
        with g.secure_channel(f"localhost:{port}", creds) as channel:
            assert channel.unary_unary("/t.T/U")(b"x", timeout=10) == b"x"
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=False)
    auth = seen["auth"]
    assert auth["transport_security_type"] == [b"ssl"]
    assert auth["x509_common_name"] == [b"compat-client"]
    assert auth["x509_subject_alternative_name"] == [b"compat-client.test"]
    (pem,) = auth["x509_pem_cert"]
    assert pem.strip() == pki.client_chain_pem.strip()
    assert seen["key"] == "x509_subject_alternative_name"
    assert list(seen["identities"]) == [b"compat-client.test"]


@pytest.mark.parametrize("stack", STACKS)
def test_required_client_auth_rejects_anonymous(stack: str, pki: PKI) -> None:
    g = stack_module(stack)
    server, port, pool = _serve(
        g,
        g.ssl_server_credentials(
            [(pki.server_key_pem, pki.server_chain_pem)],
            root_certificates=pki.ca_pem,
            require_client_auth=True,
        ),
        {},
    )
    try:
        with g.secure_channel(f"localhost:{port}", g.ssl_channel_credentials(pki.ca_pem)) as ch:
            with pytest.raises(g.RpcError) as info:
                ch.unary_unary("/t.T/U")(b"x", timeout=10)
            assert info.value.code() is g.StatusCode.UNAVAILABLE
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=False)


def test_custom_peer_verifiers_both_sides(pki: PKI) -> None:
    """The quicshift extension: ``verify=`` plugs e.g. the agent's node-id verifier in."""
    seen: dict[str, Any] = {}
    client_chains: list[Any] = []

    def verify_client(chain: Any) -> str:
        client_chains.append(chain)
        return "node-client-1"

    server, port, pool = _serve(
        quic_grpc,
        quic_grpc.ssl_server_credentials(
            [(pki.server_key_pem, pki.server_chain_pem)],
            require_client_auth=True,
            verify=verify_client,
        ),
        seen,
    )
    servers_seen: list[Any] = []

    def verify_server(chain: Any) -> str:
        servers_seen.append(chain)
        return "node-server-1"

    creds = quic_grpc.ssl_channel_credentials(
        private_key=pki.client_key_pem, certificate_chain=pki.client_chain_pem, verify=verify_server
    )
    try:
        with quic_grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            assert channel.unary_unary("/t.T/U")(b"v", timeout=10) == b"v"
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=False)
    assert len(servers_seen) == 1 and len(client_chains) == 1
    assert seen["peer_info"].identity == "node-client-1"
    assert seen["auth"]["quicshift_peer_identity"] == [b"node-client-1"]


def test_custom_verifier_rejection_is_unavailable(pki: PKI) -> None:
    def reject(chain: Any) -> Any:
        raise ValueError("not a node we know")

    server, port, pool = _serve(
        quic_grpc,
        quic_grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_chain_pem)]),
        {},
    )
    creds = quic_grpc.ssl_channel_credentials(verify=reject)
    try:
        with quic_grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            with pytest.raises(quic_grpc.RpcError) as info:
                channel.unary_unary("/t.T/U")(b"v", timeout=10)
            assert info.value.code() is quic_grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None).wait(10)
        pool.shutdown(wait=False)
