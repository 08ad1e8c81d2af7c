"""A node's identity: its current private key and the certificate chain proving its id.

The id is fixed by the first (root) key. :meth:`NodeIdentity.rotate` makes a new key
and a certificate for it signed by the previous key, so the chain ``[new, ..., root]``
still proves the same id. The root's validity window bounds the identity's lifetime:
rotation changes the key, not the root, so pick the root's ``validity`` accordingly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.identity.certificates import (
    KeyType,
    NodePrivateKey,
    NodePublicKey,
    build_node_certificate,
    generate_private_key,
    key_type_of,
    sign_data,
)
from agent.identity.errors import (
    IdentityError,
    IdentityLoadError,
    NodeVerificationError,
    RotationLimitError,
    UnsupportedKeyTypeError,
)
from agent.identity.verification import MAX_CHAIN_LENGTH, verified_chain, verify_node_chain
from agent.nodeid import NodeId

__all__ = [
    "CHAIN_FILE_NAME",
    "CLOCK_SKEW_ALLOWANCE",
    "DEFAULT_VALIDITY",
    "KEY_FILE_NAME",
    "IdentityFiles",
    "NodeIdentity",
]

DEFAULT_VALIDITY: Final = timedelta(days=365 * 10)
"""Default certificate lifetime. Long, because the root's lifetime is the identity's."""
CLOCK_SKEW_ALLOWANCE: Final = timedelta(minutes=5)
"""New certificates are back-dated by this much so peers with slow clocks accept them."""
KEY_FILE_NAME: Final = "private_key.pem"
CHAIN_FILE_NAME: Final = "chain.pem"


class IdentityFiles(NamedTuple):
    """Where :meth:`NodeIdentity.save` put the identity (``load_cert_chain(chain, key)``)."""

    key_file: Path
    chain_file: Path


class NodeIdentity:
    """A node id, the node's current private key and its chain (leaf first, root last).

    The constructor checks only that the chain is non-empty and the key belongs to the
    leaf, so test helpers can build deliberately invalid identities; use
    :meth:`generate`, :meth:`load` or :meth:`from_pem` for real ones, or :meth:`verify`.
    """

    __slots__ = ("_chain", "_node_id", "_private_key")

    def __init__(
        self, node_id: NodeId, private_key: NodePrivateKey, chain: Sequence[x509.Certificate]
    ) -> None:
        if not isinstance(node_id, NodeId):
            raise TypeError(f"node_id must be a NodeId, not {type(node_id).__name__}")
        key_type_of(private_key)
        if isinstance(chain, x509.Certificate) or not chain:
            raise IdentityError("an identity needs a non-empty certificate chain, leaf first")
        for index, cert in enumerate(chain):
            if not isinstance(cert, x509.Certificate):
                raise TypeError(f"chain[{index}] is a {type(cert).__name__}, not a certificate")
        if _spki(private_key.public_key()) != _spki(chain[0].public_key()):
            raise IdentityError("the private key does not belong to the leaf certificate")
        self._node_id = node_id
        self._private_key = private_key
        self._chain = tuple(chain)

    # -- construction ------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        key_type: KeyType = "ed25519",
        *,
        validity: timedelta = DEFAULT_VALIDITY,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
    ) -> NodeIdentity:
        """A new node: a fresh key and a self-signed root certificate naming its id."""
        start, end = _validity_window(validity, not_before, not_after, now)
        key = generate_private_key(key_type)
        node_id = NodeId.from_public_key(key.public_key())
        root = build_node_certificate(
            node_id=node_id,
            subject_key=key.public_key(),
            issuer_key=key,
            issuer_certificate=None,
            not_before=start,
            not_after=end,
        )
        return cls(node_id, key, [root])

    def rotate(
        self,
        new_key_type: KeyType | None = None,
        *,
        validity: timedelta = DEFAULT_VALIDITY,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        now: datetime | None = None,
        max_length: int = MAX_CHAIN_LENGTH,
    ) -> NodeIdentity:
        """A new identity for the same node: a new key (same type unless given), its
        certificate signed by the current key, chain ``[new, *self.chain]``. ``self``
        is left unchanged."""
        if len(self._chain) + 1 > max_length:
            raise RotationLimitError(
                f"node {self._node_id} has {len(self._chain)} certificates; another rotation "
                f"would exceed the {max_length} verifiers accept"
            )
        start, end = _validity_window(validity, not_before, not_after, now)
        key = generate_private_key(new_key_type or self.key_type)
        cert = build_node_certificate(
            node_id=self._node_id,
            subject_key=key.public_key(),
            issuer_key=self._private_key,
            issuer_certificate=self._chain[0],
            not_before=start,
            not_after=end,
        )
        return NodeIdentity(self._node_id, key, [cert, *self._chain])

    @classmethod
    def from_pem(
        cls, key_pem: bytes, chain_pem: bytes, *, password: bytes | str | None = None
    ) -> NodeIdentity:
        """Load a PEM private key and PEM chain (leaf first).

        The chain must prove a node id and the key must be the leaf's; validity times
        are not checked, so an expired identity still loads (to inspect it). Raises
        :class:`IdentityLoadError`.
        """
        try:
            key = serialization.load_pem_private_key(
                bytes(key_pem),
                password=password.encode() if isinstance(password, str) else password,
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise IdentityLoadError(f"cannot load the private key: {exc}") from None
        if not isinstance(key, NodePrivateKey):
            raise IdentityLoadError(f"cannot use a {type(key).__name__} as a node key")
        try:
            key_type_of(key)
        except UnsupportedKeyTypeError as exc:
            raise IdentityLoadError(f"cannot use the private key: {exc}") from None
        try:
            certs = x509.load_pem_x509_certificates(bytes(chain_pem))
        except ValueError as exc:
            raise IdentityLoadError(f"cannot load the certificate chain: {exc}") from None
        try:
            node_id, certs = verified_chain(certs, now=None)
        except NodeVerificationError as exc:
            raise IdentityLoadError(f"the certificate chain is not a node chain: {exc}") from exc
        try:
            return cls(node_id, key, certs)
        except IdentityError as exc:
            raise IdentityLoadError(str(exc)) from None

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, password: bytes | str | None = None
    ) -> NodeIdentity:
        """Load what :meth:`save` wrote into ``directory``."""
        folder = Path(directory)
        try:
            key_pem = (folder / KEY_FILE_NAME).read_bytes()
            chain_pem = (folder / CHAIN_FILE_NAME).read_bytes()
        except OSError as exc:
            raise IdentityLoadError(f"cannot read the identity in {folder}: {exc}") from None
        return cls.from_pem(key_pem, chain_pem, password=password)

    # -- properties --------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    @property
    def private_key(self) -> NodePrivateKey:
        return self._private_key

    @property
    def public_key(self) -> NodePublicKey:
        return self._private_key.public_key()

    @property
    def key_type(self) -> KeyType:
        return key_type_of(self._private_key)

    @property
    def chain(self) -> list[x509.Certificate]:
        """The chain, leaf first, root last (a fresh list each time)."""
        return list(self._chain)

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (the current key's)."""
        return self._chain[0]

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._chain[-1]

    # -- use ---------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the current key (check with ``verify_signature``)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        return sign_data(self._private_key, bytes(data))

    def verify(self, *, now: datetime | None = None) -> NodeId:
        """Verify this identity's own chain as a peer would; returns the node id."""
        return verify_node_chain(self._chain, self._node_id, now=now)

    # -- serialization -----------------------------------------------------------

    def private_key_pem(self, password: bytes | str | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted when ``password`` is given."""
        encryption: serialization.KeySerializationEncryption
        if password:
            raw = password.encode() if isinstance(password, str) else bytes(password)
            encryption = serialization.BestAvailableEncryption(raw)
        else:
            encryption = serialization.NoEncryption()
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM, leaf first (what TLS stacks load as certfile)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._chain)

    def chain_der(self) -> list[bytes]:
        """The chain as DER, leaf first (what transports hand to verifiers)."""
        return [c.public_bytes(serialization.Encoding.DER) for c in self._chain]

    def save(
        self, directory: str | os.PathLike[str], *, password: bytes | str | None = None
    ) -> IdentityFiles:
        """Write ``private_key.pem`` (mode 0600) and ``chain.pem`` into ``directory``
        (created, mode 0700, if missing). Each file is replaced atomically."""
        folder = Path(directory)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file = folder / KEY_FILE_NAME
        chain_file = folder / CHAIN_FILE_NAME
        _write_atomically(key_file, self.private_key_pem(password), mode=0o600)
        _write_atomically(chain_file, self.chain_pem(), mode=0o644)
        return IdentityFiles(key_file, chain_file)

    def __repr__(self) -> str:
        return (
            f"NodeIdentity({self._node_id!s}, key_type={self.key_type!r}, "
            f"chain_length={len(self._chain)})"
        )


def _spki(key: object) -> bytes:
    if not isinstance(key, NodePublicKey):
        raise UnsupportedKeyTypeError(f"unsupported key {type(key).__name__}")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _validity_window(
    validity: timedelta,
    not_before: datetime | None,
    not_after: datetime | None,
    now: datetime | None,
) -> tuple[datetime, datetime]:
    if not isinstance(validity, timedelta) or validity <= timedelta(0):
        raise ValueError(f"validity must be a positive timedelta, got {validity!r}")
    for name, moment in (("not_before", not_before), ("not_after", not_after), ("now", now)):
        if moment is not None and (not isinstance(moment, datetime) or moment.utcoffset() is None):
            raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    current = now if now is not None else datetime.now(UTC)
    start = not_before if not_before is not None else current - CLOCK_SKEW_ALLOWANCE
    end = not_after if not_after is not None else current + validity
    if end <= start:
        raise ValueError(
            f"not_after ({end.isoformat()}) must be after not_before ({start.isoformat()})"
        )
    return start, end


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(temp_name, mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
