"""Backlog-aware scheduling end to end: real `stoker worker` processes on real Redis,
three configured copies of the packaged Piper voice (three files: three models),
and a CPU budget that fits one of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.queues.records import JobState
from stoker.workers.fleet import open_fleet
from tests.deployment import Deployment
from tests.piper_voices import copy_joe
from tests.servers import free_port, redis_server
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

VOICES = ("v1", "v2", "v3")
#: The joe voice measures ~90-115 MiB of RSS once loaded and after one-line jobs
#: (tests/integration/test_manager_piper.py): this budget fits one such voice, never
#: two. Longer texts grow ONNX Runtime's arena, and the footprint with it (~170 MiB
#: after a few sentences), so tests of longer chunks set a budget of their own.
ONE_VOICE_BUDGET = str(135 * 2**20)


def configure_voices(dep: Deployment, budget: str = ONE_VOICE_BUDGET) -> None:
    for name in VOICES:
        dep.env.update(copy_joe(dep.workdir / "voices", name).env(name))
    dep.env["STOKER_BUDGETS__CPU"] = budget


def loads(log: str) -> list[str]:
    """The voices a worker loaded, in order (from its log)."""
    return re.findall(r"\bloaded (v\d) on cpu:", log)


def wait_all(client: Stoker, ids: list[str], timeout_s: float) -> list[JobState]:
    deadline = time.monotonic() + timeout_s
    states = [client.status(i).state for i in ids]
    while not all(s.terminal for s in states) and time.monotonic() < deadline:
        time.sleep(0.2)
        states = [client.status(i).state for i in ids]
    return states


def test_a_mixed_backlog_is_served_model_by_model(deployment: Deployment) -> None:
    # Given 3 voices × 30 one-sentence jobs, submitted interleaved before any worker
    # runs, and a worker whose budget fits one voice
    configure_voices(deployment)
    with Stoker(deployment.settings()) as client:
        jobs = [
            client.submit("speak", {"text": f"Line {i}.", "voice": VOICES[i % 3]})
            for i in range(90)
        ]
        worker = deployment.start_worker("speak,echo")
        # When the worker drains the queues
        states = wait_all(client, [j.id for j in jobs], timeout_s=180)
    # Then every job succeeded, and each voice was loaded about once, not ~90 times
    assert states == [JobState.SUCCEEDED] * 90
    loaded = loads(worker.text())
    assert sorted(set(loaded)) == list(VOICES)
    assert len(loaded) <= 6, loaded


def ran_jobs(log: str) -> set[str]:
    """Ids of the jobs a worker ran chunks of (from its log)."""
    return set(re.findall(r"job (\S+) chunk \d+/\d+ done", log))


def test_two_workers_each_keep_the_jobs_of_the_voice_they_hold(deployment: Deployment) -> None:
    # Given two workers on one Redis, each holding a different voice
    configure_voices(deployment)
    a = deployment.start_worker("speak", "--preload", "v1")
    b = deployment.start_worker("speak", "--preload", "v2")
    with Stoker(deployment.settings()) as client:
        fleet = open_fleet(deployment.settings())
        wait_for(lambda: len(fleet.workers()) == 2, "both heartbeats")
        # When jobs of both voices are submitted, interleaved
        jobs = [
            client.submit("speak", {"text": f"Line {i}.", "voice": ("v1", "v2")[i % 2]})
            for i in range(16)
        ]
        states = wait_all(client, [j.id for j in jobs], timeout_s=120)
        # Then each job ran on the worker that held its voice, and no voice was reloaded
        assert states == [JobState.SUCCEEDED] * 16
        by_voice = {v: {j.id for j in jobs if j.model == v} for v in ("v1", "v2")}
        assert ran_jobs(a.text()) == by_voice["v1"]
        assert ran_jobs(b.text()) == by_voice["v2"]
        assert loads(a.text()) == ["v1"] and loads(b.text()) == ["v2"]
        # And (once the next heartbeats are out) `stoker models --loaded --json` shows
        # each worker with its voice and a hit per job
        wait_for(lambda: all(w.pools[0].hits == 8 for w in fleet.workers()), "fresh beats")
        out = run_cli(deployment, "models", "--loaded", "--json")
        rows = json.loads(out)
        assert sorted(r["pools"][0]["models"][0]["name"] for r in rows) == ["v1", "v2"]
        assert [(r["pools"][0]["misses"], r["pools"][0]["evictions"]) for r in rows] == [(1, 0)] * 2
        assert "v1" in run_cli(deployment, "models", "--loaded")


def test_starving_jobs_too_large_for_one_worker_wait_for_one_they_fit(
    deployment: Deployment,
) -> None:
    # Given a worker whose budget fits a voice, busy with long v1 jobs, beside one whose
    # budget fits no voice, and jobs counted as starving after 2 s
    configure_voices(deployment, budget=str(512 * 2**20))
    deployment.env["STOKER_SCHEDULER_MAX_WAIT_S"] = "2"
    with Stoker(deployment.settings()) as client:
        long = [client.submit("speak", {"text": sentences(8), "voice": "v1"}) for _ in range(2)]
        big = deployment.start_worker("speak", "--preload", "v1")
        deployment.env["STOKER_BUDGETS__CPU"] = str(32 * 2**20)
        small = deployment.start_worker("speak")
        fleet = open_fleet(deployment.settings())
        wait_for(lambda: len(fleet.workers()) == 2, "both heartbeats")
        # When v2 jobs wait past that while the first worker is still on v1
        short = [client.submit("speak", {"text": f"Line {i}.", "voice": "v2"}) for i in range(3)]
        states = wait_all(client, [j.id for j in long + short], timeout_s=180)
    # Then every job succeeded: the small worker left the starving jobs (v2's, and the
    # long v1 jobs' later chunks) to the worker they fit, instead of taking them and
    # failing them as too large ("needs about N MiB … but the budget is 32 MiB")
    assert states == [JobState.SUCCEEDED] * 5, small.text()[-3000:]
    assert "needs about" not in small.text() and loads(small.text()) == []
    assert loads(big.text()) == ["v1", "v2"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_worker_stopped_mid_chunk_loses_no_job(deployment: Deployment, signal_name: str) -> None:
    # Given jobs of several chunks on two voices, running on worker A (whose budget
    # fits both: this test is about the stop, not about switching)
    configure_voices(deployment, budget=str(512 * 2**20))
    with Stoker(deployment.settings()) as client:
        jobs = [
            client.submit("speak", {"text": sentences(6), "voice": VOICES[i % 2]}) for i in range(4)
        ]
        a = deployment.start_worker("speak")
        wait_for(lambda: "chunk 1/" in a.text(), "a first chunk done")
        # When A is stopped mid-chunk (SIGTERM: warm shutdown; SIGKILL: gone) and B starts
        if signal_name == "SIGTERM":
            assert a.terminate() == 0
        else:
            a.kill()
        b = deployment.start_worker("speak")
        states = wait_all(client, [j.id for j in jobs], timeout_s=150)
        # Then every job succeeded exactly once, with every chunk counted
        assert states == [JobState.SUCCEEDED] * 4
        logs = a.text() + b.text()
        for job in jobs:
            done = client.status(job.id)
            assert done.progress.done == done.progress.total == len(job.chunks)
            assert logs.count(f"job {job.id} succeeded") == 1
            assert [o.name for o in done.outputs] == ["speech.wav", "manifest.json"]
        assert ran_jobs(b.text())  # B did part of the work


def test_jobs_queued_across_a_redis_restart_all_finish(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    # Given our own Redis with AOF, 20 queued jobs, and a worker that has started on them
    port, redis_dir = free_port(), tmp_path / "redis"
    dep = Deployment(env={}, workdir=tmp_path)
    dep.env.update(
        STOKER_DATA_DIR=str(tmp_path / "data"),
        STOKER_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        STOKER_STORAGE_URL=f"s3://{s3_bucket}/stoker",
        STOKER_S3_ENDPOINT_URL=s3_endpoint,
        STOKER_VISIBILITY_TIMEOUT_S="5",
        STOKER_RETRY_BACKOFF_S="0.2",
    )
    configure_voices(dep)
    try:
        with redis_server(redis_dir, aof=True, port=port):
            with Stoker(dep.settings()) as client:
                ids = [
                    client.submit("speak", {"text": f"Line {i}.", "voice": VOICES[i % 3]}).id
                    for i in range(20)
                ]
            worker = dep.start_worker("speak")
            wait_for(lambda: "chunk 1/1 done" in worker.text(), "a first job done")
        # When Redis stops (jobs still queued) and starts again from its AOF
        time.sleep(1)
        with redis_server(redis_dir, aof=True, port=port):
            with Stoker(dep.settings()) as client:
                states = wait_all(client, ids, timeout_s=120)
                # Then every job finished, served by the same worker after it reconnected
                assert states == [JobState.SUCCEEDED] * 20
                assert worker.alive
            dep.stop_all()
    finally:
        dep.stop_all()


def wait_for(predicate, what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout_s}s")
        time.sleep(0.1)


def run_cli(dep: Deployment, *args: str) -> str:
    env = {**os.environ, **dep.env}
    out = subprocess.run(
        [sys.executable, "-m", "stoker.cli", *args], env=env, capture_output=True, check=True
    )
    return out.stdout.decode()


def test_voices_named_by_path_are_served_model_by_model(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given two copies of the voice that are in no worker's config, named by path,
    # 2 × 12 one-sentence jobs submitted interleaved, and a budget that fits one voice
    voices = [str(copy_joe(tmp_path / "path-voices", name).model) for name in ("a", "b")]
    deployment.env["STOKER_BUDGETS__CPU"] = ONE_VOICE_BUDGET
    with Stoker(deployment.settings()) as client:
        jobs = [
            client.submit("speak", {"text": f"Line {i}.", "voice": voices[i % 2]})
            for i in range(24)
        ]
        worker = deployment.start_worker("speak")
        states = wait_all(client, [j.id for j in jobs], timeout_s=180)
    # Then every job succeeded and each voice was loaded about once (on one shared
    # queue they alternated: a load per job)
    assert states == [JobState.SUCCEEDED] * 24
    loaded = re.findall(r"\bloaded (\S+) on cpu:", worker.text())
    assert sorted(set(loaded)) == voices
    assert len(loaded) <= 4, loaded


def test_a_worker_running_a_long_chunk_stays_in_the_fleet(deployment: Deployment) -> None:
    # Given a worker whose heartbeat lives half a second (a beat every 0.1 s), and a
    # speak job of one long chunk (many beats long)
    configure_voices(deployment, budget=str(512 * 2**20))
    deployment.env.update(
        STOKER_HEARTBEAT_S="0.1", STOKER_SPEAK_CHUNK_CHARS="4000", STOKER_VISIBILITY_TIMEOUT_S="120"
    )
    worker = deployment.start_worker("speak", "--preload", "v1")
    with Stoker(deployment.settings()) as client:
        fleet = open_fleet(deployment.settings())
        wait_for(lambda: len(fleet.workers()) == 1, "the heartbeat")
        job = client.submit("speak", {"text": sentences(30), "voice": "v1"})
        assert job.progress.total == 1

        # When the fleet is read over and over while the chunk runs
        wait_for(lambda: client.status(job.id).state is not JobState.QUEUED, "the start")
        listed, running = [], set()
        while not client.status(job.id).state.terminal:
            beats = fleet.workers()
            listed.append([w.hostname for w in beats])
            running |= {w.running for w in beats}
            time.sleep(0.05)

        # Then the worker was in it at every read (its beats come from a thread of
        # their own, not from the thread the chunk runs on)
        assert client.status(job.id).state is JobState.SUCCEEDED
        assert len(listed) >= 20, "the chunk ended too soon to tell"
        assert all(len(names) == 1 for names in listed), listed
        # And they said which chunk it was running
        assert f"{job.id} chunk 1" in running
        wait_for(lambda: fleet.workers()[0].running is None, "the beat after the chunk")
        assert f"running {job.id}" not in run_cli(deployment, "models", "--loaded")

        # And once stopped, it has left the fleet: no beat came after it said so
        assert worker.terminate() == 0
        assert fleet.workers() == []
