"""/v1/jobs: submit, read, list, cancel, and follow (server-sent events) jobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from stoker.api.deps import KeyDep, StateDep, owned_job
from stoker.api.errors import ApiError
from stoker.api.inputs import merge_input
from stoker.api.streaming import object_response
from stoker.api.submission import submit_job
from stoker.api.views import JobList, JobView, job_view, waiting_view
from stoker.api.webhook_records import WebhookSpec
from stoker.config import Priority
from stoker.queues.records import JobFilter, JobRecord, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class JobRequest(BaseModel):
    model_config = {"extra": "forbid"}

    kind: str = Field(max_length=64, description="capability: speak, transcribe, ...")
    params: dict[str, Any] = Field(default_factory=dict, description="the capability's request")
    input: str | None = Field(
        default=None, description="text, an uploaded file id (file-...) or an s3:// URI"
    )
    priority: Priority | None = None
    webhook: WebhookSpec | None = None
    idempotency_key: str | None = Field(default=None, max_length=256)


@router.post("", status_code=202, response_model=JobView)
def create_job(
    body: JobRequest,
    state: StateDep,
    key: KeyDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    """Queue a job; 202 with the job. The same Idempotency-Key returns the same job."""
    record, new = submit_job(
        state,
        key,
        kind=body.kind,
        params=merge_input(body.params, body.input),
        priority=body.priority,
        webhook=body.webhook,
        idempotency_key=idempotency_key or body.idempotency_key,
    )
    view = job_view(state, record)
    return JSONResponse(view.model_dump(mode="json"), status_code=202 if new else 200)


@router.get("", response_model=JobList)
def list_jobs(
    state: StateDep,
    key: KeyDep,
    state_: Annotated[JobState | None, Query(alias="state")] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[float | None, Query(description="next_cursor of the previous page")] = None,
    batch: Annotated[
        str | None, Query(max_length=64, description="only the jobs of this batch job")
    ] = None,
    top_level: Annotated[
        bool, Query(description="leave out the jobs of batches (one per file or line)")
    ] = False,
) -> JobList:
    """The key's jobs, newest first (an admin key sees every owner's)."""
    if batch is not None and top_level:
        raise ApiError(400, "give batch or top_level, not both.", param="batch")
    if batch is not None:
        owned_job(state, key, batch)  # another owner's batch is a 404, as when read
    flt = JobFilter(
        state=state_,
        kind=kind,
        owner=None if key.admin else key.owner,
        parent=batch,
        top_level=top_level,
        limit=limit + 1,
        before=cursor,
    )
    records = state.stoker.jobs(flt)
    page = records[:limit]
    more = len(records) > limit
    return JobList(
        data=[job_view(state, r, with_webhook=False) for r in page],
        has_more=more,
        next_cursor=page[-1].created_at if more and page else None,
    )


@router.get("/{job_id}", response_model=JobView)
def get_job(job_id: str, state: StateDep, key: KeyDep) -> JobView:
    record = owned_job(state, key, job_id)
    view = job_view(state, record)
    view.waiting = waiting_view(state, record)
    return view


@router.post("/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: str, state: StateDep, key: KeyDep) -> JobView:
    """Cancel a queued or running job; an ended job is returned unchanged."""
    owned_job(state, key, job_id)
    return job_view(state, state.stoker.cancel(job_id))


@router.post("/{job_id}/retry", status_code=202, response_model=JobView)
def retry_job(job_id: str, state: StateDep, key: KeyDep) -> JobView:
    """Queue a failed or cancelled job again under its id (a batch: its failed and
    cancelled files); its webhook, if any, tells the new end. 400 for a job that is
    queued, running or succeeded, or has nothing kept to run again."""
    owned_job(state, key, job_id)
    retried = state.stoker.retry(job_id)  # re-arms the webhook too
    return job_view(state, retried.record)


@router.delete("/{job_id}")
def delete_job(job_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    """Delete an ended job, its outputs and (a batch) its jobs; 400 while it runs."""
    owned_job(state, key, job_id)
    # An OpenAI batch's or a webhook's record of the job goes when next read (batches.py,
    # webhooks.py), as for a job deleted from the CLI.
    deleted = state.stoker.delete(job_id)
    return {"id": job_id, "object": "job", "deleted": True, "jobs_deleted": len(deleted)}


@router.get(
    "/{job_id}/outputs/{name:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def job_output(job_id: str, name: str, state: StateDep, key: KeyDep) -> StreamingResponse:
    """One output of the job, through the API with the caller's key: how a client on
    another machine fetches outputs when storage is a local folder (its ``file://`` URLs
    work only on the API's machine) or an S3 endpoint it cannot reach."""
    record = owned_job(state, key, job_id)
    ref = next((o for o in record.outputs if o.name == name), None)
    if ref is None:
        names = ", ".join(o.name for o in record.outputs) or "none yet"
        raise ApiError(
            404,
            f"job {job_id} has no output named {name!r}; its outputs: {names}.",
            type="invalid_request_error",
            code="not_found",
        )
    filename = name.rsplit("/", 1)[-1]
    return object_response(
        state.stoker.storage, ref.key, ref.content_type, size=ref.size_bytes, filename=filename
    )


def _event(record: JobRecord) -> str:
    data = {
        "id": record.id,
        "state": record.state.value,
        "progress": record.progress.model_dump(),
        "error": record.error.model_dump() if record.error else None,
    }
    return f"event: {'end' if record.state.terminal else 'update'}\ndata: {json.dumps(data)}\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(job_id: str, state: StateDep, key: KeyDep) -> StreamingResponse:
    """Server-sent events: one ``update`` per change of state or progress, ``end`` last."""
    owned_job(state, key, job_id)
    poll_s = state.settings.api.poll_s

    async def stream() -> AsyncIterator[str]:
        last = None
        while True:
            record = await run_in_threadpool(state.stoker.status, job_id)
            state.metrics.job_seen(record)
            current = (record.state, record.progress.done, record.progress.stage)
            if current != last:
                last = current
                yield _event(record)
            if record.state.terminal:
                return
            await asyncio.sleep(poll_s)

    headers = {"Cache-Control": "no-cache"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
