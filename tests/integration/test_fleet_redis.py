"""Shared footprints, heartbeats and backlog reads against a real Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from stoker.config import ModelEntry, Settings
from stoker.errors import ModelTooLarge
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


def stoker_cli(redis_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`stoker` as an operator on another machine runs it: its own (empty) catalog."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    env.update(STOKER_BROKER_URL=redis_url, STOKER_DATA_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "stoker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_out_of_date_footprint_is_listed_forgotten_and_measured_again(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given worker A (a 300 MiB budget), whose one job left "big" holding 120 MiB
    # (60 at load), and worker B with a 100 MiB budget
    (tmp_path / "big").write_bytes(b"x" * MIB)
    models = {"big": ModelEntry(backend="fake", path=tmp_path / "big")}
    fleet = RedisFleet(redis.Redis.from_url(clean_redis))
    used = [0]

    class Loads60:
        def load(self, spec, device):  # type: ignore[no-untyped-def]
            used[0] += 60 * MIB
            return spec.name

        def unload(self, model):  # type: ignore[no-untyped-def]
            used[0] = 0  # with what its job left behind

    def manager(budget_mib: int) -> ModelManager:
        settings = Settings(
            data_dir=tmp_path / "d", budgets={"cpu": budget_mib * MIB}, models=models
        )
        return ModelManager(settings, {"fake": Loads60()}, measure=lambda d: used[0], fleet=fleet)

    a, b = manager(300), manager(100)
    big = ModelCatalog(Settings(data_dir=tmp_path / "d", models=models)).get("big")
    with a.use(big, "cpu"):
        used[0] += 60 * MIB
    a.unload_all()
    # When B is asked for "big", it refuses by A's measurement, saying so
    with pytest.raises(ModelTooLarge) as refused, b.use(big, "cpu"):
        pass
    assert "(measured when another worker last loaded it on cpu)" in str(refused.value)
    assert "`stoker models --forget big`" in str(refused.value)
    # And `stoker models --footprints` lists what was measured, where and by which name
    listed = stoker_cli(clean_redis, tmp_path / "cli", "models", "--footprints", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["device_kind"], row["bytes"]) == ("big", "cpu", 120 * MIB)
    assert (row["fingerprint"], row["host"]) == (big.fingerprint, socket.gethostname())
    table = stoker_cli(clean_redis, tmp_path / "cli", "models", "--footprints")
    assert "big" in table.stdout and "120" in table.stdout
    # When the operator forgets it (a name the CLI's machine has no model for)
    forgot = stoker_cli(clean_redis, tmp_path / "cli", "models", "--forget", "big")
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot big on cpu (120 MiB)" in forgot.stdout
    # Then B loads it and the fleet holds B's fresh measurement, 60 MiB
    with b.use(big, "cpu"):
        pass
    assert fleet.footprint(big.fingerprint, "cpu") == 60 * MIB
    # And forgetting what was never measured says so and fails
    none = stoker_cli(clean_redis, tmp_path / "cli", "models", "--forget", "nothing")
    assert none.returncode == 1
    assert "no measurement of nothing" in none.stdout


def test_footprints_recorded_as_bare_integers_still_read(clean_redis: str) -> None:
    # Before names were kept, a footprint was the field's bare byte count
    client = redis.Redis.from_url(clean_redis)
    client.hset("stoker:footprints", "abc123def456:cuda", 5 * MIB)
    fleet = RedisFleet(client)
    assert fleet.footprint("abc123def456", "cuda") == 5 * MIB
    (old,) = fleet.footprints()
    assert (old.fingerprint, old.device_kind, old.bytes, old.name) == (
        "abc123def456", "cuda", 5 * MIB, "",
    )  # fmt: skip
    assert fleet.forget("abc123") == [old]  # by the fingerprint's first characters
    assert fleet.footprints() == []


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


def test_an_unreadable_heartbeat_is_skipped_and_the_others_are_read(
    clean_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a live worker's beat, and one written by another stoker version
    client = redis.Redis.from_url(clean_redis)
    fleet = RedisFleet(client)
    fleet.publish(
        WorkerBeat(hostname="w1", device="cpu", scheduling="backlog", queues=[], pools=[], at=0),
        30.0,
    )
    client.set("stoker:worker:w0", b'{"hostname": "w0", "pools": "none"}')
    client.sadd("stoker:workers", "w0")

    # Then the readable one is listed, and the other skipped with a warning
    assert [w.hostname for w in fleet.workers()] == ["w1"]
    assert "skipping the unreadable heartbeat of w0" in caplog.text


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
