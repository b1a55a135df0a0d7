"""Why a job is still queued: its queue, read from a real Redis broker and the
workers' heartbeats there, as `stoker status`, `stoker wait` and `stoker doctor` say
it. The heartbeats are published by the test, as workers on other
machines would publish them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stoker.cli import app as cli_app
from stoker.client import Stoker
from stoker.config import Settings
from stoker.doctor import check_waiting_queues
from stoker.queues.app import model_queue
from stoker.workers.coverage import QueueCover
from stoker.workers.fleet import WorkerBeat, open_fleet

pytestmark = pytest.mark.integration

GEMMA_QUEUE = model_queue("generate", "gemma-3-270m")


def beat(hostname: str, serves: list[str], queues: list[str]) -> WorkerBeat:
    return WorkerBeat(
        hostname=hostname, device="cpu", scheduling="backlog", queues=queues, serves=serves,
        pools=[], at=time.time(),
    )  # fmt: skip


def test_a_queued_job_says_who_could_take_it(clean_redis: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    fleet = open_fleet(settings)
    with Stoker(settings) as stoker:
        # Given a generate job queued on Gemma's queue, and no worker at all
        job = stoker.submit("generate", {"prompt": "Hi", "max_tokens": 4})
        found = stoker.waiting(job)
        assert found is not None and (found.queue, found.waiting) == (GEMMA_QUEUE, 1)
        assert not found.served
        assert "nobody takes it: no live worker runs generate" in found.describe(settings)
        assert found.fix() == (
            "start one with `stoker worker --queues generate` on a machine with "
            "gemma-3-270m in its catalog and its files (`stoker models` there says ok)"
        )
        # When a worker runs only speak, nothing changes
        fleet.publish(beat("speaker", ["speak"], ["speak"]), ttl_s=30)
        assert not stoker.waiting(job).served  # type: ignore[union-attr]

        # When one runs generate without Gemma in its catalog
        fleet.publish(beat("other-models", ["generate"], ["generate"]), ttl_s=30)
        found = stoker.waiting(job)
        assert found is not None and not found.served
        assert "live workers run generate, but none has gemma-3-270m" in found.who(settings)

        # When one could take it but serves another model now
        fleet.publish(beat("busy", ["generate", GEMMA_QUEUE], ["generate"]), ttl_s=30)
        found = stoker.waiting(job)
        assert found is not None and found.served and found.able == ("busy",)
        assert "now serve other models' queues" in found.who(settings)
        assert found.fix() == ""

        # When it consumes that queue
        fleet.publish(beat("busy", ["generate", GEMMA_QUEUE], [GEMMA_QUEUE]), ttl_s=30)
        found = stoker.waiting(job)
        assert found is not None and found.consuming == ("busy",)
        assert found.who(settings).startswith("taken by 1 live worker (busy)")

        # And a job that is not queued has nothing to say
        stoker.cancel(job.id)
        assert stoker.waiting(stoker.status(job.id)) is None


def test_status_wait_and_doctor_say_nobody_takes_it(clean_redis: str, tmp_path: Path) -> None:
    # Given an embed job queued with no worker anywhere
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    with Stoker(settings) as stoker:
        job = stoker.submit("embed", {"texts": ["one sentence"]})
    env = {"STOKER_DATA_DIR": str(tmp_path), "STOKER_BROKER_URL": clean_redis}
    runner = CliRunner()

    # Then `stoker status` says what waits and what to start
    shown = runner.invoke(cli_app, ["status", job.id], env=env)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "waiting: queue embed.m.all-MiniLM-L6-v2: 1 chunk(s) waiting" in text
    assert "start one with `stoker worker --queues embed`" in text

    # And `stoker wait` warns once it has waited a few seconds, then goes on waiting
    waited = runner.invoke(cli_app, ["wait", job.id, "--timeout", "7"], env=env)
    text = " ".join(waited.output.split())
    assert re.search(rf"warning: {job.id} is still queued\. queue embed\.m\.", text), text
    assert text.count("is still queued") == 1

    # And `stoker submit` prints the new job's id alone on stdout, and the same
    # warning on stderr
    sub = subprocess.run(
        [sys.executable, "-m", "stoker.cli", "submit", "embed", "--text", "two"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    assert re.fullmatch(r"job_\w+\n", sub.stdout), sub.stdout
    assert "is queued, but queue embed.m.all-MiniLM-L6-v2" in " ".join(sub.stderr.split())

    # And doctor fails the check of that queue, and of no empty one
    (check,) = check_waiting_queues(settings)
    assert (check.name, check.ok) == ("queue embed.m.all-MiniLM-L6-v2", False)
    assert check.fix.startswith("start one with `stoker worker --queues embed`")


def test_nothing_is_said_on_the_embedded_broker(tmp_path: Path) -> None:
    # The worker there is this machine's own (`stoker run`), and sends no heartbeats
    with Stoker(Settings(data_dir=tmp_path)) as stoker:
        job = stoker.submit("embed", {"texts": ["one sentence"]})
        assert stoker.waiting(job) is None
    assert check_waiting_queues(Settings(data_dir=tmp_path)) == []


def test_work_for_a_model_path_says_which_file_a_worker_needs() -> None:
    queue = model_queue("generate", "/srv/models/q.gguf")
    found = QueueCover(queue, "/srv/models/q.gguf", 2, 30.0, (), (), kind_served=True)
    text = found.describe(Settings())
    assert "live workers run generate, but none has /srv/models/q.gguf" in text
    assert text.endswith("on a machine that has the file /srv/models/q.gguf.")


def test_the_api_says_how_many_workers_take_a_queued_job_never_which(
    clean_redis: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from stoker.api.app import create_app
    from tests.api_server import auth, make_key

    # Given an API on Redis and an embed job submitted through it, with no worker
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    alice = auth(make_key(settings, "alice"))
    with TestClient(create_app(settings, deliver_webhooks=False)) as api:
        created = api.post(
            "/v1/jobs", json={"kind": "embed", "params": {"texts": ["hi"]}}, headers=alice
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        # Then reading it says what waits and that nobody takes it
        waiting = api.get(f"/v1/jobs/{job_id}", headers=alice).json()["waiting"]
        assert waiting["queue"] == "embed.m.all-MiniLM-L6-v2"
        assert (waiting["chunks_waiting"], waiting["workers_able"]) == (1, 0)
        assert "nobody takes it" in waiting["detail"]

        # And once a worker consumes that queue, it is counted, never named
        beat_ = beat("secret-host", ["embed", waiting["queue"]], [waiting["queue"]])
        open_fleet(settings).publish(beat_, ttl_s=30)
        read = api.get(f"/v1/jobs/{job_id}", headers=alice)
        assert read.json()["waiting"]["workers_consuming"] == 1
        assert "secret-host" not in read.text

        # And an ended job has nothing waiting
        api.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
        assert api.get(f"/v1/jobs/{job_id}", headers=alice).json()["waiting"] is None


def test_models_count_the_live_workers_that_have_each_model(
    clean_redis: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from stoker.api.app import create_app
    from tests.api_server import auth, make_key

    # Given one live worker that has Gemma (its heartbeat serves its queue)
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    open_fleet(settings).publish(beat("gpu-box", ["generate", GEMMA_QUEUE], []), ttl_s=30)
    env = {"STOKER_DATA_DIR": str(tmp_path), "STOKER_BROKER_URL": clean_redis}

    # Then `stoker models` counts it for Gemma and for nothing else
    listed = CliRunner().invoke(cli_app, ["models", "--json"], env=env)
    workers = {row["name"]: row["workers"] for row in json.loads(listed.output)}
    assert workers["gemma-3-270m"] == 1 and workers["all-MiniLM-L6-v2"] == 0

    # And so does /v1/models
    alice = auth(make_key(settings, "alice"))
    with TestClient(create_app(settings, deliver_webhooks=False)) as api:
        data = api.get("/v1/models", headers=alice).json()["data"]
        assert {m["id"]: m["workers"] for m in data}["gemma-3-270m"] == 1
        assert api.get("/v1/models/gemma-3-270m", headers=alice).json()["workers"] == 1

    # And with the embedded store there are no heartbeats to count
    embedded = CliRunner().invoke(
        cli_app, ["models", "--json"], env={"STOKER_DATA_DIR": str(tmp_path)}
    )
    assert {row["workers"] for row in json.loads(embedded.output)} == {None}


def test_models_loaded_says_what_each_worker_runs(clean_redis: str, tmp_path: Path) -> None:
    # Given a live worker whose heartbeat says it runs a chunk, started 12 s ago
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    busy = beat("gpu-box", ["generate"], ["generate"])
    busy.running, busy.running_since = "job_abc chunk 2", time.time() - 12
    open_fleet(settings).publish(busy, ttl_s=30)
    env = {"STOKER_DATA_DIR": str(tmp_path), "STOKER_BROKER_URL": clean_redis}

    # Then `stoker models --loaded` says so under its table
    shown = CliRunner().invoke(cli_app, ["models", "--loaded"], env=env)
    assert shown.exit_code == 0, shown.output
    assert re.search(r"gpu-box: running job_abc chunk 2 for 1\d s", shown.output), shown.output
