"""Chunks that would hold or stop workers, through real `stoker worker` processes on
Redis and S3 with the real Piper voice.

A chunk that runs too long (chunk_time_limit_s): one that reaches a check past the
limit fails its job and the worker goes on; one stuck in a single library call (one
sentence of 1,500 words) fails its job and ends its worker process, and a new worker
takes the next job and skips the stuck chunk when it is handed out again. A chunk
whose workers die running it (chunk_max_crashes: SIGKILL, as the kernel's
out-of-memory killer sends) fails its job at its third delivery instead of stopping
a third worker."""

from __future__ import annotations

import time

import pytest

from stoker.client import Stoker
from stoker.queues.records import JobState
from stoker.workers.fleet import open_fleet
from stoker.workers.watchdog import EXIT_STUCK
from tests.deployment import Deployment
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

VOICE = "en_US-joe-medium"


def test_a_chunk_past_the_limit_fails_its_job_and_the_worker_goes_on(
    deployment: Deployment,
) -> None:
    # Given a 2 s limit per chunk and a worker with the voice loaded
    deployment.env.update(STOKER_CHUNK_TIME_LIMIT_S="2", STOKER_SPEAK_CHUNK_CHARS="4000")
    worker = deployment.start_worker("speak", "--preload", VOICE)
    with Stoker(deployment.settings()) as client:
        # When a job's one chunk takes longer (30 sentences, checked between each)
        long = client.wait(client.submit("speak", {"text": sentences(30)}).id, timeout_s=120)
        # Then that job fails, saying so
        assert long.state is JobState.FAILED and long.error is not None
        assert long.error.kind == "timed_out"
        assert "chunk 1 of job" in long.error.message
        assert "ran for more than 2 s and was stopped" in long.error.message
        # And the same worker runs the next job
        short = client.wait(client.submit("speak", {"text": "Hello there."}).id, timeout_s=60)
    assert short.state is JobState.SUCCEEDED, short.error
    assert worker.proc.poll() is None


def test_a_chunk_stuck_in_one_call_ends_its_worker_and_only_its_job(
    deployment: Deployment,
) -> None:
    # Given a 1 s limit and a chunk of one run-on sentence (one Piper call, no check
    # inside, far longer than the limit and the watchdog's 10 s grace)
    deployment.env.update(
        STOKER_CHUNK_TIME_LIMIT_S="1", STOKER_SPEAK_CHUNK_CHARS="20000", STOKER_HEARTBEAT_S="0.2"
    )
    run_on = " ".join(["the keeper climbed the winding stairs and lit the lamp"] * 150)
    stuck_worker = deployment.start_worker("speak", "--preload", VOICE)
    with Stoker(deployment.settings()) as client:
        stuck = client.submit("speak", {"text": run_on})

        # When it runs, the worker's watchdog fails the job and ends the process,
        # leaving the fleet first (no heartbeat of it lingers)
        assert stuck_worker.proc.wait(timeout=90) == EXIT_STUCK
        assert open_fleet(deployment.settings()).workers() == []
        failed = client.status(stuck.id)
        assert failed.state is JobState.FAILED and failed.error is not None
        assert "ran for more than 1 s and did not stop at its next check" in failed.error.message

        # And a new worker runs the next job, and skips the stuck chunk when Redis hands
        # it out again (after the 5 s visibility timeout)
        fresh = deployment.start_worker("speak", "--preload", VOICE)
        done = client.wait(client.submit("speak", {"text": "Hello there."}).id, timeout_s=60)
        assert done.state is JobState.SUCCEEDED, done.error
        deadline = time.monotonic() + 60
        while f"{stuck.id} is" not in fresh.text() and time.monotonic() < deadline:
            time.sleep(0.2)
    assert f"job {stuck.id} chunk 1/1 done" not in fresh.text()  # skipped, never run
    assert f"job {stuck.id} is" in fresh.text() and "chunk 0 skipped" in fresh.text()
    assert client.status(stuck.id).state is JobState.FAILED


def test_a_chunk_whose_workers_die_twice_fails_its_job_instead_of_a_third_worker(
    deployment: Deployment,
) -> None:
    # Given a job of one long chunk (30 sentences: seconds of work)
    deployment.env["STOKER_SPEAK_CHUNK_CHARS"] = "4000"
    with Stoker(deployment.settings()) as client:
        poison = client.submit("speak", {"text": sentences(30)})

        # When the worker running it dies mid-chunk, and so does the next one that
        # gets it (after the 5 s visibility timeout)
        for _ in range(2):
            worker = deployment.start_worker("speak", "--preload", VOICE)
            worker.wait_for_log("Task stoker.run_chunk[", timeout_s=60)
            time.sleep(1.0)  # inside the chunk
            worker.kill()
            worker.proc.wait(timeout=30)

        # Then the third fails the job at its delivery, saying why, and goes on
        third = deployment.start_worker("speak", "--preload", VOICE)
        failed = client.wait(poison.id, timeout_s=90)
        assert failed.state is JobState.FAILED and failed.error is not None
        assert failed.error.kind == "crashed_workers"
        assert "stopped before finishing it 2 times" in failed.error.message
        done = client.wait(client.submit("speak", {"text": "Hello there."}).id, timeout_s=60)
    assert done.state is JobState.SUCCEEDED, done.error
    assert f"job {poison.id} chunk 1/1 done" not in third.text()


def test_a_stopping_worker_puts_a_long_chunk_back_for_the_next_worker(
    deployment: Deployment,
) -> None:
    # Given a worker that lets a running chunk go on 1 s after it is told to stop,
    # running a job of one long chunk (30 sentences: seconds of work)
    deployment.env.update(STOKER_STOP_GRACE_S="1", STOKER_SPEAK_CHUNK_CHARS="4000")
    first = deployment.start_worker("speak", "--preload", VOICE)
    with Stoker(deployment.settings()) as client:
        job = client.submit("speak", {"text": sentences(30)})
        first.wait_for_log("Task stoker.run_chunk[", timeout_s=60)
        time.sleep(0.5)  # inside the chunk

        # When it is told to stop (SIGTERM, as systemd and compose send)
        assert first.terminate(timeout_s=60) == 0

        # Then it put the chunk back at its next check instead of finishing it, and
        # no crash is counted against the chunk
        assert "the worker is stopping; put back on" in first.text()
        assert f"job {job.id} chunk 1/1 done" not in first.text()
        assert client.store.chunk_runs(job.id, 0, 0) == 0
        assert client.status(job.id).state is JobState.RUNNING

        # And the next worker takes it from the queue and the job succeeds
        second = deployment.start_worker("speak", "--preload", VOICE)
        done = client.wait(job.id, timeout_s=120)
    assert done.state is JobState.SUCCEEDED, done.error
    assert f"job {job.id} chunk 1/1 done" in second.text()
