"""Vaults: named collections of files under the agent's state dir, shared per node.

Layout: ``<state_dir>/vaults/<vault id hex>/g<generation>/<file path>``. Metadata (name,
id, generation, permissions) lives in the state database. A file write replaces the file
atomically. Importing a pulled archive builds a new generation beside the current one and
switches to it in one step, so readers never see a half-applied pull; the old generation
is removed once no archive stream still reads from it.

Permissions are per (vault, node): :attr:`VaultPermission.SCAN` lets a node see the vault
in a scan, :attr:`VaultPermission.PULL` lets it pull the content (and see it).
"""

from __future__ import annotations

import enum
import os
import shutil
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

from agent.domains.errors import (
    DomainError,
    InvalidInputError,
    NotFoundError,
    VaultArchiveError,
    VaultExistsError,
)
from agent.domains.pagination import (
    Page,
    PageRequest,
    SortOrder,
    decode_cursor,
    page_from_rows,
)
from agent.domains.state import AgentState
from agent.domains.vault_archive import (
    DEFAULT_CHUNK_SIZE,
    ArchiveFileData,
    ArchiveFileEnded,
    ArchiveFileStarted,
    VaultArchiveParser,
    check_vault_path,
    write_archive,
)
from agent.nodeid import NodeId

__all__ = [
    "MAX_VAULT_NAME",
    "ScannedVault",
    "VaultImport",
    "VaultInfo",
    "VaultPermission",
    "VaultStore",
    "check_vault_name",
]

MAX_VAULT_NAME: Final = 255
_CURSOR_NAMESPACE: Final = "vaults.scan"
_VAULTS_DIR: Final = "vaults"
_TMP_DIR: Final = ".tmp"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS vaults (
        vault_id BLOB PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        generation INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS vault_permissions (
        vault_id BLOB NOT NULL REFERENCES vaults (vault_id) ON DELETE CASCADE,
        node_id BLOB NOT NULL,
        permissions INTEGER NOT NULL,
        PRIMARY KEY (vault_id, node_id)
    )""",
    "CREATE INDEX IF NOT EXISTS vault_permissions_by_node ON vault_permissions (node_id)",
)


class VaultPermission(enum.Flag):
    NONE = 0
    SCAN = 1
    PULL = 2
    ALL = SCAN | PULL

    def names(self) -> list[str]:
        """Lowercase names of the set flags: ``["scan", "pull"]``."""
        return [
            label
            for flag, label in ((VaultPermission.SCAN, "scan"), (VaultPermission.PULL, "pull"))
            if flag in self
        ]


@dataclass(frozen=True, slots=True)
class VaultInfo:
    vault_id: bytes
    name: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ScannedVault:
    """A vault as a node sees it in a scan, with that node's permissions."""

    info: VaultInfo
    permissions: VaultPermission


def check_vault_name(name: str) -> str:
    """Validate a vault name: 1..255 printable characters, no surrounding whitespace."""
    if not isinstance(name, str):
        raise InvalidInputError(f"vault name must be a str, not {type(name).__name__}")
    if not 0 < len(name) <= MAX_VAULT_NAME:
        raise InvalidInputError(f"vault name must be 1..{MAX_VAULT_NAME} characters")
    if not name.isprintable() or name != name.strip():
        raise InvalidInputError(
            f"vault name must be printable with no surrounding spaces: {name!r}"
        )
    return name


def _check_node(node_id: object) -> NodeId:
    if not isinstance(node_id, NodeId):
        raise InvalidInputError(f"node id must be a NodeId, not {type(node_id).__name__}")
    return node_id


class VaultStore:
    """Persistent vaults of one agent.

    Use one VaultStore per agent state: opening one recovers from a crash by clearing
    unfinished imports and unreferenced generations, which would disturb another
    instance's work in progress.
    """

    def __init__(
        self,
        state: AgentState,
        *,
        max_import_bytes: int = 1 << 30,
        max_import_files: int = 100_000,
    ) -> None:
        self._state = state
        self._max_import_bytes = max_import_bytes
        self._max_import_files = max_import_files
        self._root = state.state_dir / _VAULTS_DIR
        self._tmp = self._root / _TMP_DIR
        self._lock = threading.RLock()
        self._readers: dict[Path, int] = {}
        self._retired: set[Path] = set()
        state.ensure_schema(_SCHEMA)
        self._root.mkdir(exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir()
        self._remove_stale_generations()

    # -- metadata ------------------------------------------------------------------

    def _remove_stale_generations(self) -> None:
        current = {
            self._generation_dir(bytes(vid), int(gen))
            for vid, gen in self._state.query("SELECT vault_id, generation FROM vaults")
        }
        for vault_dir in self._root.iterdir():
            if vault_dir.name == _TMP_DIR or not vault_dir.is_dir():
                continue
            for gen_dir in vault_dir.iterdir():
                if gen_dir not in current:
                    shutil.rmtree(gen_dir, ignore_errors=True)
            if not any(vault_dir.iterdir()):
                vault_dir.rmdir()

    def _generation_dir(self, vault_id: bytes, generation: int) -> Path:
        return self._root / vault_id.hex() / f"g{generation}"

    @staticmethod
    def _info(row: Sequence[Any]) -> VaultInfo:
        return VaultInfo(vault_id=bytes(row[0]), name=str(row[1]), created_at_ms=int(row[2]))

    def _lookup(self, name: str) -> tuple[VaultInfo, Path]:
        check_vault_name(name)
        row = self._state.query_one(
            "SELECT vault_id, name, created_at_ms, generation FROM vaults WHERE name = ?", (name,)
        )
        if row is None:
            raise NotFoundError(f"no vault named {name!r}")
        info = self._info(row)
        return info, self._generation_dir(info.vault_id, int(row[3]))

    def create_vault(self, name: str) -> VaultInfo:
        """Create an empty vault; raises VaultExistsError if the name is taken."""
        check_vault_name(name)
        vault_id = os.urandom(16)
        created = int(time.time() * 1000)
        with self._lock, self._state.transaction() as conn:
            if conn.execute("SELECT 1 FROM vaults WHERE name = ?", (name,)).fetchone():
                raise VaultExistsError(f"a vault named {name!r} already exists")
            conn.execute(
                "INSERT INTO vaults (vault_id, name, created_at_ms, generation) VALUES (?, ?, ?, 1)",
                (vault_id, name, created),
            )
            self._generation_dir(vault_id, 1).mkdir(parents=True)
        return VaultInfo(vault_id=vault_id, name=name, created_at_ms=created)

    def get_vault(self, name: str) -> VaultInfo | None:
        try:
            return self._lookup(name)[0]
        except NotFoundError:
            return None

    def list_vaults(self) -> list[VaultInfo]:
        """All vaults, by name."""
        rows = self._state.query("SELECT vault_id, name, created_at_ms FROM vaults ORDER BY name")
        return [self._info(r) for r in rows]

    def delete_vault(self, name: str) -> None:
        with self._lock:
            info, gen_dir = self._lookup(name)
            self._state.execute("DELETE FROM vaults WHERE vault_id = ?", (info.vault_id,))
            self._retire(gen_dir)

    def _retire(self, gen_dir: Path) -> None:
        with self._lock:
            if self._readers.get(gen_dir, 0):
                self._retired.add(gen_dir)
                return
            self._retired.discard(gen_dir)
        shutil.rmtree(gen_dir, ignore_errors=True)
        try:
            gen_dir.parent.rmdir()  # the vault dir, if this was its last generation
        except OSError:
            pass

    # -- permissions -----------------------------------------------------------------

    def grant(
        self, name: str, node_id: NodeId, permissions: VaultPermission = VaultPermission.ALL
    ) -> VaultPermission:
        """Add ``permissions`` for ``node_id`` on vault ``name``; returns what it now has."""
        _check_node(node_id)
        with self._lock:
            info, _ = self._lookup(name)
            now = self.permissions_of(name, node_id) | permissions
            self._state.execute(
                "INSERT OR REPLACE INTO vault_permissions (vault_id, node_id, permissions)"
                " VALUES (?, ?, ?)",
                (info.vault_id, node_id.raw, now.value),
            )
        return now

    def revoke(
        self, name: str, node_id: NodeId, permissions: VaultPermission = VaultPermission.ALL
    ) -> VaultPermission:
        """Remove ``permissions`` for ``node_id`` on vault ``name``; returns what is left."""
        _check_node(node_id)
        with self._lock:
            info, _ = self._lookup(name)
            left = self.permissions_of(name, node_id) & ~permissions
            if left:
                self._state.execute(
                    "UPDATE vault_permissions SET permissions = ? WHERE vault_id = ? AND node_id = ?",
                    (left.value, info.vault_id, node_id.raw),
                )
            else:
                self._state.execute(
                    "DELETE FROM vault_permissions WHERE vault_id = ? AND node_id = ?",
                    (info.vault_id, node_id.raw),
                )
        return left

    def permissions_of(self, name: str, node_id: NodeId) -> VaultPermission:
        """``node_id``'s permissions on vault ``name`` (NotFoundError if no such vault)."""
        _check_node(node_id)
        info, _ = self._lookup(name)
        row = self._state.query_one(
            "SELECT permissions FROM vault_permissions WHERE vault_id = ? AND node_id = ?",
            (info.vault_id, node_id.raw),
        )
        return VaultPermission(int(row[0])) if row else VaultPermission.NONE

    def can_see(self, name: str, node_id: NodeId) -> bool:
        return bool(self.permissions_of(name, node_id) & VaultPermission.ALL)

    def can_pull(self, name: str, node_id: NodeId) -> bool:
        return VaultPermission.PULL in self.permissions_of(name, node_id)

    def scan_page(self, node_id: NodeId, request: PageRequest) -> Page[ScannedVault]:
        """The vaults ``node_id`` may see (SCAN or PULL), by name, one page."""
        _check_node(node_id)
        after = decode_cursor(_CURSOR_NAMESPACE, request.cursor, request.order)
        ascending = request.order is SortOrder.ASC
        sql = (
            "SELECT v.vault_id, v.name, v.created_at_ms, p.permissions FROM vaults v"
            " JOIN vault_permissions p ON p.vault_id = v.vault_id"
            " WHERE p.node_id = ? AND p.permissions != 0"
        )
        params: list[Any] = [node_id.raw]
        if after is not None:
            try:
                params.append(after.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInputError("vault scan cursor is malformed") from None
            sql += " AND v.name > ?" if ascending else " AND v.name < ?"
        sql += " ORDER BY v.name " + ("ASC" if ascending else "DESC") + " LIMIT ?"
        params.append(request.page_size + 1)
        rows = [
            ScannedVault(self._info(r), VaultPermission(int(r[3])))
            for r in self._state.query(sql, params)
        ]
        return page_from_rows(
            rows, request, _CURSOR_NAMESPACE, lambda v: v.info.name.encode("utf-8")
        )

    # -- files -----------------------------------------------------------------------

    def write_file(self, name: str, path: str, data: bytes) -> None:
        """Create or replace file ``path`` (``a/b.txt``) in vault ``name`` atomically."""
        check_vault_path(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError("file data must be bytes")
        with self._lock:
            _, gen_dir = self._lookup(name)
            target = gen_dir / path
            parent = gen_dir
            for part in path.split("/")[:-1]:
                parent = parent / part
                if parent.exists() and not parent.is_dir():
                    raise InvalidInputError(
                        f"{parent.relative_to(gen_dir)!s} is a file, not a directory"
                    )
            if target.is_dir():
                raise InvalidInputError(f"{path!r} is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._tmp / f"write-{os.urandom(8).hex()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def read_file(self, name: str, path: str) -> bytes:
        check_vault_path(path)
        _, gen_dir = self._lookup(name)
        try:
            return (gen_dir / path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"vault {name!r} has no file {path!r}") from None

    def delete_file(self, name: str, path: str) -> None:
        check_vault_path(path)
        with self._lock:
            _, gen_dir = self._lookup(name)
            target = gen_dir / path
            try:
                target.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                raise NotFoundError(f"vault {name!r} has no file {path!r}") from None
            parent = target.parent
            while parent != gen_dir and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def list_files(self, name: str) -> list[str]:
        """Paths of the files in vault ``name``, sorted."""
        _, gen_dir = self._lookup(name)
        return [path for path, _ in self._walk(gen_dir)]

    @staticmethod
    def _walk(gen_dir: Path) -> list[tuple[str, Path]]:
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(gen_dir, followlinks=False):
            base = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
            for filename in filenames:
                full = base / filename
                if full.is_symlink() or not full.is_file():
                    continue
                found.append((full.relative_to(gen_dir).as_posix(), full))
        found.sort(key=lambda item: item[0].encode("utf-8"))
        return found

    # -- pull ------------------------------------------------------------------------

    def archive_chunks(
        self, name: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Generator[bytes, None, None]:
        """Vault ``name`` as a deterministic archive byte stream, in chunks.

        Raises NotFoundError (on first ``next``) if there is no such vault. Each file is
        read in one consistent version; an import switching generations meanwhile does
        not disturb the stream.
        """
        with self._lock:
            _, gen_dir = self._lookup(name)
            files = self._walk(gen_dir)
            self._readers[gen_dir] = self._readers.get(gen_dir, 0) + 1
        try:
            yield from write_archive(self._opened(files), chunk_size)
        finally:
            with self._lock:
                self._readers[gen_dir] -= 1
                release = not self._readers[gen_dir] and gen_dir in self._retired
                if not self._readers[gen_dir]:
                    del self._readers[gen_dir]
            if release:
                self._retire(gen_dir)

    @staticmethod
    def _opened(files: Iterable[tuple[str, Path]]) -> Iterator[tuple[str, BinaryIO, int]]:
        for path, full in files:
            try:
                stream = open(full, "rb")
            except FileNotFoundError:
                continue  # deleted since the listing: the snapshot no longer has it
            with stream:
                yield path, stream, os.fstat(stream.fileno()).st_size

    def archive_bytes(self, name: str) -> bytes:
        """The whole archive of vault ``name`` at once (for small vaults and tests)."""
        return b"".join(self.archive_chunks(name))

    def begin_import(self, name: str) -> VaultImport:
        """Start applying a pulled archive to vault ``name`` (created if absent)."""
        check_vault_name(name)
        return VaultImport(self, name)

    def import_archive(self, name: str, chunks: Iterable[bytes]) -> VaultInfo:
        """Apply a whole archive stream to vault ``name``; replaces its files on success."""
        with self.begin_import(name) as importer:
            for chunk in chunks:
                importer.feed(chunk)
            return importer.finish()

    def _new_staging_dir(self) -> Path:
        staging = self._tmp / f"import-{os.urandom(8).hex()}"
        staging.mkdir()
        return staging

    def _new_parser(self) -> VaultArchiveParser:
        return VaultArchiveParser(
            max_total_bytes=self._max_import_bytes, max_files=self._max_import_files
        )

    def _install(self, name: str, staging: Path) -> VaultInfo:
        """Make ``staging`` the content of vault ``name`` (creating the vault if needed)."""
        with self._lock, self._state.transaction() as conn:
            row = conn.execute(
                "SELECT vault_id, name, created_at_ms, generation FROM vaults WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                info = VaultInfo(os.urandom(16), name, int(time.time() * 1000))
                generation, old_dir = 1, None
                conn.execute(
                    "INSERT INTO vaults (vault_id, name, created_at_ms, generation)"
                    " VALUES (?, ?, ?, 1)",
                    (info.vault_id, name, info.created_at_ms),
                )
            else:
                info = self._info(row)
                generation = int(row[3]) + 1
                old_dir = self._generation_dir(info.vault_id, int(row[3]))
                conn.execute(
                    "UPDATE vaults SET generation = ? WHERE vault_id = ?",
                    (generation, info.vault_id),
                )
            new_dir = self._generation_dir(info.vault_id, generation)
            new_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(new_dir, ignore_errors=True)  # leftover of a crashed import
            os.replace(staging, new_dir)
        if old_dir is not None:
            self._retire(old_dir)
        return info


class VaultImport:
    """Applies one pulled archive to a vault: ``feed`` chunks, then ``finish``.

    Nothing changes in the vault until ``finish`` succeeds; on any error (or ``abort``)
    the partial import is removed. Use as a context manager to abort on exceptions.
    """

    def __init__(self, store: VaultStore, name: str) -> None:
        self._store = store
        self._name = name
        self._parser = store._new_parser()
        self._staging: Path | None = store._new_staging_dir()
        self._file: BinaryIO | None = None

    def _staging_dir(self) -> Path:
        if self._staging is None:
            raise DomainError("this vault import is already finished or aborted")
        return self._staging

    def feed(self, chunk: bytes) -> None:
        staging = self._staging_dir()
        try:
            for event in self._parser.feed(bytes(chunk)):
                if isinstance(event, ArchiveFileStarted):
                    target = staging / event.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(target, "wb")
                elif isinstance(event, ArchiveFileData):
                    if self._file is None:
                        raise VaultArchiveError("file data outside a file record")
                    self._file.write(event.data)
                elif isinstance(event, ArchiveFileEnded) and self._file is not None:
                    self._file.close()
                    self._file = None
        except BaseException:
            self.abort()
            raise

    def finish(self) -> VaultInfo:
        """Check the archive is complete and switch the vault to it."""
        staging = self._staging_dir()
        try:
            self._parser.close()
            info = self._store._install(self._name, staging)
        except BaseException:
            self.abort()
            raise
        self._staging = None
        return info

    def abort(self) -> None:
        """Drop the partial import (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> VaultImport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
