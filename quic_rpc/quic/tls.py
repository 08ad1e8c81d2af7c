"""TLS credentials (our key and chain, plus how we verify the peer) and a CA verifier.

A verify callback takes the peer's certificate chain as DER, leaf first, and returns an
identity (whatever the application wants: a node id, the leaf certificate, ...); raising
rejects the peer. The transport runs it on *both* sides of every connection — aioquic's
own certificate checks are switched off and never consulted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import CredentialsError, VerificationError

__all__ = ["PrivateKey", "TLSCredentials", "VerifyCallback", "ca_verifier"]

PrivateKey = (
    ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
)
VerifyCallback = Callable[[Sequence[bytes]], Any]
"""``verify(chain_der_leaf_first) -> identity``; raise to reject the peer."""

_SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True, slots=True)
class TLSCredentials:
    """Our private key and certificate chain (leaf first) plus the peer verify callback.

    Build with :meth:`load` to pass PEM text or objects. Ed25519, Ed448, ECDSA
    (P-256/384/521) and RSA keys are accepted.
    """

    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    verify: VerifyCallback

    def __post_init__(self) -> None:
        if not isinstance(self.chain, tuple) or not self.chain:
            raise CredentialsError("the certificate chain must be a non-empty tuple, leaf first")
        for cert in self.chain:
            if not isinstance(cert, x509.Certificate):
                raise CredentialsError("chain entries must be cryptography x509.Certificate")
        if not callable(self.verify):
            raise CredentialsError("verify must be callable: verify(chain_der) -> identity")
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, _SUPPORTED_CURVES):
                raise CredentialsError(f"unsupported elliptic curve {key.curve.name}")
        elif not isinstance(
            key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | rsa.RSAPrivateKey
        ):
            raise CredentialsError(f"unsupported private key type {type(key).__name__}")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != self.chain[0].public_key().public_bytes(*spki):
            raise CredentialsError("the private key does not match the leaf certificate")

    @classmethod
    def load(
        cls,
        key: bytes | str | PrivateKey,
        chain: bytes | str | Sequence[x509.Certificate | bytes],
        verify: VerifyCallback,
        *,
        password: bytes | None = None,
    ) -> TLSCredentials:
        """Credentials from a PEM key (or key object) and a PEM chain (or certificates/DER)."""
        if isinstance(key, str | bytes):
            data = key.encode() if isinstance(key, str) else key
            try:
                loaded = serialization.load_pem_private_key(data, password=password)
            except (ValueError, TypeError) as exc:
                raise CredentialsError(f"cannot load the private key: {exc}") from exc
            if not isinstance(
                loaded,
                ed25519.Ed25519PrivateKey
                | ed448.Ed448PrivateKey
                | ec.EllipticCurvePrivateKey
                | rsa.RSAPrivateKey,
            ):
                raise CredentialsError(f"unsupported private key type {type(loaded).__name__}")
            private_key: PrivateKey = loaded
        else:
            private_key = key
        certs: list[x509.Certificate] = []
        if isinstance(chain, str | bytes):
            data = chain.encode() if isinstance(chain, str) else chain
            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise CredentialsError(f"cannot load the certificate chain: {exc}") from exc
        else:
            for item in chain:
                if isinstance(item, bytes):
                    try:
                        certs.append(x509.load_der_x509_certificate(item))
                    except ValueError as exc:
                        raise CredentialsError(f"cannot load a DER certificate: {exc}") from exc
                else:
                    certs.append(item)
        return cls(private_key=private_key, chain=tuple(certs), verify=verify)

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        """Our chain as DER, leaf first."""
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)


def ca_verifier(
    root_certificates_pem: bytes | str,
    *,
    server_name: str | None = None,
) -> Callable[[Sequence[bytes]], x509.Certificate]:
    """A verify callback doing standard CA verification, like grpc's channel credentials.

    The peer chain must lead from its leaf to one of the given roots (intermediates may
    come in the chain), every certificate must be within its validity period, and, when
    ``server_name`` is given (client side), the leaf must match that host name or IP
    address. Ed25519, ECDSA and RSA chains are supported. Returns the leaf certificate;
    raises :class:`~quic_rpc.quic.VerificationError` otherwise.
    """
    data = (
        root_certificates_pem.encode()
        if isinstance(root_certificates_pem, str)
        else root_certificates_pem
    )
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CredentialsError(f"cannot load the root certificates: {exc}") from exc
    if not roots:
        raise CredentialsError("no root certificates given")
    roots_pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)

    def verify(chain: Sequence[bytes]) -> x509.Certificate:
        from aioquic import tls as aioquic_tls

        if not chain:
            raise VerificationError("the peer sent no certificate")
        try:
            certs = [x509.load_der_x509_certificate(bytes(der)) for der in chain]
        except ValueError as exc:
            raise VerificationError(f"the peer certificate cannot be parsed: {exc}") from exc
        now = datetime.now(UTC)
        for cert in certs:
            if now < cert.not_valid_before_utc:
                raise VerificationError(
                    f"certificate {cert.subject.rfc4514_string()!r} is not valid yet "
                    f"(valid from {cert.not_valid_before_utc.isoformat()})"
                )
            if now > cert.not_valid_after_utc:
                raise VerificationError(
                    f"certificate {cert.subject.rfc4514_string()!r} has expired "
                    f"(valid until {cert.not_valid_after_utc.isoformat()})"
                )
        try:
            aioquic_tls.verify_certificate(
                certificate=certs[0],
                chain=certs[1:],
                server_name=server_name,
                cadata=roots_pem,
            )
        except aioquic_tls.Alert as exc:
            raise VerificationError(f"certificate chain rejected: {exc}") from exc
        except Exception as exc:
            raise VerificationError(f"certificate chain rejected: {exc}") from exc
        return certs[0]

    return verify
