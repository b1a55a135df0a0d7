"""Free what ended jobs hold (`stoker delete`, `prune`, `sweep`): a job's records
and files, old jobs by age, and the content-addressed chunks and inputs no job needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stoker.errors import InternalError, InvalidInput, JobNotFound
from stoker.queues.batches import BATCH_KIND, children
from stoker.queues.records import TERMINAL_STATES, JobFilter, JobRecord, JobState
from stoker.queues.stores.base import list_all
from stoker.storage.keys import job_prefix

if TYPE_CHECKING:
    from stoker.client.stoker import Stoker


@dataclass
class Pruned:
    """What :meth:`Stoker.prune` deleted (or, on a dry run, would delete)."""

    jobs: list[JobRecord] = field(default_factory=list)  # jobs and batches, not children
    deleted: int = 0  # records deleted, a batch's children included (0 on a dry run)
    skipped: list[tuple[JobRecord, str]] = field(default_factory=list)  # and why


@dataclass
class Swept:
    """What :meth:`Stoker.sweep_chunks` or :meth:`Stoker.sweep_inputs` deleted (or,
    on a dry run, would delete)."""

    objects: int = 0
    bytes: int = 0
    kept: int = 0  # old enough, but a job lists them (its inputs, a cancelled job's chunks)
    stopped: str | None = None  # why it stopped before the end (a job was queued)


#: Where content-addressed chunk outputs, their notes and chunk-group outputs live.
CHUNKS_PREFIX = "chunks/"
#: Where uploaded inputs live, by content (recordings, prompt files, covers).
INPUTS_PREFIX = "inputs/"


def delete_ended(client: Stoker, record: JobRecord) -> list[str]:
    """:meth:`Stoker.delete` of a record already read (prune has them listed)."""
    job_id = record.id
    if record.parent is not None:
        raise InvalidInput(
            f"job {job_id} is one file of batch {record.parent}; delete the batch "
            f"(`stoker delete {record.parent}`), which deletes its jobs with it."
        )
    kids = children(client.store, job_id) if record.kind == BATCH_KIND else []
    active = [r for r in (record, *kids) if not r.state.terminal]
    if active:
        if active[0] is record:
            what = f"job {job_id} is {record.state}"
        else:
            still = f"{len(active)} of {len(kids)} jobs still queued or running"
            what = f"batch {job_id} has {still}"
        raise InvalidInput(
            f"{what}; only an ended job can be deleted: cancel it first "
            f"(`stoker cancel {job_id}`), then delete it."
        )
    # Files before records and children before their batch: a delete that stops
    # half-way (storage down) leaves records to find and finish it with.
    deleted = [_delete_one(client, kid.id) for kid in kids]
    return [*deleted, _delete_one(client, job_id)]


def _delete_one(client: Stoker, job_id: str) -> str:
    for obj in list(client.storage.list(job_prefix(job_id))):
        client.storage.delete(obj.key)
    if not client.store.delete(job_id):  # an ended job never runs again
        raise InternalError(f"job {job_id} ran again while it was being deleted.")
    return job_id


def prune(
    client: Stoker,
    older_than_s: float,
    *,
    states: Sequence[JobState] = tuple(sorted(TERMINAL_STATES)),
    dry_run: bool = False,
) -> Pruned:
    """:meth:`Stoker.prune`."""
    if older_than_s < 0:
        raise InvalidInput(f"older_than_s is {older_than_s}; give 0 or more seconds.")
    if active := [s.value for s in states if not s.terminal]:
        raise InvalidInput(
            f"prune deletes ended jobs only, not {', '.join(active)} ones; cancel "
            f"those first or leave them out of the states."
        )
    cutoff = time.time() - older_than_s
    pruned = Pruned()
    for state in states:
        listed = list_all(client.store, JobFilter(state=state, before=cutoff))
        pruned.jobs += [r for r in listed if r.parent is None]  # children go with batches
    if dry_run:
        return pruned
    for record in pruned.jobs:
        try:
            pruned.deleted += len(delete_ended(client, record))
        except InvalidInput as exc:
            pruned.skipped.append((record, str(exc)))
        except JobNotFound:  # another prune (another machine's timer) took it
            continue
    skipped = {r.id for r, _ in pruned.skipped}
    pruned.jobs = [r for r in pruned.jobs if r.id not in skipped]
    return pruned


def sweep_chunks(
    client: Stoker, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
) -> Swept:
    """:meth:`Stoker.sweep_chunks`."""

    def listed() -> set[str]:
        # Only a cancelled job lists chunks as its outputs (its finished ones, partial).
        cancelled = list_all(client.store, JobFilter(state=JobState.CANCELLED))
        return {o.key for r in _remaining(cancelled, without) for o in r.outputs if o.partial}

    return _sweep(client, CHUNKS_PREFIX, older_than_s, listed, dry_run)


def sweep_inputs(
    client: Stoker, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
) -> Swept:
    """:meth:`Stoker.sweep_inputs`."""

    def listed() -> set[str]:
        records = list_all(client.store, JobFilter())
        return {key for r in _remaining(records, without) for key in r.inputs}

    return _sweep(client, INPUTS_PREFIX, older_than_s, listed, dry_run)


def _sweep(
    client: Stoker,
    prefix: str,
    older_than_s: float,
    listed: Callable[[], set[str]],
    dry_run: bool,
) -> Swept:
    """Delete the objects under ``prefix`` written before the cutoff, except the
    keys ``listed()`` returns (read after the objects are listed).

    Only while no job is queued or running, checked before every delete: otherwise
    it stops and says why (``Swept.stopped``). A job submitted in the instant
    between a check and a delete could still lose an object it found.
    """
    if older_than_s < 0:
        raise InvalidInput(f"older_than_s is {older_than_s}; give 0 or more seconds.")
    swept = Swept(stopped=_busy(client, prefix))
    if swept.stopped:
        return swept
    cutoff = time.time() - older_than_s
    old = [
        o
        for o in client.storage.list(prefix)
        if o.modified_at is not None and o.modified_at < cutoff
    ]
    keep = listed()
    doomed = [o for o in old if o.key not in keep]
    swept.kept = len(old) - len(doomed)
    for obj in doomed:
        if not dry_run:
            if busy := _busy(client, prefix):
                swept.stopped = busy
                return swept
            client.storage.delete(obj.key)
        swept.objects += 1
        swept.bytes += obj.size_bytes
    return swept


def _busy(client: Stoker, prefix: str) -> str | None:
    """Why the objects under ``prefix`` must not be swept now, or None."""
    active = {JobState.QUEUED.value, JobState.RUNNING.value}
    n = sum(count for (_, state), count in client.store.counts().items() if state in active)
    if not n:
        return None
    jobs = "1 job is" if n == 1 else f"{n} jobs are"
    return (
        f"{jobs} queued or running, and a job may reuse objects under {prefix} while "
        f"it is submitted or runs; sweep again when the queues are idle."
    )


def _remaining(records: list[JobRecord], without: Collection[str]) -> list[JobRecord]:
    """``records`` less the jobs in ``without`` and the children of batches in it."""
    gone = set(without)
    return [r for r in records if r.id not in gone and r.parent not in gone]
