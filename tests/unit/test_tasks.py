"""What happens to a chunk task when its work raises: retry, give up, or stop.

A unit test of queues/tasks.py with a fake executor and Celery's eager mode; the real
path (worker processes on Redis) is covered by tests/integration/test_speak_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import (
    InvalidInput,
    JobCancelled,
    JobNotFound,
    StokerError,
    StorageUnavailable,
)
from stoker.queues.app import RUN_CHUNK_TASK, make_celery
from stoker.queues.tasks import attach_executor, backoff_s


class FakeExecutor:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls, self.failed = errors, 0, []  # type: ignore[var-annotated]

    def run_chunk(self, job_id: str, index: int, payload: dict[str, Any]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    def fail(self, job_id: str, error: StokerError) -> None:
        self.failed.append(error)


def run(tmp_path: Path, errors: list[Exception]) -> FakeExecutor:
    app = make_celery(load_settings(data_dir=tmp_path, task_max_retries=2, retry_backoff_s=0.01))
    app.conf.task_always_eager = True
    executor = FakeExecutor(errors)
    attach_executor(app, executor)
    app.tasks[RUN_CHUNK_TASK].apply(args=("job_x", 0, {}))
    return executor


def test_transient_errors_are_retried_until_the_work_succeeds(tmp_path: Path) -> None:
    ex = run(tmp_path, [StorageUnavailable("s3 down"), StorageUnavailable("s3 down")])
    assert ex.calls == 3 and ex.failed == []


def test_transient_errors_fail_the_job_once_retries_run_out(tmp_path: Path) -> None:
    ex = run(tmp_path, [StorageUnavailable("s3 down")] * 5)
    assert ex.calls == 3  # the first try and two retries
    assert [type(e) for e in ex.failed] == [StorageUnavailable]


def test_permanent_errors_fail_the_job_at_once(tmp_path: Path) -> None:
    ex = run(tmp_path, [InvalidInput("bad text")])
    assert ex.calls == 1 and [str(e) for e in ex.failed] == ["bad text"]


def test_a_bug_fails_the_job_as_internal_and_does_not_escape(tmp_path: Path) -> None:
    ex = run(tmp_path, [ZeroDivisionError("oops")])
    assert ex.calls == 1 and ex.failed[0].kind == "internal"
    assert "ZeroDivisionError: oops" in str(ex.failed[0])


def test_a_cancelled_job_is_not_a_failure(tmp_path: Path) -> None:
    ex = run(tmp_path, [JobCancelled("cancelled")])
    assert ex.calls == 1 and ex.failed == []


def test_a_chunk_of_a_deleted_job_is_dropped_without_failing_anything(tmp_path: Path) -> None:
    ex = run(tmp_path, [JobNotFound("job_x")])
    assert ex.calls == 1 and ex.failed == []  # not retried, and no record to fail


@pytest.mark.parametrize(("retries", "expected"), [(0, 2.0), (1, 4.0), (3, 16.0), (20, 300.0)])
def test_backoff_doubles_and_is_capped(retries: int, expected: float, tmp_path: Path) -> None:
    assert backoff_s(load_settings(data_dir=tmp_path), retries) == expected
