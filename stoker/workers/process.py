"""The worker process: one per device, Celery's solo pool, models warm in this process.

Why the solo pool: the task runs in the process that holds the model manager, so a
model loaded once serves every later chunk, and CUDA is initialised only here (it is
not fork-safe). Parallelism comes from more worker processes, one per device.

Shutdown: SIGTERM (or Ctrl-C) is Celery's warm shutdown: the running chunk finishes
and is acknowledged. SIGKILL loses the process, not the chunk: its message was never
acknowledged, so the broker redelivers it to another worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from celery import Celery

from stoker.config import Settings
from stoker.jobs import CAPABILITIES, installed
from stoker.queues.app import make_celery
from stoker.queues.stores import open_job_store
from stoker.queues.tasks import attach_executor
from stoker.storage import open_storage
from stoker.workers.catalog import ModelCatalog
from stoker.workers.execute import ChunkExecutor
from stoker.workers.manager import ModelManager
from stoker.workers.memory import parse_device

log = logging.getLogger(__name__)


def build_executor(settings: Settings, device: str) -> ChunkExecutor:
    parse_device(device)  # refuse "gpu" or "cuda:x" before anything starts
    return ChunkExecutor(
        settings=settings,
        store=open_job_store(settings),
        storage=open_storage(settings),
        catalog=ModelCatalog(settings),
        manager=ModelManager(settings),
        device=device,
    )


def default_queues() -> list[str]:
    """Every capability whose engines are installed on this machine."""
    return sorted(kind for kind, cap in CAPABILITIES.items() if installed(cap))


def preload(executor: ChunkExecutor, names: Sequence[str]) -> None:
    """Load models before taking work, so the first job does not pay for the load."""
    for name in names:
        spec = executor.catalog.get(name)
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


def worker_app(settings: Settings, device: str) -> tuple[Celery, ChunkExecutor]:
    app = make_celery(settings)
    # Celery's pools look tasks up on the *current* app; in `stoker run` the client's
    # app lives in the same process, so the worker's must be made current explicitly.
    app.set_current()
    executor = build_executor(settings, device)
    attach_executor(app, executor)
    return app, executor


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str],
    device: str,
    preload_models: Sequence[str] = (),
    loglevel: str = "INFO",
) -> None:
    """Consume ``queues`` on ``device`` until stopped (SIGTERM/SIGINT: warm shutdown)."""
    app, executor = worker_app(settings, device)
    preload(executor, preload_models)
    worker = app.Worker(
        queues=list(queues),
        pool="solo",
        concurrency=1,
        hostname=node_name(device),
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    with keep_alive(executor, settings):
        try:
            worker.start()
        finally:
            executor.manager.unload_all()
            executor.store.close()
