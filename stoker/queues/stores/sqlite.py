"""Job store in one SQLite file, shared by the client and the workers of one machine.

The file is in WAL mode so that readers never wait for a writer. Every change is one
statement or one ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so
two processes never interleave inside a change (and never deadlock upgrading a lock).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from stoker.errors import BrokerUnavailable, ConfigError, JobNotFound
from stoker.queues.records import JobError, JobFilter, JobRecord, JobState, OutputRef
from stoker.queues.stores.base import (
    DocCache,
    Tally,
    assemble_record,
    initial_total,
    payload_rows,
    record_doc,
)

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    parent      TEXT,           -- the batch a child job belongs to
    created_at  REAL NOT NULL,
    doc         TEXT NOT NULL,  -- the immutable part of the record, JSON
    state       TEXT NOT NULL,
    stage       TEXT NOT NULL,
    total       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    outputs     TEXT NOT NULL,  -- JSON list of OutputRef
    error       TEXT,           -- JSON JobError
    started_at  REAL,
    finished_at REAL
);
-- id ends each index so that ties in created_at are ordered by the index too.
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs (kind, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_parent_state ON jobs (parent, state);
-- Jobs that are not a batch's children (JobFilter.top_level), newest first.
CREATE INDEX IF NOT EXISTS jobs_top ON jobs (created_at, id) WHERE parent IS NULL;
CREATE TABLE IF NOT EXISTS chunk_done (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- Per chunk, its runs that started and have not ended (ChunkExecutor's crash count).
CREATE TABLE IF NOT EXISTS chunk_runs (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    open   INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- Per job, its chunks' task payloads (JSON list), for `stoker retry` of a job that
-- failed or was cancelled: kept until it succeeds (never retried) or is deleted.
CREATE TABLE IF NOT EXISTS job_payloads (
    job_id   TEXT PRIMARY KEY,
    payloads TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS job_payloads_succeeded AFTER UPDATE OF state ON jobs
WHEN NEW.state = 'succeeded' BEGIN
  DELETE FROM job_payloads WHERE job_id = NEW.id;
END;
CREATE TRIGGER IF NOT EXISTS job_payloads_deleted AFTER DELETE ON jobs BEGIN
  DELETE FROM job_payloads WHERE job_id = OLD.id;
END;
COMMIT;
"""

_MUTABLE_COLUMNS = (
    "state, stage, total, attempts, outputs, error, started_at, finished_at,"
    " (SELECT COUNT(*) FROM chunk_done WHERE job_id = jobs.id) FROM jobs"
)
_SELECT = f"SELECT doc, {_MUTABLE_COLUMNS}"
_SELECT_MUTABLE = f"SELECT {_MUTABLE_COLUMNS}"

_ACTIVE = "('queued', 'running')"


class SqliteJobStore:
    """:class:`~stoker.queues.stores.base.JobStore` in the SQLite file at ``path``.

    Opening creates the schema if needed; raises ConfigError if the file cannot be
    opened. Later failures (a lock held past ``busy_timeout_s``, I/O errors) raise
    BrokerUnavailable, which workers retry. Missing jobs raise JobNotFound.
    """

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        # One connection per thread: a sqlite3 connection must not be used by two
        # threads at once, and per-thread connections let WAL readers run in parallel.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._docs = DocCache()
        try:
            self._conn().executescript(_SCHEMA)
            _migrate(self._conn())
        except sqlite3.Error as exc:
            self.close()
            if _is_busy(exc):
                raise self._unavailable(exc) from exc
            raise ConfigError(
                f"cannot open the job store {self.path} ({exc}); check state_url and "
                f"that the file's directory exists and is writable."
            ) from exc

    # --- reads ----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._guard() as conn:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _record(row)

    def state(self, job_id: str) -> JobState:
        with self._guard() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobState(row[0])

    def list(self, flt: JobFilter) -> builtins.list[JobRecord]:
        """Newest first (ties by id, descending), served by the indexes on created_at."""
        sql, params = list_query(flt)
        with self._guard() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._guard() as conn:
            rows = conn.execute("SELECT kind, state, n FROM job_counts WHERE n > 0").fetchall()
        return {(kind, state): n for kind, state, n in rows}

    def child_counts(self, parent_id: str) -> dict[JobState, int]:
        sql = "SELECT state, COUNT(*) FROM jobs WHERE parent = ? GROUP BY state"
        with self._guard() as conn:
            rows = conn.execute(sql, (parent_id,)).fetchall()
        return {JobState(state): int(n) for state, n in rows}

    def done_chunks(self, job_id: str) -> set[int]:
        with self._guard() as conn:
            rows = conn.execute("SELECT idx FROM chunk_done WHERE job_id = ?", (job_id,))
            done = {int(idx) for (idx,) in rows}
        if not done:
            self.state(job_id)  # raises JobNotFound for a missing job
        return done

    def chunks_all_done(self, job_id: str, indices: Sequence[int]) -> bool:
        wanted = sorted(set(indices))
        # The indexes go in as one JSON array: no limit on bound parameters, one query.
        sql = (
            "SELECT (SELECT COUNT(*) FROM jobs WHERE id = ?),"
            " (SELECT COUNT(*) FROM chunk_done WHERE job_id = ?"
            "  AND idx IN (SELECT value FROM json_each(?)))"
        )
        with self._guard() as conn:
            exists, done = conn.execute(sql, (job_id, job_id, json.dumps(wanted))).fetchone()
        if not exists:
            raise JobNotFound(job_id)
        return int(done) == len(wanted)

    # --- changes --------------------------------------------------------------------

    def create(self, record: JobRecord) -> None:
        self.create_many([record])

    def create_many(
        self,
        records: Sequence[JobRecord],
        payloads: Sequence[Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        rows = [_insert_row(record) for record in records]
        if not rows:
            return
        kept = payload_rows(records, payloads)
        sql = f"INSERT INTO jobs ({', '.join(rows[0])}) VALUES ({', '.join('?' * len(rows[0]))})"
        taken = None
        with self._transaction() as conn:
            for row in rows:
                try:
                    conn.execute(sql, tuple(row.values()))
                except sqlite3.IntegrityError:  # that row only; the others are stored
                    taken = taken or row["id"]
            conn.executemany(
                "INSERT OR IGNORE INTO job_payloads (job_id, payloads) VALUES (?, ?)", kept
            )
        if taken:
            raise ValueError(f"a job with id {taken!r} already exists")

    def chunk_payloads(self, job_id: str) -> builtins.list[dict[str, Any]] | None:
        sql = "SELECT payloads FROM job_payloads WHERE job_id = ?"
        with self._guard() as conn:
            row = conn.execute(sql, (job_id,)).fetchone()
        if row is None:
            self.state(job_id)  # raises JobNotFound for a missing job
            return None
        return cast(builtins.list[dict[str, Any]], json.loads(row[0]))

    def requeue(self, job_id: str, *, stage: str = "queued", undone: Sequence[int] = ()) -> bool:
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(job_id)
            conn.executemany(
                "DELETE FROM chunk_done WHERE job_id = ? AND idx = ?",
                [(job_id, i) for i in undone],
            )
            moved = conn.execute(
                "UPDATE jobs SET state = 'queued', stage = ?, error = NULL,"
                " finished_at = NULL, outputs = '[]'"
                f" WHERE id = ? AND state NOT IN {_ACTIVE}",
                (stage, job_id),
            ).rowcount
            if moved:
                conn.execute("DELETE FROM chunk_runs WHERE job_id = ?", (job_id,))
        return bool(moved)

    def mark_running(self, job_id: str) -> JobState:
        with self._guard() as conn:
            # fetchall: the statement must run to its end for its write to commit.
            rows = conn.execute(
                "UPDATE jobs SET attempts = attempts + 1,"
                " started_at = CASE state WHEN 'queued' THEN ? ELSE started_at END,"
                " state = CASE state WHEN 'queued' THEN 'running' ELSE state END"
                f" WHERE id = ? AND state IN {_ACTIVE} RETURNING state",
                (time.time(), job_id),
            ).fetchall()
        # No row: the job is terminal (and stays so) or missing (state() raises).
        return JobState(rows[0][0]) if rows else self.state(job_id)

    def set_stage(self, job_id: str, stage: str) -> None:
        with self._guard() as conn:
            changed = conn.execute(
                "UPDATE jobs SET stage = ? WHERE id = ?", (stage, job_id)
            ).rowcount
        if not changed:
            raise JobNotFound(job_id)

    def chunk_done(self, job_id: str, index: int) -> Tally:
        with self._transaction() as conn:
            row = conn.execute("SELECT total, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            added = conn.execute(
                "INSERT OR IGNORE INTO chunk_done (job_id, idx) VALUES (?, ?)", (job_id, index)
            ).rowcount
            (done,) = conn.execute(
                "SELECT COUNT(*) FROM chunk_done WHERE job_id = ?", (job_id,)
            ).fetchone()
        return Tally(newly_done=added == 1, done=done, total=row[0], state=JobState(row[1]))

    def chunk_runs(self, job_id: str, index: int, change: int) -> int:
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(job_id)
            (count,) = conn.execute(
                "INSERT INTO chunk_runs (job_id, idx, open) VALUES (?, ?, ?)"
                " ON CONFLICT (job_id, idx) DO UPDATE SET open = open + excluded.open"
                " RETURNING open",
                (job_id, index, change),
            ).fetchone()
        return int(count)

    def succeed(self, job_id: str, outputs: builtins.list[OutputRef]) -> bool:
        return self._finish(
            job_id, JobState.SUCCEEDED, stage="done", outputs=_outputs_json(outputs)
        )

    def fail(self, job_id: str, error: JobError) -> bool:
        return self._finish(job_id, JobState.FAILED, error=error.model_dump_json())

    def cancel(self, job_id: str) -> bool:
        return self._finish(job_id, JobState.CANCELLED, stage="cancelled")

    # The batched forms are loops: SQLite is in-process, there is no round trip to save.

    def start_many(self, job_ids: Sequence[str]) -> builtins.list[JobRecord | None]:
        records: builtins.list[JobRecord | None] = []
        for job_id in job_ids:
            try:
                self.mark_running(job_id)
                records.append(self._get_started(job_id))
            except JobNotFound:
                records.append(None)
        return records

    def _get_started(self, job_id: str) -> JobRecord:
        """:meth:`get`, reading only the mutable columns of a job whose doc is cached."""
        doc = self._docs.get(job_id)
        if doc is None:
            record = self.get(job_id)
            self._docs.keep(record)
            return record
        with self._guard() as conn:
            row = conn.execute(f"{_SELECT_MUTABLE} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _record((doc, *row))

    def chunk_done_many(self, chunks: Sequence[tuple[str, int]]) -> builtins.list[Tally | None]:
        tallies: builtins.list[Tally | None] = []
        for job_id, index in chunks:
            try:
                tallies.append(self.chunk_done(job_id, index))
            except JobNotFound:
                tallies.append(None)
        return tallies

    def succeed_many(
        self, jobs: Sequence[tuple[str, builtins.list[OutputRef]]]
    ) -> builtins.list[bool]:
        moved = []
        for job_id, outputs in jobs:
            try:
                moved.append(self.succeed(job_id, outputs))
            except JobNotFound:
                moved.append(False)
        return moved

    def add_outputs(self, job_id: str, outputs: builtins.list[OutputRef]) -> None:
        with self._transaction() as conn:
            row = conn.execute("SELECT outputs FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            merged = json.loads(row[0]) + [o.model_dump(mode="json") for o in outputs]
            conn.execute("UPDATE jobs SET outputs = ? WHERE id = ?", (json.dumps(merged), job_id))

    def delete(self, job_id: str) -> bool:
        with self._transaction() as conn:
            # The job_counts trigger moves the count with the row.
            deleted = conn.execute(
                f"DELETE FROM jobs WHERE id = ? AND state NOT IN {_ACTIVE}", (job_id,)
            ).rowcount
            if deleted:
                conn.execute("DELETE FROM chunk_done WHERE job_id = ?", (job_id,))
                conn.execute("DELETE FROM chunk_runs WHERE job_id = ?", (job_id,))
            elif conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFound(job_id)
        self._docs.forget(job_id)
        return bool(deleted)

    def close(self) -> None:
        """Close every thread's connection; a later call opens new ones."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for conn in connections:
            conn.close()

    # --- internals ------------------------------------------------------------------

    def _finish(self, job_id: str, target: JobState, **fields: str) -> bool:
        """queued/running → ``target`` with ``fields`` set; False if already terminal."""
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._guard() as conn:
            changed = conn.execute(
                f"UPDATE jobs SET state = ?, finished_at = ?{assignments}"
                f" WHERE id = ? AND state IN {_ACTIVE}",
                (target.value, time.time(), *fields.values(), job_id),
            ).rowcount
        if not changed:
            self.state(job_id)  # raises JobNotFound for a missing job
        return bool(changed)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; we open them ourselves.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,  # so that close() may close it from any thread
            )
            with self._lock:
                self._connections.append(conn)
                self._local.conn = conn
            conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the
            # last commits, which a redelivered task redoes.
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; sqlite3 errors leave as BrokerUnavailable."""
        try:
            yield self._conn()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back if the body raises."""
        with self._guard() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: the connection must not stay in a transaction.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _unavailable(self, exc: sqlite3.Error) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"the job store {self.path} could not be used ({exc}); check the disk and "
            f"that no process holds the file locked (workers retry their tasks meanwhile; "
            f"a client may retry the call)."
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a job store made by an older stoker up to this schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if "parent" not in columns:
        conn.execute("ALTER TABLE jobs ADD COLUMN parent TEXT")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent, created_at, id)")
    conn.commit()
    _add_counts(conn)


# Jobs per (kind, state), kept by triggers in the same transaction as each change, so
# counts() reads a few rows instead of counting the jobs table.
_COUNTS = """
CREATE TABLE job_counts (
    kind  TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (kind, state)
) WITHOUT ROWID;
INSERT INTO job_counts SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state;
CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
  INSERT INTO job_counts VALUES (NEW.kind, NEW.state, 1)
    ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs
WHEN OLD.state <> NEW.state BEGIN
  UPDATE job_counts SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
  INSERT INTO job_counts VALUES (NEW.kind, NEW.state, 1)
    ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
  UPDATE job_counts SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
END;
"""


def _add_counts(conn: sqlite3.Connection) -> None:
    """Create the counts table from the jobs already stored (once, under the write lock,
    so no change lands between the count and the triggers)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_counts'"
        ).fetchone()
        if not exists:
            for statement in _split_sql(_COUNTS):
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _split_sql(script: str) -> builtins.list[str]:
    """The statements of ``script``; a trigger's body (BEGIN … END;) stays whole."""
    statements, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    return statements


def list_query(flt: JobFilter) -> tuple[str, Sequence[Any]]:
    """The SQL and parameters of :meth:`SqliteJobStore.list` (tests read its plan)."""
    where: builtins.list[str] = []
    params: builtins.list[Any] = []
    filters = (
        ("state", flt.state),
        ("kind", flt.kind),
        ("owner", flt.owner),
        ("parent", flt.parent),
    )
    for column, value in filters:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(str(value))
    if flt.top_level:
        where.append("parent IS NULL")
    if flt.before is not None:
        where.append("created_at < ?")
        params.append(flt.before)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return f"{_SELECT}{condition} ORDER BY created_at DESC, id DESC LIMIT ?", [*params, flt.limit]


def _insert_row(record: JobRecord) -> dict[str, Any]:
    """The ``jobs`` row of a new record, by column."""
    return {
        "id": record.id,
        "kind": record.kind,
        "owner": record.owner,
        "parent": record.parent,
        "created_at": record.created_at,
        "doc": record_doc(record),
        "state": record.state.value,
        "stage": record.progress.stage,
        "total": initial_total(record),
        "attempts": record.attempts,
        "outputs": _outputs_json(record.outputs),
        "error": record.error.model_dump_json() if record.error else None,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }


def _record(row: Sequence[Any]) -> JobRecord:
    """A record from a row of _SELECT (doc as JSON, or a cached record: DocCache)."""
    doc, state, stage, total, attempts, outputs, error, started_at, finished_at, done = row
    return assemble_record(
        doc,
        {
            "state": state,
            "stage": stage,
            "done": done,
            "total": total,
            "attempts": attempts,
            "outputs": json.loads(outputs),
            "error": json.loads(error) if error else None,
            "started_at": started_at,
            "finished_at": finished_at,
        },
    )


def _outputs_json(outputs: Sequence[OutputRef]) -> str:
    return json.dumps([o.model_dump(mode="json") for o in outputs])


def _is_busy(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message
