"""Piper voices (piper-tts, ONNX Runtime underneath)."""

from __future__ import annotations

import gc
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason


def _import_piper() -> Any:
    try:
        import piper
    except ImportError as exc:
        raise MissingDependency("piper-tts", "speak", "Speaking text") from exc
    return piper


class PiperLoader:
    """Loads a Piper voice (``.onnx`` + ``.onnx.json``) as a ``piper.PiperVoice``."""

    backend = "piper"

    def prepare(self, device: str) -> None:
        """Import piper-tts (and ONNX Runtime). Raises MissingDependency if absent."""
        _import_piper()

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The voice, on CUDA when ``device`` is "cuda:N".

        Raises MissingDependency without piper-tts, and ModelLoadError naming the
        file when it cannot be loaded (not a Piper voice, corrupt, unreadable).
        """
        piper = _import_piper()
        try:
            return piper.PiperVoice.load(
                spec.path, config_path=spec.config_path, use_cuda=device.startswith("cuda")
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load voice {spec.name!r} from {spec.path}: {short_reason(exc)}; "
                f"check the file is a Piper .onnx voice"
            ) from exc

    def unload(self, model: Any) -> None:
        """Drop the voice; ONNX Runtime frees its session when the object is collected."""
        del model
        gc.collect()
