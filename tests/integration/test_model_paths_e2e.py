"""Models named by path (`stoker submit generate --model ./models/x.gguf`) through Redis,
an S3-protocol server and real `stoker worker` processes: the path is recorded as an
absolute path, the job goes on the plain queue, and the worker loads the file from
that path; a path missing where it is needed fails at submission or that job only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput
from stoker.queues.records import JobState
from tests.deployment import Deployment
from tests.gguf_models import write_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SAMPLING = {"max_tokens": 6, "seed": 1}


def cli(deployment: Deployment, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`stoker ARGS` as a user runs it in ``cwd``, against the deployment."""
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli", *args],
        env={**os.environ, **deployment.env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


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
    # deleted (it existed only where it was submitted), the other a file that stays
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

    # Then the first failed at once, saying which path is missing on which host and
    # what to do; the second succeeded on the same worker
    assert lost.state is JobState.FAILED and lost.error is not None
    assert lost.error.kind == "model_load_failed"
    message = lost.error.message
    assert f"{gone} does not exist on host {socket.gethostname()}" in message
    assert "shared filesystem" in message and "[models.NAME]" in message
    assert good.state is JobState.SUCCEEDED, good.error
