"""Embedding models (sentence-transformers, PyTorch underneath)."""

from __future__ import annotations

import gc
import os
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason, tensor_bytes


def _import_sentence_transformers() -> Any:
    # Models load from local folders only; never let a missing file turn into a
    # download attempt (there is no hub to reach, and it would hang on a timeout).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import sentence_transformers
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise MissingDependency("sentence-transformers", "embed", "Embedding text") from exc
    hf_logging.disable_progress_bar()  # a bar per load is noise in a worker's log
    return sentence_transformers


class EmbeddingLoader:
    """Loads a sentence-transformers folder (modules.json, config.json, weights).

    Load options (``spec.options``): ``max_seq_length`` (tokens; longer texts are
    truncated by the model) and ``dtype`` ("float16" on CUDA halves the footprint).
    """

    backend = "sentence-transformers"

    def prepare(self, device: str) -> None:
        """Import sentence-transformers (and torch). Raises MissingDependency if absent."""
        _import_sentence_transformers()

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The model on ``device``; ModelLoadError naming the folder when it cannot load."""
        st = _import_sentence_transformers()
        if not (spec.path / "modules.json").is_file() and not (spec.path / "config.json").is_file():
            raise ModelLoadError(
                f"could not load embedding model {spec.name!r}: {spec.path} has no modules.json "
                f"or config.json; point it at a sentence-transformers model folder"
            )
        try:
            model = st.SentenceTransformer(str(spec.path), device=device, local_files_only=True)
            if "max_seq_length" in spec.options:
                model.max_seq_length = int(spec.options["max_seq_length"])
            if spec.options.get("dtype") == "float16":
                model.half()
        except Exception as exc:
            raise ModelLoadError(
                f"could not load embedding model {spec.name!r} from {spec.path}: "
                f"{short_reason(exc)}; check the folder holds a sentence-transformers model"
            ) from exc
        return model

    def weights_bytes(self, model: Any) -> int:
        """Bytes of the model's weights (see loaders/base.py: read lazily from the file,
        they are not all in memory when the load returns)."""
        return tensor_bytes([model])

    def unload(self, model: Any) -> None:
        """Drop the model and give its CUDA memory back to the driver."""
        device = str(getattr(model, "device", "cpu"))
        del model
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
