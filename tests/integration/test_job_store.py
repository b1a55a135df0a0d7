"""The job store contract: SQLite and Redis pass the same tests.

Redis is a real redis-server of the test session's own; SQLite is a file under tmp_path.
Where a test needs several processes, it uses one store object per thread, all pointed
at the same file or server, as separate processes would.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from stoker.config import Settings
from stoker.errors import BrokerUnavailable, ConfigError, JobNotFound
from stoker.queues.records import (
    ChunkRef,
    JobError,
    JobFilter,
    JobRecord,
    JobState,
    OutputRef,
    Progress,
    new_record,
)
from stoker.queues.stores import JobStore, RedisJobStore, SqliteJobStore, open_job_store
from stoker.queues.stores.base import DocCache
from stoker.queues.stores.sqlite import list_query
from tests.servers import free_port

pytestmark = pytest.mark.integration

StoreFactory = Callable[[], JobStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one shared backend; closes them after the test."""
    opened: list[JobStore] = []

    def make() -> JobStore:
        store: JobStore
        if request.param == "sqlite":
            store = SqliteJobStore(tmp_path / "jobs.sqlite")
        else:
            store = RedisJobStore(request.getfixturevalue("clean_redis"), prefix="test")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture()
def store(make_store: StoreFactory) -> JobStore:
    return make_store()


def job(chunks: int = 3, **fields: object) -> JobRecord:
    refs = [ChunkRef(index=i, key=f"chunks/speak/{i:04d}.wav") for i in range(chunks)]
    return new_record(kind=fields.pop("kind", "speak"), chunks=refs, **fields)


def output(name: str) -> OutputRef:
    return OutputRef(name=name, key=f"jobs/x/{name}", size_bytes=12, content_type="audio/wav")


def ids(records: list[JobRecord]) -> list[str]:
    return [r.id for r in records]


# --- records --------------------------------------------------------------------------


def test_get_returns_every_field_as_created(store: JobStore) -> None:
    # Given a record with every field set to something other than its default
    record = job(
        owner="ana", params={"voice": "joe", "rate": 1.25}, inputs=["inputs/a.txt"],
        priority="bulk", model="piper-joe", state=JobState.RUNNING,
        progress=Progress(stage="synthesize"), outputs=[output("a.wav")],
        error=JobError(kind="transient", message="once"), attempts=2,
        created_at=1000.123456789, started_at=1001.5, finished_at=1002.25,
    )  # fmt: skip
    # When it is stored and read back
    store.create(record)
    got = store.get(record.id)
    # Then it is the same record, with total taken from the chunks
    assert got == record.model_copy(update={"progress": Progress(total=3, stage="synthesize")})
    assert store.state(record.id) is JobState.RUNNING


def test_total_is_the_submitters_when_set(store: JobStore) -> None:
    record = job(chunks=2, progress=Progress(total=5))
    store.create(record)
    assert store.get(record.id).progress.total == 5


def test_create_refuses_an_existing_id(store: JobStore) -> None:
    record = job()
    store.create(record)
    with pytest.raises(ValueError, match=record.id):
        store.create(record.model_copy(update={"kind": "other"}))
    assert store.get(record.id).kind == "speak"


def test_create_many_stores_each_record_as_create_does(store: JobStore) -> None:
    # Given a batch and three of its jobs, made in one call
    batch = job(kind="batch", chunks=0)
    store.create(batch)
    kids = [
        job(chunks=1, parent=batch.id, parent_index=i, owner="ann", progress=Progress(total=1))
        for i in range(3)
    ]
    store.create_many(kids)

    # Then each reads back as created, and the indexes and counters know them
    assert [store.get(k.id) for k in kids] == kids
    assert sorted(ids(store.list(JobFilter(parent=batch.id)))) == sorted(ids(kids))
    assert ids(store.list(JobFilter(top_level=True))) == [batch.id]
    assert store.child_counts(batch.id) == {JobState.QUEUED: 3}
    assert store.counts()[("speak", "queued")] == 3

    # And an id that exists is refused by name, while the new ones beside it are stored
    fresh = job(chunks=1, parent=batch.id, parent_index=3, progress=Progress(total=1))
    taken = kids[1].model_copy(update={"kind": "other"})
    with pytest.raises(ValueError, match=kids[1].id):
        store.create_many([taken, fresh])
    assert store.get(kids[1].id).kind == "speak"
    assert store.get(fresh.id) == fresh


def test_every_method_raises_job_not_found_for_a_missing_job(store: JobStore) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get("job_nope"),
        lambda: store.state("job_nope"),
        lambda: store.mark_running("job_nope"),
        lambda: store.set_stage("job_nope", "x"),
        lambda: store.chunk_done("job_nope", 0),
        lambda: store.done_chunks("job_nope"),
        lambda: store.chunks_all_done("job_nope", [0]),
        lambda: store.chunks_all_done("job_nope", []),
        lambda: store.chunk_runs("job_nope", 0, 1),
        lambda: store.succeed("job_nope", []),
        lambda: store.fail("job_nope", JobError(kind="x", message="y")),
        lambda: store.cancel("job_nope"),
        lambda: store.add_outputs("job_nope", [output("a")]),
        lambda: store.delete("job_nope"),
    ]
    for call in calls:
        with pytest.raises(JobNotFound, match="job_nope"):
            call()


# --- running and progress ---------------------------------------------------------------


def test_mark_running_counts_attempts_and_starts_once(store: JobStore) -> None:
    record = job()
    store.create(record)
    assert store.mark_running(record.id) is JobState.RUNNING
    started_at = store.get(record.id).started_at
    assert started_at is not None and started_at >= record.created_at
    # A second chunk task starting counts an attempt but keeps the start time
    assert store.mark_running(record.id) is JobState.RUNNING
    got = store.get(record.id)
    assert (got.attempts, got.started_at) == (2, started_at)


def test_mark_running_leaves_a_terminal_job_alone(store: JobStore) -> None:
    record = job()
    store.create(record)
    store.cancel(record.id)
    assert store.mark_running(record.id) is JobState.CANCELLED
    got = store.get(record.id)
    assert (got.state, got.attempts, got.started_at) == (JobState.CANCELLED, 0, None)


def test_set_stage_is_shown_with_progress(store: JobStore) -> None:
    record = job()
    store.create(record)
    store.set_stage(record.id, "synthesize")
    assert store.get(record.id).progress.stage == "synthesize"


def test_chunk_done_tallies_distinct_chunks(store: JobStore) -> None:
    record = job(chunks=3)
    store.create(record)
    first = store.chunk_done(record.id, 0)
    assert (first.newly_done, first.done, first.total, first.state) == (
        True, 1, 3, JobState.QUEUED,
    )  # fmt: skip
    # A redelivered chunk is recorded once
    again = store.chunk_done(record.id, 0)
    assert (again.newly_done, again.done) == (False, 1)
    store.chunk_done(record.id, 2)
    last = store.chunk_done(record.id, 1)
    assert (last.newly_done, last.done, last.total) == (True, 3, 3)
    assert store.done_chunks(record.id) == {0, 1, 2}
    assert store.get(record.id).progress.done == 3


def test_chunk_runs_count_the_runs_that_started_and_did_not_end(
    make_store: StoreFactory,
) -> None:
    # Given a job, and two workers' stores
    a, b = make_store(), make_store()
    record = job(chunks=2)
    a.create(record)
    # When a run of chunk 0 starts on one and never ends (its worker died), then the
    # next run, on the other, sees it
    assert a.chunk_runs(record.id, 0, 1) == 1
    assert b.chunk_runs(record.id, 0, 1) == 2
    assert b.chunk_runs(record.id, 0, -1) == 1
    # And each chunk has its own count, which leaves the record as it was
    assert a.chunk_runs(record.id, 1, 1) == 1
    got = a.get(record.id)
    assert (got.state, got.progress.done, got.attempts) == (JobState.QUEUED, 0, 0)

    # And it goes with its job
    a.fail(record.id, JobError(kind="x", message="y"))
    assert a.delete(record.id)
    with pytest.raises(JobNotFound):
        b.chunk_runs(record.id, 0, -1)


def test_chunks_all_done_answers_for_a_group_of_chunks_in_any_order(store: JobStore) -> None:
    # Given a 6-chunk job in two groups (0-2, 3-5) whose chunks finish out of order
    record = job(chunks=6)
    store.create(record)
    for index in (4, 0, 2):
        store.chunk_done(record.id, index)
    # Then a group is done only when every one of its chunks is
    assert not store.chunks_all_done(record.id, range(0, 3))
    assert not store.chunks_all_done(record.id, range(3, 6))
    store.chunk_done(record.id, 1)
    assert store.chunks_all_done(record.id, range(0, 3))
    assert store.chunks_all_done(record.id, [2, 0, 0])  # order and repeats do not matter
    assert not store.chunks_all_done(record.id, [0, 3])
    assert store.chunks_all_done(record.id, [])  # an empty group is trivially done
    # And a group past SQLite's old 999 bound-parameter limit is one question too
    big = job(chunks=1_200)
    store.create(big)
    for index in range(1, 1_200):
        store.chunk_done(big.id, index)
    assert store.chunks_all_done(big.id, range(1, 1_200))
    assert not store.chunks_all_done(big.id, range(0, 1_200))


def test_exactly_one_worker_sees_the_last_chunk(make_store: StoreFactory) -> None:
    # Given an 8-chunk job and 8 workers, each with its own store object
    record = job(chunks=8)
    make_store().create(record)
    stores = [make_store() for _ in range(8)]
    barrier = threading.Barrier(8)
    tallies = []

    def finish(index: int) -> None:
        barrier.wait()
        tallies.append(stores[index].chunk_done(record.id, index))

    # When each finishes a different chunk at the same moment
    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then every call saw a different count, and exactly one saw the job complete
    assert sorted(t.done for t in tallies) == list(range(1, 9))
    assert all(t.newly_done for t in tallies)
    assert sum(t.done == t.total for t in tallies) == 1


# --- transitions ------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
def test_a_job_ends_once(store: JobStore, end: str) -> None:
    record = job()
    store.create(record)
    store.mark_running(record.id)
    error = JobError(kind="invalid_input", message="bad text")
    finish: dict[str, Callable[[], bool]] = {
        "succeed": lambda: store.succeed(record.id, [output("speech.wav")]),
        "fail": lambda: store.fail(record.id, error),
        "cancel": lambda: store.cancel(record.id),
    }
    assert finish[end]() is True
    first = store.get(record.id)
    assert finish[end]() is False
    assert store.get(record.id) == first
    assert first.finished_at is not None and first.finished_at >= (first.started_at or 0)
    expected = {
        "succeed": (JobState.SUCCEEDED, "done", [output("speech.wav")], None),
        "fail": (JobState.FAILED, record.progress.stage, [], error),  # stage: where it failed
        "cancel": (JobState.CANCELLED, "cancelled", [], None),
    }[end]
    assert (first.state, first.progress.stage, first.outputs, first.error) == expected


def test_a_queued_job_can_end_without_running(store: JobStore) -> None:
    record = job()
    store.create(record)
    assert store.succeed(record.id, []) is True
    assert store.state(record.id) is JobState.SUCCEEDED


def test_cancel_after_success_changes_nothing(store: JobStore) -> None:
    record = job()
    store.create(record)
    store.succeed(record.id, [output("speech.wav")])
    assert store.cancel(record.id) is False
    assert store.fail(record.id, JobError(kind="x", message="y")) is False
    got = store.get(record.id)
    assert (got.state, got.outputs, got.error) == (
        JobState.SUCCEEDED, [output("speech.wav")], None,
    )  # fmt: skip


def test_add_outputs_appends(store: JobStore) -> None:
    record = job(outputs=[output("a.wav")])
    store.create(record)
    store.cancel(record.id)
    store.add_outputs(record.id, [output("b.wav")])
    store.add_outputs(record.id, [output("c.wav"), output("d.wav")])
    store.add_outputs(record.id, [])
    names = [o.name for o in store.get(record.id).outputs]
    assert names == ["a.wav", "b.wav", "c.wav", "d.wav"]


def test_succeed_replaces_outputs(store: JobStore) -> None:
    record = job(outputs=[output("partial.wav")])
    store.create(record)
    store.succeed(record.id, [output("speech.wav"), output("manifest.json")])
    assert [o.name for o in store.get(record.id).outputs] == ["speech.wav", "manifest.json"]


# --- listing ----------------------------------------------------------------------------


def test_list_is_newest_first_and_limited(store: JobStore) -> None:
    records = [job(created_at=1000.0 + i) for i in range(5)]
    # Two jobs created at the same instant are ordered by id, descending
    tied = [job(created_at=2000.0).model_copy(update={"id": f"job_tie_{c}"}) for c in "ab"]
    for r in [*records, *tied]:
        store.create(r)
    newest = store.list(JobFilter(limit=4))
    assert ids(newest) == ["job_tie_b", "job_tie_a", records[4].id, records[3].id]
    assert newest[2] == store.get(records[4].id)


def test_before_cursor_pages_through_every_job_once(store: JobStore) -> None:
    records = [job(created_at=1000.0 + i * 0.001) for i in range(25)]
    for r in records:
        store.create(r)
    seen: list[str] = []
    flt = JobFilter(limit=7)
    while page := store.list(flt):
        seen += ids(page)
        flt = flt.model_copy(update={"before": page[-1].created_at})
    assert seen == [r.id for r in reversed(records)]


def test_filters_combine(store: JobStore) -> None:
    # Given jobs of two kinds and two owners, every third one (from the second) running
    grid = [(k, o) for k in ("speak", "echo") for o in ("ana", "bo")] * 2
    records = [job(kind=k, owner=o, created_at=1000.0 + i) for i, (k, o) in enumerate(grid)]
    for r in records:
        store.create(r)
    for r in records[1::3]:
        store.mark_running(r.id)
    matches: list[dict[str, str]] = [
        {"kind": "echo"}, {"owner": "bo"}, {"state": "running"},
        {"kind": "speak", "owner": "ana"}, {"kind": "echo", "state": "queued"},
        {"kind": "speak", "owner": "bo", "state": "running"}, {"owner": "nobody"},
    ]  # fmt: skip
    for match in matches:
        # When listing with a filter, Then it gets exactly the matching jobs, newest first
        expected = [
            r.id
            for r in reversed(records)
            if all(_field(store, r, name) == value for name, value in match.items())
        ]
        assert ids(store.list(JobFilter.model_validate(match))) == expected, match
    # And a cursor applies to a combined filter too
    page = store.list(JobFilter(kind="speak", owner="ana", before=1000.0 + 4))
    assert ids(page) == [records[0].id]


def _field(store: JobStore, record: JobRecord, name: str) -> str:
    return store.state(record.id).value if name == "state" else str(getattr(record, name))


def test_a_state_change_moves_the_job_between_state_filters(store: JobStore) -> None:
    record = job()
    store.create(record)

    def listed_in() -> list[JobState]:
        return [s for s in JobState if ids(store.list(JobFilter(state=s))) == [record.id]]

    assert listed_in() == [JobState.QUEUED]
    store.mark_running(record.id)
    assert listed_in() == [JobState.RUNNING]
    store.cancel(record.id)
    assert listed_in() == [JobState.CANCELLED]
    assert ids(store.list(JobFilter())) == [record.id]


def batch_of(store: JobStore, n: int) -> tuple[JobRecord, list[JobRecord]]:
    """A batch and its ``n`` children, stored (created at 100, 101, ...)."""
    batch = job(chunks=0, kind="batch")
    store.create(batch)
    kids = [job(parent=batch.id, parent_index=i, created_at=100.0 + i) for i in range(n)]
    for kid in kids:
        store.create(kid)
    return batch, kids


def test_the_children_of_a_batch_are_listed_by_parent(store: JobStore) -> None:
    # Given a batch with three children and an unrelated job
    batch, children = batch_of(store, 3)
    store.create(job())
    # Then the parent filter lists exactly the children, newest first, and combines
    assert ids(store.list(JobFilter(parent=batch.id))) == ids(children[::-1])
    store.fail(children[1].id, JobError(kind="invalid_input", message="corrupt"))
    failed = store.list(JobFilter(parent=batch.id, state=JobState.FAILED))
    assert ids(failed) == [children[1].id]
    assert failed[0].parent == batch.id and failed[0].parent_index == 1


def test_top_level_lists_a_batch_once_and_not_its_children(store: JobStore) -> None:
    # Given two standalone jobs and a batch of three files (created now, so newest)
    older = job(kind="embed", created_at=50.0)
    newer = job(kind="speak", created_at=200.0)
    store.create(older)
    store.create(newer)
    batch, kids = batch_of(store, 3)
    # Then the top level is the batch and the two jobs, newest first; the children
    # are still listed by every other filter
    top = JobFilter(top_level=True)
    assert ids(store.list(top)) == [batch.id, newer.id, older.id]
    assert set(ids(kids)) <= set(ids(store.list(JobFilter())))
    # And it combines with the other filters and pages with the cursor
    assert ids(store.list(JobFilter(top_level=True, kind="speak"))) == [newer.id]
    assert ids(store.list(JobFilter(top_level=True, state=JobState.QUEUED, limit=2))) == [
        batch.id,
        newer.id,
    ]
    assert ids(store.list(JobFilter(top_level=True, before=200.0))) == [older.id]
    # And a deleted job leaves it
    store.fail(newer.id, JobError(kind="invalid_input", message="bad"))
    assert store.delete(newer.id)
    assert ids(store.list(top)) == [batch.id, older.id]


def test_child_counts_count_a_batchs_jobs_by_state(store: JobStore) -> None:
    # Given a batch of four jobs: one failed, one succeeded, one running, one queued
    batch, kids = batch_of(store, 4)
    store.create(job())  # not the batch's
    store.fail(kids[0].id, JobError(kind="invalid_input", message="corrupt"))
    store.mark_running(kids[1].id)
    store.succeed(kids[1].id, [])
    store.mark_running(kids[2].id)
    # Then each state is counted, those with none left out
    assert store.child_counts(batch.id) == {
        JobState.FAILED: 1,
        JobState.SUCCEEDED: 1,
        JobState.RUNNING: 1,
        JobState.QUEUED: 1,
    }
    # And a deleted job leaves the counts; a batch of none counts nothing
    assert store.delete(kids[0].id)
    assert JobState.FAILED not in store.child_counts(batch.id)
    assert store.child_counts("job_none") == {}


def test_redis_child_counts_read_indexes_not_every_job(clean_redis: str) -> None:
    # Given a batch of 500 jobs
    store = RedisJobStore(clean_redis, prefix="test")
    batch, _ = batch_of(store, 500)
    admin = redis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        store.child_counts(batch.id)  # warm: the connection's handshake is not counted
        admin.config_resetstat()
        # When counting them
        counts = store.child_counts(batch.id)
        calls = {
            k: v["calls"] for k, v in admin.info("commandstats").items() if not k.startswith(_ADMIN)
        }
        # Then it is one command per state, not a read per job
        assert counts == {JobState.QUEUED: 500}
        assert calls == {"cmdstat_zintercard": len(JobState)}, calls
    finally:
        admin.close()
        store.close()


def test_a_filter_takes_parent_or_top_level_not_both() -> None:
    with pytest.raises(ValueError, match="parent or top_level"):
        JobFilter(parent="job_x", top_level=True)


def test_a_redis_store_made_before_the_top_index_gets_it_once(clean_redis: str) -> None:
    # Given a store whose jobs were created before idx:top existed (its keys removed)
    store = RedisJobStore(clean_redis, prefix="test")
    alone = job(created_at=10.0)
    store.create(alone)
    batch, _ = batch_of(store, 2)
    admin = redis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        admin.delete("test:idx:top", "test:idx:top:built")
        # And a job created by this version before anyone listed the top level
        late = job(created_at=300.0)  # (the batch, created now, is newer)
        store.create(late)
        # When a new client lists the top level
        fresh = RedisJobStore(clean_redis, prefix="test")
        listed = fresh.list(JobFilter(top_level=True))
        # Then every job that is not a child is there, once, and the build is marked
        assert ids(listed) == [batch.id, late.id, alone.id]
        assert admin.get("test:idx:top:built") == "1"
        assert not admin.keys("test:tmp:*")
        fresh.close()
    finally:
        admin.close()
        store.close()


# --- deleting ---------------------------------------------------------------------------


def test_delete_removes_an_ended_job_from_reads_lists_and_counts(store: JobStore) -> None:
    # Given a succeeded job with done chunks and outputs, beside a job left queued
    record = job(owner="alice", kind="embed")
    store.create(record)
    store.mark_running(record.id)
    store.chunk_done(record.id, 0)
    store.succeed(record.id, [output("a.json")])
    other = job(owner="alice", kind="embed")
    store.create(other)
    before = store.counts()
    assert before[("embed", "succeeded")] == 1

    # When the ended job is deleted
    assert store.delete(record.id) is True

    # Then no read, list, filter or count finds it, and the other job is untouched
    with pytest.raises(JobNotFound, match=record.id):
        store.get(record.id)
    with pytest.raises(JobNotFound):
        store.done_chunks(record.id)
    for flt in (
        JobFilter(),
        JobFilter(owner="alice"),
        JobFilter(kind="embed"),
        JobFilter(state=JobState.SUCCEEDED),
    ):
        assert record.id not in ids(store.list(flt))
    assert ids(store.list(JobFilter(owner="alice"))) == [other.id]
    assert store.counts() == {("embed", "queued"): 1}
    with pytest.raises(JobNotFound, match=record.id):  # deleting twice: not found
        store.delete(record.id)


def test_delete_refuses_a_job_that_is_queued_or_running(store: JobStore) -> None:
    queued, running = job(), job()
    store.create(queued)
    store.create(running)
    store.mark_running(running.id)
    store.chunk_done(running.id, 1)

    assert store.delete(queued.id) is False
    assert store.delete(running.id) is False
    # Nothing changed: both are still there, with their progress
    assert store.get(queued.id).state is JobState.QUEUED
    assert store.get(running.id).progress.done == 1
    assert store.counts() == {("speak", "queued"): 1, ("speak", "running"): 1}


def test_a_deleted_child_leaves_its_batch_listing(store: JobStore) -> None:
    batch, kids = batch_of(store, 2)
    for kid in kids:
        store.fail(kid.id, JobError(kind="invalid_input", message="corrupt"))

    assert store.delete(kids[0].id)

    assert ids(store.list(JobFilter(parent=batch.id))) == [kids[1].id]


def test_a_deleted_many_chunk_job_is_not_served_from_a_doc_cache(
    make_store: StoreFactory,
) -> None:
    # Given a many-chunk job that a worker started (its store keeps the doc) and that
    # a client then cancelled
    client, worker = make_store(), make_store()
    record = job(chunks=5)
    client.create(record)
    assert worker.start_many([record.id])[0] is not None
    client.cancel(record.id)

    # When the client deletes it, the worker's late chunk task finds no job
    assert client.delete(record.id)
    assert worker.start_many([record.id]) == [None]
    assert client.start_many([record.id]) == [None]


def test_redis_list_reads_indexes_not_every_job(clean_redis: str) -> None:
    # Given 2,000 jobs of kind "a" and 3 of kind "b"
    store = RedisJobStore(clean_redis, prefix="test")
    for i in range(2000):
        store.create(job(chunks=1, kind="a", created_at=1000.0 + i))
    wanted = [job(chunks=1, kind="b", created_at=500.0 + i) for i in range(3)]
    for r in wanted:
        store.create(r)
    admin = redis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        for flt in [JobFilter(kind="b"), JobFilter(kind="b", state=JobState.QUEUED)]:
            store.list(flt)  # warm: the connection's handshake is not counted
            admin.config_resetstat()
            # When listing kind "b"
            listed = store.list(flt)
            stats = admin.info("commandstats")
            # Then it gets the 3 jobs with a handful of commands, not one per job
            calls = {k: v["calls"] for k, v in stats.items() if not k.startswith(_ADMIN)}
            assert ids(listed) == [r.id for r in reversed(wanted)]
            assert sum(calls.values()) <= 20, calls
    finally:
        admin.close()
        store.close()


_ADMIN = ("cmdstat_info", "cmdstat_config")  # the test's own INFO and CONFIG RESETSTAT


def test_sqlite_list_is_served_by_indexes(tmp_path: Path) -> None:
    SqliteJobStore(tmp_path / "jobs.sqlite").close()
    conn = sqlite3.connect(tmp_path / "jobs.sqlite")
    try:
        for match in [{}, {"state": JobState.QUEUED}, {"kind": "a"}, {"owner": "o"},
                      {"kind": "a", "owner": "o", "before": 5.0}, {"parent": "job_b"},
                      {"top_level": True}, {"top_level": True, "before": 5.0}]:  # fmt: skip
            sql, params = list_query(JobFilter.model_validate(match))
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            jobs_steps = [step for step in plan if " jobs " in f"{step} "]
            assert jobs_steps and all("USING" in s and "INDEX" in s for s in jobs_steps), plan
            assert not any("TEMP B-TREE" in step for step in plan), plan
    finally:
        conn.close()


# --- opening ----------------------------------------------------------------------------


def test_open_job_store_picks_the_store_from_state_url(tmp_path: Path, clean_redis: str) -> None:
    path = tmp_path / "new" / "dir" / "jobs.sqlite"
    sqlite_store = open_job_store(Settings(data_dir=tmp_path, state_url=f"sqlite:///{path}"))
    redis_store = open_job_store(Settings(data_dir=tmp_path, state_url=clean_redis))
    try:
        assert isinstance(sqlite_store, SqliteJobStore) and path.is_file()
        assert isinstance(redis_store, RedisJobStore)
    finally:
        sqlite_store.close()
        redis_store.close()


def test_an_unsupported_state_url_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, state_url="postgres://db/jobs")
    with pytest.raises(ConfigError, match=r"postgres://db/jobs.*sqlite:///.*redis://"):
        open_job_store(settings)


def test_an_unwritable_sqlite_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = Settings(data_dir=tmp_path, state_url=f"sqlite:///{blocker}/jobs.sqlite")
    with pytest.raises(ConfigError, match="a-file"):
        open_job_store(settings)
    with pytest.raises(ConfigError, match="a-file"):
        SqliteJobStore(blocker / "jobs.sqlite")


def test_a_locked_sqlite_file_is_broker_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = SqliteJobStore(path, busy_timeout_s=0.1)
    record = job()
    store.create(record)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is writing, and takes too long
    try:
        with pytest.raises(BrokerUnavailable, match=r"jobs\.sqlite.*locked"):
            store.chunk_done(record.id, 0)
        store.state(record.id)  # readers are not blocked (WAL)
    finally:
        holder.close()
        store.close()


def test_unreachable_redis_is_broker_unavailable() -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisJobStore(url)
    try:
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1") as caught:
            store.state("job_x")
        assert "secret" not in str(caught.value)
    finally:
        store.close()


# --- batched forms (a worker running many one-chunk jobs at once) ----------------------


def test_batched_calls_match_the_one_job_calls(store: JobStore) -> None:
    # Given three one-chunk jobs, one of them cancelled, and an id that does not exist
    a, b, c = job(chunks=1), job(chunks=1), job(chunks=1)
    for record in (a, b, c):
        store.create(record)
    store.cancel(c.id)

    # When a worker starts, finishes and succeeds them in batches
    started = store.start_many([a.id, "missing", b.id, c.id])
    tallies = store.chunk_done_many([(a.id, 0), ("missing", 0), (b.id, 0), (a.id, 0)])
    moved = store.succeed_many([(a.id, [output("a.npy")]), ("missing", []), (c.id, [])])

    # Then each answer is what the one-job call gives, in order
    assert [r.id if r else None for r in started] == [a.id, None, b.id, c.id]
    assert [r.state if r else None for r in started] == [
        JobState.RUNNING,
        None,
        JobState.RUNNING,
        JobState.CANCELLED,
    ]
    assert started[0] is not None and started[0].attempts == 1
    assert started[0].chunks == a.chunks and started[0].params == a.params
    assert tallies[1] is None
    first, again = tallies[0], tallies[3]
    assert first is not None and (first.newly_done, first.done, first.total) == (True, 1, 1)
    assert again is not None and not again.newly_done
    assert moved == [True, False, False]
    assert store.get(a.id).state is JobState.SUCCEEDED
    assert [o.name for o in store.get(a.id).outputs] == ["a.npy"]
    assert store.get(b.id).state is JobState.RUNNING
    assert store.get(c.id).state is JobState.CANCELLED


def test_batched_calls_of_nothing_do_nothing(store: JobStore) -> None:
    store.create_many([])
    assert store.list(JobFilter()) == []
    assert store.start_many([]) == []
    assert list(store.chunk_done_many([])) == []
    assert store.succeed_many([]) == []


def test_a_long_jobs_later_starts_read_its_changes_not_a_stale_copy(store: JobStore) -> None:
    # Given a job with many chunks, started once by a worker (its doc is now cached)
    record = job(chunks=500, params={"chapters": [{"title": "One", "first": 0, "count": 500}]})
    store.create(record)
    first = store.start_many([record.id])[0]
    assert first is not None and first.attempts == 1 and first.error is None

    # When its state, stage, tally, outputs and error change, and it is started again
    store.set_stage(record.id, "synthesize")
    store.chunk_done(record.id, 7)
    store.add_outputs(record.id, [output("chunk.wav")])
    store.fail(record.id, JobError(kind="invalid_input", message="bad"))
    again = store.start_many([record.id])[0]

    # Then the second read has every change, and the same submission-time fields
    assert again is not None
    assert again.state is JobState.FAILED and again.error == JobError(
        kind="invalid_input", message="bad"
    )
    assert again.progress == Progress(done=1, total=500, stage="synthesize")
    assert [o.name for o in again.outputs] == ["chunk.wav"]
    assert again.attempts == 1  # a failed job's start counts no attempt
    assert again.finished_at is not None and again.started_at == first.started_at
    assert again.chunks == record.chunks and again.params == record.params
    assert again.created_at == record.created_at
    # And a full read (no cached doc) gives the same record
    assert store.get(record.id) == again


def test_the_doc_cache_keeps_only_the_last_few_many_chunk_jobs() -> None:
    # Given a cache of two docs
    cache = DocCache(max_jobs=2)
    one, a, b, c = job(chunks=1), job(), job(), job()

    # When a one-chunk job and three longer ones are kept, then the first is read
    for record in (one, a, b):
        cache.keep(record)
    assert cache.get(a.id) is a
    cache.keep(c)

    # Then the one-chunk job was never kept and the least recently read one is gone
    assert cache.get(one.id) is None
    assert cache.get(b.id) is None
    assert cache.get(a.id) is a and cache.get(c.id) is c


# --- retries: kept payloads and requeue ----------------------------------------------


def test_payloads_are_kept_until_the_job_succeeds_or_is_deleted(store: JobStore) -> None:
    # Given three jobs created with their chunk payloads, and one without
    ok, failed, cancelled = job(chunks=2), job(chunks=2), job(chunks=1)
    bare = job(chunks=1)
    payloads = [[{"text": "a"}, {"text": "b"}], [{"text": "c"}, {"n": 2}], [{"x": [1.5]}]]
    store.create_many([ok, failed, cancelled], payloads)
    store.create(bare)

    # Then each reads back in chunk order, and the job without reads None
    assert store.chunk_payloads(failed.id) == [{"text": "c"}, {"n": 2}]
    assert store.chunk_payloads(bare.id) is None
    # And a creation refused for a taken id leaves that job's payloads as they were
    with pytest.raises(ValueError, match=failed.id):
        store.create_many([failed.model_copy()], [[{"text": "other"}]])
    assert store.chunk_payloads(failed.id) == [{"text": "c"}, {"n": 2}]

    # When they end: a succeeded job's go (it is never retried), the others' stay
    store.succeed(ok.id, [output("a.wav")])
    store.fail(failed.id, JobError(kind="timed_out", message="slow"))
    store.cancel(cancelled.id)
    assert store.chunk_payloads(ok.id) is None
    assert store.chunk_payloads(failed.id) == [{"text": "c"}, {"n": 2}]
    assert store.chunk_payloads(cancelled.id) == [{"x": [1.5]}]

    # And a deleted job's go with it
    assert store.delete(failed.id)
    with pytest.raises(JobNotFound):
        store.chunk_payloads(failed.id)
    store.create(failed.model_copy())  # the same id again: nothing of the old one
    assert store.chunk_payloads(failed.id) is None


def test_requeue_brings_an_ended_job_back_with_its_finished_chunks(store: JobStore) -> None:
    # Given a 3-chunk job that finished chunk 1, had a crash counted on chunk 2, and failed
    record = job(chunks=3, kind="embed")
    store.create(record)
    store.mark_running(record.id)
    store.chunk_done(record.id, 1)
    store.chunk_runs(record.id, 2, +1)
    store.fail(record.id, JobError(kind="timed_out", message="slow"))

    # When it is requeued
    assert store.requeue(record.id) is True

    # Then it is queued again, without its error or end, with chunk 1 still done, and
    # the indexes and counts moved with it
    got = store.get(record.id)
    assert (got.state, got.progress.stage, got.error, got.finished_at) == (
        JobState.QUEUED, "queued", None, None,
    )  # fmt: skip
    assert (got.progress.done, got.attempts) == (1, 1)
    assert store.done_chunks(record.id) == {1}
    assert ids(store.list(JobFilter(state=JobState.QUEUED))) == [record.id]
    assert store.list(JobFilter(state=JobState.FAILED)) == []
    assert store.counts() == {("embed", "queued"): 1}
    # And its crash count starts again
    assert store.chunk_runs(record.id, 2, +1) == 1

    # And it runs and ends as a new job does
    assert store.mark_running(record.id) is JobState.RUNNING
    assert store.chunk_done(record.id, 0).done == 2
    assert store.chunk_done(record.id, 2).done == 3
    assert store.succeed(record.id, [output("e.npy")])
    assert store.counts() == {("embed", "succeeded"): 1}


def test_requeue_of_a_cancelled_job_clears_its_partial_outputs(store: JobStore) -> None:
    record = job(chunks=2)
    store.create(record)
    store.chunk_done(record.id, 0)
    store.cancel(record.id)
    store.add_outputs(record.id, [output("chunk-0.wav")])

    assert store.requeue(record.id) is True

    got = store.get(record.id)
    assert (got.state, got.outputs, got.progress.done) == (JobState.QUEUED, [], 1)


def test_requeue_leaves_an_active_job_but_counts_its_undone_chunks(store: JobStore) -> None:
    # Given a batch still running with two files ended, and a queued job
    batch = job(kind="batch", chunks=0, progress=Progress(total=3, stage="running"))
    store.create(batch)
    store.chunk_done(batch.id, 0)
    store.chunk_done(batch.id, 2)
    queued = job()
    store.create(queued)

    # When they are requeued, the batch with file 2 to count again
    assert store.requeue(batch.id, stage="running", undone=[2]) is False
    assert store.requeue(queued.id) is False

    # Then neither moved, and file 2 is no longer counted as ended
    assert store.get(batch.id).state is JobState.QUEUED
    assert store.done_chunks(batch.id) == {0}
    assert store.get(queued.id).state is JobState.QUEUED
    with pytest.raises(JobNotFound):
        store.requeue("job_missing")


def test_requeue_reopens_an_ended_batch_for_the_files_retried(store: JobStore) -> None:
    # Given a batch of three files that ended (one failed) and succeeded
    batch = job(kind="batch", chunks=0, progress=Progress(total=3, stage="running"))
    store.create(batch)
    for i in range(3):
        assert store.chunk_done(batch.id, i).done == i + 1
    store.succeed(batch.id, [output("manifest.json")])

    # When it is reopened for file 1
    assert store.requeue(batch.id, stage="running", undone=[1]) is True

    # Then it is active, without its outputs, and file 1 ending completes it again
    got = store.get(batch.id)
    assert (got.state, got.progress.stage, got.outputs) == (JobState.QUEUED, "running", [])
    tally = store.chunk_done(batch.id, 1)
    assert (tally.newly_done, tally.done, tally.total) == (True, 3, 3)
    assert not tally.state.terminal
