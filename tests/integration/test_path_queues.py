"""The path-queue registry (queues/path_queues.py) on a real Redis: what a submitter
writes is what workers read, a broker that is down fails the submission clearly, and
`stoker doctor` names a model path whose jobs no live worker can run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from stoker.client import Stoker
from stoker.config import Settings
from stoker.doctor import check_path_queues
from stoker.errors import BrokerUnavailable
from stoker.queues import path_queues
from stoker.queues.app import model_queue
from stoker.queues.path_queues import REGISTRY_KEY, PathQueue
from stoker.queues.records import JobState
from stoker.workers.fleet import WorkerBeat, open_fleet
from tests.gguf_models import write_tiny_llama
from tests.servers import free_port

pytestmark = pytest.mark.integration


def test_submitting_by_path_registers_the_queue_workers_read(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given a Redis broker and a model file named by path
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    client = redis.Redis.from_url(clean_redis)
    client.hset(REGISTRY_KEY, "generate.m.junk", b"not json")  # someone else's entry

    # When two jobs name it (and one names a catalog model)
    with Stoker(settings) as stoker:
        for _ in range(2):
            stoker.submit("generate", {"prompt": "Hi", "model": str(model), "max_tokens": 2})
        stoker.submit("generate", {"prompt": "Hi", "max_tokens": 2})

    # Then the registry holds that path's queue once, and its chunks wait on it
    queue = model_queue("generate", str(model))
    assert path_queues.read(client) == [PathQueue(queue, "generate", str(model))]
    assert client.llen(f"{queue}\x06\x163") == 2  # "normal" priority's list
    client.close()


def test_a_broker_down_fails_a_path_submission_clearly(tmp_path: Path) -> None:
    # Given a broker nobody listens on (the job store is local and up)
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(
        data_dir=tmp_path, broker_url=dead, state_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    )
    with Stoker(settings) as stoker:
        # When a job names its model by path
        with pytest.raises(BrokerUnavailable, match="broker is unreachable") as caught:
            stoker.submit("generate", {"prompt": "Hi", "model": str(model)})
        # Then the error names what to check, and the job is recorded as failed
        assert "STOKER_BROKER_URL" in str(caught.value)
        (record,) = stoker.jobs()
        assert record.state is JobState.FAILED


def test_doctor_names_a_model_path_whose_jobs_no_live_worker_can_run(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given two jobs waiting on a model path and no worker at all
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    with Stoker(settings) as stoker:
        for _ in range(2):
            stoker.submit("generate", {"prompt": "Hi", "model": str(model)})

    # Then doctor fails that check, naming the path, the count and what to do
    (check,) = check_path_queues(settings)
    assert (check.name, check.ok) == (f"model path {model}", False)
    assert check.detail.startswith("2 generate job(s) waiting")
    assert "no live worker has this file" in check.detail
    assert "scheduler_orphan_wait_s (60 s)" in check.fix

    # And once a live worker's heartbeat says it has the file, the check passes
    queue = model_queue("generate", str(model))
    beat = WorkerBeat(hostname="gpu-box", device="cpu", scheduling="backlog", queues=[],
                      paths=[queue], pools=[], at=time.time())  # fmt: skip
    open_fleet(settings).publish(beat, ttl_s=30)
    (check,) = check_path_queues(settings)
    assert check.ok and "a live worker has the file" in check.detail
