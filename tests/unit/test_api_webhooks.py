"""Webhook delivery (one pass at a time, a fake target) and target validation."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from stoker.api.errors import ApiError
from stoker.api.meta_sqlite import SqliteMetaStore
from stoker.api.webhook_records import PENDING_NS, WebhookSpec, rearm, register, status_of
from stoker.api.webhooks import Deliverer, validate_target
from stoker.config import ApiSettings
from stoker.errors import JobNotFound
from stoker.queues.records import JobRecord, JobState


def job(state: JobState) -> JobRecord:
    return JobRecord(id="job_1", kind="echo", state=state)


def test_a_webhook_waits_for_the_end_then_is_signed_retried_and_recorded(
    tmp_path: Path,
) -> None:
    # Given a job with a webhook and a target that fails once, then accepts
    meta = SqliteMetaStore(tmp_path / "api.sqlite")
    register(meta, "job_1", "alice", WebhookSpec(url="http://hooks.test/x"), "key-secret")
    current = {"record": job(JobState.RUNNING)}
    sent: list[tuple[bytes, dict[str, str]]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.append((body, headers))
        return 503 if len(sent) == 1 else 204

    settings = ApiSettings(webhook_backoff_s=0.0001, webhook_max_attempts=3)
    deliverer = Deliverer(meta, lambda _id: current["record"], settings, post)
    # When the job is still running, nothing is sent
    assert deliverer.run_once() == 0
    # When it has ended: a failed attempt, then a delivered one
    current["record"] = job(JobState.SUCCEEDED)
    assert deliverer.run_once() == 1
    assert deliverer.run_once() == 1
    assert deliverer.run_once() == 0  # nothing left to deliver
    # Then the body is signed with the key's secret and the attempts are on the job
    body, headers = sent[-1]
    digest = hmac.new(b"key-secret", body, hashlib.sha256).hexdigest()
    assert headers["X-Stoker-Signature"] == f"sha256={digest}"
    assert json.loads(body)["type"] == "job.succeeded"
    shown = status_of(meta, "job_1")
    assert shown is not None and "secret" not in shown
    assert shown["state"] == "delivered"
    assert [a["status_code"] for a in shown["attempts"]] == [503, 204]
    meta.close()


def test_a_target_that_keeps_failing_is_given_up_after_the_attempts(tmp_path: Path) -> None:
    meta = SqliteMetaStore(tmp_path / "api.sqlite")
    register(meta, "job_1", "a", WebhookSpec(url="http://x.test", secret="s"), "k")

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        raise ConnectionError("refused")

    settings = ApiSettings(webhook_backoff_s=0.0001, webhook_max_attempts=2)
    deliverer = Deliverer(meta, lambda _id: job(JobState.FAILED), settings, post)
    while deliverer.run_once():
        pass
    shown = status_of(meta, "job_1")
    assert shown is not None and shown["state"] == "failed"
    assert ["refused" in a["error"] for a in shown["attempts"]] == [True, True]
    meta.close()


def test_the_webhook_of_a_deleted_job_is_dropped_not_retried(tmp_path: Path) -> None:
    # Given a pending webhook whose job was deleted (`stoker delete` knows no API docs)
    meta = SqliteMetaStore(tmp_path / "api.sqlite")
    register(meta, "job_1", "a", WebhookSpec(url="http://x.test", secret="s"), "k")

    def gone(job_id: str) -> JobRecord:
        raise JobNotFound(job_id)

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        raise AssertionError("nothing is sent for a deleted job")

    deliverer = Deliverer(meta, gone, ApiSettings(), post)
    # When a pass runs, the webhook is dropped, and the next pass has nothing to try
    assert deliverer.run_once() == 0
    assert status_of(meta, "job_1") is None
    assert meta.list(PENDING_NS, None, 10) == []
    meta.close()


def test_a_retried_job_tells_its_new_end_once_its_webhook_is_rearmed(tmp_path: Path) -> None:
    # Given a job whose end was told
    meta = SqliteMetaStore(tmp_path / "api.sqlite")
    register(meta, "job_1", "a", WebhookSpec(url="http://x.test", secret="s"), "k")
    current = {"record": job(JobState.CANCELLED)}
    sent: list[bytes] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.append(body)
        return 200

    deliverer = Deliverer(meta, lambda _id: current["record"], ApiSettings(), post)
    assert deliverer.run_once() == 1
    # When it is retried (rearmed) and runs, nothing is sent until it ends again
    rearm(meta, "job_1")
    shown = status_of(meta, "job_1")
    assert shown is not None and (shown["state"], shown["attempts"]) == ("pending", [])
    current["record"] = job(JobState.RUNNING)
    assert deliverer.run_once() == 0
    # Then its new end is told, once
    current["record"] = job(JobState.SUCCEEDED)
    assert deliverer.run_once() == 1 and deliverer.run_once() == 0
    assert [json.loads(b)["type"] for b in sent] == ["job.cancelled", "job.succeeded"]
    # And a second rearm before that end is told sends it once; no webhook, nothing
    rearm(meta, "job_1")
    rearm(meta, "job_1")
    assert deliverer.run_once() == 1 and deliverer.run_once() == 0
    rearm(meta, "job_2")
    assert meta.list(PENDING_NS, None, 10) == []
    meta.close()


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://h/x", "http://", "gopher://h", "javascript:alert(1)"]
)
def test_only_http_targets_are_accepted(url: str) -> None:
    with pytest.raises(ApiError):
        validate_target(url, ApiSettings())


def test_the_allow_list_limits_hosts() -> None:
    settings = ApiSettings(webhook_allow_hosts=["hooks.example.com"])
    validate_target("https://hooks.example.com/x", settings)
    with pytest.raises(ApiError) as refused:
        validate_target("http://169.254.169.254/latest", settings)
    assert refused.value.code == "webhook_host_not_allowed"
