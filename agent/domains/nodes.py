"""The node graph: known peers in Kademlia k-buckets by XOR distance from our own node id.

Each bucket holds at most ``k`` nodes (default 20), ordered least- to most-recently
updated. Updating a known node moves it to the tail. A new node for a full bucket either
evicts the least-recently-updated node (the default) or is refused, so a caller that wants
Kademlia's "ping the oldest first" rule can check :meth:`NodeGraph.oldest_in_bucket`, ping
it, and refresh it with :meth:`NodeGraph.set_node` or let the newcomer in.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.domains.errors import InvalidInputError
from agent.domains.pagination import Page, PageRequest, paginate_sorted
from agent.domains.state import AgentState
from agent.nodeid import NODE_ID_LENGTH, NodeId

__all__ = [
    "DEFAULT_K",
    "MAX_ADDRESSES",
    "NodeAddress",
    "NodeGraph",
    "NodeRecord",
    "SetNodeResult",
]

DEFAULT_K: Final = 20
MAX_ADDRESSES: Final = 16
_TRANSPORT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
_CURSOR_NAMESPACE: Final = "nodes.closest"

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS node_graph_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id BLOB PRIMARY KEY,
        bucket INTEGER NOT NULL,
        addresses TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        touched INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nodes_by_bucket ON nodes (bucket, touched)",
)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """An address a node is reachable on and the transports it serves there."""

    host: str
    port: int
    transports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not 0 < len(self.host) <= 253:
            raise InvalidInputError("address host must be a non-empty string of at most 253 chars")
        if any(c.isspace() or not c.isprintable() for c in self.host) or "/" in self.host:
            raise InvalidInputError(f"address host is malformed: {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidInputError("address port must be an int")
        if not 0 < self.port <= 65535:
            raise InvalidInputError(f"address port must be 1..65535, got {self.port}")
        transports = tuple(self.transports)
        for transport in transports:
            if not isinstance(transport, str) or not _TRANSPORT_RE.match(transport):
                raise InvalidInputError(f"transport name is malformed: {transport!r}")
        object.__setattr__(self, "transports", tuple(dict.fromkeys(transports)))

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "transports": list(self.transports)}


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node in the graph."""

    node_id: NodeId
    addresses: tuple[NodeAddress, ...]
    last_seen_ms: int
    bucket: int


@dataclass(frozen=True, slots=True)
class SetNodeResult:
    """Outcome of :meth:`NodeGraph.set_node`.

    ``stored`` is False only when the bucket was full and eviction was not allowed;
    ``evicted`` names the node that made room, if any.
    """

    stored: bool
    evicted: NodeId | None = None


def _check_node_id(node_id: object, what: str = "node id") -> NodeId:
    if not isinstance(node_id, NodeId):
        raise InvalidInputError(f"{what} must be a NodeId, not {type(node_id).__name__}")
    return node_id


def _decode_addresses(text: str) -> tuple[NodeAddress, ...]:
    return tuple(
        NodeAddress(host=a["host"], port=a["port"], transports=tuple(a["transports"]))
        for a in json.loads(text)
    )


class NodeGraph:
    """Persistent Kademlia routing table of one node."""

    def __init__(self, state: AgentState, own_node_id: NodeId, *, k: int = DEFAULT_K) -> None:
        self._state = state
        self._own = _check_node_id(own_node_id, "own node id")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"bucket size k must be a positive int, got {k!r}")
        self._k = k
        state.ensure_schema(_SCHEMA)
        with state.transaction() as conn:
            row = conn.execute(
                "SELECT value FROM node_graph_meta WHERE key = 'own_node_id'"
            ).fetchone()
            if row is None or bytes(row[0]) != own_node_id.raw:
                # New graph, or our id changed: bucket indices are relative to it.
                conn.execute(
                    "INSERT OR REPLACE INTO node_graph_meta (key, value) VALUES ('own_node_id', ?)",
                    (own_node_id.raw,),
                )
                conn.execute("DELETE FROM nodes WHERE node_id = ?", (own_node_id.raw,))
                for (raw,) in conn.execute("SELECT node_id FROM nodes").fetchall():
                    conn.execute(
                        "UPDATE nodes SET bucket = ? WHERE node_id = ?",
                        (own_node_id.bucket_index(NodeId(bytes(raw))), raw),
                    )

    @property
    def own_node_id(self) -> NodeId:
        return self._own

    @property
    def k(self) -> int:
        return self._k

    @staticmethod
    def _record(row: Sequence[Any]) -> NodeRecord:
        raw, bucket, addresses, last_seen_ms = row
        return NodeRecord(
            node_id=NodeId(bytes(raw)),
            addresses=_decode_addresses(str(addresses)),
            last_seen_ms=int(last_seen_ms),
            bucket=int(bucket),
        )

    def set_node(
        self,
        node_id: NodeId,
        addresses: Iterable[NodeAddress],
        last_seen_ms: int | None = None,
        *,
        evict_oldest: bool = True,
    ) -> SetNodeResult:
        """Add or refresh a node (moves it to the tail of its bucket)."""
        _check_node_id(node_id)
        if node_id == self._own:
            raise InvalidInputError("a node does not store itself in its node graph")
        addrs = tuple(addresses)
        if len(addrs) > MAX_ADDRESSES:
            raise InvalidInputError(f"at most {MAX_ADDRESSES} addresses per node")
        for address in addrs:
            if not isinstance(address, NodeAddress):
                raise InvalidInputError("addresses must be NodeAddress values")
        if last_seen_ms is None:
            last_seen_ms = int(time.time() * 1000)
        if isinstance(last_seen_ms, bool) or not isinstance(last_seen_ms, int):
            raise InvalidInputError("last_seen_ms must be an int")
        if not 0 <= last_seen_ms < 2**63:
            raise InvalidInputError("last_seen_ms is out of range")
        bucket = self._own.bucket_index(node_id)
        encoded = json.dumps([a.to_json() for a in addrs], separators=(",", ":"))
        evicted: NodeId | None = None
        with self._state.transaction() as conn:
            (touched,) = conn.execute("SELECT COALESCE(MAX(touched), 0) + 1 FROM nodes").fetchone()
            known = conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id.raw,)).fetchone()
            if known is None:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM nodes WHERE bucket = ?", (bucket,)
                ).fetchone()
                if count >= self._k:
                    if not evict_oldest:
                        return SetNodeResult(stored=False)
                    (oldest,) = conn.execute(
                        "SELECT node_id FROM nodes WHERE bucket = ? ORDER BY touched LIMIT 1",
                        (bucket,),
                    ).fetchone()
                    conn.execute("DELETE FROM nodes WHERE node_id = ?", (oldest,))
                    evicted = NodeId(bytes(oldest))
            conn.execute(
                "INSERT OR REPLACE INTO nodes (node_id, bucket, addresses, last_seen_ms, touched)"
                " VALUES (?, ?, ?, ?, ?)",
                (node_id.raw, bucket, encoded, last_seen_ms, touched),
            )
        return SetNodeResult(stored=True, evicted=evicted)

    def get_node(self, node_id: NodeId) -> NodeRecord | None:
        _check_node_id(node_id)
        row = self._state.query_one(
            "SELECT node_id, bucket, addresses, last_seen_ms FROM nodes WHERE node_id = ?",
            (node_id.raw,),
        )
        return None if row is None else self._record(row)

    def remove_node(self, node_id: NodeId) -> bool:
        """Forget a node; True if it was known."""
        _check_node_id(node_id)
        return self._state.execute("DELETE FROM nodes WHERE node_id = ?", (node_id.raw,)) > 0

    def bucket(self, index: int) -> list[NodeRecord]:
        """The nodes of bucket ``index`` (0..255), least recently updated first."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidInputError("bucket index must be an int")
        if not 0 <= index < NODE_ID_LENGTH * 8:
            raise InvalidInputError(f"bucket index must be 0..{NODE_ID_LENGTH * 8 - 1}")
        rows = self._state.query(
            "SELECT node_id, bucket, addresses, last_seen_ms FROM nodes"
            " WHERE bucket = ? ORDER BY touched",
            (index,),
        )
        return [self._record(r) for r in rows]

    def oldest_in_bucket(self, index: int) -> NodeRecord | None:
        nodes = self.bucket(index)
        return nodes[0] if nodes else None

    def all_nodes(self) -> list[NodeRecord]:
        rows = self._state.query(
            "SELECT node_id, bucket, addresses, last_seen_ms FROM nodes ORDER BY node_id"
        )
        return [self._record(r) for r in rows]

    def __len__(self) -> int:
        row = self._state.query_one("SELECT COUNT(*) FROM nodes")
        return 0 if row is None else int(row[0])

    def closest_nodes(self, target: NodeId, limit: int = DEFAULT_K) -> list[NodeRecord]:
        """Up to ``limit`` known nodes, nearest to ``target`` (XOR distance) first."""
        _check_node_id(target, "target")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInputError("limit must be a non-negative int")
        nodes = self.all_nodes()
        nodes.sort(key=lambda n: n.node_id.distance(target))
        return nodes[:limit]

    def closest_nodes_page(self, target: NodeId, request: PageRequest) -> Page[NodeRecord]:
        """All known nodes by distance to ``target`` (ASC = nearest first), one page."""
        _check_node_id(target, "target")

        def distance_key(node: NodeRecord) -> bytes:
            return node.node_id.distance(target).to_bytes(NODE_ID_LENGTH, "big")

        return paginate_sorted(self.all_nodes(), request, _CURSOR_NAMESPACE, distance_key)
