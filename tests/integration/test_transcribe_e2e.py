"""transcribe end to end: a folder of mixed recordings (long, short, silent, broken)
through real worker processes, Redis, an S3-protocol server and real Whisper models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.queues.records import JobState
from tests.deployment import Deployment
from tests.integration.test_speak_e2e import wait_until
from tests.media_files import encode, silence_wav, speech_wav
from tests.texts import sentences, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LONG_TEXT = story(300)


def words(text: str) -> list[str]:
    """Words to score, numbers spelled out and spelling variants folded: Whisper writes
    "day 2" or "day two", "harbour" or "harbor" from run to run, and neither is an
    error in hearing."""
    from stoker.jobs.verify import sound_key
    from stoker.jobs.verify import words as spoken_words

    return [sound_key(w) for w in spoken_words(text)]


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(" ".join(words(reference)), " ".join(words(hypothesis))))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as an archivist has it: good files in several formats, some broken."""
    root = tmp_path_factory.mktemp("archive")
    work = tmp_path_factory.mktemp("sources")
    (root / "good").mkdir()
    (root / "talks").mkdir()
    speech_wav(root / "good" / "a.wav", sentences(3))
    encode(speech_wav(work / "b.wav", sentences(4)), root / "good" / "b.mp3", "mp3")
    encode(speech_wav(work / "long.wav", LONG_TEXT), root / "talks" / "long.m4a", "aac")
    encode(speech_wav(work / "v.wav", sentences(2)), root / "talks" / "video.mp4", "aac")
    silence_wav(root / "quiet.wav", 5.0)
    (root / "broken.mp3").write_bytes(os.urandom(20_000))
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.mp3").write_text("meeting notes, not a recording\n" * 50)
    return root


def requests_for(root: Path, model: str = "base") -> list[dict[str, object]]:
    from stoker.jobs.media import find_media

    return [
        {"path": str(p), "name": p.relative_to(root).as_posix(), "model": model}
        for p in find_media(root)
    ]


def test_a_folder_becomes_a_batch_that_finishes_with_every_format(
    deployment: Deployment, archive: Path
) -> None:
    deployment.env["STOKER_TRANSCRIBE_CHUNK_S"] = "20"
    deployment.start_worker("transcribe")
    with Stoker(deployment.settings()) as client:
        # When the whole folder is submitted
        batch = client.submit_batch("transcribe", requests_for(archive), source=str(archive))
        done = client.wait(batch.id, timeout_s=240)
        kids = {k.params["name"]: k for k in client.children(batch.id)}
        manifest = json.loads(client.storage.get_bytes(f"jobs/{batch.id}/manifest.json"))
        errors = client.storage.get_bytes(f"jobs/{batch.id}/errors.jsonl").decode().splitlines()
        long_json = json.loads(client.storage.get_bytes(kids["talks/long.m4a"].outputs[3].key))
        long_txt = client.storage.get_bytes(kids["talks/long.m4a"].outputs[0].key).decode()

    # Then the batch finished, counting the broken files as failed with reasons
    assert done.state is JobState.SUCCEEDED
    assert manifest["request_counts"] == {"total": 8, "completed": 5, "failed": 3}
    failed = {json.loads(line)["name"]: json.loads(line)["error"]["message"] for line in errors}
    assert set(failed) == {"broken.mp3", "empty.wav", "notes.mp3"}
    assert "empty (0 bytes)" in failed["empty.wav"]
    assert "not an audio or video file" in failed["notes.mp3"]
    # Every good file has all four formats; silence is an empty transcript, not an error
    for name in ("good/a.wav", "good/b.mp3", "talks/long.m4a", "talks/video.mp4", "quiet.wav"):
        assert kids[name].state is JobState.SUCCEEDED, kids[name].error
        assert [o.name.rsplit(".", 1)[1] for o in kids[name].outputs] == [
            "txt",
            "srt",
            "vtt",
            "json",
            "json",
        ]
    assert kids["quiet.wav"].progress.total == 1
    # The long file was several chunks, joined without losing or doubling speech
    assert kids["talks/long.m4a"].progress.total >= 4
    assert wer(LONG_TEXT, long_txt) < 0.10
    starts = [s["start"] for s in long_json["segments"]]
    assert (
        starts == sorted(starts)
        and long_json["segments"][-1]["end"] <= long_json["duration_s"] + 0.5
    )
    assert long_json["language"] == "en"


def test_resubmitting_the_folder_reuses_every_finished_chunk(
    deployment: Deployment, archive: Path, tmp_path: Path
) -> None:
    deployment.env["STOKER_TRANSCRIBE_CHUNK_S"] = "20"
    worker = deployment.start_worker("transcribe")
    good = tmp_path / "good"
    good.mkdir()
    for name in ("a.wav", "b.mp3"):
        (good / name).write_bytes((archive / "good" / name).read_bytes())
    with Stoker(deployment.settings()) as client:
        first = client.wait(
            client.submit_batch("transcribe", requests_for(good), source=str(good)).id,
            timeout_s=120,
        )
        second = client.wait(
            client.submit_batch("transcribe", requests_for(good), source=str(good)).id,
            timeout_s=120,
        )
    assert first.state is second.state is JobState.SUCCEEDED
    assert worker.text().count("output exists, not recomputed") == 2  # one chunk per file


def test_a_worker_killed_mid_file_loses_nothing(deployment: Deployment, archive: Path) -> None:
    deployment.env["STOKER_TRANSCRIBE_CHUNK_S"] = "10"
    a = deployment.start_worker("transcribe")
    long_file = archive / "talks" / "long.m4a"
    with Stoker(deployment.settings()) as client:
        job = client.submit("transcribe", {"path": str(long_file), "model": "tiny.en"})
        wait_until(lambda: client.status(job.id).progress.done >= 2, 120, "two chunks done")
        a.kill()
        deployment.start_worker("transcribe")
        done = client.wait(job.id, timeout_s=180)
        text = client.storage.get_bytes(done.outputs[0].key).decode()
        pieces = [json.loads(client.storage.get_bytes(c.key)) for c in job.chunks]
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.progress.done == done.progress.total == len(job.chunks) >= 8
    # Chunks finished before the kill were not redone: at most the one in flight was.
    computed = sum(w.text().count(f"job {job.id} chunk ") for w in deployment.workers)
    assert len(job.chunks) <= computed <= len(job.chunks) + 1
    # Every chunk's speech is in the transcript once, in order, and nothing else is
    said = " ".join(s["text"] for p in pieces for s in p["transcript"]["segments"])
    assert words(text) == words(said)
    # and it is the recording's speech. (Not a tighter bound: the Piper speech differs
    # from run to run, and tiny.en in faster-whisper's batched pipeline sometimes stops
    # a chunk's decoding one sentence early, up to 0.16 here; a lost or doubled chunk
    # of the ~9 adds ~0.11 on top, which the check above catches exactly.)
    assert wer(LONG_TEXT, text) < 0.25


def test_an_s3_prefix_is_a_batch_too(
    deployment: Deployment, archive: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    import subprocess
    import sys

    import boto3

    # Given recordings (and a non-recording) under a prefix of a bucket
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in ("good/a.wav", "good/b.mp3"):
        s3.upload_file(str(archive / name), s3_bucket, f"interviews/{name}")
    s3.put_object(Bucket=s3_bucket, Key="interviews/README.txt", Body=b"not audio")
    deployment.start_worker("transcribe")
    # When the prefix is submitted with the CLI
    env = {**os.environ, **deployment.env}
    submitted = subprocess.run(
        [
            sys.executable,
            "-m",
            "stoker.cli",
            "submit",
            "transcribe",
            f"s3://{s3_bucket}/interviews/",
            "--model",
            "tiny.en",
            "--formats",
            "txt",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    with Stoker(deployment.settings()) as client:
        done = client.wait(submitted.stdout.strip(), timeout_s=120)
        kids = client.children(done.id)
        texts = [client.storage.get_bytes(k.outputs[0].key).decode() for k in kids]
    # Then both recordings were transcribed, named by their path under the prefix
    assert done.state is JobState.SUCCEEDED
    assert [k.params["name"] for k in kids] == ["good/a.wav", "good/b.mp3"]
    assert all("lighthouse" in t.lower() for t in texts)
    # And `stoker status` shows the counts and every file
    status = subprocess.run(
        [sys.executable, "-m", "stoker.cli", "status", done.id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "2 files: 2 succeeded" in status.stdout
    assert "good/a.wav" in status.stdout and "good/b.mp3" in status.stdout
