"""The compatibility suite's certificates: a CA, a ``localhost`` server and a client leaf.

Made by :mod:`quic_rpc.testing.pki`; the leaves keep role-specific extended key usages
and the client's single DNS SAN, which the mutual-TLS tests assert on.
"""

from __future__ import annotations

from dataclasses import dataclass

from quic_rpc.testing.pki import issue_server_and_client


@dataclass(frozen=True)
class PKI:
    ca_pem: bytes
    server_key_pem: bytes
    server_chain_pem: bytes
    client_key_pem: bytes
    client_chain_pem: bytes


def make_pki() -> PKI:
    certs = issue_server_and_client(
        "compat test CA",
        server_name="localhost",
        server_usages=("server",),
        client_name="compat-client",
        client_hosts=("compat-client.test",),
        client_usages=("client",),
    )
    return PKI(
        ca_pem=certs.ca_pem,
        server_key_pem=certs.server.key_pem,
        server_chain_pem=certs.server.chain_pem,
        client_key_pem=certs.client.key_pem,
        client_chain_pem=certs.client.chain_pem,
    )
