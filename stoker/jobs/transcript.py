"""Transcripts as typed results, and the files written from them (txt, srt, vtt, json).

Times are seconds from the start of the audio, rounded to the millisecond, so a
transcript survives a JSON round trip unchanged and chunks transcribed separately
can be shifted to their place in the whole recording.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import srt
import webvtt
from webvtt.models import Timestamp

from stoker.errors import InvalidInput


@dataclass(frozen=True)
class Word:
    """One word with its timing; ``word`` keeps Whisper's leading space, if any."""

    start: float  # s
    end: float  # s
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One stretch of speech (a caption), its text stripped."""

    start: float  # s
    end: float  # s
    text: str
    words: tuple[Word, ...] = ()  # empty unless word timestamps were asked for
    avg_logprob: float | None = None
    no_speech_prob: float | None = None


@dataclass(frozen=True)
class Transcript:
    """What a transcription produced, and with which model and options."""

    segments: tuple[Segment, ...]
    language: str | None  # ISO code, e.g. "en"
    language_probability: float | None  # None when the language was given, not detected
    duration_s: float  # of the audio
    model: str  # catalog name
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def text(self) -> str:
        """The segments' texts joined by single spaces."""
        return " ".join(s.text for s in self.segments if s.text)


def _ms(seconds: float) -> float:
    # float(): faster-whisper gives numpy floats for word times; ours are plain floats.
    return round(float(seconds), 3)


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def segments_from_faster_whisper(segments: Iterable[Any], offset_s: float = 0.0) -> list[Segment]:
    """Convert faster-whisper ``Segment``s (and their ``Word``s) into ours.

    ``offset_s`` (seconds) is added to every time: the start of the chunk in the
    whole recording. Consumes ``segments``, which may be faster-whisper's lazy
    generator (the decoding happens while iterating).
    """
    return [
        Segment(
            start=_ms(s.start + offset_s),
            end=_ms(s.end + offset_s),
            text=s.text.strip(),
            words=tuple(
                Word(_ms(w.start + offset_s), _ms(w.end + offset_s), w.word, float(w.probability))
                for w in (s.words or ())
            ),
            avg_logprob=_opt_float(s.avg_logprob),
            no_speech_prob=_opt_float(s.no_speech_prob),
        )
        for s in segments
    ]


def shift(segments: Iterable[Segment], offset_s: float) -> list[Segment]:
    """The segments with ``offset_s`` seconds added to every segment and word time."""
    return [
        replace(
            s,
            start=_ms(s.start + offset_s),
            end=_ms(s.end + offset_s),
            words=tuple(
                replace(w, start=_ms(w.start + offset_s), end=_ms(w.end + offset_s))
                for w in s.words
            ),
        )
        for s in segments
    ]


def _segment_dict(s: Segment) -> dict[str, Any]:
    return {
        "start": _ms(s.start),
        "end": _ms(s.end),
        "text": s.text,
        "words": [
            {"start": _ms(w.start), "end": _ms(w.end), "word": w.word, "probability": w.probability}
            for w in s.words
        ],
        "avg_logprob": s.avg_logprob,
        "no_speech_prob": s.no_speech_prob,
    }


def to_json_dict(t: Transcript) -> dict[str, Any]:
    """The transcript as JSON-ready data (times in seconds, rounded to the ms)."""
    return {
        "language": t.language,
        "language_probability": t.language_probability,
        "duration_s": _ms(t.duration_s),
        "model": t.model,
        "options": dict(t.options),
        "text": t.text,
        "segments": [_segment_dict(s) for s in t.segments],
    }


def from_json_dict(d: Mapping[str, Any]) -> Transcript:
    """The transcript that :func:`to_json_dict` wrote (its "text" is derived, not read).

    Raises KeyError or TypeError when a required field is missing or mistyped.
    """
    segments = tuple(
        Segment(
            start=s["start"],
            end=s["end"],
            text=s["text"],
            words=tuple(Word(**w) for w in s.get("words", ())),
            avg_logprob=s.get("avg_logprob"),
            no_speech_prob=s.get("no_speech_prob"),
        )
        for s in d["segments"]
    )
    return Transcript(
        segments=segments,
        language=d.get("language"),
        language_probability=d.get("language_probability"),
        duration_s=d["duration_s"],
        model=d["model"],
        options=d.get("options") or {},
    )


def to_txt(t: Transcript) -> str:
    """One segment per line (empty segments left out), each line ending in a newline."""
    return "".join(f"{s.text}\n" for s in t.segments if s.text)


def to_srt(t: Transcript) -> str:
    """SubRip captions, one per segment, numbered from 1 ("" without segments)."""
    subtitles = [
        srt.Subtitle(
            index=i,
            start=timedelta(milliseconds=round(s.start * 1000)),
            end=timedelta(milliseconds=round(s.end * 1000)),
            content=s.text,
        )
        for i, s in enumerate(_captioned(t), start=1)
    ]
    return str(srt.compose(subtitles, reindex=True, start_index=1))


def to_vtt(t: Transcript) -> str:
    """WebVTT captions, one cue per segment; just the "WEBVTT" header without segments."""
    captions = [
        webvtt.Caption(
            start=str(Timestamp.from_seconds(s.start)),
            end=str(Timestamp.from_seconds(s.end)),
            text=_cue_text(s.text),
        )
        for s in _captioned(t)
    ]
    return str(webvtt.WebVTT(captions=captions).content)


def _cue_text(text: str) -> str:
    # Cue text is markup: a literal "<" or "&" must be escaped, and escaping ">" also
    # keeps a "-->" in speech from reading as a timing line. One line: an empty line
    # would end the cue.
    return html.escape(" ".join(text.split()), quote=False)


def _captioned(t: Transcript) -> list[Segment]:
    # A caption must have text (an empty SRT/WebVTT cue ends its block early).
    return [s for s in t.segments if s.text]


def _to_json(t: Transcript) -> str:
    return json.dumps(to_json_dict(t), ensure_ascii=False) + "\n"


FORMATS: dict[str, tuple[str, str]] = {
    "txt": ("txt", "text/plain; charset=utf-8"),
    "srt": ("srt", "application/x-subrip"),
    "vtt": ("vtt", "text/vtt"),
    "json": ("json", "application/json"),
}

_RENDERERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": _to_json}


def render(t: Transcript, fmt: str) -> str:
    """The transcript in format ``fmt`` (a key of :data:`FORMATS`).

    Raises InvalidInput naming the known formats when ``fmt`` is not one of them.
    """
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise InvalidInput(f"unknown transcript format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return renderer(t)
