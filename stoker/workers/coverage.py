"""Which live workers could take a queue's jobs: the answer to "why is my job still
queued?".

A queue's jobs wait for a live worker that could consume it: one whose heartbeat
(workers/fleet.py) lists the queue among those it serves (``serves``: its
capabilities' queues and their catalog models'; ``paths``: the path-model queues
whose file it has). A queue nobody lists waits for a worker that is not there: no
worker runs that capability, or none has that model in its catalog. `stoker status`
and `stoker wait` say so for a queued job, `stoker doctor` for every queue with work.

Needs a Redis broker (to count what waits) and a Redis job store (heartbeats); with
the embedded SQLite broker the worker is this machine's own and :func:`cover` gives
None.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stoker.config import Settings
from stoker.queues.app import model_queue, queue_kind
from stoker.queues.path_queues import is_path_model
from stoker.workers.fleet import RedisFleet, WorkerBeat


@dataclass(frozen=True)
class QueueCover:
    """One queue now: what waits on it, and who could take it."""

    queue: str
    model: str | None  # of its jobs; None on a capability's own queue
    waiting: int  # chunk messages on it
    oldest_age_s: float  # how long the oldest of them has waited
    able: tuple[str, ...]  # live workers that could consume it
    consuming: tuple[str, ...]  # of those, the ones consuming it now
    kind_served: bool  # whether any live worker runs its capability at all

    @property
    def kind(self) -> str:
        return queue_kind(self.queue)

    @property
    def served(self) -> bool:
        """Whether some live worker could take this queue's work."""
        return bool(self.able)

    def describe(self, settings: Settings) -> str:
        """What waits on this queue, who takes it, and what to do, in one line."""
        return f"queue {self.queue}: {self.backlog()}; {self.advice(settings)}"

    def advice(self, settings: Settings, *, hostnames: bool = True) -> str:
        """Who takes this queue's work and, if nobody does, what to start."""
        fix = self.fix()
        return self.who(settings, hostnames=hostnames) + (f"; {fix}." if fix else ".")

    def backlog(self) -> str:
        age = f", the oldest for {self.oldest_age_s:.0f} s" if self.waiting else ""
        return f"{self.waiting} chunk(s) waiting{age}"

    def who(self, settings: Settings, *, hostnames: bool = True) -> str:
        """Who takes this queue's work, or why nobody does; ``hostnames``: name the
        workers (not to API callers, who are not told the fleet's machines)."""
        if self.consuming:
            return f"taken by {_names(self.consuming, hostnames)}"
        if self.able:
            return (
                f"{_names(self.able, hostnames)} can take it but now serve other models' queues; a "
                f"worker switches to it when the work of the model it holds runs out, or "
                f"once its oldest job has waited scheduler_max_wait_s "
                f"({settings.scheduler_max_wait_s:.0f} s)"
            )
        if self.kind_served and self.model:
            return f"nobody takes it: live workers run {self.kind}, but none has {self.model}"
        return f"nobody takes it: no live worker runs {self.kind}"

    def fix(self) -> str:
        """What starts a worker that takes it; "" when one could."""
        if self.able:
            return ""
        if self.model is None:
            where = ""
        elif is_path_model(self.model):
            where = f" on a machine that has the file {self.model}"
        else:
            where = (
                f" on a machine with {self.model} in its catalog and its files "
                f"(`stoker models` there says ok)"
            )
        return f"start one with `stoker worker --queues {self.kind}`{where}"


def _names(hosts: Sequence[str], hostnames: bool = True) -> str:
    counted = f"{len(hosts)} live worker{'s' if len(hosts) != 1 else ''}"
    if not hostnames:
        return counted
    shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
    return f"{counted} ({shown})"


def could_take(beat: WorkerBeat, queue: str) -> bool:
    """Whether the worker of ``beat`` could consume ``queue``."""
    return queue in beat.serves or queue in beat.paths or queue in beat.queues


@functools.cache
def _redis(url: str) -> Any:
    """One client (one connection pool) per URL for the process's life: the API asks
    on every read of a queued job and every model list."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


def _fleet(settings: Settings) -> RedisFleet | None:
    """The shared fleet, or None with the embedded job store (no heartbeats)."""
    if not settings.state_url.startswith(("redis://", "rediss://")):
        return None
    return RedisFleet(_redis(settings.state_url))


def live_beats(settings: Settings) -> list[WorkerBeat] | None:
    """The live workers' heartbeats; None where there are none to read (the embedded
    job store) or Redis cannot be reached: a hint is then left out, not an error."""
    fleet = _fleet(settings)
    if fleet is None:
        return None
    try:
        return fleet.workers()
    except Exception:
        return None


def capabilities_run(beats: Sequence[WorkerBeat]) -> set[str]:
    """The capabilities some of ``beats``' workers consume or could consume."""
    return {queue_kind(q) for beat in beats for q in [*beat.serves, *beat.queues]}


def workers_serving(beats: Sequence[WorkerBeat], model: str, kinds: Sequence[str]) -> int:
    """How many of ``beats``' workers could take jobs of ``kinds`` on ``model``: they
    have its files and serve one of those capabilities."""
    queues = {model_queue(kind, model) for kind in kinds}
    return sum(1 for beat in beats if queues & {*beat.serves, *beat.queues})


def cover(settings: Settings, queues: Sequence[tuple[str, str | None]]) -> list[QueueCover] | None:
    """One :class:`QueueCover` per ``(queue, model)``, or None where no heartbeats or
    backlog can be read (the embedded broker or job store). Raises redis errors."""
    fleet = _fleet(settings)
    if fleet is None or not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    from stoker.workers.backlog import RedisBacklog

    backlogs = RedisBacklog(_redis(settings.broker_url)).measure(list(queues))
    beats = fleet.workers()
    out = []
    for backlog in backlogs:
        able = tuple(b.hostname for b in beats if could_take(b, backlog.queue))
        kind = queue_kind(backlog.queue)
        out.append(
            QueueCover(
                queue=backlog.queue,
                model=backlog.model,
                waiting=backlog.waiting,
                oldest_age_s=backlog.oldest_age_s,
                able=able,
                consuming=tuple(b.hostname for b in beats if backlog.queue in b.queues),
                kind_served=any(could_take(b, kind) for b in beats),
            )
        )
    return out
