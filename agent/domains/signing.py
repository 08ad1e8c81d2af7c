"""What domain code needs of a node identity, and signature checks against signer chains."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from agent.domains.errors import SignatureVerificationError
from agent.identity import NodeVerificationError, verify_node_chain, verify_signature
from agent.nodeid import NodeId

__all__ = ["SigningIdentity", "verify_signed_by"]


@runtime_checkable
class SigningIdentity(Protocol):
    """The part of :class:`agent.identity.NodeIdentity` that signs records."""

    @property
    def node_id(self) -> NodeId: ...

    def sign(self, data: bytes) -> bytes: ...

    def chain_der(self) -> list[bytes]: ...


def verify_signed_by(
    signer: NodeId,
    chain: Sequence[bytes],
    data: bytes,
    signature: bytes,
    *,
    error: type[SignatureVerificationError] = SignatureVerificationError,
    what: str = "record",
) -> None:
    """Check that ``chain`` proves ``signer`` and its leaf key signed ``data``.

    Raises ``error`` (a SignatureVerificationError) naming what failed.
    """
    try:
        verify_node_chain(list(chain), expected_node_id=signer)
    except (NodeVerificationError, TypeError, ValueError) as exc:
        raise error(f"{what}: chain of signer {signer} does not verify: {exc}") from exc
    try:
        verify_signature(list(chain), data, signature)
    except (NodeVerificationError, TypeError, ValueError) as exc:
        raise error(f"{what}: signature of {signer} does not verify: {exc}") from exc
