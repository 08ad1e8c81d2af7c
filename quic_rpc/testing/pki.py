"""Throw-away X.509 certificates for tests, benchmarks and compatibility checks.

Everything here is made in memory on the spot: a CA, leaves it issues (with SAN entries
for ``localhost``, ``127.0.0.1``, ``::1`` or whatever hosts are given), rotated chains, and
PEM files in the usual ``ca.pem`` / ``server.pem`` / ``server.key`` / ``client.pem`` /
``client.key`` layout. Private keys are written unencrypted and certificates are valid
for a short while only: these are test and benchmark certificates, never production keys.
Node certificates, whose identity is derived from the key, are made elsewhere.

The extensions are chosen so that every TLS stack the project talks to accepts them,
grpcio's BoringSSL included:

* a CA has ``basicConstraints`` (CA, critical), ``keyUsage`` (digitalSignature,
  keyCertSign, cRLSign; critical) and a ``subjectKeyIdentifier``;
* a leaf has ``basicConstraints`` (not a CA, critical), a ``subjectKeyIdentifier``,
  an ``authorityKeyIdentifier`` (when it has an issuer), ``subjectAltName`` (its hosts:
  IP addresses as IP entries, anything else as DNS names) and ``extendedKeyUsage``
  (serverAuth and/or clientAuth, both by default).

Keys are P-256 by default; Ed25519 works too (QUIC accepts it, grpcio does not).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BOTH_USAGES",
    "DEFAULT_HOSTS",
    "DEFAULT_LIFETIME",
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyType",
    "PemFiles",
    "PrivateKey",
    "ServerClientCertificates",
    "Usage",
    "build_certificate",
    "certificates_pem",
    "generate_key",
    "issue_server_and_client",
    "private_key_pem",
    "subject_alternative_names",
]

KeyType = Literal["p256", "ed25519"]
"""The kinds of key :func:`generate_key` makes."""

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
"""A key that can sign certificates here (any EC curve, or Ed25519)."""

Usage = Literal["server", "client"]
"""What a leaf may be used for (its ``extendedKeyUsage``)."""

DEFAULT_HOSTS: Final[tuple[str, ...]] = ("localhost", "127.0.0.1", "::1")
"""The SAN entries a leaf gets unless told otherwise: loopback by name, IPv4 and IPv6."""

BOTH_USAGES: Final[tuple[Usage, ...]] = ("server", "client")
"""A leaf usable on both ends of a connection (the default)."""

DEFAULT_LIFETIME: Final = dt.timedelta(days=30)
"""How long a certificate is valid when no ``not_after`` is given."""

_BACKDATE: Final = dt.timedelta(hours=1)  # tolerate clock skew between test processes

_USAGE_OIDS: Final[dict[Usage, x509.ObjectIdentifier]] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}

_CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def generate_key(key_type: KeyType = "p256") -> PrivateKey:
    """A fresh private key: P-256 (``"p256"``) or Ed25519 (``"ed25519"``)."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r}: expected 'p256' or 'ed25519'")


def subject_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts``: an IP address literal becomes an IP entry, else a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build_certificate(
    subject_key: PrivateKey,
    common_name: str,
    issuer_key: PrivateKey | None = None,
    issuer_certificate: x509.Certificate | None = None,
    *,
    ca: bool = False,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    usages: Sequence[Usage] = BOTH_USAGES,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for ``subject_key`` named ``CN=common_name``.

    Self-signed unless ``issuer_key`` is given; the issuer's name is taken from
    ``issuer_certificate`` (else it is the subject's own). A CA (``ca=True``) gets no SAN
    and no extended key usage; ``hosts`` and ``usages`` only apply to leaves (either may be
    empty to leave the extension out). Validity defaults to an hour ago until
    :data:`DEFAULT_LIFETIME` from now.
    """
    now = dt.datetime.now(dt.UTC)
    signer = subject_key if issuer_key is None else issuer_key
    issuer_name = _name(common_name) if issuer_certificate is None else issuer_certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE if not_before is None else not_before)
        .not_valid_after(now + DEFAULT_LIFETIME if not_after is None else not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
    )
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(_CA_KEY_USAGE, critical=True)
    else:
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(subject_alternative_names(hosts)), critical=False
            )
        if usages:
            oids = [_USAGE_OIDS[usage] for usage in dict.fromkeys(usages)]
            builder = builder.add_extension(x509.ExtendedKeyUsage(oids), critical=False)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


def certificates_pem(*certificates: x509.Certificate) -> bytes:
    """The certificates as concatenated PEM blocks, in the order given."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A private key and its certificate chain, leaf first (the root is not included)."""

    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate."""
        return self.chain[0]

    @property
    def certificate_der(self) -> bytes:
        """The leaf certificate, DER-encoded."""
        return self.chain[0].public_bytes(serialization.Encoding.DER)

    @property
    def chain_pem(self) -> bytes:
        """The whole chain as PEM, leaf first."""
        return certificates_pem(*self.chain)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return private_key_pem(self.key)


class CertificateAuthority:
    """A self-signed root CA that issues leaves and rotated chains.

    Leaves get the CA's key type unless asked for another one.
    """

    def __init__(
        self,
        common_name: str = "quicshift test CA",
        *,
        key_type: KeyType = "p256",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> None:
        self.key_type: KeyType = key_type
        self.key: PrivateKey = generate_key(key_type)
        self.certificate: x509.Certificate = build_certificate(
            self.key, common_name, ca=True, not_before=not_before, not_after=not_after
        )

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.certificate.subject.rfc4514_string()}>"

    @property
    def certificate_pem(self) -> bytes:
        """The root certificate as PEM (what a peer trusts)."""
        return certificates_pem(self.certificate)

    @property
    def certificate_der(self) -> bytes:
        """The root certificate, DER-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def issue(
        self,
        common_name: str = "node",
        *,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        usages: Sequence[Usage] = BOTH_USAGES,
        key_type: KeyType | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A new key and a leaf certificate for it, signed by this CA."""
        key = generate_key(key_type or self.key_type)
        cert = build_certificate(
            key,
            common_name,
            self.key,
            self.certificate,
            hosts=hosts,
            usages=usages,
            not_before=not_before,
            not_after=not_after,
        )
        return IssuedCertificate(key, (cert,))

    def issue_rotated(
        self,
        common_name: str = "node",
        rotations: int = 2,
        *,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        usages: Sequence[Usage] = BOTH_USAGES,
    ) -> IssuedCertificate:
        """A chain ``[newest, ..., first]`` of ``rotations + 1`` certificates.

        The first key's certificate is signed by this CA, each later one by the key before
        it (those are CA certificates named ``CN=<common_name>-k<i>``): key rotation
        without a new identity. Only the newest is a leaf, with ``hosts`` and ``usages``.
        """
        if rotations < 0:
            raise ValueError(f"rotations must be >= 0, got {rotations}")
        issuer_key, issuer_cert = self.key, self.certificate
        chain: list[x509.Certificate] = []
        key = issuer_key
        for index in range(rotations + 1):
            key = generate_key(self.key_type)
            cert = build_certificate(
                key,
                f"{common_name}-k{index}",
                issuer_key,
                issuer_cert,
                ca=index < rotations,
                hosts=hosts,
                usages=usages,
            )
            chain.insert(0, cert)
            issuer_key, issuer_cert = key, cert
        return IssuedCertificate(key, tuple(chain))


@dataclass(frozen=True, slots=True)
class ServerClientCertificates:
    """A CA with one server and one client leaf: what a mutual-TLS test needs."""

    authority: CertificateAuthority
    server: IssuedCertificate
    client: IssuedCertificate

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.authority.certificate_pem


def issue_server_and_client(
    ca_name: str = "quicshift test CA",
    *,
    server_name: str = "server",
    server_hosts: Sequence[str] = DEFAULT_HOSTS,
    server_usages: Sequence[Usage] = BOTH_USAGES,
    client_name: str = "client",
    client_hosts: Sequence[str] = DEFAULT_HOSTS,
    client_usages: Sequence[Usage] = BOTH_USAGES,
    key_type: KeyType = "p256",
) -> ServerClientCertificates:
    """A new CA named ``ca_name`` and a server and a client leaf it issued."""
    authority = CertificateAuthority(ca_name, key_type=key_type)
    return ServerClientCertificates(
        authority,
        authority.issue(server_name, hosts=server_hosts, usages=server_usages),
        authority.issue(client_name, hosts=client_hosts, usages=client_usages),
    )


@dataclass(frozen=True)
class PemFiles:
    """Where :meth:`write` put the PEM files of a :class:`ServerClientCertificates`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> Self:
        """The file names used below ``directory``: ``ca.pem``, ``server.pem``,
        ``server.key``, ``client.pem``, ``client.key``."""
        return cls(
            ca=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
        )

    @classmethod
    def write(cls, directory: Path, certificates: ServerClientCertificates) -> Self:
        """Write ``certificates`` below ``directory`` (made if missing); the certificate
        files hold the chain without the root, the key files unencrypted PKCS#8."""
        directory.mkdir(parents=True, exist_ok=True)
        files = cls.in_directory(directory)
        files.ca.write_bytes(certificates.ca_pem)
        for issued, cert_path, key_path in (
            (certificates.server, files.server_cert, files.server_key),
            (certificates.client, files.client_cert, files.client_key),
        ):
            cert_path.write_bytes(issued.chain_pem)
            key_path.write_bytes(issued.key_pem)
        return files

    def cert_and_key(self, role: Usage) -> tuple[Path, Path]:
        """The certificate and key file of ``role``."""
        if role == "server":
            return self.server_cert, self.server_key
        return self.client_cert, self.client_key
