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
- The buffer runs when it is full, when no request came for ``batch_wait_s`` (at most
  10× that after the first) and no earlier batch is still being finished, and right
  before this worker starts any other task (so a buffered chunk never waits behind a
  long audiobook chunk).
- Messages are acknowledged after their chunk is done (acks late, as for every task);
  a worker that dies with a buffer gets those messages redelivered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from celery.signals import task_prerun
from celery.worker.strategy import default as default_strategy

log = logging.getLogger(__name__)

#: Runs the model work of a batch of Celery requests and returns a function that does
#: the rest (records, artifacts) and returns the per-request outcomes.
Produce = Callable[[list[Any]], Callable[[], list[Any]]]
#: Acknowledges (or retries) every request of a batch given its outcomes.
Settle = Callable[[list[Any], list[Any]], None]


class ChunkBatcher:
    """Buffers the requests of one batched task on one worker; see the module doc.

    ``consumer`` is Celery's worker consumer (its ``qos`` and ``timer`` are used).
    Thread-safe: with a thread-based timer (the SQL broker's loop), the timed flush
    runs on the timer thread while the consumer thread adds requests.

    ``pipelined``: a batch's finishing work (fan-in, assembly, storage writes: about
    as long as the model call for one-sentence embed jobs) runs on a second thread
    while the consumer forms and encodes the next batch. Its requests are settled
    (acknowledged) back on the consumer's thread, when :meth:`settle_finished` runs:
    on each new message, before each flush and on a short timer. Only with an event
    loop (Redis), where that thread is the one that owns the channel.
    """

    def __init__(
        self,
        consumer: Any,
        produce: Produce,
        settle: Settle,
        max_chunks: int,
        wait_s: float,
        *,
        pipelined: bool = False,
    ) -> None:
        self._consumer, self._produce, self._settle = consumer, produce, settle
        self.max_chunks, self.wait_s = max_chunks, wait_s
        self._pending: list[Any] = []
        self._timer: Any = None
        self._first_add = self._last_add = 0.0  # monotonic times, for the timed flush
        self._lock = threading.Lock()  # guards _pending and _timer
        self._flushing = threading.Lock()  # one batch runs at a time
        self._finisher: ThreadPoolExecutor | None = None
        self._finishing = 0  # batches handed to the finisher and not finished yet
        self._finished: queue.SimpleQueue[tuple[list[Any], list[Any] | None]] = queue.SimpleQueue()
        if pipelined:
            self._finisher = ThreadPoolExecutor(1, thread_name_prefix="stoker-finish")
            consumer.timer.call_repeatedly(max(wait_s, 0.02), self.settle_finished)

    def add(self, request: Any) -> None:
        """Buffer ``request``; run the buffer now if it is full."""
        self.settle_finished()
        with self._lock:
            self._pending.append(request)
            # Room for one more message while this one waits (given back once the
            # request is settled).
            self._consumer.qos.increment_eventually()
            self._last_add = time.monotonic()
            if len(self._pending) == 1:
                self._first_add = self._last_add
            full = len(self._pending) >= self.max_chunks
            if not full and self._timer is None:
                self._timer = self._consumer.timer.call_after(self.wait_s, self._timed_flush)
        if full:
            self.flush()

    def _timed_flush(self) -> None:
        """Run the buffer once no request came for ``wait_s`` (or it is 10× that old).

        Waiting for a pause rather than a fixed time keeps batches full while a
        backlog streams in (a busy worker can take longer than ``wait_s`` to receive
        64 messages), and still runs a lone request after ``wait_s``.
        """
        with self._lock:
            self._timer = None
            now = time.monotonic()
            idle, age = now - self._last_add, now - self._first_add
            if self._pending and idle < self.wait_s and age < 10 * self.wait_s:
                self._timer = self._consumer.timer.call_after(self.wait_s - idle, self._timed_flush)
                return
            if self._pending and self._finishing:
                # The last batch is still being finished on the second thread, which
                # holds the GIL most of that time: arrivals look paused when they are
                # only slow, and running now would spend a model call on a few chunks.
                self._timer = self._consumer.timer.call_after(self.wait_s, self._timed_flush)
                return
        self.flush()

    def flush(self) -> None:
        """Run every buffered request as one batch (no-op when empty)."""
        self.settle_finished()
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if not batch:
                return
            try:
                finish = self._produce(batch)
            except Exception:  # produce records per-item errors; this is a bug
                log.exception("batch of %d chunks crashed; their messages are requeued", len(batch))
                self._done(batch, None)
                return
            if self._finisher is None:
                self._done(batch, self._finish(batch, finish))
            else:
                with self._lock:
                    self._finishing += 1
                self._finisher.submit(self._finish_in_background, batch, finish)

    def _finish_in_background(self, batch: list[Any], finish: Callable[[], list[Any]]) -> None:
        """The finishing thread's work: finish ``batch``, queue it to be settled."""
        outcomes = self._finish(batch, finish)
        with self._lock:
            self._finishing -= 1
        self._finished.put((batch, outcomes))

    def settle_finished(self) -> None:
        """Settle the batches the finishing thread is done with (consumer thread)."""
        while True:
            try:
                batch, outcomes = self._finished.get_nowait()
            except queue.Empty:
                return
            self._done(batch, outcomes)

    @staticmethod
    def _finish(batch: list[Any], finish: Callable[[], list[Any]]) -> list[Any] | None:
        try:
            return finish()
        except Exception:
            log.exception("finishing a batch of %d chunks crashed; requeued", len(batch))
            return None

    def _done(self, batch: list[Any], outcomes: list[Any] | None) -> None:
        try:
            if outcomes is None:  # a bug of ours: let another try
                for request in batch:
                    request.reject(requeue=True)
            else:
                self._settle(batch, outcomes)
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
        consumer,
        task.produce_batch,
        task.settle_batch,
        settings.batch_max_chunks,
        settings.batch_wait_s,
        # Only an event loop runs timers on the consumer's own thread (see class doc).
        pipelined=getattr(consumer, "hub", None) is not None,
    )
    app.stoker_batchers = [*getattr(app, "stoker_batchers", []), batcher]

    def flush_before_other_tasks(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.app is app and sender.name != task.name:
            batcher.flush()

    task_prerun.connect(flush_before_other_tasks, weak=False)
    return default_strategy(task, app, _BufferingConsumer(consumer, batcher.add), **kwargs)
