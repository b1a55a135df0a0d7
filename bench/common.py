"""Helpers shared by the benchmarks: timing, tables, and writing docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def timed_interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall-clock seconds of each of ``fns``, run in turn ``repeats`` times.

    Interleaving (A, B, A, B, ...) keeps slow drift of the machine (thermal, other
    load) from landing on one side of the comparison.
    """
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    mem_gib = psutil.virtual_memory().total / 2**30
    python = platform.python_version()
    return f"{psutil.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, no GPU, Python {python}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace the section between <!-- name:start --> and <!-- name:end --> in the docs."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


def timed_on_workers(
    queue: str,
    model: str,
    workers: int,
    redis_url: str,
    data_dir: Path,
    submit: Callable[[Any], Any],
    storage: dict[str, str] | None = None,
) -> float:
    """Seconds from ``submit(client)`` to its job being done, served by ``workers`` real
    `stoker worker` processes on ``queue`` with ``model`` preloaded (started beforehand).
    ``storage``: the storage settings as environment (see :func:`s3_env`); default the
    local directory."""
    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    data_dir.mkdir(parents=True)
    storage = storage or {}
    env = {"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)} | storage
    dep = Deployment(env=env, workdir=data_dir)
    overrides = {k.removeprefix("STOKER_").lower(): v for k, v in storage.items()}
    try:
        for _ in range(workers):  # each returns once its model is loaded and it consumes
            dep.start_worker(queue, "--preload", model)
        settings = load_settings(broker_url=redis_url, data_dir=data_dir, **overrides)
        with Stoker(settings) as client:
            start = time.perf_counter()
            done = client.wait(submit(client).id, timeout_s=7200, poll_s=0.05)
            elapsed = time.perf_counter() - start
        assert done.state == "succeeded", done.error
        return elapsed
    finally:
        dep.stop_all()


def s3_env(endpoint: str, run: str) -> dict[str, str]:
    """Settings (as environment) for outputs in a new bucket on the S3 server at ``endpoint``."""
    import boto3

    bucket = f"bench-{run}-{int(time.time())}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {"STOKER_STORAGE_URL": f"s3://{bucket}/stoker", "STOKER_S3_ENDPOINT_URL": endpoint}


def s3_storage(stack: contextlib.ExitStack, latency_ms: float) -> tuple[str, str]:
    """A moto S3 server for the run (behind a delaying proxy if ``latency_ms``): its
    endpoint, and how the table names it."""
    from bench.latency_proxy import delayed
    from tests.servers import moto_s3_server

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # moto takes any
        os.environ.setdefault(name, "bench")
    endpoint = stack.enter_context(moto_s3_server())
    if latency_ms:  # S3 a network away: each request arrives later
        endpoint = stack.enter_context(delayed(endpoint, latency_ms))
    return endpoint, f"S3 (moto_server, +{latency_ms:g} ms a request)"
