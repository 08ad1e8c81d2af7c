"""Errors of the agent's domains (node graph, claims, notifications, vaults, state).

One base, :class:`DomainError`, with a stable class-level ``code``. The servicer maps these
to RPC status codes in one place.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ClaimConflictError",
    "ClaimVerificationError",
    "DomainError",
    "InvalidCursorError",
    "InvalidInputError",
    "NotFoundError",
    "SignatureVerificationError",
    "StateClosedError",
    "VaultArchiveError",
    "VaultExistsError",
]


class DomainError(Exception):
    """Base of every error raised by ``agent.domains``."""

    code: ClassVar[str] = "domain_error"


class InvalidInputError(DomainError, ValueError):
    """An argument is malformed or out of range (the caller's mistake)."""

    code = "invalid_input"


class InvalidCursorError(InvalidInputError):
    """A pagination cursor is not one this listing produced (or was used with another order)."""

    code = "invalid_cursor"


class NotFoundError(DomainError, LookupError):
    """The named thing does not exist."""

    code = "not_found"


class StateClosedError(DomainError):
    """The agent state store was used after it was closed."""

    code = "state_closed"


class SignatureVerificationError(DomainError):
    """A signed record's signer chain or signature does not verify."""

    code = "signature_verification_failed"


class ClaimVerificationError(SignatureVerificationError):
    """A claim's signatures do not verify, or the wrong nodes signed it."""

    code = "claim_verification_failed"


class ClaimConflictError(DomainError):
    """A different claim already holds this issuer's sequence number or this claim id."""

    code = "claim_conflict"


class VaultExistsError(DomainError):
    """A vault with this name already exists."""

    code = "vault_exists"


class VaultArchiveError(DomainError):
    """A vault byte stream is malformed, truncated, too large or fails its checksum."""

    code = "vault_archive_invalid"
