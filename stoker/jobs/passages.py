"""Splitting texts longer than an embedding model's window into passages that fit it.

A sentence-transformers model reads at most ``max_seq_length`` tokens of a text and
drops the rest. With ``split``, embed cuts such a text into passages of at most the
window, by the model's own tokenizer, at word starts (no word is cut in two unless
it is longer than a passage), consecutive passages sharing ``overlap`` tokens so a
sentence on a boundary is whole in one of them. Each passage is known by its
character span in its text, which the output carries: a row can be mapped back to
the words it holds.

A text that fits is one passage, the text itself: its vector is the one a job
without ``split`` gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stoker.errors import InvalidInput


@dataclass(frozen=True)
class Passage:
    """Characters ``start``..``end`` of text ``source`` (its index in the chunk)."""

    source: int
    start: int
    end: int


def room_for_text(model: Any, prompt: str | None) -> int:
    """Tokens of a text the model reads: its window, less the special tokens its
    tokenizer adds and the prompt's tokens."""
    tokenizer, window = model.tokenizer, getattr(model, "max_seq_length", None)
    if not window:
        raise InvalidInput(
            "split needs the model's window, and this model sets no max_seq_length; "
            "give it one as a load option (models.<name>.options.max_seq_length)."
        )
    room = int(window) - tokenizer.num_special_tokens_to_add(pair=False)
    if prompt:
        room -= len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if room < 8:
        raise InvalidInput(
            f"the prompt leaves {room} tokens of the model's window of "
            f"{model.max_seq_length} for each passage; shorten the prompt."
        )
    return room


def split_passages(model: Any, texts: list[str], room: int, overlap: int) -> list[Passage]:
    """The passages of ``texts``, in order: each text that fits ``room`` tokens whole,
    each longer one cut into passages of at most ``room`` tokens that overlap by
    ``overlap`` tokens (at most half a passage)."""
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInput(
            f"split needs the character offsets of a fast (Rust) tokenizer, and this "
            f"model's is {type(tokenizer).__name__}; embed without split, or use a "
            f"model whose folder has a tokenizer.json."
        )
    overlap = min(overlap, room // 2)
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=False,
        verbose=False,  # transformers would log that each long text is too long
    )
    passages: list[Passage] = []
    for i, text in enumerate(texts):
        offsets = encoded["offset_mapping"][i]
        if len(offsets) <= room:
            passages.append(Passage(i, 0, len(text)))
            continue
        # A token starts a word where blank text comes before it. (The tokenizer's
        # own words end at punctuation too: a passage would begin at "'s" or ",".)
        starts = [t == 0 or offsets[t][0] > offsets[t - 1][1] for t in range(len(offsets))]
        passages += [
            Passage(i, offsets[a][0], offsets[b - 1][1]) for a, b in _windows(starts, room, overlap)
        ]
    return passages


def _windows(starts: list[bool], room: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of at most ``room`` tokens covering all of ``starts`` (does
    each token start a word?), ending and starting at word starts where a word allows."""

    def word_start(t: int) -> bool:
        return t >= len(starts) or starts[t]

    ranges, a, n = [], 0, len(starts)
    while True:
        b = min(a + room, n)
        cut = b
        while cut > a and not word_start(cut):
            cut -= 1
        b = cut if cut > a else b  # a word longer than a passage is cut
        ranges.append((a, b))
        if b >= n:
            return ranges
        nxt = back = max(b - overlap, a + 1)
        while back > a + 1 and not word_start(back):
            back -= 1
        a = back if word_start(back) else nxt  # inside one long word: where it was cut
