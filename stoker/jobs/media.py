"""Reading any audio or video file an archive holds: probe it, decode a window of it.

Decoding goes through PyAV (FFmpeg) and yields what faster-whisper takes: 16 kHz mono
float32. Times are seconds from the start of the first audio stream (its ``start_time``,
which already skips e.g. an MP3's encoder delay). A time ``t`` is output sample
``round(t * SAMPLE_RATE)``, and every window is cut from that one timeline, so windows
cut at the same points join with no gap and no repeated sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from stoker.errors import InvalidInput, MissingDependency
from stoker.storage.sources import find_files

SAMPLE_RATE = 16_000

MEDIA_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".webm"}
    | {".mp4", ".m4v", ".mkv", ".mov", ".wma", ".aiff", ".aif"}
)

# A seek lands on a packet at or before the target, but the first frames decoded there
# are not trustworthy (MP3's bit reservoir, AAC/Opus overlap) and the resampler needs
# history too; so decoding starts this long before a window and the lead-in is dropped.
_SEEK_LEAD_S = 2.0
# Output samples fed through the resampler before the first one returned (its filter
# is far shorter), so a window's first sample equals the same sample of a longer window.
_WARMUP = 256
# Raw MP3 and ADTS AAC have no trustworthy length header: FFmpeg believes a Xing header
# (wrong for a cut or concatenated file) or guesses from the first frames' bitrate (6 %
# short on a VBR file in our tests). Summing packet durations reads the file but decodes
# nothing: about 0.1 s per hour of audio.
_COUNT_PACKETS = frozenset({"mp3", "aac"})


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a file's first audio stream."""

    duration_s: float
    sample_rate: int  # native, in Hz
    channels: int
    codec: str  # FFmpeg codec name, e.g. "mp3", "aac", "pcm_s16le"
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"


def probe(path: Path, name: str | None = None) -> MediaInfo:
    """Describe the first audio stream of ``path`` (any format FFmpeg reads).

    ``name`` is the file's name in messages (default ``path.name``). The duration (s)
    comes from the stream header, else the container header, else from decoding every
    sample; for raw MP3 and AAC files, from their packets (see _COUNT_PACKETS).
    Raises InvalidInput for an empty file, one FFmpeg cannot read, one with no audio
    track or no audio samples; MissingDependency if PyAV is not installed.
    """
    name = name or path.name
    with _open(path, name) as container:
        stream = _audio_stream(container, name)
        duration_s = _duration_s(container, stream, name)
        if duration_s <= 0:
            raise InvalidInput(
                f"{name} has no audio samples; remove it or replace it with the recording."
            )
        return MediaInfo(
            duration_s=duration_s,
            sample_rate=int(stream.codec_context.sample_rate),
            channels=int(stream.codec_context.channels),
            codec=str(stream.codec_context.codec.canonical_name),
            container=str(container.format.name),
        )


def decode(
    path: Path, start_s: float = 0.0, end_s: float | None = None, name: str | None = None
) -> Any:
    """The audio of ``path`` from ``start_s`` to ``end_s`` (seconds; None: to the end).

    Returns a 1-D float32 numpy array at SAMPLE_RATE, mono (channels are mixed down),
    holding output samples ``round(start_s * 16000)`` up to, not including,
    ``round(end_s * 16000)``; shorter if the file ends first. Only the window is decoded
    and held in memory. Raises InvalidInput as :func:`probe` does, and for data that
    cannot be decoded mid-stream; ValueError for a negative or reversed window.
    """
    name = name or path.name
    first = round(start_s * SAMPLE_RATE)
    last = None if end_s is None else round(end_s * SAMPLE_RATE)
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"bad window {start_s}..{end_s} s")
    try:
        return _decode(path, name, first, last, seek=first > 0)
    except _LateSeek:
        # The file's index put the seek past its target (broken timestamps): reading
        # from the start is slower but lands every sample where it belongs.
        return _decode(path, name, first, last, seek=False)


def find_media(folder: Path) -> list[Path]:
    """Media files under ``folder`` (recursive), by extension, sorted by relative path;
    hidden files and everything under hidden folders are skipped."""
    return find_files(folder, MEDIA_EXTENSIONS)


# --- opening ----------------------------------------------------------------------


def _av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise MissingDependency("av", "transcribe", "Decoding audio") from exc
    return av


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependency("numpy", "transcribe", "Decoding audio") from exc
    return numpy


def _open(path: Path, name: str) -> Any:
    """An open PyAV input container; the caller closes it (it is a context manager)."""
    av = _av()
    if path.stat().st_size == 0:
        raise InvalidInput(
            f"{name} is empty (0 bytes); remove it or replace it with the recording."
        )
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"{name} is not an audio or video file that ffmpeg can read ({_reason(exc)}); "
            f"check the file is not corrupt or mislabelled."
        ) from exc


def _audio_stream(container: Any, name: str) -> Any:
    if not container.streams.audio:
        raise InvalidInput(f"{name} has no audio track.")
    return container.streams.audio[0]


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc)


def _duration_s(container: Any, stream: Any, name: str) -> float:
    """Seconds of audio in ``stream``: header values where they can be trusted."""
    if container.format.name in _COUNT_PACKETS:
        return _packets_s(container, stream)
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / _av().time_base
    samples = sum(frame.samples for frame in _frames(_av(), container, stream, name))
    return float(samples / stream.codec_context.sample_rate)


def _packets_s(container: Any, stream: Any) -> float:
    """Sum of packet durations, less the decoder delay skipped at the start."""
    total = sum(packet.duration or 0 for packet in container.demux(stream))
    return max(0.0, float((total - (stream.start_time or 0)) * stream.time_base))


def _frames(av: Any, container: Any, stream: Any, name: str) -> Any:
    """Decoded frames of ``stream``; a decoding error becomes InvalidInput with the time."""
    at_s = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                at_s = float((packet.pts - (stream.start_time or 0)) * stream.time_base)
            yield from packet.decode()
    except av.error.FFmpegError as exc:
        raise InvalidInput(
            f"{name} is corrupt at about {at_s:.1f} s ({_reason(exc)}); "
            f"re-export or re-encode the recording and submit it again."
        ) from exc


# --- cutting a window out of the timeline ------------------------------------------


class _LateSeek(Exception):
    """After a seek, the first frame began after the point decoding had to start at."""


def _decode(path: Path, name: str, first: int, last: int | None, seek: bool) -> Any:
    av = _av()
    window = _Window(first, last)
    with _open(path, name) as container:
        stream = _audio_stream(container, name)
        lead_s = first / SAMPLE_RATE - _SEEK_LEAD_S
        seek = seek and lead_s > 0
        if seek:
            # Backward: land on a packet at or before the lead-in, never after it.
            container.seek(int(lead_s / stream.time_base), stream=stream, backward=True)
        feed = _Feed(av, stream, first, seek)
        for frame in _frames(av, container, stream, name):
            for chunk in feed.push(frame):
                if window.add(chunk):
                    return window.samples()
        for chunk in feed.flush():
            window.add(chunk)
    return window.samples()


class _Feed:
    """Frames in; 16 kHz mono chunks out, each with its output sample offset.

    Resampling starts where an input sample and an output sample coincide (a multiple
    of 1/gcd(rates) s), so a window decoded after a seek lies on the very sample grid
    of the whole file and the samples at a join agree. After that, offsets are counted,
    not read from timestamps, so rounded timestamps cannot open gaps between frames.
    """

    def __init__(self, av: Any, stream: Any, first: int, sought: bool) -> None:
        self._av, self._stream, self._first, self._sought = av, stream, first, sought
        self._resampler: Any = None
        self._shape: tuple[str, str, int] | None = None
        self._at = 0  # output offset of the next resampled sample

    def push(self, frame: Any) -> list[tuple[int, Any]]:
        chunks: list[tuple[int, Any]] = []
        if self._resampler is None:
            frame = self._start(frame)
            if frame is None:
                return chunks
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._shape:
            # A stream may change rate or layout midway; AudioResampler refuses that.
            chunks = self.flush()
            self._resampler = self._av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._shape = shape
        frame.pts = None  # offsets are counted, so the filter needs no timestamps
        return chunks + self._counted(self._resampler.resample(frame))

    def flush(self) -> list[tuple[int, Any]]:
        return self._counted(self._resampler.resample(None)) if self._resampler else []

    def _counted(self, frames: list[Any]) -> list[tuple[int, Any]]:
        chunks = []
        for out in frames:
            samples = out.to_ndarray().reshape(-1)
            chunks.append((self._at, samples))
            self._at += len(samples)
        return chunks

    def _start(self, frame: Any) -> Any:
        """Cut ``frame`` to begin on the shared grid; None while it is all lead-in."""
        rate = frame.sample_rate
        step_in = rate // math.gcd(rate, SAMPLE_RATE)  # input samples per grid step
        step_out = SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE)
        wanted = max(0, (self._first - _WARMUP) // step_out) * step_in
        at_in = self._position(frame, rate)
        if self._sought and (at_in is None or at_in > wanted):
            raise _LateSeek
        begin = max(wanted, -(-(at_in or 0) // step_in) * step_in)  # next grid point
        if (at_in or 0) + frame.samples <= begin:
            return None
        self._at = begin // step_in * step_out
        return _drop_head(self._av, frame, begin - (at_in or 0))

    def _position(self, frame: Any, rate: int) -> int | None:
        """Input sample offset of ``frame`` from the stream's start; None if unknown."""
        if frame.pts is None:
            return None
        since_start = Fraction(frame.pts - (self._stream.start_time or 0))
        return round(since_start * self._stream.time_base * rate)


def _drop_head(av: Any, frame: Any, count: int) -> Any:
    """``frame`` without its first ``count`` samples (a new frame if count > 0)."""
    if count <= 0:
        return frame
    data = frame.to_ndarray()
    per_sample = 1 if frame.format.is_planar else len(frame.layout.channels)
    cut = av.AudioFrame.from_ndarray(
        data[:, count * per_sample :].copy(), format=frame.format.name, layout=frame.layout
    )
    cut.sample_rate = frame.sample_rate
    return cut


class _Window:
    """Keeps the part of the output between offsets ``first`` and ``last``."""

    def __init__(self, first: int, last: int | None) -> None:
        self._np = _numpy()
        self._first, self._last = first, last
        self._parts: list[Any] = []
        self._end = first  # output offset just past what is kept

    def add(self, chunk: tuple[int, Any]) -> bool:
        """Keep what of ``chunk`` falls in the window; True once the window is full."""
        at, samples = chunk
        if at > self._end:  # the stream starts after the window does: silence until then
            self._keep(self._np.zeros(at - self._end, dtype=self._np.float32))
        self._keep(samples[max(0, self._end - at) :])
        return self._last is not None and self._end >= self._last

    def _keep(self, samples: Any) -> None:
        if self._last is not None:
            samples = samples[: max(0, self._last - self._end)]
        if len(samples):
            self._parts.append(samples)
            self._end += len(samples)

    def samples(self) -> Any:
        np = self._np
        if not self._parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._parts).astype(np.float32, copy=False)
