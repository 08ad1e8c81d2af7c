"""Node ids: 32 bytes derived from a node's root public key, printable and parseable.

A node id is the SHA-256 digest of the DER SubjectPublicKeyInfo of the node's *root* key
(the first key it ever had). Rotating the key does not change the id: each new
certificate is signed by the previous key and carries the same id, so the chain
``[new, old, ..., root]`` proves the lineage back to the key the id was derived from.

Printed form: ``"v"`` followed by the lowercase, unpadded base32hex encoding of the
32 bytes (the multibase ``base32hex`` convention), 53 characters in all.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = ["NODE_ID_LENGTH", "InvalidNodeIdError", "NodeId"]

NODE_ID_LENGTH: Final = 32
_PREFIX: Final = "v"


class InvalidNodeIdError(ValueError):
    """A node id string or byte string is malformed."""


class NodeId:
    """An immutable 32-byte node id; compares, hashes and sorts by its bytes."""

    __slots__ = ("_raw",)
    _raw: bytes

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise InvalidNodeIdError(f"node id must be bytes, not {type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) != NODE_ID_LENGTH:
            raise InvalidNodeIdError(f"node id must be {NODE_ID_LENGTH} bytes, got {len(raw)}")
        object.__setattr__(self, "_raw", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NodeId is immutable")

    @classmethod
    def from_public_key(cls, key: PublicKeyTypes) -> NodeId:
        """The id derived from a public key (use the node's root key)."""
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(hashlib.sha256(spki).digest())

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the printed form (``v`` + base32hex); raises InvalidNodeIdError."""
        if not isinstance(text, str):
            raise InvalidNodeIdError(f"node id text must be str, not {type(text).__name__}")
        text = text.strip()
        if not text.startswith(_PREFIX):
            raise InvalidNodeIdError(f"node id must start with {_PREFIX!r}: {text[:60]!r}")
        body = text[len(_PREFIX) :].upper()
        padding = "=" * (-len(body) % 8)
        try:
            raw = base64.b32hexdecode(body + padding)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise InvalidNodeIdError(f"node id is not base32hex: {text[:60]!r}") from exc
        if len(raw) != NODE_ID_LENGTH:
            raise InvalidNodeIdError(
                f"node id must decode to {NODE_ID_LENGTH} bytes: {text[:60]!r}"
            )
        node_id = cls(raw)
        if str(node_id) != text.lower():
            raise InvalidNodeIdError(f"node id is not in canonical form: {text[:60]!r}")
        return node_id

    @property
    def raw(self) -> bytes:
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    def __str__(self) -> str:
        return _PREFIX + base64.b32hexencode(self._raw).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"NodeId({self!s})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeId) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __lt__(self, other: NodeId) -> bool:
        return self._raw < other._raw

    def distance(self, other: NodeId) -> int:
        """Kademlia XOR distance."""
        return int.from_bytes(self._raw, "big") ^ int.from_bytes(other._raw, "big")

    def bucket_index(self, other: NodeId) -> int:
        """Index of the k-bucket ``other`` falls in, seen from this node (0..255).

        Raises ValueError for the node itself, which belongs in no bucket.
        """
        d = self.distance(other)
        if d == 0:
            raise ValueError("a node is not in its own bucket table")
        return d.bit_length() - 1
