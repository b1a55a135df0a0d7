"""Whisper models (faster-whisper, CTranslate2 underneath)."""

from __future__ import annotations

import gc
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason
from stoker.workers.memory import parse_device


def _import_faster_whisper() -> Any:
    try:
        import faster_whisper
    except ImportError as exc:
        raise MissingDependency("faster-whisper", "transcribe", "Transcribing audio") from exc
    return faster_whisper


def _check_cuda(spec: ModelSpec, device: str, index: int) -> None:
    """Refuse a GPU that CTranslate2 cannot see, with what to install, before it fails
    deep in the load with a library error."""
    import ctranslate2

    count = ctranslate2.get_cuda_device_count()
    if index >= count:
        raise ModelLoadError(
            f"cannot load Whisper model {spec.name!r} on {device}: CTranslate2 sees "
            f"{count} CUDA device(s); it needs the NVIDIA driver and CUDA 12 libraries "
            f"(pip install nvidia-cublas-cu12 nvidia-cudnn-cu12), and {device} must be "
            f"one of the GPUs this process may use (CUDA_VISIBLE_DEVICES)"
        )


class WhisperLoader:
    """Loads a CTranslate2 Whisper folder as a ``faster_whisper.WhisperModel``.

    Load options (``spec.options``): ``compute_type`` (default "int8" on CPU,
    "float16" on CUDA) and ``cpu_threads`` (default 0: CTranslate2 picks).
    """

    backend = "whisper"

    def prepare(self, device: str) -> None:
        """Import faster-whisper (and CTranslate2). Raises MissingDependency if absent."""
        _import_faster_whisper()

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The model on ``device`` ("cpu" or "cuda:N"), from local files only.

        Raises MissingDependency without faster-whisper, and ModelLoadError naming
        the folder when it cannot be loaded (not a CTranslate2 Whisper model, corrupt,
        unsupported compute type on this device).
        """
        faster_whisper = _import_faster_whisper()
        kind, cuda_index = parse_device(device)
        index = cuda_index or 0
        if kind == "cuda":
            _check_cuda(spec, device, index)
        compute_type = spec.options.get("compute_type") or ("int8" if kind == "cpu" else "float16")
        try:
            return faster_whisper.WhisperModel(
                str(spec.path),
                device=kind,
                device_index=index,
                compute_type=compute_type,
                cpu_threads=int(spec.options.get("cpu_threads", 0)),
                # Never reach for a model hub: a path that is not a model must fail here.
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load Whisper model {spec.name!r} from {spec.path}: "
                f"{short_reason(exc)}; check the folder holds a CTranslate2 Whisper model "
                f"(model.bin, config.json, tokenizer.json)"
            ) from exc

    def unload(self, model: Any) -> None:
        """Drop the model; CTranslate2 frees its weights when the object is collected."""
        del model
        gc.collect()
