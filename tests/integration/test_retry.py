"""Retrying jobs, as a user does once the cause of a failure is fixed: real `stoker
worker` processes with the Piper voice, on Redis and S3.

A retried job keeps its id, runs only the chunks it had not finished (their payloads
were kept with its record), and assembles as a job that never stopped; a batch
retries its failed and cancelled files and assembles its manifest again.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput, JobNotFound
from stoker.queues.batches import BATCH_KIND, children
from stoker.queues.records import JobState
from tests.books import a_story, write_epub
from tests.deployment import Deployment
from tests.integration.test_audiobook_e2e import m4b_chapters
from tests.integration.test_speak_e2e import wait_until
from tests.texts import sentences, story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VOICE = "en_US-joe-medium"


def chunks_done(log: str, job_id: str) -> list[int]:
    """The chunk numbers the worker log says it finished for ``job_id``, in order."""
    return [int(n) for n in re.findall(rf"job {job_id} chunk (\d+)/\d+ done", log)]


def test_a_cancelled_job_resumes_under_its_id_without_redoing_its_chunks(
    deployment: Deployment,
) -> None:
    # Given a speak job of many short chunks, cancelled once two of them finished
    deployment.env["STOKER_SPEAK_CHUNK_CHARS"] = "200"
    worker = deployment.start_worker("speak", "--preload", VOICE)
    with Stoker(deployment.settings()) as client:
        job = client.submit("speak", {"text": story(300)})
        total = job.progress.total
        assert total >= 6
        deadline = time.monotonic() + 90
        while client.status(job.id).progress.done < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.cancel(job.id)
        worker.wait_for_log(f"job {job.id} is cancelled", timeout_s=60)
        done_before = client.done_chunks(job.id)
        assert 2 <= len(done_before) < total

        # When it is retried
        retried = client.retry(job.id)

        # Then it is queued again under its id with only its unfinished chunks
        assert retried.jobs == [job.id]
        assert retried.chunks == total - len(done_before)
        assert not retried.record.state.terminal  # queued, or taken by the worker already
        assert retried.record.outputs == []  # the partial outputs of the cancel are gone
        final = client.wait(job.id, timeout_s=180)
        assert final.state is JobState.SUCCEEDED, final.error
        assert [o.name for o in final.outputs] == ["speech.wav", "manifest.json"]

    # And no chunk was spoken twice: each finished once, across both runs
    assert sorted(chunks_done(worker.text(), job.id)) == list(range(1, total + 1))


def test_a_cancelled_audiobook_resumes_into_one_m4b_with_every_chapter(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a three-chapter book cancelled once two of its chunks were spoken
    chapters = a_story(3, 10)
    book = write_epub(tmp_path / "long.epub", "Long", "A. Writer", chapters)
    worker = deployment.start_worker("audiobook")
    with Stoker(deployment.settings()) as client:
        job = client.submit("audiobook", {"path": str(book), "formats": ["m4b"]})
        wait_until(lambda: client.status(job.id).progress.done >= 2, 180, "two chunks done")
        client.cancel(job.id)
        worker.wait_for_log(f"job {job.id} is cancelled", timeout_s=120)

        # When it is retried
        retried = client.retry(job.id)
        assert 0 < retried.chunks < len(job.chunks)
        done = client.wait(job.id, timeout_s=240)

        # Then one M4B holds every chapter once, in order
        assert done.state is JobState.SUCCEEDED, done.error
        m4b = client.storage.download(done.outputs[0].key, tmp_path / "out.m4b")
    marks, _ = m4b_chapters(m4b)
    assert [title for _, title in marks] == [title for title, _ in chapters]
    # And each chunk was spoken once across both runs, or found made already (the
    # book repeats some paragraphs: their chunks share a content-addressed output)
    spoken = chunks_done(worker.text(), job.id)
    found = len(re.findall(rf"job {job.id} chunk \d+: output exists", worker.text()))
    assert len(spoken) == len(set(spoken)) and len(spoken) + found == len(job.chunks)


def test_timed_out_jobs_succeed_when_retried_from_the_cli_after_the_fix(
    deployment: Deployment,
) -> None:
    # Given a job, and a file of a batch, that failed on a worker whose time limit was
    # too short for them (and a file refused at submission: an empty text)
    deployment.env.update(STOKER_CHUNK_TIME_LIMIT_S="2", STOKER_SPEAK_CHUNK_CHARS="4000")
    strict = deployment.start_worker("speak", "--preload", VOICE)
    with Stoker(deployment.settings()) as client:
        job = client.submit("speak", {"text": sentences(30)})
        batch = client.submit_batch(
            "speak", [{"text": sentences(31)}, {"text": " "}], source="texts"
        )
        failed = client.wait(job.id, timeout_s=120)
        assert failed.state is JobState.FAILED and failed.error is not None
        assert failed.error.kind == "timed_out"
        assert client.wait(batch.id, timeout_s=120).state is JobState.SUCCEEDED
        long, empty = children(client.store, batch.id)
        assert long.state is JobState.FAILED

        # When the limit is raised on a new worker and the job is retried from the CLI
        strict.terminate()
        deployment.env["STOKER_CHUNK_TIME_LIMIT_S"] = "3000"
        deployment.start_worker("speak", "--preload", VOICE)
        result = deployment.cli("retry", job.id, "--wait")

        # Then the CLI says what it queued and exits 0 once the job succeeded
        assert result.returncode == 0, result.stderr
        assert f"{job.id}: 1 chunk of 1 queued again" in result.stdout
        final = client.status(job.id)
        assert final.state is JobState.SUCCEEDED and final.error is None
        assert final.progress.stage == "done"
        assert final.attempts == 2  # one run each time

        # When every failed job is retried: the batch's timed-out file is, and the
        # refused one is named with why it is not
        every = deployment.cli("retry", "--failed", "--kind", "speak")
        assert every.returncode == 0, every.stderr
        assert f"{batch.id}: 1 file queued again (1 chunk)" in every.stdout
        assert "1 failed job queued again" in every.stdout
        assert "not retried: input 1 has no chunks kept to run again" in every.stderr
        again = client.wait(batch.id, timeout_s=120)
        assert again.state is JobState.SUCCEEDED
        assert client.status(long.id).state is JobState.SUCCEEDED
        assert [e["job_id"] for e in client.item_errors(batch.id)] == [empty.id]
    # And the CLI refuses a job id with --failed, saying how to call it
    both = deployment.cli("retry", job.id, "--failed")
    assert both.returncode == 2 and "give a job id" in both.stderr


def test_a_batch_retries_its_failed_files_and_assembles_again(deployment: Deployment) -> None:
    # Given a batch of speech in which one file timed out and one was refused at
    # submission (an empty text), on a worker with a short time limit
    deployment.env.update(STOKER_CHUNK_TIME_LIMIT_S="2", STOKER_SPEAK_CHUNK_CHARS="4000")
    strict = deployment.start_worker("speak", "--preload", VOICE)
    requests = [{"text": "A short first file."}, {"text": sentences(30)}, {"text": "   "}]
    with Stoker(deployment.settings()) as client:
        batch = client.submit_batch("speak", requests, source="texts")
        ended = client.wait(batch.id, timeout_s=120)
        assert ended.state is JobState.SUCCEEDED
        assert len(client.item_errors(batch.id)) == 2
        short, long, empty = children(client.store, batch.id)
        assert long.state is JobState.FAILED

        # When the limit is raised and the batch is retried
        strict.terminate()
        deployment.env["STOKER_CHUNK_TIME_LIMIT_S"] = "3000"
        deployment.start_worker("speak", "--preload", VOICE)
        retried = client.retry(batch.id)

        # Then the timed-out file is queued again, the refused one is not (and says
        # why), and the batch is running again
        assert retried.jobs == [long.id]
        ((refused, why),) = retried.not_retried
        assert refused.id == empty.id
        assert "refused at submission (the text to speak is empty" in why
        assert retried.record.kind == BATCH_KIND and not retried.record.state.terminal
        again = client.wait(batch.id, timeout_s=180)

        # And the batch ends once more, with only the refused file in its errors
        assert again.state is JobState.SUCCEEDED
        assert {o.name for o in again.outputs} >= {"manifest.json", "errors.jsonl"}
        assert [e["job_id"] for e in client.item_errors(batch.id)] == [empty.id]
        states = [k.state for k in children(client.store, batch.id)]
        assert states == [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED]
        assert short.state is JobState.SUCCEEDED


def test_retry_refuses_what_it_cannot_run_again(deployment: Deployment) -> None:
    with Stoker(deployment.settings()) as client:
        # A job still queued (no worker takes echo here)
        queued = client.submit("echo", {"text": "hi"})
        with pytest.raises(InvalidInput, match="is queued; only a failed or cancelled job"):
            client.retry(queued.id)
        # A job that succeeded
        worker = deployment.start_worker("echo")
        done = client.wait(queued.id, timeout_s=60)
        assert done.state is JobState.SUCCEEDED
        with pytest.raises(InvalidInput, match="succeeded; its outputs are ready"):
            client.retry(queued.id)
        worker.terminate()
        # A cancelled batch: its cancelled file is retried, from the CLI, which warns
        # that no live worker takes it
        batch = client.submit_batch("echo", [{"text": "a"}], source="x")
        client.cancel(batch.id)
        (kid,) = children(client.store, batch.id)
        assert kid.state is JobState.CANCELLED
        retried = deployment.cli("retry", batch.id)
        assert retried.returncode == 0, retried.stderr
        assert f"{batch.id}: 1 file queued again (1 chunk)" in retried.stdout
        assert f"warning: {kid.id} is queued, but" in retried.stderr
        assert "nobody takes it: no live worker runs echo" in retried.stderr
        # And a batch with nothing failed or cancelled left is refused, saying so
        with pytest.raises(InvalidInput, match="has no failed or cancelled file to retry"):
            client.retry(batch.id)
        # An unknown id
        with pytest.raises(JobNotFound):
            client.retry("job_doesnotexist")
    # From the CLI: one line saying what to do, exit 2
    result = deployment.cli("retry", queued.id)
    assert result.returncode == 2
    assert "succeeded; its outputs are ready" in result.stderr
