"""A storage wrapper for tests that count a worker's storage calls and fail some."""

from __future__ import annotations

import threading
from typing import Any

from stoker.config import Settings
from stoker.errors import StorageUnavailable
from stoker.storage import Storage, open_storage
from stoker.workers.execute import ChunkExecutor
from stoker.workers.process import build_executor


def watched_executor(
    settings: Settings, fail_in: str = "no such key"
) -> tuple[ChunkExecutor, WatchedStorage]:
    """A worker's executor whose storage calls are counted (and the writes of keys
    with ``fail_in`` in them refused), with the storage it was given."""
    watched = WatchedStorage(open_storage(settings), fail_in=fail_in)
    return build_executor(settings, "cpu", storage=watched), watched  # type: ignore[arg-type]


class WatchedStorage:
    """``inner`` with its calls counted (by method) and the writes of keys that
    contain ``fail_in`` refused as a storage outage would be."""

    def __init__(self, inner: Storage, fail_in: str = "no such key") -> None:
        self.inner, self.fail_in = inner, fail_in
        self.url, self.remote = inner.url, inner.remote
        self.calls: list[tuple[str, str]] = []  # (method, key)
        self.threads: set[str] = set()
        self.thread_of: dict[tuple[str, str], str] = {}  # (method, key) → last thread
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                call = (name, str(args[0]) if args else "")
                self.calls.append(call)
                self.threads.add(threading.current_thread().name)
                self.thread_of[call] = threading.current_thread().name
            if name.startswith("put") and self.fail_in in str(args[0]):
                raise StorageUnavailable(f"refused by the test: {args[0]}")
            return method(*args, **kwargs)

        return watched

    def keys(self, method: str) -> list[str]:
        """The keys of the calls of ``method``, in order."""
        return [key for called, key in self.calls if called == method]
