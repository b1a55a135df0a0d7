"""A worker inside the current process, for `stoker run`: one machine, nothing to start.

It is a real Celery worker (solo pool) consuming the same queues through the same
broker as `stoker worker`, only on a thread of this process, so the model stays warm
for the whole run and no interpreter start-up or model load is paid twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery.worker import WorkController

from stoker.config import Settings
from stoker.queues import tasks
from stoker.workers.execute import ChunkExecutor
from stoker.workers.process import keep_alive, node_name, worker_app
from stoker.workers.steering import candidate_queues

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


def _without_job_failures(record: logging.LogRecord) -> bool:
    """Drop the worker's "job X failed: why" line: the caller follows the job and
    prints its error once, as `error: job X failed: why`. Retries and crashes stay."""
    return record.msg is not tasks.JOB_FAILED


@contextmanager
def inprocess_worker(
    settings: Settings, queues: Sequence[str], device: str = "cpu"
) -> Iterator[ChunkExecutor]:
    """Run a worker on a daemon thread for the duration of the ``with`` block."""
    app, executor = worker_app(settings, device)
    app.finalize()
    ready = threading.Event()
    worker = WorkController(
        app=app,
        pool="solo",
        concurrency=1,
        # Each capability's plain and per-model queues, all at once (a one-job worker).
        queues=[q for q, _ in candidate_queues(queues, executor.catalog)],
        hostname=node_name(device) + "-inprocess",
        loglevel="WARNING",
        ready_callback=lambda *_: ready.set(),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )

    def serve() -> None:
        app.set_current()  # Celery's current app is per thread; the pool looks tasks up there
        worker.start()

    thread = threading.Thread(target=serve, name="stoker-worker", daemon=True)
    thread.start()
    if not ready.wait(_START_TIMEOUT_S):
        raise RuntimeError("the in-process worker did not start; is the broker reachable?")
    tasks_log = logging.getLogger(tasks.__name__)
    tasks_log.addFilter(_without_job_failures)
    try:
        with keep_alive(executor, settings):
            yield executor
    finally:
        tasks_log.removeFilter(_without_job_failures)
        worker.stop()
        thread.join(_STOP_TIMEOUT_S)
        executor.manager.unload_all()
        executor.store.close()
