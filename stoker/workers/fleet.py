"""What workers share with each other and with `stoker models --loaded`.

Two things, both in Redis when the job store is Redis (``settings.state_url``):

- **Measured footprints**: the bytes a model took at its last load, per model
  fingerprint (which covers its files and load options) and device kind (``cpu``,
  ``cuda``), in the hash ``stoker:footprints`` (field ``<fingerprint>:<kind>``, a
  JSON :class:`Footprint`; a bare integer from before names were kept reads too). A
  worker that never loaded a model uses another worker's measurement to decide what
  to evict before the load, instead of the model's size on disk. `stoker models
  --footprints` lists them; `stoker models --forget NAME` deletes a model's, so its
  next load is estimated from disk again and measured afresh.
- **Heartbeats**: every worker writes a JSON record of itself (device, the queues it
  consumes and could consume, pool budget and use, loaded models, hit/miss/eviction
  counts) to ``stoker:worker:<hostname>`` every ``heartbeat_s`` with a TTL of five
  beats, and adds its name to the set ``stoker:workers``; a record that expired is a
  worker that is gone.
- **Model cards** (workers/cards.py): each worker's cards of the models it has, in
  ``stoker:card:<id>``, named by its heartbeat, so a machine that submits jobs can
  check requests for models whose files are on the workers only.

With the embedded (SQLite) store there is one machine: footprints stay in process
(:class:`LocalFleet`) and there are no heartbeats to read.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Collection
from typing import Any, Protocol

from pydantic import BaseModel

from stoker.config import Settings
from stoker.workers.cards import ModelCard

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
    queues: list[str]  # consumed now
    # Every capability and catalog-model queue this worker could consume: a queue no
    # live worker lists here is one whose jobs wait for a worker that is not there.
    serves: list[str] = []
    # Path-model queues whose file this worker has (workers/path_models.py), consumed
    # or not: while one live worker lists a queue, others leave its jobs to it.
    paths: list[str] = []
    pools: list[PoolBeat]
    # The chunk it runs now ("job_… chunk 3"; None between tasks and for batched
    # capabilities, whose batches run beside the consumer) and since when (epoch s).
    running: str | None = None
    running_since: float | None = None
    # name → id of the model card it published for each model whose files it has.
    cards: dict[str, str] = {}
    at: float  # epoch seconds of this beat


class Footprint(BaseModel):
    """One shared measurement: what ``name`` took on a device of ``device_kind``."""

    fingerprint: str
    device_kind: str
    bytes: int
    name: str = ""  # empty: recorded before names were kept
    host: str = ""  # the machine whose worker measured it
    at: float = 0.0  # epoch seconds; 0: unknown


class Fleet(Protocol):
    # Whether other processes see what this one records (and may forget it).
    shared: bool

    def footprint(self, fingerprint: str, device_kind: str) -> int | None: ...

    def record_footprint(
        self, fingerprint: str, device_kind: str, nbytes: int, name: str = ""
    ) -> None: ...

    def footprints(self) -> list[Footprint]: ...

    def forget(self, name: str, fingerprints: Collection[str] = ()) -> list[Footprint]: ...

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None: ...

    def leave(self, hostname: str) -> None: ...

    def workers(self) -> list[WorkerBeat]: ...

    def publish_cards(self, cards: list[ModelCard], ttl_s: float) -> None: ...

    def read_cards(self, ids: list[str]) -> dict[str, ModelCard]: ...


class LocalFleet:
    """A fleet of one process: footprints in a dict, no heartbeats."""

    shared = False

    def __init__(self) -> None:
        self._footprints: dict[tuple[str, str], Footprint] = {}

    def footprint(self, fingerprint: str, device_kind: str) -> int | None:
        found = self._footprints.get((fingerprint, device_kind))
        return found.bytes if found else None

    def record_footprint(
        self, fingerprint: str, device_kind: str, nbytes: int, name: str = ""
    ) -> None:
        self._footprints[(fingerprint, device_kind)] = _footprint(
            fingerprint, device_kind, nbytes, name
        )

    def footprints(self) -> list[Footprint]:
        return sorted(self._footprints.values(), key=_by_name)

    def forget(self, name: str, fingerprints: Collection[str] = ()) -> list[Footprint]:
        gone = [f for f in self._footprints.values() if _names(f, name, fingerprints)]
        for f in gone:
            del self._footprints[(f.fingerprint, f.device_kind)]
        return gone

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None:
        return None

    def leave(self, hostname: str) -> None:
        return None

    def workers(self) -> list[WorkerBeat]:
        return []

    def publish_cards(self, cards: list[ModelCard], ttl_s: float) -> None:
        return None

    def read_cards(self, ids: list[str]) -> dict[str, ModelCard]:
        return {}


class RedisFleet:
    """Footprints and heartbeats in Redis; see the module doc for the keys."""

    shared = True

    def __init__(self, client: Any) -> None:
        self._client = client

    def footprint(self, fingerprint: str, device_kind: str) -> int | None:
        field = f"{fingerprint}:{device_kind}"
        value = self._client.hget(FOOTPRINTS_KEY, field)
        return _parse_footprint(field, value).bytes if value is not None else None

    def record_footprint(
        self, fingerprint: str, device_kind: str, nbytes: int, name: str = ""
    ) -> None:
        record = _footprint(fingerprint, device_kind, nbytes, name)
        self._client.hset(FOOTPRINTS_KEY, f"{fingerprint}:{device_kind}", record.model_dump_json())

    def footprints(self) -> list[Footprint]:
        records = []
        for field, value in self._client.hgetall(FOOTPRINTS_KEY).items():
            try:
                records.append(_parse_footprint(_text(field), value))
            except ValueError as exc:  # pydantic's ValidationError is one
                log.warning("skipping an unreadable footprint %s (%s)", _text(field), exc)
        return sorted(records, key=_by_name)

    def forget(self, name: str, fingerprints: Collection[str] = ()) -> list[Footprint]:
        """Delete the measurements recorded under the model name ``name``, of the
        ``fingerprints`` (the name's models as this machine's catalog has them), or of
        the fingerprints that begin with ``name``; returns what was deleted."""
        gone = [f for f in self.footprints() if _names(f, name, fingerprints)]
        if gone:
            self._client.hdel(FOOTPRINTS_KEY, *(f"{f.fingerprint}:{f.device_kind}" for f in gone))
        return gone

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
        names = sorted(_text(n) for n in self._client.smembers(WORKERS_KEY))
        if not names:
            return []
        raws = self._client.mget([_worker_key(n) for n in names])
        beats, gone = [], []
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                gone.append(name)
                continue
            try:
                beats.append(WorkerBeat.model_validate(json.loads(raw)))
            except ValueError as exc:  # another stoker version's, say: skip that worker
                log.warning("skipping the unreadable heartbeat of %s (%s)", name, exc)
        if gone:
            self._client.srem(WORKERS_KEY, *gone)
        return beats

    def publish_cards(self, cards: list[ModelCard], ttl_s: float) -> None:
        if not cards:
            return
        pipe = self._client.pipeline()
        for card in cards:
            pipe.set(_card_key(card.id), card.model_dump_json(), px=int(ttl_s * 1000))
        pipe.execute()

    def read_cards(self, ids: list[str]) -> dict[str, ModelCard]:
        """The cards of ``ids`` that exist, by id."""
        if not ids:
            return {}
        raws = self._client.mget([_card_key(i) for i in ids])
        cards = {}
        for card_id, raw in zip(ids, raws, strict=True):
            if raw is None:  # expired: its worker stopped publishing it
                continue
            try:
                cards[card_id] = ModelCard.model_validate_json(raw)
            except ValueError as exc:  # another stoker version's, say: skip that one only
                log.warning("skipping an unreadable model card %s (%s)", card_id, exc)
        return cards


def _footprint(fingerprint: str, device_kind: str, nbytes: int, name: str) -> Footprint:
    return Footprint(
        fingerprint=fingerprint,
        device_kind=device_kind,
        bytes=nbytes,
        name=name,
        host=socket.gethostname(),
        at=time.time(),
    )


def _parse_footprint(field: str, value: bytes | str) -> Footprint:
    fingerprint, _, kind = field.rpartition(":")
    text = _text(value)
    if text.lstrip("-").isdigit():  # recorded before names were kept
        return Footprint(fingerprint=fingerprint, device_kind=kind, bytes=int(text))
    # The field names the record: it is what a forget deletes.
    record = Footprint.model_validate_json(text)
    return record.model_copy(update={"fingerprint": fingerprint, "device_kind": kind})


def _names(footprint: Footprint, name: str, fingerprints: Collection[str]) -> bool:
    """Whether ``name`` (a model's name or a fingerprint's first characters, six or
    more) or one of ``fingerprints`` means it."""
    fp = footprint.fingerprint
    return (
        footprint.name == name
        or fp in fingerprints
        or (len(name) >= 6 and fp.startswith(name.lower()))
    )


def _by_name(footprint: Footprint) -> tuple[str, str, str]:
    return (footprint.name, footprint.device_kind, footprint.fingerprint)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _card_key(card_id: str) -> str:
    return f"{PREFIX}:card:{card_id}"


def _worker_key(hostname: str) -> str:
    return f"{PREFIX}:worker:{hostname}"


def open_fleet(settings: Settings) -> Fleet:
    """Redis when the job store is Redis, else one process's own memory."""
    if settings.state_url.startswith(("redis://", "rediss://")):
        import redis

        return RedisFleet(redis.Redis.from_url(settings.state_url, socket_timeout=5))
    return LocalFleet()
