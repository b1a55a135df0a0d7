"""The baseline for bench/overhead.py: plain Celery, one trivial task, nothing else.

Run as a worker with: celery -A bench.plain_celery worker -P solo -Q plain
(the broker URL comes from BENCH_REDIS_URL).
"""

from __future__ import annotations

import os

from celery import Celery

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("plain", broker=url, backend=url)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="plain",
    worker_hijack_root_logger=False,
)


@app.task(name="plain.noop")
def noop(text: str) -> str:
    return text
