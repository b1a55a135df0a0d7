"""Writing a book's audio: chapters encoded to AAC one by one and joined into an M4B
without re-encoding, markers where the chapters start; WAV past 4 GiB as RF64."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from stoker.jobs import audio

RATE = 22_050
AMP = 8000  # int16 peak of the test tones


def tone_wav(path: Path, seconds: float, hz: float) -> Path:
    t = np.arange(round(seconds * RATE)) / RATE
    sf.write(path, (np.sin(2 * np.pi * hz * t) * AMP).astype(np.int16), RATE, subtype="PCM_16")
    return path


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])


def packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


@pytest.fixture()
def chapters(tmp_path: Path) -> list[audio.BookChapter]:
    """Three chapters of tones (0.7 s + 0.45 s, 1.3 s, 0.5 s), each an AAC file led by
    0.8 s of silence except the first: what chapter outputs hold for a book."""
    plan = [[0.7, 0.45], [1.3], [0.5]]
    lead = round(0.8 * RATE)
    made = []
    for c, lengths in enumerate(plan):
        parts = [
            tone_wav(tmp_path / f"{c}-{i}.wav", s, 300 + 150 * c) for i, s in enumerate(lengths)
        ]
        aac = tmp_path / f"chapter-{c}.m4a"
        audio.encode_aac(parts, aac, RATE, 0.3, 0.8 if c else 0.0)
        made.append(audio.BookChapter(f"Chapter {c + 1}", aac, lead if c else 0))
    return made


def test_joined_chapters_have_markers_where_their_sound_starts(
    chapters: list[audio.BookChapter], tmp_path: Path
) -> None:
    # When the chapters' AAC files are joined into an M4B
    book = tmp_path / "book.m4b"
    starts = audio.join_m4b(chapters, book, {"title": "Tones", "artist": "Test"})
    # Then every chapter's marker is where its tone starts in the decoded book,
    # with silence (the pause between chapters) just before it
    x = decode(book) * 32768
    for start in starts:
        at = round(start * RATE)
        assert np.abs(x[at + 20 : at + 1000]).max() > 0.8 * AMP, start
        if at:
            assert np.abs(x[at - 1000 : at - 20]).max() < 0.05 * AMP, start
    # And the chapter list read back has the titles, once each, at those times
    from mutagen.mp4 import MP4

    tagged = MP4(str(book))
    assert tagged.chapters is not None
    assert [c.title for c in tagged.chapters] == ["Chapter 1", "Chapter 2", "Chapter 3"]
    assert [round(c.start, 3) for c in tagged.chapters] == [round(s, 3) for s in starts]
    assert tagged.tags is not None and tagged.tags["\xa9nam"] == ["Tones"]
    # And the book's length is the chapters' (tones, gaps, pauses) plus a few ms per joint
    expected_s = (0.7 + 0.3 + 0.45) + (0.8 + 1.3) + (0.8 + 0.5)
    assert expected_s <= x.size / RATE <= expected_s + 3 * 2048 / RATE


def test_joining_copies_the_chapters_packets_without_re_encoding(
    chapters: list[audio.BookChapter], tmp_path: Path
) -> None:
    book = tmp_path / "book.m4b"
    audio.join_m4b(chapters, book, {"title": "Tones"})
    assert packets(book) == [p for c in chapters for p in packets(c.aac)]


def test_a_chapter_encodes_to_the_same_bytes_twice(tmp_path: Path) -> None:
    # Two workers racing for one chapter store the same object
    parts = [tone_wav(tmp_path / f"{i}.wav", 0.4, 440) for i in range(3)]
    for fmt, ext in [("aac", "m4a"), ("mp3", "mp3"), ("flac", "flac"), ("wav", "wav")]:
        a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        for out in (a, b):
            if fmt == "aac":
                audio.encode_aac(parts, out, RATE, 0.3, 1.5)
            else:
                audio.concatenate(parts, out, fmt, RATE, 0.3)
        assert a.read_bytes() == b.read_bytes(), fmt


def test_frames_of_counts_what_concatenate_writes(tmp_path: Path) -> None:
    parts = [tone_wav(tmp_path / f"{i}.wav", s, 440) for i, s in enumerate([0.5, 0.25, 1.0])]
    seconds = audio.concatenate(parts, tmp_path / "out.flac", "flac", RATE, 0.3)
    assert (
        audio.frames_of(parts, RATE, 0.3)
        == round(seconds * RATE)
        == sf.info(str(tmp_path / "out.flac")).frames
    )


def test_a_wav_over_4_gib_is_rf64_and_smaller_ones_stay_wav() -> None:
    # 16-bit mono: 4 GiB of samples is 2**31 frames (about 27 hours at 22,050 Hz)
    limit_frames = audio.WAV_LIMIT_BYTES // 2
    assert audio.wav_container(limit_frames) == "WAV"
    assert audio.wav_container(limit_frames + 1) == "RF64"
    assert audio.wav_container(30 * 3600 * RATE) == "RF64"  # a 30-hour chapter
    assert audio.wav_container(10 * 3600 * RATE) == "WAV"
    assert audio.wav_container(10 * 3600 * 48_000, channels=2) == "RF64"


def test_the_writer_picks_rf64_from_the_announced_length(tmp_path: Path) -> None:
    # Given a writer told that 30 hours will follow (nothing that large is written here)
    out = tmp_path / "long.wav"
    with audio.open_writer(out, "wav", RATE, frames=30 * 3600 * RATE) as writer:
        writer.write(np.zeros(1000, dtype=np.int16))
    # Then the file is RF64, and readers take it as such
    assert out.read_bytes()[:4] == b"RF64"
    info = sf.info(str(out))
    assert (info.format, info.frames) == ("RF64", 1000)
    with av.open(str(out)) as container:
        assert container.format.name == "wav"
    # And a short WAV stays RIFF
    short = tmp_path / "short.wav"
    audio.concatenate([tone_wav(tmp_path / "t.wav", 0.2, 440)], short, "wav", RATE, 0.3)
    assert short.read_bytes()[:4] == b"RIFF"
