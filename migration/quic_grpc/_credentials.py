"""Channel and server credentials, grpc-shaped, turned into QUIC TLS credentials.

QUIC always runs TLS 1.3, so there are only secure credentials. ``ssl_channel_credentials``
and ``ssl_server_credentials`` take grpcio's arguments; the quicshift extension ``verify=``
plugs in a custom peer verifier ``verify(peer_chain_der) -> identity`` (the agent's node-id
verifier) instead of CA verification. A client without a certificate of its own presents
a throw-away self-signed one, which a server that does not require client auth ignores.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._compat import ChannelCredentials, ServerCredentials

__all__ = [
    "PeerVerifier",
    "QUICChannelCredentials",
    "QUICServerCredentials",
    "ephemeral_identity",
    "ssl_channel_credentials",
    "ssl_server_credentials",
]

PeerVerifier = Callable[[Sequence[bytes]], Any]
"""``verify(peer_chain_der_leaf_first) -> identity``; raise to reject the peer."""


class QUICChannelCredentials(ChannelCredentials):
    """Client-side TLS settings for a QUIC channel (a ``grpc.ChannelCredentials``)."""

    def __init__(
        self,
        root_certificates: bytes | None,
        private_key: bytes | None,
        certificate_chain: bytes | None,
        verify: PeerVerifier | None,
    ) -> None:
        super().__init__(None)
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain must be given together")
        if verify is not None and not callable(verify):
            raise TypeError("verify must be callable: verify(peer_chain_der) -> identity")
        self.root_certificates = root_certificates
        self.private_key = private_key
        self.certificate_chain = certificate_chain
        self.verify = verify


class QUICServerCredentials(ServerCredentials):
    """Server-side TLS settings for a QUIC server (a ``grpc.ServerCredentials``)."""

    def __init__(
        self,
        private_key_certificate_chain_pairs: Sequence[tuple[bytes, bytes]],
        root_certificates: bytes | None,
        require_client_auth: bool,
        verify: PeerVerifier | None,
    ) -> None:
        super().__init__(None)
        pairs = tuple((bytes(k), bytes(c)) for k, c in private_key_certificate_chain_pairs)
        if not pairs:
            raise ValueError("at least one private key and certificate chain pair must be provided")
        if require_client_auth and root_certificates is None and verify is None:
            raise ValueError("require_client_auth needs root_certificates or a verify callback")
        if verify is not None and not callable(verify):
            raise TypeError("verify must be callable: verify(peer_chain_der) -> identity")
        self.private_key_certificate_chain_pairs = pairs
        self.root_certificates = root_certificates
        self.require_client_auth = require_client_auth
        self.verify = verify


def ssl_channel_credentials(
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    *,
    verify: PeerVerifier | None = None,
) -> QUICChannelCredentials:
    """Like ``grpc.ssl_channel_credentials``; ``verify=`` replaces CA verification."""
    return QUICChannelCredentials(root_certificates, private_key, certificate_chain, verify)


def ssl_server_credentials(
    private_key_certificate_chain_pairs: Sequence[tuple[bytes, bytes]],
    root_certificates: bytes | None = None,
    require_client_auth: bool = False,
    *,
    verify: PeerVerifier | None = None,
) -> QUICServerCredentials:
    """Like ``grpc.ssl_server_credentials``; ``verify=`` replaces CA verification of clients."""
    return QUICServerCredentials(
        private_key_certificate_chain_pairs, root_certificates, require_client_auth, verify
    )


@dataclass(frozen=True, slots=True)
class EphemeralIdentity:
    """A throw-away key and self-signed certificate (PEM) for a client without one."""

    private_key_pem: bytes
    certificate_pem: bytes


_EPHEMERAL: EphemeralIdentity | None = None


def ephemeral_identity() -> EphemeralIdentity:
    """One P-256 key and self-signed certificate per process, made on first use."""
    global _EPHEMERAL
    if _EPHEMERAL is None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quic-grpc anonymous client")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        _EPHEMERAL = EphemeralIdentity(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert.public_bytes(serialization.Encoding.PEM),
        )
    return _EPHEMERAL


def default_root_certificates() -> bytes:
    """The system's CA bundle, which grpcio also uses when no roots are given."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    raise ValueError(
        "no root_certificates given and no system CA bundle found; pass root_certificates "
        "or verify= to ssl_channel_credentials"
    )
