"""HTTP submission: throughput and latency of `POST /v1/jobs` while the queue fills up.

`stoker api` (uvicorn, one process) on loopback over a throwaway redis-server, no worker
consuming, so the echo queue really holds every job submitted (--jobs, 10,000 by
default). A bounded load generator (--concurrency httpx clients, each sending its next
request when the previous one is answered) submits echo jobs; each request's latency is
measured from send to the 202. The baseline, in the same run: the plain library,
`Stoker.submit` in-process on one thread, onto another Redis database (the same
validation, record and enqueue, no HTTP). The load generator runs on the same cores as
the server, so it takes a share of the CPU from it.

Usage: python bench/api.py [--jobs 10000] [--concurrency 16] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, write_section  # noqa: E402
from tests.api_server import api_server, make_key  # noqa: E402
from tests.servers import redis_server  # noqa: E402

WARM_UP = 50  # requests before timing: imports, connections, first Redis scripts


class Result:
    """Wall time and per-request latencies (s) of one way of submitting ``jobs`` jobs."""

    def __init__(self, name: str, concurrency: int, wall_s: float, latencies: list[float]):
        self.name, self.concurrency = name, concurrency
        self.wall_s, self.latencies = wall_s, sorted(latencies)

    def row(self) -> list[str]:
        n = len(self.latencies)
        p99 = self.latencies[min(n - 1, int(n * 0.99))]
        return [
            self.name,
            str(n),
            str(self.concurrency),
            f"{n / self.wall_s:.0f}",
            f"{statistics.median(self.latencies) * 1000:.1f}",
            f"{p99 * 1000:.1f}",
        ]


def settings_env(data_dir: Path, redis_url: str) -> dict[str, str]:
    return {"STOKER_DATA_DIR": str(data_dir), "STOKER_BROKER_URL": redis_url}


async def _client_loop(client: object, url: str, todo: list[int], out: list[float]) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    while todo:
        i = todo.pop()
        start = time.perf_counter()
        response = await client.post(url, json={"kind": "echo", "params": {"text": f"job {i}"}})
        out.append(time.perf_counter() - start)
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")


async def _load(base: str, key: str, jobs: int, concurrency: int) -> tuple[float, list[float]]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        url = f"{base}/v1/jobs"
        await _client_loop(client, url, list(range(WARM_UP)), [])
        todo = list(range(WARM_UP, WARM_UP + jobs))
        latencies: list[float] = []
        start = time.perf_counter()
        await asyncio.gather(
            *(_client_loop(client, url, todo, latencies) for _ in range(concurrency))
        )
        return time.perf_counter() - start, latencies


def via_http(work: Path, redis_url: str, jobs: int, concurrency: int) -> tuple[Result, int]:
    """The HTTP run, and the echo queue's depth after it."""
    from stoker.client import Stoker
    from stoker.config import load_settings

    env = settings_env(work / "data-http", redis_url)
    os.environ.update(env)
    settings = load_settings()
    key = make_key(settings, "bench")
    with api_server(env, work) as base:
        wall_s, latencies = asyncio.run(_load(base, key, jobs, concurrency))
    from stoker.api.state import measure_depth

    with Stoker(settings) as client:
        depth = measure_depth(client, "echo")
    return Result(
        "`POST /v1/jobs` over HTTP (uvicorn, 1 process)", concurrency, wall_s, latencies
    ), depth


def via_library(work: Path, redis_url: str, jobs: int) -> Result:
    """The same jobs through `Stoker.submit` in this process, one thread."""
    from stoker.client import Stoker
    from stoker.config import load_settings

    os.environ.update(settings_env(work / "data-lib", redis_url))
    latencies = []
    with Stoker(load_settings()) as client:
        for i in range(WARM_UP):
            client.submit("echo", {"text": f"warm {i}"})
        start = time.perf_counter()
        for i in range(jobs):
            t = time.perf_counter()
            client.submit("echo", {"text": f"job {i}"})
            latencies.append(time.perf_counter() - t)
        wall_s = time.perf_counter() - start
    return Result("`Stoker.submit` in-process (plain library)", 1, wall_s, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with redis_server(work / "redis") as url:
            server = url.rsplit("/", 1)[0]  # two databases: one per path
            http, depth = via_http(work, f"{server}/0", args.jobs, args.concurrency)
            library = via_library(work, f"{server}/1", args.jobs)
    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `python bench/api.py --jobs {args.jobs} "
            f"--concurrency {args.concurrency}`. Echo jobs, Redis broker and job store, no "
            f"worker consuming: the echo queue held {depth} messages at the end "
            f"({WARM_UP} warm-up requests first). Latency: send to answer, per request.",
            markdown_table(
                ["path", "jobs", "concurrency", "jobs/s", "p50 ms", "p99 ms"],
                [http.row(), library.row()],
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("api", body)


if __name__ == "__main__":
    main()
