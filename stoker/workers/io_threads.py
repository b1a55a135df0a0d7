"""Storage calls that do not depend on each other, side by side on remote storage.

On S3 each call is a network round trip: a batch of one-sentence embed jobs makes two
per job, an assembly one per chunk and per artifact, an audiobook's chapters a few
each. Made one after another, their latencies add up; on these threads they overlap.
On local storage they run in order on the calling thread: threads there measured
slower, competing with the model for the CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Threads per worker process: within botocore's connection pool of 10.
IO_THREADS = 8
IO_THREAD_PREFIX = "stoker-io"


class StorageIO:
    """Runs a function over items: on the I/O threads when storage is remote."""

    def __init__(self, remote: bool, threads: int = IO_THREADS) -> None:
        self.remote = remote
        # Threads start on first use, so local storage never starts one.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=IO_THREAD_PREFIX)

    def each(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R | Exception]:
        """``fn`` of each item, in order; an item whose call raised gets its exception
        as its result. Called on an I/O thread (a batch's job being assembled there),
        it runs in place: waiting there on the same threads could leave none to do
        the work."""

        def call(item: _T) -> _R | Exception:
            try:
                return fn(item)
            except Exception as exc:
                return exc

        if len(items) <= 1 or not self.remote or on_io_thread():
            return [call(item) for item in items]
        return list(self._pool.map(call, items))

    def close(self) -> None:
        """Let the threads that started go; no call may be made after."""
        self._pool.shutdown(wait=False)

    def all(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``fn`` of each item as :meth:`each` runs them; raises the first error."""
        done: list[_R] = []
        for result in self.each(fn, items):
            if isinstance(result, Exception):
                raise result
            done.append(result)
        return done


def on_io_thread() -> bool:
    """Whether the caller runs on one of the I/O threads."""
    return threading.current_thread().name.startswith(IO_THREAD_PREFIX)
