"""Narrating a book: stoker against plain piper on the same text, in one run.

A ~20,000-word book (tests/books.py's generator, 20 chapters, no two sentences alike):
  1. plain piper: load the voice, synthesize the whole text to one WAV in one loop;
  2. stoker, one worker process (voice preloaded), Redis, local outputs: from
     submitting the EPUB to the M4B and per-chapter files being written;
  3. the same with two worker processes on the same cores.
Reported as characters per second and the ratio to plain piper.

Usage: python bench/audiobook.py [--words 20000] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_on_workers, write_section  # noqa: E402
from bench.overhead import PLAIN_PIPER  # noqa: E402
from tests.books import write_epub  # noqa: E402
from tests.servers import redis_server  # noqa: E402
from tests.texts import story  # noqa: E402

CHAPTERS = 20


def make_book(folder: Path, n_words: int) -> tuple[Path, Path, int]:
    """An EPUB and the same text as a plain file; returns both and the character count."""
    sentences = story(n_words).split(". ")
    per = len(sentences) // CHAPTERS
    chapters = [
        (f"Chapter {i + 1}", ". ".join(sentences[i * per : (i + 1) * per]) + ".")
        for i in range(CHAPTERS)
    ]
    epub = write_epub(folder / "book.epub", "The Long Watch", "Bench Writer", chapters)
    plain = folder / "book.txt"
    plain.write_text("\n\n".join(text for _, text in chapters), encoding="utf-8")
    return epub, plain, sum(len(text) for _, text in chapters)


def plain_piper(text: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", PLAIN_PIPER, str(text), str(out)], check=True)
    return time.perf_counter() - start


def via_stoker(epub: Path, workers: int, redis_url: str, data_dir: Path) -> float:
    request = {"path": str(epub), "formats": ["m4b", "mp3"]}
    return timed_on_workers(
        "audiobook",
        "en_US-joe-medium",
        workers,
        redis_url,
        data_dir,
        lambda client: client.submit("audiobook", request),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        epub, plain, chars = make_book(work, args.words)
        plain_s = plain_piper(plain, work / "plain.wav")
        with redis_server(work / "redis") as url:
            one_s = via_stoker(epub, 1, url, work / "d1")
            two_s = via_stoker(epub, 2, url, work / "d2")

    def row(name: str, seconds: float) -> list[str]:
        return [name, f"{seconds:.0f}", f"{chars / seconds:.0f}", f"{plain_s / seconds:.2f}"]

    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `python bench/audiobook.py --words {args.words}`. "
            f"{args.words} words, {CHAPTERS} chapters, {chars} characters; voice en_US-joe-medium.",
            markdown_table(
                ["path", "wall s", "chars / s", "vs plain piper"],
                [
                    row("plain piper: whole text, one loop, one WAV (incl. voice load)", plain_s),
                    row("stoker, 1 worker: M4B + 20 MP3s (voice warm)", one_s),
                    row("stoker, 2 workers on the same 2 cores", two_s),
                ],
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("audiobook", body)


if __name__ == "__main__":
    main()
