"""The bytes of uploaded documents (PDFs, images, any file attached to a resource).

A document's metadata is a store record (kind ``document``: title, owner, file name,
type, the resources it is attached to); its bytes live here, in the same database, so
every worker and every host serves the same file with no shared disk: the table
``geoharbor.document_files`` of the store's PostgreSQL database (``bytea``), or the
table ``document_files`` of the embedded store's SQLite file. A row is keyed by the
document record's id and carries the size and SHA-256 the download answers with.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from dataclasses import dataclass

import psycopg

from providers.errors import NotFound
from providers.store import PostgresStore, PostgresTables, SQLiteConnections, SQLiteStore, Store

_PG_DDL = """
CREATE SCHEMA IF NOT EXISTS geoharbor;
CREATE TABLE IF NOT EXISTS geoharbor.document_files (
  id bigint PRIMARY KEY,
  size bigint NOT NULL,
  sha256 text NOT NULL,
  content bytea NOT NULL,
  stored timestamptz NOT NULL DEFAULT now()
);
"""

_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS document_files (
  id INTEGER PRIMARY KEY,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  content BLOB NOT NULL,
  stored REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A document's bytes with what a download needs to say about them."""

    content: bytes
    size: int
    sha256: str


class DocumentFiles:
    """Documents' bytes in the store's database (PostgreSQL or the embedded SQLite file)."""

    def __init__(self, store: Store) -> None:
        if isinstance(store, PostgresStore):
            self._impl: _Backend = _PostgresFiles(store)
        elif isinstance(store, SQLiteStore):
            self._impl = _SQLiteFiles(store.path)
        else:
            raise TypeError(f"no document files for a {type(store).__name__}")

    def put(self, document_id: int, content: bytes) -> StoredFile:
        """Store (or replace) the bytes of document ``document_id``."""
        stored = StoredFile(bytes(content), len(content), hashlib.sha256(content).hexdigest())
        self._impl.put(document_id, stored)
        return stored

    def get(self, document_id: int) -> StoredFile:
        """The bytes of a document; NotFound when it has none (a link-only document)."""
        found = self._impl.get(document_id)
        if found is None:
            raise NotFound(f"document {document_id} has no stored file")
        return found

    def delete(self, document_id: int) -> bool:
        """Forget a document's bytes; whether there were any."""
        return self._impl.delete(document_id)


class _Backend:
    def put(self, document_id: int, stored: StoredFile) -> None:
        raise NotImplementedError

    def get(self, document_id: int) -> StoredFile | None:
        raise NotImplementedError

    def delete(self, document_id: int) -> bool:
        raise NotImplementedError


class _PostgresFiles(_Backend):
    """``geoharbor.document_files``, made on first use under an advisory lock (workers start together)."""

    def __init__(self, store: PostgresStore) -> None:
        self.db = store.db
        self._tables = PostgresTables(store.db, "geoharbor.document_files", _PG_DDL, "document store")

    def _connection(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return self._tables.connection()

    def put(self, document_id: int, stored: StoredFile) -> None:
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO geoharbor.document_files (id, size, sha256, content) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, "
                "content = excluded.content, stored = now()",
                (document_id, stored.size, stored.sha256, stored.content),
            )

    def get(self, document_id: int) -> StoredFile | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT content, size, sha256 FROM geoharbor.document_files WHERE id = %s", (document_id,)
            ).fetchone()
        return None if row is None else StoredFile(bytes(row[0]), int(row[1]), str(row[2]))

    def delete(self, document_id: int) -> bool:
        with self._connection() as conn:
            cur = conn.execute("DELETE FROM geoharbor.document_files WHERE id = %s", (document_id,))
            return cur.rowcount > 0


class _SQLiteFiles(_Backend):
    """The table ``document_files`` of the embedded store's file (WAL: workers read while one writes)."""

    def __init__(self, path: str) -> None:
        self._connections = SQLiteConnections(path, _SQLITE_DDL)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def put(self, document_id: int, stored: StoredFile) -> None:
        self._conn.execute(
            "INSERT INTO document_files (id, size, sha256, content, stored) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, "
            "content = excluded.content, stored = excluded.stored",
            (document_id, stored.size, stored.sha256, stored.content, time.time()),
        )

    def get(self, document_id: int) -> StoredFile | None:
        row = self._conn.execute(
            "SELECT content, size, sha256 FROM document_files WHERE id = ?", (document_id,)
        ).fetchone()
        return None if row is None else StoredFile(bytes(row[0]), int(row[1]), str(row[2]))

    def delete(self, document_id: int) -> bool:
        return self._conn.execute("DELETE FROM document_files WHERE id = ?", (document_id,)).rowcount > 0
