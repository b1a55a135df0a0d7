"""The model manager with the real all-MiniLM-L6-v2 and the real RSS meter."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.config import Settings
from stoker.workers.catalog import ModelCatalog
from stoker.workers.loaders.base import tensor_bytes
from stoker.workers.manager import MIB, ModelManager

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_sentence_model_counts_at_least_its_weights(tmp_path: Path) -> None:
    """Given MiniLM, whose safetensors weights PyTorch maps from the file (RSS right
    after the load showed 28 of its 87 MiB here)
    When the manager loads it on the CPU
    Then its footprint is at least the bytes of its weights, before any job ran."""
    settings = Settings(data_dir=tmp_path / "data")
    spec = ModelCatalog(settings).get("all-MiniLM-L6-v2", "sentence-transformers")
    manager = ModelManager(settings)
    try:
        with manager.use(spec, "cpu") as model:
            weights = tensor_bytes([model])
        footprint = manager.footprint(spec, "cpu")
        assert footprint is not None
        assert weights > 80 * MIB and footprint >= weights, f"{footprint / MIB:.0f} MiB"
    finally:
        manager.unload_all()
