"""Test PKI (a CA, a server and a client certificate) with ready-made ``ssl`` contexts."""

from __future__ import annotations

import functools
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from quic_rpc.testing.pki import PemFiles, issue_server_and_client


@dataclass(frozen=True)
class TestPKI:
    ca_der: bytes
    server_der: bytes
    client_der: bytes
    server_pem: bytes  # certificate then PKCS#8 key
    client_pem: bytes
    server_context: ssl.SSLContext  # requires a client certificate
    client_context: ssl.SSLContext  # trusts the CA, presents the client certificate
    anonymous_client_context: ssl.SSLContext  # trusts the CA, presents nothing
    untrusting_client_context: ssl.SSLContext  # trusts nothing


@functools.cache
def make_pki() -> TestPKI:
    certs = issue_server_and_client(
        "quicshift test CA", server_name="server.test", client_name="client.test"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = PemFiles.write(Path(tmp), certs)

        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(files.server_cert, files.server_key)
        server.load_verify_locations(files.ca)
        server.verify_mode = ssl.CERT_REQUIRED

        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(files.ca)
        client.load_cert_chain(files.client_cert, files.client_key)

        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.load_verify_locations(files.ca)

        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return TestPKI(
        ca_der=certs.authority.certificate_der,
        server_der=certs.server.certificate_der,
        client_der=certs.client.certificate_der,
        server_pem=certs.server.chain_pem + certs.server.key_pem,
        client_pem=certs.client.chain_pem + certs.client.key_pem,
        server_context=server,
        client_context=client,
        anonymous_client_context=anonymous,
        untrusting_client_context=untrusting,
    )


def common_name(chain: Sequence[bytes]) -> str:
    """A verify callback: the leaf's common name is the peer's identity."""
    if not chain:
        raise ValueError("no certificate presented")
    leaf = x509.load_der_x509_certificate(chain[0])
    return str(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
