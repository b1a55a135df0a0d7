"""Reading a big batch's progress: counting its jobs by state from the store's indexes
against reading every job's record, on both job stores, in the same run.

A batch of --jobs child jobs (an OpenAI batch of that many lines, or a folder of that
many recordings) is written straight into a throwaway redis-server and a SQLite file.
Each poll of `GET /v1/batches/{id}` and each `stoker status BATCH` needs the batch's
request counts (how many jobs succeeded, failed, are still to run): stoker counts them
with JobStore.child_counts; the plain way, and what stoker did before 2026-12-06, is
to read every child's record and count.

Usage: python bench/batch_reads.py [--jobs 20000] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_interleaved, write_section  # noqa: E402
from stoker.queues.batches import children, counts_by_state, request_counts  # noqa: E402
from stoker.queues.records import ChunkRef, JobState, new_record  # noqa: E402
from stoker.queues.stores.base import JobStore  # noqa: E402
from stoker.queues.stores.redis import RedisJobStore  # noqa: E402
from stoker.queues.stores.sqlite import SqliteJobStore  # noqa: E402
from tests.servers import redis_server  # noqa: E402


def fill(store: JobStore, jobs: int) -> str:
    """A batch of ``jobs`` one-text embed jobs, a third of them succeeded; its id."""
    batch = new_record(kind="batch", params={"kind": "embed", "source": "bench"})
    store.create(batch)
    for i in range(jobs):
        kid = new_record(
            kind="embed",
            params={"model": "all-MiniLM-L6-v2", "normalize": False, "format": "jsonl"},
            chunks=[ChunkRef(index=0, key=f"chunks/embed/{i:064d}.vec")],
            parent=batch.id,
            parent_index=i,
        )
        store.create(kid)
        if i % 3 == 0:
            store.mark_running(kid.id)
            store.succeed(kid.id, [])
    return batch.id


def measure(store: JobStore, jobs: int, repeats: int) -> list[list[str]]:
    batch = fill(store, jobs)
    every = request_counts(children(store, batch))
    counted = counts_by_state(store.child_counts(batch))
    assert every == counted, (every, counted)
    assert counted["completed"] == (jobs + 2) // 3 and counted["total"] == jobs
    assert store.child_counts(batch)[JobState.QUEUED] == jobs - counted["completed"]
    plain, ours = timed_interleaved(
        [
            lambda: request_counts(children(store, batch)),
            lambda: counts_by_state(store.child_counts(batch)),
        ],
        repeats,
    )
    name = type(store).__name__.removesuffix("JobStore")
    return [
        [name, "read every job's record, count", f"{plain * 1000:.1f}", "1.00"],
        [name, "`JobStore.child_counts` (indexes)", f"{ours * 1000:.1f}", f"{plain / ours:.0f}×"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        with redis_server(Path(tmp) / "redis") as url:
            redis_store = RedisJobStore(url)
            rows += measure(redis_store, args.jobs, args.repeats)
            redis_store.close()
        sqlite_store = SqliteJobStore(Path(tmp) / "jobs.sqlite")
        rows += measure(sqlite_store, args.jobs, args.repeats)
        sqlite_store.close()
    table = markdown_table(["store", "how", "ms per read (median)", "speed-up"], rows)
    body = (
        f"Machine: {machine()}. Command: `python bench/batch_reads.py --jobs {args.jobs} "
        f"--repeats {args.repeats}`. A batch of {args.jobs} jobs, a third succeeded; "
        f"the request counts of one read, median of {args.repeats} interleaved.\n\n{table}"
    )
    print(body)
    if not args.no_write:
        write_section("batch_reads", body)


if __name__ == "__main__":
    main()
