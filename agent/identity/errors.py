"""Errors raised when a peer's certificate chain does not prove a node identity.

Every error carries a stable, class-level ``code`` (for logs, metrics and alerts), the
index of the certificate at fault where there is one (0 = leaf) and the node id the
chain claims where it is known. Errors about *our own* misuse of the identity API
(bad key type, unreadable key file) are kept apart under :class:`IdentityError`.
"""

from __future__ import annotations

from typing import ClassVar

from agent.nodeid import NodeId

__all__ = [
    "BrokenChainError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "ChainTooLongError",
    "EmptyChainError",
    "IdentityError",
    "IdentityLoadError",
    "InconsistentNodeIdError",
    "InvalidNodeSignatureError",
    "KeyUsageError",
    "MalformedCertificateError",
    "MissingNodeIdError",
    "NodeIdMismatchError",
    "NodeVerificationError",
    "RevokedCertificateError",
    "RotationLimitError",
    "UnsupportedKeyTypeError",
    "UntrustedRootError",
]


class NodeVerificationError(Exception):
    """A certificate chain (or a signature) does not prove the node identity it should."""

    code: ClassVar[str] = "node_verification_failed"

    def __init__(
        self, message: str, *, index: int | None = None, node_id: NodeId | None = None
    ) -> None:
        super().__init__(message)
        self.index = index
        self.node_id = node_id


class EmptyChainError(NodeVerificationError):
    """The peer presented no certificate at all."""

    code = "empty_chain"


class ChainTooLongError(NodeVerificationError):
    """The chain is longer than the verifier accepts (bounds the work a peer can cause)."""

    code = "chain_too_long"


class MalformedCertificateError(NodeVerificationError):
    """A chain element is not a parseable certificate, or uses an unsupported key type."""

    code = "malformed_certificate"


class MissingNodeIdError(NodeVerificationError):
    """A certificate names no node id (e.g. an ordinary CA-issued TLS certificate)."""

    code = "missing_node_id"


class BrokenChainError(NodeVerificationError):
    """A certificate is not issued by the next one (name or signature), or the root is
    not self-signed."""

    code = "broken_chain"


class CertificateExpiredError(NodeVerificationError):
    """A certificate's ``notAfter`` is in the past."""

    code = "certificate_expired"


class CertificateNotYetValidError(NodeVerificationError):
    """A certificate's ``notBefore`` is in the future."""

    code = "certificate_not_yet_valid"


class KeyUsageError(NodeVerificationError):
    """A certificate's key usage or basic constraints forbid what the chain uses it for."""

    code = "key_usage"


class InconsistentNodeIdError(NodeVerificationError):
    """The certificates of one chain do not all name the same node id, or one certificate
    names two different ids."""

    code = "inconsistent_node_id"


class UntrustedRootError(InconsistentNodeIdError):
    """The node id the chain names is not derived from the chain's root key: the chain
    was issued by a root that does not own that id (an impostor or foreign CA)."""

    code = "untrusted_root"


class NodeIdMismatchError(NodeVerificationError):
    """The chain proves a node id, but not the one the caller expected."""

    code = "node_id_mismatch"

    def __init__(self, message: str, *, expected: NodeId, actual: NodeId) -> None:
        super().__init__(message, node_id=actual)
        self.expected = expected
        self.actual = actual


class RevokedCertificateError(NodeVerificationError):
    """The local revocation hook refused the peer's leaf certificate."""

    code = "revoked_certificate"


class InvalidNodeSignatureError(NodeVerificationError):
    """A detached signature does not verify under the certificate's key."""

    code = "invalid_signature"


class IdentityError(Exception):
    """Misuse of the identity API or an unusable local identity (not a peer's fault)."""

    code: ClassVar[str] = "identity_error"


class UnsupportedKeyTypeError(IdentityError, ValueError):
    """A key type other than ``"ed25519"`` or ``"p256"`` was asked for or found."""

    code = "unsupported_key_type"


class RotationLimitError(IdentityError):
    """Rotating again would make the chain longer than verifiers accept."""

    code = "rotation_limit"


class IdentityLoadError(IdentityError):
    """Stored key or chain cannot be loaded: missing file, bad PEM, wrong password, or
    the key does not belong to the chain's leaf."""

    code = "identity_load_failed"
