"""Shared footprints, heartbeats and backlog reads against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from stoker.config import ModelEntry, Settings
from stoker.queues.app import QUEUED_AT_HEADER, make_celery, priority_value
from stoker.workers.backlog import RedisBacklog, priority_keys
from stoker.workers.catalog import ModelCatalog
from stoker.workers.fleet import PoolBeat, RedisFleet, WorkerBeat
from stoker.workers.manager import MIB, ModelManager


def test_a_footprint_measured_by_one_worker_decides_another_workers_evictions(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given two models of 1 MiB on disk, a budget of 100 MiB, and worker A that
    # measured model "big" at 80 MiB
    for name in ("big", "small"):
        (tmp_path / name).write_bytes(b"x" * MIB)
    models = {n: ModelEntry(backend="fake", path=tmp_path / n) for n in ("big", "small")}
    settings = Settings(data_dir=tmp_path / "d", budgets={"cpu": 100 * MIB}, models=models)
    big, small = (ModelCatalog(settings).get(n) for n in ("big", "small"))
    sizes = {"big": 80 * MIB, "small": 50 * MIB}
    fleet = RedisFleet(redis.Redis.from_url(clean_redis))
    used = [0]

    def measure(device: str) -> int:
        return used[0]

    class Sized:
        def load(self, spec, device):  # type: ignore[no-untyped-def]
            used[0] += sizes[spec.name]
            return spec.name

        def unload(self, model):  # type: ignore[no-untyped-def]
            used[0] -= sizes[model]

    a = ModelManager(settings, {"fake": Sized()}, measure=measure, fleet=fleet)
    with a.use(big, "cpu"):
        pass
    # When worker B, which never loaded "big", holds "small" and is asked for "big"
    b = ModelManager(settings, {"fake": Sized()}, measure=measure, fleet=fleet)
    assert b.estimate(big, "cpu") == 80 * MIB  # A's measurement, not 1 MiB on disk
    with b.use(small, "cpu"):
        pass
    with b.use(big, "cpu"):
        pass
    # Then B evicted "small" before loading (by the shared estimate), not after
    (pool,) = b.stats()
    assert [m.name for m in pool.models] == ["big"]
    assert (pool.loads, pool.evictions) == (2, 1)


def test_heartbeats_list_live_workers_and_forget_expired_ones(clean_redis: str) -> None:
    client = redis.Redis.from_url(clean_redis)
    fleet = RedisFleet(client)
    pool = PoolBeat(
        device="cpu",
        budget_bytes=1,
        used_bytes=0,
        hits=0,
        misses=0,
        loads=0,
        evictions=0,
        models=[],
    )
    for name, ttl in (("w1", 30.0), ("w2", 0.001)):
        fleet.publish(
            WorkerBeat(
                hostname=name,
                device="cpu",
                scheduling="backlog",
                queues=["echo"],
                pools=[pool],
                at=0.0,
            ),
            ttl,
        )
    import time

    time.sleep(0.05)
    assert [w.hostname for w in fleet.workers()] == ["w1"]
    assert client.smembers("stoker:workers") == {b"w1"}
    fleet.leave("w1")
    assert fleet.workers() == []


def test_backlog_counts_every_priority_and_ages_the_oldest_message(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given three messages on one queue at two priorities, stamped 100 s and 10 s ago
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    app = make_celery(settings)
    for stamp, priority in ((900.0, "bulk"), (990.0, "interactive"), (995.0, "bulk")):
        app.send_task(
            "stoker.run_chunk",
            args=("j", 0, {}),
            queue="speak.m.a",
            priority=priority_value(priority),
            headers={QUEUED_AT_HEADER: stamp},
        )
    client = redis.Redis.from_url(clean_redis)
    assert client.llen(priority_keys("speak.m.a")[0]) == 1
    assert json.loads(client.lindex(priority_keys("speak.m.a")[2], -1))["headers"]
    # When the backlog is read at t=1000
    probe = RedisBacklog(client, clock=lambda: 1000.0)
    a, b = probe.measure([("speak.m.a", "a"), ("speak.m.b", "b")])
    # Then it sees all three and the oldest's age; the empty queue is empty
    assert (a.waiting, a.oldest_age_s) == (3, 100.0)
    assert (b.waiting, b.oldest_age_s) == (0, 0.0)
