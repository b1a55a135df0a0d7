"""Assembling a job whose chunks are all done: its artifacts and manifest, stored.

The executor (execute.py) calls :meth:`Assembler.build` in the task that finished a
job's last chunk. Assembly is idempotent: the same chunks give the same keys and the
same bytes, so a worker lost between "last chunk recorded" and "job succeeded" is
simply followed by a redelivered task that assembles again.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from stoker.errors import ObjectNotFound
from stoker.jobs.base import Artifact, AssembleContext, Capability, NotedChunks
from stoker.queues.records import JobRecord, OutputRef
from stoker.storage import Storage
from stoker.storage.base import JSON_CONTENT_TYPE
from stoker.storage.keys import job_key
from stoker.storage.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from stoker.workers.groups import GroupMaker
from stoker.workers.inputs import InputCache
from stoker.workers.io_threads import StorageIO


def notes_key(chunk_key: str) -> str:
    """Where a chunk's notes are stored: beside it."""
    return f"{chunk_key}.notes.json"


class ChunkFiles(Sequence[Path]):
    """A job's chunk files, in order, each fetched when assembly first reads it.

    An image's PNG or a mesh's GLB is published from its storage key and never read,
    so fetching every chunk up front downloaded (or, on local storage, copied) files
    for nothing. Iterating fetches all that are missing at once, side by side on
    remote storage; indexing fetches the one. A fetched file is kept."""

    def __init__(self, keys: Sequence[str], fetch: Callable[[int], Path], io: StorageIO) -> None:
        self._count, self._fetch, self._io = len(keys), fetch, io
        self._files: dict[int, Path] = {}

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Path: ...
    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...
    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        i = range(self._count)[index]  # negative indexes, and IndexError past the end
        if i not in self._files:
            self._files[i] = self._fetch(i)
        return self._files[i]

    def __iter__(self) -> Iterator[Path]:
        missing = [i for i in range(self._count) if i not in self._files]
        self._files.update(zip(missing, self._io.all(self._fetch, missing), strict=True))
        return (self._files[i] for i in range(self._count))


class Assembler:
    """Builds and stores a job's artifacts and manifest; never touches its record."""

    def __init__(
        self, storage: Storage, io: StorageIO, groups: GroupMaker, inputs: InputCache
    ) -> None:
        self.storage, self.io, self.groups, self.inputs = storage, io, groups, inputs

    def build(
        self,
        cap: Capability,
        record: JobRecord,
        scratch: Path | None = None,
        local: Mapping[int, Path] | None = None,
        notes: Mapping[int, dict[str, Any]] | None = None,
    ) -> list[OutputRef]:
        """The job's artifacts and manifest, built and stored; its record untouched.

        The chunks not in ``local`` are downloaded when the capability first reads them
        (none for a chunk it only publishes by key), and the artifacts stored, side by
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
            keys = [c.key for c in record.chunks] if groups is None else []
            files = ChunkFiles(
                keys,
                lambda i: (
                    local.get(i)
                    or self.storage.download(keys[i], chunk_dir / f"{i:06d}.{cap.chunk_ext}")
                ),
                self.io,
            )
            inputs = {k: self.inputs.path_for(k) for k in record.params.get("assemble_inputs", [])}
            context = AssembleContext(
                files,
                workdir,
                inputs,
                chunk_notes=self._notes(cap, record, notes or {}),
                group_files=[g.files for g in groups or []],
                group_keys=[g.keys for g in groups or []],
                chunk_keys=keys,
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
