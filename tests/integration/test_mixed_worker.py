"""One worker, one memory budget, every kind of model: speech, embeddings, text
generation and images share a CPU pool, and a budget too small for all of them makes
the worker evict rather than fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.queues.records import JobState
from stoker.workers.fleet import open_fleet
from tests.deployment import Deployment
from tests.diffusers_models import build_text_to_image
from tests.gguf_models import write_tiny_llama
from tests.integration.test_scheduling_e2e import run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JOBS = [
    ("speak", {"text": "One worker serves every model."}),
    ("embed", {"text": "and keeps them under one budget."}),
    ("generate", {"prompt": "Once upon a time", "model": "tiny", "max_tokens": 4}),
    ("image", {"prompt": "a lighthouse", "model": "tinysd", "steps": 2, "seed": 1}),
]


def configure(dep: Deployment, tmp_path: Path, budget: str) -> None:
    dep.env["STOKER_MODELS__TINY__BACKEND"] = "llama"
    dep.env["STOKER_MODELS__TINY__PATH"] = str(write_tiny_llama(tmp_path / "tiny.gguf"))
    dep.env["STOKER_MODELS__TINYSD__BACKEND"] = "diffusers"
    dep.env["STOKER_MODELS__TINYSD__PATH"] = str(build_text_to_image(tmp_path / "sd"))
    dep.env["STOKER_BUDGETS__CPU"] = budget


def run_all(dep: Deployment, rounds: int) -> list[JobState]:
    with Stoker(dep.settings()) as client:
        jobs = [client.submit(kind, {**req}) for _ in range(rounds) for kind, req in JOBS]
        return [client.wait(j.id, timeout_s=120).state for j in jobs]


def test_audio_text_and_image_models_share_one_pool(deployment: Deployment, tmp_path: Path) -> None:
    # Given one worker for speak, embed, generate and image with a budget that fits all
    configure(deployment, tmp_path, "4GiB")
    deployment.start_worker("speak,embed,generate,image")
    # When a job of each kind runs
    states = run_all(deployment, rounds=1)
    # Then all succeeded, and the worker's one CPU pool holds the four models with
    # their measured footprints, inside its budget
    assert states == [JobState.SUCCEEDED] * 4
    fleet = open_fleet(deployment.settings())
    wait_for(lambda: len(fleet.workers()[0].pools[0].models) == 4, "a beat with 4 models")
    (row,) = json.loads(run_cli(deployment, "models", "--loaded", "--json"))
    (pool,) = row["pools"]
    names = sorted(m["name"] for m in pool["models"])
    assert names == ["all-MiniLM-L6-v2", "en_US-joe-medium", "tiny", "tinysd"]
    assert all(m["footprint_bytes"] > 0 for m in pool["models"])
    assert pool["used_bytes"] <= pool["budget_bytes"] and pool["evictions"] == 0


def test_a_budget_too_small_for_all_evicts_and_every_job_finishes(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given the same worker with a budget under the four models' sum (measured here:
    # voice ~115 MiB, MiniLM ~28, tiny GGUF ~7, tiny SD ~24) but over the largest one
    configure(deployment, tmp_path, "150MiB")
    deployment.start_worker("speak,embed,generate,image")
    # When two rounds of the four kinds run
    states = run_all(deployment, rounds=2)
    # Then every job still succeeded, because models were evicted to make room
    assert states == [JobState.SUCCEEDED] * 8
    fleet = open_fleet(deployment.settings())
    wait_for(lambda: fleet.workers()[0].pools[0].evictions > 0, "a beat with evictions")
    pool = fleet.workers()[0].pools[0]
    assert pool.used_bytes <= pool.budget_bytes
