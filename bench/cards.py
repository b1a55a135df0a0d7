"""Submitting without the model's files: what checking a request with a worker's model
card costs, next to checking it with the files on this machine.

Two submitting clients (`Stoker.submit`, in-process, one thread) on one throwaway
redis-server, each into a database of its own, submit the same jobs:

- **files here**: the config names the model at files on this machine (how every
  submission worked before model cards);
- **model card**: the config does not name it; a worker's card, published to Redis as
  a worker publishes it (with a heartbeat that names it), stands in.

Jobs: speak on a copy of the packaged joe voice (the voice's ``.onnx.json`` is read
for its speakers and sample rate) and image on a tiny diffusers pipeline (its
``model_index.json`` and component configs give the valid sizes). No worker consumes:
this measures submission alone. Runs are interleaved, and the table gives the median.

Usage: python bench/cards.py [--jobs 1000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, write_section  # noqa: E402
from stoker.client import Stoker  # noqa: E402
from stoker.config import Settings  # noqa: E402
from stoker.workers.cards import cards_of  # noqa: E402
from stoker.workers.catalog import ModelSpec  # noqa: E402
from stoker.workers.fleet import WorkerBeat, open_fleet  # noqa: E402
from tests.diffusers_models import build_text_to_image  # noqa: E402
from tests.piper_voices import copy_joe  # noqa: E402
from tests.servers import redis_server  # noqa: E402

REQUESTS: dict[str, dict[str, Any]] = {
    "speak": {"text": "Hello there. This is one sentence.", "voice": "narrator"},
    "image": {"prompt": "a lighthouse at dusk", "model": "lighthouse", "steps": 2, "seed": 7},
}


def models(work: Path) -> dict[str, dict[str, str]]:
    """``[models]`` entries for the voice and the pipeline, built under ``work``."""
    voice = copy_joe(work / "voices", "narrator")
    pipeline = build_text_to_image(work / "tiny-sd")
    return {
        "narrator": {"backend": "piper", "path": str(voice.model), "config": str(voice.config)},
        "lighthouse": {"backend": "diffusers", "path": str(pipeline)},
    }


def publish_cards(settings: Settings, entries: dict[str, dict[str, str]]) -> None:
    """What a worker with these models publishes: their cards and a heartbeat naming them."""
    specs = [
        ModelSpec(n, e["backend"], Path(e["path"]), Path(e["config"]) if "config" in e else None)
        for n, e in entries.items()
    ]
    cards = cards_of(specs)
    fleet = open_fleet(settings)
    fleet.publish_cards(list(cards.values()), ttl_s=3600)
    beat = WorkerBeat(
        hostname="gpu-box", device="cpu", scheduling="backlog", queues=[],
        serves=sorted(REQUESTS), pools=[], cards={n: c.id for n, c in cards.items()},
        at=time.time(),
    )  # fmt: skip
    fleet.publish(beat, ttl_s=3600)


def submit_rate(client: Stoker, kind: str, jobs: int) -> float:
    """Jobs per second of ``jobs`` submissions of ``kind`` (after one warm-up)."""
    client.submit(kind, REQUESTS[kind])
    start = time.perf_counter()
    for _ in range(jobs):
        client.submit(kind, REQUESTS[kind])
    return jobs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        entries = models(work)
        with redis_server(work / "redis") as url:
            server = url.rsplit("/", 1)[0]
            here = Settings(data_dir=work / "here", broker_url=f"{server}/0", models=entries)
            fleet = Settings(data_dir=work / "api-box", broker_url=f"{server}/1")
            publish_cards(fleet, entries)
            with Stoker(here) as local, Stoker(fleet) as remote:
                assert remote.catalog.get("narrator").card is not None  # a card, not files
                for _ in range(args.repeats):
                    for kind in REQUESTS:
                        for path, client in (("files here", local), ("model card", remote)):
                            rate = submit_rate(client, kind, args.jobs)
                            rates.setdefault((kind, path), []).append(rate)
    rows = []
    for kind in REQUESTS:
        files = statistics.median(rates[(kind, "files here")])
        card = statistics.median(rates[(kind, "model card")])
        rows.append([kind, str(args.jobs), f"{files:.0f}", f"{card:.0f}", f"{card / files:.2f}"])
    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `python bench/cards.py --jobs {args.jobs} "
            f"--repeats {args.repeats}`. `Stoker.submit` in-process on one thread, Redis "
            f"broker and job store (a throwaway redis-server), outputs in a local folder, "
            f"no worker consuming; median of {args.repeats} interleaved runs.",
            markdown_table(
                ["job", "jobs per run", "files here: jobs/s", "model card: jobs/s", "ratio"],
                rows,
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("cards", body)


if __name__ == "__main__":
    main()
