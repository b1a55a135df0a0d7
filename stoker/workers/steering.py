"""Applying the scheduler's choices to a running Celery worker, and its heartbeat.

:class:`Steering` knows which queues this worker could serve (each served
capability's plain queue, and one per catalog model of that capability's backend),
reads their backlog every ``scheduler_interval_s``, asks workers/scheduler.py which
to consume, and changes the consumer with ``add_task_queue`` / ``cancel_task_queue``
(Celery's documented way, also behind ``app.control.add_consumer``; remote control
is not needed because the change is made in-process).

The tick runs on the consumer's timer. With the Redis transport that timer is
driven by the worker's event loop, i.e. the same thread that consumes and (solo
pool) runs the tasks, so the consumer is changed between tasks, never during one.
kombu defers a cancel that races a pending read until the read completes, and a
message it then delivers for a cancelled queue is put back. The embedded SQLite
broker has no event loop (its timer is a thread), so there the worker consumes
every queue ("fifo") and the steering only publishes heartbeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from celery import bootsteps
from celery.signals import task_postrun

from stoker.config import Settings
from stoker.jobs import CAPABILITIES
from stoker.queues.app import model_queue
from stoker.workers.catalog import ModelCatalog
from stoker.workers.execute import ChunkExecutor
from stoker.workers.fleet import Fleet, ModelBeat, PoolBeat, WorkerBeat
from stoker.workers.scheduler import Backlog, Choice, Policy, View, choose

log = logging.getLogger(__name__)

#: A heartbeat record outlives this many missed beats.
BEAT_TTL_FACTOR = 5
BEAT_INTERVAL_S = 2.0


def candidate_queues(kinds: Iterable[str], catalog: ModelCatalog) -> list[tuple[str, str | None]]:
    """``(queue, model)`` for every queue a worker serving ``kinds`` could consume."""
    out: list[tuple[str, str | None]] = []
    specs = catalog.all()
    for kind in kinds:
        out.append((kind, None))
        backend = getattr(CAPABILITIES.get(kind), "backend", None)
        if backend is not None:
            queues = [(model_queue(kind, s.name), s.name) for s in specs if s.backend == backend]
            # A model configured under its path shares the plain queue (model_queue).
            out += [(q, name) for q, name in queues if q != kind]
    return out


class Steering:
    """One worker's queue choice and heartbeat; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        executor: ChunkExecutor,
        kinds: Iterable[str],
        *,
        fleet: Fleet,
        probe: Any | None,
        hostname: str,
    ) -> None:
        self.settings, self.executor, self.fleet = settings, executor, fleet
        self.hostname = hostname
        self.candidates = candidate_queues(kinds, executor.catalog)
        self._specs = {s.name: s for s in executor.catalog.all()}
        self._probe = probe  # None: fifo (consume every candidate queue)
        self.policy = Policy(settings.scheduler_max_wait_s, settings.scheduler_share_backlog)
        self.consuming: frozenset[str] = frozenset(self.initial_queues())
        self.switches = 0
        self._last_target: str | None = None
        self._probe_failed = False
        self._last_beat = 0.0

    @property
    def mode(self) -> str:
        return "backlog" if self._probe is not None else "fifo"

    def initial_queues(self) -> list[str]:
        """What the worker consumes at start: plain queues (backlog) or all (fifo)."""
        if self._probe is None:
            return [q for q, _ in self.candidates]
        return [q for q, m in self.candidates if m is None]

    def fits(self, model: str) -> bool:
        spec = self._specs.get(model)
        if spec is None:
            return False
        manager, device = self.executor.manager, self.executor.device
        return manager.estimate(spec, device) <= manager.budget_bytes(device)

    def decide(self) -> Choice | None:
        """The scheduler's choice now; None when the backlog cannot be read."""
        if self._probe is None:
            return None
        try:
            backlogs: list[Backlog] = self._probe.measure(self.candidates)
            others = self._served_elsewhere()
        except Exception as exc:  # broker away: keep consuming what we consume
            if not self._probe_failed:
                log.warning("cannot read the queues' backlog (%s); keeping the queues", exc)
            self._probe_failed = True
            return None
        self._probe_failed = False
        held = self.executor.manager.held(self.executor.device)
        return choose(View(backlogs, held, self.fits, others), self.policy)

    def _served_elsewhere(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for beat in self.fleet.workers():
            if beat.hostname != self.hostname:
                for q in beat.queues:
                    counts[q] = counts.get(q, 0) + 1
        return counts

    def tick(self, consumer: Any) -> None:
        """Apply the current choice to ``consumer``; publish a heartbeat when due."""
        try:
            choice = self.decide()
            if choice is not None:
                self.apply(consumer, choice)
        except Exception:  # a bug here must not stop the worker: keep the queues
            log.exception("scheduler tick failed; consuming %s", sorted(self.consuming))
        if time.monotonic() - self._last_beat >= BEAT_INTERVAL_S:
            self.beat()

    def apply(self, consumer: Any, choice: Choice) -> None:
        add = choice.queues - self.consuming
        drop = self.consuming - choice.queues
        for queue in sorted(drop):
            consumer.cancel_task_queue(queue)
        for queue in sorted(add):
            consumer.add_task_queue(queue, routing_key=queue)
        if choice.target is not None and choice.target != self._last_target and add:
            self.switches += 1
            log.info("scheduler: now serving %s (%s)", choice.target, choice.reason)
            self._last_target = choice.target
        self.consuming = choice.queues

    def beat(self) -> None:
        """Publish this worker's heartbeat (no-op without a shared fleet)."""
        self._last_beat = time.monotonic()
        try:
            ttl = max(BEAT_INTERVAL_S, self.settings.scheduler_interval_s) * BEAT_TTL_FACTOR
            self.fleet.publish(self.snapshot(), ttl)
        except Exception as exc:
            log.debug("heartbeat not published: %s", exc)

    def snapshot(self) -> WorkerBeat:
        now, mono = time.time(), time.monotonic()
        self.executor.manager.budget_bytes(self.executor.device)  # list the pool before a load
        pools = [
            PoolBeat(
                device=p.device,
                budget_bytes=p.budget_bytes,
                used_bytes=p.used_bytes,
                hits=p.hits,
                misses=p.misses,
                loads=p.loads,
                evictions=p.evictions,
                models=[
                    ModelBeat(
                        name=m.name,
                        footprint_bytes=m.footprint_bytes,
                        last_used_at=now - (mono - m.last_used_at),
                        uses=m.uses,
                        pinned=m.pinned,
                    )
                    for m in p.models
                ],
            )
            for p in self.executor.manager.stats()
        ]
        return WorkerBeat(
            hostname=self.hostname,
            device=self.executor.device,
            scheduling=self.mode,
            queues=sorted(self.consuming),
            pools=pools,
            at=now,
        )


class SteeringStep(bootsteps.StartStopStep):
    """Consumer bootstep: runs :meth:`Steering.tick` on the consumer's timer.

    Restarted with the consumer (after a broker connection loss), so the timer entry
    is made again; the queues added before stay selected in ``app.amqp.queues``.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None
        self._after_task: Any = None

    def start(self, parent: Any) -> None:
        steering: Steering | None = getattr(parent.app, "stoker_steering", None)
        if steering is None:
            return
        steering.consuming = frozenset(q.name for q in parent.task_consumer.queues)
        steering.tick(parent)
        interval = steering.settings.scheduler_interval_s
        self._entry = parent.timer.call_repeatedly(interval, steering.tick, (parent,))

        # Also right after each task (the solo pool runs it on the consumer's thread):
        # the task that emptied the held model's queue is followed by a switch at once.
        def after_task(sender: Any = None, **_: Any) -> None:
            if sender is not None and sender.app is parent.app:
                steering.tick(parent)

        self._after_task = after_task
        task_postrun.connect(after_task, weak=False)

    def stop(self, parent: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None
        if self._after_task is not None:
            task_postrun.disconnect(self._after_task)
            self._after_task = None

    shutdown = stop
