"""Self-signed test PKI (a CA, a server and a client certificate) made with cryptography."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@functools.cache
def make_pki() -> TestPKI:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("quicshift test CA", ca_key, _name("quicshift test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("server.test", server_key, ca_cert.subject, ca_key, ca=False)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("client.test", client_key, ca_cert.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
        (root / "server.pem").write_bytes(server_cert.public_bytes(pem) + _pem_key(server_key))
        (root / "client.pem").write_bytes(client_cert.public_bytes(pem) + _pem_key(client_key))

        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(root / "server.pem")
        server.load_verify_locations(root / "ca.pem")
        server.verify_mode = ssl.CERT_REQUIRED

        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(root / "ca.pem")
        client.load_cert_chain(root / "client.pem")

        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.load_verify_locations(root / "ca.pem")

        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    der = serialization.Encoding.DER
    return TestPKI(
        ca_der=ca_cert.public_bytes(der),
        server_der=server_cert.public_bytes(der),
        client_der=client_cert.public_bytes(der),
        server_pem=server_cert.public_bytes(pem) + _pem_key(server_key),
        client_pem=client_cert.public_bytes(pem) + _pem_key(client_key),
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
