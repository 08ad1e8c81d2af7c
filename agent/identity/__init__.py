"""Node identity: keys, node certificates, key rotation and chain verification.

* :class:`NodeIdentity` — a node's id, current key and chain ``[leaf, ..., root]``;
  ``generate``, ``rotate``, ``sign``, PEM/DER serialization, ``save``/``load``.
* :func:`verify_node_chain` / :func:`node_verifier` — prove a peer's node id from its
  chain; failures raise a :class:`NodeVerificationError` subclass with a stable ``code``.
* :func:`verify_signature` — check a detached signature with a certificate's key.

How the id is bound into certificates is described in :mod:`agent.identity.certificates`.
Helpers that build deliberately broken identities live in :mod:`agent.identity_testing`.
"""

from agent.identity.certificates import (
    KEY_TYPES,
    NODE_URI_SCHEME,
    KeyType,
    NodePrivateKey,
    NodePublicKey,
    node_uri,
)
from agent.identity.errors import (
    BrokenChainError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    ChainTooLongError,
    EmptyChainError,
    IdentityError,
    IdentityLoadError,
    InconsistentNodeIdError,
    InvalidNodeSignatureError,
    KeyUsageError,
    MalformedCertificateError,
    MissingNodeIdError,
    NodeIdMismatchError,
    NodeVerificationError,
    RevokedCertificateError,
    RotationLimitError,
    UnsupportedKeyTypeError,
    UntrustedRootError,
)
from agent.identity.node_identity import (
    CHAIN_FILE_NAME,
    CLOCK_SKEW_ALLOWANCE,
    DEFAULT_VALIDITY,
    KEY_FILE_NAME,
    IdentityFiles,
    NodeIdentity,
)
from agent.identity.verification import (
    MAX_CHAIN_LENGTH,
    ChainElement,
    certificate_node_id,
    node_verifier,
    verify_node_chain,
    verify_signature,
)

__all__ = [
    "CHAIN_FILE_NAME",
    "CLOCK_SKEW_ALLOWANCE",
    "DEFAULT_VALIDITY",
    "KEY_FILE_NAME",
    "KEY_TYPES",
    "MAX_CHAIN_LENGTH",
    "NODE_URI_SCHEME",
    "BrokenChainError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "ChainElement",
    "ChainTooLongError",
    "EmptyChainError",
    "IdentityError",
    "IdentityFiles",
    "IdentityLoadError",
    "InconsistentNodeIdError",
    "InvalidNodeSignatureError",
    "KeyType",
    "KeyUsageError",
    "MalformedCertificateError",
    "MissingNodeIdError",
    "NodeIdMismatchError",
    "NodeIdentity",
    "NodePrivateKey",
    "NodePublicKey",
    "NodeVerificationError",
    "RevokedCertificateError",
    "RotationLimitError",
    "UnsupportedKeyTypeError",
    "UntrustedRootError",
    "certificate_node_id",
    "node_uri",
    "node_verifier",
    "verify_node_chain",
    "verify_signature",
]
