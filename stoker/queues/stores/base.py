"""The job store: where job records live so that every process sees them.

Two implementations pass the same contract tests (tests/integration/test_job_store.py):
``SqliteJobStore`` for the embedded default and ``RedisJobStore`` for production.

Every method that changes a record is atomic on its own: workers on several machines
update the same job concurrently, so nothing here is read-modify-write of a whole record.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from stoker.queues.records import (
    JobError,
    JobFilter,
    JobRecord,
    JobState,
    OutputRef,
    Progress,
)


class ChunkTally(Protocol):
    """What :meth:`JobStore.chunk_done` returns."""

    newly_done: bool  # False if this chunk index was already recorded as done
    done: int
    total: int
    state: JobState


class JobStore(Protocol):
    def create(self, record: JobRecord) -> None:
        """Store a new record (state queued). Raises ValueError if the id exists."""

    def create_many(
        self,
        records: Sequence[JobRecord],
        payloads: Sequence[Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        """:meth:`create` for each record, in one round trip on Redis and one
        transaction on SQLite (a batch of 50,000 lines is recorded in groups, not one
        write each). Raises ValueError naming an id that exists; the others are stored.

        ``payloads``, one list per record: its chunks' task payloads, kept until the
        job succeeds or is deleted, so that a job that failed or was cancelled can be
        queued again (:meth:`chunk_payloads`, :meth:`requeue`).
        """

    def chunk_payloads(self, job_id: str) -> builtins.list[dict[str, Any]] | None:
        """The chunk payloads stored with the job by :meth:`create_many`, in chunk
        order; None when none are kept (it succeeded, it was recorded without them: a
        batch, a file refused at submission). Raises JobNotFound."""

    def get(self, job_id: str) -> JobRecord:
        """The record as it is now. Raises errors.JobNotFound."""

    def state(self, job_id: str) -> JobState:
        """Just the state: cheap enough to poll between sentences. Raises JobNotFound."""

    def list(self, flt: JobFilter) -> list[JobRecord]:
        """Newest first, at most ``flt.limit``, served from indexes (never a full scan)."""

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (kind, state value), kept as counters beside the records (never a
        count over all records); pairs with no job are left out."""

    def child_counts(self, parent_id: str) -> dict[JobState, int]:
        """The jobs of batch ``parent_id`` per state (states with none left out),
        counted from the indexes: a batch of 50,000 lines is not read record by record."""

    def mark_running(self, job_id: str) -> JobState:
        """A chunk task started: count an attempt; queued → running (sets started_at).

        Returns the state after the call; a terminal state means: do not run.
        """

    def set_stage(self, job_id: str, stage: str) -> None:
        """Record the stage name shown with progress (e.g. "synthesize", "assemble")."""

    def chunk_done(self, job_id: str, index: int) -> ChunkTally:
        """Record chunk ``index`` as finished, atomically with reading the tally."""

    def done_chunks(self, job_id: str) -> set[int]:
        """Indexes of finished chunks."""

    def chunk_runs(self, job_id: str, index: int, change: int) -> int:
        """Add ``change`` to chunk ``index``'s count of runs that started and have not
        ended (+1 as a run starts, -1 as it ends, whatever its outcome), and return it.

        A run whose worker died (killed, out of memory, crashed in a library) never
        ends, so a run that starts with others still counted follows such deaths (or,
        rarely, a redelivery of a chunk still running elsewhere). Raises JobNotFound.
        """

    def chunks_all_done(self, job_id: str, indices: Sequence[int]) -> bool:
        """Whether every chunk in ``indices`` is recorded as done (True for none).

        One round trip whatever the job's size: a worker asks this after each chunk
        to learn whether that chunk completed its group (an audiobook's chapter).
        Raises JobNotFound.
        """

    # builtins.list: inside this class body, plain ``list`` names the method above.
    def succeed(self, job_id: str, outputs: builtins.list[OutputRef]) -> bool:
        """queued/running → succeeded with outputs (replacing any). False if already terminal."""

    def fail(self, job_id: str, error: JobError) -> bool:
        """queued/running → failed with the error. False if already terminal."""

    # Batched forms, for a worker running many one-chunk jobs at once (embed): on
    # Redis each is one round trip for the whole batch instead of one per job.

    def start_many(self, job_ids: Sequence[str]) -> builtins.list[JobRecord | None]:
        """:meth:`mark_running` for each job, then its record (None: no such job).

        A record whose state is terminal is a job that must not run."""

    def chunk_done_many(self, chunks: Sequence[tuple[str, int]]) -> Sequence[ChunkTally | None]:
        """:meth:`chunk_done` for each (job id, index); None: no such job."""

    def succeed_many(
        self, jobs: Sequence[tuple[str, builtins.list[OutputRef]]]
    ) -> builtins.list[bool]:
        """:meth:`succeed` for each (job id, outputs); False: terminal or missing."""

    def cancel(self, job_id: str) -> bool:
        """queued/running → cancelled. False if already terminal."""

    def add_outputs(self, job_id: str, outputs: builtins.list[OutputRef]) -> None:
        """Append outputs (used for the partial outputs of a cancelled job)."""

    def requeue(self, job_id: str, *, stage: str = "queued", undone: Sequence[int] = ()) -> bool:
        """An ended job back to queued, for a retry: its error, end time, outputs and
        crash counts cleared and ``stage`` set; its finished chunks stay done. The
        chunk indexes in ``undone`` are counted as not done, also when the job is
        still queued or running (a batch whose failed file is retried while others
        run: the file must count again when it ends). Returns whether the job moved:
        False for a job queued or running. Raises JobNotFound. The caller queues the
        chunks (Stoker.retry)."""

    def delete(self, job_id: str) -> bool:
        """Remove an ended job's record, its chunk tally and its place in every index
        and count. False, and nothing changed, if the job is queued or running.
        Raises JobNotFound. (Its stored files are the caller's: see Stoker.delete.)"""

    def close(self) -> None:
        """Release connections."""


def list_all(store: JobStore, flt: JobFilter) -> builtins.list[JobRecord]:
    """Every job ``flt`` matches (created before ``flt.before``, if set), newest
    first, read in pages of 1,000; ``flt.limit`` is ignored."""
    found: dict[str, JobRecord] = {}  # by id: pages may meet at equal created_at
    before = flt.before
    while True:
        page = store.list(flt.model_copy(update={"limit": 1000, "before": before}))
        found.update((r.id, r) for r in page)
        if len(page) < 1000:
            return list(found.values())
        before = page[-1].created_at


# --- helpers shared by the implementations ---------------------------------------------


@dataclass(slots=True)
class Tally:
    """The :class:`ChunkTally` both stores return.

    Not frozen: mypy only accepts settable attributes for ChunkTally's plain members.
    """

    newly_done: bool
    done: int
    total: int
    state: JobState


#: The part of a record fixed at submission; stored as one JSON document ("doc").
DOC_FIELDS = frozenset(
    {
        "id",
        "kind",
        "owner",
        "params",
        "inputs",
        "priority",
        "model",
        "chunks",
        "created_at",
        "parent",
        "parent_index",
    }
)


def payload_rows(
    records: Sequence[JobRecord], payloads: Sequence[Sequence[dict[str, Any]]] | None
) -> builtins.list[tuple[str, str]]:
    """(job id, its chunk payloads as compact JSON) per record, as create_many keeps
    them; none when ``payloads`` is None."""
    if payloads is None:
        return []
    return [
        (record.id, json.dumps(kept, separators=(",", ":")))
        for record, kept in zip(records, payloads, strict=True)
    ]


def record_doc(record: JobRecord) -> str:
    """The immutable part of ``record`` as JSON."""
    return record.model_dump_json(include=set(DOC_FIELDS))


def initial_total(record: JobRecord) -> int:
    """Chunks to count to: ``progress.total`` if the submitter set it, else ``len(chunks)``."""
    return record.progress.total if record.progress.total > 0 else len(record.chunks)


def safe_url(url: str) -> str:
    """``url`` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def assemble_record(doc: str | JobRecord, fields: Mapping[str, Any]) -> JobRecord:
    """A record from its ``doc`` and its mutable ``fields``, already decoded.

    ``doc`` is the doc's JSON, or a record already made from it (see DocCache): then
    only ``fields`` are validated. ``fields`` has: state, stage, done, total, attempts,
    outputs (list of dicts), error (dict or None), started_at, finished_at.
    """
    changes = {
        "state": fields["state"],
        "progress": {"done": fields["done"], "total": fields["total"], "stage": fields["stage"]},
        "outputs": fields["outputs"],
        "error": fields["error"],
        "attempts": fields["attempts"],
        "started_at": fields["started_at"],
        "finished_at": fields["finished_at"],
    }
    if isinstance(doc, JobRecord):
        mutable = _Mutable.model_validate(changes)
        return doc.model_copy(update={name: getattr(mutable, name) for name in changes})
    return JobRecord.model_validate(json.loads(doc) | changes)


class _Mutable(BaseModel):
    """The fields of a record that change after submission, validated on their own."""

    state: JobState
    progress: Progress
    outputs: list[OutputRef]
    error: JobError | None
    attempts: int
    started_at: float | None
    finished_at: float | None


class DocCache:
    """The immutable part (doc) of recently started jobs with many chunks, parsed.

    A worker runs many chunks of one long job (an audiobook has thousands), and each
    chunk task reads the job's record: parsing and validating a doc of 15,000 chunk
    keys took ~20-60 ms per task, growing with the book. A doc never changes after
    submission and a job id is never reused, so a store keeps the parsed record of
    the last few such jobs and reads only their mutable fields. One-chunk jobs are
    not kept: they are read once.

    Records built from a cached doc share its lists and dicts: records are never
    mutated in place (the store's atomic operations are the only writers).
    """

    def __init__(self, max_jobs: int = 8, min_chunks: int = 2) -> None:
        self._docs: OrderedDict[str, JobRecord] = OrderedDict()
        self._max_jobs, self._min_chunks = max_jobs, min_chunks
        self._lock = threading.Lock()  # start_many may run on a batcher's model thread

    def get(self, job_id: str) -> JobRecord | None:
        """A record of the job, valid for its doc fields only; None if not kept."""
        with self._lock:
            record = self._docs.get(job_id)
            if record is not None:
                self._docs.move_to_end(job_id)
        return record

    def forget(self, job_id: str) -> None:
        """Drop ``job_id``'s doc (the job was deleted)."""
        with self._lock:
            self._docs.pop(job_id, None)

    def keep(self, record: JobRecord) -> None:
        """Remember ``record``'s doc if its job has enough chunks to be read again."""
        if len(record.chunks) < self._min_chunks:
            return
        with self._lock:
            self._docs[record.id] = record
            self._docs.move_to_end(record.id)
            while len(self._docs) > self._max_jobs:
                self._docs.popitem(last=False)
