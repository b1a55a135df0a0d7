"""An M4B past 4 GiB, made by the functions audiobook assembly calls, reads back whole.

A 64 kbit/s M4B passes 2³² bytes at ~150 hours. Assembly never encodes the book in one
piece: it joins the chapters' AAC packets (audio.join_m4b), so one encoded chapter
joined many times makes a real >4 GiB book in about a minute (bench/big_m4b.py holds
the checks, and prints them as a table). Writes ~4.4 GB to the temp folder and
removes it; peaks near 1 GiB of memory (FFmpeg's MP4 index, one entry per frame).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.big_m4b import chapter_wav, cover_png, read_back
from stoker.jobs import audio

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHAPTER_H = 1.0
# 152 hours: 4.13 GiB at 64 kbit/s. Under 256 chapters: the Nero chapter list (chpl,
# what mutagen and some players read) counts chapters in one byte, and FFmpeg writes
# at most 255 there; its QuickTime chapter track (what FFmpeg and Apple read) has all.
CHAPTERS = 152
FREE_BYTES_NEEDED = 6 * 2**30


def test_an_m4b_past_4_gib_keeps_its_chapters_cover_and_audio(tmp_path: Path) -> None:
    # Given room on the disk and one 1-hour chapter encoded as assembly encodes one
    free = shutil.disk_usage(tmp_path).free
    assert free > FREE_BYTES_NEEDED, f"needs {FREE_BYTES_NEEDED >> 30} GiB free in {tmp_path}"
    wav = chapter_wav(tmp_path / "chapter.wav", CHAPTER_H)
    aac = tmp_path / "chapter.m4a"
    audio.encode_aac([wav], aac, 22_050, 0.0, 0.0)
    wav.unlink()
    titles = [f"Chapter {n + 1}" for n in range(CHAPTERS)]
    book = tmp_path / "book.m4b"
    try:
        # When the chapters are joined into a 152-hour book and the cover is added
        parts = [audio.BookChapter(title, aac, 0) for title in titles]
        starts = audio.join_m4b(parts, book, {"title": "Long", "genre": "Audiobook"})
        audio.add_cover(book, cover_png(), "image/png")

        # Then it is over 4 GiB with 64-bit offsets, mutagen and FFmpeg read every
        # chapter title and start and the cover, and audio decodes past 2³² bytes
        checks = read_back(book, titles, starts)
        failed = [row for row in checks if row[-1] != "True"]
        assert not failed, f"checks failed (what, expected, found, ok): {failed}"
    finally:
        book.unlink(missing_ok=True)  # pytest keeps recent temp folders: not 4 GiB of them


def test_a_book_of_300_chapters_keeps_all_in_the_quicktime_chapter_track(tmp_path: Path) -> None:
    import av
    from mutagen.mp4 import MP4

    # Given a chapter of one second and a book of 300 such chapters
    wav = chapter_wav(tmp_path / "chapter.wav", 1 / 60)
    aac = tmp_path / "chapter.m4a"
    audio.encode_aac([wav], aac, 22_050, 0.0, 0.0)
    parts = [audio.BookChapter(f"Chapter {n + 1}", aac, 0) for n in range(300)]

    # When they are joined
    starts = audio.join_m4b(parts, tmp_path / "book.m4b", {"title": "Many"})

    # Then FFmpeg reads all 300 markers, where they were put; the Nero list (mutagen)
    # holds the first 255, a limit of that format (a one-byte count), not of stoker
    with av.open(str(tmp_path / "book.m4b")) as container:
        marks = [float(c["start"] * c["time_base"]) for c in container.chapters()]
    assert marks == pytest.approx(starts, abs=0.05) and len(marks) == 300
    nero = MP4(str(tmp_path / "book.m4b")).chapters
    assert nero is not None and [c.title for c in nero] == [p.title for p in parts[:255]]
