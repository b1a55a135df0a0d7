"""Model thrashing: backlog-aware scheduling against plain FIFO consumption.

K models (configured copies of the packaged Piper voice: different names are
different models to the model manager) and a CPU budget that fits one of them.
N one-sentence `speak` jobs, models interleaved (m1, m2, m3, m1, ...), are queued on
Redis before one real `stoker worker` process starts; we time from its start to the
last job done and count the model loads in its log. Twice, in the same run:
  1. ``STOKER_SCHEDULING=fifo``: every job goes on the capability's one queue in
     submission order and the worker takes them in that order, as a plain Celery
     worker does, so the models alternate;
  2. ``STOKER_SCHEDULING=backlog`` (the default): it stays on the model it holds while
     that model has backlog, then switches to the model with the most waiting work.

Usage: python bench/thrash.py [--jobs 300] [--models 3] [--no-write]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, write_section  # noqa: E402
from tests.servers import redis_server  # noqa: E402

#: Fits one loaded joe voice (~90-115 MiB RSS), never two.
BUDGET = str(135 * 2**20)


def voices_env(k: int, folder: Path) -> dict[str, str]:
    """``k`` catalog voices m1..mk, each a copy of joe in its own files (one model each)."""
    from tests.piper_voices import copy_joe

    env = {"STOKER_BUDGETS__CPU": BUDGET}
    for i in range(1, k + 1):
        env.update(copy_joe(folder, f"m{i}").env(f"m{i}"))
    return env


def run(mode: str, jobs: int, k: int, redis_url: str, work: Path) -> tuple[int, float]:
    """Model loads and wall seconds for ``jobs`` jobs over ``k`` models in ``mode``."""
    import redis

    from stoker.client import Stoker
    from tests.deployment import Deployment

    redis.Redis.from_url(redis_url).flushall()
    work.mkdir(parents=True)
    env = {
        "STOKER_BROKER_URL": redis_url,
        "STOKER_DATA_DIR": str(work / "data"),
        "STOKER_SCHEDULING": mode,
        **voices_env(k, work / "voices"),
    }
    dep = Deployment(env=env, workdir=work)
    try:
        with Stoker(dep.settings()) as client:
            ids = [
                client.submit("speak", {"text": f"Line number {i}.", "voice": f"m{i % k + 1}"}).id
                for i in range(jobs)
            ]
            start = time.perf_counter()
            worker = dep.start_worker("speak")
            for job_id in ids:
                done = client.wait(job_id, timeout_s=3600, poll_s=0.05)
                assert done.state == "succeeded", done.error
            elapsed = time.perf_counter() - start
        return len(re.findall(r"\bloaded m\d+ on cpu:", worker.text())), elapsed
    finally:
        dep.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with redis_server(work / "redis") as url:
            for mode in ("fifo", "backlog"):
                results[mode] = run(mode, args.jobs, args.models, url, work / mode)

    fifo_loads, fifo_s = results["fifo"]
    rows = []
    for name, mode in (
        ("plain FIFO (one queue)", "fifo"),
        ("stoker backlog scheduling", "backlog"),
    ):
        loads, seconds = results[mode]
        rows.append(
            [
                name,
                str(loads),
                f"{100 * loads / args.jobs:.1f}",
                f"{seconds:.1f}",
                f"{fifo_loads / max(loads, 1):.1f}×",
                f"{fifo_s / seconds:.2f}×",
            ]
        )
    body = "\n\n".join(
        [
            "## Model thrashing: backlog scheduling vs FIFO (`bench/thrash.py`)",
            f"Machine: {machine()}. {args.models} models (copies of the Piper joe voice), "
            f"a CPU budget that fits one, {args.jobs} one-sentence `speak` jobs with the "
            "models interleaved, queued on Redis before one `stoker worker` starts.",
            markdown_table(
                ["consumption", "loads", "loads / 100 jobs", "wall s", "fewer loads", "speed-up"],
                rows,
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("thrash", body)


if __name__ == "__main__":
    main()
