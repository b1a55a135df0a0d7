"""Applying the scheduler's choices to a running Celery worker, and its heartbeat.

:class:`Steering` knows which queues this worker could serve (each served
capability's plain queue, one per catalog model of that capability's backend, and
the registered queues of models named by a path it has: workers/path_models.py),
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
every queue ("fifo") and the steering does not change queues.

The heartbeat (:meth:`Steering.heartbeat`) runs on a thread of its own, so it goes on
while a chunk runs. The same thread publishes the model cards of the served models,
and of those the served capabilities borrow (audiobook's Whisper), whose files are
here (workers/cards.py), and ends the process when a chunk is stuck past its time
limit (workers/watchdog.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import bootsteps
from celery.signals import task_postrun, task_prerun

from stoker.config import Settings
from stoker.jobs import CAPABILITIES, installed_module
from stoker.jobs.base import BorrowsModels
from stoker.queues.app import BATCHED_CHUNK_TASK, RUN_CHUNK_TASK, model_queue, queue_kind
from stoker.workers.cards import CardPublisher
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.execute import ChunkExecutor
from stoker.workers.fleet import Fleet, ModelBeat, PoolBeat, WorkerBeat
from stoker.workers.path_models import PathModels
from stoker.workers.scheduler import Backlog, Choice, Policy, View, choose
from stoker.workers.watchdog import RunningChunk, end_stuck_chunk, is_stuck

log = logging.getLogger(__name__)

#: A heartbeat record outlives this many missed beats.
BEAT_TTL_FACTOR = 5
#: How long a beat waits for the model manager, which is busy for a whole load.
BEAT_STATS_WAIT_S = 0.2
#: How often a worker checks which configured models' files are on its machine.
FILES_RECHECK_S = 10.0


#: The tasks whose ``(job_id, index, payload)`` a heartbeat reports as running.
CHUNK_TASKS = frozenset({RUN_CHUNK_TASK, BATCHED_CHUNK_TASK})

#: ``(queue, model)``: a queue a worker could consume, and the model of its jobs.
Candidate = tuple[str, str | None]


def candidate_queues(kinds: Iterable[str], catalog: ModelCatalog) -> list[Candidate]:
    """``(queue, model)`` for every queue a worker serving ``kinds`` could consume."""
    out: list[Candidate] = []
    specs = catalog.all()
    for kind in kinds:
        out.append((kind, None))
        backend = getattr(CAPABILITIES.get(kind), "backend", None)
        if backend is not None:
            queues = [(model_queue(kind, s.name), s.name) for s in specs if s.backend == backend]
            out += queues
    return out


def borrowed_models(kinds: Iterable[str], catalog: ModelCatalog) -> list[str]:
    """Catalog models that the capabilities ``kinds`` borrow (jobs/base.BorrowsModels)
    and whose engine imports here, by name."""
    backends: set[str] = set()
    for kind in kinds:
        cap = CAPABILITIES.get(kind)
        if isinstance(cap, BorrowsModels):
            backends |= {backend for backend, module in cap.borrows if installed_module(module)}
    return sorted(s.name for s in catalog.all() if s.backend in backends)


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
        kinds = list(kinds)
        catalog = executor.catalog
        self._every = candidate_queues(kinds, catalog)
        self._specs = {s.name: s for s in catalog.all()}
        # name → fingerprint, read once: names of the same files and options are one
        # model to the manager, so holding one of them holds the others (_held).
        self._fingerprints = {s.name: s.fingerprint for s in self._specs.values()}
        # The catalog models of the served capabilities, whose files are checked here.
        self._served_models = sorted({m for _, m in self._every if m})
        # Whose cards it publishes: those and the models the served capabilities
        # borrow (audiobook's Whisper); the catalog is fixed, so worked out once.
        carded = {*self._served_models, *borrowed_models(kinds, catalog)}
        self._card_specs = [self._specs[name] for name in sorted(carded)]
        self.candidates: list[Candidate] = []
        self._gone: dict[str, str] = {}  # model whose files are not here → one of them
        self._files_checked_at = float("-inf")
        self._check_files()
        self.paths = PathModels(kinds, executor.catalog)
        self._path_specs: dict[str, ModelSpec] = {}
        self._orphans_logged: set[str] = set()
        self._registry_read_at = float("-inf")
        self._probe = probe  # None: fifo (consume every candidate queue)
        self.policy = Policy(settings.scheduler_max_wait_s, settings.scheduler_share_backlog)
        self.consuming: frozenset[str] = frozenset(self.initial_queues())
        self.switches = 0
        self._last_target: str | None = None
        self._probe_failed = False
        # What the heartbeat thread reads: replaced whole, never changed in place.
        self._served_paths: tuple[str, ...] = ()
        self._pools: list[PoolBeat] = []
        # The chunk this worker runs now and since when, set by SteeringStep: the
        # heartbeat reports it, the watchdog times it.
        self.running: RunningChunk | None = None
        self._beat_now = threading.Event()  # set: the heartbeat thread beats at once
        self._cards = CardPublisher(fleet, FILES_RECHECK_S)

    def _check_files(self) -> None:
        """Split the catalog models' queues by whether their files are on this machine.

        A configured model whose files are not here (one config for the fleet, the
        model on the GPU box only) is left to a worker that has them, as a path model
        is: not a candidate, not in the heartbeat's ``serves``; its jobs are failed
        here only as orphans (:meth:`_orphans`). Run again every FILES_RECHECK_S, so
        a model copied in (or deleted) is noticed. Files are stat'ed, never read.
        """
        catalog = self.executor.catalog
        gone = {}
        for name in self._served_models:
            missing = catalog.missing_files(self._specs[name])
            if missing:
                gone[name] = str(missing[0])
        for name in sorted(gone.keys() - self._gone.keys()):
            log.info("model %s is not here (%s): leaving its jobs to others", name, gone[name])
        for name in sorted(self._gone.keys() - gone.keys()):
            log.info("model %s is here now: taking its jobs", name)
        for name in gone.keys() ^ self._gone.keys():  # file sizes are in the fingerprint
            self._fingerprints[name] = self._specs[name].fingerprint
        self._gone = gone
        self.candidates = [(q, m) for q, m in self._every if m not in gone]
        self._files_checked_at = time.monotonic()

    def elsewhere(self, kind: str, model: str | None) -> str | None:
        """The queue of ``model``'s ``kind`` jobs when another live worker serves it
        (it has the model's files: workers list only those), else None. Asked by the
        executor about a model it cannot find here (ChunkExecutor.elsewhere), so
        FIFO's shared queue does not fail jobs a worker with the files would run."""
        queue = model_queue(kind, model)
        if queue == kind or not self.fleet.shared:
            return None
        try:
            beats = self.fleet.workers()
        except Exception as exc:  # Redis away: fail as without a fleet
            log.warning("cannot read the heartbeats to hand %s on: %s", queue, exc)
            return None
        return (
            queue if any(queue in b.serves for b in beats if b.hostname != self.hostname) else None
        )

    @property
    def mode(self) -> str:
        return "backlog" if self._probe is not None else "fifo"

    def initial_queues(self) -> list[str]:
        """What the worker consumes at start: plain queues (backlog) or all (fifo)."""
        if self._probe is None:
            return [q for q, _ in self.candidates]
        return [q for q, m in self.candidates if m is None]

    def _spec(self, model: str) -> ModelSpec | None:
        """The spec of a model this worker could serve, named in its catalog or by path."""
        return self._specs.get(model) or self._path_specs.get(model)

    def fits(self, model: str) -> bool:
        spec = self._spec(model)
        if spec is None:
            return False
        manager, device = self.executor.manager, self.executor.device
        return manager.estimate(spec, device) <= manager.budget_bytes(device)

    def _fits_elsewhere(self, beats: list[WorkerBeat]) -> Callable[[Backlog], bool]:
        """Whether one of the live workers ``beats`` serves a queue's capability (and,
        for a model named by path, has its file) with a budget the model fits, as
        this worker estimates it (the other's device kind may measure it a little
        differently)."""

        def fits(backlog: Backlog) -> bool:
            spec = self._spec(backlog.model or "")
            if spec is None:
                return False
            need = self.executor.manager.estimate(spec, self.executor.device)
            kind, by_path = queue_kind(backlog.queue), backlog.queue in self.paths.servable
            return any(
                kind in beat.queues
                and (not by_path or backlog.queue in beat.paths)
                and any(p.device == beat.device and p.budget_bytes >= need for p in beat.pools)
                for beat in beats
            )

        return fits

    def decide(self) -> Choice | None:
        """The scheduler's choice now; None when the backlog cannot be read."""
        if self._probe is None:
            return None
        try:
            if time.monotonic() - self._registry_read_at >= self.settings.scheduler_interval_s:
                # Ticks also run after every task; the registry changes far less often.
                self.paths.update(self._probe.path_queues())
                self._served_paths = tuple(sorted(self.paths.servable))
                self._registry_read_at = time.monotonic()
            if time.monotonic() - self._files_checked_at >= FILES_RECHECK_S:
                self._check_files()
            servable, lacking = self._path_candidates()
            backlogs: list[Backlog] = self._probe.measure(self.candidates + servable + lacking)
            beats = [b for b in self.fleet.workers() if b.hostname != self.hostname]
        except Exception as exc:  # broker away: keep consuming what we consume
            if not self._probe_failed:
                log.warning("cannot read the queues' backlog (%s); keeping the queues", exc)
            self._probe_failed = True
            return None
        self._probe_failed = False
        split = len(backlogs) - len(lacking)
        served, unservable = backlogs[:split], backlogs[split:]
        held = self._held()
        others = Counter(q for b in beats for q in b.queues)  # workers on each queue
        choice = choose(
            View(served, held, self.fits, others, self._fits_elsewhere(beats)), self.policy
        )
        # A queue is held by a live worker that has its model's files, or consumes it.
        holders = Counter(q for b in beats for q in {*b.paths, *b.serves, *b.queues})
        orphans = self._orphans(unservable, holders)
        if orphans:
            choice = Choice(choice.queues | orphans, choice.reason, choice.target)
        return choice

    def _held(self) -> frozenset[str]:
        """The names of the models loaded here, with every other name for them."""
        held = self.executor.manager.held(self.executor.device)
        prints = {self._fingerprints[n] for n in held if n in self._fingerprints}
        return held | {n for n, fp in self._fingerprints.items() if fp in prints}

    def _path_candidates(self) -> tuple[list[Candidate], list[Candidate]]:
        """Path-model queues as (queue, model): those this worker can serve (the model
        named as its spec, which held/fits know) and those whose file it lacks."""
        known = {q for q, _ in self.candidates}
        self._path_specs = {s.name: s for s in self.paths.servable.values()}
        for name, spec in self._path_specs.items():
            if name not in self._fingerprints:
                self._fingerprints[name] = spec.fingerprint
        servable: list[Candidate] = [
            (q, s.name) for q, s in self.paths.servable.items() if q not in known
        ]
        lacking: list[Candidate] = [(q, None) for q in self.paths.lacking if q not in known]
        return servable, lacking + [(q, m) for q, m in self._every if m in self._gone]

    def _orphans(self, backlogs: list[Backlog], holders: dict[str, int]) -> frozenset[str]:
        """Queues of models whose files this worker lacks (named by path, or configured
        with files elsewhere) that no live worker holds, waiting past the orphan limit:
        this worker takes them so their jobs fail with the error that names the file,
        instead of waiting for a worker that may never come."""
        wait = self.settings.scheduler_orphan_wait_s
        orphans = frozenset(
            b.queue
            for b in backlogs
            if b.waiting and b.oldest_age_s >= wait and not holders.get(b.queue)
        )
        configured = {q: f"{m} ({self._gone[m]})" for q, m in self._every if m in self._gone}
        for queue in orphans - self._orphans_logged:
            log.warning(
                "no live worker has model %s, wanted by %s for %.0f s: failing those jobs here",
                self.paths.lacking.get(queue) or configured.get(queue, "?"), queue, wait,
            )  # fmt: skip
        self._orphans_logged = set(orphans)
        return orphans

    def tick(self, consumer: Any) -> None:
        """Apply the current choice to ``consumer``."""
        try:
            choice = self.decide()
            if choice is not None:
                self.apply(consumer, choice)
        except Exception:  # a bug here must not stop the worker: keep the queues
            log.exception("scheduler tick failed; consuming %s", sorted(self.consuming))

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
        if add or drop:  # other workers decide from this: tell them now, not next beat
            self._beat_now.set()

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Publish this worker's heartbeat every ``heartbeat_s`` on a thread of its own
        for the duration of the ``with`` block.

        Not from :meth:`tick`: the solo pool runs each chunk on the consumer's thread,
        so beats from there would stop while a chunk runs (a long generation, a book's
        chapter), and the worker would look gone: off `stoker models --loaded`, and its
        path-model jobs failed as orphans by a worker without the file. A change of the
        consumed queues (:meth:`apply`) is published at once.
        """
        stopping = False

        def loop() -> None:
            while not stopping:
                self.watch()
                self.publish_cards()
                self.beat()
                self._beat_now.wait(self.settings.heartbeat_s)
                self._beat_now.clear()

        thread = threading.Thread(target=loop, name="stoker-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopping = True
            self._beat_now.set()
            thread.join(timeout=5)

    def watch(self) -> None:
        """End this process if its chunk is stuck past the time limit (watchdog.py)."""
        limit, chunk = self.settings.chunk_time_limit_s, self.running
        if chunk is not None and is_stuck(chunk, limit):
            end_stuck_chunk(
                chunk, limit, self.executor.fail, leave=lambda: self.fleet.leave(self.hostname)
            )

    def publish_cards(self) -> None:
        """Publish the model cards of the served and borrowed models whose files are
        here, when they changed (checked every FILES_RECHECK_S): a machine that submits
        without the files checks requests with them (workers/cards.py). Before the beat
        that names them. No-op without a shared fleet."""
        if not self.fleet.shared:
            return
        try:
            self._cards.refresh(self._card_specs, self.executor.catalog.pending_split)
        except Exception as exc:
            log.debug("model cards not published: %s", exc)

    def beat(self) -> None:
        """Publish this worker's heartbeat (no-op without a shared fleet)."""
        try:
            ttl = self.settings.heartbeat_s * BEAT_TTL_FACTOR
            self.fleet.publish(self.snapshot(), ttl)
        except Exception as exc:
            log.debug("heartbeat not published: %s", exc)

    def snapshot(self) -> WorkerBeat:
        now, mono = time.time(), time.monotonic()
        manager = self.executor.manager
        stats = manager.stats_unless_loading(self.executor.device, BEAT_STATS_WAIT_S)
        if stats is not None:  # else a model is loading: the pools as last seen
            self._pools = [
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
                for p in stats
            ]
        return WorkerBeat(
            hostname=self.hostname,
            device=self.executor.device,
            scheduling=self.mode,
            queues=sorted(self.consuming),
            serves=[q for q, _ in self.candidates],
            paths=list(self._served_paths),
            pools=self._pools,
            running=running.label if (running := self.running) else None,
            running_since=running.since if running else None,
            cards=dict(self._cards.ids),
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
        self._before_task: Any = None

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
                steering.running = None
                steering.tick(parent)

        # What the heartbeat says this worker is running (`stoker models --loaded`).
        def before_task(sender: Any = None, args: Any = (), **_: Any) -> None:
            if sender is not None and sender.app is parent.app and sender.name in CHUNK_TASKS:
                steering.running = RunningChunk(str(args[0]), int(args[1]))

        self._after_task, self._before_task = after_task, before_task
        task_postrun.connect(after_task, weak=False)
        task_prerun.connect(before_task, weak=False)

    def stop(self, parent: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None
        if self._after_task is not None:
            task_postrun.disconnect(self._after_task)
            task_prerun.disconnect(self._before_task)
            self._after_task = self._before_task = None

    shutdown = stop
