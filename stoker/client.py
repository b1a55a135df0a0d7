"""The Python API: submit jobs, follow them, cancel them, fetch their outputs.

    from stoker.client import Stoker
    from stoker.config import load_settings

    with Stoker(load_settings()) as stoker:
        job = stoker.submit("speak", {"text": "Hello there."})
        job = stoker.wait(job.id)
        stoker.download(job.id, Path("out"))

The CLI and the HTTP API are thin layers over this class.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import Celery

from stoker.api.meta import MetaStore
from stoker.config import Priority, Settings
from stoker.errors import (
    BrokerUnavailable,
    InternalError,
    InvalidInput,
    JobNotFound,
    ObjectNotFound,
)
from stoker.jobs import get_capability
from stoker.jobs.base import ERRORS_NAME, PrepareContext
from stoker.queues.batches import (
    BATCH_KIND,
    GROUP,
    Refused,
    batch_unit,
    child_ended,
    children,
    submit_batch,
)
from stoker.queues.records import TERMINAL_STATES, JobFilter, JobRecord, JobState
from stoker.queues.stores import JobStore, open_job_store
from stoker.queues.stores.base import list_all
from stoker.queues.submit import Messages, StagedJob, commit, job_queue, requeue, stage
from stoker.storage import Storage, open_storage
from stoker.storage.keys import job_key, job_prefix
from stoker.storage.sources import is_s3_url, list_s3, staged
from stoker.workers.cards import fleet_cards
from stoker.workers.catalog import ModelCatalog
from stoker.workers.coverage import QueueCover, cover
from stoker.workers.execute import partial_output
from stoker.workers.io_threads import StorageIO

if TYPE_CHECKING:  # (api.batch_lines is imported when a batch file is submitted)
    from stoker.api.batch_lines import BatchFile


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


@dataclass
class Retried:
    """What :meth:`Stoker.retry` queued again."""

    record: JobRecord  # the job, or the batch, as it is now
    jobs: list[str] = field(default_factory=list)  # ids queued again (a batch: its files)
    chunks: int = 0  # chunk tasks sent (finished chunks are not run again)
    # A batch's failed or cancelled files that were not queued again, and why.
    not_retried: list[tuple[JobRecord, str]] = field(default_factory=list)


#: Where content-addressed chunk outputs, their notes and chunk-group outputs live.
CHUNKS_PREFIX = "chunks/"
#: Where uploaded inputs live, by content (recordings, prompt files, covers).
INPUTS_PREFIX = "inputs/"


class Stoker:
    """A client of one stoker deployment (one broker, one job store, one storage).

    With ``model_paths`` (the default), a request's ``model`` may be the path of a
    model file or folder on this machine: it is recorded as its absolute path, and
    workers load it from that path. The HTTP API turns this off.
    """

    def __init__(self, settings: Settings, *, model_paths: bool = True) -> None:
        self.settings = settings
        self.model_paths = model_paths

    @cached_property
    def app(self) -> Celery:
        from stoker.queues.app import make_celery

        return make_celery(self.settings)

    @cached_property
    def store(self) -> JobStore:
        return open_job_store(self.settings)

    @cached_property
    def api_records(self) -> MetaStore:
        from stoker.api.meta import open_meta_store

        return open_meta_store(self.settings)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings)

    @cached_property
    def io(self) -> StorageIO:
        """Downloads side by side on remote storage (a batch of 5,000 files has 20,000
        transcripts to fetch: one round trip each)."""
        return StorageIO(self.storage.remote)

    @cached_property
    def catalog(self) -> ModelCatalog:
        """This machine's models, and with a Redis job store the live workers' (a model
        whose files are on the workers only is checked with their model cards)."""
        return ModelCatalog(
            self.settings, model_paths=self.model_paths, fleet=fleet_cards(self.settings)
        )

    def submit(
        self,
        kind: str,
        request: dict[str, Any],
        *,
        owner: str = "local",
        priority: Priority | None = None,
    ) -> JobRecord:
        """Validate and queue a job.

        Raises InvalidInput / UnknownModel (nothing is recorded) or BrokerUnavailable
        (the job is recorded as failed with that reason).
        """
        # Committed inside the block: a found input is checked again once the job is
        # recorded, and an s3:// input's local copy is still there to upload it from.
        with self._stage(kind, request, owner, priority) as job:
            self.commit([job])
        return job.record

    def submit_batch(
        self,
        kind: str,
        requests: Sequence[dict[str, Any] | Refused],
        *,
        source: str,
        owner: str = "local",
        priority: Priority | None = None,
        unit: str = "files",
        created: Callable[[JobRecord], None] = lambda parent: None,
    ) -> JobRecord:
        """One batch job with a child per request; inputs refused at submission (and
        the :class:`~stoker.queues.batches.Refused` given for inputs that are not
        requests) are recorded as failed children, with their reason, and the rest go
        on. ``unit`` names the inputs where the CLI shows them ("lines");
        ``created(batch)`` runs once it is recorded, before any input is queued."""

        def stage_child(request: dict[str, Any], parent: str, index: int) -> StagedJob:
            return self.stage_child(
                kind, request, parent=parent, index=index, owner=owner, priority=priority
            )

        return submit_batch(
            store=self.store,
            storage=self.storage,
            kind=kind,
            requests=requests,
            stage_child=stage_child,
            commit=self.commit,
            owner=owner,
            source=source,
            unit=unit,
            created=created,
        )

    def submit_lines(
        self,
        kind: str,
        path: Path,
        defaults: dict[str, Any] | None = None,
        *,
        owner: str = "local",
        priority: Priority | None = None,
    ) -> JobRecord:
        """A file of lines as one batch, a job per line: prompts for ``image`` or
        ``mesh``, texts for ``speak`` (one audio file each), each line on top of
        ``defaults`` (every line's model and options; jobs/line_files.py says how a
        file is read). A line that is not a request fails alone, named in the batch's
        errors.jsonl; InvalidInput when the file cannot be read or has no line."""
        from stoker.jobs.line_files import read_line_file

        items = read_line_file(path, kind, defaults or {})
        return self.submit_batch(
            kind, items, source=str(path), owner=owner, priority=priority, unit="lines"
        )

    def submit_openai_batch(
        self,
        path: Path | BatchFile,
        *,
        owner: str = "local",
        priority: Priority | None = None,
    ) -> JobRecord:
        """An OpenAI Batch input file (JSONL lines ``{"custom_id", "method", "url",
        "body"}``), or one already read, as one batch, a job per line, read as the HTTP
        API reads an uploaded one (api/batch_lines.py); a line that cannot run fails
        alone. Once it ends, :meth:`download` writes OpenAI's output and error files for
        it. InvalidInput, naming the file, when it cannot be a batch."""
        from stoker.api import batch_lines

        batch_file = (
            batch_lines.read_file(path, self.settings.api.max_batch_lines)
            if isinstance(path, Path)
            else path
        )

        def keep(batch: JobRecord) -> None:  # before any line runs: `get` always finds it
            self.storage.put_json(job_key(batch.id, batch_lines.REQUESTS_NAME), batch_file.kept())

        return self.submit_batch(
            batch_file.adapter.kind,
            batch_file.requests,
            source=batch_file.source,
            owner=owner,
            priority=priority,
            unit="requests",
            created=keep,
        )

    def stage_child(
        self,
        kind: str,
        request: dict[str, Any],
        *,
        parent: str,
        index: int,
        owner: str = "local",
        priority: Priority | None = None,
    ) -> StagedJob:
        """Validate one child of a batch and store its inputs; :meth:`commit` records
        and queues it. For a caller that records the batch itself (the HTTP API's
        OpenAI batches go through ``queues.batches.submit_batch`` with their own
        per-line translation). Raises InvalidInput / UnknownModel, as :meth:`submit`."""
        with self._stage(kind, request, owner, priority, parent, index) as job:
            return job

    def commit(self, jobs: list[StagedJob]) -> None:
        """Record and queue staged jobs together; raises BrokerUnavailable as :meth:`submit`."""
        commit(app=self.app, store=self.store, storage=self.storage, jobs=jobs)

    @contextmanager
    def _stage(
        self,
        kind: str,
        request: dict[str, Any],
        owner: str,
        priority: Priority | None,
        parent: str | None = None,
        index: int | None = None,
    ) -> Iterator[StagedJob]:
        """``request`` staged (queues.submit.stage), its local inputs kept for the block."""
        with self._staged(self._resolved(request)) as local:
            yield stage(
                storage=self.storage,
                ctx=PrepareContext(self.settings, self.catalog),
                kind=kind,
                request=local,
                owner=owner,
                priority=priority,
                parent=parent,
                parent_index=index,
            )

    def _resolved(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with a model named by a path on this machine made absolute."""
        model = request.get("model")
        if self.model_paths and isinstance(model, str):
            return {**request, "model": self.catalog.resolve(model)}
        return request

    @contextmanager
    def _staged(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``request`` with an ``s3://`` path replaced by a local copy, for the block."""
        location = str(request.get("path", ""))
        if not is_s3_url(location):
            yield request
            return
        with staged(location, self.settings) as path:
            yield {**request, "path": str(path), "name": request.get("name") or path.name}

    def media_under(self, target: str) -> list[tuple[str, str]]:
        """``(name, location)`` of every recording under a folder or an ``s3://`` prefix."""
        from stoker.jobs.media import MEDIA_EXTENSIONS, find_media

        if is_s3_url(target):
            return list_s3(target, self.settings, MEDIA_EXTENSIONS)
        root = Path(target)
        return [(p.relative_to(root).as_posix(), str(p)) for p in find_media(root)]

    def done_chunks(self, job_id: str) -> set[int]:
        """Indexes of the job's finished chunks (per-chapter progress of a book)."""
        return self.store.done_chunks(job_id)

    def children(self, batch_id: str) -> list[JobRecord]:
        """Every job of the batch, in input order (each record read: see child_counts)."""
        return children(self.store, batch_id)

    def child_counts(self, batch_id: str) -> dict[JobState, int]:
        """How many of the batch's jobs are in each state, without reading them."""
        return self.store.child_counts(batch_id)

    def status(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def jobs(self, flt: JobFilter | None = None) -> list[JobRecord]:
        return self.store.list(flt or JobFilter())

    def waiting(self, record: JobRecord) -> QueueCover | None:
        """Why a queued job waits: its queue now, what waits there, and which live
        workers could take it (a batch: its first queued file's). None when it is not
        queued, or where nothing can tell (the embedded broker or job store)."""
        if record.kind == BATCH_KIND and not record.state.terminal:
            first = self.store.list(JobFilter(parent=record.id, state=JobState.QUEUED, limit=1))
            record = first[0] if first else record
        if record.state is not JobState.QUEUED or record.kind == BATCH_KIND:
            return None
        queue = job_queue(self.settings, record.kind, record.model)
        found = cover(self.settings, [(queue, record.model)])
        return found[0] if found else None

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.2,
        on_update: Callable[[JobRecord], None] | None = None,
    ) -> JobRecord:
        """Poll until the job is terminal; returns its record. TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.store.get(job_id)
            if on_update is not None:
                on_update(record)
            if record.state.terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {record.state} after {timeout_s}s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job; its finished chunks are kept as partial outputs.

        A batch is cancelled first, then each of its unfinished children. A job that
        already ended is returned unchanged.
        """
        if not self.store.cancel(job_id):
            return self.store.get(job_id)
        record = self.store.get(job_id)
        if record.kind == BATCH_KIND:
            for kid in children(self.store, job_id):
                if not kid.state.terminal:
                    self.cancel(kid.id)
            return self.store.get(job_id)
        done = sorted(self.store.done_chunks(job_id))
        if done:
            cap = get_capability(record.kind)
            partial = [partial_output(self.storage, cap, record, i) for i in done]
            self.store.add_outputs(job_id, partial)
        if record.parent is not None and record.parent_index is not None:
            child_ended(self.store, self.storage, record.parent, record.parent_index)
        return self.store.get(job_id)

    def retry(self, job_id: str) -> Retried:
        """Queue a failed or cancelled job again, under its id: the chunks it had not
        finished run (with the payloads kept from its submission), and it assembles
        as if it had never stopped. For a batch, every failed or cancelled file of it
        (a batch that ended goes back to running); for one file of a batch, that file.

        For after the cause is fixed: a model installed on the workers, a time limit
        raised, a worker given more memory. Bad input fails again, with its reason.
        Raises InvalidInput for a job that is queued, running or succeeded, or that
        has nothing kept to run again (the reason is given), JobNotFound for an
        unknown id, BrokerUnavailable as :meth:`submit` (the jobs fail again).
        """
        retried = self._retry_record(self.store.get(job_id))
        self._rearm_webhooks(retried)
        return retried

    def _retry_record(self, record: JobRecord) -> Retried:
        """:meth:`retry` of a record already read (retry_failed has them listed)."""
        job_id = record.id
        batch = self.store.get(record.parent) if record.parent else record
        if _final(batch):
            raise InvalidInput(
                f"batch {batch.id} is an OpenAI batch, whose output and error files are "
                f"final once written; submit the lines that failed (its error file) as "
                f"a new batch."
            )
        if record.kind == BATCH_KIND:
            return self._retry_batch(record)
        if why := _not_retriable(record):
            raise InvalidInput(f"job {job_id} {why}")
        retried = self._retry_files(record.parent, [record])
        if retried.not_retried:
            raise InvalidInput(f"job {job_id} {retried.not_retried[0][1]}")
        retried.record = self.store.get(job_id)
        return retried

    def retry_failed(self, *, kind: str | None = None) -> list[Retried]:
        """:meth:`retry` every failed job (of ``kind``, if given): each job on its
        own, and the failed files of each batch together (one reopening per batch).
        Returns one entry per job or batch retried; a job that cannot be retried
        (refused at submission, of an OpenAI batch) is in ``not_retried`` of an entry
        whose ``jobs`` may be empty, and the others go on.
        """
        done: list[Retried] = []
        by_batch: dict[str, list[JobRecord]] = {}
        for record in list_all(self.store, JobFilter(state=JobState.FAILED, kind=kind)):
            if record.parent is not None:
                by_batch.setdefault(record.parent, []).append(record)
                continue
            try:
                done.append(self._retry_record(record))
            except InvalidInput as exc:  # the sentence names the job
                done.append(Retried(record, not_retried=[(record, _after_id(exc, record))]))
        for batch_id, kids in by_batch.items():
            batch = self.store.get(batch_id)
            if _final(batch):
                why = "is a line of an OpenAI batch, whose files are final once written"
                done.append(Retried(batch, not_retried=[(k, why) for k in kids]))
                continue
            done.append(self._retry_children(batch, kids))
        for retried in done:
            self._rearm_webhooks(retried)
        return done

    def _rearm_webhooks(self, retried: Retried) -> None:
        """A job submitted over HTTP with a webhook tells its new end too, whoever
        retried it: the webhook of the job (and of a batch a file reopened) is
        pending once more. The records are the API's, on the job store's backend."""
        if not retried.jobs:
            return
        from stoker.api.webhook_records import rearm

        rearm(self.api_records, retried.record.id)
        if retried.record.parent is not None:
            rearm(self.api_records, retried.record.parent)

    def _retry_batch(self, batch: JobRecord) -> Retried:
        kids = [k for k in children(self.store, batch.id) if not _not_retriable(k)]
        if not kids:
            raise InvalidInput(
                f"batch {batch.id} has no failed or cancelled file to retry "
                f"(`stoker status {batch.id} --files` lists its files)."
            )
        retried = self._retry_children(batch, kids)
        if not retried.jobs:
            why = retried.not_retried[0][1]
            raise InvalidInput(f"batch {batch.id}: no file could be retried; the first {why}")
        return retried

    def _retry_children(self, batch: JobRecord, kids: list[JobRecord]) -> Retried:
        """:meth:`_retry_files` of ``kids`` of ``batch``, a group at a time."""
        retried = Retried(batch)
        for at in range(0, len(kids), GROUP):
            group = self._retry_files(batch.id, kids[at : at + GROUP])
            retried.jobs += group.jobs
            retried.chunks += group.chunks
            retried.not_retried += group.not_retried
        retried.record = self.store.get(batch.id)
        return retried

    def _retry_files(self, parent: str | None, records: list[JobRecord]) -> Retried:
        """Queue ``records`` (failed or cancelled, all of batch ``parent`` if any)
        again. Their batch, if any, first counts them as not ended, so that it
        assembles again once they end (an order that leaves no moment where one
        could end uncounted)."""
        retried = Retried(records[0])
        plans: list[tuple[JobRecord, list[dict[str, Any]]]] = []
        for record in records:
            payloads = self.store.chunk_payloads(record.id)
            if payloads:
                plans.append((record, payloads))
            else:
                retried.not_retried.append((record, _nothing_kept(record)))
        if parent is not None and plans:
            places = [r.parent_index for r, _ in plans if r.parent_index is not None]
            self.store.requeue(parent, stage="running", undone=places)
        messages = []
        for record, payloads in plans:
            done = self.store.done_chunks(record.id)
            if not self.store.requeue(record.id):
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
            requeue(app=self.app, store=self.store, jobs=messages)
        except BrokerUnavailable:
            # Failed again by the enqueue; their batch must count them as ended.
            for job in messages:
                if parent is not None and job.record.parent_index is not None:
                    child_ended(self.store, self.storage, parent, job.record.parent_index)
            raise
        return retried

    def delete(self, job_id: str) -> list[str]:
        """Delete an ended job: everything stored under ``jobs/<id>/`` (outputs, the
        manifest, uploaded inputs), then its record. A batch goes with its children.
        Returns the ids deleted, children first.

        Raises InvalidInput for a job still queued or running (cancel it first) or one
        that is a file of a batch (delete the batch), JobNotFound for an unknown id.
        Content-addressed objects (``chunks/``, ``inputs/``) stay: other jobs made of
        the same content share them, and a re-submitted job resumes from them;
        :meth:`sweep_chunks` and :meth:`sweep_inputs` free them.
        """
        return self._delete_ended(self.store.get(job_id))

    def _delete_ended(self, record: JobRecord) -> list[str]:
        """:meth:`delete` of a record already read (prune has them from its listing)."""
        job_id = record.id
        if record.parent is not None:
            raise InvalidInput(
                f"job {job_id} is one file of batch {record.parent}; delete the batch "
                f"(`stoker delete {record.parent}`), which deletes its jobs with it."
            )
        kids = children(self.store, job_id) if record.kind == BATCH_KIND else []
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
        deleted = [self._delete_one(kid.id) for kid in kids]
        return [*deleted, self._delete_one(job_id)]

    def _delete_one(self, job_id: str) -> str:
        for obj in list(self.storage.list(job_prefix(job_id))):
            self.storage.delete(obj.key)
        if not self.store.delete(job_id):  # an ended job never runs again
            raise InternalError(f"job {job_id} ran again while it was being deleted.")
        return job_id

    def prune(
        self,
        older_than_s: float,
        *,
        states: Sequence[JobState] = tuple(sorted(TERMINAL_STATES)),
        dry_run: bool = False,
    ) -> Pruned:
        """Delete the ended jobs (in ``states``) created more than ``older_than_s``
        seconds ago, as :meth:`delete` does; a batch's children go with their batch.

        A job that cannot be deleted (a batch with a child still running) is skipped
        and reported, and the others are deleted. ``dry_run`` deletes nothing.
        """
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
            listed = list_all(self.store, JobFilter(state=state, before=cutoff))
            pruned.jobs += [r for r in listed if r.parent is None]  # children go with batches
        if dry_run:
            return pruned
        for record in pruned.jobs:
            try:
                pruned.deleted += len(self._delete_ended(record))
            except InvalidInput as exc:
                pruned.skipped.append((record, str(exc)))
            except JobNotFound:  # another prune (another machine's timer) took it
                continue
        skipped = {r.id for r, _ in pruned.skipped}
        pruned.jobs = [r for r in pruned.jobs if r.id not in skipped]
        return pruned

    def sweep_chunks(
        self, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
    ) -> Swept:
        """Delete the content-addressed objects under ``chunks/`` (chunk outputs, their
        notes, chapter outputs) last written more than ``older_than_s`` seconds ago.

        They are a cache: a job reads its chunks only while it runs, and a job that
        needs one that is gone makes it again. Objects a job lists as outputs (a
        cancelled job's finished chunks) are kept. Runs only while no job is queued
        or running (see :meth:`_sweep`): a running job reads its chunks, and a job
        queued now may find an old one and skip making it. ``without``: ids of jobs
        (or batches) to count as deleted already (a dry run after a dry-run prune).
        """

        def listed() -> set[str]:
            # Only a cancelled job lists chunks as its outputs (its finished ones, partial).
            cancelled = list_all(self.store, JobFilter(state=JobState.CANCELLED))
            return {o.key for r in _remaining(cancelled, without) for o in r.outputs if o.partial}

        return self._sweep(CHUNKS_PREFIX, older_than_s, listed, dry_run)

    def sweep_inputs(
        self, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
    ) -> Swept:
        """Delete the uploaded inputs under ``inputs/`` (recordings, prompt files,
        covers, stored once by content) last written more than ``older_than_s``
        seconds ago that no remaining job lists as an input.

        A job keeps its inputs until it is deleted (``prune`` first, then this frees
        what the deleted jobs alone used). Runs only while no job is queued or running
        (see :meth:`_sweep`): a job submitted now may find an old input and not upload
        it again (submit puts it back if it went in that instant). ``without`` as
        for :meth:`sweep_chunks`.
        """

        def listed() -> set[str]:
            records = list_all(self.store, JobFilter())
            return {key for r in _remaining(records, without) for key in r.inputs}

        return self._sweep(INPUTS_PREFIX, older_than_s, listed, dry_run)

    def _sweep(
        self,
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
        swept = Swept(stopped=self._busy(prefix))
        if swept.stopped:
            return swept
        cutoff = time.time() - older_than_s
        old = [
            o
            for o in self.storage.list(prefix)
            if o.modified_at is not None and o.modified_at < cutoff
        ]
        keep = listed()
        doomed = [o for o in old if o.key not in keep]
        swept.kept = len(old) - len(doomed)
        for obj in doomed:
            if not dry_run:
                if busy := self._busy(prefix):
                    swept.stopped = busy
                    return swept
                self.storage.delete(obj.key)
            swept.objects += 1
            swept.bytes += obj.size_bytes
        return swept

    def _busy(self, prefix: str) -> str | None:
        """Why the objects under ``prefix`` must not be swept now, or None."""
        active = {JobState.QUEUED.value, JobState.RUNNING.value}
        n = sum(count for (_, state), count in self.store.counts().items() if state in active)
        if not n:
            return None
        jobs = "1 job is" if n == 1 else f"{n} jobs are"
        return (
            f"{jobs} queued or running, and a job may reuse objects under {prefix} while "
            f"it is submitted or runs; sweep again when the queues are idle."
        )

    def download(self, job_id: str, out_dir: Path, *, include_partial: bool = False) -> list[Path]:
        """Copy the job's outputs into ``out_dir``; returns the files written."""
        record = self.store.get(job_id)
        refs = [o for o in record.outputs if include_partial or not o.partial]
        if not refs:
            raise InvalidInput(
                f"job {job_id} is {record.state} and has no outputs to download"
                + ("; add --partial for the chunks it finished." if record.outputs else ".")
            )
        if record.kind == BATCH_KIND and (written := self._openai_results(record, out_dir)):
            return written
        wanted = [(ref.key, out_dir / ref.name) for ref in refs]
        if record.kind == BATCH_KIND:
            wanted += self._children_outputs(record, out_dir)
        return self.io.all(lambda pair: self.storage.download(*pair), wanted)

    def _openai_results(self, batch: JobRecord, out_dir: Path) -> list[Path]:
        """For a batch submitted as an OpenAI Batch file (:meth:`submit_openai_batch`),
        its output and error files, written to ``out_dir``; [] for any other batch."""
        from stoker.api import batch_lines

        if batch.params.get("unit") != "requests":
            return []
        try:
            kept = self.storage.get_bytes(job_key(batch.id, batch_lines.REQUESTS_NAME))
        except ObjectNotFound:  # one of the HTTP API's (its files are in GET /v1/batches)
            return []
        kids = children(self.store, batch.id)
        return batch_lines.write_results(self, kids, json.loads(kept), out_dir)

    def _children_outputs(self, batch: JobRecord, out_dir: Path) -> list[tuple[str, Path]]:
        """(key, file) of each input's outputs beside its relative path: ``talks/a.mp3``
        → ``talks/a.srt``; outputs not named after their input in a folder of its name:
        line ``00007`` of a prompt file → ``00007/image-00.png``.

        Inputs that share a folder and a stem (``a.mp3`` and ``a.wav``) would write the
        same files, so theirs keep the input's whole name: ``a.mp3.srt``, ``a.wav.srt``.
        A line's name is whole already (``v1.2`` has no suffix; names are unique).
        """
        kids = children(self.store, batch.id)
        names = [_relative_name(kid) for kid in kids]
        if batch_unit(batch) != "files":
            return [
                (ref.key, out_dir / _beside(name.name, ref.name))
                for kid, name in zip(kids, names, strict=True)
                for ref in kid.outputs
                if not ref.partial and ref.name != "manifest.json"
            ]
        shared = Counter(name.with_suffix("") for name in names)
        wanted = []
        for kid, name in zip(kids, names, strict=True):
            folder = out_dir / name.parent
            whole_name = shared[name.with_suffix("")] > 1
            for ref in kid.outputs:
                if ref.partial or ref.name == "manifest.json":
                    continue
                file = ref.name
                if not file.startswith(f"{name.stem}."):
                    # Not named after its input (speech.mp3 of each request of an
                    # HTTP API batch made before batches had a unit): in a folder of
                    # the input's name, so inputs never collide.
                    wanted.append((ref.key, folder / name.name / file))
                    continue
                if whole_name:
                    file = name.name + file.removeprefix(name.stem)
                wanted.append((ref.key, folder / file))
        return wanted

    def item_errors(self, job: str | JobRecord) -> list[dict[str, Any]]:
        """The failed items of a job that succeeded in part (generate's prompt lines),
        as the lines of its ``errors.jsonl``; [] when it has none. ``job`` is its id,
        or its record when the caller has read it already."""
        record = self.store.get(job) if isinstance(job, str) else job
        ref = next((o for o in record.outputs if o.name == ERRORS_NAME), None)
        if ref is None:
            return []
        data = self.storage.get_bytes(ref.key).decode("utf-8")
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def output_url(self, key: str) -> str:
        return self.storage.url_for(key, self.settings.presign_expiry_s)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
        if "api_records" in self.__dict__:
            self.api_records.close()
        if "io" in self.__dict__:
            self.__dict__.pop("io").close()

    def __enter__(self) -> Stoker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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


def _beside(name: str, file: str) -> str:
    """Where output ``file`` of the line named ``name`` goes: as it is when named after
    the line (``doors-open.mp3``), else in a folder of its name (``00007/image-00.png``)."""
    return file if file.startswith(f"{name}.") else f"{name}/{file}"


def _relative_name(kid: JobRecord) -> Path:
    """Where a batch's input ``kid`` goes under a download folder: its name, a relative
    path (a recording's under the folder submitted), or its id if the name would lead
    out of the folder."""
    name = Path(str(kid.params.get("name") or kid.id))
    if name.is_absolute() or ".." in name.parts or not name.name:
        return Path(kid.id)
    return name


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


def _remaining(records: list[JobRecord], without: Collection[str]) -> list[JobRecord]:
    """``records`` less the jobs in ``without`` and the children of batches in it."""
    gone = set(without)
    return [r for r in records if r.id not in gone and r.parent not in gone]
