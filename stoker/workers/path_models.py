"""Which path-model queues this worker can serve: the ones whose model file it has.

Submitters record every queue of a model named by path in Redis
(queues/path_queues.py). At each scheduler tick the worker hands the registry to
:meth:`PathModels.update`, which sorts the queues of the capabilities it serves into
*servable* (the model's files exist here: a candidate like a catalog model's queue,
with warm-model scheduling) and *lacking* (they do not: this worker leaves that work
to a worker that has the file). Files are stat'ed, never read: once when a queue is
first seen, then every ``recheck_s`` (a model copied onto the worker later is picked
up; one deleted is dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from stoker.errors import StokerError
from stoker.jobs import CAPABILITIES
from stoker.queues.path_queues import PathQueue
from stoker.workers.catalog import ModelCatalog, ModelSpec

log = logging.getLogger(__name__)


class PathModels:
    """The path queues of this worker's capabilities, split by whether it has the file."""

    def __init__(
        self,
        kinds: Iterable[str],
        catalog: ModelCatalog,
        *,
        recheck_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kinds = frozenset(kinds)
        self._catalog = catalog
        self._recheck_s, self._clock = recheck_s, clock
        self.servable: dict[str, ModelSpec] = {}  # queue → the spec to load
        self.lacking: dict[str, str] = {}  # queue → the path this worker does not have
        self._checked_at = float("-inf")

    def update(self, entries: Iterable[PathQueue]) -> None:
        """Sort newly registered queues now, and all of them every ``recheck_s``."""
        now = self._clock()
        recheck = now - self._checked_at >= self._recheck_s
        if recheck:
            self._checked_at = now
        for entry in entries:
            if entry.kind not in self._kinds:
                continue
            if not recheck and (entry.queue in self.servable or entry.queue in self.lacking):
                continue
            self._sort(entry)

    def _sort(self, entry: PathQueue) -> None:
        backend = getattr(CAPABILITIES.get(entry.kind), "backend", None)
        try:
            spec = self._catalog.get(entry.model, backend=backend)
        except StokerError:  # the file is not here (or not usable as this backend)
            if entry.queue not in self.lacking:
                log.info("model %s is not here: leaving %s to others", entry.model, entry.queue)
            self.servable.pop(entry.queue, None)
            self.lacking[entry.queue] = entry.model
            return
        if entry.queue not in self.servable:
            log.info("serving %s from %s", entry.queue, spec.path)
        self.lacking.pop(entry.queue, None)
        self.servable[entry.queue] = spec
