"""Jobs by kind and state (what /metrics shows), kept as counters by both job stores,
and counted once from the indexes for a store made before the counters existed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stoker.queues.records import ChunkRef, JobError, JobRecord, new_record
from stoker.queues.stores import JobStore, RedisJobStore, SqliteJobStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file path or a Redis URL; stores are opened on it by the test."""
    if request.param == "redis":
        return str(request.getfixturevalue("clean_redis"))
    return str(tmp_path / "jobs.sqlite")


def open_store(backend: str) -> JobStore:
    if backend.startswith("redis://"):
        return RedisJobStore(backend, prefix="test")
    return SqliteJobStore(backend)


@pytest.fixture()
def stores(backend: str) -> Iterator[list[JobStore]]:
    """Two stores on one backend, as two processes would have."""
    opened = [open_store(backend), open_store(backend)]
    yield opened
    for store in opened:
        store.close()


def job(kind: str) -> JobRecord:
    return new_record(kind=kind, chunks=[ChunkRef(index=0, key="chunks/x/0")])


def test_counts_follow_every_state_change(stores: list[JobStore]) -> None:
    one, two = stores
    # Given five speak jobs and three embed jobs, created from two processes at once
    jobs = [job("speak") for _ in range(5)] + [job("embed") for _ in range(3)]
    threads = [
        threading.Thread(target=(one if i % 2 else two).create, args=(r,))
        for i, r in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert one.counts() == {("speak", "queued"): 5, ("embed", "queued"): 3}
    # When some run, succeed, fail or are cancelled (a second end changes nothing)
    for r in jobs[:3]:
        two.mark_running(r.id)
    two.mark_running(jobs[0].id)  # a second attempt: still one running job
    one.succeed(jobs[0].id, [])
    one.fail(jobs[1].id, JobError(kind="internal", message="boom"))
    two.cancel(jobs[5].id)
    two.cancel(jobs[0].id)
    # Then the counts say where every job is, from either process
    expected = {
        ("speak", "succeeded"): 1,
        ("speak", "failed"): 1,
        ("speak", "running"): 1,
        ("speak", "queued"): 2,
        ("embed", "cancelled"): 1,
        ("embed", "queued"): 2,
    }
    assert one.counts() == expected and two.counts() == expected


def _forget_counts(backend: str) -> None:
    """Make the store look as one made before counters existed."""
    if backend.startswith("redis://"):
        client = redis.Redis.from_url(backend)
        client.delete("test:counts")
        for key in client.scan_iter("test:job:*"):
            if client.type(key) == b"hash":
                client.hdel(key, "kind")
        client.close()
        return
    conn = sqlite3.connect(backend)
    for trigger in ("insert", "update", "delete"):
        conn.execute(f"DROP TRIGGER job_counts_{trigger}")
    conn.execute("DROP TABLE job_counts")
    conn.commit()
    conn.close()


def test_an_older_store_is_counted_once_from_its_indexes(backend: str) -> None:
    # Given a store with jobs in several states, made before the counters existed
    store = open_store(backend)
    jobs = [job("speak"), job("speak"), job("transcribe")]
    for r in jobs:
        store.create(r)
    store.mark_running(jobs[0].id)
    store.cancel(jobs[2].id)
    store.close()
    _forget_counts(backend)
    # When it is opened by this version
    store = open_store(backend)
    try:
        # Then the counts are right, and keep following changes of the older jobs
        assert store.counts() == {
            ("speak", "running"): 1,
            ("speak", "queued"): 1,
            ("transcribe", "cancelled"): 1,
        }
        store.succeed(jobs[0].id, [])
        store.create(job("transcribe"))
        assert store.counts() == {
            ("speak", "succeeded"): 1,
            ("speak", "queued"): 1,
            ("transcribe", "cancelled"): 1,
            ("transcribe", "queued"): 1,
        }
    finally:
        store.close()
