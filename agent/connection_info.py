"""Who is calling: the transport-neutral facts a servicer may rely on.

The transport wiring (the legacy reverse proxy, or QUIC) knows the verified peer; it
hands the servicer a :data:`ConnectionInfoGetter` that maps a call's servicer context to
a :class:`ConnectionInfo`. The servicer never learns which transport carried the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.nodeid import NodeId

__all__ = ["ConnectionInfo", "ConnectionInfoError", "ConnectionInfoGetter"]


class ConnectionInfoError(Exception):
    """The transport cannot say who is calling (unauthenticated or unknown connection)."""

    code = "connection_info_unavailable"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """The verified remote node of a call and where it calls from.

    ``remote_host``/``remote_port`` are the address as this node sees it (after NAT);
    ``remote_chain`` is the remote node's certificate chain, DER, leaf first.
    """

    remote_node_id: NodeId
    remote_host: str
    remote_port: int
    remote_chain: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.remote_node_id, NodeId):
            raise TypeError("remote_node_id must be a NodeId")
        if not isinstance(self.remote_host, str):
            raise TypeError("remote_host must be a str")
        if isinstance(self.remote_port, bool) or not isinstance(self.remote_port, int):
            raise TypeError("remote_port must be an int")
        if not 0 <= self.remote_port <= 65535:
            raise ValueError(f"remote_port must be 0..65535, got {self.remote_port}")
        chain = tuple(self.remote_chain)
        if not all(isinstance(c, bytes) for c in chain):
            raise TypeError("remote_chain must hold DER bytes")
        object.__setattr__(self, "remote_chain", chain)


ConnectionInfoGetter = Callable[[Any], ConnectionInfo]
"""``connection_info(context) -> ConnectionInfo``; raises ConnectionInfoError if unknown."""
