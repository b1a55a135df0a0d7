"""The Celery tasks: run one chunk of one job (or, batched, many chunks at once).

A job of N chunks is N ``stoker.run_chunk`` messages on its capability's queue. Fan-in
is counted in the job store: each finished chunk is recorded atomically, and the
worker that records the last one assembles the job in the same task. That is our
"chord": it needs no result backend and works the same on Redis and on SQLite.

This module decides what happens to a task (retry, give up) from the error tree;
the work itself is done by the worker's executor, attached to the app at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from celery import Celery, Task
from celery.exceptions import Reject
from celery.worker.state import task_ready

from stoker.errors import (
    InternalError,
    JobCancelled,
    JobNotFound,
    ModelElsewhere,
    PermanentError,
    StokerError,
    TransientError,
    WorkerStopping,
)
from stoker.queues.app import BATCHED_CHUNK_TASK, QUEUED_AT_HEADER, RUN_CHUNK_TASK

if TYPE_CHECKING:
    from stoker.config import Settings

log = logging.getLogger(__name__)
#: The worker's log line for a job that failed on bad input (`stoker run` drops it: it
#: prints the job's error itself).
JOB_FAILED = "job %s failed: %s"


class Executor(Protocol):
    """What a worker process attaches to the app (see workers/execute.py)."""

    def run_chunk(self, job_id: str, index: int, payload: dict[str, Any]) -> None: ...

    def run_chunks(self, items: list[ChunkArgs]) -> list[BaseException | None]: ...

    def start_chunks(self, items: list[ChunkArgs]) -> Any: ...

    def fail(self, job_id: str, error: StokerError) -> None: ...


#: A chunk task's arguments: job id, chunk index, payload.
ChunkArgs = tuple[str, int, dict[str, Any]]


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


def settle(
    executor: Executor, settings: Settings, args: ChunkArgs, exc: BaseException, retries: int
) -> float | None:
    """Decide what happens to a chunk whose run raised ``exc``: seconds until a retry,
    or None when it is settled (the job failed, or was cancelled)."""
    job_id, index, _ = args
    if isinstance(exc, JobCancelled):
        log.info("job %s chunk %d stopped: cancelled", job_id, index)
    elif isinstance(exc, JobNotFound):  # deleted after it ended: nothing to record
        log.info("job %s chunk %d dropped: the job no longer exists", job_id, index)
    elif isinstance(exc, TransientError):
        if retries < settings.task_max_retries:
            delay = backoff_s(settings, retries)
            log.warning("job %s chunk %d: %s; retrying in %.0fs", job_id, index, exc, delay)
            return delay
        executor.fail(job_id, exc)
    elif isinstance(exc, PermanentError):
        if isinstance(exc, ModelElsewhere):  # not handed on (see hand_on)
            exc = exc.error
        log.warning(JOB_FAILED, job_id, exc)
        executor.fail(job_id, exc)
    else:  # a bug of ours: fail this job, keep the worker serving
        log.error("job %s chunk %d crashed", job_id, index, exc_info=exc)
        executor.fail(job_id, _internal(exc))
    return None


class BatchedChunkTask(Task):
    """``stoker.run_chunk_batched``: chunks that a worker runs many at a time
    (queues/batching.py forms the batches; this runs one)."""

    Strategy = "stoker.queues.batching:batching_strategy"

    def produce_batch(self, requests: list[Any]) -> Callable[[], list[BaseException | None]]:
        """Run the model work of ``requests`` now; return what finishes them."""
        items: list[ChunkArgs] = [tuple(r.args) for r in requests]
        return _executor(self.app).start_chunks(items).finish

    def settle_batch(self, requests: list[Any], outcomes: list[BaseException | None]) -> None:
        """Acknowledge each request, or retry it, or fail its job, from its outcome.

        A request that cannot be settled (its retry cannot be published, or its job's
        failure recorded: the broker or the store is down) goes back to its queue, as
        ``retry_later`` sends a single chunk, and the rest of the batch is settled.
        """
        from stoker.queues.redis_transport import acks_together  # (redis-py: worker only)

        # One round trip for the batch's acks on Redis (see queues/redis_transport.py).
        with acks_together([request.message for request in requests]):
            for request, exc in zip(requests, outcomes, strict=True):
                try:
                    successful = self._settle_one(request, exc)
                except Exception as error:
                    log.warning(
                        "job %s chunk %d could not be settled (%s); it goes back to the broker",
                        *request.args[:2],
                        error,
                    )
                    request.reject(requeue=True)  # (a broker still down: redelivered later)
                    task_ready(request, successful=False)
                    continue
                _acknowledge_now(request)
                task_ready(request, successful=successful)

    def _settle_one(self, request: Any, exc: BaseException | None) -> bool:
        """Retry the chunk of ``request``, or fail its job, or hand it on, from
        ``exc`` (None: it succeeded); True if it succeeded. The caller acks it."""
        args: ChunkArgs = tuple(request.args)
        retries = int(request.request_dict.get("retries") or 0)
        if exc is None or hand_on(self, args, exc, request) or put_back(self, args, exc, request):
            return True  # done, or another worker's now
        delay = settle(_executor(self.app), self.app.stoker_settings, args, exc, retries)
        if delay is not None:
            # What Task.retry does: publish a copy with a countdown, ack this one.
            self.apply_async(
                args=args,
                countdown=delay,
                retries=retries + 1,
                queue=request.delivery_info.get("routing_key"),
                priority=request.delivery_info.get("priority"),
            )
        return False


def hand_on(task: Task, args: ChunkArgs, exc: BaseException, request: Any) -> bool:
    """Send the chunk ``args`` (delivered as ``request``: the task's request, or a
    batched one) on to the queue of a worker that has its model, when ``exc`` says
    this worker lacks it (ModelElsewhere); True if it was sent.

    With FIFO scheduling every worker of a capability takes from one queue, so one
    without a model's files gets that model's jobs too; a worker with the files also
    consumes the model's own queue (steering.candidate_queues), which only such
    workers do. A chunk that came from that queue already is not sent again (the
    worker lost the files since it chose its queues): its job fails, naming the file.
    A copy is published first and the caller then acks this message, as Task.retry
    does: a crash between the two runs the chunk twice, which chunks allow.
    """
    delivery = request.delivery_info or {}
    if not isinstance(exc, ModelElsewhere) or delivery.get("routing_key") == exc.queue:
        return False
    _republish(task, args, request, exc.queue)
    job_id, index, _ = args
    log.info("job %s chunk %d: its model is not here; handed on to %s", job_id, index, exc.queue)
    return True


def put_back(task: Task, args: ChunkArgs, exc: BaseException, request: Any) -> bool:
    """Send the chunk ``args`` back to the queue it came from, to run now on another
    worker, when ``exc`` says this worker is stopping (WorkerStopping); True if sent.

    Not a retry: its retry count and its age in the queue are kept. As for
    :func:`hand_on`, the copy is published before the caller acks this message.
    """
    queue = (request.delivery_info or {}).get("routing_key")
    if not isinstance(exc, WorkerStopping) or not queue:
        return False  # (no queue known: retried as any TransientError)
    retries = int(_headers(request).get("retries") or 0)
    _republish(task, args, request, queue, retries=retries)
    log.info("job %s chunk %d: the worker is stopping; put back on %s", args[0], args[1], queue)
    return True


def _republish(task: Task, args: ChunkArgs, request: Any, queue: str, retries: int = 0) -> None:
    """A copy of the message ``request`` on ``queue``, with its priority and the time
    it was first queued (its age counts from then: the starvation guard)."""
    delivery = request.delivery_info or {}
    headers = _headers(request)
    task.apply_async(
        args=args,
        queue=queue,
        routing_key=queue,
        priority=delivery.get("priority"),
        retries=retries,
        headers={QUEUED_AT_HEADER: headers.get(QUEUED_AT_HEADER) or time.time()},
    )


def _headers(request: Any) -> dict[str, Any]:
    """The message's headers: a batched request's request_dict, a task Context's fields."""
    return dict(getattr(request, "request_dict", None) or vars(request))


def _acknowledge_now(request: Any) -> None:
    """``request.acknowledge()``, sent now rather than on the event loop's next turn.

    With an event loop, Celery's acknowledge only schedules the ack (``hub.call_soon``),
    so it ran after the ``acks_together`` block had closed: one Redis round trip per
    message again. Settling runs on the consumer's own thread (batching.py), the
    thread those scheduled acks would run on, so acking here is what they would do.
    """
    if not request.acknowledged:
        request.message.ack_log_error(log, request.connection_errors)
        request.acknowledged = True


def register_tasks(app: Celery, settings: Settings) -> None:
    # shared=False: a client and an in-process worker are two apps in one process,
    # each with its own settings; a shared task would be bound to the first one only.
    @app.task(name=RUN_CHUNK_TASK, bind=True, shared=False, max_retries=settings.task_max_retries)
    def run_chunk(self: Task, job_id: str, index: int, payload: dict[str, Any]) -> None:
        executor = _executor(self.app)
        args: ChunkArgs = (job_id, index, payload)
        try:
            executor.run_chunk(job_id, index, payload)
        except Exception as exc:
            if hand_on(self, args, exc, self.request) or put_back(self, args, exc, self.request):
                return
            delay = settle(executor, settings, args, exc, self.request.retries)
            if delay is not None:
                retry_later(self, args, exc, delay)

    @app.task(
        name=BATCHED_CHUNK_TASK,
        base=BatchedChunkTask,
        bind=True,
        shared=False,
        max_retries=settings.task_max_retries,
    )
    def run_chunk_batched(self: Task, job_id: str, index: int, payload: dict[str, Any]) -> None:
        # Reached for a retried chunk (an ETA message goes straight to the pool):
        # a batch of one.
        args: ChunkArgs = (job_id, index, payload)
        exc = _executor(self.app).run_chunks([args])[0]
        if exc is None or hand_on(self, args, exc, self.request):
            return
        if put_back(self, args, exc, self.request):
            return
        delay = settle(_executor(self.app), settings, args, exc, self.request.retries)
        if delay is not None:
            retry_later(self, args, exc, delay)


def retry_later(task: Task, args: ChunkArgs, exc: BaseException, delay: float) -> NoReturn:
    """``task.retry`` of the chunk ``args`` in ``delay`` seconds (raises Retry).

    If the retry cannot be published (the broker is down: the usual reason a store
    call failed), Celery rejects the message *without* requeueing it, which drops the
    chunk and leaves its job running forever. Requeue it instead: it goes back on its
    queue once the broker answers, or, if the reject cannot reach the broker either,
    it stays unacknowledged and the broker hands it out again after the visibility
    timeout.
    """
    try:
        raise task.retry(exc=exc, countdown=delay) from exc
    except Reject as rejected:
        if rejected.requeue:
            raise
        log.warning(
            "job %s chunk %d: its retry could not be queued (%s); the chunk goes back "
            "to the broker",
            args[0],
            args[1],
            rejected.reason,
        )
        raise Reject(rejected.reason, requeue=True) from exc


def _internal(exc: BaseException) -> InternalError:
    return InternalError(
        f"internal error ({type(exc).__name__}: {exc}); this is a stoker bug, the worker "
        f"log has the traceback — please report it."
    )
