"""The model manager with the real all-MiniLM-L6-v2 and the real RSS meter."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.config import Settings
from stoker.workers import memory
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


def test_a_job_gives_its_free_heap_back_and_counts_only_what_stays(tmp_path: Path) -> None:
    """Given MiniLM loaded, and a job that leaves 160 MiB of freed buffers in the C
    heap (64 long texts encoded, then many small buffers freed but the last: glibc
    keeps such memory, as it kept 200-440 MiB after 256 long texts here)
    When the job ends
    Then the worker holds about the model's weights, not the job's buffers, and the
    footprint is the weights: what a trim gave back is not counted as the model's."""
    settings = Settings(data_dir=tmp_path / "data")
    spec = ModelCatalog(settings).get("all-MiniLM-L6-v2", "sentence-transformers")
    manager = ModelManager(settings)
    texts = [" ".join(f"word{i}x{j}" for j in range(120)) for i in range(64)]
    try:
        with manager.use(spec, "cpu") as model:
            weights = tensor_bytes([model])
        memory.release_freed_memory()
        loaded = memory.rss_bytes()
        with manager.use(spec, "cpu") as model:
            model.encode(texts, batch_size=64, show_progress_bar=False)
            buffers = [bytearray(4000) for _ in range(40_000)]  # malloc'd, below mmap size
            last = buffers[-1]  # above the others in the heap: they cannot shrink its top
            del buffers
            during = memory.rss_bytes() - loaded
        held = memory.rss_bytes() - loaded
        del last
        footprint = manager.footprint(spec, "cpu")
        assert footprint is not None
        # the freed buffers were still resident (else this test proves nothing)...
        assert during > weights + 64 * MIB, f"{during / MIB:.0f} MiB during the job"
        # ...and are gone; the pages of weights the job touched may stay
        assert held < weights + 32 * MIB, f"{held / MIB:.0f} MiB held after it"
        assert weights <= footprint < weights + 32 * MIB, f"{footprint / MIB:.0f} MiB"
    finally:
        manager.unload_all()
