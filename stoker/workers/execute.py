"""Running one chunk on this worker, and assembling a job when its last chunk is done.

This is where the parts meet: the job store (state, fan-in), storage (chunk and
artifact files), the model manager (warm models) and a capability (the actual work).
Building a finished job's artifacts is in assembly.py; running many chunks of
batchable capabilities in one model call is in batched.py.

Resumability comes from content addressing: a chunk's output key is a hash of the
model, the parameters and the chunk's input, so a chunk whose output already exists
(a redelivered message, a resubmitted job) is not computed again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stoker.config import Settings
from stoker.errors import (
    ChunkCrashedWorkers,
    ChunkTimedOut,
    JobNotFound,
    ModelElsewhere,
    ModelLoadError,
    StokerError,
    UnknownModel,
    WorkerStopping,
)
from stoker.jobs import get_capability
from stoker.jobs.base import Capability, ChunkContext
from stoker.queues.batches import child_ended
from stoker.queues.records import JobError, JobRecord, JobState, OutputRef
from stoker.queues.stores.base import ChunkTally, JobStore
from stoker.queues.tasks import ChunkArgs
from stoker.storage import Storage
from stoker.workers.assembly import Assembler, notes_key
from stoker.workers.batched import StartedBatch
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.groups import GroupMaker
from stoker.workers.inputs import InputCache
from stoker.workers.io_threads import StorageIO
from stoker.workers.manager import ModelManager

log = logging.getLogger(__name__)

#: How often a running chunk looks for a cancellation, at most (seconds).
CANCEL_POLL_S = 0.5


class _CancelCheck:
    """``should_stop`` for a running chunk: True once its job is cancelled (the store
    is asked at most every CANCEL_POLL_S); raises ChunkTimedOut once the chunk has run
    for ``limit_s`` (None: no limit), and WorkerStopping once its worker was told to
    stop ``stop_grace_s`` ago (``stopping``: when, on the monotonic clock, or None).
    Made when the chunk starts, before its model is loaded, so the load counts too."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        index: int,
        limit_s: float | None,
        stopping: Callable[[], float | None] = lambda: None,
        stop_grace_s: float = 0.0,
    ) -> None:
        self._store, self._job_id, self._index = store, job_id, index
        self._next = 0.0
        self._cancelled = False
        self._limit_s = limit_s or 0.0
        self._deadline = math.inf if limit_s is None else time.monotonic() + limit_s
        self._stopping, self._stop_grace_s = stopping, stop_grace_s

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._deadline:
            raise ChunkTimedOut(self._job_id, self._index, self._limit_s)
        told = self._stopping()
        if told is not None and now >= told + self._stop_grace_s:
            raise WorkerStopping(self._job_id, self._index, self._stop_grace_s)
        if not self._cancelled and now >= self._next:
            self._next = now + CANCEL_POLL_S
            self._cancelled = self._store.state(self._job_id) is JobState.CANCELLED
        return self._cancelled


class ChunkExecutor:
    """Everything a worker process needs to run chunks; one per process, made at start."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        catalog: ModelCatalog,
        manager: ModelManager,
        device: str,
    ) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self.catalog, self.manager, self.device = catalog, manager, device
        # Storage calls that do not wait on each other go side by side on S3: a
        # batch's existence checks and writes, a job's downloads and artifacts.
        self.io = StorageIO(storage.remote)
        self.groups = GroupMaker(store, storage, self.io)
        self.inputs = InputCache(
            storage, settings.data_dir / "cache" / "inputs", settings.input_cache_bytes
        )
        self.assembler = Assembler(storage, self.io, self.groups, self.inputs)
        # (kind, model) → the queue of a live worker that has the model, for a model
        # not here (workers/steering.py); None: no fleet to hand chunks on to.
        self.elsewhere: Callable[[str, str | None], str | None] | None = None
        # When (monotonic) this worker was told to stop (stop_requested); None: it was not.
        self.stopping_since: float | None = None

    def stop_requested(self) -> None:
        """The worker is stopping (SIGTERM): a running chunk may go on for
        ``stop_grace_s`` more, then stops at its next check and is put back."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()

    def run_chunk(self, job_id: str, index: int, payload: dict[str, Any]) -> None:
        """Run chunk ``index`` of ``job_id`` unless its output exists; assemble if last."""
        started = self._start(job_id, index)
        if started is None:
            return
        cap, record = started
        if self.storage.exists(record.chunks[index].key):
            log.info("job %s chunk %d: output exists, not recomputed", job_id, index)
            self._finish(cap, record, index)
            return
        with (
            self._counted_run(job_id, index),
            tempfile.TemporaryDirectory(prefix="stoker-chunk-") as tmp,
        ):
            out, notes = self._produce(cap, record, index, payload, Path(tmp))
            # If this chunk completes its job, assembly takes the chunk and its notes
            # from here: on S3, a download and a read fewer for a one-chunk job.
            self._finish(cap, record, index, local={index: out}, notes={index: notes})

    @contextlib.contextmanager
    def _counted_run(self, job_id: str, index: int) -> Iterator[None]:
        """Count this run of chunk ``index`` while it lasts (JobStore.chunk_runs),
        assembly included. Runs counted before and never ended are workers that died
        running it: past ``chunk_max_crashes`` of them, raise ChunkCrashedWorkers
        instead of running it again (a poison input would stop every worker in turn).
        """
        deaths = self.store.chunk_runs(job_id, index, +1) - 1
        try:
            limit = self.settings.chunk_max_crashes
            if limit and deaths >= limit:
                raise ChunkCrashedWorkers(job_id, index, deaths)
            if deaths:
                log.warning("job %s chunk %d: %d earlier run(s) never ended", job_id, index, deaths)
            yield
        finally:
            try:
                self.store.chunk_runs(job_id, index, -1)
            except Exception as exc:  # a deleted job, the store away: counted as a death
                log.debug("job %s chunk %d: run not counted as ended: %s", job_id, index, exc)

    def run_chunks(self, items: list[ChunkArgs]) -> list[BaseException | None]:
        """Run many chunks (of batchable capabilities), one model call per model.

        Returns, per item, None or the error it ended with; one item's error never
        stops the others. A model call that fails is retried item by item, so the
        failure lands on the item that caused it.
        """
        return self.start_chunks(items).finish()

    def start_chunks(self, items: list[ChunkArgs]) -> StartedBatch:
        """The model half of :meth:`run_chunks`: outputs made, jobs not finished yet.

        ``finish()`` on the result (from any thread) does the rest: fan-in, assembly,
        storage writes. A worker overlaps it with the next batch's model call.
        """
        return StartedBatch.start(self, items)

    def cancel_check(self, job_id: str, index: int) -> _CancelCheck:
        """``should_stop`` for chunk ``index`` of ``job_id``, about to run here."""
        limit = self.settings.chunk_time_limit_s or None
        grace = self.settings.stop_grace_s
        return _CancelCheck(self.store, job_id, index, limit, lambda: self.stopping_since, grace)

    def _start(self, job_id: str, index: int) -> tuple[Capability, JobRecord] | None:
        """Mark the job running; None when it already ended (cancelled, failed)."""
        return self.started(job_id, index, self.store.start_many([job_id])[0])

    @staticmethod
    def started(
        job_id: str, index: int, record: JobRecord | None
    ) -> tuple[Capability, JobRecord] | None:
        """The capability and record of a job just marked running (``start_many``);
        None when it already ended. Raises JobNotFound for a job that does not exist."""
        if record is None:
            raise JobNotFound(job_id)
        if record.state.terminal:
            log.info("job %s is %s; chunk %d skipped", job_id, record.state, index)
            return None
        return get_capability(record.kind), record

    def _finish(
        self,
        cap: Capability,
        record: JobRecord,
        index: int,
        scratch: Path | None = None,
        local: Mapping[int, Path] | None = None,
        notes: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        """Count chunk ``index`` as done; assemble the job if it was the last.

        ``scratch``, ``local`` and ``notes`` are passed on to :meth:`assemble`.
        """
        tally = self.store.chunk_done(record.id, index)
        # Both the first recorder of the last chunk and a redelivery after a crash
        # between "last chunk recorded" and "job succeeded" assemble; assembly is
        # idempotent (same keys, same bytes) and succeed() is conditional.
        if tally.done == tally.total and not tally.state.terminal:
            self.assemble(cap, record, scratch, local, notes)
        else:
            self.not_last(cap, record, index, tally, local)

    def not_last(
        self,
        cap: Capability,
        record: JobRecord,
        index: int,
        tally: ChunkTally,
        local: Mapping[int, Path] | None = None,
    ) -> None:
        """A chunk is done that does not complete its job (or its job has ended)."""
        if tally.state is JobState.CANCELLED:
            # Listed as a partial output, once.
            if tally.newly_done and self.storage.exists(record.chunks[index].key):
                self.store.add_outputs(
                    record.id, [partial_output(self.storage, cap, record, index)]
                )
        elif not tally.state.terminal:
            self._finish_group(cap, record, index, local)

    def _finish_group(
        self, cap: Capability, record: JobRecord, index: int, local: Mapping[int, Path] | None
    ) -> None:
        """If chunk ``index`` completed its group (an audiobook chapter), make the
        group's outputs now rather than in assembly (workers/groups.py). Never raises."""
        self.groups.on_chunk_done(cap, record, index, local or {})

    def fail(self, job_id: str, error: StokerError) -> None:
        if self.store.fail(job_id, JobError(kind=error.kind, message=str(error))):
            self._tell_batch(self.store.get(job_id))

    def _tell_batch(self, record: JobRecord) -> None:
        if record.parent is not None and record.parent_index is not None:
            child_ended(self.store, self.storage, record.parent, record.parent_index)

    def _produce(
        self, cap: Capability, record: JobRecord, index: int, payload: dict[str, Any], tmp: Path
    ) -> tuple[Path, dict[str, Any]]:
        """Make chunk ``index`` in ``tmp`` and store it (its notes first); returns the
        chunk's file and its notes."""
        self.store.set_stage(record.id, cap.work_stage)
        inputs = {key: self.inputs.path_for(key) for key in payload.get("inputs", [])}
        ctx = ChunkContext(
            out=tmp / f"chunk.{cap.chunk_ext}",
            should_stop=self.cancel_check(record.id, index),
            inputs=inputs,
            use_model=self._use_model,
        )
        started = time.perf_counter()
        if cap.backend is None or record.model is None:
            cap.run_chunk(None, record.params, payload, ctx)
        else:
            with self.manager.use(self.model_spec(cap, record), self.device) as model:
                cap.run_chunk(model, record.params, payload, ctx)
        key = record.chunks[index].key
        if ctx.notes:  # before the chunk: an existing chunk implies its notes exist
            self.storage.put_json(notes_key(key), ctx.notes)
        self.storage.put_file(key, ctx.out, cap.chunk_content_type)
        log.info(
            "job %s chunk %d/%d done in %.2fs",
            record.id,
            index + 1,
            len(record.chunks),
            time.perf_counter() - started,
        )
        return ctx.out, ctx.notes

    def model_spec(self, cap: Capability, record: JobRecord) -> ModelSpec:
        """The job's model, with the job's own load options on top of the configured ones.

        Raises ModelElsewhere when it is not here but a live worker serves its queue
        (see :attr:`elsewhere`), else what the catalog raises.
        """
        try:
            spec = self.catalog.get(record.model or "", backend=cap.backend)
        except (UnknownModel, ModelLoadError) as exc:
            queue = None if self.elsewhere is None else self.elsewhere(cap.kind, record.model)
            if queue is None:
                raise
            raise ModelElsewhere(queue, exc) from exc
        return spec.with_options(record.params.get("load_options") or {})

    @contextlib.contextmanager
    def _use_model(self, name: str, backend: str) -> Iterator[Any]:
        """A second warm model for a running chunk, from this worker's manager."""
        with self.manager.use(self.catalog.get(name, backend=backend), self.device) as model:
            yield model

    def assemble(
        self,
        cap: Capability,
        record: JobRecord,
        scratch: Path | None = None,
        local: Mapping[int, Path] | None = None,
        notes: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        """Build, store and record the job's artifacts and manifest; mark it succeeded.

        Works in ``scratch`` (the caller removes it) or a temporary folder. Chunk
        outputs in ``local`` (index → file) are used in place of a download, and chunk
        notes in ``notes`` (index → notes) in place of a read.
        """
        self.store.set_stage(record.id, "assemble")
        outputs = self.assembler.build(cap, record, scratch, local, notes)
        if self.store.succeed(record.id, outputs):
            self.succeeded(record, outputs)

    def succeeded(
        self, record: JobRecord, outputs: list[OutputRef], level: int = logging.INFO
    ) -> None:
        if log.isEnabledFor(level):
            log.log(level, "job %s succeeded: %s", record.id, ", ".join(o.name for o in outputs))
        self._tell_batch(record)


def partial_output(storage: Storage, cap: Capability, record: JobRecord, index: int) -> OutputRef:
    """The finished chunk ``index`` of a cancelled job, listed as a partial output."""
    key = record.chunks[index].key
    return OutputRef(
        name=f"chunk-{index:05d}.{cap.chunk_ext}",
        key=key,
        size_bytes=storage.stat(key).size_bytes,
        content_type=cap.chunk_content_type,
        partial=True,
    )
