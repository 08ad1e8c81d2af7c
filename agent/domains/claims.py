"""Cross-signed claims between nodes, each node's claims numbered by a sequence.

A claim says something from ``issuer`` about ``subject`` (type ``"node"``: the two nodes
are linked). The store accepts only *cross-signed* claims: signed by the issuer and the
subject, each signature checked with the signer's certificate chain, which must prove the
signer's node id. What is signed is :func:`claim_signing_bytes`, a canonical encoding of
the claim's fields, so the signatures do not depend on any wire format.

Each issuer numbers its claims 1, 2, 3, … (gaps allowed, never reused);
:meth:`ClaimStore.allocate_sequence` hands out our own numbers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from agent.domains._codec import Reader, pack_bytes, pack_bytes_list, pack_str, pack_u64
from agent.domains.errors import (
    ClaimConflictError,
    ClaimVerificationError,
    InvalidInputError,
)
from agent.domains.pagination import (
    Page,
    PageRequest,
    SortOrder,
    decode_cursor,
    decode_int_key,
    encode_int_key,
    page_from_rows,
)
from agent.domains.signing import SigningIdentity, verify_signed_by
from agent.domains.state import AgentState
from agent.nodeid import NODE_ID_LENGTH, NodeId

__all__ = [
    "CLAIM_TYPE_NODE",
    "MAX_CHAIN_CERTS",
    "MAX_CLAIM_DATA",
    "Claim",
    "ClaimSignature",
    "ClaimStore",
    "SignedClaim",
    "claim_signing_bytes",
    "new_claim",
    "sign_claim",
    "verify_claim_signature",
    "verify_cross_signed",
]

CLAIM_TYPE_NODE: Final = "node"
MAX_CLAIM_DATA: Final = 64 * 1024
MAX_CHAIN_CERTS: Final = 16
_MAX_CERT_BYTES: Final = 16 * 1024
_MAX_SIGNATURE_BYTES: Final = 1024
_MAX_SEQUENCE: Final = 2**63 - 1
_SIGNING_DOMAIN: Final = b"quicshift/claim/v1\x00"
_CURSOR_NAMESPACE: Final = "claims"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS claims (
        issuer BLOB NOT NULL,
        seq INTEGER NOT NULL,
        claim_id BLOB NOT NULL,
        subject BLOB NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        signatures BLOB NOT NULL,
        PRIMARY KEY (issuer, seq),
        UNIQUE (issuer, claim_id)
    )""",
    "CREATE INDEX IF NOT EXISTS claims_by_subject ON claims (subject, issuer, seq)",
)


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{what} must be an int")
    if not low <= value <= high:
        raise InvalidInputError(f"{what} must be {low}..{high}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Claim:
    """The signed content of a claim."""

    claim_id: bytes
    issuer: NodeId
    subject: NodeId
    type: str
    data: bytes
    issued_at_ms: int
    sequence_number: int

    def __post_init__(self) -> None:
        if not isinstance(self.claim_id, bytes) or not 0 < len(self.claim_id) <= 64:
            raise InvalidInputError("claim_id must be 1..64 bytes")
        if not isinstance(self.issuer, NodeId) or not isinstance(self.subject, NodeId):
            raise InvalidInputError("claim issuer and subject must be NodeIds")
        if self.issuer == self.subject:
            raise InvalidInputError("a claim's issuer and subject must be different nodes")
        if (
            not isinstance(self.type, str)
            or not 0 < len(self.type) <= 64
            or not self.type.isprintable()
        ):
            raise InvalidInputError("claim type must be 1..64 printable characters")
        if not isinstance(self.data, bytes) or len(self.data) > MAX_CLAIM_DATA:
            raise InvalidInputError(f"claim data must be bytes of at most {MAX_CLAIM_DATA}")
        _check_int(self.issued_at_ms, "issued_at_ms", 0, _MAX_SEQUENCE)
        _check_int(self.sequence_number, "sequence_number", 1, _MAX_SEQUENCE)


@dataclass(frozen=True, slots=True)
class ClaimSignature:
    """One node's signature over a claim, with the chain that proves the signer."""

    signer: NodeId
    signer_chain: tuple[bytes, ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signer, NodeId):
            raise InvalidInputError("signer must be a NodeId")
        chain = tuple(self.signer_chain)
        if not 0 < len(chain) <= MAX_CHAIN_CERTS:
            raise InvalidInputError(f"signer chain must hold 1..{MAX_CHAIN_CERTS} certificates")
        for cert in chain:
            if not isinstance(cert, bytes) or not 0 < len(cert) <= _MAX_CERT_BYTES:
                raise InvalidInputError("signer chain certificates must be non-empty DER bytes")
        object.__setattr__(self, "signer_chain", chain)
        if (
            not isinstance(self.signature, bytes)
            or not 0 < len(self.signature) <= _MAX_SIGNATURE_BYTES
        ):
            raise InvalidInputError("signature must be 1..1024 bytes")


@dataclass(frozen=True, slots=True)
class SignedClaim:
    claim: Claim
    signatures: tuple[ClaimSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.claim, Claim):
            raise InvalidInputError("claim must be a Claim")
        signatures = tuple(self.signatures)
        if len(signatures) > 2:
            raise InvalidInputError("a claim carries at most two signatures")
        signers = [s.signer for s in signatures]
        if len(set(signers)) != len(signers):
            raise InvalidInputError("a claim carries at most one signature per node")
        for signature in signatures:
            if not isinstance(signature, ClaimSignature):
                raise InvalidInputError("signatures must be ClaimSignature values")
            if signature.signer not in (self.claim.issuer, self.claim.subject):
                raise InvalidInputError(
                    f"signer {signature.signer} is neither the issuer nor the subject"
                )
        object.__setattr__(self, "signatures", signatures)

    def signature_of(self, node_id: NodeId) -> ClaimSignature | None:
        for signature in self.signatures:
            if signature.signer == node_id:
                return signature
        return None

    def with_signature(self, signature: ClaimSignature) -> SignedClaim:
        """This claim plus ``signature`` (replacing an earlier one by the same signer)."""
        kept = tuple(s for s in self.signatures if s.signer != signature.signer)
        return replace(self, signatures=(*kept, signature))


def claim_signing_bytes(claim: Claim) -> bytes:
    """The canonical bytes every signature over ``claim`` covers."""
    return b"".join(
        (
            _SIGNING_DOMAIN,
            pack_bytes(claim.claim_id),
            claim.issuer.raw,
            claim.subject.raw,
            pack_str(claim.type),
            pack_bytes(claim.data),
            pack_u64(claim.issued_at_ms),
            pack_u64(claim.sequence_number),
        )
    )


def new_claim(
    issuer: NodeId,
    subject: NodeId,
    sequence_number: int,
    *,
    claim_type: str = CLAIM_TYPE_NODE,
    data: bytes = b"",
    issued_at_ms: int | None = None,
    claim_id: bytes | None = None,
) -> Claim:
    """A fresh claim with a random 16-byte id, issued now unless told otherwise."""
    return Claim(
        claim_id=os.urandom(16) if claim_id is None else claim_id,
        issuer=issuer,
        subject=subject,
        type=claim_type,
        data=data,
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms,
        sequence_number=sequence_number,
    )


def sign_claim(claim: Claim, identity: SigningIdentity) -> ClaimSignature:
    """``identity``'s signature over ``claim`` (it must be the issuer or the subject)."""
    if identity.node_id not in (claim.issuer, claim.subject):
        raise InvalidInputError(
            f"node {identity.node_id} is neither the issuer nor the subject of the claim"
        )
    return ClaimSignature(
        signer=identity.node_id,
        signer_chain=tuple(identity.chain_der()),
        signature=identity.sign(claim_signing_bytes(claim)),
    )


def verify_claim_signature(claim: Claim, signature: ClaimSignature) -> None:
    """Check one signature; raises ClaimVerificationError."""
    verify_signed_by(
        signature.signer,
        signature.signer_chain,
        claim_signing_bytes(claim),
        signature.signature,
        error=ClaimVerificationError,
        what=f"claim {claim.issuer}#{claim.sequence_number}",
    )


def verify_cross_signed(signed: SignedClaim) -> None:
    """Check that the issuer and the subject both signed; raises ClaimVerificationError."""
    claim = signed.claim
    for party, role in ((claim.issuer, "issuer"), (claim.subject, "subject")):
        signature = signed.signature_of(party)
        if signature is None:
            raise ClaimVerificationError(f"claim is not signed by its {role} {party}")
        verify_claim_signature(claim, signature)


def _encode_signatures(signatures: Sequence[ClaimSignature]) -> bytes:
    parts = [pack_u64(len(signatures))]
    for s in signatures:
        parts += [s.signer.raw, pack_bytes_list(s.signer_chain), pack_bytes(s.signature)]
    return b"".join(parts)


def _decode_signatures(blob: bytes) -> tuple[ClaimSignature, ...]:
    reader = Reader(blob)
    count = reader.u64()
    out = []
    for _ in range(count):
        signer = NodeId(reader.fixed(NODE_ID_LENGTH))
        chain = tuple(reader.bytes_list())
        out.append(ClaimSignature(signer=signer, signer_chain=chain, signature=reader.bytes_()))
    return tuple(out)


class ClaimStore:
    """Persistent store of cross-signed claims, ours and our peers'."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        state.ensure_schema(_SCHEMA)
        self._reserved: dict[NodeId, int] = {}
        self._reserve_lock = threading.Lock()

    @staticmethod
    def _signed(row: Sequence[Any]) -> SignedClaim:
        issuer, seq, claim_id, subject, claim_type, data, issued_at_ms, signatures = row
        claim = Claim(
            claim_id=bytes(claim_id),
            issuer=NodeId(bytes(issuer)),
            subject=NodeId(bytes(subject)),
            type=str(claim_type),
            data=bytes(data),
            issued_at_ms=int(issued_at_ms),
            sequence_number=int(seq),
        )
        return SignedClaim(claim=claim, signatures=_decode_signatures(bytes(signatures)))

    _COLUMNS: Final = "issuer, seq, claim_id, subject, type, data, issued_at_ms, signatures"

    def last_sequence(self, issuer: NodeId) -> int:
        """The highest stored sequence number of ``issuer`` (0 if none)."""
        row = self._state.query_one(
            "SELECT COALESCE(MAX(seq), 0) FROM claims WHERE issuer = ?", (issuer.raw,)
        )
        return 0 if row is None else int(row[0])

    def allocate_sequence(self, issuer: NodeId) -> int:
        """A sequence number for a new claim by ``issuer`` (our own node), never handed
        out twice by this store; numbers of claims that are never stored leave gaps."""
        if not isinstance(issuer, NodeId):
            raise InvalidInputError("issuer must be a NodeId")
        with self._reserve_lock:
            number = max(self.last_sequence(issuer), self._reserved.get(issuer, 0)) + 1
            self._reserved[issuer] = number
            return number

    def add(self, signed: SignedClaim, *, verify: bool = True) -> bool:
        """Store a cross-signed claim; True if new, False if this claim was already stored.

        Raises ClaimVerificationError if the issuer's or subject's signature fails and
        ClaimConflictError if the issuer's sequence number or claim id is taken by a
        different claim.
        """
        if not isinstance(signed, SignedClaim):
            raise InvalidInputError("expected a SignedClaim")
        if verify:
            verify_cross_signed(signed)
        claim = signed.claim
        with self._state.transaction() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM claims"
                " WHERE issuer = ? AND (seq = ? OR claim_id = ?)",
                (claim.issuer.raw, claim.sequence_number, claim.claim_id),
            ).fetchall()
            for row in rows:
                if self._signed(row).claim == claim:
                    return False
                raise ClaimConflictError(
                    f"issuer {claim.issuer} already has a different claim with sequence "
                    f"number {claim.sequence_number} or id {claim.claim_id.hex()}"
                )
            conn.execute(
                f"INSERT INTO claims ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    claim.issuer.raw,
                    claim.sequence_number,
                    claim.claim_id,
                    claim.subject.raw,
                    claim.type,
                    claim.data,
                    claim.issued_at_ms,
                    _encode_signatures(signed.signatures),
                ),
            )
        return True

    def get(self, issuer: NodeId, sequence_number: int) -> SignedClaim | None:
        row = self._state.query_one(
            f"SELECT {self._COLUMNS} FROM claims WHERE issuer = ? AND seq = ?",
            (issuer.raw, sequence_number),
        )
        return None if row is None else self._signed(row)

    def claims_for(self, node_id: NodeId) -> list[SignedClaim]:
        """All claims issued by ``node_id``, by ascending sequence number."""
        if not isinstance(node_id, NodeId):
            raise InvalidInputError("node id must be a NodeId")
        rows = self._state.query(
            f"SELECT {self._COLUMNS} FROM claims WHERE issuer = ? ORDER BY seq",
            (node_id.raw,),
        )
        return [self._signed(r) for r in rows]

    def claims_about(self, node_id: NodeId) -> list[SignedClaim]:
        """All claims whose subject is ``node_id``, by issuer then sequence number."""
        if not isinstance(node_id, NodeId):
            raise InvalidInputError("node id must be a NodeId")
        rows = self._state.query(
            f"SELECT {self._COLUMNS} FROM claims WHERE subject = ? ORDER BY issuer, seq",
            (node_id.raw,),
        )
        return [self._signed(r) for r in rows]

    def claims_page(self, node_id: NodeId, request: PageRequest) -> Page[SignedClaim]:
        """Claims issued by ``node_id``, one page, by sequence number."""
        if not isinstance(node_id, NodeId):
            raise InvalidInputError("node id must be a NodeId")
        after = decode_cursor(_CURSOR_NAMESPACE, request.cursor, request.order)
        ascending = request.order is SortOrder.ASC
        sql = f"SELECT {self._COLUMNS} FROM claims WHERE issuer = ?"
        params: list[Any] = [node_id.raw]
        if after is not None:
            sql += " AND seq > ?" if ascending else " AND seq < ?"
            params.append(decode_int_key(after))
        sql += " ORDER BY seq " + ("ASC" if ascending else "DESC") + " LIMIT ?"
        params.append(request.page_size + 1)
        rows = [self._signed(r) for r in self._state.query(sql, params)]
        return page_from_rows(
            rows,
            request,
            _CURSOR_NAMESPACE,
            lambda s: encode_int_key(s.claim.sequence_number),
        )
