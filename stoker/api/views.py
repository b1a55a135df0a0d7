"""What the API answers about a job: the record, with outputs as URLs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from stoker.api import webhook_records
from stoker.api.state import ApiState
from stoker.client import Stoker
from stoker.config import Priority
from stoker.queues.records import JobError, JobRecord, JobState, Progress
from stoker.storage.sources import is_s3_url


class OutputView(BaseModel):
    name: str
    size_bytes: int
    content_type: str
    partial: bool
    url: str  # presigned on S3 (expires after presign_expiry_s), file:// locally
    download: str = Field(
        description="the output through this API (GET with your key): works from any "
        "machine that reaches the API, whatever the storage"
    )


class WaitingView(BaseModel):
    """Why a queued job waits: its queue now, and how many live workers take it."""

    queue: str
    chunks_waiting: int
    oldest_age_s: float
    workers_able: int = Field(description="live workers that could take this queue")
    workers_consuming: int = Field(description="of those, the ones consuming it now")
    detail: str


class JobView(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str
    owner: str
    state: JobState
    priority: Priority
    progress: Progress
    outputs: list[OutputView] = Field(default_factory=list)
    error: JobError | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    webhook: dict[str, Any] | None = None
    # Only when one job is read, and only while it is queued (a Redis broker).
    waiting: WaitingView | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]
    has_more: bool
    next_cursor: float | None = Field(
        default=None, description="pass as ?cursor= for the next (older) page"
    )


def download_path(job_id: str, name: str) -> str:
    """Where the API serves output ``name`` of job ``job_id`` (routes/jobs.job_output)."""
    return f"/v1/jobs/{job_id}/outputs/{quote(name)}"


def output_urls(stoker: Stoker, record: JobRecord, base_url: str) -> Callable[[str], str]:
    """How an OpenAI answer (or a batch's output line) points at ``record``'s outputs:
    S3's presigned URLs, which any client fetches; on local storage, whose ``file://``
    URLs only work on the API's machine, the API's own URL of each output at
    ``base_url`` (the address the client used; fetched with the caller's key)."""
    if is_s3_url(stoker.storage.url):
        return stoker.output_url
    base = base_url.rstrip("/")
    served = {o.key: base + download_path(record.id, o.name) for o in record.outputs}
    return lambda key: served.get(key) or stoker.output_url(key)


def job_view(state: ApiState, record: JobRecord, *, with_webhook: bool = True) -> JobView:
    outputs = [
        OutputView(
            name=o.name,
            size_bytes=o.size_bytes,
            content_type=o.content_type,
            partial=o.partial,
            url=state.stoker.output_url(o.key),
            download=download_path(record.id, o.name),
        )
        for o in record.outputs
    ]
    return JobView(
        id=record.id,
        kind=record.kind,
        owner=record.owner,
        state=record.state,
        priority=record.priority,
        progress=record.progress,
        outputs=outputs,
        error=record.error,
        params=record.params,
        parent=record.parent,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        webhook=webhook_records.status_of(state.meta, record.id) if with_webhook else None,
    )


def waiting_view(state: ApiState, record: JobRecord) -> WaitingView | None:
    """:meth:`Stoker.waiting` for an API caller: counts of workers, never their names.
    None where it cannot be read: a hint, never a reason for the read to fail."""
    try:
        found = state.stoker.waiting(record)  # no broker read for a job that is not queued
    except Exception:
        return None
    if found is None:
        return None
    return WaitingView(
        queue=found.queue,
        chunks_waiting=found.waiting,
        oldest_age_s=round(found.oldest_age_s, 1),
        workers_able=len(found.able),
        workers_consuming=len(found.consuming),
        detail=found.advice(state.stoker.settings, hostnames=False),
    )
