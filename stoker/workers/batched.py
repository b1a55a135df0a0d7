"""Running a batch of chunks, from many jobs, with one model call per model.

Batchable capabilities (embed) have their chunks buffered by the worker
(queues/batching.py) and handed here together. The steps are those of
:meth:`ChunkExecutor.run_chunk` for one chunk, each done once for the whole batch:
one store call to start the jobs, one model call per (capability, model, options),
one store call to count the chunks and one to mark the finished jobs succeeded.
A worker overlaps :meth:`StartedBatch.finish` with the next batch's model call.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stoker.errors import JobNotFound, ModelElsewhere
from stoker.jobs.base import Capability, ChunkContext
from stoker.queues.records import JobRecord, OutputRef
from stoker.queues.stores.base import ChunkTally
from stoker.queues.tasks import ChunkArgs

if TYPE_CHECKING:  # execute.py imports this module
    from collections.abc import Mapping

    from stoker.workers.execute import ChunkExecutor

log = logging.getLogger(__name__)


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


class StartedBatch:
    """A batch of chunks of batchable capabilities, from any jobs: :meth:`start` makes
    their outputs (one model call per model) in a scratch folder, :meth:`finish` (from
    any thread) does the rest (fan-in, assembly, storage writes)."""

    def __init__(self, executor: ChunkExecutor, size: int) -> None:
        self._ex = executor
        # One scratch folder for the whole batch: chunk outputs stay there for
        # assembly (no download of what was just written), removed once at the end.
        self._tmp = tempfile.TemporaryDirectory(prefix="stoker-batch-", dir=memory_scratch())
        self.scratch = Path(self._tmp.name)
        self.outcomes: list[BaseException | None] = [None] * size
        self.ready: list[_Item] = []

    @classmethod
    def start(cls, executor: ChunkExecutor, items: list[ChunkArgs]) -> StartedBatch:
        """The model half of a batch: every item's output made, no job finished yet."""
        batch = cls(executor, len(items))
        try:
            batch.ready = batch._produce_items(items)
        except BaseException:
            batch.close()
            raise
        return batch

    def finish(self) -> list[BaseException | None]:
        """Finish every produced item; per item, None or the error it ended with."""
        try:
            self._finish_items()
        finally:
            self.close()
        return self.outcomes

    def close(self) -> None:
        self._tmp.cleanup()

    def _produce_items(self, items: list[ChunkArgs]) -> list[_Item]:
        ex, outcomes = self._ex, self.outcomes
        todo: dict[tuple[str, str | None, str], list[_Item]] = {}
        ready: list[_Item] = []
        try:  # one store round trip for the whole batch
            records = ex.store.start_many([job_id for job_id, _, _ in items])
        except Exception as exc:  # e.g. Redis is down: every item is retried
            outcomes[:] = [exc] * len(items)
            return []
        started_items = []
        for pos, ((job_id, index, payload), record) in enumerate(zip(items, records, strict=True)):
            try:
                started = ex.started(job_id, index, record)
                if started is not None:
                    started_items.append(_Item(pos, started[0], started[1], index, payload))
            except Exception as exc:
                outcomes[pos] = exc
        # A batch does not store the chunk of a one-chunk job (see _produce_many), so
        # looking for one would cost a storage round trip (an S3 HEAD) per one-sentence
        # job to find nothing; at worst one that another job stored is made again.
        stored = [it for it in started_items if len(it.record.chunks) > 1]
        checks = ex.io.each(lambda it: ex.storage.exists(it.record.chunks[it.index].key), stored)
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
            ready.extend(self._produce_group(group))
        return ready

    def _finish_items(self) -> None:
        """Count every item's chunk as done and finish the jobs that are complete.

        The batched form of :meth:`ChunkExecutor._finish`: the store calls are made once for the
        batch (chunks done, then jobs succeeded), not once per item.
        """
        ex, ready, scratch, outcomes = self._ex, self.ready, self.scratch, self.outcomes
        try:
            tallies = ex.store.chunk_done_many([(it.record.id, it.index) for it in ready])
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
        results = ex.io.each(
            lambda pair: self._outputs_if_last(*pair, local.get(pair[0].record.id, {})),
            pairs,
        )
        for item, outputs in zip(ready, results, strict=True):
            if isinstance(outputs, Exception):
                outcomes[item.pos] = outputs
            elif outputs is not None:
                built.append((item, outputs))
        self._succeed_items(built)

    def _succeed_items(self, built: list[tuple[_Item, list[OutputRef]]]) -> None:
        """Mark the jobs whose outputs were just built succeeded, in one store call."""
        ex, outcomes = self._ex, self.outcomes
        if not built:
            return
        try:
            moved = ex.store.succeed_many([(it.record.id, outputs) for it, outputs in built])
        except Exception as exc:
            for it, _ in built:
                outcomes[it.pos] = exc
            return
        for (item, outputs), succeeded in zip(built, moved, strict=True):
            if succeeded:
                # One line per batch, not per job: a batch is hundreds of one-text jobs.
                ex.succeeded(item.record, outputs, logging.DEBUG)
        log.info("%d jobs of a batch succeeded", sum(moved))

    def _outputs_if_last(
        self, item: _Item, tally: ChunkTally | None, local: Mapping[int, Path]
    ) -> list[OutputRef] | None:
        """The job's stored outputs if ``item`` was its last chunk (the job is not
        marked succeeded yet); None otherwise. ``local``: the job's chunk files at hand."""
        ex = self._ex
        if tally is None:
            raise JobNotFound(item.record.id)
        if tally.done < tally.total or tally.state.terminal:
            ex.not_last(item.cap, item.record, item.index, tally)
            return None
        if len(item.record.chunks) > 1:  # a long enough assembly for the stage to show
            ex.store.set_stage(item.record.id, "assemble")
        return ex.assembler.build(item.cap, item.record, self.scratch, local)

    def _produce_group(self, group: list[_Item]) -> list[_Item]:
        """Produce the outputs of ``group`` (one capability, one model) in one call.

        Returns the items that now have an output; the others' errors go in ``outcomes``.
        """
        outcomes = self.outcomes
        first = group[0]
        try:
            self._produce_many(first.cap, group)
            return group
        except Exception as exc:
            if len(group) == 1 or isinstance(exc, ModelElsewhere):  # the same for each
                for item in group:
                    outcomes[item.pos] = exc
                return []
            log.warning(
                "a batch of %d chunks failed (%s); running them one by one", len(group), exc
            )
        done = []
        for item in group:
            try:
                self._produce_many(item.cap, [item])
                done.append(item)
            except Exception as exc:
                outcomes[item.pos] = exc
        return done

    def _produce_many(self, cap: Capability, items: list[_Item]) -> None:
        """``cap.run_chunks`` on every item's payload with one warm model; store outputs."""
        ex = self._ex
        run_chunks = getattr(cap, "run_chunks")  # noqa: B009  (batchable capabilities only)
        spec = ex.model_spec(cap, items[0].record)
        started = time.perf_counter()
        work = [
            (
                it.record.params,
                it.payload,
                ChunkContext(
                    out=it.out(self.scratch), should_stop=ex.cancel_check(it.record.id, it.index)
                ),
            )
            for it in items
        ]
        with ex.manager.use(spec, ex.device) as model:
            run_chunks(model, work)
        # A one-chunk job is assembled from the local file right after this, so its
        # chunk is not stored: for one-sentence embed jobs that is a third of the
        # writes. A crash before assembly recomputes it (cheap, by definition).
        stored = [
            (it.record.chunks[it.index].key, ctx.out)
            for it, (_, _, ctx) in zip(items, work, strict=True)
            if len(it.record.chunks) > 1
        ]
        put = ex.io.each(lambda kp: ex.storage.put_file(*kp, cap.chunk_content_type), stored)
        failed = [r for r in put if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        log.info(
            "%d %s chunks done in one batch in %.3fs",
            len(items),
            cap.kind,
            time.perf_counter() - started,
        )


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
