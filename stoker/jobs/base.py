"""What a capability is: validate a request, split it into chunks, run one chunk on a
loaded model, assemble the chunks into artifacts.

A capability never talks to Redis or S3. It reads and writes local files; the
worker's executor (stoker/workers/execute.py) moves them to and from storage, and
the queues layer moves the work between processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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


@dataclass(frozen=True)
class Artifact:
    """A file produced by assembly, to be stored as ``jobs/<id>/<name>``."""

    name: str
    path: Path
    content_type: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. duration_s; goes in the manifest


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
    capability with ``chunk_notes = True``, each chunk's notes (``{}`` when none)."""

    chunk_files: list[Path]
    workdir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)
    chunk_notes: list[dict[str, Any]] = field(default_factory=list)


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


def parse_request(request: dict[str, Any], model: type[BaseModel]) -> Any:
    """Validate ``request`` against ``model``; InvalidInput names the first bad field."""
    try:
        return model.model_validate(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidInput(f"invalid {where}: {first['msg']}") from exc
