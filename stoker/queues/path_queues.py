"""Queues of models named by path, and the Redis hash through which workers find them.

A job may name its model by absolute path (``stoker submit generate --model
./x.gguf``). With backlog scheduling on a Redis broker, such a job goes on its own
model queue, exactly like a catalog model's (``generate.m._srv_x.gguf-1a2b3c4d``), so
that a worker holding that model keeps taking its work and a worker without the file
never takes it. Workers list the model queues they could serve from their catalogs,
which do not know such paths; so the submitter records each path queue in one hash on
the broker, ``stoker:path-queues`` (queue → ``{"kind", "model"}``), and workers read it
at every scheduler tick (workers/steering.py) and consume the queues whose file they
have. A path queue no live worker can serve is failed by one that cannot, after
``scheduler_orphan_wait_s``, with the error that names the missing file.

Entries are never removed: there is one per distinct path ever submitted, and a
submitter writes its entry again with every job, so a Redis that lost its data (no
persistence) has it back with the next submission. Where workers do not steer by
backlog (queues/app.py ``steers_by_backlog``: the embedded broker, "fifo"), path jobs
stay on the capability's queue, where every worker may take them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import OperationalError

from stoker.config import Settings

REGISTRY_KEY = "stoker:path-queues"

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class PathQueue:
    """One registered queue: the capability and the absolute model path it carries."""

    queue: str
    kind: str
    model: str


def is_path_model(model: str | None) -> bool:
    """Whether a job's recorded model is a path (the client records paths absolute)."""
    return bool(model) and str(model).startswith("/")


def _client(url: str) -> Any:
    # One client (one connection pool) per broker URL for the process's life: a
    # submitter registers a path with every job it queues.
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5)
        return client


def register(settings: Settings, entry: PathQueue) -> None:
    """Record ``entry`` on the broker (idempotent).

    Raises kombu's OperationalError when the broker is unreachable, as queuing does.
    """
    import redis

    value = json.dumps({"kind": entry.kind, "model": entry.model})
    try:
        _client(settings.broker_url).hset(REGISTRY_KEY, entry.queue, value)
    except redis.RedisError as exc:
        raise OperationalError(f"cannot register queue {entry.queue}: {exc}") from exc


def read(client: Any) -> list[PathQueue]:
    """Every registered path queue, read with redis-py ``client``; bad entries skipped."""
    out = []
    for queue, raw in client.hgetall(REGISTRY_KEY).items():
        try:
            data = json.loads(raw)
            kind, model = str(data["kind"]), str(data["model"])
        except (ValueError, KeyError, TypeError):
            continue  # not ours to interpret; leave it
        name = queue.decode() if isinstance(queue, bytes) else str(queue)
        out.append(PathQueue(name, kind, model))
    return sorted(out, key=lambda p: p.queue)
