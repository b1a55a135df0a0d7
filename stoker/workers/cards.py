"""Model cards: what a machine that submits jobs needs to know of a model whose files
are on the workers only.

Submission checks a request against its model (a voice's speakers, a pipeline's
valid image sizes) and records the model's fingerprint in each chunk's identity
(workers/catalog.py). That used to need the model's files on the submitting machine
too. With a shared fleet (a Redis job store), every worker publishes a card for each
model of its catalog whose files it has: the catalog entry, the file list with sizes
(what the fingerprint hashes), and a copy of the model's small JSON files (a voice's
``.onnx.json``, a pipeline's ``model_index.json`` and component configs). The
submitting catalog (``ModelCatalog(..., fleet=FleetCards(...))``) uses a card for a
name it does not know or whose files it lacks, so an API box with no GPU and no
models accepts the same requests as a worker would.

Where cards live: ``stoker:card:<id>`` (JSON, a TTL of :data:`CARD_TTL_S`, written
again every :data:`CARD_REPUBLISH_S`), ``id`` a hash of the content; each heartbeat
names the cards of its worker (``WorkerBeat.cards``: name → id). Only the cards a
live worker names are read: a worker that is gone takes its models with it.

Never read by workers: a worker loads from its own files, and a model whose files
are not on its machine is left to the others (workers/steering.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from stoker.config import Settings
    from stoker.workers.catalog import ModelSpec
    from stoker.workers.fleet import Fleet
    from stoker.workers.packaged import SplitModel

log = logging.getLogger(__name__)

#: A JSON file of a model up to this size travels in its card (configs, not vocabularies).
DOC_MAX_BYTES = 64 * 1024
#: A model's side file (Piper's ``.onnx.json``) travels up to this size.
SIDE_DOC_MAX_BYTES = 1024 * 1024
#: How long a card outlives its worker's last publication of it.
CARD_TTL_S = 3600.0
#: How often a worker writes its cards again though nothing changed (refreshing the TTL).
CARD_REPUBLISH_S = 900.0
#: How long a submitting machine reuses the fleet's cards before reading them again.
READ_FRESH_S = 2.0


class ModelCard(BaseModel):
    """One model as a worker's catalog has it, without its weights."""

    name: str
    backend: str
    path: str  # as the worker's catalog has it (expanded, not resolved)
    folder: bool  # whether ``path`` is a folder (else one file)
    config_path: str | None = None
    options: dict[str, Any] = {}
    # What the fingerprint hashes besides the options: backend, resolved path, and
    # every file's resolved path and size (ModelSpec.identity).
    identity: dict[str, Any]
    disk_bytes: int
    modified_at: float  # epoch seconds: the newest of its files
    # Small JSON files of the model, parsed, by their path relative to the model's
    # folder (for a one-file model: the folder that holds it).
    documents: dict[str, Any] = {}

    @property
    def id(self) -> str:
        blob = self.model_dump_json()
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def document_key(path: Path, folder: bool, target: Path) -> str:
    """The key of ``target`` (a file of the model at ``path``) in a card's documents."""
    base = path if folder else path.parent
    try:
        return target.relative_to(base).as_posix()
    except ValueError:  # a side file elsewhere (a config= path)
        return str(target)


def card_of(spec: ModelSpec, pieces: SplitModel | None = None) -> ModelCard:
    """The card of ``spec``, whose files must all exist here, or with ``pieces`` of a
    split model not joined yet: of the folder joining it will write (the same card but
    for the times). Reads only small JSON files."""
    if pieces is None:
        # (file, size, where to read it): every file, as it is on disk
        layout: list[tuple[Path, int, Path | None]] = [(f, f.stat().st_size, f) for f in spec.files]
        identity, folder = spec.identity(), spec.path.is_dir()
    else:
        layout = pieces.planned(spec.path)
        identity, folder = spec.identity([(dest, size) for dest, size, _ in layout]), True
    documents: dict[str, Any] = {}
    for file, size, source in layout:
        limit = SIDE_DOC_MAX_BYTES if file == spec.config_path else DOC_MAX_BYTES
        if source is None or file.suffix != ".json" or size > limit:
            continue
        try:
            documents[document_key(spec.path, folder, file)] = json.loads(
                source.read_text(encoding="utf-8")
            )
        except (OSError, ValueError) as exc:  # the worker's own load says what is wrong
            log.debug("model card of %s leaves out %s: %s", spec.name, file, exc)
    sources = [source for _, _, source in layout if source is not None]
    return ModelCard(
        name=spec.name,
        backend=spec.backend,
        path=str(spec.path),
        folder=folder,
        config_path=None if spec.config_path is None else str(spec.config_path),
        options=json.loads(json.dumps(dict(spec.options), default=str)),
        identity=identity,
        disk_bytes=spec.disk_bytes() if pieces is None else sum(size for _, size, _ in layout),
        modified_at=max((f.stat().st_mtime for f in sources), default=0.0),
        documents=documents,
    )


#: The pieces of a spec when it is a split model not joined yet (ModelCatalog.pending_split).
Pending = Callable[["ModelSpec"], "SplitModel | None"]


def cards_of(specs: Iterable[ModelSpec], pending: Pending | None = None) -> dict[str, ModelCard]:
    """Cards of the specs whose files are all here, or that are split models whose
    pieces are (``pending``), by name; the others are left out."""
    out = {}
    for spec in specs:
        try:
            pieces = None if pending is None else pending(spec)
            if pieces is not None and not pieces.missing():
                out[spec.name] = card_of(spec, pieces)
            elif pieces is None and not spec.missing_files():
                out[spec.name] = card_of(spec)
        except OSError as exc:  # a file deleted while we read it: next round
            log.debug("no model card for %s now: %s", spec.name, exc)
    return out


class CardPublisher:
    """A worker's side: publishes the cards of the models it has, when they change and
    every CARD_REPUBLISH_S. Called from the heartbeat thread."""

    def __init__(self, fleet: Fleet, every_s: float) -> None:
        self._fleet = fleet
        self._every_s = every_s
        self._checked_at = float("-inf")
        self._published_at = float("-inf")
        self.ids: dict[str, str] = {}  # name → card id, as the heartbeat names them

    def refresh(self, specs: Iterable[ModelSpec], pending: Pending | None = None) -> None:
        """Work the cards out again (every ``every_s``) and publish them if changed."""
        now = time.monotonic()
        if now - self._checked_at < self._every_s:
            return
        self._checked_at = now
        cards = cards_of(specs, pending)
        ids = {name: card.id for name, card in cards.items()}
        if ids == self.ids and now - self._published_at < CARD_REPUBLISH_S:
            return
        self._fleet.publish_cards(list(cards.values()), CARD_TTL_S)
        self._published_at = now
        self.ids = ids


class FleetCards:
    """A submitting machine's side: the card of each model name some live worker has,
    and which models each live worker has cards for.

    When workers disagree on a name (other files or options), the card most of them
    hold wins. Read at most every READ_FRESH_S; a fleet that cannot be read has no
    cards and no workers (the submission then fails as it would without them, naming
    the file).
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._cards: dict[str, ModelCard] = {}
        # Per live worker: the queues it may take (catalog and path models) and the
        # names it has cards for.
        self._workers: list[tuple[frozenset[str], frozenset[str]]] = []

    def cards(self) -> Mapping[str, ModelCard]:
        self._refresh()
        return self._cards

    def takers(self, kind: str, model: str | None) -> list[frozenset[str]]:
        """The model names each live worker that may run a ``kind`` job on ``model``
        has cards for: the workers that serve the model's queue, or where none does
        (no worker has its files, or jobs share one queue), those serving ``kind``."""
        from stoker.queues.app import model_queue

        self._refresh()
        for queue in (model_queue(kind, model), kind):
            found = [names for queues, names in self._workers if queue in queues]
            if found:
                return found
        return []

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at >= READ_FRESH_S:
                self._cards, self._workers = self._read()
                self._read_at = time.monotonic()

    def _read(self) -> tuple[dict[str, ModelCard], list[tuple[frozenset[str], frozenset[str]]]]:
        try:
            beats = self._fleet.workers()
            votes: dict[str, Counter[str]] = {}
            for beat in beats:
                for name, card_id in beat.cards.items():
                    votes.setdefault(name, Counter())[card_id] += 1
            # The id most workers name (ties: the smallest id, so every reader agrees).
            chosen = {name: max(sorted(c), key=c.__getitem__) for name, c in votes.items()}
            found = self._fleet.read_cards(sorted(set(chosen.values())))
        except Exception as exc:  # Redis away: as if no worker had published
            log.warning("cannot read the workers' model cards: %s", exc)
            return {}, []
        workers = [(frozenset(b.serves) | frozenset(b.paths), frozenset(b.cards)) for b in beats]
        return {name: found[i] for name, i in chosen.items() if i in found}, workers


def fleet_cards(settings: Settings) -> FleetCards | None:
    """The live workers' cards where they are shared (a Redis job store), else None."""
    from stoker.workers.fleet import open_fleet

    fleet = open_fleet(settings)
    return FleetCards(fleet) if fleet.shared else None
