"""Running one chunk on this worker, and assembling a job when its last chunk is done.

This is where the parts meet: the job store (state, fan-in), storage (chunk and
artifact files), the model manager (warm models) and a capability (the actual work).

Resumability comes from content addressing: a chunk's output key is a hash of the
model, the parameters and the chunk's input, so a chunk whose output already exists
(a redelivered message, a resubmitted job) is not computed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.config import Settings
from stoker.errors import JobNotFound, ObjectNotFound, StokerError
from stoker.jobs import get_capability
from stoker.jobs.base import Artifact, AssembleContext, Capability, ChunkContext, NotedChunks
from stoker.queues.batches import child_ended
from stoker.queues.records import JobError, JobRecord, JobState, OutputRef
from stoker.queues.stores.base import ChunkTally, JobStore
from stoker.queues.tasks import ChunkArgs
from stoker.storage import Storage
from stoker.storage.base import JSON_CONTENT_TYPE
from stoker.storage.keys import job_key
from stoker.storage.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.groups import GroupMaker
from stoker.workers.inputs import InputCache
from stoker.workers.io_threads import StorageIO
from stoker.workers.manager import ModelManager

log = logging.getLogger(__name__)

#: How often a running chunk looks for a cancellation, at most (seconds).
CANCEL_POLL_S = 0.5


class _CancelCheck:
    """``should_stop`` for a running chunk: asks the store at most every CANCEL_POLL_S."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._store, self._job_id = store, job_id
        self._next = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now >= self._next:
            self._next = now + CANCEL_POLL_S
            self._cancelled = self._store.state(self._job_id) is JobState.CANCELLED
        return self._cancelled


@dataclass(frozen=True)
class _Item:
    """One chunk of a batch: where it is in the batch, its job, its work."""

    pos: int
    cap: Capability
    record: JobRecord
    index: int
    payload: dict[str, Any]

    def out(self, scratch: Path) -> Path:
        """Where this chunk's output is written in a batch's scratch folder."""
        return scratch / f"{self.pos}.{self.cap.chunk_ext}"

    @property
    def group(self) -> tuple[str, str | None, str]:
        """Chunks with the same group run in one model call: capability, model, options."""
        options = json.dumps(self.record.params.get("load_options") or {}, sort_keys=True)
        return self.cap.kind, self.record.model, options


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
        with tempfile.TemporaryDirectory(prefix="stoker-chunk-") as tmp:
            out, notes = self._produce(cap, record, index, payload, Path(tmp))
            # If this chunk completes its job, assembly takes the chunk and its notes
            # from here: on S3, a download and a read fewer for a one-chunk job.
            self._finish(cap, record, index, local={index: out}, notes={index: notes})

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
        batch = StartedBatch(self, len(items))
        try:
            batch.ready = self._produce_items(items, batch.scratch, batch.outcomes)
        except BaseException:
            batch.close()
            raise
        return batch

    def _produce_items(
        self, items: list[ChunkArgs], scratch: Path, outcomes: list[BaseException | None]
    ) -> list[_Item]:
        todo: dict[tuple[str, str | None, str], list[_Item]] = {}
        ready: list[_Item] = []
        try:  # one store round trip for the whole batch
            records = self.store.start_many([job_id for job_id, _, _ in items])
        except Exception as exc:  # e.g. Redis is down: every item is retried
            outcomes[:] = [exc] * len(items)
            return []
        started_items = []
        for pos, ((job_id, index, payload), record) in enumerate(zip(items, records, strict=True)):
            try:
                started = self._started(job_id, index, record)
                if started is not None:
                    started_items.append(_Item(pos, started[0], started[1], index, payload))
            except Exception as exc:
                outcomes[pos] = exc
        # A batch does not store the chunk of a one-chunk job (see _produce_many), so
        # looking for one would cost a storage round trip (an S3 HEAD) per one-sentence
        # job to find nothing; at worst one that another job stored is made again.
        stored = [it for it in started_items if len(it.record.chunks) > 1]
        checks = self.io.each(
            lambda it: self.storage.exists(it.record.chunks[it.index].key), stored
        )
        found = {it.pos: check for it, check in zip(stored, checks, strict=True)}
        for item in started_items:
            check = found.get(item.pos, False)
            if isinstance(check, Exception):
                outcomes[item.pos] = check
            elif check:
                ready.append(item)
            else:
                todo.setdefault(item.group, []).append(item)
        for group in todo.values():
            ready.extend(self._produce_group(group, scratch, outcomes))
        return ready

    def _finish_items(
        self, ready: list[_Item], scratch: Path, outcomes: list[BaseException | None]
    ) -> None:
        """Count every item's chunk as done and finish the jobs that are complete.

        The batched form of :meth:`_finish`: the store calls are made once for the
        batch (chunks done, then jobs succeeded), not once per item.
        """
        try:
            tallies = self.store.chunk_done_many([(it.record.id, it.index) for it in ready])
        except Exception as exc:
            for it in ready:
                outcomes[it.pos] = exc
            return
        # Chunk files made in this batch, by job: a job whose chunks all ran here is
        # assembled from them without downloading any.
        local: dict[str, dict[int, Path]] = {}
        for it in ready:
            if (out := it.out(scratch)).exists():
                local.setdefault(it.record.id, {})[it.index] = out
        built: list[tuple[_Item, list[OutputRef]]] = []
        pairs = list(zip(ready, tallies, strict=True))
        results = self.io.each(
            lambda pair: self._outputs_if_last(*pair, scratch, local.get(pair[0].record.id, {})),
            pairs,
        )
        for item, outputs in zip(ready, results, strict=True):
            if isinstance(outputs, Exception):
                outcomes[item.pos] = outputs
            elif outputs is not None:
                built.append((item, outputs))
        self._succeed_items(built, outcomes)

    def _succeed_items(
        self, built: list[tuple[_Item, list[OutputRef]]], outcomes: list[BaseException | None]
    ) -> None:
        """Mark the jobs whose outputs were just built succeeded, in one store call."""
        if not built:
            return
        try:
            moved = self.store.succeed_many([(it.record.id, outputs) for it, outputs in built])
        except Exception as exc:
            for it, _ in built:
                outcomes[it.pos] = exc
            return
        for (item, outputs), succeeded in zip(built, moved, strict=True):
            if succeeded:
                # One line per batch, not per job: a batch is hundreds of one-text jobs.
                self._succeeded(item.record, outputs, logging.DEBUG)
        log.info("%d jobs of a batch succeeded", sum(moved))

    def _outputs_if_last(
        self, item: _Item, tally: ChunkTally | None, scratch: Path, local: Mapping[int, Path]
    ) -> list[OutputRef] | None:
        """The job's stored outputs if ``item`` was its last chunk (the job is not
        marked succeeded yet); None otherwise. ``local``: the job's chunk files at hand."""
        if tally is None:
            raise JobNotFound(item.record.id)
        if tally.done < tally.total or tally.state.terminal:
            self._not_last(item.cap, item.record, item.index, tally)
            return None
        if len(item.record.chunks) > 1:  # a long enough assembly for the stage to show
            self.store.set_stage(item.record.id, "assemble")
        return self._build_outputs(item.cap, item.record, scratch, local)

    def _start(self, job_id: str, index: int) -> tuple[Capability, JobRecord] | None:
        """Mark the job running; None when it already ended (cancelled, failed)."""
        return self._started(job_id, index, self.store.start_many([job_id])[0])

    @staticmethod
    def _started(
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
            self._not_last(cap, record, index, tally, local)

    def _not_last(
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
            should_stop=_CancelCheck(self.store, record.id),
            inputs=inputs,
            use_model=self._use_model,
        )
        started = time.perf_counter()
        if cap.backend is None or record.model is None:
            cap.run_chunk(None, record.params, payload, ctx)
        else:
            with self.manager.use(self._model_spec(cap, record), self.device) as model:
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

    def _model_spec(self, cap: Capability, record: JobRecord) -> ModelSpec:
        """The job's model, with the job's own load options on top of the configured ones."""
        spec = self.catalog.get(record.model or "", backend=cap.backend)
        return spec.with_options(record.params.get("load_options") or {})

    @contextlib.contextmanager
    def _use_model(self, name: str, backend: str) -> Iterator[Any]:
        """A second warm model for a running chunk, from this worker's manager."""
        with self.manager.use(self.catalog.get(name, backend=backend), self.device) as model:
            yield model

    def _notes(
        self, cap: Capability, record: JobRecord, known: Mapping[int, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Each chunk's notes, for capabilities that keep them (``chunk_notes``): those
        ``known`` (index → notes of a chunk just made here), the rest read for the
        chunks that can have them (NotedChunks; every chunk without it), one storage
        read each, side by side on remote storage."""
        if not getattr(cap, "chunk_notes", False):
            return []
        count = len(record.chunks)
        indexes: Sequence[int] = range(count)
        if isinstance(cap, NotedChunks):
            indexes = cap.noted_chunks(record.params, count)
        indexes = [i for i in indexes if i not in known]
        found = self.io.all(self._read_notes, [notes_key(record.chunks[i].key) for i in indexes])
        notes: list[dict[str, Any]] = [dict(known.get(i, {})) for i in range(count)]
        for index, note in zip(indexes, found, strict=True):
            notes[index] = note
        return notes

    def _read_notes(self, key: str) -> dict[str, Any]:
        """The notes stored at ``key``; {} when there are none."""
        try:
            return dict(json.loads(self.storage.get_bytes(key)))
        except ObjectNotFound:
            return {}

    def _produce_group(
        self, group: list[_Item], scratch: Path, outcomes: list[BaseException | None]
    ) -> list[_Item]:
        """Produce the outputs of ``group`` (one capability, one model) in one call.

        Returns the items that now have an output; the others' errors go in ``outcomes``.
        """
        first = group[0]
        try:
            self._produce_many(first.cap, group, scratch)
            return group
        except Exception as exc:
            if len(group) == 1:
                outcomes[first.pos] = exc
                return []
            log.warning(
                "a batch of %d chunks failed (%s); running them one by one", len(group), exc
            )
        done = []
        for item in group:
            try:
                self._produce_many(item.cap, [item], scratch)
                done.append(item)
            except Exception as exc:
                outcomes[item.pos] = exc
        return done

    def _produce_many(self, cap: Capability, items: list[_Item], scratch: Path) -> None:
        """``cap.run_chunks`` on every item's payload with one warm model; store outputs."""
        run_chunks = getattr(cap, "run_chunks")  # noqa: B009  (batchable capabilities only)
        spec = self._model_spec(cap, items[0].record)
        started = time.perf_counter()
        work = [
            (
                it.record.params,
                it.payload,
                ChunkContext(
                    out=it.out(scratch), should_stop=_CancelCheck(self.store, it.record.id)
                ),
            )
            for it in items
        ]
        with self.manager.use(spec, self.device) as model:
            run_chunks(model, work)
        # A one-chunk job is assembled from the local file right after this, so its
        # chunk is not stored: for one-sentence embed jobs that is a third of the
        # writes. A crash before assembly recomputes it (cheap, by definition).
        stored = [
            (it.record.chunks[it.index].key, ctx.out)
            for it, (_, _, ctx) in zip(items, work, strict=True)
            if len(it.record.chunks) > 1
        ]
        put = self.io.each(lambda kp: self.storage.put_file(*kp, cap.chunk_content_type), stored)
        failed = [r for r in put if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        log.info(
            "%d %s chunks done in one batch in %.3fs",
            len(items),
            cap.kind,
            time.perf_counter() - started,
        )

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
        outputs = self._build_outputs(cap, record, scratch, local, notes)
        if self.store.succeed(record.id, outputs):
            self._succeeded(record, outputs)

    def _succeeded(
        self, record: JobRecord, outputs: list[OutputRef], level: int = logging.INFO
    ) -> None:
        if log.isEnabledFor(level):
            log.log(level, "job %s succeeded: %s", record.id, ", ".join(o.name for o in outputs))
        self._tell_batch(record)

    def _build_outputs(
        self,
        cap: Capability,
        record: JobRecord,
        scratch: Path | None = None,
        local: Mapping[int, Path] | None = None,
        notes: Mapping[int, dict[str, Any]] | None = None,
    ) -> list[OutputRef]:
        """The job's artifacts and manifest, built and stored; its record untouched.

        The chunks not in ``local`` are downloaded, and the artifacts stored, side by
        side on remote storage (one round trip each, none waiting on another)."""
        with contextlib.ExitStack() as stack:
            if scratch is None:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            # Named by job: a batch's jobs share one scratch folder.
            chunk_dir, workdir = scratch / f"{record.id}-chunks", scratch / f"{record.id}-out"
            # A capability with chunk groups assembles from its groups' outputs (made
            # here if a crash lost them), not from its chunks.
            groups = self.groups.ensure_all(
                cap, record, scratch / f"{record.id}-groups", local or {}
            )
            local = local or {}
            files = self.io.all(
                lambda c: (
                    local.get(c.index)
                    or self.storage.download(c.key, chunk_dir / f"{c.index:06d}.{cap.chunk_ext}")
                ),
                record.chunks if groups is None else [],
            )
            inputs = {k: self.inputs.path_for(k) for k in record.params.get("assemble_inputs", [])}
            context = AssembleContext(
                files,
                workdir,
                inputs,
                chunk_notes=self._notes(cap, record, notes or {}),
                group_files=[g.files for g in groups or []],
                group_keys=[g.keys for g in groups or []],
            )
            artifacts = cap.assemble(record.params, context)
            outputs = self.io.all(lambda a: self._store_artifact(record.id, a), artifacts)
        outputs.append(self._write_manifest(record, artifacts, outputs))
        return outputs

    def _store_artifact(self, job_id: str, artifact: Artifact) -> OutputRef:
        key = job_key(job_id, artifact.name)
        if artifact.data is not None:
            info = self.storage.put_bytes(key, artifact.data, artifact.content_type)
        elif artifact.source_key is not None:  # already stored: copied by the storage
            info = self.storage.copy(artifact.source_key, key, artifact.content_type)
        else:
            info = self.storage.put_file(key, artifact.file, artifact.content_type)
        return OutputRef(
            name=artifact.name,
            key=key,
            size_bytes=info.size_bytes,
            content_type=artifact.content_type,
        )

    def _write_manifest(
        self, record: JobRecord, artifacts: list[Artifact], outputs: list[OutputRef]
    ) -> OutputRef:
        entries = [
            ManifestEntry(
                name=o.name,
                key=o.key,
                size_bytes=o.size_bytes,
                content_type=o.content_type,
                meta=a.meta,
            )
            for o, a in zip(outputs, artifacts, strict=True)
        ]
        manifest = Manifest(
            job_id=record.id,
            kind=record.kind,
            model=record.model,
            params=record.params,
            outputs=entries,
            chunks=[c.key for c in record.chunks],
            created_at=record.created_at,
        )
        key = job_key(record.id, MANIFEST_NAME)
        # pydantic's own serializer: a dump to dicts then json.dumps(indent=2), whose
        # indenting encoder is pure Python, was a sixth of a one-sentence job's cost.
        data = manifest.model_dump_json(indent=2).encode("utf-8")
        info = self.storage.put_bytes(key, data, JSON_CONTENT_TYPE)
        return OutputRef(
            name=MANIFEST_NAME, key=key, size_bytes=info.size_bytes, content_type=JSON_CONTENT_TYPE
        )


class StartedBatch:
    """A batch whose chunk outputs exist (in ``scratch``) and whose jobs are not
    finished yet; see :meth:`ChunkExecutor.start_chunks`."""

    def __init__(self, executor: ChunkExecutor, size: int) -> None:
        self._executor = executor
        # One scratch folder for the whole batch: chunk outputs stay there for
        # assembly (no download of what was just written), removed once at the end.
        self._tmp = tempfile.TemporaryDirectory(prefix="stoker-batch-", dir=memory_scratch())
        self.scratch = Path(self._tmp.name)
        self.outcomes: list[BaseException | None] = [None] * size
        self.ready: list[_Item] = []

    def finish(self) -> list[BaseException | None]:
        """Finish every produced item; per item, None or the error it ended with."""
        try:
            self._executor._finish_items(self.ready, self.scratch, self.outcomes)
        finally:
            self.close()
        return self.outcomes

    def close(self) -> None:
        self._tmp.cleanup()


#: Where batches keep their scratch files when it has this much room free.
SHM_DIR, SHM_MIN_FREE = Path("/dev/shm"), 1 << 30


def memory_scratch() -> str | None:
    """A memory-backed folder for a batch's scratch files, or None (the default temp
    folder) where there is none with room.

    A batch's chunks are small and live for one batch; in tmpfs, writing one and
    reading it back costs microseconds, where a disk file's creation can cost a
    millisecond of kernel time (measured on ext4 in a VM): more than a sentence's share
    of the model call.
    """
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    room = st.f_bavail * st.f_frsize >= SHM_MIN_FREE
    return str(SHM_DIR) if room and os.access(SHM_DIR, os.W_OK) else None


def notes_key(chunk_key: str) -> str:
    """Where a chunk's notes are stored: beside it."""
    return f"{chunk_key}.notes.json"


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
