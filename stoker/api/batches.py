"""OpenAI Batches over stoker batches: one stoker batch job per OpenAI batch, one child
job per input line, the batch id being the parent job's id.

A line that cannot run (not JSON, wrong method or url, a body the capability refuses)
becomes a failed child and a line of the error file; the others run. A duplicate
``custom_id`` or more than ``api.max_batch_lines`` lines refuse the whole batch (400).
When the parent job ends, the first read starts writing ``output_file_id`` (one line
per successful request) and ``error_file_id`` (one per failed or cancelled one), on a
background thread; reads answer "finalizing" until they are written.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from stoker.api import batch_lines, inputs
from stoker.api.batch_lines import BatchFileError, BatchRequests
from stoker.api.errors import ApiError, not_found
from stoker.api.files import FileObject, get_file, store_file
from stoker.api.keys import ApiKey
from stoker.api.meta import Doc
from stoker.api.openai_shapes import Adapter, adapter_for
from stoker.api.state import ApiState
from stoker.api.submission import check_capacity
from stoker.api.views import output_urls
from stoker.errors import InvalidInput, JobNotFound
from stoker.queues.batches import children, counts_by_state, request_counts, submit_batch
from stoker.queues.records import JobRecord, JobState
from stoker.queues.submit import StagedJob

BATCH_NS = "batch"


def _lines(state: ApiState, obj: FileObject) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of every non-blank line, read as a stream."""
    limit = state.settings.api.max_batch_lines
    count = 0
    with state.stoker.storage.open(obj.key) as f:
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            count += 1
            if count > limit:
                raise ApiError(
                    400,
                    f"the input file has more than {limit} requests "
                    f"(api.max_batch_lines); split it.",
                    param="input_file_id",
                    code="too_many_lines",
                )
            yield number, text


def read_requests(state: ApiState, obj: FileObject, adapter: Adapter) -> BatchRequests:
    """The requests of the uploaded file ``obj`` (batch_lines.read_requests); 400 for a
    file that cannot be a batch."""
    try:
        return batch_lines.read_requests(_lines(state, obj), adapter)
    except BatchFileError as exc:
        raise ApiError(400, str(exc), param="input_file_id", code=exc.code) from None


def create_batch(
    state: ApiState,
    key: ApiKey,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    base_url: str,
) -> dict[str, Any]:
    """Submit the batch of file ``input_file_id``; ``base_url`` is the address the client
    used, kept so that the output file's lines point at outputs on local storage by
    this API's URLs (views.output_urls), as the synchronous answers do."""
    try:
        adapter = adapter_for(endpoint)
    except InvalidInput as exc:
        raise ApiError(400, str(exc), param="endpoint", code="invalid_endpoint") from None
    if completion_window != "24h":
        raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
    obj = get_file(state.meta, key, input_file_id)
    custom_ids, requests, options = read_requests(state, obj, adapter)
    check_capacity(state, adapter.kind)

    def stage_child(request: dict[str, Any], parent: str, index: int) -> StagedJob:
        with inputs.resolved(state, key, request) as local:
            return state.stoker.stage_child(
                adapter.kind,
                local,
                parent=parent,
                index=index,
                owner=key.owner,
                priority="bulk",
            )

    parent = submit_batch(
        store=state.stoker.store,
        storage=state.stoker.storage,
        kind=adapter.kind,
        requests=requests,
        stage_child=stage_child,
        commit=state.stoker.commit,
        owner=key.owner,
        source=input_file_id,
        retriable=False,  # OpenAI's batches never restart; their files are final
        unit="requests",
    )
    state.metrics.submitted.labels("batch").inc()
    state.queued(adapter.kind, len(requests))
    data = {
        "endpoint": endpoint,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "metadata": metadata,
        "custom_ids": custom_ids,
        "options": options,
        "base_url": base_url,
    }
    state.meta.put(Doc(BATCH_NS, parent.id, key.owner, parent.created_at, data))
    return batch_object(state, parent, data)


def owned_batch(state: ApiState, key: ApiKey, batch_id: str) -> tuple[JobRecord, Doc]:
    doc = state.meta.get(BATCH_NS, batch_id)
    if doc is None or not (key.admin or doc.owner == key.owner):
        raise not_found("batch", batch_id)
    record = _batch_job(state, batch_id)
    if record is None:
        raise not_found("batch", batch_id)
    return state.metrics.job_seen(record), doc


def _batch_job(state: ApiState, batch_id: str) -> JobRecord | None:
    """The batch's job; None, its batch record dropped, once the job was deleted."""
    try:
        return state.stoker.status(batch_id)
    except JobNotFound:
        state.meta.delete(BATCH_NS, batch_id)
        return None


#: OpenAI's only completion window; a batch not done by then expires.
WINDOW_S = 24 * 3600


def expire_if_due(
    state: ApiState, parent: JobRecord, data: dict[str, Any], now: float | None = None
) -> tuple[JobRecord, dict[str, Any]]:
    """Expire a batch still running past its completion window: what is done stays in
    the output file, the rest is cancelled and reported as ``batch_expired``."""
    now = time.time() if now is None else now
    if parent.state.terminal or now < parent.created_at + WINDOW_S:
        return parent, data
    data = {**data, "expired_at": int(now)}
    state.meta.put(Doc(BATCH_NS, parent.id, parent.owner, parent.created_at, data))
    return state.stoker.cancel(parent.id), data


def _status(parent: JobRecord, data: dict[str, Any]) -> str:
    if parent.state is JobState.FAILED:
        return "failed"
    if parent.state is JobState.CANCELLED and data.get("expired_at"):
        return "expired"
    if parent.state is JobState.CANCELLED:
        return "cancelled" if "finalized_at" in data else "cancelling"
    if parent.state is JobState.SUCCEEDED:
        return "completed" if "finalized_at" in data else "finalizing"
    return "in_progress"


#: How long a read of one batch waits for its output files before it answers
#: "finalizing" (a list of batches does not wait).
FINALIZE_WAIT_S = 2.0
#: How long one API process holds the right to write a batch's output files; after
#: that (it died, or storage failed) the next read starts again.
FINALIZE_CLAIM_S = 120.0


def batch_object(
    state: ApiState, parent: JobRecord, data: dict[str, Any], wait_s: float = FINALIZE_WAIT_S
) -> dict[str, Any]:
    """OpenAI's Batch object for the batch ``parent``; if it ended, its output files
    are written first, or, when that takes longer than ``wait_s``, while it answers
    "finalizing" (or "cancelling")."""
    parent, data = expire_if_due(state, parent, data)
    if parent.state.terminal and "finalized_at" not in data:
        data = _finalized(state, parent, data, wait_s)
    # Counted once at finalization; while running, from the store's indexes (a read of
    # every child's record would cost seconds per poll for a batch of 50,000 lines).
    counts = data.get("request_counts") or counts_by_state(
        state.stoker.store.child_counts(parent.id)
    )
    status = _status(parent, data)
    ended = int(parent.finished_at) if parent.finished_at else None
    created = int(parent.created_at)
    return {
        "id": parent.id,
        "object": "batch",
        "endpoint": data["endpoint"],
        "errors": None,
        "input_file_id": data["input_file_id"],
        "completion_window": data["completion_window"],
        "status": status,
        "output_file_id": data.get("output_file_id"),
        "error_file_id": data.get("error_file_id"),
        "created_at": created,
        "in_progress_at": created,
        "expires_at": created + WINDOW_S,
        "finalizing_at": ended if status in ("finalizing", "completed") else None,
        "completed_at": int(data["finalized_at"]) if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": data.get("expired_at"),
        "cancelling_at": data.get("cancelling_at"),
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": counts,
        "metadata": data.get("metadata"),
    }


def _finalized(
    state: ApiState, parent: JobRecord, data: dict[str, Any], wait_s: float
) -> dict[str, Any]:
    """``data`` with the output files written, if :func:`finalize` is done within
    ``wait_s``; else ``data`` as it is, finalize going on.

    Finalizing a batch of 50,000 lines reads 50,000 results (minutes on S3): it runs
    on a background thread, not in the request, once across API processes (a claim
    in the meta store); every read meanwhile answers at once.
    """
    run = state.background.running(parent.id)
    if run is None:
        if _children_active(state, parent):
            return data  # a cancel still reaching children: asked again at the next read
        if not state.meta.claim(f"batch-finalize:{parent.id}", FINALIZE_CLAIM_S):
            return data  # another process (or a read just before) is at it
        run = state.background.start(parent.id, lambda: finalize(state, parent, data))
    try:
        return dict(run.result(timeout=wait_s))
    except FutureTimeout:
        return data


def _children_active(state: ApiState, parent: JobRecord) -> bool:
    active = state.stoker.store.child_counts(parent.id)
    return bool(active.get(JobState.QUEUED) or active.get(JobState.RUNNING))


def finalize(state: ApiState, parent: JobRecord, data: dict[str, Any]) -> dict[str, Any]:
    """Write the output and error files of an ended batch whose jobs have all ended
    (:func:`_finalized` checks, before it claims the batch); returns the updated record."""
    kids = children(state.stoker.store, parent.id)
    base_url = data.get("base_url")  # batches made before 2026-12-07 kept none
    urls = (lambda kid: output_urls(state.stoker, kid, base_url)) if base_url else None
    expired = bool(data.get("expired_at"))
    lines = batch_lines.result_lines(state.stoker, kids, data, expired, urls)
    data = dict(data)
    with tempfile.TemporaryDirectory(prefix="stoker-batch-") as tmp:
        paths = {name: Path(tmp) / f"{name}.jsonl" for name in ("output", "errors")}
        with (
            paths["output"].open("w", encoding="utf-8") as good,
            paths["errors"].open("w", encoding="utf-8") as bad,
        ):
            for kid, ok, line in lines:  # in line order, read a step at a time
                state.metrics.job_seen(kid)
                (good if ok else bad).write(json.dumps(line) + "\n")
        for name, field in (("output", "output_file_id"), ("errors", "error_file_id")):
            if paths[name].stat().st_size:
                obj = store_file(
                    state.meta,
                    state.stoker.storage,
                    paths[name],
                    file_id=f"file-{parent.id}-{name}",
                    filename=f"batch_{parent.id}_{name}.jsonl",
                    purpose="batch_output",
                    owner=parent.owner,
                    content_type="application/jsonl",
                )
                data[field] = obj.id
    data["request_counts"] = request_counts(kids)
    data["finalized_at"] = time.time()
    state.meta.put(Doc(BATCH_NS, parent.id, parent.owner, parent.created_at, data))
    return data


def list_batches(state: ApiState, key: ApiKey, *, after: str | None, limit: int) -> dict[str, Any]:
    before = owned_batch(state, key, after)[1].created_at if after else None
    docs = state.meta.list(BATCH_NS, None if key.admin else key.owner, limit + 1, before)
    page = docs[:limit]
    jobs = ((_batch_job(state, d.id), d) for d in page)
    data = [batch_object(state, r, d.data, wait_s=0) for r, d in jobs if r is not None]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(docs) > limit,
    }


def cancel_batch(state: ApiState, key: ApiKey, batch_id: str) -> dict[str, Any]:
    _, doc = owned_batch(state, key, batch_id)
    data = {**doc.data, "cancelling_at": int(time.time())}
    state.meta.put(Doc(BATCH_NS, batch_id, doc.owner, doc.created_at, data))
    return batch_object(state, state.stoker.cancel(batch_id), data)
