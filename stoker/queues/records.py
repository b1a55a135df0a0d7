"""Typed job records: what every process (client, worker, API) reads about a job.

A record is written once at submission and then changed only through the job
store's atomic operations (see :mod:`stoker.queues.stores.base`), never by
read-modify-write of the whole document, because several workers update the same
job at once.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator

from stoker.config import Priority
from stoker.storage.manifest import MANIFEST_NAME


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Progress(BaseModel):
    """``done`` of ``total`` chunks, and the stage the job is in."""

    done: int = 0
    total: int = 0
    stage: str = "queued"


class OutputRef(BaseModel):
    """One artifact of a job, in storage."""

    name: str  # what a user calls it: "speech.wav", "manifest.json"
    key: str  # storage key, relative to the storage root
    size_bytes: int
    content_type: str
    partial: bool = False  # True for chunk outputs kept from a cancelled job

    @property
    def is_result(self) -> bool:
        """One of the job's own results: not a chunk kept from a cancelled run, not
        the manifest that lists them (what a batch line or a download hands on)."""
        return not self.partial and self.name != MANIFEST_NAME


class JobError(BaseModel):
    kind: str  # an errors.StokerError.kind, e.g. "invalid_input"
    message: str  # one sentence a user can act on


class ChunkRef(BaseModel):
    """Where one chunk's output goes: a content-addressed key, shared across jobs."""

    index: int
    key: str


class JobRecord(BaseModel):
    id: str
    kind: str
    owner: str = "local"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)  # storage keys of uploaded inputs
    priority: Priority = "normal"
    model: str | None = None
    chunks: list[ChunkRef] = Field(default_factory=list)
    # A child job of a batch (one file of a folder) names its batch and its place in it.
    parent: str | None = None
    parent_index: int | None = None
    state: JobState = JobState.QUEUED
    progress: Progress = Field(default_factory=Progress)
    outputs: list[OutputRef] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int = 0  # chunk task deliveries that started running
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


class JobFilter(BaseModel):
    """Filters for listing jobs; each one is served by an index, never a scan."""

    state: JobState | None = None
    kind: str | None = None
    owner: str | None = None
    parent: str | None = None  # the children of one batch
    # Only jobs that are not a batch's children: a batch of 5,000 files lists as one.
    top_level: bool = False
    limit: int = Field(default=50, ge=1, le=1000)
    before: float | None = None  # created_at cursor: only jobs created strictly before

    @model_validator(mode="after")
    def _one_level(self) -> JobFilter:
        if self.top_level and self.parent is not None:
            raise ValueError("a filter takes parent or top_level, not both")
        return self


def new_job_id() -> str:
    """Random, URL-safe, and sortable enough to eyeball: ``job_`` + 24 hex digits."""
    return "job_" + uuid.uuid4().hex[:24]


def new_record(**fields: Any) -> JobRecord:
    return JobRecord(id=new_job_id(), **fields)
