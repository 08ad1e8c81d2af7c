"""Test certificates made on the fly with cryptography: CAs, leaves, rotated chains."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from quic_rpc.quic import TLSCredentials, VerifyCallback

KeyKind = Literal["ed25519", "p256"]
Key = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

_NOW = dt.datetime.now(dt.UTC)


def make_key(kind: KeyKind) -> Key:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    subject_key: Key,
    subject_cn: str,
    issuer_key: Key | None = None,
    issuer_cert: x509.Certificate | None = None,
    *,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
) -> x509.Certificate:
    """A certificate for ``subject_key``; self-signed unless an issuer is given."""
    signer = issuer_key if issuer_key is not None else subject_key
    issuer_name = issuer_cert.subject if issuer_cert is not None else _name(subject_cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _NOW - dt.timedelta(hours=1))
        .not_valid_after(not_after or _NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
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
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class PKI:
    """A root CA able to issue leaves (and rotated chains) of one key kind."""

    kind: KeyKind = "p256"
    name: str = "test-root"
    key: Key = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.key = make_key(self.kind)
        self.cert = make_cert(self.key, self.name, ca=True)

    @property
    def root_pem(self) -> bytes:
        return pem(self.cert)

    def leaf(
        self,
        cn: str = "node",
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        kind: KeyKind | None = None,
    ) -> tuple[Key, tuple[x509.Certificate, ...]]:
        key = make_key(kind or self.kind)
        cert = make_cert(key, cn, self.key, self.cert, not_before=not_before, not_after=not_after)
        return key, (cert,)

    def rotated(
        self, cn: str = "node", rotations: int = 2
    ) -> tuple[Key, tuple[x509.Certificate, ...]]:
        """A chain [newest, ..., first] where each key's certificate is signed by the
        previous key and the first by the root: key rotation without a new identity."""
        issuer_key, issuer_cert = self.key, self.cert
        chain: list[x509.Certificate] = []
        key = issuer_key
        for index in range(rotations + 1):
            key = make_key(self.kind)
            last = index == rotations
            cert = make_cert(key, f"{cn}-k{index}", issuer_key, issuer_cert, ca=not last)
            chain.insert(0, cert)
            issuer_key, issuer_cert = key, cert
        return key, tuple(chain)

    def credentials(
        self, verify: VerifyCallback, cn: str = "node", **kwargs: object
    ) -> TLSCredentials:
        key, chain = self.leaf(cn, **kwargs)  # type: ignore[arg-type]
        return TLSCredentials(private_key=key, chain=chain, verify=verify)
