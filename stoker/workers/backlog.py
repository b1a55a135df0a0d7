"""Reading the backlog of queues from Redis, cheaply: a few commands per queue per tick.

kombu's Redis transport keeps each queue as one list per priority step: the queue's
own name for priority 0 and ``<name>\\x06\\x16<step>`` for the others (steps 3, 6, 9,
see queues/app.py). Messages are LPUSHed and taken from the right, so the oldest
message of a list is at index -1. One pipeline per tick does, for every list, an
LLEN and an LINDEX -1; the oldest message's age comes from the header the submitter
sets (``stoker_queued_at``). Job records are never read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from stoker.queues import path_queues
from stoker.queues.app import PRIORITY_STEPS, QUEUED_AT_HEADER
from stoker.queues.path_queues import PathQueue
from stoker.workers.scheduler import Backlog

log = logging.getLogger(__name__)

#: kombu's separator between a queue name and its priority step.
KOMBU_PRIORITY_SEP = "\x06\x16"


def priority_keys(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, highest priority first."""
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queued_at(raw: bytes | str | None) -> float | None:
    """The ``stoker_queued_at`` header of a raw kombu message, or None."""
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(QUEUED_AT_HEADER)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


class RedisBacklog:
    """Measures queues on a Redis broker. ``client`` is a redis-py client."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self._client, self._clock = client, clock

    def path_queues(self) -> list[PathQueue]:
        """The path-model queues submitters registered (queues/path_queues.py)."""
        return path_queues.read(self._client)

    def measure(self, queues: Sequence[tuple[str, str | None]]) -> list[Backlog]:
        """One :class:`Backlog` per ``(queue, model)``; raises redis errors as they come."""
        pipe = self._client.pipeline(transaction=False)
        for queue, _ in queues:
            for key in priority_keys(queue):
                pipe.llen(key)
                pipe.lindex(key, -1)
        replies = pipe.execute()
        now = self._clock()
        per_queue = 2 * len(PRIORITY_STEPS)
        out = []
        for i, (queue, model) in enumerate(queues):
            part = replies[i * per_queue : (i + 1) * per_queue]
            waiting = sum(int(n) for n in part[0::2])
            stamps = [t for t in (queued_at(raw) for raw in part[1::2]) if t is not None]
            age = max(0.0, now - min(stamps)) if stamps else 0.0
            out.append(Backlog(queue, model, waiting, age))
        return out
