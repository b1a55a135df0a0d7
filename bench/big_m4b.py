"""An M4B past 4 GiB: joined, tagged with a cover, and read back.

A 64 kbit/s mono M4B passes 4 GiB at about 150 hours, far more than any test can
synthesize or encode. But the audiobook's M4B is not encoded as one piece: each
chapter's AAC is encoded when the chapter finishes, and assembly only joins their
packets (jobs/audio.py ``join_m4b``). So this encodes ONE chapter of ``--chapter-h``
hours (a tone under noise, at the audiobook's rate and bit rate) and joins it
``--chapters`` times through the same functions assembly calls (``join_m4b``, then
``add_cover``), then checks what a player needs, reading the file back with mutagen
and with FFmpeg (PyAV):

- the file is over 4 GiB and its sample tables use 64-bit chunk offsets (``co64``);
- mutagen reads every chapter title and start, and the cover;
- FFmpeg reads the same chapter starts and the duration, and decodes audio at the
  start of the last chapter (a seek past 4 GiB lands where the markers say).

Usage: TMPDIR=/var/tmp python bench/big_m4b.py [--chapters 152] [--chapter-h 1.0]
       [--keep]   (needs about twice the M4B's size free: mutagen rewrites it)
Prints a table; writes nothing to the docs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table  # noqa: E402

RATE = 22_050
BLOCK_S = 60  # the tone is written a minute at a time


def chapter_wav(path: Path, hours: float) -> Path:
    """A ``hours``-long mono 16-bit WAV: a tone with noise under it."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(7)
    t = np.arange(BLOCK_S * RATE) / RATE
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16", format="WAV") as out:
        for minute in range(round(hours * 60)):
            wave = np.sin(2 * np.pi * (180 + minute % 7 * 40) * t) * 6000
            out.write((wave + rng.normal(0, 900, t.size)).astype(np.int16))
    return path


def has_co64(path: Path) -> bool:
    """Whether the MP4's sample tables use 64-bit chunk offsets (mutagen's atom tree)."""
    from mutagen.mp4 import Atoms

    with path.open("rb") as f:
        atoms = Atoms(f)
    stack = list(atoms.atoms)
    while stack:
        atom = stack.pop()
        if atom.name == b"co64":
            return True
        stack.extend(atom.children or [])
    return False


def read_back(path: Path, titles: list[str], starts: list[float]) -> list[list[str]]:
    """Checks as table rows: [what, expected, found, ok]."""
    import av
    from mutagen.mp4 import MP4

    tagged = MP4(str(path))
    chapters = tagged.chapters or []
    size = path.stat().st_size
    co64 = has_co64(path)
    rows = [
        ["file size", "> 4 GiB", f"{size / 2**30:.2f} GiB", str(size > 2**32)],
        ["64-bit chunk offsets (co64)", "yes", str(co64), str(co64)],
    ]
    found_titles = [c.title for c in chapters]
    rows.append(
        [
            "mutagen: chapter titles",
            f"{len(titles)}",
            f"{len(found_titles)}",
            str(found_titles == titles),
        ]
    )
    worst = max((abs(c.start - s) for c, s in zip(chapters, starts, strict=False)), default=1e9)
    rows.append(
        [
            "mutagen: chapter starts",
            "as joined",
            f"max error {worst * 1000:.1f} ms",
            str(len(chapters) == len(starts) and worst < 0.05),
        ]
    )
    cover = tagged.tags.get("covr") if tagged.tags else None
    rows.append(["mutagen: cover", "1 image", f"{len(cover or [])}", str(bool(cover))])
    with av.open(str(path)) as container:
        ff = container.chapters()
        ff_starts = [float(c["start"] * c["time_base"]) for c in ff]
        ff_worst = max((abs(a - b) for a, b in zip(ff_starts, starts, strict=False)), default=1e9)
        rows.append(
            [
                "FFmpeg: chapter starts",
                f"{len(starts)}",
                f"{len(ff)}, max error {ff_worst * 1000:.1f} ms",
                str(len(ff) == len(starts) and ff_worst < 0.05),
            ]
        )
        duration_h = (container.duration or 0) / 1e6 / 3600
        rows.append(
            [
                "FFmpeg: duration",
                f"{starts[-1] / 3600:.1f}+ h",
                f"{duration_h:.2f} h",
                str(duration_h * 3600 > starts[-1]),
            ]
        )
        stream = container.streams.audio[0]
        last = starts[-1]
        container.seek(int(last / stream.time_base), stream=stream)
        frame = next(container.decode(stream))
        at = float(frame.pts * stream.time_base)
        rows.append(
            [
                "FFmpeg: decode at the last chapter",
                f"{last:.0f} s",
                f"{at:.0f} s",
                str(abs(at - last) < 1.0),
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=152)
    parser.add_argument("--chapter-h", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the M4B (prints its path)")
    args = parser.parse_args()

    from stoker.jobs import audio

    work = Path(tempfile.mkdtemp(prefix="stoker-big-m4b-"))
    started = time.perf_counter()
    wav = chapter_wav(work / "chapter.wav", args.chapter_h)
    aac = work / "chapter.m4a"
    audio.encode_aac([wav], aac, RATE, 0.0, 0.0)
    wav.unlink()
    encoded_s = time.perf_counter() - started

    titles = [f"Chapter {n + 1}: the long road" for n in range(args.chapters)]
    parts = [audio.BookChapter(title, aac, 0) for title in titles]
    book = work / "book.m4b"
    started = time.perf_counter()
    starts = audio.join_m4b(parts, book, {"title": "A very long book", "genre": "Audiobook"})
    joined_s = time.perf_counter() - started
    started = time.perf_counter()
    audio.add_cover(book, cover_png(), "image/png")
    cover_s = time.perf_counter() - started
    rows = read_back(book, titles, starts)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"Machine: {machine()}. Command: `python bench/big_m4b.py --chapters "
        f"{args.chapters} --chapter-h {args.chapter_h}`.\n"
    )
    hours = args.chapters * args.chapter_h
    print(
        markdown_table(
            ["step", "seconds"],
            [
                [
                    f"encode one {args.chapter_h:g} h chapter "
                    f"(AAC {audio.AAC_BIT_RATE // 1000} kbit/s)",
                    f"{encoded_s:.1f}",
                ],
                [
                    f"join {args.chapters} chapters ({hours:g} h) into the M4B, no re-encoding",
                    f"{joined_s:.1f}",
                ],
                ["add the cover (mutagen rewrites the file)", f"{cover_s:.1f}"],
            ],
        )
    )
    print(f"\nPeak RSS {peak_mib:.0f} MiB.\n")
    print(markdown_table(["check", "expected", "found", "ok"], rows))
    if args.keep:
        print(f"\nkept: {book}")
    else:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    if not all(r[-1] == "True" for r in rows):
        raise SystemExit("some checks failed")


def cover_png() -> bytes:
    """A small PNG to embed as the book's cover."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (600, 600), (40, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
