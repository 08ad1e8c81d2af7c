"""Node keys and node certificates: how a node id is bound into an X.509 certificate.

Binding (what every node certificate carries):

* ``subjectAltName`` URI ``node://<printed node id>`` — the authoritative binding that
  verifiers read;
* subject ``CN=<printed node id>`` (for tools that only show the subject) plus a
  ``serialNumber=<key id hex>`` attribute so that each key of one node has a distinct
  subject and issuer/subject matching stays meaningful along a rotation chain;
* ``basicConstraints CA:TRUE`` and key usage ``digitalSignature, keyCertSign``: any
  node certificate may later sign its successor when the node rotates its key, and
  certificates are immutable, so each one is issued able to do so (standard TLS stacks
  then accept the chain ``[leaf, ..., root]`` with the root as trust anchor);
* extended key usage ``serverAuth, clientAuth`` (nodes are both ends of connections);
* subject and authority key identifiers; a random serial number.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity.errors import UnsupportedKeyTypeError
from agent.nodeid import NodeId

__all__ = [
    "KEY_TYPES",
    "NODE_URI_SCHEME",
    "KeyType",
    "NodePrivateKey",
    "NodePublicKey",
    "build_node_certificate",
    "generate_private_key",
    "key_type_of",
    "node_subject",
    "node_uri",
    "sign_data",
    "signature_hash",
    "verify_data",
]

KeyType: TypeAlias = Literal["ed25519", "p256"]
KEY_TYPES: Final[tuple[KeyType, ...]] = ("ed25519", "p256")
NodePrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
NodePublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

NODE_URI_SCHEME: Final = "node"


def generate_private_key(key_type: str) -> NodePrivateKey:
    """A fresh private key of ``key_type`` (``"ed25519"`` or ``"p256"``)."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise UnsupportedKeyTypeError(
        f"unsupported key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}"
    )


def key_type_of(key: object) -> KeyType:
    """The node key type of a private or public key; raises UnsupportedKeyTypeError."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "p256"
        raise UnsupportedKeyTypeError(f"unsupported elliptic curve {key.curve.name}")
    raise UnsupportedKeyTypeError(f"unsupported key {type(key).__name__}")


def node_uri(node_id: NodeId) -> str:
    """The subjectAltName URI binding ``node_id``: ``node://v...``."""
    return f"{NODE_URI_SCHEME}://{node_id}"


def signature_hash(key: NodePrivateKey | NodePublicKey) -> hashes.SHA256 | None:
    """The hash to sign certificates with: none for Ed25519, SHA-256 for P-256."""
    return None if key_type_of(key) == "ed25519" else hashes.SHA256()


def sign_data(key: NodePrivateKey, data: bytes) -> bytes:
    """Sign ``data``: pure Ed25519, or ECDSA P-256 with SHA-256 (DER signature)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    key_type_of(key)  # refuses curves other than P-256
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_data(key: NodePublicKey, data: bytes, signature: bytes) -> None:
    """Verify a :func:`sign_data` signature; raises cryptography's InvalidSignature."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    else:
        key_type_of(key)
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def node_subject(node_id: NodeId, public_key: NodePublicKey) -> x509.Name:
    """``CN=<node id>, serialNumber=<key id hex>``: distinct per key of one node."""
    key_id = x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, str(node_id)),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, key_id),
        ]
    )


def build_node_certificate(
    *,
    node_id: NodeId,
    subject_key: NodePublicKey,
    issuer_key: NodePrivateKey,
    issuer_certificate: x509.Certificate | None,
    not_before: datetime,
    not_after: datetime,
    can_sign: bool = True,
    subject: x509.Name | None = None,
    authority_key: NodePublicKey | None = None,
) -> x509.Certificate:
    """Issue a node certificate for ``subject_key`` naming ``node_id``.

    ``issuer_certificate=None`` makes a self-signed root (``issuer_key`` must then be
    the private half of ``subject_key``); otherwise the certificate is issued by that
    certificate's subject and key. ``can_sign=False`` issues a certificate that may not
    sign a successor (only test helpers want this). ``subject`` overrides the default
    subject name and ``authority_key`` the key named in the authority key identifier
    (default: ``issuer_key``'s public half) — test helpers again.
    """
    key_type_of(subject_key)
    issuer_public = authority_key if authority_key is not None else issuer_key.public_key()
    name = subject if subject is not None else node_subject(node_id, subject_key)
    issuer_name = name if issuer_certificate is None else issuer_certificate.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=can_sign, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=can_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(node_uri(node_id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False
        )
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))
