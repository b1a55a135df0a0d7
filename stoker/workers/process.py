"""The worker process: one per device, Celery's solo pool, models warm in this process.

Why the solo pool: the task runs in the process that holds the model manager, so a
model loaded once serves every later chunk, and CUDA is initialised only here (it is
not fork-safe). Parallelism comes from more worker processes, one per device.

Which queues it consumes changes at run time (workers/steering.py): with
``scheduling = "backlog"`` on Redis it keeps taking the work of the model it holds,
then switches deliberately (workers/scheduler.py); otherwise it consumes every queue.

Shutdown: SIGTERM (or Ctrl-C) is Celery's warm shutdown: the running chunk finishes
and is acknowledged, unless it is still running ``stop_grace_s`` later: then it stops
at its next check and its message goes back to its queue for another worker, before
the service manager's SIGKILL. SIGKILL loses the process, not the chunk: its message
was never acknowledged, so the broker redelivers it to another worker (on Redis, after
``visibility_timeout_s``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

from stoker.config import Settings
from stoker.errors import ConfigError, InvalidInput, TransientError
from stoker.jobs import CAPABILITIES, installed, installed_module
from stoker.queues.app import make_celery, steers_by_backlog
from stoker.queues.stores import open_job_store
from stoker.queues.tasks import attach_executor
from stoker.storage import Storage, open_storage
from stoker.workers.catalog import ModelCatalog, guess_backend, looks_like_path
from stoker.workers.execute import ChunkExecutor
from stoker.workers.fleet import Fleet, open_fleet
from stoker.workers.manager import ModelManager
from stoker.workers.memory import check_device, parse_device
from stoker.workers.steering import Steering, SteeringStep

log = logging.getLogger(__name__)


def build_executor(
    settings: Settings, device: str, fleet: Fleet | None = None, storage: Storage | None = None
) -> ChunkExecutor:
    """The executor of a worker for ``device``; ``storage`` replaces the configured one."""
    parse_device(device)  # refuse "gpu" or "cuda:x" before anything starts
    return ChunkExecutor(
        settings=settings,
        store=open_job_store(settings),
        storage=storage or open_storage(settings),
        catalog=ModelCatalog(settings),
        manager=ModelManager(settings, fleet=fleet),
        device=device,
    )


def check_worker(queues: Sequence[str], device: str) -> None:
    """Refuse to start a worker that would fail the jobs it takes: a queue that is no
    capability, one whose engines are not installed here, a GPU that is not there.

    Raises InvalidInput for an unknown queue, ConfigError for the others.
    """
    for name in queues:
        cap = CAPABILITIES.get(name)
        if cap is None:
            known = ", ".join(sorted(CAPABILITIES))
            raise InvalidInput(f"unknown queue {name!r} in --queues; the queues are: {known}.")
        missing = [(module, extra) for module, extra in cap.engines if not installed_module(module)]
        if missing:
            module, extra = missing[0]
            raise ConfigError(
                f"this machine cannot run {name} jobs: the {module!r} module is not "
                f"installed. Install it with `pip install 'stoker[{extra}]'`, or leave "
                f"{name} out of --queues."
            )
    check_device(device)


#: A key no job uses: asking for it tells whether storage answers at all.
STORAGE_PROBE_KEY = "probes/worker-start"


def check_storage(storage: Storage) -> None:
    """Refuse to start a worker whose storage is misconfigured (a bucket that does
    not exist, credentials S3 refuses): it would fail every job at its first write.
    One request. Storage that is only down right now does not stop the start: its
    tasks retry until it is back."""
    try:
        storage.exists(STORAGE_PROBE_KEY)
    except ConfigError:
        raise
    except TransientError as exc:
        log.warning("storage does not answer yet (%s); starting anyway", exc)


def default_queues() -> list[str]:
    """Every capability whose engines are installed on this machine."""
    return sorted(kind for kind, cap in CAPABILITIES.items() if installed(cap))


def preload(executor: ChunkExecutor, names: Sequence[str]) -> None:
    """Load models before taking work, so the first job does not pay for the load."""
    for name in names:
        backend = None
        if looks_like_path(name) and name not in executor.catalog.names():
            # A model named by path, as jobs name it: absolute, backend from its shape.
            name = executor.catalog.resolve(name)
            backend = guess_backend(Path(name))
            if backend is None:
                raise InvalidInput(
                    f"--preload {name}: cannot tell which backend this model is for (a .gguf, "
                    f"a Piper .onnx, or a diffusers, sentence-transformers or CTranslate2 "
                    f"Whisper folder); add it under [models.NAME] with its backend and "
                    f"preload NAME"
                )
        spec = executor.catalog.get(name, backend=backend)
        with executor.manager.use(spec, executor.device):
            log.info("preloaded %s on %s", name, executor.device)


def _keep_alive_loop(executor: ChunkExecutor, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        for name in executor.manager.evict_idle():
            log.info("unloaded idle model %s", name)


@contextmanager
def keep_alive(executor: ChunkExecutor, settings: Settings) -> Iterator[None]:
    """Unload models idle longer than ``settings.keep_alive_s`` (if set) in the background."""
    if settings.keep_alive_s is None:
        yield
        return
    stop = threading.Event()
    interval = max(1.0, settings.keep_alive_s / 4)
    thread = threading.Thread(
        target=_keep_alive_loop,
        args=(executor, interval, stop),
        name="stoker-keep-alive",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()


def node_name(device: str) -> str:
    return f"stoker-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"


def worker_app(
    settings: Settings, device: str, fleet: Fleet | None = None
) -> tuple[Celery, ChunkExecutor]:
    app = make_celery(settings)
    # Celery's pools look tasks up on the *current* app; in `stoker run` the client's
    # app lives in the same process, so the worker's must be made current explicitly.
    app.set_current()
    executor = build_executor(settings, device, fleet)
    attach_executor(app, executor)
    return app, executor


def backlog_probe(settings: Settings) -> Any | None:
    """What reads queue backlogs for the scheduler; None means consume every queue."""
    if not steers_by_backlog(settings):
        return None
    import redis

    from stoker.workers.backlog import RedisBacklog

    return RedisBacklog(redis.Redis.from_url(settings.broker_url, socket_timeout=5))


def steer(
    app: Celery,
    settings: Settings,
    executor: ChunkExecutor,
    kinds: Sequence[str],
    hostname: str,
    fleet: Fleet,
) -> Steering:
    """Attach a :class:`Steering` to ``app`` (run by its consumer bootstep)."""
    steering = Steering(
        settings, executor, kinds, fleet=fleet, probe=backlog_probe(settings), hostname=hostname
    )
    app.stoker_steering = steering
    executor.elsewhere = steering.elsewhere
    app.steps["consumer"].add(SteeringStep)
    log.info("scheduling: %s over %d queue(s)", steering.mode, len(steering.candidates))
    return steering


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str],
    device: str,
    preload_models: Sequence[str] = (),
    loglevel: str = "INFO",
) -> None:
    """Serve the capabilities ``queues`` on ``device`` until stopped (SIGTERM/SIGINT:
    warm shutdown); their per-model queues are chosen by the scheduler."""
    check_worker(queues, device)
    fleet = open_fleet(settings)
    app, executor = worker_app(settings, device, fleet)
    check_storage(executor.storage)
    preload(executor, preload_models)
    hostname = node_name(device)
    steering = steer(app, settings, executor, queues, hostname, fleet)
    # Sent from the signal handler (Celery's warm shutdown), on the main thread.
    worker_shutting_down.connect(lambda **_: executor.stop_requested(), weak=False)
    worker = app.Worker(
        queues=steering.initial_queues(),
        pool="solo",
        concurrency=1,
        hostname=hostname,
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    with keep_alive(executor, settings):
        try:
            with steering.heartbeat():
                worker.start()
        finally:
            _leave(fleet, hostname)  # after the last beat, which would bring it back
            for batcher in getattr(app, "stoker_batchers", []):
                batcher.close()  # no batch may be at a model while they are unloaded
            executor.manager.unload_all()
            executor.store.close()


def _leave(fleet: Fleet, hostname: str) -> None:
    try:
        fleet.leave(hostname)
    except Exception as exc:  # the record expires by itself
        log.debug("heartbeat record not removed: %s", exc)
