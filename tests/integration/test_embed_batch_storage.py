"""A worker's batch of embed chunks against a real S3-protocol server: the storage
round trips of a batch (outputs, manifests, stored chunks) run side by side, one
failed write fails its own job only, and a one-sentence job costs two requests.

The real executor, job store (SQLite) and all-MiniLM-L6-v2; storage is moto_server,
seen through a wrapper that counts the calls and can fail the writes of one job.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.config import Settings, load_settings
from stoker.errors import StorageUnavailable
from stoker.jobs.embed import pack, read_vectors
from stoker.queues.records import JobState
from stoker.storage.keys import job_key
from tests.texts import story
from tests.watched_storage import watched_executor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture()
def settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        storage_url=f"s3://{s3_bucket}/stoker",
        s3_endpoint_url=s3_endpoint,
    )


def test_a_batch_stores_side_by_side_and_a_failed_write_fails_only_its_job(
    settings: Settings,
) -> None:
    # Given 12 one-sentence jobs and one job of 600 texts (three chunks), submitted
    texts = story(20 * 612).split(". ")
    singles, corpus = texts[:12], texts[12:612]
    with Stoker(settings) as client:
        jobs = [client.submit("embed", {"text": t}) for t in singles]
        big = client.submit("embed", {"texts": corpus})
        items = [(j.id, 0, {"texts": [t]}) for j, t in zip(jobs, singles, strict=True)]
        items += [(big.id, i, {"texts": corpus[a:b]}) for i, (a, b) in enumerate(pack(corpus))]
        assert len(corpus) == 600 and len(items) == 12 + 3
        # And a worker's executor whose storage refuses every write of the fifth job
        executor, watched = watched_executor(settings, fail_in=jobs[4].id)

        # When the worker runs all the chunks as one batch
        outcomes = executor.run_chunks(items)
        records = {j.id: client.status(j.id) for j in [*jobs, big]}

        # Then only the fifth job's chunk ended in an error, the one storage gave
        assert isinstance(outcomes[4], StorageUnavailable)
        assert [o for i, o in enumerate(outcomes) if i != 4] == [None] * 14
        # And every other job succeeded, with one vector per text in storage
        for job in jobs[:4] + jobs[5:]:
            done = records[job.id]
            assert done.state is JobState.SUCCEEDED
            ids, vectors = read_vectors(client.storage.get_bytes(done.outputs[0].key), "jsonl")
            assert ids == ["0"] and len(vectors[0]) == 384
        assert records[big.id].state is JobState.SUCCEEDED
        big_out = client.storage.get_bytes(records[big.id].outputs[0].key)
        assert len(read_vectors(big_out, "jsonl")[0]) == 600
        # And the failed job is still there to be retried (the task layer decides)
        assert records[jobs[4].id].state is JobState.RUNNING
        # And the big job's chunks were stored (it has more than one), beside it
        assert all(client.storage.exists(c.key) for c in records[big.id].chunks)

    # And the writes ran on the batch's I/O threads, not one after another
    assert any(name.startswith("stoker-io") for name in watched.threads)
    # And a one-sentence job cost two storage requests, its output and its manifest:
    # only the big job's chunks were looked for and stored, and none was downloaded
    for job in jobs[:4] + jobs[5:]:
        mine = [call for call in watched.calls if job.id in call[1]]
        names = [job_key(job.id, "embeddings.jsonl"), job_key(job.id, "manifest.json")]
        assert sorted(mine) == sorted(("put_bytes", key) for key in names)
    chunk_keys = {c.key for c in records[big.id].chunks}
    assert {key for name, key in watched.calls if name == "exists"} == chunk_keys
    assert {key for name, key in watched.calls if name == "put_file"} >= chunk_keys
    assert not [call for call in watched.calls if call[0] == "download"]


def test_on_local_storage_a_batch_writes_on_its_own_thread(tmp_path: Path) -> None:
    # Given three one-sentence jobs on the embedded default (SQLite, a local folder)
    settings = load_settings(data_dir=tmp_path / "data")
    texts = story(60).split(". ")[:3]
    with Stoker(settings) as client:
        jobs = [client.submit("embed", {"text": t}) for t in texts]
        executor, watched = watched_executor(settings)

        # When the worker runs them as one batch
        items = [(j.id, 0, {"texts": [t]}) for j, t in zip(jobs, texts, strict=True)]
        outcomes = executor.run_chunks(items)

        # Then they all succeeded, and their files were written by the calling thread:
        # local writes are CPU work that threads would only make compete with the model
        assert outcomes == [None] * 3
        assert all(client.status(j.id).state is JobState.SUCCEEDED for j in jobs)
    assert watched.threads == {threading.current_thread().name}
    assert len(watched.calls) == 2 * 3
