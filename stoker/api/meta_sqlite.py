"""The API's records in a table of the job store's SQLite file (see meta.py)."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stoker.api.meta import Doc
from stoker.errors import BrokerUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_docs (
    ns         TEXT NOT NULL,
    id         TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (ns, id)
);
CREATE INDEX IF NOT EXISTS api_docs_by_owner ON api_docs (ns, owner, created_at, id);
CREATE INDEX IF NOT EXISTS api_docs_by_created ON api_docs (ns, created_at, id);
CREATE TABLE IF NOT EXISTS api_claims (
    name    TEXT PRIMARY KEY,
    expires REAL NOT NULL  -- time.time() after which another process may take it
);
CREATE INDEX IF NOT EXISTS api_claims_by_expiry ON api_claims (expires);
"""

#: Expired claims are kept this long (s) before they are swept, so the table stays small.
_CLAIM_SWEEP_S = 3600.0


class SqliteMetaStore:
    """:class:`~stoker.api.meta.MetaStore` in the SQLite file at ``path``; one connection
    per thread (the API serves requests from a thread pool)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        with self._guard() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.OperationalError as exc:
            raise BrokerUnavailable(
                f"the API store {self.path} is not usable right now ({exc}); retry later."
            ) from exc

    def put(self, doc: Doc) -> None:
        with self._guard() as conn:
            conn.execute("INSERT OR REPLACE INTO api_docs VALUES (?, ?, ?, ?, ?)", _row(doc))

    def insert_new(self, doc: Doc) -> bool:
        with self._guard() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO api_docs VALUES (?, ?, ?, ?, ?)", _row(doc))
            return cur.rowcount == 1

    def get(self, ns: str, id: str) -> Doc | None:
        with self._guard() as conn:
            row = conn.execute(
                "SELECT ns, id, owner, created_at, data FROM api_docs WHERE ns = ? AND id = ?",
                (ns, id),
            ).fetchone()
        return _doc(row) if row else None

    def delete(self, ns: str, id: str) -> None:
        with self._guard() as conn:
            conn.execute("DELETE FROM api_docs WHERE ns = ? AND id = ?", (ns, id))

    def list(
        self, ns: str, owner: str | None, limit: int, before: float | None = None
    ) -> builtins.list[Doc]:
        where: builtins.list[str] = ["ns = ?"]
        params: builtins.list[Any] = [ns]
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if before is not None:
            where.append("created_at < ?")
            params.append(before)
        sql = (
            "SELECT ns, id, owner, created_at, data FROM api_docs WHERE "
            + " AND ".join(where)
            + " ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        with self._guard() as conn:
            rows = conn.execute(sql, (*params, limit)).fetchall()
        return [_doc(r) for r in rows]

    def claim(self, name: str, ttl_s: float) -> bool:
        now = time.time()
        with self._guard() as conn:
            # One statement: inserts a new claim, or takes over an expired one; a claim
            # still held changes no row.
            cur = conn.execute(
                "INSERT INTO api_claims (name, expires) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET expires = excluded.expires"
                " WHERE api_claims.expires <= ?",
                (name, now + ttl_s, now),
            )
            taken = cur.rowcount == 1
            if taken:
                conn.execute("DELETE FROM api_claims WHERE expires < ?", (now - _CLAIM_SWEEP_S,))
        return taken

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _row(doc: Doc) -> tuple[Any, ...]:
    return (doc.ns, doc.id, doc.owner, doc.created_at, json.dumps(doc.data))


def _doc(row: tuple[Any, ...]) -> Doc:
    return Doc(row[0], row[1], row[2], float(row[3]), json.loads(row[4]))
