"""Chunk groups: outputs made as soon as a group of chunks is done (jobs/base.ChunkGroups).

An audiobook's chapter is a group: the worker that records the last missing chunk of
a chapter, whichever chunk that is, encodes the chapter there and then, so the book's
final assembly only joins what the chapters made instead of encoding the whole book
on one worker after the last chunk.

A group's outputs are content-addressed (the group's chunk keys + the output's name
and identity), like chunks: a redelivered chunk, a rerun of the job or two workers
racing for the same group find or write the same object. Assembly downloads only
the outputs it reads (``GroupOutput.fetch``: an audiobook's chapter lengths and AAC);
the others are published by a copy inside the storage, from their keys.
"""

from __future__ import annotations

import bisect
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from stoker.errors import ObjectNotFound
from stoker.jobs.base import Capability, ChunkGroups, GroupContext, GroupOutput
from stoker.queues.records import JobRecord
from stoker.queues.stores.base import JobStore
from stoker.storage import Storage
from stoker.storage.keys import chunk_key, content_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupFiles:
    """One group's outputs, all stored (made where they were missing)."""

    files: dict[str, Path]  # name → local file, of the outputs assembly reads
    keys: dict[str, str]  # name → storage key, of every output


def grouped(cap: Capability) -> ChunkGroups | None:
    """``cap`` as a ChunkGroups capability, or None when it has no groups."""
    return cast(ChunkGroups, cap) if _has_groups(type(cap)) else None


@functools.cache
def _has_groups(kind: type) -> bool:
    # isinstance() against a runtime-checkable Protocol inspects every member, each
    # time: asked once per job, that was a visible share of a one-sentence job's cost.
    return issubclass(kind, ChunkGroups)


def group_key(kind: str, chunk_keys: list[str], out: GroupOutput) -> str:
    """Where a group output lives: ``chunks/<kind>-groups/<dd>/<digest>.<ext>``."""
    digest = content_digest({"chunks": chunk_keys, "name": out.name, "identity": out.identity})
    return chunk_key(f"{kind}-groups", digest, out.ext)


def group_of(groups: list[range], index: int) -> int | None:
    """The position in ``groups`` (sorted, disjoint ranges) of the one holding ``index``."""
    at = bisect.bisect_right([g.start for g in groups], index) - 1
    return at if at >= 0 and index in groups[at] else None


class GroupMaker:
    """Makes and finds the outputs of a job's chunk groups in storage."""

    def __init__(self, store: JobStore, storage: Storage) -> None:
        self.store, self.storage = store, storage

    def on_chunk_done(
        self, cap: Capability, record: JobRecord, index: int, local: Mapping[int, Path]
    ) -> None:
        """If chunk ``index`` completed its group, make and store the group's outputs.

        Never raises: a failure here is logged, and assembly makes what is missing.
        """
        hook = grouped(cap)
        if hook is None:
            return
        try:
            groups = hook.chunk_groups(record.params)
            group = group_of(groups, index)
            if group is None or not self.store.chunks_all_done(record.id, groups[group]):
                return
            with tempfile.TemporaryDirectory(prefix="stoker-group-") as tmp:
                self.ensure(cap, record, group, Path(tmp), local, fetch=False)
        except Exception:
            log.warning(
                "job %s: making the outputs of the group of chunk %d failed; assembly "
                "will make them",
                record.id,
                index,
                exc_info=True,
            )

    def ensure_all(
        self, cap: Capability, record: JobRecord, workdir: Path, local: Mapping[int, Path]
    ) -> list[GroupFiles] | None:
        """Every group's outputs, made where missing: the stored key of each, and a
        local file under ``workdir`` of each that assembly reads (``GroupOutput.fetch``).

        None when ``cap`` has no chunk groups.
        """
        hook = grouped(cap)
        if hook is None:
            return None
        count = len(hook.chunk_groups(record.params))
        return [self.ensure(cap, record, g, workdir, local) for g in range(count)]

    def ensure(
        self,
        cap: Capability,
        record: JobRecord,
        group: int,
        workdir: Path,
        local: Mapping[int, Path],
        *,
        fetch: bool = True,
    ) -> GroupFiles:
        """Group ``group``'s outputs, the missing ones made from the group's chunks and
        stored; with ``fetch``, the stored ones that assembly reads downloaded."""
        hook = cast(ChunkGroups, cap)
        folder = workdir / f"group-{group:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        indexes = hook.chunk_groups(record.params)[group]
        chunk_keys = [record.chunks[i].key for i in indexes]
        outputs = hook.group_outputs(record.params, group)
        keys = {o.name: group_key(record.kind, chunk_keys, o) for o in outputs}
        files: dict[str, Path] = {}
        missing = []
        for out in outputs:
            if fetch and out.fetch:
                path = self._download(keys[out.name], folder / f"{out.name}.{out.ext}")
                if path is not None:
                    files[out.name] = path
                stored = path is not None
            else:
                stored = self.storage.exists(keys[out.name])
            if not stored:
                missing.append(out)
        if missing:
            made = self._make(cap, record, group, missing, folder, local)
            for out in missing:
                self.storage.put_file(keys[out.name], made[out.name], out.content_type)
            files.update({o.name: made[o.name] for o in missing if o.fetch})
        return GroupFiles(files, keys)

    def _download(self, key: str, path: Path) -> Path | None:
        """``key`` downloaded to ``path``; None if it is not stored (one request fewer
        than asking first)."""
        try:
            return self.storage.download(key, path)
        except ObjectNotFound:
            return None

    def _make(
        self,
        cap: Capability,
        record: JobRecord,
        group: int,
        wanted: list[GroupOutput],
        folder: Path,
        local: Mapping[int, Path],
    ) -> dict[str, Path]:
        hook = cast(ChunkGroups, cap)
        started = time.perf_counter()
        chunk_dir = folder / "chunks"
        try:
            parts = [
                local.get(i)
                or self.storage.download(
                    record.chunks[i].key, chunk_dir / f"{i:06d}.{cap.chunk_ext}"
                )
                for i in hook.chunk_groups(record.params)[group]
            ]
            made = hook.finish_group(record.params, group, wanted, GroupContext(parts, folder))
        finally:
            # The group's chunks are not needed once its outputs exist: a long book's
            # assembly holds one chapter's chunks on disk at a time, not the book's.
            shutil.rmtree(chunk_dir, ignore_errors=True)
        log.info(
            "job %s group %d/%d: %s made in %.2fs",
            record.id,
            group + 1,
            len(hook.chunk_groups(record.params)),
            ", ".join(o.name for o in wanted),
            time.perf_counter() - started,
        )
        return made
