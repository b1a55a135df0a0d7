"""The Celery app factory, queue names and priorities.

Celery is stoker's distributed engine. This module decides only how it is configured;
what a task does lives in tasks.py (and, on the worker side, in workers/execute.py).

Choices made on purpose (Celery's known traps for long inference jobs):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only
  after its chunk finished, so a worker killed mid-chunk gets the chunk redelivered.
- ``worker_prefetch_multiplier = 1``: a worker holds one message at a time; others stay
  available to idle workers instead of waiting behind a long chunk.
- Redis ``visibility_timeout``: a message that was taken but not acked is redelivered
  after this long. Jobs are chunked so that no chunk runs anywhere near it.
- No result backend: job state lives in the job store (queues/stores), which every
  process reads; fan-in is counted there too (see tasks.py), not in a chord.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from celery import Celery
from kombu import Queue

from stoker.config import Priority, Settings

#: One queue per capability; a worker chooses which to consume.
QUEUES: tuple[str, ...] = (
    "speak",
    "transcribe",
    "audiobook",
    "generate",
    "embed",
    "image",
    "mesh",
    "echo",
)

#: A job that names a model goes on ``<capability>.m.<model slug>`` (e.g.
#: ``speak.m.en_US-joe-medium``), so a worker can take only the work of the model it
#: holds (workers/scheduler.py). A job without a model stays on the capability's queue.
MODEL_QUEUE_MARK = ".m."
#: Message header: epoch seconds at which a chunk message was queued (starvation guard).
QUEUED_AT_HEADER = "stoker_queued_at"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

#: kombu's Redis transport serves lower numbers first (0 is the highest priority).
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITIES: dict[Priority, int] = {"interactive": 0, "normal": 3, "bulk": 6}

RUN_CHUNK_TASK = "stoker.run_chunk"
#: The same work for batchable capabilities: a worker runs many at once (batching.py).
BATCHED_CHUNK_TASK = "stoker.run_chunk_batched"


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        visibility = settings.visibility_timeout_s
        # kombu scans for expired unacked messages every interval × throttle seconds
        # (100 s by default, whatever the timeout); keep that near a fifth of it.
        interval = max(1, min(10, visibility // 5))
        return {
            "visibility_timeout": visibility,
            "unacked_restore_interval": interval,
            "unacked_restore_throttle": max(1, min(10, visibility // 5 // interval)),
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
        }
    # The SQLAlchemy transport passes these options to create_engine(), so nothing
    # transport-specific may go here (its polling interval is set separately).
    return {}


def steers_by_backlog(settings: Settings) -> bool:
    """Whether workers choose their queues from the backlog (workers/steering.py):
    "backlog" scheduling on a Redis broker, the only one whose backlog they read. Then
    models named by path get queues of their own too (queues/path_queues.py)."""
    return settings.scheduling == "backlog" and settings.broker_url.startswith(
        ("redis://", "rediss://")
    )


def kombu_url(broker_url: str) -> str:
    """The URL handed to kombu: ``sqla+…`` and ``redis://…`` are served by stoker's
    subclasses of kombu's transports (queues/sqla_transport.py, redis_transport.py)."""
    # Imported here, each only where it is used: SQLAlchemy and redis-py cost a CLI
    # call 0.18 s and 0.07 s of imports (python -X importtime) that it would not need.
    if broker_url.startswith("sqla+"):
        from stoker.queues import sqla_transport

        sqla_transport.register()
        return f"{sqla_transport.ALIAS}+{broker_url.removeprefix('sqla+')}"
    if broker_url.startswith("redis://"):
        from stoker.queues import redis_transport

        redis_transport.register()
        return f"{redis_transport.ALIAS}://{broker_url.removeprefix('redis://')}"
    return broker_url


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with stoker's tasks registered."""
    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("stoker", broker=kombu_url(settings.broker_url), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        task_default_queue="echo",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        broker_polling_interval=settings.broker_polling_interval_s,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        # The SQL transport has no fanout exchanges, so broadcast features are off there.
        worker_enable_remote_control=not settings.embedded_broker,
    )
    app.stoker_settings = settings  # read by the tasks and the batching strategy
    from stoker.queues.tasks import register_tasks

    register_tasks(app, settings)
    return app


def priority_value(priority: Priority) -> int:
    return PRIORITIES[priority]


def model_slug(model: str) -> str:
    """``model`` as a queue-name part: letters, digits, ``_.-`` kept; a name with
    anything else gets the rest replaced by ``_`` and a short hash, so two names never
    share a queue."""
    slug = _UNSAFE.sub("_", model)
    if slug != model:
        slug += "-" + hashlib.sha256(model.encode()).hexdigest()[:8]
    return slug


def model_queue(kind: str, model: str | None) -> str:
    """The queue of ``kind``'s jobs that use ``model``; ``kind`` itself when None.

    A model named by its absolute path gets one too, but only where workers can find
    it (queues/path_queues.py); submission passes None for it elsewhere.
    """
    if not model:
        return kind
    return f"{kind}{MODEL_QUEUE_MARK}{model_slug(model)}"


def queue_kind(queue: str) -> str:
    """The capability a queue belongs to (its name up to the model part)."""
    return queue.split(MODEL_QUEUE_MARK, 1)[0]
