"""Submission: validate, write the job record, queue its chunks.

In two steps, :func:`stage` (validate, store the inputs) and :func:`commit` (record
and queue), so that a batch of 50,000 lines is recorded and queued in groups: a round
trip per line to the store and another to the broker would be most of its cost.

Validation happens here, in the submitting process, so bad input (an unknown voice,
an empty text) is refused before anything is queued, not an hour later on a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.exceptions import BatchPublishError, OperationalError

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


@dataclass
class StagedJob:
    """A validated job with its inputs stored, not yet recorded or queued (:func:`commit`)."""

    record: JobRecord
    plans: list[ChunkPlan]
    # Content-addressed inputs found already stored, checked again once the job is
    # recorded (see commit), with what to upload if they went meanwhile.
    found: dict[str, Path | bytes] = field(default_factory=dict)


def stage(
    *,
    storage: Storage,
    ctx: PrepareContext,
    kind: str,
    request: dict[str, Any],
    owner: str = "local",
    priority: Priority | None = None,
    parent: str | None = None,
    parent_index: int | None = None,
) -> StagedJob:
    """Validate ``request`` for ``kind`` and store its inputs; :func:`commit` records
    and queues it. ``parent``/``parent_index`` make it a child of a batch (batches.py).

    Raises InvalidInput / UnknownModel; nothing is recorded.
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
    job = StagedJob(record, prepared.chunks)
    for key, content in prepared.uploads.items():
        record.inputs.append(key)
        if storage.exists(key):  # content-addressed: the same bytes are there already
            job.found[key] = content
        else:
            _upload(storage, key, content)
    if parent is not None:
        # The batch is recorded and queued already, which stops a sweep as a recorded
        # job does: check now, while the caller still holds the content (a file
        # fetched for this child only is gone by the time its group is committed).
        _restore_found(storage, job)
    return job


def commit(*, app: Celery, store: JobStore, storage: Storage, jobs: Sequence[StagedJob]) -> None:
    """Record ``jobs`` and queue their chunks: one write to the store for all of them,
    and on Redis one round trip per thousand messages (kombu's publish batch).

    Raises BrokerUnavailable if the broker cannot take them: every one of ``jobs`` is
    then recorded as failed with that reason.
    """
    # The payloads are kept with the record too, for a retry (JobStore.requeue).
    payloads = [[plan.payload for plan in job.plans] for job in jobs]
    store.create_many([job.record for job in jobs], payloads)
    # An input found at staging may have been swept (`stoker prune --inputs`) before
    # the record that keeps it was created; the sweep stops once it sees a job queued.
    for job in jobs:
        _restore_found(storage, job)
    messages = [Messages(j.record, list(enumerate(p))) for j, p in zip(jobs, payloads, strict=True)]
    _enqueue(app, store, messages)
    for job in jobs:
        log.info("queued %s job %s: %d chunk(s)", job.record.kind, job.record.id, len(job.plans))


@dataclass(frozen=True)
class Messages:
    """The chunk tasks to send for one job: (chunk index, payload) each."""

    record: JobRecord
    chunks: Sequence[tuple[int, dict[str, Any]]]


def requeue(*, app: Celery, store: JobStore, jobs: Sequence[Messages]) -> None:
    """Queue again the given chunks of jobs moved back to queued (JobStore.requeue),
    with the payloads kept from their submission. Raises BrokerUnavailable as
    :func:`commit`, failing the jobs again."""
    _enqueue(app, store, jobs)
    for job in jobs:
        record = job.record
        log.info("queued %s job %s again: %d chunk(s)", record.kind, record.id, len(job.chunks))


def _restore_found(storage: Storage, job: StagedJob) -> None:
    for key, content in job.found.items():
        if not storage.exists(key):
            _upload(storage, key, content)
    job.found.clear()


def _upload(storage: Storage, key: str, content: Path | bytes) -> None:
    if isinstance(content, bytes):
        storage.put_bytes(key, content)
    else:
        storage.put_file(key, content)


def job_queue(settings: Settings, kind: str, model: str | None) -> str:
    """The queue of a ``kind`` job on ``model``.

    One queue per model, so a worker can keep taking its warm model's work; "fifo"
    keeps every model's jobs in one queue, in submission order. A model named by path
    gets its own queue only where workers can discover it (path_queues.py).
    """
    model = model if settings.scheduling == "backlog" else None
    if path_queues.is_path_model(model) and not steers_by_backlog(settings):
        return model_queue(kind, None)
    return model_queue(kind, model)


def _queue(settings: Settings, record: JobRecord) -> str:
    """:func:`job_queue` for ``record``, registered first if it is a path model's."""
    queue = job_queue(settings, record.kind, record.model)
    if queue != record.kind and path_queues.is_path_model(record.model):
        path_queues.register(settings, path_queues.PathQueue(queue, record.kind, str(record.model)))
    return queue


def _enqueue(app: Celery, store: JobStore, jobs: Sequence[Messages]) -> None:
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            # Each queue is found (a path model's is registered: a write) and declared
            # once, not once per job: a batch's children mostly share one.
            queues: dict[tuple[str, str | None], str] = {}
            for job in jobs:
                where = (job.record.kind, job.record.model)
                first = where not in queues
                if first:
                    queues[where] = _queue(app.stoker_settings, job.record)
                _publish(app, producer, job, queues[where], declare=first)
    except (OperationalError, BatchPublishError) as exc:
        # A failed batch may have queued some of its messages; their jobs are failed
        # here, and a worker does not run a chunk of a job that ended.
        ids = ", ".join(job.record.id for job in jobs[:3]) + (", ..." if len(jobs) > 3 else "")
        error = BrokerUnavailable(
            f"could not queue job {ids}: the broker is unreachable ({exc}); check "
            f"STOKER_BROKER_URL and that the broker is running, then queue them again "
            f"with `stoker retry --failed`."
        )
        for job in jobs:
            store.fail(job.record.id, JobError(kind=error.kind, message=str(error)))
        raise error from exc


def _publish(app: Celery, producer: Any, job: Messages, queue: str, *, declare: bool) -> None:
    """Send ``job``'s chunk tasks to ``queue``, declaring it first if ``declare``."""
    record = job.record
    # Batchable capabilities' chunks are run many at a time (batching.py).
    batched = getattr(get_capability(record.kind), "batchable", False)
    task = BATCHED_CHUNK_TASK if batched else RUN_CHUNK_TASK
    for n, (i, payload) in enumerate(job.chunks):
        app.send_task(
            task,
            args=(record.id, i, payload),
            queue=queue,
            routing_key=queue,
            priority=priority_value(record.priority),
            producer=producer,
            # When it was queued: the worker's starvation guard reads it.
            headers={QUEUED_AT_HEADER: time.time()},
            # None: Celery declares the queue; []: it does not. Logged by its job and
            # chunk: a repr of each payload was a tenth of a batch's cost.
            declare=None if declare and n == 0 else [],
            argsrepr=f"({record.id!r}, {i})",
        )
