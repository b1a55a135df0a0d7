"""Multi-speaker voices end to end: `speaker` by name and by id through real worker
processes, Redis and an S3-protocol server, with the two-speaker voice made from joe
(tests/piper_voices.py: speaker "joe" is joe, speaker "slow" is joe 1.5× slower) and
heard back by the packaged Whisper tiny.en."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stoker.client import Stoker
from stoker.config import load_settings
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord, JobState, OutputRef
from stoker.workers.catalog import ModelCatalog
from tests.books import a_story, write_markdown
from tests.deployment import Deployment
from tests.integration.test_model_paths_e2e import cli
from tests.integration.test_speak_e2e import wav_seconds
from tests.integration.test_transcribe_e2e import wer
from tests.piper_voices import VoiceFiles
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

VOICE = "duo"
TEXT = sentences(3)
SPEAKERS = "speakers: joe (0), slow (1)."
# Piper rounds each phoneme up to whole frames and the pauses between sentences are not
# scaled, so 1.5× the length scale is about 1.35× the audio (1.36× without pauses).
SLOWER = (1.2, 1.6)


@pytest.fixture()
def duo(deployment: Deployment, two_speaker_voice: VoiceFiles) -> Deployment:
    """The deployment, with the two-speaker voice configured as ``duo`` (workers too)."""
    deployment.env.update(two_speaker_voice.env(VOICE))
    return deployment


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from faster_whisper import WhisperModel

    catalog = ModelCatalog(load_settings(data_dir=tmp_path_factory.mktemp("data")))
    return WhisperModel(str(catalog.get("tiny.en").path), device="cpu", compute_type="int8")


def heard(whisper: Any, audio: bytes, path: Path) -> str:
    path.write_bytes(audio)
    segments, _ = whisper.transcribe(str(path), language="en", beam_size=1)
    return " ".join(s.text for s in segments)


def speak(client: Stoker, speaker: int | str) -> tuple[JobRecord, JobRecord, bytes]:
    job = client.submit("speak", {"text": TEXT, "voice": VOICE, "speaker": speaker})
    done = client.wait(job.id, timeout_s=90)
    assert done.state is JobState.SUCCEEDED, done.error
    return job, done, client.storage.get_bytes(done.outputs[0].key)


def test_each_speaker_speaks_and_is_content_addressed_apart(
    duo: Deployment, whisper: Any, tmp_path: Path
) -> None:
    # Given a speak worker with the two-speaker voice
    worker = duo.start_worker("speak")
    with Stoker(duo.settings()) as client:
        # When the same text is spoken by "slow", by id 1 and by id 0, in that order
        slow_job, slow, slow_wav = speak(client, "slow")
        one_job, one, _ = speak(client, 1)
        joe_job, joe, joe_wav = speak(client, 0)

    # Then the name resolved to its id, and the id-1 job reused every chunk of "slow"
    assert slow.params["speaker_id"] == one.params["speaker_id"] == 1
    assert joe.params["speaker_id"] == 0
    assert [c.key for c in one_job.chunks] == [c.key for c in slow_job.chunks]
    assert worker.text().count("output exists, not recomputed") == len(one_job.chunks)
    # And another speaker is another chunk: no key is shared with speaker 0
    assert not {c.key for c in joe_job.chunks} & {c.key for c in slow_job.chunks}
    # And the slow speaker is longer, and both are heard as the text
    assert SLOWER[0] < wav_seconds(slow_wav) / wav_seconds(joe_wav) < SLOWER[1]
    assert wer(TEXT, heard(whisper, slow_wav, tmp_path / "slow.wav")) < 0.15
    assert wer(TEXT, heard(whisper, joe_wav, tmp_path / "joe.wav")) < 0.15


def test_an_unknown_speaker_is_refused_at_submission_listing_the_speakers(
    duo: Deployment, tmp_path: Path
) -> None:
    book = write_markdown(tmp_path / "book.md", a_story(1, 2))
    with Stoker(duo.settings()) as client:
        # When a name the voice lacks, or an id past its last speaker, is asked for
        listed = re.escape(SPEAKERS)
        with pytest.raises(InvalidInput, match=rf"voice 'duo' has no speaker 'fast'; {listed}"):
            client.submit("speak", {"text": "Hi.", "voice": VOICE, "speaker": "fast"})
        with pytest.raises(InvalidInput, match=rf"speaker 2 is out of range.*0\.\.1\); {listed}"):
            client.submit("speak", {"text": "Hi.", "voice": VOICE, "speaker": 2})
        with pytest.raises(InvalidInput, match=listed):
            client.submit("audiobook", {"path": str(book), "voice": VOICE, "speaker": "fast"})
        # Then nothing was recorded or queued
        assert client.jobs() == []


def test_the_cli_submits_a_speaker_by_name(duo: Deployment, tmp_path: Path) -> None:
    # When `stoker submit speak --speaker slow` runs (no worker: submission only)
    args = ("submit", "speak", "--text", "Hello there.", "--voice", VOICE, "--speaker")
    ok = cli(duo, *args, "slow", cwd=tmp_path)
    refused = cli(duo, *args, "fast", cwd=tmp_path)

    # Then the job is queued for speaker 1; an unknown name fails with the speakers
    assert ok.returncode == 0, ok.stderr
    with Stoker(duo.settings()) as client:
        record = client.status(ok.stdout.strip())
    assert record.state is JobState.QUEUED
    assert record.model == VOICE and record.params["speaker_id"] == 1
    assert refused.returncode == 2
    assert f"no speaker 'fast'; {SPEAKERS}" in " ".join(refused.stderr.split())


def named(done: JobRecord, suffix: str) -> OutputRef:
    return next(o for o in done.outputs if o.name.endswith(suffix))


def book_seconds(client: Stoker, done: JobRecord) -> tuple[float, list[float]]:
    """The M4B's length and each chapter's, from the job's manifest."""
    manifest = json.loads(client.storage.get_bytes(named(done, "manifest.json").key))
    meta = {o["name"]: o["meta"] for o in manifest["outputs"]}
    chapters = [meta[o.name]["duration_s"] for o in done.outputs if o.name.endswith(".wav")]
    return meta[named(done, ".m4b").name]["duration_s"], chapters


def test_an_audiobook_by_the_slow_speaker_is_longer_and_verified(
    duo: Deployment, tmp_path: Path
) -> None:
    # Given a short book of two chapters, and an audiobook worker with the voice
    book = write_markdown(tmp_path / "book.md", a_story(2, 2), title="The Keeper")
    duo.start_worker("audiobook")
    request = {"path": str(book), "voice": VOICE, "formats": ["m4b", "wav"]}
    with Stoker(duo.settings()) as client:
        # When it is made by speaker "joe" and by speaker "slow"
        jobs = {s: client.submit("audiobook", {**request, "speaker": s}) for s in ("joe", "slow")}
        done = {s: client.wait(j.id, timeout_s=90) for s, j in jobs.items()}
        assert all(d.state is JobState.SUCCEEDED for d in done.values()), done
        joe_book, joe_chapters = book_seconds(client, done["joe"])
        slow_book, slow_chapters = book_seconds(client, done["slow"])
        report = json.loads(client.storage.get_bytes(named(done["slow"], "verification.json").key))

    # Then the slow book and each of its chapters are longer than joe's
    assert done["slow"].params["speaker_id"] == 1
    assert len(slow_chapters) == len(joe_chapters) == 2
    for slow_s, joe_s in zip(slow_chapters, joe_chapters, strict=True):
        assert SLOWER[0] < slow_s / joe_s < SLOWER[1]
    # And the M4B is longer by just that: the pause between chapters is not slowed
    assert slow_book - joe_book == pytest.approx(sum(slow_chapters) - sum(joe_chapters), abs=0.25)
    # And Whisper heard the slow speaker's first chapter as its text
    first = done["slow"].params["chapters"][0]
    assert report["checked"] == first["count"]
    assert report["mismatched"] == [], json.dumps(report["mismatched"])
