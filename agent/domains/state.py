"""The agent's persistent state: one SQLite database (WAL) under the agent's state dir.

One :class:`AgentState` per agent holds one connection. Every access goes through a
re-entrant lock, so domain objects may be used from any thread: asyncio code calls them
directly for quick reads or through ``asyncio.to_thread`` for anything that may block.
Writes happen in :meth:`AgentState.transaction` (``BEGIN IMMEDIATE`` … ``COMMIT``, rolled
back on any exception).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from agent.domains.errors import InvalidInputError, StateClosedError

__all__ = ["DATABASE_NAME", "AgentState"]

DATABASE_NAME: Final = "agent.sqlite3"
_BUSY_TIMEOUT_S: Final = 30.0


class AgentState:
    """The state directory of one agent and its SQLite connection.

    ``AgentState.open(state_dir)`` creates the directory if needed. Domains register
    their schema with :meth:`ensure_schema` (idempotent ``CREATE … IF NOT EXISTS``).
    """

    def __init__(self, state_dir: Path, connection: sqlite3.Connection) -> None:
        self._state_dir = state_dir
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.RLock()
        self._in_transaction = False

    @classmethod
    def open(cls, state_dir: str | Path) -> AgentState:
        """Open (creating if needed) the state under ``state_dir``."""
        path = Path(state_dir)
        if path.exists() and not path.is_dir():
            raise InvalidInputError(f"state dir {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            path / DATABASE_NAME,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by our lock
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            connection.close()
            raise
        return cls(path.resolve(), connection)

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def closed(self) -> bool:
        return self._connection is None

    def close(self) -> None:
        """Close the connection (idempotent); later use raises StateClosedError."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> AgentState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StateClosedError("agent state is closed")
        return self._connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run a write transaction; nested use joins the outer one."""
        with self._lock:
            conn = self._conn()
            if self._in_transaction:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield conn
            except BaseException:
                self._in_transaction = False
                conn.execute("ROLLBACK")
                raise
            self._in_transaction = False
            conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; returns the row count."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all rows (a consistent snapshot)."""
        with self._lock:
            return list(self._conn().execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row = self._conn().execute(sql, params).fetchone()
            return None if row is None else tuple(row)

    def ensure_schema(self, statements: Sequence[str]) -> None:
        """Apply idempotent DDL statements in one transaction."""
        with self.transaction() as conn:
            for statement in statements:
                conn.execute(statement)
