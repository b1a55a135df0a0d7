"""Chunk groups: outputs made as soon as a group of chunks is done (jobs/base.ChunkGroups).

An audiobook's chapter is a group: the worker that records the last missing chunk of
a chapter, whichever chunk that is, encodes the chapter there and then, so the book's
final assembly only joins what the chapters made instead of encoding the whole book
on one worker after the last chunk.

A group's outputs are content-addressed (the group's chunk keys + the output's name
and identity), like chunks: a redelivered chunk, a rerun of the job or two workers
racing for the same group find or write the same object. Assembly downloads only
the outputs it reads (``GroupOutput.fetch``: an audiobook's chapter lengths and AAC);
the others are published by a copy inside the storage, from their keys. On S3 the
requests that do not wait on each other go side by side (workers/io_threads.py).
"""

from __future__ import annotations

import bisect
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from stoker.errors import ObjectNotFound
from stoker.jobs.base import Capability, ChunkGroups, GroupContext, GroupOutput
from stoker.queues.records import JobRecord
from stoker.queues.stores.base import JobStore
from stoker.storage import Storage
from stoker.storage.keys import chunk_key, content_digest
from stoker.workers.io_threads import StorageIO

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


@dataclass
class _Found:
    """What storage holds of one group's outputs, before any is made."""

    group: int
    folder: Path
    keys: dict[str, str]  # name → storage key, of every output
    files: dict[str, Path]  # name → local file, of the stored outputs downloaded
    missing: list[GroupOutput]


class GroupMaker:
    """Makes and finds the outputs of a job's chunk groups in storage.

    Its lookups, downloads and uploads go through ``io``: side by side on S3, where
    each is a round trip (a 40-chapter book's assembly asks about every chapter's
    outputs; a chapter made on the worker that finished it downloads its chunks).
    """

    def __init__(self, store: JobStore, storage: Storage, io: StorageIO) -> None:
        self.store, self.storage, self.io = store, storage, io

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

        None when ``cap`` has no chunk groups. Every group is looked up first, all
        side by side; the missing ones are then made one group at a time (each holds
        its chunks on disk while it encodes them).
        """
        hook = grouped(cap)
        if hook is None:
            return None
        count = len(hook.chunk_groups(record.params))
        found = self._find(cap, record, range(count), workdir, fetch=True)
        return [self._complete(cap, record, f, local) for f in found]

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
        (found,) = self._find(cap, record, [group], workdir, fetch=fetch)
        return self._complete(cap, record, found, local)

    def _find(
        self,
        cap: Capability,
        record: JobRecord,
        groups: Sequence[int],
        workdir: Path,
        *,
        fetch: bool,
    ) -> list[_Found]:
        """What storage holds of each group in ``groups``: with ``fetch``, the outputs
        assembly reads downloaded (one request each, not a HEAD first), the others
        asked for; every request of every group side by side."""
        hook = cast(ChunkGroups, cap)
        ranges = hook.chunk_groups(record.params)
        found: list[_Found] = []
        asks: list[tuple[_Found, GroupOutput]] = []
        for group in groups:
            chunk_keys = [record.chunks[i].key for i in ranges[group]]
            outputs = hook.group_outputs(record.params, group)
            keys = {o.name: group_key(record.kind, chunk_keys, o) for o in outputs}
            folder = workdir / f"group-{group:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            found.append(_Found(group, folder, keys, {}, []))
            asks += [(found[-1], out) for out in outputs]

        def ask(item: tuple[_Found, GroupOutput]) -> Path | bool:
            at, out = item
            if fetch and out.fetch:
                return self._download(at.keys[out.name], at.folder / f"{out.name}.{out.ext}")
            return self.storage.exists(at.keys[out.name])

        for (at, out), answer in zip(asks, self.io.all(ask, asks), strict=True):
            if isinstance(answer, Path):
                at.files[out.name] = answer
            elif not answer:
                at.missing.append(out)
        return found

    def _complete(
        self, cap: Capability, record: JobRecord, found: _Found, local: Mapping[int, Path]
    ) -> GroupFiles:
        """``found``'s group with its missing outputs made and stored (side by side)."""
        missing = found.missing
        if missing:
            made = self._make(cap, record, found.group, missing, found.folder, local)
            self.io.all(
                lambda o: self.storage.put_file(found.keys[o.name], made[o.name], o.content_type),
                missing,
            )
            found.files.update({o.name: made[o.name] for o in missing if o.fetch})
        return GroupFiles(found.files, found.keys)

    def _download(self, key: str, path: Path) -> Path | bool:
        """``key`` downloaded to ``path``; False if it is not stored (one request fewer
        than asking first)."""
        try:
            return self.storage.download(key, path)
        except ObjectNotFound:
            return False

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
            parts = self.io.all(
                lambda i: (
                    local.get(i)
                    or self.storage.download(
                        record.chunks[i].key, chunk_dir / f"{i:06d}.{cap.chunk_ext}"
                    )
                ),
                hook.chunk_groups(record.params)[group],
            )
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
