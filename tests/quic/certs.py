"""Test certificates for the QUIC tests: a root CA issuing leaves and rotated chains.

The certificates come from :mod:`quic_rpc.testing.pki`; this module keeps the short
names the tests use and adds :meth:`PKI.credentials`.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from quic_rpc.quic import TLSCredentials, VerifyCallback
from quic_rpc.testing.pki import CertificateAuthority, KeyType, PrivateKey
from quic_rpc.testing.pki import build_certificate as make_cert
from quic_rpc.testing.pki import certificates_pem as pem
from quic_rpc.testing.pki import generate_key as make_key
from quic_rpc.testing.pki import private_key_pem as key_pem

__all__ = ["PKI", "Key", "KeyKind", "key_pem", "make_cert", "make_key", "pem"]

KeyKind = KeyType
Key = PrivateKey


class PKI(CertificateAuthority):
    """A root CA able to issue leaves (and rotated chains) of one key kind."""

    def __init__(self, kind: KeyKind = "p256", name: str = "test-root") -> None:
        super().__init__(name, key_type=kind)

    @property
    def kind(self) -> KeyKind:
        return self.key_type

    @property
    def cert(self) -> x509.Certificate:
        return self.certificate

    @property
    def root_pem(self) -> bytes:
        return self.certificate_pem

    def leaf(
        self,
        cn: str = "node",
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        kind: KeyKind | None = None,
    ) -> tuple[Key, tuple[x509.Certificate, ...]]:
        issued = self.issue(cn, key_type=kind, not_before=not_before, not_after=not_after)
        return issued.key, issued.chain

    def rotated(
        self, cn: str = "node", rotations: int = 2
    ) -> tuple[Key, tuple[x509.Certificate, ...]]:
        """A chain [newest, ..., first]: key rotation without a new identity."""
        issued = self.issue_rotated(cn, rotations)
        return issued.key, issued.chain

    def credentials(
        self, verify: VerifyCallback, cn: str = "node", **kwargs: object
    ) -> TLSCredentials:
        key, chain = self.leaf(cn, **kwargs)  # type: ignore[arg-type]
        return TLSCredentials(private_key=key, chain=chain, verify=verify)
