"""Where an audiobook's time goes in stoker: synthesis vs assembly, against plain Piper.

One book (N words, bench/audiobook.py's 20 chapters), in one run: plain Piper
synthesizing the whole text into one WAV (a subprocess, voice load included), then
stoker with one worker (voice preloaded, verification off) making an M4B and
per-chapter MP3s. From the worker's log: the sum of the chunks' synthesis times, the
chapters encoded while chunks were still running (each by the chunk that completed
it), and the assembly tail (last chunk done → job succeeded: the last chapter's
encoding, joining the M4B, storing). Prints a table; writes nothing.

Usage: TMPDIR=/var/tmp python bench/audiobook_split.py [--words 4000]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.audiobook import make_book, plain_piper  # noqa: E402
from bench.common import markdown_table  # noqa: E402
from tests.servers import redis_server  # noqa: E402

CHUNK_DONE = re.compile(r"chunk \d+/\d+ done in ([\d.]+)s")
SUCCEEDED = re.compile(r"job \S+ succeeded")
GROUP_MADE = re.compile(r"group \d+/\d+: .* made in ([\d.]+)s")


def stamp(line: str) -> float:
    """Epoch seconds of a worker log line ("2026-11-22 10:06:01,123 INFO ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=4000)
    args = parser.parse_args()
    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    with tempfile.TemporaryDirectory() as tmp_name, redis_server(Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        epub, plain, _ = make_book(tmp, args.words)
        plain_s = plain_piper(plain, tmp / "plain.wav")
        data = tmp / "data"
        data.mkdir()
        dep = Deployment(env={"STOKER_BROKER_URL": url, "STOKER_DATA_DIR": str(data)}, workdir=tmp)
        try:
            worker = dep.start_worker("audiobook", "--preload", "en_US-joe-medium")
            request = {"path": str(epub), "formats": ["m4b", "mp3"], "verify": "none"}
            with Stoker(load_settings(broker_url=url, data_dir=data)) as client:
                start = time.perf_counter()
                done = client.wait(client.submit("audiobook", request).id, timeout_s=7200)
                total = time.perf_counter() - start
            assert done.state == "succeeded", done.error
            lines = worker.text().splitlines()
        finally:
            dep.stop_all()
    chunk_lines = [line for line in lines if CHUNK_DONE.search(line)]
    synthesis = sum(float(CHUNK_DONE.search(line).group(1)) for line in chunk_lines)  # type: ignore[union-attr]
    finished = next(line for line in lines if SUCCEEDED.search(line))
    assembly = stamp(finished) - stamp(chunk_lines[-1])
    last_chunk = lines.index(chunk_lines[-1])
    early = [float(m.group(1)) for line in lines[:last_chunk] if (m := GROUP_MADE.search(line))]
    rows = [
        ["plain Piper, one WAV (voice load included)", f"{plain_s:.1f}"],
        ["stoker, submit → succeeded", f"{total:.1f}"],
        [f"  of which synthesis ({len(chunk_lines)} chunks, summed)", f"{synthesis:.1f}"],
        [
            f"  of which chapters encoded as they finished ({len(early)}, summed)",
            f"{sum(early):.1f}",
        ],
        ["  of which assembly tail (last chunk done → succeeded)", f"{assembly:.1f}"],
    ]
    print(markdown_table([f"audiobook, {args.words} words", "seconds"], rows))


if __name__ == "__main__":
    main()
