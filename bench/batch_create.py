"""Creating a big batch: stoker recording and queueing one job per line, against plain
Celery publishing one message per line, on a throwaway redis-server, in the same run.

Creating an OpenAI batch (`POST /v1/batches`) or a Python `Stoker.submit_batch` makes
a job per line: validate it, write its record, queue its chunk. Plain Celery's
`send_task` per line is the floor for a design that publishes each line as it goes;
with kombu's publish batch (`Producer.batch`, Redis pipelines) it is the floor for one
that publishes lines in groups, as stoker does since 2026-12-06 (queues/submit.py).
Every line is a one-sentence embed request; storage is a local folder.

Usage: python bench/batch_create.py [--lines 5000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_interleaved, write_section  # noqa: E402
from stoker.client import Stoker  # noqa: E402
from stoker.config import Settings, load_settings  # noqa: E402
from tests.api_server import auth, make_key  # noqa: E402
from tests.servers import redis_server  # noqa: E402


def openai_lines(n: int) -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "all-MiniLM-L6-v2", "input": f"Sentence number {i}."},
            }
        )
        for i in range(n)
    ).encode()


def plain_celery(url: str, n: int, together: bool) -> Callable[[], object]:
    """Publish ``n`` one-sentence messages with plain Celery, one by one or in kombu's
    publish batch."""
    from celery import Celery

    app = Celery("plain", broker=url)

    def run() -> None:
        with (
            app.producer_or_acquire() as producer,
            producer.batch() if together else contextlib.nullcontext(),
        ):
            for i in range(n):
                app.send_task(
                    "plain.embed",
                    args=(f"job-{i}", 0, {"texts": [f"Sentence number {i}."]}),
                    queue="plain",
                    producer=producer,
                )

    return run


def stoker_api(settings: Settings, n: int, stack: contextlib.ExitStack) -> Callable[[], object]:
    """`POST /v1/batches` of ``n`` embedding lines, through the app in process (open
    until ``stack`` closes)."""
    from fastapi.testclient import TestClient

    from stoker.api.app import create_app

    headers = auth(make_key(settings, "bench"))
    client = stack.enter_context(TestClient(create_app(settings, deliver_webhooks=False)))
    upload = client.post(
        "/v1/files",
        files={"file": ("lines.jsonl", openai_lines(n))},
        data={"purpose": "batch"},
        headers=headers,
    ).json()
    body = {"input_file_id": upload["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}

    def run() -> None:
        created = client.post("/v1/batches", headers=headers, json=body)
        assert created.status_code == 200, created.text
        assert created.json()["request_counts"]["total"] == n

    return run


def stoker_python(settings: Settings, n: int) -> Callable[[], object]:
    """``Stoker.submit_batch`` of ``n`` embed requests."""
    stoker = Stoker(settings)
    requests = [{"text": f"Sentence number {i}."} for i in range(n)]

    def run() -> None:
        batch = stoker.submit_batch("embed", requests, source="bench")
        assert batch.progress.total == n and batch.progress.done == 0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    n = args.lines
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        url = stack.enter_context(redis_server(Path(tmp) / "redis"))
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            broker_url=url,
            api={"max_upload_bytes": 1 << 30, "max_batch_lines": max(n, 50_000)},
        )
        cases = [
            ("plain Celery, `send_task` per line", plain_celery(url, n, together=False)),
            ("plain Celery, `send_task` in `producer.batch()`", plain_celery(url, n, True)),
            ("stoker `POST /v1/batches`", stoker_api(settings, n, stack)),
            ("stoker `Stoker.submit_batch`", stoker_python(settings, n)),
        ]
        times = timed_interleaved([fn for _, fn in cases], args.repeats)
    base = times[0]
    rows = [
        [name, f"{t:.2f}", f"{n / t:,.0f}", f"{base / t:.2f}"]
        for (name, _), t in zip(cases, times, strict=True)
    ]
    table = markdown_table(["how", "s (median)", "lines/s", "× plain per line"], rows)
    body = (
        f"Machine: {machine()}. Command: `python bench/batch_create.py --lines {n} "
        f"--repeats {args.repeats}`. {n} one-sentence embed lines on a throwaway "
        f"redis-server (broker and job store), local storage; median of {args.repeats} "
        f"interleaved. Plain Celery only publishes; stoker also validates each line and "
        f"writes its job record.\n\n{table}"
    )
    print(body)
    if not args.no_write:
        write_section("batch_create", body)


if __name__ == "__main__":
    main()
