"""The one Celery task: run one chunk of one job.

A job of N chunks is N ``stoker.run_chunk`` messages on its capability's queue. Fan-in
is counted in the job store: each finished chunk is recorded atomically, and the
worker that records the last one assembles the job in the same task. That is our
"chord": it needs no result backend and works the same on Redis and on SQLite.

This module decides what happens to a task (retry, give up) from the error tree;
the work itself is done by the worker's executor, attached to the app at start-up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery, Task

from stoker.errors import (
    InternalError,
    JobCancelled,
    PermanentError,
    StokerError,
    TransientError,
)
from stoker.queues.app import RUN_CHUNK_TASK

if TYPE_CHECKING:
    from stoker.config import Settings

log = logging.getLogger(__name__)


class Executor(Protocol):
    """What a worker process attaches to the app (see workers/execute.py)."""

    def run_chunk(self, job_id: str, index: int, payload: dict[str, Any]) -> None: ...

    def fail(self, job_id: str, error: StokerError) -> None: ...


def attach_executor(app: Celery, executor: Executor) -> None:
    app.stoker_executor = executor


def _executor(app: Celery) -> Executor:
    executor: Executor | None = getattr(app, "stoker_executor", None)
    if executor is None:
        raise RuntimeError("this process is not a stoker worker: start one with `stoker worker`")
    return executor


def backoff_s(settings: Settings, retries: int) -> float:
    """Exponential backoff: base × 2^retries, capped."""
    return min(settings.retry_backoff_s * (2**retries), settings.retry_backoff_max_s)


def register_tasks(app: Celery, settings: Settings) -> None:
    # shared=False: a client and an in-process worker are two apps in one process,
    # each with its own settings; a shared task would be bound to the first one only.
    @app.task(name=RUN_CHUNK_TASK, bind=True, shared=False, max_retries=settings.task_max_retries)
    def run_chunk(self: Task, job_id: str, index: int, payload: dict[str, Any]) -> None:
        executor = _executor(self.app)
        try:
            executor.run_chunk(job_id, index, payload)
        except JobCancelled:
            log.info("job %s chunk %d stopped: cancelled", job_id, index)
        except TransientError as exc:
            if self.request.retries >= settings.task_max_retries:
                executor.fail(job_id, exc)
                return
            delay = backoff_s(settings, self.request.retries)
            log.warning("job %s chunk %d: %s; retrying in %.0fs", job_id, index, exc, delay)
            raise self.retry(exc=exc, countdown=delay) from exc
        except PermanentError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            executor.fail(job_id, exc)
        except Exception as exc:  # a bug of ours: fail this job, keep the worker serving
            log.exception("job %s chunk %d crashed", job_id, index)
            executor.fail(job_id, _internal(exc))


def _internal(exc: Exception) -> InternalError:
    return InternalError(
        f"internal error ({type(exc).__name__}: {exc}); this is a stoker bug, the worker "
        f"log has the traceback — please report it."
    )
