"""/v1/models: the models a request may name, in OpenAI's ``model`` shape.

OpenAI clients and the tools built on them (chat UIs, proxies) list models before
they send anything, and read one by id to check it exists. The list is this API
machine's catalog (`stoker models`: the config's ``[models]`` and the packaged
ones) with its files present, and with a Redis job store the models whose files only
live workers have (their model cards, workers/cards.py): the same catalog that
checks a submitted model name.
Names only: the API never tells a caller where files are. Each entry adds stoker's
``backend`` and ``capabilities`` (the jobs that can use it), and with a Redis job
store ``workers``: how many live workers have the model and run one of those jobs
(0: requests for it wait until one starts).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from stoker.api.deps import KeyDep, StateDep
from stoker.api.errors import not_found
from stoker.jobs import capabilities_for
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.coverage import live_beats, workers_serving
from stoker.workers.fleet import WorkerBeat

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model(spec: ModelSpec, beats: list[WorkerBeat] | None) -> dict[str, Any]:
    kinds = capabilities_for(spec)
    out = {
        "id": spec.name,
        "object": "model",
        # When its file was written: the model has no other creation time here. A
        # packaged model split over packages has no file until its first use joins it.
        "created": _created(spec),
        "owned_by": "stoker",
        "backend": spec.backend,
        "capabilities": kinds,
    }
    if beats is not None:  # a shared fleet: how many live workers can run it now
        out["workers"] = workers_serving(beats, spec.name, kinds)
    return out


def _created(spec: ModelSpec) -> int:
    if spec.card is not None:
        return int(spec.card.modified_at)
    return int(spec.path.stat().st_mtime) if spec.path.exists() else 0


def _usable(catalog: ModelCatalog) -> list[ModelSpec]:
    """This machine's models with their files, then those whose files only the live
    workers have (their model cards), by name."""
    here = [s for s in catalog.all() if not catalog.missing_files(s)]
    return sorted([*here, *catalog.fleet_specs()], key=lambda s: s.name)


@router.get("")
def list_models(state: StateDep, key: KeyDep) -> dict[str, Any]:
    beats = live_beats(state.stoker.settings)
    return {"object": "list", "data": [_model(s, beats) for s in _usable(state.stoker.catalog)]}


@router.get("/{model_id}")
def get_model(model_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    spec = next((s for s in _usable(state.stoker.catalog) if s.name == model_id), None)
    if spec is None:
        raise not_found("model", model_id)
    return _model(spec, live_beats(state.stoker.settings))
