"""Worker-side batching: many chunk messages, one model call.

Some capabilities (embed) are fast per item and far faster per batch: a sentence
model encodes 64 sentences in about the time of 16 single ones. Their users send
one small job per request, so the batch must be formed on the worker, across jobs.

How it works, inside Celery's own consumer (no second queueing system):

- A batchable capability's chunks are sent as ``stoker.run_chunk_batched`` (same
  queue). That task's *strategy* — the function Celery calls for each message it
  receives — is :func:`batching_strategy`: Celery's default strategy with one change,
  a received request goes into a :class:`ChunkBatcher` instead of the pool.
- The worker keeps ``prefetch = 1`` for everything else. While a request waits in the
  buffer, the batcher raises the channel's prefetch by one, so the next message can
  arrive; when the buffer is run, it lowers it again. So a worker holds at most
  ``batch_max_chunks`` extra messages, and only while it is forming a batch.
- The buffer runs when it is full, after ``batch_wait_s`` without filling, and right
  before this worker starts any other task (so a buffered chunk never waits behind a
  long audiobook chunk).
- Messages are acknowledged after their chunk is done (acks late, as for every task);
  a worker that dies with a buffer gets those messages redelivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import task_prerun
from celery.worker.strategy import default as default_strategy

log = logging.getLogger(__name__)

#: Runs a batch of Celery requests; must acknowledge (or retry) every one.
RunBatch = Callable[[list[Any]], None]


class ChunkBatcher:
    """Buffers the requests of one batched task on one worker; see the module doc.

    ``consumer`` is Celery's worker consumer (its ``qos`` and ``timer`` are used).
    Thread-safe: with a thread-based timer (the SQL broker's loop), the timed flush
    runs on the timer thread while the consumer thread adds requests.
    """

    def __init__(self, consumer: Any, run: RunBatch, max_chunks: int, wait_s: float) -> None:
        self._consumer, self._run = consumer, run
        self.max_chunks, self.wait_s = max_chunks, wait_s
        self._pending: list[Any] = []
        self._timer: Any = None
        self._lock = threading.Lock()  # guards _pending and _timer
        self._flushing = threading.Lock()  # one batch runs at a time

    def add(self, request: Any) -> None:
        """Buffer ``request``; run the buffer now if it is full."""
        with self._lock:
            self._pending.append(request)
            # Room for one more message while this one waits (restored in flush).
            self._consumer.qos.increment_eventually()
            full = len(self._pending) >= self.max_chunks
            if not full and self._timer is None:
                self._timer = self._consumer.timer.call_after(self.wait_s, self.flush)
        if full:
            self.flush()

    def flush(self) -> None:
        """Run every buffered request as one batch (no-op when empty)."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if not batch:
                return
            try:
                self._run(batch)
            except Exception:  # the run function settles each request; this is a bug
                log.exception("batch of %d chunks crashed; their messages are requeued", len(batch))
                for request in batch:
                    request.reject(requeue=True)
            finally:
                self._consumer.qos.decrement_eventually(len(batch))

    def __len__(self) -> int:
        return len(self._pending)


class _BufferingConsumer:
    """The consumer as Celery's default strategy sees it, with ``on_task_request``
    (hand a request to the pool) replaced by the batcher's ``add``."""

    def __init__(self, consumer: Any, add: Callable[[Any], None]) -> None:
        self._consumer = consumer
        self.on_task_request = add

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def batching_strategy(task: Any, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery strategy of a batched task: requests go to a ChunkBatcher.

    Everything else (message decoding, revocation, ETA retries, worker state) is
    Celery's default strategy. A retried request (it has an ETA) reaches the pool
    through the real consumer and runs as a batch of one.
    """
    settings = app.stoker_settings
    batcher = ChunkBatcher(
        consumer, task.run_batch, settings.batch_max_chunks, settings.batch_wait_s
    )
    app.stoker_batchers = [*getattr(app, "stoker_batchers", []), batcher]

    def flush_before_other_tasks(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is app and sender.name != task.name:
            batcher.flush()

    task_prerun.connect(flush_before_other_tasks, weak=False)
    return default_strategy(task, app, _BufferingConsumer(consumer, batcher.add), **kwargs)
