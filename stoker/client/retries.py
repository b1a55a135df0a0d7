"""Queue failed or cancelled jobs again, under their ids (`stoker retry`):
:meth:`Stoker.retry` and :meth:`Stoker.retry_failed`.

A job runs again from the chunk payloads kept at its submission, the chunks it had
not finished only; a batch reopens around the files retried, so it assembles again
once they end. OpenAI batches are final once their files are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stoker.errors import BrokerUnavailable, InvalidInput
from stoker.queues.batches import BATCH_KIND, GROUP, child_ended, children
from stoker.queues.records import JobFilter, JobRecord, JobState
from stoker.queues.stores.base import list_all
from stoker.queues.submit import Messages, requeue

if TYPE_CHECKING:
    from stoker.client.stoker import Stoker


@dataclass
class Retried:
    """What :meth:`Stoker.retry` queued again."""

    record: JobRecord  # the job, or the batch, as it is now
    jobs: list[str] = field(default_factory=list)  # ids queued again (a batch: its files)
    chunks: int = 0  # chunk tasks sent (finished chunks are not run again)
    # A batch's failed or cancelled files that were not queued again, and why.
    not_retried: list[tuple[JobRecord, str]] = field(default_factory=list)


def retry(client: Stoker, job_id: str) -> Retried:
    """:meth:`Stoker.retry`."""
    retried = _retry_record(client, client.store.get(job_id))
    _rearm_webhooks(client, retried)
    return retried


def _retry_record(client: Stoker, record: JobRecord) -> Retried:
    """:func:`retry` of a record already read (retry_failed has them listed)."""
    job_id = record.id
    batch = client.store.get(record.parent) if record.parent else record
    if _final(batch):
        raise InvalidInput(
            f"batch {batch.id} is an OpenAI batch, whose output and error files are "
            f"final once written; submit the lines that failed (its error file) as "
            f"a new batch."
        )
    if record.kind == BATCH_KIND:
        return _retry_batch(client, record)
    if why := _not_retriable(record):
        raise InvalidInput(f"job {job_id} {why}")
    retried = _retry_files(client, record.parent, [record])
    if retried.not_retried:
        raise InvalidInput(f"job {job_id} {retried.not_retried[0][1]}")
    retried.record = client.store.get(job_id)
    return retried


def retry_failed(client: Stoker, *, kind: str | None = None) -> list[Retried]:
    """:meth:`Stoker.retry_failed`."""
    done: list[Retried] = []
    by_batch: dict[str, list[JobRecord]] = {}
    for record in list_all(client.store, JobFilter(state=JobState.FAILED, kind=kind)):
        if record.parent is not None:
            by_batch.setdefault(record.parent, []).append(record)
            continue
        try:
            done.append(_retry_record(client, record))
        except InvalidInput as exc:  # the sentence names the job
            done.append(Retried(record, not_retried=[(record, _after_id(exc, record))]))
    for batch_id, kids in by_batch.items():
        batch = client.store.get(batch_id)
        if _final(batch):
            why = "is a line of an OpenAI batch, whose files are final once written"
            done.append(Retried(batch, not_retried=[(k, why) for k in kids]))
            continue
        done.append(_retry_children(client, batch, kids))
    for retried in done:
        _rearm_webhooks(client, retried)
    return done


def _rearm_webhooks(client: Stoker, retried: Retried) -> None:
    """A job submitted over HTTP with a webhook tells its new end too, whoever
    retried it: the webhook of the job (and of a batch a file reopened) is
    pending once more. The records are the API's, on the job store's backend."""
    if not retried.jobs:
        return
    from stoker.api.webhook_records import rearm

    rearm(client.api_records, retried.record.id)
    if retried.record.parent is not None:
        rearm(client.api_records, retried.record.parent)


def _retry_batch(client: Stoker, batch: JobRecord) -> Retried:
    kids = [k for k in children(client.store, batch.id) if not _not_retriable(k)]
    if not kids:
        raise InvalidInput(
            f"batch {batch.id} has no failed or cancelled file to retry "
            f"(`stoker status {batch.id} --files` lists its files)."
        )
    retried = _retry_children(client, batch, kids)
    if not retried.jobs:
        why = retried.not_retried[0][1]
        raise InvalidInput(f"batch {batch.id}: no file could be retried; the first {why}")
    return retried


def _retry_children(client: Stoker, batch: JobRecord, kids: list[JobRecord]) -> Retried:
    """:func:`_retry_files` of ``kids`` of ``batch``, a group at a time."""
    retried = Retried(batch)
    for at in range(0, len(kids), GROUP):
        group = _retry_files(client, batch.id, kids[at : at + GROUP])
        retried.jobs += group.jobs
        retried.chunks += group.chunks
        retried.not_retried += group.not_retried
    retried.record = client.store.get(batch.id)
    return retried


def _retry_files(client: Stoker, parent: str | None, records: list[JobRecord]) -> Retried:
    """Queue ``records`` (failed or cancelled, all of batch ``parent`` if any)
    again. Their batch, if any, first counts them as not ended, so that it
    assembles again once they end (an order that leaves no moment where one
    could end uncounted)."""
    retried = Retried(records[0])
    plans: list[tuple[JobRecord, list[dict[str, Any]]]] = []
    for record in records:
        payloads = client.store.chunk_payloads(record.id)
        if payloads:
            plans.append((record, payloads))
        else:
            retried.not_retried.append((record, _nothing_kept(record)))
    if parent is not None and plans:
        places = [r.parent_index for r, _ in plans if r.parent_index is not None]
        client.store.requeue(parent, stage="running", undone=places)
    messages = []
    for record, payloads in plans:
        done = client.store.done_chunks(record.id)
        if not client.store.requeue(record.id):
            # Queued or running again already (another retry): that run ends it.
            retried.not_retried.append((record, "was queued again meanwhile"))
            continue
        # A job whose chunks all finished (it failed in assembly) gets its first
        # chunk again: its worker finds the output there and assembles.
        chunks = [(i, p) for i, p in enumerate(payloads) if i not in done] or [(0, payloads[0])]
        messages.append(Messages(record, chunks))
        retried.jobs.append(record.id)
        retried.chunks += len(chunks)
    try:
        requeue(app=client.app, store=client.store, jobs=messages)
    except BrokerUnavailable:
        # Failed again by the enqueue; their batch must count them as ended.
        for job in messages:
            if parent is not None and job.record.parent_index is not None:
                child_ended(client.store, client.storage, parent, job.record.parent_index)
        raise
    return retried


def _final(batch: JobRecord) -> bool:
    """Whether ``batch`` is an OpenAI batch (submit_batch(retriable=False)), whose
    output and error files are final once written: it and its jobs are never retried."""
    return batch.kind == BATCH_KIND and batch.params.get("retriable") is False


def _not_retriable(record: JobRecord) -> str | None:
    """Why ``record`` cannot be retried by state, as the end of a sentence; None if it can."""
    if record.state in (JobState.FAILED, JobState.CANCELLED):
        return None
    if record.state is JobState.SUCCEEDED:
        return (
            "succeeded; its outputs are ready (`stoker get`). Items that failed inside it "
            "(lines in errors.jsonl) can be submitted again as a new job."
        )
    return (
        f"is {record.state.value}; only a failed or cancelled job can be retried (if no "
        f"worker will run it any more, `stoker cancel {record.id}` first)."
    )


def _after_id(exc: InvalidInput, record: JobRecord) -> str:
    """The reason in ``exc`` ("job ID <reason>") without its subject."""
    return str(exc).removeprefix(f"job {record.id} ")


def _nothing_kept(record: JobRecord) -> str:
    """Why a failed job has no chunk payloads kept, as the end of a sentence."""
    why = f" ({record.error.message})" if record.error else ""
    return (
        f"has no chunks kept to run again: it was refused at submission{why}, or "
        f"submitted by a stoker older than retries; submit it again."
    )
