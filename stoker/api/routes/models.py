"""/v1/models: the models a request may name, in OpenAI's ``model`` shape.

OpenAI clients and the tools built on them (chat UIs, proxies) list models before
they send anything, and read one by id to check it exists. The list is this API
machine's catalog (`stoker models`: the config's ``[models]`` and the packaged
ones) with its files present, the same catalog that checks a submitted model name.
Names only: the API never tells a caller where files are. Each entry adds stoker's
``backend`` and ``capabilities`` (the jobs that can use it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from stoker.api.deps import KeyDep, StateDep
from stoker.api.errors import not_found
from stoker.jobs import capabilities_for
from stoker.workers.catalog import ModelCatalog, ModelSpec

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "model",
        # When its file was written: the model has no other creation time here. A
        # packaged model split over packages has no file until its first use joins it.
        "created": int(spec.path.stat().st_mtime) if spec.path.exists() else 0,
        "owned_by": "stoker",
        "backend": spec.backend,
        "capabilities": capabilities_for(spec),
    }


def _usable(catalog: ModelCatalog) -> list[ModelSpec]:
    return [s for s in catalog.all() if not catalog.missing_files(s)]


@router.get("")
def list_models(state: StateDep, key: KeyDep) -> dict[str, Any]:
    return {"object": "list", "data": [_model(s) for s in _usable(state.stoker.catalog)]}


@router.get("/{model_id}")
def get_model(model_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    spec = next((s for s in _usable(state.stoker.catalog) if s.name == model_id), None)
    if spec is None:
        raise not_found("model", model_id)
    return _model(spec)
