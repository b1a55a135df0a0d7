"""Checking synthesized speech by ear: transcribe it back and compare with its text.

A TTS voice can skip a sentence, swallow a word run or turn a name into noise, and a
listener finds out hours into the book. Whisper hears the chunk; the words it hears
are compared with the words the chunk was meant to say. Neither side is perfect
(Whisper mishears names, numbers are spelled differently), so the test is loose on
purpose: it catches a missing sentence or garbage audio, not a misheard word.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A chunk is flagged when Whisper's words match less than this share of its text
#: (garbage audio, silence, another language)...
MIN_RATIO = 0.6
#: ...or when this many of its words in a row were not heard (a skipped sentence).
#: Misheard words ("keep reclined" for "keeper climbed") leave short gaps; a dropped
#: sentence leaves a long one, however long the chunk is.
MAX_GAP_WORDS = 6


@dataclass(frozen=True)
class Check:
    """What Whisper heard in one chunk, and how close it is to the text."""

    ratio: float  # matched words / words of the longer side, 0..1
    gap: int  # longest run of the text's words not heard
    heard: str

    @property
    def ok(self) -> bool:
        return self.ratio >= MIN_RATIO and self.gap < MAX_GAP_WORDS


_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> list[str]:
    """``n`` (0..999,999) as English words: a chunk says "1", Whisper writes "one"."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    return number_words(n // 1000) + ["thousand"] + (number_words(n % 1000) if n % 1000 else [])


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers spelled out."""
    out: list[str] = []
    for word in re.findall(r"[a-z0-9']+", text.lower().replace("’", "'")):
        out.extend(number_words(int(word)) if word.isdigit() and len(word) <= 6 else [word])
    return out


def sound_key(word: str) -> str:
    """A crude sound-alike key: first letter, then consonants without repeats.

    So spelling variants Whisper picks (harbour/harbor, grey/gray, colour/color) are
    the same word, while different words mostly stay different.
    """
    key = word[:1]
    for c in word[1:]:
        if c not in "aeiouyhw'" and c != key[-1]:
            key += c
    return key


def compare(expected: str, heard: str) -> tuple[float, int]:
    """(share of words matched over the longer side, longest run of ``expected``'s
    words missing from ``heard``)."""
    want = [sound_key(w) for w in words(expected)]
    got = [sound_key(w) for w in words(heard)]
    if not want:
        return 1.0, 0
    matcher = difflib.SequenceMatcher(a=want, b=got, autojunk=False)
    blocks = matcher.get_matching_blocks()  # ends with a (len(want), len(got), 0) sentinel
    matched = sum(block.size for block in blocks)
    gap, at = 0, 0
    for block in blocks:
        gap, at = max(gap, block.a - at), block.a + block.size
    # Matched words over the longer side: missing words and extra noise both count.
    return matched / max(len(want), len(got)), gap


def transcribe_wav(whisper: Any, path: Path, language: str | None) -> str:
    """The text a loaded faster-whisper model hears in ``path`` (greedy, no VAD)."""
    segments, _ = whisper.transcribe(
        str(path),
        language=language,
        beam_size=1,
        vad_filter=False,
        condition_on_previous_text=False,
    )
    return " ".join(segment.text.strip() for segment in segments)


def check(whisper: Any, path: Path, expected: str, language: str | None) -> Check:
    heard = transcribe_wav(whisper, path, language)
    ratio, gap = compare(expected, heard)
    return Check(round(ratio, 3), gap, heard)
