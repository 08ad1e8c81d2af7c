"""Verify that a certificate chain proves a node id.

A node chain is ``[leaf, ..., root]``: each certificate is issued (name and signature)
by the next, the root is self-signed, every certificate names the same node id, and that
id is the SHA-256 of the root's public key. No trust store is involved — the root key
*is* the identity — so signatures are checked link by link here rather than with
cryptography's ``PolicyBuilder`` (which rejects Ed25519 keys).

Transports get a plain callback from :func:`node_verifier` and know nothing about node
ids: they pass the peer's DER chain and get the proven :class:`NodeId` or a
:class:`NodeVerificationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID, NameOID

from agent.identity.certificates import NODE_URI_SCHEME, NodePublicKey, key_type_of, verify_data
from agent.identity.errors import (
    BrokenChainError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    ChainTooLongError,
    EmptyChainError,
    InconsistentNodeIdError,
    InvalidNodeSignatureError,
    KeyUsageError,
    MalformedCertificateError,
    MissingNodeIdError,
    NodeIdMismatchError,
    RevokedCertificateError,
    UnsupportedKeyTypeError,
    UntrustedRootError,
)
from agent.nodeid import InvalidNodeIdError, NodeId

__all__ = [
    "MAX_CHAIN_LENGTH",
    "ChainElement",
    "certificate_node_id",
    "node_verifier",
    "verified_chain",
    "verify_node_chain",
    "verify_signature",
]

MAX_CHAIN_LENGTH: Final = 16
"""Longest chain accepted by default: a root plus 15 rotations."""

ChainElement = bytes | bytearray | memoryview | x509.Certificate

_NODE_URI_PREFIX: Final = f"{NODE_URI_SCHEME}://"
_ExtensionT = TypeVar("_ExtensionT", bound=x509.ExtensionType)


def verify_node_chain(
    chain: Sequence[ChainElement],
    expected_node_id: NodeId | None = None,
    *,
    now: datetime | None = None,
    max_length: int = MAX_CHAIN_LENGTH,
) -> NodeId:
    """Check that ``chain`` (leaf first, DER bytes or certificates) proves a node id.

    Returns the node id; raises a :class:`NodeVerificationError` subclass naming the
    certificate index at fault otherwise. ``now`` (timezone-aware, default: the current
    time) is when every certificate must be valid.
    """
    node_id, _ = verified_chain(
        chain,
        expected_node_id,
        now=_aware(now) if now is not None else datetime.now(UTC),
        max_length=max_length,
    )
    return node_id


def verified_chain(
    chain: Sequence[ChainElement],
    expected_node_id: NodeId | None = None,
    *,
    now: datetime | None,
    max_length: int = MAX_CHAIN_LENGTH,
) -> tuple[NodeId, list[x509.Certificate]]:
    """:func:`verify_node_chain` returning the parsed chain too; ``now=None`` skips the
    validity-window check (for loading a stored identity, whatever the date)."""
    if isinstance(chain, bytes | bytearray | memoryview | str | x509.Certificate):
        raise TypeError("chain must be a sequence of certificates (leaf first), not a single one")
    if not isinstance(chain, Sequence):
        raise TypeError(f"chain must be a sequence, not {type(chain).__name__}")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if len(chain) == 0:
        raise EmptyChainError("the peer presented no certificate")
    if len(chain) > max_length:
        raise ChainTooLongError(
            f"chain has {len(chain)} certificates; at most {max_length} are accepted"
        )
    certs = [_load(index, element) for index, element in enumerate(chain)]
    node_id = _check_node_ids(certs)
    _check_links(certs, node_id)
    _check_key_usage(certs, node_id)
    root_id = NodeId.from_public_key(certs[-1].public_key())
    if root_id != node_id:
        raise UntrustedRootError(
            f"chain names node {node_id} but its root key (certificate {len(certs) - 1}) "
            f"derives {root_id}",
            index=len(certs) - 1,
            node_id=node_id,
        )
    if now is not None:
        _check_validity(certs, node_id, now)
    if expected_node_id is not None and node_id != expected_node_id:
        raise NodeIdMismatchError(
            f"expected node {expected_node_id}, the peer proved node {node_id}",
            expected=expected_node_id,
            actual=node_id,
        )
    return node_id, certs


def node_verifier(
    expected_node_id: NodeId | None = None,
    *,
    is_revoked: Callable[[x509.Certificate], bool] | None = None,
    clock: Callable[[], datetime] | None = None,
    max_length: int = MAX_CHAIN_LENGTH,
) -> Callable[[Sequence[ChainElement]], NodeId]:
    """A ``verify(peer_chain) -> NodeId`` callback for transports.

    ``is_revoked`` is asked about the *leaf* (the key that authenticated the connection)
    once the chain is otherwise proven, so an agent can refuse a rotated-away key while
    still accepting it as an intermediate of the node's current chain.
    ``clock`` returns the current time (default: the system clock).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")

    def verify(peer_chain: Sequence[ChainElement]) -> NodeId:
        now = _aware(clock()) if clock is not None else datetime.now(UTC)
        node_id, certs = verified_chain(
            peer_chain, expected_node_id, now=now, max_length=max_length
        )
        if is_revoked is not None and is_revoked(certs[0]):
            raise RevokedCertificateError(
                f"leaf certificate 0 of node {node_id} (serial {certs[0].serial_number:x}) "
                "is revoked",
                index=0,
                node_id=node_id,
            )
        return node_id

    return verify


def verify_signature(
    chain_or_leaf_cert: Sequence[ChainElement] | ChainElement, data: bytes, signature: bytes
) -> None:
    """Check ``signature`` over ``data`` with the leaf certificate's key.

    Accepts a chain (its first certificate is used) or a single certificate, as DER or
    objects. This checks the signature only: prove the chain with
    :func:`verify_node_chain`. Raises :class:`InvalidNodeSignatureError` (or
    :class:`MalformedCertificateError`/:class:`EmptyChainError` for a bad certificate).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if not isinstance(signature, bytes | bytearray | memoryview):
        raise TypeError(f"signature must be bytes, not {type(signature).__name__}")
    if isinstance(chain_or_leaf_cert, bytes | bytearray | memoryview | x509.Certificate):
        leaf_element: object = chain_or_leaf_cert
    else:
        if len(chain_or_leaf_cert) == 0:
            raise EmptyChainError("no certificate to verify the signature with")
        leaf_element = chain_or_leaf_cert[0]
    leaf = _load(0, leaf_element)
    key = cast(NodePublicKey, leaf.public_key())  # _load admits only node key types
    try:
        verify_data(key, bytes(data), bytes(signature))
    except InvalidSignature:
        raise InvalidNodeSignatureError(
            "signature does not verify under the leaf certificate's key", index=0
        ) from None


def certificate_node_id(cert: x509.Certificate, index: int = 0) -> NodeId:
    """The node id a certificate names (its ``node://`` subjectAltName URI, which the
    subject CN must agree with when present)."""
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is None:
        raise MissingNodeIdError(
            f"certificate {index} has no subjectAltName naming a node id", index=index
        )
    ids: set[NodeId] = set()
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.lower().startswith(_NODE_URI_PREFIX):
            text = uri[len(_NODE_URI_PREFIX) :]
            try:
                ids.add(NodeId.parse(text))
            except InvalidNodeIdError as exc:
                raise MalformedCertificateError(
                    f"certificate {index} has a malformed node URI {uri[:80]!r}: {exc}",
                    index=index,
                ) from None
    if not ids:
        raise MissingNodeIdError(
            f"certificate {index} names no node id (no {_NODE_URI_PREFIX} URI)", index=index
        )
    if len(ids) > 1:
        raise InconsistentNodeIdError(
            f"certificate {index} names {len(ids)} different node ids", index=index
        )
    (node_id,) = ids
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if attribute.value != str(node_id):
            raise InconsistentNodeIdError(
                f"certificate {index} names node {node_id} but its subject CN is "
                f"{str(attribute.value)[:80]!r}",
                index=index,
                node_id=node_id,
            )
    return node_id


def _aware(moment: datetime) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"time must be a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time must be timezone-aware (e.g. datetime.now(UTC))")
    return moment


def _load(index: int, element: object) -> x509.Certificate:
    """Parse one chain element and touch every field verification reads, so that a
    malformed certificate fails here, as MalformedCertificateError, and nowhere later."""
    if isinstance(element, x509.Certificate):
        cert = element
    elif isinstance(element, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(element))
        except Exception as exc:  # any parse failure of untrusted bytes
            raise MalformedCertificateError(
                f"certificate {index} is not a DER X.509 certificate: {exc}", index=index
            ) from None
    else:
        raise MalformedCertificateError(
            f"certificate {index} is a {type(element).__name__}, not DER bytes or a certificate",
            index=index,
        )
    try:
        if cert.version != x509.Version.v3:
            raise ValueError("not an X.509 v3 certificate")
        if cert.serial_number <= 0:
            raise ValueError("serial number is not positive (RFC 5280)")
        key_type_of(cert.public_key())
        _ = cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc
        _ = cert.signature_algorithm_oid
        for extension in cert.extensions:
            if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
                raise ValueError(f"unsupported critical extension {extension.oid.dotted_string}")
    except UnsupportedKeyTypeError as exc:
        raise MalformedCertificateError(
            f"certificate {index} has a key nodes do not use: {exc}", index=index
        ) from None
    except Exception as exc:  # cryptography parses lazily; any failure is malformed input
        raise MalformedCertificateError(
            f"certificate {index} is malformed: {exc}", index=index
        ) from None
    return cert


def _check_node_ids(certs: list[x509.Certificate]) -> NodeId:
    """All certificates name one node id; returns it."""
    named = [certificate_node_id(cert, index) for index, cert in enumerate(certs)]
    node_id = named[-1]
    for index, other in enumerate(named):
        if other != node_id:
            raise InconsistentNodeIdError(
                f"certificate {index} names node {other} but the root names node {node_id}",
                index=index,
                node_id=node_id,
            )
    return node_id


def _key_identifier(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None


def _check_issued_by(
    certs: list[x509.Certificate], index: int, issuer_index: int, node_id: NodeId
) -> None:
    cert, issuer = certs[index], certs[issuer_index]
    what = (
        "root is not self-signed"
        if index == issuer_index
        else (f"certificate {index} is not issued by certificate {issuer_index}")
    )
    if cert.issuer != issuer.subject:
        raise BrokenChainError(
            f"{what} (node {node_id}): issuer name does not match its subject",
            index=index,
            node_id=node_id,
        )
    authority_id = _key_identifier(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    subject_id = _key_identifier(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    if authority_id is not None and subject_id is not None and authority_id != subject_id:
        raise BrokenChainError(
            f"{what} (node {node_id}): authority key id does not match its subject key id",
            index=index,
            node_id=node_id,
        )
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
        detail = "bad signature" if isinstance(exc, InvalidSignature) else str(exc)
        raise BrokenChainError(
            f"{what} (node {node_id}): {detail}", index=index, node_id=node_id
        ) from None


def _check_links(certs: list[x509.Certificate], node_id: NodeId) -> None:
    for index in range(len(certs) - 1):
        _check_issued_by(certs, index, index + 1, node_id)
    _check_issued_by(certs, len(certs) - 1, len(certs) - 1, node_id)


def _check_key_usage(certs: list[x509.Certificate], node_id: NodeId) -> None:
    """The leaf may sign (TLS handshakes, claims); every issuer may sign certificates."""
    leaf_usage = _extension(certs[0], x509.KeyUsage)
    if leaf_usage is not None and not leaf_usage.digital_signature:
        raise KeyUsageError(
            f"certificate 0 of node {node_id}: key usage lacks digitalSignature",
            index=0,
            node_id=node_id,
        )
    for index in range(1, len(certs)):
        cert = certs[index]
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            raise KeyUsageError(
                f"certificate {index} of node {node_id} signs certificate {index - 1} "
                "but is not a CA (basicConstraints)",
                index=index,
                node_id=node_id,
            )
        if constraints.path_length is not None and index - 1 > constraints.path_length:
            raise KeyUsageError(
                f"certificate {index} of node {node_id}: path length {constraints.path_length} "
                f"exceeded by {index - 1} certificates below it",
                index=index,
                node_id=node_id,
            )
        usage = _extension(cert, x509.KeyUsage)
        if usage is not None and not usage.key_cert_sign:
            raise KeyUsageError(
                f"certificate {index} of node {node_id} signs certificate {index - 1} "
                "but its key usage lacks keyCertSign",
                index=index,
                node_id=node_id,
            )


def _extension(cert: x509.Certificate, kind: type[_ExtensionT]) -> _ExtensionT | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(certs: list[x509.Certificate], node_id: NodeId, now: datetime) -> None:
    for index, cert in enumerate(certs):
        if now < cert.not_valid_before_utc:
            raise CertificateNotYetValidError(
                f"certificate {index} of node {node_id} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()} (now {now.isoformat()})",
                index=index,
                node_id=node_id,
            )
        if now > cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"certificate {index} of node {node_id} expired at "
                f"{cert.not_valid_after_utc.isoformat()} (now {now.isoformat()})",
                index=index,
                node_id=node_id,
            )
