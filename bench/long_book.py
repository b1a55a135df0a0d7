"""A long audiobook's assembly, without a voice: time, peak memory and output sizes.

Builds a synthetic audiobook job of N hours (chunk WAVs of tone and noise written
straight into storage, ~7.2 s each at 22,050 Hz mono: 5,000 chunks for 10 h), then
runs the real worker path on it: every chunk through ``ChunkExecutor.run_chunk``
(its output exists, so only fan-in runs), which encodes each chapter when its last
chunk is recorded and assembles the book with the last one. Embedded default: SQLite
job store, local storage, one process; ``--s3``: storage in a bucket of a moto_server
started for the run (tests/servers.py), S3 over loopback (``--s3-latency-ms``: behind
a proxy that delays each request, as S3 a network away). Prints a table; writes
nothing to the docs.

Usage: TMPDIR=/var/tmp python bench/long_book.py [--hours 10] [--formats m4b,mp3]
       [--chapters 40] [--cold] [--s3 [--s3-latency-ms 10]]
       (--cold: chapters encoded in assembly, as before)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, s3_storage  # noqa: E402

RATE = 22_050
CHUNK_S = 7.2
MADE = re.compile(r"made in ([\d.]+)s")


class GroupTimes(logging.Handler):
    """Collects the seconds of every chapter made (workers/groups.py's log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if found := MADE.search(record.getMessage()):
            self.seconds.append(float(found.group(1)))


def chunk_wavs(variants: int = 8) -> list[bytes]:
    """A few different chunk WAVs (a tone with noise under it); chunks cycle through them.

    Content does not matter to assembly's cost; keys are per chunk all the same.
    """
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(7)
    t = np.arange(round(CHUNK_S * RATE)) / RATE
    out = []
    for v in range(variants):
        wave = np.sin(2 * np.pi * (180 + 40 * v) * t) * 6000 + rng.normal(0, 900, t.size)
        buf = io.BytesIO()
        sf.write(buf, wave.astype(np.int16), RATE, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def book_job(executor: Any, hours: float, chapters: int, formats: list[str]) -> Any:
    """Store the chunks and create the job record; returns the record."""
    from stoker.queues.records import ChunkRef, new_record
    from stoker.storage.keys import chunk_key, content_digest

    count = max(round(hours * 3600 / CHUNK_S), chapters)
    wavs = chunk_wavs()
    refs = []
    for i in range(count):
        key = chunk_key("audiobook", content_digest({"long-book": i}), "wav")
        executor.storage.put_bytes(key, wavs[i % len(wavs)], "audio/wav")
        refs.append(ChunkRef(index=i, key=key))
    per = count // chapters
    plan = [
        {
            "title": f"Chapter {c + 1}",
            "first": c * per,
            "count": per if c < chapters - 1 else count - c * per,
            "words": 0,
        }
        for c in range(chapters)
    ]
    params = {
        "name": "long.txt",
        "title": f"A {hours:g}-hour book",
        "author": "Bench",
        "voice": "en_US-joe-medium",
        "formats": formats,
        "sample_rate": RATE,
        "sentence_silence_s": 0.3,
        "chapter_silence_s": 1.5,
        "chapters": plan,
    }
    record = new_record(kind="audiobook", params=params, chunks=refs)
    executor.store.create(record)
    return record


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def s3_settings(enabled: bool, latency_ms: float) -> Iterator[dict[str, str]]:
    """Settings for storage in a bucket of a moto_server of our own, behind a delaying
    proxy if ``latency_ms`` ({} when not enabled)."""
    if not enabled:
        yield {}
        return
    import boto3

    with contextlib.ExitStack() as stack:
        endpoint, _ = s3_storage(stack, latency_ms)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="long-book")
        client.close()
        yield {"storage_url": "s3://long-book/stoker", "s3_endpoint_url": endpoint}


def local_file(executor: Any, key: str, folder: Path) -> Path:
    """The object at ``key`` as a file: in place on local storage, downloaded from S3."""
    in_place = folder / "data" / "outputs" / key
    return in_place if in_place.is_file() else executor.storage.download(key, folder / key)


def run(
    hours: float, chapters: int, formats: list[str], cold: bool, folder: Path, s3: dict[str, str]
) -> list[str]:
    from stoker.config import load_settings
    from stoker.jobs import audio
    from stoker.workers.process import build_executor

    executor = build_executor(load_settings(data_dir=folder / "data", **s3), "cpu")
    started = time.perf_counter()
    record = book_job(executor, hours, chapters, formats)
    build_s, rss_before = time.perf_counter() - started, peak_rss_mib()
    times = GroupTimes()
    logging.getLogger("stoker.workers.groups").addHandler(times)
    logging.getLogger("stoker.workers.groups").setLevel(logging.INFO)
    last = len(record.chunks) - 1
    started = time.perf_counter()
    for index in range(last):
        executor.run_chunk(record.id, index, {})
    fan_in_s, rss_chapters = time.perf_counter() - started, peak_rss_mib()
    early = sum(times.seconds)
    if cold:  # as before chapters were encoded early: everything in assembly
        for info in list(executor.storage.list("chunks/audiobook-groups/")):
            executor.storage.delete(info.key)
    started = time.perf_counter()
    executor.run_chunk(record.id, last, {})
    tail_s = time.perf_counter() - started
    done = executor.store.get(record.id)
    assert done.state == "succeeded", done.error
    sizes: dict[str, int] = {}
    for out in done.outputs:
        ext = out.name.rsplit(".", 1)[-1]
        sizes[ext] = sizes.get(ext, 0) + out.size_bytes
    book = next((o for o in done.outputs if o.name.endswith(".m4b")), None)
    checks = ""
    if book is not None:
        path = local_file(executor, book.key, folder)
        checks = f"M4B {audio.duration_s(path) / 3600:.2f} h, {m4b_offsets(path)}"
    wav = next((o for o in done.outputs if o.name.endswith(".wav")), None)
    if wav is not None:
        checks += f"{'; ' if checks else ''}{wav_check(local_file(executor, wav.key, folder))}"
    in_tail = sum(times.seconds) - early  # chapters made in assembly: the last one, or all
    print(
        f"built the job in {build_s:.0f}s; fan-in of {last} chunks (with chapter "
        f"encoding) {fan_in_s:.0f}s; tail {tail_s:.2f}s, of which chapter encoding "
        f"{in_tail:.2f}s and the rest {tail_s - in_tail:.2f}s; {checks}",
        file=sys.stderr,
    )
    return [
        f"{hours:g}",
        str(chapters),
        str(len(record.chunks)),
        "+".join(formats) + (" (cold)" if cold else "") + (" on S3" if s3 else ""),
        f"{early:.0f}",
        f"{tail_s:.1f}",
        f"{rss_before:.0f} → {rss_chapters:.0f} → {peak_rss_mib():.0f}",
        ", ".join(f"{ext} {n / 2**20:,.0f} MiB" for ext, n in sizes.items() if ext != "json"),
        checks,
    ]


def wav_check(path: Path) -> str:
    """The first chapter WAV's container and length as readers see them, its last
    second read back (past 4 GiB, a RIFF size field would have wrapped)."""
    import soundfile as sf

    info = sf.info(str(path))
    tail = sf.read(str(path), start=info.frames - RATE, dtype="int16")[0]
    return (
        f"first WAV: {path.open('rb').read(4).decode()}, {info.duration / 3600:.2f} h, "
        f"last second read back: {tail.size} samples, peak {abs(tail).max()}"
    )


def m4b_offsets(path: Path) -> str:
    """Which chunk-offset table the M4B's moov uses: stco (32-bit) or co64 (64-bit)."""
    from mutagen.mp4 import Atoms

    with path.open("rb") as f:
        atoms = Atoms(f)
        stbl = atoms.path(b"moov", b"trak", b"mdia", b"minf", b"stbl")[-1]
        kinds = [child.name.decode() for child in stbl.children or []]
    return "co64" if "co64" in kinds else "stco"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--chapters", type=int, default=0, help="default: 4 per hour")
    parser.add_argument("--formats", default="m4b,mp3")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--s3", action="store_true", help="storage on a local moto_server")
    parser.add_argument(
        "--s3-latency-ms", type=float, default=0.0, help="with --s3: added to each request"
    )
    args = parser.parse_args()
    chapters = args.chapters or max(1, round(args.hours * 4))
    formats = args.formats.split(",")
    with (
        tempfile.TemporaryDirectory(prefix="long-book-") as tmp,
        s3_settings(args.s3, args.s3_latency_ms) as s3,
    ):
        row = run(args.hours, chapters, formats, args.cold, Path(tmp), s3)
    if args.s3 and args.s3_latency_ms:
        row[3] += f" (+{args.s3_latency_ms:g} ms a request)"
    print(f"Machine: {machine()}.")
    header = [
        "hours",
        "chapters",
        "chunks",
        "formats",
        "chapter encoding, summed (s)",
        "assembly tail (s)",
        "peak RSS MiB (job built → chapters → end)",
        "outputs",
        "checks",
    ]
    print(markdown_table(header, [row]))


if __name__ == "__main__":
    main()
