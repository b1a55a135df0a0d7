"""The :class:`Stoker` client: every call of the Python API, one deployment's
broker, job store and storage opened on first use. Submitting, following and
cancelling are here; retries, clean-up and download folders each have a module
beside it (retries.py, cleanup.py, downloads.py), which this class calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import Celery

from stoker.api.meta import MetaStore
from stoker.client import cleanup, downloads, retries
from stoker.client.cleanup import Pruned, Swept
from stoker.client.retries import Retried
from stoker.config import Priority, Settings
from stoker.errors import InvalidInput
from stoker.jobs import get_capability
from stoker.jobs.base import ERRORS_NAME, FILE_FIELDS, PrepareContext
from stoker.queues.batches import (
    BATCH_KIND,
    Refused,
    child_ended,
    children,
    submit_batch,
)
from stoker.queues.records import TERMINAL_STATES, JobFilter, JobRecord, JobState
from stoker.queues.stores import JobStore, open_job_store
from stoker.queues.submit import StagedJob, commit, job_queue, stage
from stoker.storage import Storage, open_storage
from stoker.storage.keys import job_key
from stoker.storage.sources import find_files, is_s3_url, list_s3, staged
from stoker.workers.cards import fleet_cards
from stoker.workers.catalog import ModelCatalog
from stoker.workers.coverage import QueueCover, cover
from stoker.workers.execute import partial_output
from stoker.workers.io_threads import StorageIO

if TYPE_CHECKING:  # (api.batch_lines is imported when a batch file is submitted)
    from stoker.api.batch_lines import BatchFile


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
        """``request`` with each ``s3://`` file it names (jobs/base.FILE_FIELDS) replaced
        by a local copy, named as the object, for the block."""
        with ExitStack() as stack:
            local = dict(request)
            for field in FILE_FIELDS:
                location = request.get(field)
                if isinstance(location, str) and is_s3_url(location):
                    local[field] = str(stack.enter_context(staged(location, self.settings)))
            yield local

    def media_under(self, target: str) -> list[tuple[str, str]]:
        """``(name, location)`` of every recording under a folder or an ``s3://`` prefix."""
        from stoker.jobs.media import MEDIA_EXTENSIONS

        return self.files_under(target, MEDIA_EXTENSIONS)

    def files_under(self, target: str, suffixes: frozenset[str]) -> list[tuple[str, str]]:
        """``(name, location)`` of every file with one of ``suffixes`` under a folder or
        an ``s3://`` prefix, named by its path under it (``talks/a.mp3``)."""
        if is_s3_url(target):
            return list_s3(target, self.settings, suffixes)
        root = Path(target)
        return [(p.relative_to(root).as_posix(), str(p)) for p in find_files(root, suffixes)]

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
        return retries.retry(self, job_id)

    def retry_failed(self, *, kind: str | None = None) -> list[Retried]:
        """:meth:`retry` every failed job (of ``kind``, if given): each job on its
        own, and the failed files of each batch together (one reopening per batch).
        Returns one entry per job or batch retried; a job that cannot be retried
        (refused at submission, of an OpenAI batch) is in ``not_retried`` of an entry
        whose ``jobs`` may be empty, and the others go on.
        """
        return retries.retry_failed(self, kind=kind)

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
        return cleanup.delete_ended(self, self.store.get(job_id))

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
        return cleanup.prune(self, older_than_s, states=states, dry_run=dry_run)

    def sweep_chunks(
        self, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
    ) -> Swept:
        """Delete the content-addressed objects under ``chunks/`` (chunk outputs, their
        notes, chapter outputs) last written more than ``older_than_s`` seconds ago.

        They are a cache: a job reads its chunks only while it runs, and a job that
        needs one that is gone makes it again. Objects a job lists as outputs (a
        cancelled job's finished chunks) are kept. Runs only while no job is queued
        or running (see cleanup.py): a running job reads its chunks, and a job
        queued now may find an old one and skip making it. ``without``: ids of jobs
        (or batches) to count as deleted already (a dry run after a dry-run prune).
        """
        return cleanup.sweep_chunks(self, older_than_s, dry_run=dry_run, without=without)

    def sweep_inputs(
        self, older_than_s: float, *, dry_run: bool = False, without: Collection[str] = ()
    ) -> Swept:
        """Delete the uploaded inputs under ``inputs/`` (recordings, prompt files,
        covers, stored once by content) last written more than ``older_than_s``
        seconds ago that no remaining job lists as an input.

        A job keeps its inputs until it is deleted (``prune`` first, then this frees
        what the deleted jobs alone used). Runs only while no job is queued or running
        (see cleanup.py): a job submitted now may find an old input and not upload
        it again (submit puts it back if it went in that instant). ``without`` as
        for :meth:`sweep_chunks`.
        """
        return cleanup.sweep_inputs(self, older_than_s, dry_run=dry_run, without=without)

    def download(self, job_id: str, out_dir: Path, *, include_partial: bool = False) -> list[Path]:
        """Copy the job's outputs into ``out_dir``; returns the files written."""
        record = self.store.get(job_id)
        refs = [o for o in record.outputs if include_partial or not o.partial]
        if not refs:
            raise InvalidInput(
                f"job {job_id} is {record.state} and has no outputs to download"
                + ("; add --partial for the chunks it finished." if record.outputs else ".")
            )
        if record.kind == BATCH_KIND and (
            written := downloads.openai_results(self, record, out_dir)
        ):
            return written
        wanted = [(ref.key, out_dir / ref.name) for ref in refs]
        if record.kind == BATCH_KIND:
            wanted += downloads.children_outputs(self, record, out_dir)
        return self.io.all(lambda pair: self.storage.download(*pair), wanted)

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
