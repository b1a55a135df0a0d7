"""Writing audio: chunk WAVs in, one encoded file out, streamed block by block.

All formats go through soundfile (libsndfile 1.2): WAV and FLAC (16-bit PCM),
OGG (Vorbis) and MP3 (LAME through libsndfile). Nothing holds a whole book in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.errors import MissingDependency

_BLOCK_FRAMES = 1 << 16


@dataclass(frozen=True)
class AudioFormat:
    ext: str
    content_type: str
    sf_format: str
    sf_subtype: str


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "audio/wav", "WAV", "PCM_16"),
    "flac": AudioFormat("flac", "audio/flac", "FLAC", "PCM_16"),
    "ogg": AudioFormat("ogg", "audio/ogg", "OGG", "VORBIS"),
    "mp3": AudioFormat("mp3", "audio/mpeg", "MP3", "MPEG_LAYER_III"),
}


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError as exc:
        raise MissingDependency("soundfile", "speak", "Writing audio") from exc
    return soundfile


def open_writer(path: Path, fmt: str, sample_rate: int) -> Any:
    """A mono soundfile writer for ``fmt`` (a key of FORMATS); the caller closes it."""
    spec = FORMATS[fmt]
    sf = _soundfile()
    return sf.SoundFile(
        str(path),
        "w",
        samplerate=sample_rate,
        channels=1,
        format=spec.sf_format,
        subtype=spec.sf_subtype,
    )


def concatenate(
    parts: Iterable[Path], out: Path, fmt: str, sample_rate: int, gap_s: float
) -> float:
    """Stream WAV ``parts`` into ``out`` in ``fmt`` with ``gap_s`` of silence between them.

    Returns the duration written, in seconds.
    """
    import numpy as np

    sf = _soundfile()
    gap = np.zeros(round(gap_s * sample_rate), dtype=np.int16)
    frames = 0
    with open_writer(out, fmt, sample_rate) as writer:
        for i, part in enumerate(parts):
            if i and gap.size:
                writer.write(gap)
                frames += gap.size
            for block in sf.blocks(str(part), blocksize=_BLOCK_FRAMES, dtype="int16"):
                writer.write(block)
                frames += len(block)
    return frames / sample_rate


@dataclass(frozen=True)
class ChapterAudio:
    """One chapter of a book: its title and its chunk WAVs, in order."""

    title: str
    parts: list[Path]


def write_m4b(
    chapters: list[ChapterAudio],
    out: Path,
    sample_rate: int,
    gap_s: float,
    chapter_gap_s: float,
    metadata: dict[str, str],
) -> list[float]:
    """Stream ``chapters`` into one AAC ``.m4b`` with a chapter marker per chapter.

    ``gap_s`` of silence goes between parts, ``chapter_gap_s`` between chapters.
    ``metadata`` keys are FFmpeg's (title, artist, album, genre). Returns each
    chapter's start time in seconds. The MP4 muxer switches to 64-bit offsets by
    itself, so books past 4 GB are fine.
    """
    import av
    import numpy as np

    sf = _soundfile()
    container = av.open(str(out), "w", format="ipod")
    stream = container.add_stream("aac", rate=sample_rate, layout="mono")
    stream.bit_rate = 64_000
    container.metadata.update(metadata)
    samples, starts = 0, []

    def write(block: Any) -> None:
        nonlocal samples
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, samples
        samples += block.size
        for packet in stream.encode(frame):
            container.mux(packet)

    for c, chapter in enumerate(chapters):
        if c:
            write(np.zeros(round(chapter_gap_s * sample_rate), dtype=np.int16))
        starts.append(samples)
        for i, part in enumerate(chapter.parts):
            if i and gap_s:
                write(np.zeros(round(gap_s * sample_rate), dtype=np.int16))
            for block in sf.blocks(str(part), blocksize=_BLOCK_FRAMES, dtype="int16"):
                write(block)
    for packet in stream.encode(None):
        container.mux(packet)
    container.set_chapters(_markers(chapters, starts, samples, sample_rate))
    container.close()
    return [s / sample_rate for s in starts]


def _markers(chapters: list[ChapterAudio], starts: list[int], end: int, rate: int) -> list[Any]:
    from fractions import Fraction

    ends = [*starts[1:], end]
    return [
        {
            "id": i + 1,
            "start": s,
            "end": e,
            "time_base": Fraction(1, rate),
            "metadata": {"title": chapter.title},
        }
        for i, (chapter, s, e) in enumerate(zip(chapters, starts, ends, strict=True))
    ]


def add_cover(m4b: Path, image: bytes, content_type: str) -> None:
    """Embed cover art in an .m4b (the ``covr`` atom players show)."""
    try:
        from mutagen.mp4 import MP4, MP4Cover
    except ImportError as exc:
        raise MissingDependency("mutagen", "audiobook", "Adding cover art") from exc
    kind = MP4Cover.FORMAT_PNG if content_type == "image/png" else MP4Cover.FORMAT_JPEG
    tagged = MP4(str(m4b))
    tagged["covr"] = [MP4Cover(image, imageformat=kind)]
    tagged.save()


def duration_s(path: Path) -> float:
    """Duration of any container PyAV reads (soundfile cannot read MP4)."""
    import av

    with av.open(str(path)) as container:
        return float(container.duration or 0) / 1_000_000
