"""The agent's domains: persistent state, node graph, claims, notifications, vaults.

Each domain object wraps one :class:`AgentState` (a SQLite database plus files under the
agent's state dir) and is safe to call from any thread; errors derive from
:class:`DomainError`.
"""

from agent.domains.claims import (
    CLAIM_TYPE_NODE,
    Claim,
    ClaimSignature,
    ClaimStore,
    SignedClaim,
    claim_signing_bytes,
    new_claim,
    sign_claim,
    verify_claim_signature,
    verify_cross_signed,
)
from agent.domains.errors import (
    ClaimConflictError,
    ClaimVerificationError,
    DomainError,
    InvalidCursorError,
    InvalidInputError,
    NotFoundError,
    SignatureVerificationError,
    StateClosedError,
    VaultArchiveError,
    VaultExistsError,
)
from agent.domains.nodes import DEFAULT_K, NodeAddress, NodeGraph, NodeRecord, SetNodeResult
from agent.domains.notifications import (
    InboxEntry,
    Notification,
    NotificationInbox,
    SignedNotification,
    new_notification,
    notification_signing_bytes,
    sign_notification,
    verify_notification,
)
from agent.domains.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Page,
    PageRequest,
    SortOrder,
)
from agent.domains.signing import SigningIdentity
from agent.domains.state import AgentState
from agent.domains.vault_archive import VaultArchiveParser, check_vault_path
from agent.domains.vaults import (
    ScannedVault,
    VaultImport,
    VaultInfo,
    VaultPermission,
    VaultStore,
    check_vault_name,
)

__all__ = [
    "CLAIM_TYPE_NODE",
    "DEFAULT_K",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "AgentState",
    "Claim",
    "ClaimConflictError",
    "ClaimSignature",
    "ClaimStore",
    "ClaimVerificationError",
    "DomainError",
    "InboxEntry",
    "InvalidCursorError",
    "InvalidInputError",
    "NodeAddress",
    "NodeGraph",
    "NodeRecord",
    "NotFoundError",
    "Notification",
    "NotificationInbox",
    "Page",
    "PageRequest",
    "ScannedVault",
    "SetNodeResult",
    "SignatureVerificationError",
    "SignedClaim",
    "SignedNotification",
    "SigningIdentity",
    "SortOrder",
    "StateClosedError",
    "VaultArchiveError",
    "VaultArchiveParser",
    "VaultExistsError",
    "VaultImport",
    "VaultInfo",
    "VaultPermission",
    "VaultStore",
    "check_vault_name",
    "check_vault_path",
    "claim_signing_bytes",
    "new_claim",
    "new_notification",
    "notification_signing_bytes",
    "sign_claim",
    "sign_notification",
    "verify_claim_signature",
    "verify_cross_signed",
    "verify_notification",
]
