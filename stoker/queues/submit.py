"""Submission: validate, write the job record, queue its chunks.

Validation happens here, in the submitting process, so bad input (an unknown voice,
an empty text) is refused before anything is queued, not an hour later on a worker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from stoker.config import Priority, Settings
from stoker.errors import BrokerUnavailable
from stoker.jobs import get_capability
from stoker.jobs.base import ChunkPlan, PrepareContext
from stoker.queues import path_queues
from stoker.queues.app import (
    BATCHED_CHUNK_TASK,
    QUEUED_AT_HEADER,
    RUN_CHUNK_TASK,
    model_queue,
    priority_value,
    steers_by_backlog,
)
from stoker.queues.records import ChunkRef, JobError, JobRecord, Progress, new_record
from stoker.queues.stores.base import JobStore
from stoker.storage import Storage
from stoker.storage.keys import chunk_key, content_digest, input_key

log = logging.getLogger(__name__)


def submit(
    *,
    app: Celery,
    store: JobStore,
    storage: Storage,
    ctx: PrepareContext,
    kind: str,
    request: dict[str, Any],
    owner: str = "local",
    priority: Priority | None = None,
    parent: str | None = None,
    parent_index: int | None = None,
) -> JobRecord:
    """Validate ``request`` for ``kind``, record the job and queue its chunks.

    ``parent``/``parent_index`` make it a child of a batch (see batches.py).

    Raises InvalidInput / UnknownModel (nothing is recorded) or BrokerUnavailable
    (the job is recorded as failed with that reason).
    """
    cap = get_capability(kind)
    prepared = cap.prepare(request, ctx)
    chunks = [
        ChunkRef(index=i, key=chunk_key(kind, content_digest(plan.identity), cap.chunk_ext))
        for i, plan in enumerate(prepared.chunks)
    ]
    record = new_record(
        kind=kind,
        owner=owner,
        params=prepared.params,
        model=prepared.model,
        priority=priority or ctx.settings.default_priority,
        chunks=chunks,
        progress=Progress(total=len(chunks)),
        parent=parent,
        parent_index=parent_index,
    )
    for name, data in prepared.inputs.items():
        key = input_key(record.id, name)
        storage.put_bytes(key, data, "text/plain; charset=utf-8")
        record.inputs.append(key)
    found = []
    for key, content in prepared.uploads.items():
        record.inputs.append(key)
        if storage.exists(key):  # content-addressed: the same bytes are there already
            found.append(key)
        else:
            _upload(storage, key, content)
    store.create(record)
    # An input found above may have been swept (`stoker prune --inputs`) before the
    # record that keeps it was created; the sweep stops once it sees this job queued.
    for key in found:
        if not storage.exists(key):
            _upload(storage, key, prepared.uploads[key])
    _enqueue(app, store, record, prepared.chunks)
    log.info("queued %s job %s: %d chunk(s)", kind, record.id, len(chunks))
    return record


def _upload(storage: Storage, key: str, content: Path | bytes) -> None:
    if isinstance(content, bytes):
        storage.put_bytes(key, content)
    else:
        storage.put_file(key, content)


def _queue(settings: Settings, record: JobRecord) -> str:
    """The queue for ``record``'s chunks.

    One queue per model, so a worker can keep taking its warm model's work; "fifo"
    keeps every model's jobs in one queue, in submission order. A model named by path
    gets its own queue only where workers can discover it (path_queues.py).
    """
    model = record.model if settings.scheduling == "backlog" else None
    if path_queues.is_path_model(model):
        if not steers_by_backlog(settings):
            return model_queue(record.kind, None)
        queue = model_queue(record.kind, model)
        path_queues.register(settings, path_queues.PathQueue(queue, record.kind, str(model)))
        return queue
    return model_queue(record.kind, model)


def _enqueue(app: Celery, store: JobStore, record: JobRecord, plans: list[ChunkPlan]) -> None:
    try:
        with app.producer_or_acquire() as producer:
            # Batchable capabilities' chunks are run many at a time (batching.py).
            batched = getattr(get_capability(record.kind), "batchable", False)
            task = BATCHED_CHUNK_TASK if batched else RUN_CHUNK_TASK
            queue = _queue(app.stoker_settings, record)
            for i, plan in enumerate(plans):
                app.send_task(
                    task,
                    args=(record.id, i, plan.payload),
                    queue=queue,
                    routing_key=queue,
                    priority=priority_value(record.priority),
                    producer=producer,
                    # When it was queued: the worker's starvation guard reads it.
                    headers={QUEUED_AT_HEADER: time.time()},
                )
    except OperationalError as exc:
        error = BrokerUnavailable(
            f"could not queue job {record.id}: the broker is unreachable ({exc}); "
            f"check STOKER_BROKER_URL and that the broker is running, then resubmit."
        )
        store.fail(record.id, JobError(kind=error.kind, message=str(error)))
        raise error from exc
