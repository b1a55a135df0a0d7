"""Where to cut long audio: at the silence nearest a nominal boundary.

A long recording is transcribed in chunks of about ``chunk_s`` seconds. Cutting at
exactly k × chunk_s could split a word, so each boundary moves to the middle of the
pause (found by the Silero VAD that ships with faster-whisper) nearest to it, within
``search_s`` either side. Both chunks that share a boundary compute it from the same
audio with the same deterministic model, so they agree on it without talking to each
other: no speech is dropped or doubled at a join.
"""

from __future__ import annotations

import math
from pathlib import Path

from stoker.errors import MissingDependency
from stoker.jobs import media

#: A pause shorter than this is not a place to cut (ms).
MIN_PAUSE_MS = 200


def chunk_count(duration_s: float, chunk_s: float) -> int:
    return max(1, math.ceil(duration_s / chunk_s))


def find_cut(path: Path, nominal_s: float, search_s: float, name: str) -> float:
    """The time (s, rounded to ms) of the pause nearest ``nominal_s``.

    Returns ``nominal_s`` itself when the window holds no pause (continuous speech
    or music): rare, and the only case where a word may be split.
    """
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError as exc:
        raise MissingDependency("faster-whisper", "transcribe", "Finding pauses") from exc
    lo = max(0.0, nominal_s - search_s)
    audio = media.decode(path, lo, nominal_s + search_s, name)
    options = VadOptions(min_silence_duration_ms=MIN_PAUSE_MS, speech_pad_ms=0)
    speech = get_speech_timestamps(audio, options, sampling_rate=media.SAMPLE_RATE)
    pauses = _pauses([(s["start"], s["end"]) for s in speech], len(audio))
    if not pauses:
        return round(nominal_s, 3)
    middles = [lo + (a + b) / 2 / media.SAMPLE_RATE for a, b in pauses]
    best: float = min(middles, key=lambda t: abs(t - nominal_s))
    return round(best, 3)


def _pauses(speech: list[tuple[int, int]], n_samples: int) -> list[tuple[int, int]]:
    """The sample ranges between speech, including before the first and after the last."""
    edges = [0] + [x for s, e in speech for x in (s, e)] + [n_samples]
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]


def boundaries(
    path: Path, index: int, duration_s: float, chunk_s: float, search_s: float, name: str
) -> tuple[float, float | None]:
    """Start and end (s) of chunk ``index`` of a file of about ``duration_s``.

    The last chunk's end is None (to the end of the file): a probed duration can be a
    little short (encoder padding, headers), and no audio may be left out.
    """
    last = chunk_count(duration_s, chunk_s) - 1
    start = 0.0 if index == 0 else find_cut(path, index * chunk_s, search_s, name)
    if index == last:
        return start, None
    return start, max(start, find_cut(path, (index + 1) * chunk_s, search_s, name))
