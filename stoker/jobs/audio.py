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


def duration_s(path: Path) -> float:
    info = _soundfile().info(str(path))
    return float(info.frames) / float(info.samplerate)
