"""Capabilities: one module per kind of job. ``CAPABILITIES`` is the registry.

Adding a capability = a module with a class that satisfies ``jobs.base.Capability``
and one row here; its kind is also its Celery queue's name.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from stoker.errors import InvalidInput, ModelLoadError
from stoker.jobs.audiobook import AudiobookCapability
from stoker.jobs.base import Capability
from stoker.jobs.echo import EchoCapability
from stoker.jobs.embed import EmbedCapability
from stoker.jobs.generate import GenerateCapability
from stoker.jobs.image import ImageCapability
from stoker.jobs.mesh import MeshCapability
from stoker.jobs.speak import SpeakCapability
from stoker.jobs.transcribe import TranscribeCapability

if TYPE_CHECKING:
    from stoker.workers.catalog import ModelSpec

CAPABILITIES: dict[str, Capability] = {
    cap.kind: cap
    for cap in (
        SpeakCapability(),
        AudiobookCapability(),
        TranscribeCapability(),
        EmbedCapability(),
        GenerateCapability(),
        ImageCapability(),
        MeshCapability(),
        EchoCapability(),
    )
}


def installed(cap: Capability) -> bool:
    """Whether every engine ``cap`` needs can be imported here (without importing it)."""
    return all(installed_module(module) for module, _ in cap.engines)


def installed_module(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def get_capability(kind: str) -> Capability:
    """The capability for ``kind``; InvalidInput listing the known kinds otherwise."""
    try:
        return CAPABILITIES[kind]
    except KeyError:
        known = ", ".join(sorted(CAPABILITIES))
        raise InvalidInput(f"unknown job kind {kind!r}; this stoker runs: {known}.") from None


def capabilities_for(spec: ModelSpec) -> list[str]:
    """The kinds of job that can use model ``spec``: those of its backend, and for a
    diffusers pipeline the one its class makes (Shap-E: mesh, else image)."""
    kinds = sorted(k for k, cap in CAPABILITIES.items() if cap.backend == spec.backend)
    if spec.backend != "diffusers":
        return kinds
    from stoker.jobs.mesh import SHAP_E_PIPELINES
    from stoker.workers.loaders.diffusers import read_model_index

    try:
        pipeline = str(read_model_index(spec.path, spec.read_json).get("_class_name"))
    except ModelLoadError:  # not a pipeline folder: a job for it fails saying so
        return kinds
    return ["mesh"] if pipeline in SHAP_E_PIPELINES else ["image"]
