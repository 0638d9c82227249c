"""Durable storage of collections and entries: SQLite, WAL journal, synchronous=FULL.

An entry is committed (fsynced) before the caller touches the in-memory index, so a failed write
leaves the index without the entry, and a restart rebuilds exactly what was acknowledged.
Signatures are stored as raw uint32 bytes and shingle hashes (optional) as raw uint64 bytes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archloop.errors import Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    entry_id TEXT NOT NULL,
    code TEXT NOT NULL,
    code_sha256 TEXT NOT NULL,
    lexer TEXT NOT NULL,
    signature BLOB NOT NULL,
    shingles BLOB,
    structural_tokens TEXT,
    structural_signature BLOB,
    labels TEXT NOT NULL,
    admitted_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (collection, entry_id)
);
"""


class StorageError(Unavailable):
    """The database refused a write or a read; nothing was changed in memory."""


@dataclass
class StoredEntry:
    collection: str
    entry_id: str
    code: str
    code_sha256: str
    lexer: str
    signature: np.ndarray
    shingles: np.ndarray | None
    structural_tokens: list[str] | None
    structural_signature: np.ndarray | None
    labels: dict[str, str]
    admitted_unix_ms: int


def _blob(array: np.ndarray | None) -> bytes | None:
    return None if array is None else array.tobytes()


class EntryStore:
    def __init__(self, path: str | Path, journal_mode: str = "wal", busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute(f"PRAGMA journal_mode = {journal_mode}")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements in one IMMEDIATE transaction; return each one's rowcount."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                counts = [self._db.execute(sql, params).rowcount for sql, params in statements]
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StorageError(f"novelty storage write failed: {exc}") from None
        return counts

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"novelty storage read failed: {exc}") from None

    def create_collection(self, name: str, settings: dict, created_unix_ms: int) -> None:
        self._write(
            [("INSERT INTO collections VALUES (?, ?, ?)", (name, json.dumps(settings), created_unix_ms))]
        )

    def drop_collection(self, name: str) -> int:
        counts = self._write(
            [
                ("DELETE FROM entries WHERE collection = ?", (name,)),
                ("DELETE FROM collections WHERE name = ?", (name,)),
            ]
        )
        return counts[0]

    def collections(self) -> list[tuple[str, dict, int]]:
        return [
            (n, json.loads(s), c)
            for n, s, c in self._read("SELECT name, settings, created_unix_ms FROM collections")
        ]

    def insert_entries(self, entries: list[StoredEntry]) -> None:
        sql = "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        self._write(
            [
                (
                    sql,
                    (
                        e.collection,
                        e.entry_id,
                        e.code,
                        e.code_sha256,
                        e.lexer,
                        _blob(e.signature),
                        _blob(e.shingles),
                        None if e.structural_tokens is None else json.dumps(e.structural_tokens),
                        _blob(e.structural_signature),
                        json.dumps(e.labels, sort_keys=True),
                        e.admitted_unix_ms,
                    ),
                )
                for e in entries
            ]
        )

    def delete_entry(self, collection: str, entry_id: str) -> int:
        return self._write(
            [("DELETE FROM entries WHERE collection = ? AND entry_id = ?", (collection, entry_id))]
        )[0]

    def get_entry(self, collection: str, entry_id: str) -> StoredEntry | None:
        rows = self._read(
            "SELECT * FROM entries WHERE collection = ? AND entry_id = ?", (collection, entry_id)
        )
        return self._entry(rows[0]) if rows else None

    def shingles(self, collection: str, entry_id: str) -> np.ndarray | None:
        rows = self._read(
            "SELECT shingles FROM entries WHERE collection = ? AND entry_id = ?", (collection, entry_id)
        )
        if not rows or rows[0][0] is None:
            return None
        return np.frombuffer(rows[0][0], dtype=np.uint64)

    def iter_signatures(
        self, collection: str, batch: int = 5000
    ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray | None]]:
        """(entry_id, code_sha256, signature, structural_signature) of every entry, for a rebuild."""
        last = ""
        while True:
            rows = self._read(
                "SELECT entry_id, code_sha256, signature, structural_signature FROM entries "
                "WHERE collection = ? AND entry_id > ? ORDER BY entry_id LIMIT ?",
                (collection, last, batch),
            )
            if not rows:
                return
            for entry_id, sha, sig, struct in rows:
                yield (
                    entry_id,
                    sha,
                    np.frombuffer(sig, dtype=np.uint32),
                    None if struct is None else np.frombuffer(struct, dtype=np.uint32),
                )
            last = rows[-1][0]

    def size_bytes(self) -> int:
        if str(self.path) == ":memory:":
            return 0
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.exists())

    @staticmethod
    def _entry(row: tuple) -> StoredEntry:
        (
            collection,
            entry_id,
            code,
            sha,
            lexer,
            sig,
            shingles,
            struct_tokens,
            struct_sig,
            labels,
            admitted,
        ) = row
        return StoredEntry(
            collection=collection,
            entry_id=entry_id,
            code=code,
            code_sha256=sha,
            lexer=lexer,
            signature=np.frombuffer(sig, dtype=np.uint32),
            shingles=None if shingles is None else np.frombuffer(shingles, dtype=np.uint64),
            structural_tokens=None if struct_tokens is None else json.loads(struct_tokens),
            structural_signature=None if struct_sig is None else np.frombuffer(struct_sig, dtype=np.uint32),
            labels=json.loads(labels),
            admitted_unix_ms=admitted,
        )
