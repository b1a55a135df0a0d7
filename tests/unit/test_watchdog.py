"""A chunk's time limit (chunk_time_limit_s): the check a running chunk makes
(workers/execute.py) and the watchdog for one that makes none (workers/watchdog.py).
With a fake clock and store; tests/integration/test_chunk_limit.py runs both for real."""

from __future__ import annotations

from typing import Any

import pytest

from stoker.errors import ChunkTimedOut, StokerError, TransientError, WorkerStopping
from stoker.queues.records import JobState
from stoker.workers import execute, watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RunningStore:
    def state(self, job_id: str) -> JobState:
        return JobState.RUNNING


def test_a_chunk_past_its_limit_is_stopped_at_its_next_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(execute.time, "monotonic", clock)
    check = execute._CancelCheck(RunningStore(), "job_x", 2, limit_s=60)  # type: ignore[arg-type]
    clock.now += 59
    assert check() is False
    clock.now += 1
    with pytest.raises(ChunkTimedOut) as stopped:
        check()
    assert str(stopped.value).startswith(
        "chunk 3 of job job_x ran for more than 60 s and was stopped"
    )
    assert stopped.value.kind == "timed_out"
    # And without a limit it never is
    endless = execute._CancelCheck(RunningStore(), "job_x", 2, limit_s=None)  # type: ignore[arg-type]
    clock.now += 10**6
    assert endless() is False


def test_a_chunk_of_a_stopping_worker_stops_once_the_grace_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(execute.time, "monotonic", clock)
    told: list[float] = []
    check = execute._CancelCheck(
        RunningStore(),  # type: ignore[arg-type]
        "job_x",
        0,
        limit_s=None,
        stopping=lambda: told[0] if told else None,
        stop_grace_s=30,
    )
    # Not told to stop: it runs on
    clock.now += 10**4
    assert check() is False
    # Told to stop (SIGTERM): it may finish within the grace
    told.append(clock.now)
    clock.now += 29.9
    assert check() is False
    # Past it, its next check puts it back (a transient error: not its job's failure)
    clock.now += 0.1
    with pytest.raises(WorkerStopping) as stopped:
        check()
    assert str(stopped.value) == (
        "chunk 1 of job job_x was still running 30 s after its worker was told to stop "
        "(stop_grace_s); it goes back to its queue."
    )
    assert isinstance(stopped.value, TransientError)


def test_the_watchdog_fails_a_stuck_chunks_job_then_ends_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(watchdog.time, "monotonic", clock)
    chunk = watchdog.RunningChunk("job_x", 0, started=clock.now)
    # Given a 100 s limit: the grace is 10 s (5 % would be 5)
    assert watchdog.stuck_after_s(100) == 110 and watchdog.stuck_after_s(3000) == 3150
    clock.now += 109.9
    assert not watchdog.is_stuck(chunk, 100)
    clock.now += 0.1
    assert watchdog.is_stuck(chunk, 100)
    assert not watchdog.is_stuck(chunk, 0) and not watchdog.is_stuck(None, 100)

    failed: list[tuple[str, StokerError]] = []
    steps: list[object] = []
    exits: list[int] = []

    def exit_process(status: int) -> None:
        steps.append("exit")
        exits.append(status)

    watchdog.end_stuck_chunk(
        chunk, 100, lambda j, e: failed.append((j, e)), lambda: steps.append("leave"), exit_process
    )
    assert [j for j, _ in failed] == ["job_x"] and exits == [watchdog.EXIT_STUCK]
    assert steps == ["leave", "exit"]  # it leaves the fleet first
    assert "did not stop at its next check, so its worker process exits" in str(failed[0][1])

    # And with the store away it still exits (the redelivered chunk runs again)
    def away(job_id: str, error: StokerError) -> Any:
        raise ConnectionError("Redis is away")

    watchdog.end_stuck_chunk(chunk, 100, away, lambda: away("", failed[0][1]), exits.append)
    assert exits == [watchdog.EXIT_STUCK] * 2


def test_the_running_chunk_says_what_the_heartbeat_shows() -> None:
    chunk = watchdog.RunningChunk("job_x", 4)
    assert chunk.label == "job_x chunk 5"
