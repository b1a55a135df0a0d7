"""Loaders per backend; :func:`default_loaders` is what a worker uses."""

from __future__ import annotations

from stoker.workers.loaders.base import Loader
from stoker.workers.loaders.diffusers import DiffusersLoader
from stoker.workers.loaders.embedding import EmbeddingLoader
from stoker.workers.loaders.llama import LlamaLoader
from stoker.workers.loaders.piper import PiperLoader
from stoker.workers.loaders.whisper import WhisperLoader

__all__ = [
    "DiffusersLoader",
    "EmbeddingLoader",
    "LlamaLoader",
    "Loader",
    "PiperLoader",
    "WhisperLoader",
    "default_loaders",
]


def default_loaders() -> dict[str, Loader]:
    """One loader per backend name. Cheap: no backend library is imported here."""
    loaders: list[Loader] = [PiperLoader(), WhisperLoader(), EmbeddingLoader(), DiffusersLoader()]
    loaders.append(LlamaLoader())
    return {loader.backend: loader for loader in loaders}
