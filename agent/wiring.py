"""Wiring shared by every agent stack: the identity and the domains under a state dir.

Both :class:`agent.legacy.LegacyAgent` and :class:`agent.quic.Agent` keep one node's
state the same way, so a state dir moves between stacks unchanged:

* ``<state_dir>/identity`` — the node identity (generated on first start, reloaded after);
* ``<state_dir>`` — the :class:`AgentState` database with the node graph, claims,
  notifications and vaults on top of it.

Nothing here imports a transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.domains.claims import ClaimStore
from agent.domains.nodes import NodeGraph
from agent.domains.notifications import NotificationInbox
from agent.domains.state import AgentState
from agent.domains.vaults import VaultStore
from agent.identity import KeyType, NodeIdentity
from agent.nodeid import NodeId

__all__ = ["IDENTITY_DIR_NAME", "AgentDomains", "load_identity", "open_domains"]

IDENTITY_DIR_NAME: Final = "identity"


def load_identity(
    state_dir: Path, identity: NodeIdentity | None = None, key_type: KeyType = "ed25519"
) -> NodeIdentity:
    """The node identity kept in ``state_dir`` (blocking; run it in a worker thread).

    ``identity`` replaces the stored one (and is saved); without it the stored one is
    loaded, or a new ``key_type`` identity is generated and saved.
    """
    folder = state_dir / IDENTITY_DIR_NAME
    if identity is not None:
        identity.save(folder)
        return identity
    if folder.exists():
        return NodeIdentity.load(folder)
    generated = NodeIdentity.generate(key_type)
    generated.save(folder)
    return generated


@dataclass(frozen=True, slots=True)
class AgentDomains:
    """The domains of one node, all on one open :class:`AgentState`."""

    state: AgentState
    nodes: NodeGraph
    claims: ClaimStore
    notifications: NotificationInbox
    vaults: VaultStore

    def close(self) -> None:
        """Close the state (blocking; idempotent)."""
        if not self.state.closed:
            self.state.close()


def open_domains(state_dir: Path, node_id: NodeId) -> AgentDomains:
    """Open the state in ``state_dir`` and the domains on it (blocking)."""
    state = AgentState.open(state_dir)
    return AgentDomains(
        state=state,
        nodes=NodeGraph(state, node_id),
        claims=ClaimStore(state),
        notifications=NotificationInbox(state),
        vaults=VaultStore(state),
    )
