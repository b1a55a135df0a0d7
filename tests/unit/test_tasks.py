"""What happens to a chunk task when its work raises: retry, give up, or stop.

A unit test of queues/tasks.py with a fake executor and Celery's eager mode; the real
path (worker processes on Redis) is covered by tests/integration/test_speak_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError

from stoker.config import load_settings
from stoker.errors import (
    InvalidInput,
    JobCancelled,
    JobNotFound,
    ModelElsewhere,
    StokerError,
    StorageUnavailable,
    UnknownModel,
    WorkerStopping,
)
from stoker.queues.app import BATCHED_CHUNK_TASK, QUEUED_AT_HEADER, RUN_CHUNK_TASK, make_celery
from stoker.queues.tasks import (
    attach_executor,
    backoff_s,
    hand_on,
    put_back,
    retry_later,
    settle,
)


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


class RecordingTask:
    """The part of a Celery task that hand_on uses: what it would publish."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def apply_async(self, **options: Any) -> None:
        self.sent.append(options)


class Delivered:
    """A batched chunk's request as Celery hands it over: where it came from."""

    def __init__(self, queue: str, headers: dict[str, Any]) -> None:
        self.delivery_info = {"routing_key": queue, "priority": 3}
        self.request_dict = headers


def test_a_chunk_whose_model_a_live_worker_has_is_handed_on_once(tmp_path: Path) -> None:
    args = ("job_x", 0, {})
    missing = UnknownModel("tiny", [])
    elsewhere = ModelElsewhere("generate.m.tiny", missing)
    task = RecordingTask()

    # From the capability's shared queue: sent to the model's own, keeping its
    # priority and the time it was first queued
    assert hand_on(task, args, elsewhere, Delivered("generate", {QUEUED_AT_HEADER: 12.5}))  # type: ignore[arg-type]
    assert task.sent == [
        {"args": args, "queue": "generate.m.tiny", "routing_key": "generate.m.tiny",
         "priority": 3, "retries": 0, "headers": {QUEUED_AT_HEADER: 12.5}}
    ]  # fmt: skip
    # From the model's own queue (this worker lost the files): not sent again
    assert not hand_on(task, args, elsewhere, Delivered("generate.m.tiny", {}))  # type: ignore[arg-type]
    # Nor for any other error
    assert not hand_on(task, args, missing, Delivered("generate", {}))  # type: ignore[arg-type]
    assert len(task.sent) == 1

    # And one not handed on fails its job with the error it wraps
    executor = FakeExecutor([])
    settings = load_settings(data_dir=tmp_path)
    assert settle(executor, settings, args, elsewhere, retries=0) is None
    assert executor.failed == [missing]


class Running:
    """A running task's request (Celery's Context): where it came from, its retries."""

    def __init__(self, queue: str | None, retries: int, queued_at: float) -> None:
        self.delivery_info = {"routing_key": queue, "priority": 5}
        self.retries = retries
        setattr(self, QUEUED_AT_HEADER, queued_at)


def test_a_chunk_of_a_stopping_worker_is_put_back_on_its_queue_as_it_was() -> None:
    args = ("job_x", 4, {"text": "hi"})
    stopping = WorkerStopping("job_x", 4, 240)
    task = RecordingTask()

    # Sent back to the queue it came from, with its retries and first-queued time
    assert put_back(task, args, stopping, Running("speak", 2, 99.5))  # type: ignore[arg-type]
    assert task.sent == [
        {"args": args, "queue": "speak", "routing_key": "speak", "priority": 5,
         "retries": 2, "headers": {QUEUED_AT_HEADER: 99.5}}
    ]  # fmt: skip
    # A batched chunk's request carries them in its request_dict
    batched = Delivered("embed", {"retries": 3, QUEUED_AT_HEADER: 7.0})
    assert put_back(task, args, stopping, batched)  # type: ignore[arg-type]
    assert (task.sent[-1]["retries"], task.sent[-1]["headers"]) == (3, {QUEUED_AT_HEADER: 7.0})
    # Nothing for any other error, or when the queue is unknown (then it is retried)
    assert not put_back(task, args, UnknownModel("tiny", []), Running("speak", 0, 1.0))  # type: ignore[arg-type]
    assert not put_back(task, args, stopping, Running(None, 0, 1.0))  # type: ignore[arg-type]
    assert len(task.sent) == 2


class RetryingTask:
    """A task whose retry raises as Celery's does: Retry when the copy is published,
    Reject(requeue=False) when the broker refuses it."""

    def __init__(self, published: bool) -> None:
        self.published = published

    def retry(self, exc: BaseException, countdown: float) -> Retry:
        if not self.published:
            raise Reject(ConnectionError("Connection refused"), requeue=False)
        raise Retry(exc=exc, when=countdown)


def test_a_retry_the_broker_refuses_requeues_the_chunk_instead_of_dropping_it() -> None:
    args, down = ("job_x", 1, {}), StorageUnavailable("the store is down")
    # Published: Celery's Retry, as before
    with pytest.raises(Retry):
        retry_later(RetryingTask(published=True), args, down, 2.0)  # type: ignore[arg-type]
    # Refused (the broker is down too): the message is requeued, never dropped
    with pytest.raises(Reject) as rejected:
        retry_later(RetryingTask(published=False), args, down, 2.0)  # type: ignore[arg-type]
    assert rejected.value.requeue is True


class BatchedRequest:
    """A batched chunk's request as settle_batch sees it: acked or rejected once."""

    def __init__(self, index: int) -> None:
        self.id, self.args = f"task-{index}", ["job_x", index, {}]
        self.request_dict: dict[str, Any] = {"retries": 0}
        self.delivery_info = {"routing_key": "embed", "priority": 0}
        self.message, self.acknowledged, self.connection_errors = self, False, ()
        self.settled: str | None = None

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.settled = "acked"

    def reject(self, requeue: bool) -> None:
        self.settled, self.acknowledged = f"rejected requeue={requeue}", True


class StoreDown(FakeExecutor):
    def fail(self, job_id: str, error: StokerError) -> None:
        raise StorageUnavailable("the job store is down")


def test_a_batch_requeues_a_chunk_it_cannot_settle_and_settles_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of four chunks on a worker whose broker and store just went down:
    # two succeeded, one must be retried, one failed for good
    app = make_celery(load_settings(data_dir=tmp_path))
    attach_executor(app, StoreDown([]))
    task = app.tasks[BATCHED_CHUNK_TASK]

    def refused(**_: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(task, "apply_async", refused)
    requests = [BatchedRequest(i) for i in range(4)]
    outcomes = [None, StorageUnavailable("down"), InvalidInput("bad line"), None]
    # When the batch is settled
    task.settle_batch(requests, outcomes)  # type: ignore[attr-defined]
    # Then the retry that cannot be published and the failure that cannot be recorded
    # go back to the broker, and the chunks that succeeded are acknowledged
    assert [r.settled for r in requests] == [
        "acked", "rejected requeue=True", "rejected requeue=True", "acked"
    ]  # fmt: skip
