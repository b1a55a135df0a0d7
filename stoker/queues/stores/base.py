"""The job store: where job records live so that every process sees them.

Two implementations pass the same contract tests (tests/integration/test_job_store.py):
``SqliteJobStore`` for the embedded default and ``RedisJobStore`` for production.

Every method that changes a record is atomic on its own: workers on several machines
update the same job concurrently, so nothing here is read-modify-write of a whole record.
"""

from __future__ import annotations

from typing import Protocol

from stoker.queues.records import (
    JobError,
    JobFilter,
    JobRecord,
    JobState,
    OutputRef,
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

    def get(self, job_id: str) -> JobRecord:
        """The record as it is now. Raises errors.JobNotFound."""

    def state(self, job_id: str) -> JobState:
        """Just the state: cheap enough to poll between sentences. Raises JobNotFound."""

    def list(self, flt: JobFilter) -> list[JobRecord]:
        """Newest first, at most ``flt.limit``, served from indexes (never a full scan)."""

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

    def succeed(self, job_id: str, outputs: list[OutputRef]) -> bool:
        """running → succeeded with outputs. False if the job was already terminal."""

    def fail(self, job_id: str, error: JobError) -> bool:
        """queued/running → failed with the error. False if already terminal."""

    def cancel(self, job_id: str) -> bool:
        """queued/running → cancelled. False if already terminal."""

    def add_outputs(self, job_id: str, outputs: list[OutputRef]) -> None:
        """Append outputs (used for the partial outputs of a cancelled job)."""

    def close(self) -> None:
        """Release connections."""
