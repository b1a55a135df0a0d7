"""A job that is not batched, against a real S3-protocol server: what its worker asks
of storage. The chunk a worker just made is assembled from its own file (no download),
the other chunks are downloaded when assembly reads them (an image's PNGs, published
by key, never are) and the artifacts stored side by side, and each is one request.

The real executor, job store (SQLite), Whisper tiny.en, Piper speech and a tiny
random diffusers pipeline; storage is
moto_server, seen through a wrapper that counts the calls (tests/watched_storage.py).
Also what readers ask: a batch's downloads and an OpenAI batch's results, side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.config import Settings, load_settings
from stoker.errors import StorageUnavailable
from stoker.queues.records import JobState, OutputRef, Progress, new_record
from stoker.storage.keys import job_key
from stoker.workers.execute import ChunkExecutor
from tests.diffusers_models import IGNORE_HEUN_WARNING, tiny_pipelines
from tests.media_files import speech_wav
from tests.texts import story
from tests.watched_storage import WatchedStorage, watched_executor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FORMATS = ["txt", "srt", "vtt", "json"]


@pytest.fixture()
def settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        storage_url=f"s3://{s3_bucket}/stoker",
        s3_endpoint_url=s3_endpoint,
        transcribe_chunk_s=5.0,  # the smallest allowed: a few seconds make chunks
    )


def transcribe(client: Stoker, wav: Path, formats: list[str] = FORMATS) -> str:
    job = client.submit("transcribe", {"path": str(wav), "model": "tiny.en", "formats": formats})
    return job.id


def run_every_chunk(client: Stoker, executor: ChunkExecutor, job_id: str) -> None:
    """The chunks in order, as one worker would take their messages."""
    record = client.status(job_id)
    for index in range(len(record.chunks)):
        executor.run_chunk(job_id, index, {"inputs": list(record.inputs), "index": index})


def test_a_one_chunk_job_reads_nothing_back_and_stores_its_files_side_by_side(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a recording of about three seconds, one chunk, in four formats
    wav = speech_wav(tmp_path / "short.wav", "The lighthouse keeper climbed the stairs.")
    with Stoker(settings) as client:
        job_id = transcribe(client, wav)
        record = client.status(job_id)
        assert len(record.chunks) == 1
        executor, watched = watched_executor(settings)

        # When a worker runs its chunk
        run_every_chunk(client, executor, job_id)
        done = client.status(job_id)

        # Then the job succeeded with a transcript in every format
        assert done.state is JobState.SUCCEEDED, done.error
        assert [o.name for o in done.outputs] == [f"short.{f}" for f in FORMATS] + ["manifest.json"]
        assert "lighthouse" in client.storage.get_bytes(done.outputs[0].key).decode().lower()
    # And its worker looked for the chunk and stored it (a cache for a resubmission),
    # then stored the four files and, last, the manifest: the chunk was not read back
    chunk = record.chunks[0].key
    mine = [(name, key) for name, key in watched.calls if key == chunk or job_id in key]
    assert mine[:2] == [("exists", chunk), ("put_file", chunk)]
    assert sorted(mine[2:-1]) == sorted(
        ("put_file", job_key(job_id, f"short.{f}")) for f in FORMATS
    )
    assert mine[-1] == ("put_bytes", job_key(job_id, "manifest.json"))
    # And the four files went out side by side, on the I/O threads
    assert any(name.startswith("stoker-io") for name in watched.threads)


def test_the_last_chunk_downloads_only_the_others_and_a_failed_write_fails_the_job(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a recording of about 15 seconds: three or more chunks of 5 s
    wav = speech_wav(tmp_path / "long.wav", story(40))
    with Stoker(settings) as client:
        job_id = transcribe(client, wav, ["txt"])
        record = client.status(job_id)
        assert len(record.chunks) >= 3
        executor, watched = watched_executor(settings)

        # When a worker runs every chunk in order
        run_every_chunk(client, executor, job_id)
        done = client.status(job_id)

        # Then the job succeeded, and at its assembly every chunk but the last (which
        # that worker had just made) was downloaded, each once
        assert done.state is JobState.SUCCEEDED, done.error
        downloads = [key for name, key in watched.calls if name == "download"]
        others = [c.key for c in record.chunks[:-1]]
        assert sorted(k for k in downloads if k in others) == sorted(others)
        assert record.chunks[-1].key not in downloads

        # And when storage refuses one of a job's files, the job's last chunk raises
        # that error (for the task layer to retry), and no manifest is written
        again = transcribe(client, wav, ["txt", "srt"])
        watched.fail_in = ".srt"
        with pytest.raises(StorageUnavailable, match="refused by the test"):
            run_every_chunk(client, executor, again)
        assert not client.storage.exists(job_key(again, "manifest.json"))
        assert client.status(again).state is JobState.RUNNING


@pytest.mark.filterwarnings(IGNORE_HEUN_WARNING)
def test_an_images_assembly_reads_no_png_back_and_has_the_server_copy_them(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, s3_bucket: str
) -> None:
    # Given a tiny text-to-image model, and storage on the S3-protocol server
    tiny = tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")
    settings = load_settings(
        data_dir=tmp_path / "data",
        storage_url=f"s3://{s3_bucket}/stoker",
        s3_endpoint_url=s3_endpoint,
        models=tiny.models(),
    )
    request = {"model": "tiny_sd", "prompt": "a lighthouse at dusk", "steps": 2, "seed": 7}
    with Stoker(settings) as client:
        executor, watched = watched_executor(settings)

        # When a worker makes the three PNGs of a job, one chunk each
        png = client.submit("image", {**request, "count": 3})
        chunks = [c.key for c in client.status(png.id).chunks]
        for index in range(3):
            executor.run_chunk(png.id, index, {"seed": 7 + index})
        done = client.status(png.id)

        # Then each output is its chunk, copied by the server: no chunk was downloaded,
        # though two of them were made before the last and are not on hand at assembly
        assert done.state is JobState.SUCCEEDED, done.error
        names = [o.name for o in done.outputs]
        assert names == ["image-00.png", "image-01.png", "image-02.png", "manifest.json"]
        assert not set(watched.keys("download")) & set(chunks)
        assert sorted(watched.keys("copy")) == sorted(chunks)
        for output, chunk in zip(done.outputs, chunks, strict=False):
            assert client.storage.get_bytes(output.key) == client.storage.get_bytes(chunk)

        # And a WebP job, whose chunks are converted, downloads the one it had not made
        webp = client.submit("image", {**request, "seed": 20, "count": 2, "format": "webp"})
        chunks = [c.key for c in client.status(webp.id).chunks]
        for index in range(2):
            executor.run_chunk(webp.id, index, {"seed": 20 + index})
        assert client.status(webp.id).state is JobState.SUCCEEDED
        assert [k for k in watched.keys("download") if k in chunks] == [chunks[0]]


def _stored(client: Stoker, job_id: str, name: str, data: bytes) -> OutputRef:
    """``data`` stored as the output ``name`` of ``job_id``."""
    key = job_key(job_id, name)
    info = client.storage.put_bytes(key, data, "text/plain")
    return OutputRef(name=name, key=key, size_bytes=info.size_bytes, content_type="text/plain")


def test_a_batch_downloads_its_files_side_by_side_from_s3(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a finished batch of three files in S3, two of them in one folder
    with Stoker(settings) as client:
        batch = new_record(kind="batch", params={"kind": "transcribe"}, progress=Progress(total=3))
        client.store.create(batch)
        for i, name in enumerate(["a/x.wav", "a/y.wav", "b/x.wav"]):
            kid = new_record(kind="transcribe", params={"name": name}, parent=batch.id,
                             parent_index=i)  # fmt: skip
            client.store.create(kid)
            stem = Path(name).stem
            outputs = [_stored(client, kid.id, f"{stem}.{ext}", f"{name} {ext}".encode())
                       for ext in ("txt", "srt")]  # fmt: skip
            client.store.succeed(kid.id, outputs)
        client.store.succeed(batch.id, [_stored(client, batch.id, "manifest.json", b"{}")])
        watched = WatchedStorage(client.storage)
        client.storage = watched  # type: ignore[misc]
        # When its outputs are downloaded
        written = client.download(batch.id, tmp_path / "out")

    # Then each file's transcripts sit beside its relative path, the manifest at the top
    out = tmp_path / "out"
    assert (out / "a" / "y.srt").read_text() == "a/y.wav srt"
    assert (out / "b" / "x.txt").read_text() == "b/x.wav txt"
    assert (out / "manifest.json").read_bytes() == b"{}"
    assert len(written) == 7 and written[0] == out / "manifest.json"
    # And the seven downloads ran on the I/O threads, each once
    assert len(watched.keys("download")) == 7
    assert any(name.startswith("stoker-io") for name in watched.threads)


def test_an_openai_batch_reads_its_lines_results_side_by_side_from_s3(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from stoker.api import batch_lines
    from stoker.api.app import create_app
    from stoker.queues.batches import child_ended, children
    from tests.api_server import auth, make_key

    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": "hi"}}
        for i in range(3)
    ]
    headers = auth(make_key(settings, "ann"))
    app = create_app(settings, deliver_webhooks=False)
    with TestClient(app) as http:
        # Given an OpenAI embeddings batch of three lines whose jobs ended, results in S3
        upload = http.post(
            "/v1/files",
            files={"file": ("b.jsonl", "\n".join(json.dumps(x) for x in lines).encode())},
            data={"purpose": "batch"},
            headers=headers,
        ).json()
        body = {"input_file_id": upload["id"], "endpoint": "/v1/embeddings"}
        batch = http.post("/v1/batches", json=body | {"completion_window": "24h"}, headers=headers)
        stoker = app.state.api.stoker
        for kid in children(stoker.store, batch.json()["id"]):
            row = {"id": "0", "embedding": [kid.parent_index, 0.5], "tokens": 1}
            out = _stored(stoker, kid.id, "embeddings.jsonl", json.dumps(row).encode() + b"\n")
            stoker.store.succeed(kid.id, [out])
            child_ended(stoker.store, stoker.storage, kid.parent or "", kid.parent_index or 0)
        watched = WatchedStorage(stoker.storage)
        stoker.storage = watched
        monkeypatch.setattr(batch_lines, "RESULT_STEP", 2)  # written out two lines at a time

        # When it is read for the first time since, which writes its output file
        done = http.get(f"/v1/batches/{batch.json()['id']}", headers=headers).json()
        output = http.get(f"/v1/files/{done['output_file_id']}/content", headers=headers)

    # Then every line's result is in it, in line order
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 3
    got = [json.loads(line) for line in output.text.splitlines()]
    assert [g["custom_id"] for g in got] == ["e0", "e1", "e2"]
    assert [g["response"]["body"]["data"][0]["embedding"] for g in got] == [
        [0, 0.5],
        [1, 0.5],
        [2, 0.5],
    ]
    # And the three results were read on the I/O threads, each once
    assert len([k for k in watched.keys("get_bytes") if k.endswith("embeddings.jsonl")]) == 3
    assert any(name.startswith("stoker-io") for name in watched.threads)
