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
- On Redis, once a queue's first message is buffered, the channel pops the rest of a
  batch from that queue in one round trip (see ``room``) instead of one message per
  round trip; the prefetch count catches up as each is buffered.
- With an event loop (Redis) the batch runs on a model thread and is finished on a
  third thread while the consumer goes on receiving (see ``pipelined``); the consumer
  waits only when the model thread still holds the previous batch.
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

    ``pipelined``: three stages on three threads, one batch in each at a time. The
    consumer's thread receives messages and forms the next batch; the *model thread*
    runs the batch before it at the model; the *finishing thread* does the fan-in,
    assembly and storage writes of the one before that (for one-sentence embed jobs
    about as long as the model call). Receiving a message is a Redis round trip or
    two and Python work per message, ~30 % of a batch's time when it waited for the
    model: overlapped, one worker drained one-sentence embed jobs ~1.25× faster on 2
    cores (0.57× → 0.72× of plain batch 64, docs/benchmarks.md). Requests are
    settled (acknowledged) back on the consumer's thread, when :meth:`settle_finished`
    runs: on each new message, before each flush and on a short timer. Only with an
    event loop (Redis), where that thread is the one that owns the channel.
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
        self._producer: ThreadPoolExecutor | None = None  # the model thread
        self._finisher: ThreadPoolExecutor | None = None
        self._model_free = threading.Semaphore(1)  # no batch at the model (pipelined)
        self._finishing = 0  # batches handed to the threads and not finished yet
        self._finished: queue.SimpleQueue[tuple[list[Any], list[Any] | None]] = queue.SimpleQueue()
        self._bulk_queues: set[str] = set()  # queues whose messages come in bulk (see room)
        if pipelined:
            self._producer = ThreadPoolExecutor(1, thread_name_prefix="stoker-model")
            self._finisher = ThreadPoolExecutor(1, thread_name_prefix="stoker-finish")
            consumer.timer.call_repeatedly(max(wait_s, 0.02), self.settle_finished)

    def add(self, request: Any) -> None:
        """Buffer ``request``; run the buffer now if it is full."""
        self.settle_finished()
        if self._producer is not None:
            self._take_in_bulk(request)
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

    def _take_in_bulk(self, request: Any) -> None:
        """Let the channel ``request`` came on hand this batcher many messages of its
        queue at once (stoker's Redis transport: queues/redis_transport.py)."""
        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
        channel: Any = getattr(getattr(request, "message", None), "channel", None)
        if queue is None or queue in self._bulk_queues or not hasattr(channel, "take_more"):
            return
        self._bulk_queues.add(queue)
        channel.take_more = self.room

    def room(self, queue: str) -> int:
        """How many more messages of ``queue`` this batcher wants now, beyond the one
        being delivered: what fills the buffer (0 for a queue it has not seen)."""
        if queue not in self._bulk_queues:
            return 0
        with self._lock:
            return max(0, self.max_chunks - len(self._pending) - 1)

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
                # An earlier batch is still at the model or being finished; the
                # finishing thread holds the GIL most of that time: arrivals look
                # paused when they are only slow, and running now would spend a model
                # call on a few chunks.
                self._timer = self._consumer.timer.call_after(self.wait_s, self._timed_flush)
                return
        self.flush()

    def flush(self) -> None:
        """Run every buffered request as one batch (no-op when empty).

        Pipelined, the batch is handed to the model thread and this returns at once,
        unless that thread is still running the last batch: then it waits for it.
        """
        self.settle_finished()
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if not batch:
                return
            if self._producer is None:
                finish = self._produce_or_none(batch)
                if finish is not None:
                    self._done(batch, self._finish(batch, finish))
                return
            self._model_free.acquire()  # one batch at the model at a time
            with self._lock:
                self._finishing += 1
            self._producer.submit(self._produce_in_background, batch)

    def drain(self) -> None:
        """Run the buffer and wait until no batch is at the model (consumer thread):
        before this worker runs another task, which may want the model's memory."""
        self.flush()
        if self._producer is not None:
            with self._model_free:  # acquired once the model thread let go
                pass
        self.settle_finished()

    def close(self) -> None:
        """Wait for the batches at the model and being finished (worker shutdown: the
        models are unloaded next). Their messages are not settled any more: the broker
        redelivers them, and their chunks' outputs are found."""
        for pool in (self._producer, self._finisher):  # in this order: one feeds the next
            if pool is not None:
                pool.shutdown(wait=True)

    def _produce_or_none(self, batch: list[Any]) -> Callable[[], list[Any]] | None:
        """``produce(batch)``; None, the batch to be requeued, if it crashes."""
        try:
            return self._produce(batch)
        except Exception:  # produce records per-item errors; this is a bug
            log.exception("batch of %d chunks crashed; their messages are requeued", len(batch))
            if self._producer is None:
                self._done(batch, None)
            else:  # settled on the consumer's thread, like every pipelined batch
                self._finished.put((batch, None))
            return None

    def _produce_in_background(self, batch: list[Any]) -> None:
        """The model thread's work: run ``batch`` at the model, then hand it to the
        finishing thread, so the model can take the next batch meanwhile."""
        try:
            finish = self._produce_or_none(batch)
        finally:
            self._model_free.release()
        if finish is None:
            with self._lock:
                self._finishing -= 1
            return
        assert self._finisher is not None
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
            batcher.drain()

    task_prerun.connect(flush_before_other_tasks, weak=False)
    # "Received task" goes to DEBUG: an INFO line per one-sentence job is noise in the
    # log and was a visible share of the per-job cost; batches log a line each.
    kwargs.setdefault("info", log.debug)
    return default_strategy(task, app, _BufferingConsumer(consumer, batcher.add), **kwargs)
