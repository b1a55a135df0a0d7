"""What a capability is: validate a request, split it into chunks, run one chunk on a
loaded model, assemble the chunks into artifacts.

A capability never talks to Redis or S3. It reads and writes local files; the
worker's executor (stoker/workers/execute.py) moves them to and from storage, and
the queues layer moves the work between processes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from stoker.errors import InvalidInput

if TYPE_CHECKING:
    from stoker.config import Settings
    from stoker.workers.catalog import ModelCatalog


@dataclass(frozen=True)
class ChunkPlan:
    """One unit of work: ``payload`` travels in the task message (keep it small);
    ``identity`` is everything the output depends on, hashed into its storage key so a
    re-delivered or re-submitted chunk whose output exists is skipped."""

    payload: dict[str, Any]
    identity: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready to become a job record and chunk tasks."""

    params: dict[str, Any]  # stored in the job record: JSON-safe, no large inputs
    # params["load_options"], when present, are added to the model's configured load
    # options (ModelSpec.with_options): a job asking for another n_ctx gets its own model.
    model: str | None  # catalog name of the model the chunks need, if any
    chunks: list[ChunkPlan]
    inputs: dict[str, bytes] = field(default_factory=dict)  # kept under jobs/<id>/inputs/
    # Local files to store under content-addressed keys (key → path); a key that
    # already exists is not uploaded again, so resubmitting an archive is cheap.
    uploads: dict[str, Path | bytes] = field(default_factory=dict)


#: The output of a job that succeeded although some of its items failed (generate's
#: prompt lines): one JSON object per failed item, with ``error.code`` and
#: ``error.message``. Clients report it (Stoker.item_errors, the CLI's warning).
ERRORS_NAME = "errors.jsonl"
#: A job's name in a batch, given by a line of a line file (jobs/line_files.py): it
#: names the job's outputs, or their folder, so it has no separators and no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
#: Request fields that name a file a capability reads at submission, on the submitting
#: machine: a recording to transcribe or an image's starting picture, and its mask.
#: The client stages s3:// ones there, and the HTTP API guards them (api/inputs.py).
FILE_FIELDS = ("path", "mask")


@dataclass(frozen=True)
class Artifact:
    """An output of assembly, to be stored as ``jobs/<id>/<name>``: the file at ``path``,
    for a small one the bytes in ``data`` (no scratch file to write and copy: that is
    most of the cost of a one-sentence embed job's output) or, for one already in
    storage, the object at ``source_key``, copied there by the storage itself
    (``Storage.copy``: an audiobook's chapter files, made when each chapter finished,
    are not downloaded and uploaded again)."""

    name: str
    path: Path | None
    content_type: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. duration_s; goes in the manifest
    data: bytes | None = None
    source_key: str | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.path, self.data, self.source_key) if x is not None]
        if len(given) != 1:
            raise ValueError(
                f"artifact {self.name!r}: give exactly one of path, data and source_key"
            )

    def read_bytes(self) -> bytes:
        """The bytes of an artifact in memory or in a file. Raises ValueError for one
        that is only in storage (``source_key``)."""
        return self.data if self.data is not None else self.file.read_bytes()

    @property
    def file(self) -> Path:
        """``path``, for an artifact known to be a file. Raises ValueError otherwise."""
        if self.path is None:
            where = "in memory" if self.data is not None else f"in storage at {self.source_key!r}"
            raise ValueError(f"artifact {self.name!r} is held {where}, not in a file")
        return self.path


@dataclass(frozen=True)
class PrepareContext:
    settings: Settings
    catalog: ModelCatalog


#: Polled by long-running chunks; True means the job was cancelled: stop early.
StopCheck = Callable[[], bool]


#: Borrows another warm model for the duration of a ``with``: (name, backend) → model.
UseModel = Callable[[str, str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class AssembleContext:
    """What assembly gets: the chunk outputs in order, a folder for the artifacts,
    local copies of the storage keys listed in ``params["assemble_inputs"]`` and, for a
    capability with ``chunk_notes = True``, each chunk's notes (``{}`` when none, or
    when not among those of NotedChunks.noted_chunks)."""

    # Fetched when first read (see workers/assembly.ChunkFiles): a chunk only
    # published by key (``published``) is never downloaded.
    chunk_files: Sequence[Path]
    folder: Path  # see workdir
    inputs: Mapping[str, Path] = field(default_factory=dict)
    chunk_notes: list[dict[str, Any]] = field(default_factory=list)
    # For a capability with chunk groups (see ChunkGroups): per group, in order, its
    # outputs that assembly reads (GroupOutput.fetch), as local files (name → file).
    # Such a capability gets no chunk_files: it assembles from what its groups made.
    group_files: list[dict[str, Path]] = field(default_factory=list)
    # Per group, in order, the storage key of every one of its outputs (name → key):
    # what an Artifact(source_key=...) publishes without downloading it.
    group_keys: list[dict[str, str]] = field(default_factory=list)
    # The storage key of each chunk, in order (none for a capability with groups): a
    # chunk that is an output as it is (an image's PNG, a mesh's GLB) is published
    # with Artifact(source_key=...), linked or copied by the storage, not written again.
    chunk_keys: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        """The folder for artifact files, made on first use: an assembly whose artifacts
        are all ``data`` makes none (a directory creation per small job adds up)."""
        if not self.folder.is_dir():  # a stat: far cheaper than mkdir of an existing one
            self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def published(
        self, index: int, name: str, content_type: str, meta: dict[str, Any] | None = None
    ) -> Artifact:
        """Chunk ``index`` as output ``name``, as it is: from its storage key (linked on
        local storage, copied by the server on S3, so its bytes are not written or
        uploaded again), or copied from its file where assembly was given no keys."""
        meta = meta or {}
        if index < len(self.chunk_keys):
            return Artifact(name, None, content_type, meta, source_key=self.chunk_keys[index])
        out = self.workdir / name
        shutil.copyfile(self.chunk_files[index], out)
        return Artifact(name, out, content_type, meta)


@dataclass(frozen=True)
class ChunkContext:
    """What one chunk gets besides its payload: where to write, when to stop, and local
    copies of the storage keys listed in ``payload["inputs"]``."""

    out: Path
    should_stop: StopCheck
    inputs: Mapping[str, Path] = field(default_factory=dict)
    # A second model for the same chunk (audiobook checks its speech with Whisper);
    # None where no model manager is at hand.
    use_model: UseModel | None = None
    # JSON-safe facts about this chunk's output (a verification result); stored beside
    # the chunk and handed to assembly when the capability sets ``chunk_notes = True``.
    notes: dict[str, Any] = field(default_factory=dict)


class Capability(Protocol):
    kind: str  # also the name of its Celery queue
    backend: str | None  # loader backend of its models; None if it needs no model
    chunk_ext: str  # file extension of one chunk's output
    chunk_content_type: str
    work_stage: str  # progress stage shown while chunks run, e.g. "synthesize"
    # (import name, pip extra) of the packages its work needs; a worker started without
    # --queues serves only capabilities whose engines are installed.
    engines: tuple[tuple[str, str], ...]

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        """Validate ``request`` and plan the chunks.

        Raises errors.InvalidInput or errors.UnknownModel with a sentence naming the field.
        """
        ...

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        """Do one chunk's work on a loaded model and write its output to ``ctx.out``.

        Raises errors.JobCancelled when ``ctx.should_stop()`` turns true mid-way.
        """
        ...

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        """Build the job's artifacts from its chunk outputs (in chunk order)."""
        ...


@dataclass(frozen=True)
class GroupOutput:
    """A file made from one finished group of chunks (an audiobook chapter's MP3).

    Stored under a content-addressed key made of the group's chunk keys, ``name`` and
    ``identity``, so a rerun, a redelivery or a second worker racing for the same
    group reuses it (or writes the same bytes).
    """

    name: str  # unique within the group, e.g. "mp3", "aac"
    ext: str  # file extension of the stored object, without the dot
    content_type: str
    identity: dict[str, Any]  # every parameter the bytes depend on besides the chunks
    # Whether assembly reads the file (downloaded into AssembleContext.group_files) or
    # only publishes the stored object (AssembleContext.group_keys). Not in the key.
    fetch: bool = True


@dataclass(frozen=True)
class GroupContext:
    """What making a group's outputs gets: its chunk outputs in order, a folder to write in."""

    chunk_files: list[Path]
    workdir: Path


@runtime_checkable
class ChunkGroups(Protocol):
    """Optional capability hook: chunks that form groups whose outputs can be made as
    soon as the group's last chunk is done, whichever worker finishes it, instead of
    all at once in assembly (an audiobook encodes each chapter as it completes).

    The executor calls ``finish_group`` from the chunk task that completes a group,
    and again in assembly for any output still missing (a crash in between); the
    outputs reach ``assemble`` as ``AssembleContext.group_files`` (those it reads)
    and ``AssembleContext.group_keys`` (all, as storage keys).
    """

    def chunk_groups(self, params: dict[str, Any]) -> list[range]:
        """The groups, in order: ranges of chunk indexes (disjoint, covering every chunk)."""
        ...

    def group_outputs(self, params: dict[str, Any], group: int) -> list[GroupOutput]:
        """The files group ``group`` makes (the same list for the same params)."""
        ...

    def finish_group(
        self, params: dict[str, Any], group: int, wanted: list[GroupOutput], ctx: GroupContext
    ) -> dict[str, Path]:
        """Write the ``wanted`` outputs of ``group`` into ``ctx.workdir``: name → file.

        Must give the same bytes for the same chunks and params (a content-addressed
        result may be written by two workers).
        """
        ...


@runtime_checkable
class NotedChunks(Protocol):
    """Optional capability hook, beside ``chunk_notes = True``: which chunks can have
    notes. Assembly reads the notes of those only (one storage read each), where it
    would otherwise look beside every chunk: for a long audiobook, 15,000 reads of
    which the first chapter's few dozen find anything."""

    def noted_chunks(self, params: dict[str, Any], count: int) -> Sequence[int]:
        """The indexes, among the job's ``count`` chunks, that may have notes."""
        ...


@dataclass(frozen=True)
class SubmitNeed:
    """A library that submitting a capability's jobs uses on the submitting machine
    (beside the workers): a capability's optional ``submit_needs``, which `stoker
    doctor` checks on a machine that only submits."""

    module: str  # import name
    package: str  # what to pip install
    purpose: str  # what submission does with it: "reading each recording's length"
    always: bool = True  # False: only some inputs need it (EPUB books, not text)


@runtime_checkable
class BorrowsModels(Protocol):
    """Optional capability hook: models of other backends its chunks borrow from the
    manager (``ChunkContext.use_model``) beside their own, as audiobook verification
    borrows Whisper. A worker serving the capability publishes the cards of those
    models whose engine it can import (workers/cards.py), so a submitting machine can
    tell whether the workers can do what a job would ask of them."""

    #: (backend, import name of its engine), e.g. ("whisper", "faster_whisper").
    borrows: tuple[tuple[str, str], ...]


def parse_request(request: dict[str, Any], model: type[BaseModel]) -> Any:
    """Validate ``request`` against ``model``; InvalidInput names the first bad field
    and, when it is a short scalar, the value given: "invalid count 20: Input should
    be less than or equal to 16"."""
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
            raise InvalidInput(
                f"{where!r} is not an option here; remove it (the options: "
                f"{', '.join(model.model_fields)})."
            ) from exc
        value = first.get("input")
        if first["type"] == "string_too_short" and value == "":
            raise InvalidInput(f"{where} is empty; give it a value or leave it out.") from exc
        given = ""
        if isinstance(value, int | float | str) and len(repr(value)) <= 40:
            given = f" {value!r}"
        raise InvalidInput(f"invalid {where}{given}: {first['msg']}") from exc
