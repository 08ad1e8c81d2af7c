"""Deliberately bad node identities, for negative tests of anything that verifies peers.

Each helper returns a :class:`NodeIdentity` whose key matches its leaf, so it can be
loaded into a TLS or QUIC endpoint (``identity.save(dir)`` then ``load_cert_chain``) —
only verification of its chain fails, with the error named in the helper's docstring.
Times are relative to ``now`` (default: the current time) so tests can pin them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.identity.certificates import (
    KeyType,
    NodePrivateKey,
    build_node_certificate,
    generate_private_key,
    signature_hash,
)
from agent.identity.node_identity import NodeIdentity
from agent.nodeid import NodeId

__all__ = [
    "broken_chain_identity",
    "ca_issued_identity",
    "expired_identity",
    "inconsistent_node_id_identity",
    "non_signing_issuer_identity",
    "not_yet_valid_identity",
    "untrusted_root_identity",
]

_DAY = timedelta(days=1)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def expired_identity(
    key_type: KeyType = "ed25519", *, now: datetime | None = None, rotated: bool = False
) -> NodeIdentity:
    """A node whose leaf expired a day before ``now`` → ``CertificateExpiredError``.

    ``rotated=True`` gives a valid root and an expired rotated leaf (index 0) instead of
    a lone expired root.
    """
    moment = _now(now)
    start, end = moment - 10 * _DAY, moment - _DAY
    if not rotated:
        return NodeIdentity.generate(key_type, not_before=start, not_after=end, now=moment)
    base = NodeIdentity.generate(key_type, now=moment)
    return base.rotate(not_before=start, not_after=end, now=moment)


def not_yet_valid_identity(
    key_type: KeyType = "ed25519", *, now: datetime | None = None
) -> NodeIdentity:
    """A node whose only certificate becomes valid a day after ``now`` →
    ``CertificateNotYetValidError``."""
    moment = _now(now)
    return NodeIdentity.generate(
        key_type, not_before=moment + _DAY, not_after=moment + 10 * _DAY, now=moment
    )


def broken_chain_identity(
    key_type: KeyType = "ed25519", *, now: datetime | None = None
) -> NodeIdentity:
    """A rotated node whose leaf names its predecessor as issuer (name and key id) but
    is signed by an unrelated key → ``BrokenChainError`` at index 0 (bad signature)."""
    moment = _now(now)
    base = NodeIdentity.generate(key_type, now=moment)
    new_key = generate_private_key(key_type)
    forged = build_node_certificate(
        node_id=base.node_id,
        subject_key=new_key.public_key(),
        issuer_key=generate_private_key(key_type),
        issuer_certificate=base.certificate,
        not_before=moment - _DAY,
        not_after=moment + 10 * _DAY,
        authority_key=base.public_key,
    )
    return NodeIdentity(base.node_id, new_key, [forged, *base.chain])


def untrusted_root_identity(
    key_type: KeyType = "ed25519",
    *,
    claimed_node_id: NodeId | None = None,
    now: datetime | None = None,
) -> NodeIdentity:
    """An impostor: a well-formed self-signed chain claiming ``claimed_node_id`` (default:
    the id of another, freshly made node) whose root key does not derive that id →
    ``UntrustedRootError``."""
    moment = _now(now)
    claimed = claimed_node_id or NodeIdentity.generate(key_type, now=moment).node_id
    key = generate_private_key(key_type)
    root = build_node_certificate(
        node_id=claimed,
        subject_key=key.public_key(),
        issuer_key=key,
        issuer_certificate=None,
        not_before=moment - _DAY,
        not_after=moment + 10 * _DAY,
    )
    return NodeIdentity(claimed, key, [root])


def ca_issued_identity(
    key_type: KeyType = "ed25519",
    *,
    common_name: str = "localhost",
    now: datetime | None = None,
) -> NodeIdentity:
    """An ordinary TLS certificate issued by a plain CA, naming no node id →
    ``MissingNodeIdError`` at index 0. Its ``node_id`` is the one the leaf key would
    derive; nothing in the chain claims it."""
    moment = _now(now)
    ca_key = generate_private_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quicshift test CA")])
    start, end = moment - _DAY, moment + 10 * _DAY
    ca = _plain_certificate(
        ca_name, ca_name, ca_key, ca_key, ca=True, not_before=start, not_after=end
    )
    leaf_key = generate_private_key(key_type)
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    leaf = _plain_certificate(
        leaf_name,
        ca_name,
        leaf_key,
        ca_key,
        ca=False,
        dns_name=common_name,
        not_before=start,
        not_after=end,
    )
    return NodeIdentity(NodeId.from_public_key(leaf_key.public_key()), leaf_key, [leaf, ca])


def inconsistent_node_id_identity(
    key_type: KeyType = "ed25519", *, now: datetime | None = None
) -> NodeIdentity:
    """A rotated node whose new leaf, correctly signed by its predecessor, names a
    different node id → ``InconsistentNodeIdError`` at index 0."""
    moment = _now(now)
    base = NodeIdentity.generate(key_type, now=moment)
    other = NodeIdentity.generate(key_type, now=moment).node_id
    new_key = generate_private_key(key_type)
    leaf = build_node_certificate(
        node_id=other,
        subject_key=new_key.public_key(),
        issuer_key=base.private_key,
        issuer_certificate=base.certificate,
        not_before=moment - _DAY,
        not_after=moment + 10 * _DAY,
    )
    return NodeIdentity(base.node_id, new_key, [leaf, *base.chain])


def non_signing_issuer_identity(
    key_type: KeyType = "ed25519", *, now: datetime | None = None
) -> NodeIdentity:
    """A rotated node whose root was issued without keyCertSign / CA but signed the leaf
    anyway → ``KeyUsageError`` at index 1."""
    moment = _now(now)
    start, end = moment - _DAY, moment + 10 * _DAY
    root_key = generate_private_key(key_type)
    node_id = NodeId.from_public_key(root_key.public_key())
    root = build_node_certificate(
        node_id=node_id,
        subject_key=root_key.public_key(),
        issuer_key=root_key,
        issuer_certificate=None,
        can_sign=False,
        not_before=start,
        not_after=end,
    )
    leaf_key = generate_private_key(key_type)
    leaf = build_node_certificate(
        node_id=node_id,
        subject_key=leaf_key.public_key(),
        issuer_key=root_key,
        issuer_certificate=root,
        not_before=start,
        not_after=end,
    )
    return NodeIdentity(node_id, leaf_key, [leaf, root])


def _plain_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    subject_key: NodePrivateKey,
    issuer_key: NodePrivateKey,
    *,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
    dns_name: str | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if dns_name is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False
        )
    return builder.sign(issuer_key, signature_hash(issuer_key))
