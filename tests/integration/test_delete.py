"""Deleting jobs and pruning old ones, against a real Redis and a real S3-protocol server.

The records are made directly in the job store (with the ages a test needs) and their
files put in S3 as a job's would be; a real job run end to end and then deleted is in
tests/integration/test_cli.py (embedded default) and test_api_e2e.py (HTTP, Redis, S3).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from stoker.client import Stoker
from stoker.config import load_settings
from stoker.errors import InvalidInput, JobNotFound
from stoker.queues.batches import children
from stoker.queues.records import JobError, JobFilter, JobRecord, JobState, OutputRef, new_record
from stoker.storage.keys import chunk_key, content_input_key, job_key
from tests.deployment import Deployment
from tests.gguf_models import write_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DAY_S = 86400.0


@pytest.fixture()
def client(deployment: Deployment) -> Iterator[Stoker]:
    with Stoker(deployment.settings()) as stoker:
        yield stoker


def ended(
    client: Stoker, *, age_s: float = 0, state: JobState = JobState.SUCCEEDED, **fields: object
) -> JobRecord:
    """A job that ended in ``state``, created ``age_s`` ago, with an output and an
    uploaded input in storage (as a real job leaves them)."""
    record = new_record(kind=fields.pop("kind", "echo"), created_at=time.time() - age_s, **fields)
    client.store.create(record)
    out = client.storage.put_bytes(job_key(record.id, "echo.txt"), b"hi")
    client.storage.put_bytes(job_key(record.id, "inputs/in.txt"), b"in")
    ref = OutputRef(
        name="echo.txt", key=out.key, size_bytes=out.size_bytes, content_type="text/plain"
    )
    if state is JobState.SUCCEEDED:
        client.store.succeed(record.id, [ref])
    elif state is JobState.FAILED:
        client.store.fail(record.id, JobError(kind="invalid_input", message="bad"))
    elif state is JobState.CANCELLED:
        client.store.cancel(record.id)
    return record


def stored(client: Stoker, job_id: str) -> list[str]:
    return [o.key for o in client.storage.list(f"jobs/{job_id}/")]


def test_delete_removes_the_record_and_every_file_of_the_job(client: Stoker) -> None:
    # Given an ended job with files, beside another job and a shared chunk object
    record, other = ended(client), ended(client)
    shared = client.storage.put_bytes(chunk_key("echo", "ab" * 32, "txt"), b"chunk")
    assert len(stored(client, record.id)) == 2

    # When it is deleted
    assert client.delete(record.id) == [record.id]

    # Then its record and files are gone, and nothing else is
    with pytest.raises(JobNotFound):
        client.status(record.id)
    assert stored(client, record.id) == []
    assert len(stored(client, other.id)) == 2
    assert client.status(other.id).state is JobState.SUCCEEDED
    assert client.storage.exists(shared.key)


def test_a_running_job_is_refused_with_what_to_do_and_kept(client: Stoker) -> None:
    record = new_record(kind="echo")
    client.store.create(record)
    client.store.mark_running(record.id)

    with pytest.raises(InvalidInput, match=rf"job {record.id} is running; .*stoker cancel"):
        client.delete(record.id)
    assert client.status(record.id).state is JobState.RUNNING

    client.cancel(record.id)
    assert client.delete(record.id) == [record.id]


def test_a_batch_goes_with_its_jobs_and_a_child_alone_is_refused(client: Stoker) -> None:
    batch = ended(client, kind="batch", state=JobState.FAILED)
    kids = [ended(client, parent=batch.id, parent_index=i) for i in range(3)]

    with pytest.raises(InvalidInput, match=rf"one file of batch {batch.id}; delete the batch"):
        client.delete(kids[0].id)

    assert client.delete(batch.id) == [*(k.id for k in kids), batch.id]
    for gone in (batch, *kids):
        with pytest.raises(JobNotFound):
            client.status(gone.id)
        assert stored(client, gone.id) == []


def test_a_batch_with_a_job_still_running_is_refused_whole(client: Stoker) -> None:
    batch = ended(client, kind="batch", state=JobState.CANCELLED)
    done = ended(client, parent=batch.id, parent_index=0)
    running = new_record(kind="echo", parent=batch.id, parent_index=1)
    client.store.create(running)
    client.store.mark_running(running.id)

    with pytest.raises(InvalidInput, match=r"has 1 of 2 jobs still queued or running"):
        client.delete(batch.id)
    assert [r.id for r in client.children(batch.id)] == [done.id, running.id]
    assert len(stored(client, done.id)) == 2


def test_prune_deletes_old_ended_jobs_only(client: Stoker) -> None:
    # Given old jobs in every ended state, an old batch of two, an old job still queued,
    # and a job of today
    old = [ended(client, age_s=10 * DAY_S, state=s) for s in JobState if s.terminal]
    batch = ended(client, age_s=9 * DAY_S, kind="batch")
    kids = [ended(client, age_s=9 * DAY_S, parent=batch.id, parent_index=i) for i in range(2)]
    queued = new_record(kind="echo", created_at=time.time() - 10 * DAY_S)
    client.store.create(queued)
    today = ended(client)

    # When a dry run, then a prune, takes what is older than a week
    dry = client.prune(7 * DAY_S, dry_run=True)
    assert {r.id for r in dry.jobs} == {r.id for r in (*old, batch)}
    assert dry.deleted == 0 and client.status(batch.id)  # nothing deleted yet
    pruned = client.prune(7 * DAY_S)

    # Then the old ended jobs went, each batch with its jobs; the rest stayed
    assert {r.id for r in pruned.jobs} == {r.id for r in (*old, batch)}
    assert pruned.deleted == len(old) + 1 + len(kids) and pruned.skipped == []
    left = client.jobs(JobFilter(limit=100))
    assert {r.id for r in left} == {queued.id, today.id}
    assert all(stored(client, r.id) == [] for r in (*old, batch, *kids))
    assert client.store.counts() == {("echo", "queued"): 1, ("echo", "succeeded"): 1}


def test_prune_skips_a_batch_it_cannot_delete_and_deletes_the_rest(client: Stoker) -> None:
    batch = ended(client, age_s=DAY_S, kind="batch", state=JobState.CANCELLED)
    running = new_record(kind="echo", parent=batch.id, parent_index=0, created_at=batch.created_at)
    client.store.create(running)
    client.store.mark_running(running.id)
    old = ended(client, age_s=DAY_S, state=JobState.FAILED)

    pruned = client.prune(3600)

    assert [r.id for r in pruned.jobs] == [old.id]
    ((kept, why),) = pruned.skipped
    assert kept.id == batch.id and "still queued or running" in why


def test_prune_refuses_active_states_and_negative_ages(client: Stoker) -> None:
    with pytest.raises(InvalidInput, match="ended jobs only, not running ones"):
        client.prune(0, states=[JobState.RUNNING])
    with pytest.raises(InvalidInput, match="give 0 or more seconds"):
        client.prune(-1)


# --- the chunk cache ----------------------------------------------------------------------


def test_the_chunk_sweep_deletes_old_chunks_and_keeps_what_a_job_lists(client: Stoker) -> None:
    # Given cached chunk objects, one of them a cancelled job's partial output, and a
    # job's own files
    loose = [client.storage.put_bytes(chunk_key("speak", f"{i:02x}" * 32, "wav"), b"x" * 10)
             for i in range(3)]  # fmt: skip
    partial = client.storage.put_bytes(chunk_key("speak", "ff" * 32, "wav"), b"p")
    cancelled = new_record(kind="speak")
    client.store.create(cancelled)
    ref = OutputRef(
        name="chunk-00000.wav", key=partial.key, size_bytes=1, content_type="audio/wav",
        partial=True,
    )  # fmt: skip
    client.store.cancel(cancelled.id)
    client.store.add_outputs(cancelled.id, [ref])
    own = ended(client)

    # When a dry run, then a sweep, takes every chunk written before now
    dry = client.sweep_chunks(0, dry_run=True)
    assert (dry.objects, dry.bytes, dry.kept, dry.stopped) == (3, 30, 1, None)
    assert all(client.storage.exists(o.key) for o in loose)
    swept = client.sweep_chunks(0)

    # Then the loose chunks are gone; the listed one and the job's files stay
    assert (swept.objects, swept.kept, swept.stopped) == (3, 1, None)
    assert [o.key for o in client.storage.list("chunks/")] == [partial.key]
    assert len(stored(client, own.id)) == 2


@pytest.mark.parametrize("prefix", ["chunks/", "inputs/"])
def test_a_sweep_waits_for_idle_queues(client: Stoker, prefix: str) -> None:
    key = chunk_key("speak", "ab" * 32, "wav") if prefix == "chunks/" else upload("ab")
    old = client.storage.put_bytes(key, b"x")
    client.store.create(new_record(kind="speak"))  # queued: it may reuse the object

    sweep = client.sweep_chunks if prefix == "chunks/" else client.sweep_inputs
    swept = sweep(0)

    assert swept.objects == 0 and client.storage.exists(old.key)
    assert swept.stopped is not None and "1 job is queued or running" in swept.stopped
    assert f"reuse objects under {prefix}" in swept.stopped


def test_the_chunk_sweep_goes_by_when_a_local_chunk_was_written(tmp_path: Path) -> None:
    # Given the embedded default (SQLite records, local files) with an old and a new chunk
    with Stoker(load_settings(data_dir=tmp_path)) as local:
        old = local.storage.put_bytes(chunk_key("image", "0a" * 32, "png"), b"old")
        new = local.storage.put_bytes(chunk_key("image", "0b" * 32, "png"), b"new")
        week_ago = time.time() - 7 * DAY_S
        path = tmp_path / "outputs" / old.key
        os.utime(path, (week_ago, week_ago))

        swept = local.sweep_chunks(DAY_S)

        assert swept.objects == 1 and not path.exists()
        assert local.storage.exists(new.key)


# --- uploaded inputs ----------------------------------------------------------------------


def upload(digest_start: str) -> str:
    return content_input_key(digest_start * 32, "wav")


def test_the_input_sweep_frees_what_only_deleted_jobs_used(client: Stoker) -> None:
    # Given uploaded inputs: an old job's, an old batch's file's, a recent job's, one
    # both the old and the recent job list, and one no job lists
    names = {"old": "0a", "kid": "0e", "new": "0b", "both": "0c", "loose": "0d"}
    keys = {name: upload(d) for name, d in names.items()}
    for key in keys.values():
        client.storage.put_bytes(key, b"x" * 10)
    old = ended(client, age_s=2 * DAY_S, inputs=[keys["old"], keys["both"]])
    batch = ended(client, age_s=2 * DAY_S, kind="batch")
    ended(client, age_s=2 * DAY_S, parent=batch.id, parent_index=0, inputs=[keys["kid"]])
    new = ended(client, inputs=[keys["new"], keys["both"]])

    # When a dry run of prune looks ahead: the jobs it lists count as gone
    would = client.prune(DAY_S, dry_run=True)
    assert sorted(r.id for r in would.jobs) == sorted([old.id, batch.id])
    ahead = client.sweep_inputs(0, dry_run=True, without={r.id for r in would.jobs})
    assert (ahead.objects, ahead.bytes, ahead.kept, ahead.stopped) == (3, 30, 2, None)
    assert client.sweep_inputs(0, dry_run=True).objects == 1  # today: the loose one
    assert all(client.storage.exists(k) for k in keys.values())

    # And the old jobs are pruned, then inputs written before now are swept
    assert client.prune(DAY_S).deleted == 3
    swept = client.sweep_inputs(0)

    # Then what only the deleted jobs used, and the loose input, are gone
    assert (swept.objects, swept.kept, swept.stopped) == (3, 2, None)
    assert sorted(o.key for o in client.storage.list("inputs/")) == sorted(new.inputs)
    assert len(stored(client, new.id)) == 2  # the job's own files are not under inputs/
    # And an hour's age keeps inputs written since
    client.storage.put_bytes(keys["loose"], b"y")
    assert client.sweep_inputs(3600).objects == 0 and client.storage.exists(keys["loose"])


def tiny_prompt(deployment: Deployment, tmp_path: Path) -> dict[str, object]:
    """A generate request on a tiny GGUF ("tiny") that the deployment now serves."""
    deployment.env["STOKER_MODELS__TINY__BACKEND"] = "llama"
    deployment.env["STOKER_MODELS__TINY__PATH"] = str(write_tiny_llama(tmp_path / "tiny.gguf"))
    return {"prompt": "Hello", "model": "tiny", "max_tokens": 4}


def test_a_submission_puts_back_an_input_swept_while_it_was_submitted(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a generate job whose prompt file is stored once, by content
    request = tiny_prompt(deployment, tmp_path)
    with Stoker(deployment.settings()) as client:
        first = client.submit("generate", request)
        (key,) = first.inputs
        data = client.storage.get_bytes(key)

        # When the same prompt is submitted again and a sweep deletes the stored file
        # after the submission found it, before its record existed
        create_many = client.store.create_many

        def swept_then_create(records: Sequence[JobRecord], payloads: Any = None) -> None:
            client.storage.delete(key)
            create_many(records, payloads)

        monkeypatch.setattr(client.store, "create_many", swept_then_create)
        second = client.submit("generate", request)

        # Then the submission has put it back, with the same bytes
        assert second.inputs == [key]
        assert client.storage.get_bytes(key) == data


def test_a_batch_child_puts_back_an_input_swept_once_it_was_found(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a generate job whose prompt file is stored once, by content
    request = tiny_prompt(deployment, tmp_path)
    with Stoker(deployment.settings()) as client:
        (key,) = client.submit("generate", request).inputs
        data = client.storage.get_bytes(key)

        # When a batch submits the same prompt, and a sweep deletes the stored file
        # just after the child found it there (children are recorded in groups, later)
        exists = client.storage.exists

        def found_then_swept(name: str) -> bool:
            there = exists(name)
            if name == key and there:
                monkeypatch.setattr(client.storage, "exists", exists)
                client.storage.delete(key)
            return there

        there_when_recorded = []
        create_many = client.store.create_many

        def recorded(records: Sequence[JobRecord], payloads: Any = None) -> None:
            there_when_recorded.append(exists(key))
            create_many(records, payloads)

        monkeypatch.setattr(client.storage, "exists", found_then_swept)
        monkeypatch.setattr(client.store, "create_many", recorded)
        batch = client.submit_batch("generate", [request], source="prompts")

        # Then the child put it back before its group was recorded (while a file
        # fetched for that child alone, an upload or an s3:// object, is still there)
        assert there_when_recorded == [True]
        (kid,) = children(client.store, batch.id)
        assert kid.inputs == [key]
        assert client.storage.get_bytes(key) == data
