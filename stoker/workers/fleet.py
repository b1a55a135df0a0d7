"""What workers share with each other and with `stoker models --loaded`.

Two things, both in Redis when the job store is Redis (``settings.state_url``):

- **Measured footprints**: the bytes a model took at its last load, per model
  fingerprint (which covers its files and load options) and device kind (``cpu``,
  ``cuda``), in the hash ``stoker:footprints``. A worker that never loaded a model
  uses another worker's measurement to decide what to evict before the load, instead
  of the model's size on disk.
- **Heartbeats**: every worker writes a JSON record of itself (device, queues, pool
  budget and use, loaded models, hit/miss/eviction counts) to
  ``stoker:worker:<hostname>`` with a short TTL, and adds its name to the set
  ``stoker:workers``; a record that expired is a worker that is gone.

With the embedded (SQLite) store there is one machine: footprints stay in process
(:class:`LocalFleet`) and there are no heartbeats to read.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from pydantic import BaseModel

from stoker.config import Settings

log = logging.getLogger(__name__)

PREFIX = "stoker"
FOOTPRINTS_KEY = f"{PREFIX}:footprints"
WORKERS_KEY = f"{PREFIX}:workers"


class ModelBeat(BaseModel):
    name: str
    footprint_bytes: int
    last_used_at: float  # epoch seconds
    uses: int
    pinned: bool


class PoolBeat(BaseModel):
    device: str
    budget_bytes: int
    used_bytes: int
    hits: int
    misses: int
    loads: int
    evictions: int
    models: list[ModelBeat]


class WorkerBeat(BaseModel):
    """One worker's heartbeat record."""

    hostname: str
    device: str
    scheduling: str
    queues: list[str]
    # Path-model queues whose file this worker has (workers/path_models.py), consumed
    # or not: while one live worker lists a queue, others leave its jobs to it.
    paths: list[str] = []
    pools: list[PoolBeat]
    at: float  # epoch seconds of this beat


class Fleet(Protocol):
    def footprint(self, fingerprint: str, device_kind: str) -> int | None: ...

    def record_footprint(self, fingerprint: str, device_kind: str, nbytes: int) -> None: ...

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None: ...

    def leave(self, hostname: str) -> None: ...

    def workers(self) -> list[WorkerBeat]: ...


class LocalFleet:
    """A fleet of one process: footprints in a dict, no heartbeats."""

    def __init__(self) -> None:
        self._footprints: dict[str, int] = {}

    def footprint(self, fingerprint: str, device_kind: str) -> int | None:
        return self._footprints.get(f"{fingerprint}:{device_kind}")

    def record_footprint(self, fingerprint: str, device_kind: str, nbytes: int) -> None:
        self._footprints[f"{fingerprint}:{device_kind}"] = nbytes

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None:
        return None

    def leave(self, hostname: str) -> None:
        return None

    def workers(self) -> list[WorkerBeat]:
        return []


class RedisFleet:
    """Footprints and heartbeats in Redis; see the module doc for the keys."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def footprint(self, fingerprint: str, device_kind: str) -> int | None:
        value = self._client.hget(FOOTPRINTS_KEY, f"{fingerprint}:{device_kind}")
        return int(value) if value is not None else None

    def record_footprint(self, fingerprint: str, device_kind: str, nbytes: int) -> None:
        self._client.hset(FOOTPRINTS_KEY, f"{fingerprint}:{device_kind}", nbytes)

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None:
        pipe = self._client.pipeline()
        pipe.set(_worker_key(beat.hostname), beat.model_dump_json(), px=int(ttl_s * 1000))
        pipe.sadd(WORKERS_KEY, beat.hostname)
        pipe.execute()

    def leave(self, hostname: str) -> None:
        pipe = self._client.pipeline()
        pipe.delete(_worker_key(hostname))
        pipe.srem(WORKERS_KEY, hostname)
        pipe.execute()

    def workers(self) -> list[WorkerBeat]:
        """Live workers' latest beats, by hostname; forgets the names that expired."""
        names = sorted(
            n.decode() if isinstance(n, bytes) else n for n in self._client.smembers(WORKERS_KEY)
        )
        if not names:
            return []
        raws = self._client.mget([_worker_key(n) for n in names])
        beats, gone = [], []
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                gone.append(name)
            else:
                beats.append(WorkerBeat.model_validate(json.loads(raw)))
        if gone:
            self._client.srem(WORKERS_KEY, *gone)
        return beats


def _worker_key(hostname: str) -> str:
    return f"{PREFIX}:worker:{hostname}"


def open_fleet(settings: Settings) -> Fleet:
    """Redis when the job store is Redis, else one process's own memory."""
    if settings.state_url.startswith(("redis://", "rediss://")):
        import redis

        return RedisFleet(redis.Redis.from_url(settings.state_url, socket_timeout=5))
    return LocalFleet()
