"""What the running API holds: settings, one Stoker client, its own store, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stoker.api.meta import MetaStore
from stoker.api.metrics import ApiMetrics
from stoker.client import Stoker
from stoker.config import Settings


class OncePerKey:
    """Work that outlasts a request (an OpenAI batch's output files), on background
    threads: one run per key at a time, and a caller asking while a key's run is on
    gets that run to wait on instead of a second one."""

    def __init__(self, threads: int = 2) -> None:
        # Threads start on first use.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="stoker-api-bg")
        self._runs: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def running(self, key: str) -> Future[Any] | None:
        with self._lock:
            return self._runs.get(key)

    def start(self, key: str, fn: Callable[[], Any]) -> Future[Any]:
        """``fn`` on a background thread, unless ``key``'s run is on: then that run."""
        with self._lock:
            if key in self._runs:
                return self._runs[key]
            run = self._runs[key] = self._pool.submit(fn)
        run.add_done_callback(lambda _: self._forget(key))
        return run

    def _forget(self, key: str) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def close(self) -> None:
        """Wait for the runs that started (they use the stores about to close)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class ApiState:
    settings: Settings
    stoker: Stoker
    meta: MetaStore
    metrics: ApiMetrics
    # kind → (depth, when measured): queue depth is read at most once a second per kind.
    _depths: dict[str, tuple[int, float]] = field(default_factory=dict)
    background: OncePerKey = field(default_factory=OncePerKey)

    def queue_depth(self, kind: str) -> int:
        """Messages waiting on ``kind``'s queue (all priorities), cached for 1 s."""
        cached = self._depths.get(kind)
        now = time.monotonic()
        if cached is not None and now - cached[1] < 1.0:
            return cached[0]
        depth = measure_depth(self.stoker, kind)
        self._depths[kind] = (depth, now)
        return depth

    def queued(self, kind: str, chunks: int) -> None:
        """Count ``chunks`` just queued on ``kind`` until the next measurement."""
        cached = self._depths.get(kind)
        if cached is not None:
            self._depths[kind] = (cached[0] + chunks, cached[1])


def measure_depth(stoker: Stoker, kind: str) -> int:
    """Messages waiting for ``kind``: on its own queue and on its per-model queues
    (``<kind>.m.<model>``, one per catalog model of its backend).

    kombu's passive declare gives the count on any transport (Redis sums the queue's
    priority lists; the SQL transport counts rows); a queue nothing was ever sent to
    does not exist yet and counts 0.
    """
    from stoker.workers.steering import candidate_queues

    total = 0
    with stoker.app.connection_for_read() as conn:
        channel = conn.default_channel
        for queue, _ in candidate_queues([kind], stoker.catalog):
            try:
                total += int(channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors:
                continue
    return total
