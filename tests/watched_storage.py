"""A storage wrapper for tests that count a worker's storage calls and fail some."""

from __future__ import annotations

import threading
from typing import Any

from stoker.errors import StorageUnavailable
from stoker.storage import Storage


class WatchedStorage:
    """``inner`` with its calls counted (by method) and the writes of keys that
    contain ``fail_in`` refused as a storage outage would be."""

    def __init__(self, inner: Storage, fail_in: str) -> None:
        self.inner, self.fail_in = inner, fail_in
        self.url, self.remote = inner.url, inner.remote
        self.calls: list[tuple[str, str]] = []  # (method, key)
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((name, str(args[0]) if args else ""))
                self.threads.add(threading.current_thread().name)
            if name.startswith("put") and self.fail_in in str(args[0]):
                raise StorageUnavailable(f"refused by the test: {args[0]}")
            return method(*args, **kwargs)

        return watched
