"""The notification inbox: signed notifications from other nodes, newest kept.

A notification is signed by its sender over :func:`notification_signing_bytes`; the
servicer checks the signature (and that the sender is the caller) before it reaches the
inbox. The inbox keeps at most ``max_size`` entries: adding one more drops the oldest.
Entries are numbered in arrival order; a repeated (sender, notification id) is stored once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.domains._codec import pack_bytes, pack_str, pack_u64
from agent.domains.errors import InvalidInputError, NotFoundError, SignatureVerificationError
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
from agent.nodeid import NodeId

__all__ = [
    "DEFAULT_INBOX_SIZE",
    "MAX_NOTIFICATION_DATA",
    "InboxEntry",
    "Notification",
    "NotificationInbox",
    "SignedNotification",
    "new_notification",
    "notification_signing_bytes",
    "sign_notification",
    "verify_notification",
]

DEFAULT_INBOX_SIZE: Final = 10_000
MAX_NOTIFICATION_DATA: Final = 64 * 1024
_MAX_CHAIN_CERTS: Final = 16
_SIGNING_DOMAIN: Final = b"quicshift/notification/v1\x00"
_CURSOR_NAMESPACE: Final = "notifications"
_MAX_TIME: Final = 2**63 - 1

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS notifications (
        entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
        notification_id BLOB NOT NULL,
        sender BLOB NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        sent_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        read INTEGER NOT NULL DEFAULT 0,
        UNIQUE (sender, notification_id)
    )""",
)


@dataclass(frozen=True, slots=True)
class Notification:
    notification_id: bytes
    sender: NodeId
    type: str
    data: bytes
    sent_at_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.notification_id, bytes) or not 0 < len(self.notification_id) <= 64:
            raise InvalidInputError("notification_id must be 1..64 bytes")
        if not isinstance(self.sender, NodeId):
            raise InvalidInputError("notification sender must be a NodeId")
        if (
            not isinstance(self.type, str)
            or not 0 < len(self.type) <= 64
            or not self.type.isprintable()
        ):
            raise InvalidInputError("notification type must be 1..64 printable characters")
        if not isinstance(self.data, bytes) or len(self.data) > MAX_NOTIFICATION_DATA:
            raise InvalidInputError(
                f"notification data must be bytes of at most {MAX_NOTIFICATION_DATA}"
            )
        if (
            isinstance(self.sent_at_ms, bool)
            or not isinstance(self.sent_at_ms, int)
            or not 0 <= self.sent_at_ms <= _MAX_TIME
        ):
            raise InvalidInputError("sent_at_ms must be a non-negative 63-bit int")


@dataclass(frozen=True, slots=True)
class SignedNotification:
    notification: Notification
    sender_chain: tuple[bytes, ...]
    signature: bytes

    def __post_init__(self) -> None:
        chain = tuple(self.sender_chain)
        if not 0 < len(chain) <= _MAX_CHAIN_CERTS:
            raise InvalidInputError(f"sender chain must hold 1..{_MAX_CHAIN_CERTS} certificates")
        if not all(isinstance(c, bytes) and c for c in chain):
            raise InvalidInputError("sender chain certificates must be non-empty DER bytes")
        object.__setattr__(self, "sender_chain", chain)
        if not isinstance(self.signature, bytes) or not 0 < len(self.signature) <= 1024:
            raise InvalidInputError("signature must be 1..1024 bytes")


@dataclass(frozen=True, slots=True)
class InboxEntry:
    entry_id: int
    notification: Notification
    received_at_ms: int
    read: bool


def notification_signing_bytes(notification: Notification) -> bytes:
    """The canonical bytes a notification's signature covers."""
    return b"".join(
        (
            _SIGNING_DOMAIN,
            pack_bytes(notification.notification_id),
            notification.sender.raw,
            pack_str(notification.type),
            pack_bytes(notification.data),
            pack_u64(notification.sent_at_ms),
        )
    )


def new_notification(
    sender: NodeId,
    notification_type: str,
    data: bytes,
    *,
    sent_at_ms: int | None = None,
    notification_id: bytes | None = None,
) -> Notification:
    return Notification(
        notification_id=os.urandom(16) if notification_id is None else notification_id,
        sender=sender,
        type=notification_type,
        data=data,
        sent_at_ms=int(time.time() * 1000) if sent_at_ms is None else sent_at_ms,
    )


def sign_notification(notification: Notification, identity: SigningIdentity) -> SignedNotification:
    if identity.node_id != notification.sender:
        raise InvalidInputError("only the sender can sign a notification")
    return SignedNotification(
        notification=notification,
        sender_chain=tuple(identity.chain_der()),
        signature=identity.sign(notification_signing_bytes(notification)),
    )


def verify_notification(signed: SignedNotification) -> None:
    """Check that the chain proves the sender and signed the notification."""
    verify_signed_by(
        signed.notification.sender,
        signed.sender_chain,
        notification_signing_bytes(signed.notification),
        signed.signature,
        error=SignatureVerificationError,
        what="notification",
    )


class NotificationInbox:
    """Persistent, bounded inbox of received notifications."""

    _COLUMNS: Final = (
        "entry_id, notification_id, sender, type, data, sent_at_ms, received_at_ms, read"
    )

    def __init__(self, state: AgentState, *, max_size: int = DEFAULT_INBOX_SIZE) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidInputError(f"inbox max_size must be a positive int, got {max_size!r}")
        self._state = state
        self._max_size = max_size
        state.ensure_schema(_SCHEMA)
        with state.transaction() as conn:
            self._trim(conn)

    @property
    def max_size(self) -> int:
        return self._max_size

    @staticmethod
    def _entry(row: Sequence[Any]) -> InboxEntry:
        entry_id, notification_id, sender, ntype, data, sent_at, received_at, read = row
        return InboxEntry(
            entry_id=int(entry_id),
            notification=Notification(
                notification_id=bytes(notification_id),
                sender=NodeId(bytes(sender)),
                type=str(ntype),
                data=bytes(data),
                sent_at_ms=int(sent_at),
            ),
            received_at_ms=int(received_at),
            read=bool(read),
        )

    def _trim(self, conn: Any) -> None:
        conn.execute(
            "DELETE FROM notifications WHERE entry_id NOT IN"
            " (SELECT entry_id FROM notifications ORDER BY entry_id DESC LIMIT ?)",
            (self._max_size,),
        )

    def add(self, notification: Notification, *, received_at_ms: int | None = None) -> InboxEntry:
        """Store a (verified) notification; a repeat returns the existing entry."""
        if not isinstance(notification, Notification):
            raise InvalidInputError("expected a Notification")
        received = int(time.time() * 1000) if received_at_ms is None else received_at_ms
        if (
            isinstance(received, bool)
            or not isinstance(received, int)
            or not 0 <= received <= _MAX_TIME
        ):
            raise InvalidInputError("received_at_ms must be a non-negative 63-bit int")
        with self._state.transaction() as conn:
            row = conn.execute(
                f"SELECT {self._COLUMNS} FROM notifications"
                " WHERE sender = ? AND notification_id = ?",
                (notification.sender.raw, notification.notification_id),
            ).fetchone()
            if row is not None:
                return self._entry(row)
            cursor = conn.execute(
                "INSERT INTO notifications (notification_id, sender, type, data, sent_at_ms,"
                " received_at_ms, read) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    notification.notification_id,
                    notification.sender.raw,
                    notification.type,
                    notification.data,
                    notification.sent_at_ms,
                    received,
                ),
            )
            entry_id = int(cursor.lastrowid or 0)
            self._trim(conn)
        return InboxEntry(entry_id, notification, received, False)

    def get(self, entry_id: int) -> InboxEntry | None:
        row = self._state.query_one(
            f"SELECT {self._COLUMNS} FROM notifications WHERE entry_id = ?", (entry_id,)
        )
        return None if row is None else self._entry(row)

    def page(self, request: PageRequest, *, unread_only: bool = False) -> Page[InboxEntry]:
        """Entries in arrival order (ASC = oldest first), one page."""
        after = decode_cursor(_CURSOR_NAMESPACE, request.cursor, request.order)
        ascending = request.order is SortOrder.ASC
        sql = f"SELECT {self._COLUMNS} FROM notifications WHERE 1"
        params: list[Any] = []
        if unread_only:
            sql += " AND read = 0"
        if after is not None:
            sql += " AND entry_id > ?" if ascending else " AND entry_id < ?"
            params.append(decode_int_key(after))
        sql += " ORDER BY entry_id " + ("ASC" if ascending else "DESC") + " LIMIT ?"
        params.append(request.page_size + 1)
        rows = [self._entry(r) for r in self._state.query(sql, params)]
        return page_from_rows(
            rows, request, _CURSOR_NAMESPACE, lambda e: encode_int_key(e.entry_id)
        )

    def all(self) -> list[InboxEntry]:
        """Every entry, oldest first."""
        rows = self._state.query(f"SELECT {self._COLUMNS} FROM notifications ORDER BY entry_id")
        return [self._entry(r) for r in rows]

    def mark_read(self, entry_id: int, read: bool = True) -> None:
        """Set an entry's read flag; raises NotFoundError for an unknown entry."""
        changed = self._state.execute(
            "UPDATE notifications SET read = ? WHERE entry_id = ?", (int(read), entry_id)
        )
        if not changed:
            raise NotFoundError(f"no notification {entry_id}")

    def mark_all_read(self) -> int:
        return self._state.execute("UPDATE notifications SET read = 1 WHERE read = 0")

    def remove(self, entry_id: int) -> bool:
        return self._state.execute("DELETE FROM notifications WHERE entry_id = ?", (entry_id,)) > 0

    def clear(self) -> int:
        return self._state.execute("DELETE FROM notifications")

    def unread_count(self) -> int:
        row = self._state.query_one("SELECT COUNT(*) FROM notifications WHERE read = 0")
        return 0 if row is None else int(row[0])

    def __len__(self) -> int:
        row = self._state.query_one("SELECT COUNT(*) FROM notifications")
        return 0 if row is None else int(row[0])
