"""Writing audio: chunk WAVs in, one encoded file out, streamed block by block.

All formats go through soundfile (libsndfile 1.2): WAV (RF64 past 4 GiB) and FLAC
(16-bit PCM), OGG (Vorbis) and MP3 (LAME through libsndfile). The M4B is AAC through
PyAV, encoded per chapter and joined without re-encoding. Nothing holds a whole book
in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


#: RIFF sizes are 32-bit: past this many bytes of samples (4 GiB less room for the
#: header chunks) a WAV is written as RF64 (EBU Tech 3306), which libsndfile, FFmpeg
#: and current players read. Smaller files stay plain WAV, which every player reads.
WAV_LIMIT_BYTES = (1 << 32) - (1 << 16)


def wav_container(frames: int, channels: int = 1, sample_bytes: int = 2) -> str:
    """The libsndfile major format for a WAV of ``frames``: "WAV", or "RF64" past 4 GiB."""
    return "RF64" if frames * channels * sample_bytes > WAV_LIMIT_BYTES else "WAV"


def open_writer(path: Path, fmt: str, sample_rate: int, frames: int = 0) -> Any:
    """A mono soundfile writer for ``fmt`` (a key of FORMATS); the caller closes it.

    ``frames``, the samples that will be written, picks RF64 for a WAV over 4 GiB.
    """
    spec = FORMATS[fmt]
    sf = _soundfile()
    major = wav_container(frames) if spec.sf_format == "WAV" else spec.sf_format
    return sf.SoundFile(
        str(path),
        "w",
        samplerate=sample_rate,
        channels=1,
        format=major,
        subtype=spec.sf_subtype,
    )


def frames_of(parts: Sequence[Path], sample_rate: int, gap_s: float) -> int:
    """Samples that joining ``parts`` with ``gap_s`` between them makes (headers only)."""
    sf = _soundfile()
    gaps = max(len(parts) - 1, 0) * round(gap_s * sample_rate)
    return sum(sf.info(str(part)).frames for part in parts) + gaps


def concatenate(
    parts: Sequence[Path], out: Path, fmt: str, sample_rate: int, gap_s: float
) -> float:
    """Stream WAV ``parts`` into ``out`` in ``fmt`` with ``gap_s`` of silence between them.

    Returns the duration written, in seconds.
    """
    frames = 0
    total = frames_of(parts, sample_rate, gap_s)
    with open_writer(out, fmt, sample_rate, total) as writer:
        for block in _blocks(parts, sample_rate, gap_s):
            writer.write(block)
            frames += len(block)
    return frames / sample_rate


def _blocks(parts: Iterable[Path], sample_rate: int, gap_s: float, lead_s: float = 0) -> Any:
    """int16 blocks of ``lead_s`` silence, then ``parts`` with ``gap_s`` between them."""
    import numpy as np

    sf = _soundfile()
    if round(lead_s * sample_rate):
        yield np.zeros(round(lead_s * sample_rate), dtype=np.int16)
    gap = np.zeros(round(gap_s * sample_rate), dtype=np.int16)
    for i, part in enumerate(parts):
        if i and gap.size:
            yield gap
        yield from sf.blocks(str(part), blocksize=_BLOCK_FRAMES, dtype="int16")


#: The M4B's audio: AAC-LC at this bit rate (mono speech).
AAC_BIT_RATE = 64_000


def encode_aac(
    parts: Sequence[Path], out: Path, sample_rate: int, gap_s: float, lead_s: float
) -> None:
    """Stream WAV ``parts`` into one AAC track in an MP4 file (``.m4a``).

    ``lead_s`` of silence first, ``gap_s`` between parts. One chapter's share of a
    book: :func:`join_m4b` joins such files without encoding them again.
    """
    import av

    container = av.open(str(out), "w", format="ipod")
    stream = container.add_stream("aac", rate=sample_rate, layout="mono")
    stream.bit_rate = AAC_BIT_RATE
    samples = 0
    for block in _blocks(parts, sample_rate, gap_s, lead_s):
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, samples
        samples += block.size
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


@dataclass(frozen=True)
class BookChapter:
    """One chapter of a book: its title, its AAC file (from :func:`encode_aac`) and
    how many samples of silence that file starts with (the pause before the chapter)."""

    title: str
    aac: Path
    lead_frames: int


def join_m4b(chapters: list[BookChapter], out: Path, metadata: dict[str, str]) -> list[float]:
    """Join the chapters' AAC files into one ``.m4b``, packet by packet (no re-encoding),
    with a chapter marker per chapter at the end of its leading silence.

    ``metadata`` keys are FFmpeg's (title, artist, album, genre). Returns each
    chapter's start in seconds. Only a packet at a time is in memory; the MP4 muxer
    switches to 64-bit chunk offsets (``co64``) by itself when the file passes 4 GiB.
    Raises ValueError for a file with no audio or not encoded like the first.
    """
    import av

    container = av.open(str(out), "w", format="ipod")
    try:
        with av.open(str(chapters[0].aac)) as first:
            template = first.streams.audio[0]
            stream = container.add_stream_from_template(template)
            config = (template.rate, bytes(template.codec_context.extradata or b""))
        container.metadata.update(metadata)
        pts: int | None = None  # where the next packet goes; None: where the first file says
        starts = []
        for chapter in chapters:
            with av.open(str(chapter.aac)) as source:
                audio_in = source.streams.audio[0]
                if (audio_in.rate, bytes(audio_in.codec_context.extradata or b"")) != config:
                    raise ValueError(f"{chapter.aac} is not encoded like {chapters[0].aac}")
                begins, pts = _append(container, stream, source.demux(audio_in), pts)
            starts.append(begins + chapter.lead_frames)
        container.set_chapters(_markers(chapters, starts, pts or 0, config[0]))
    finally:
        container.close()
    return [s / config[0] for s in starts]


def _append(
    container: Any, stream: Any, packets: Iterable[Any], pts: int | None
) -> tuple[int, int]:
    """Mux ``packets`` (one AAC file's) into ``stream`` from ``pts`` on (None: from the
    file's own first timestamp).

    Each packet gets the timestamp of where its audio lands in the book. Every file
    starts with the encoder's priming frame (negative pts): the first file's is
    trimmed by the MP4 edit list, later ones stay in (a few ms of silence inside the
    pause between chapters), so timestamps and decoded samples agree. Returns where
    the file's own audio starts and the pts after its last packet.
    """
    step = stream.codec_context.frame_size or 1024
    begins: int | None = None
    for packet in packets:
        if not packet.size:
            continue  # the demuxer's end-of-stream marker
        if begins is None:
            origin = packet.pts or 0
            pts = origin if pts is None else pts
            begins = pts - origin
        assert pts is not None
        packet.stream = stream
        # Full frames: a shortened last duration would put the next chapter's audio
        # earlier than a player decodes it.
        packet.pts = packet.dts = pts
        packet.duration = step
        pts += step
        container.mux(packet)
    if begins is None or pts is None:
        raise ValueError("an AAC file to join holds no audio")
    return begins, pts


def _markers(chapters: list[BookChapter], starts: list[int], end: int, rate: int) -> list[Any]:
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
