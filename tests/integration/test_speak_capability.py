"""The speak capability on the real Piper voice, without queues: formats and options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.jobs.base import AssembleContext, ChunkContext, PrepareContext
from stoker.jobs.speak import SpeakCapability
from stoker.workers.catalog import ModelCatalog
from stoker.workers.loaders.piper import PiperLoader

pytestmark = pytest.mark.integration

TEXT = "The keeper climbed the stairs. He lit the lamp. The ships passed safely."


@pytest.fixture(scope="module")
def voice() -> Any:
    settings = load_settings()
    spec = ModelCatalog(settings).get(settings.default_voice, backend="piper")
    return PiperLoader().load(spec, "cpu")


def speak(voice: Any, tmp_path: Path, **request: Any) -> tuple[Path, dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = load_settings(data_dir=tmp_path, speak_chunk_chars=200)
    cap = SpeakCapability()
    prepared = cap.prepare(
        {"text": TEXT, **request}, PrepareContext(settings, ModelCatalog(settings))
    )
    chunk_files = []
    for i, plan in enumerate(prepared.chunks):
        out = tmp_path / f"chunk{i}.wav"
        cap.run_chunk(voice, prepared.params, plan.payload, ChunkContext(out, lambda: False))
        chunk_files.append(out)
    (tmp_path / "out").mkdir(exist_ok=True)
    [artifact] = cap.assemble(prepared.params, AssembleContext(chunk_files, tmp_path / "out"))
    return artifact.path, artifact.meta


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_every_format_decodes_back_to_the_same_length(voice: Any, tmp_path: Path, fmt: str) -> None:
    import soundfile

    path, meta = speak(voice, tmp_path, format=fmt)
    assert path.name == f"speech.{fmt}"
    info = soundfile.info(str(path))
    assert info.samplerate == 22050 and info.channels == 1
    # MP3 and Vorbis encoders pad a little; the length is the same to within 0.1 s.
    assert info.frames / info.samplerate == pytest.approx(meta["duration_s"], abs=0.1)
    assert meta["duration_s"] > 3


def test_slower_speech_and_longer_pauses_make_longer_audio(voice: Any, tmp_path: Path) -> None:
    _, normal = speak(voice, tmp_path / "a", sentence_silence_s=0.0)
    _, slow = speak(voice, tmp_path / "b", length_scale=1.5, sentence_silence_s=0.0)
    _, pauses = speak(voice, tmp_path / "c", sentence_silence_s=1.0)
    assert slow["duration_s"] > normal["duration_s"] * 1.3
    # Three sentences: two pauses of one second each. Piper's duration predictor is
    # stochastic, so two syntheses of the same text differ by a few tenths at most.
    assert pauses["duration_s"] == pytest.approx(normal["duration_s"] + 2.0, abs=0.4)


def test_cancellation_stops_a_chunk_between_sentences(voice: Any, tmp_path: Path) -> None:
    from stoker.errors import JobCancelled

    settings = load_settings(data_dir=tmp_path)
    cap = SpeakCapability()
    prepared = cap.prepare({"text": TEXT}, PrepareContext(settings, ModelCatalog(settings)))
    with pytest.raises(JobCancelled):
        ctx = ChunkContext(tmp_path / "x.wav", lambda: True)
        cap.run_chunk(voice, prepared.params, prepared.chunks[0].payload, ctx)
