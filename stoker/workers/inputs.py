"""A bounded on-disk cache of job inputs on this worker.

A 3-hour recording is split into many chunks; without a cache every chunk task would
download the whole file again. Inputs are stored under content-addressed keys
(``inputs/<dd>/<sha256>.<ext>``), so a cached copy is always the right bytes.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from stoker.errors import ObjectNotFound
from stoker.storage import Storage

log = logging.getLogger(__name__)


class InputCache:
    """Local copies of storage keys under ``root``, at most ``max_bytes`` in total.

    Least recently used files are removed first when a new one would not fit.
    """

    def __init__(self, storage: Storage, root: Path, max_bytes: int) -> None:
        self.storage, self.root, self.max_bytes = storage, root, max_bytes
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """A local path holding the object at ``key``; downloads it on a miss.

        Raises ObjectNotFound, saying what to do, when the input is not in storage.
        """
        path = self.root / key
        with self._lock:
            if path.is_file():
                os.utime(path)  # mark as recently used
                return path
            try:
                size = self.storage.stat(key).size_bytes
            except ObjectNotFound as exc:
                raise ObjectNotFound(
                    f"the job's input {key} is no longer in storage ({self.storage.url}): "
                    f"it was deleted, or swept by `stoker prune --inputs` while the job "
                    f"was being submitted; submit the job again."
                ) from exc
            self._make_room(size)
            self.storage.download(key, path)
        log.info("cached input %s (%.1f MiB)", key, size / 2**20)
        return path

    def _make_room(self, incoming: int) -> None:
        files = sorted(
            (p for p in self.root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        used = sum(p.stat().st_size for p in files)
        for old in files:
            if used + incoming <= self.max_bytes:
                break
            used -= old.stat().st_size
            old.unlink(missing_ok=True)
