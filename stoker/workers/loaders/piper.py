"""Piper voices (piper-tts, ONNX Runtime underneath)."""

from __future__ import annotations

import gc
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason
from stoker.workers.memory import parse_device


def _import_piper() -> Any:
    try:
        import piper
    except ImportError as exc:
        raise MissingDependency("piper-tts", "speak", "Speaking text") from exc
    return piper


def _load_on_cuda(piper: Any, spec: ModelSpec, device: str) -> Any:
    """The voice with its ONNX Runtime session on GPU ``N`` of ``cuda:N``.

    ``PiperVoice.load(use_cuda=True)`` gives the CUDA provider no ``device_id``, so
    every voice would land on GPU 0; and with the CPU-only ``onnxruntime`` package,
    ONNX Runtime falls back to the CPU with only a warning. Both are refused here.
    """
    import json

    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ModelLoadError(
            f"cannot load voice {spec.name!r} on {device}: this ONNX Runtime has no CUDA "
            f"provider; install onnxruntime-gpu in place of onnxruntime (pip uninstall "
            f"onnxruntime && pip install onnxruntime-gpu)"
        )
    index = parse_device(device)[1] or 0
    cuda = ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "HEURISTIC"})
    session = onnxruntime.InferenceSession(
        str(spec.path), sess_options=onnxruntime.SessionOptions(), providers=[cuda]
    )
    config_path = spec.config_path or f"{spec.path}.json"
    with open(config_path, encoding="utf-8") as f:
        config = piper.PiperConfig.from_dict(json.load(f))
    return piper.PiperVoice(config=config, session=session)


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
            if device.startswith("cuda"):
                return _load_on_cuda(piper, spec, device)
            return piper.PiperVoice.load(spec.path, config_path=spec.config_path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load voice {spec.name!r} from {spec.path}: {short_reason(exc)}; "
                f"check the file is a Piper .onnx voice"
            ) from exc

    def unload(self, model: Any) -> None:
        """Drop the voice; ONNX Runtime frees its session when the object is collected."""
        del model
        gc.collect()
