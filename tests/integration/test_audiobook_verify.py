"""Audiobook verification with the real Whisper tiny.en: a chunk that comes out wrong
is synthesized once more; one that stays wrong is reported, with what was heard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stoker.config import load_settings
from stoker.jobs.audiobook import AudiobookCapability
from stoker.jobs.base import ChunkContext
from stoker.workers.catalog import ModelCatalog
from tests.media_files import speech_wav

pytestmark = pytest.mark.timeout(120)

TEXT = "The lighthouse keeper climbed the stairs every evening. He carried a small lamp."
PARAMS = {
    "speaker_id": None,
    "length_scale": 1.0,
    "sentence_silence_s": 0.2,
    "sample_rate": 22050,
    "verify_model": "tiny.en",
    "verify_language": "en",
}


class Chunk:
    def __init__(self, data: bytes) -> None:
        self.audio_int16_bytes = data


class ScriptedVoice:
    """Stands in for a PiperVoice: plays its takes in order (noise, then speech...)."""

    def __init__(self, *takes: bytes) -> None:
        self.takes, self.calls = list(takes), 0

    def synthesize(self, text: str, syn_config: Any = None) -> list[Chunk]:
        take = self.takes[min(self.calls, len(self.takes) - 1)]
        self.calls += 1
        return [Chunk(take)]


@pytest.fixture(scope="module")
def takes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    import soundfile

    wav = speech_wav(tmp_path_factory.mktemp("speech") / "s.wav", TEXT)
    speech, _ = soundfile.read(str(wav), dtype="int16")
    noise = (np.random.default_rng(7).normal(0, 6000, 22050 * 3)).astype(np.int16)
    return {"speech": speech.tobytes(), "noise": noise.tobytes()}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from faster_whisper import WhisperModel

    catalog = ModelCatalog(load_settings(data_dir=tmp_path_factory.mktemp("data")))
    return WhisperModel(str(catalog.get("tiny.en").path), device="cpu", compute_type="int8")


def run(voice: ScriptedVoice, whisper: Any, out: Path) -> dict[str, Any]:
    from contextlib import nullcontext

    ctx = ChunkContext(
        out=out, should_stop=lambda: False, use_model=lambda name, backend: nullcontext(whisper)
    )
    AudiobookCapability().run_chunk(voice, PARAMS, {"text": TEXT, "verify": True}, ctx)
    return ctx.notes


def test_good_speech_is_checked_once(takes: dict[str, bytes], whisper: Any, tmp_path: Path) -> None:
    voice = ScriptedVoice(takes["speech"])
    notes = run(voice, whisper, tmp_path / "c.wav")
    assert notes["ok"] and not notes["resynthesized"] and voice.calls == 1


def test_garbage_is_synthesized_again_and_the_second_take_kept(
    takes: dict[str, bytes], whisper: Any, tmp_path: Path
) -> None:
    # Given a voice whose first take is noise and second is the sentence
    voice = ScriptedVoice(takes["noise"], takes["speech"])
    notes = run(voice, whisper, tmp_path / "c.wav")
    # Then the chunk was re-synthesized once, and the kept file is the good take
    assert voice.calls == 2
    assert notes["resynthesized"] and notes["ok"]
    assert notes["first_ratio"] < notes["ratio"]
    assert (tmp_path / "c.wav").stat().st_size > len(takes["speech"])


def test_a_chunk_wrong_twice_is_reported_with_what_was_heard(
    takes: dict[str, bytes], whisper: Any, tmp_path: Path
) -> None:
    voice = ScriptedVoice(takes["noise"])
    notes = run(voice, whisper, tmp_path / "c.wav")
    assert voice.calls == 2
    assert not notes["ok"] and notes["resynthesized"]
    assert notes["expected"] == TEXT and "heard" in notes


def test_a_worker_that_cannot_load_the_checking_model_says_so(
    takes: dict[str, bytes], tmp_path: Path
) -> None:
    from stoker.errors import ModelLoadError, UnknownModel

    def no_whisper(name: str, backend: str) -> Any:
        raise UnknownModel(name, ["base"])

    ctx = ChunkContext(out=tmp_path / "c.wav", should_stop=lambda: False, use_model=no_whisper)
    with pytest.raises(ModelLoadError) as caught:
        AudiobookCapability().run_chunk(
            ScriptedVoice(takes["speech"]), PARAMS, {"text": TEXT, "verify": True}, ctx
        )
    message = str(caught.value)
    assert message.startswith("the book's speech is to be checked with Whisper 'tiny.en', ")
    assert "this worker cannot load (unknown model 'tiny.en'" in message
    assert message.endswith("or submit the book with verify none.")
