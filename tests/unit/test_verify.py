"""Comparing the words a chunk should say with the words Whisper heard."""

from __future__ import annotations

from stoker.jobs.verify import MATCH_THRESHOLD, similarity, words


def test_words_ignore_case_punctuation_and_curly_apostrophes() -> None:
    assert words("He said: “It’s late!”") == ["he", "said", "it's", "late"]


def test_a_faithful_transcript_matches_and_small_mishearings_pass() -> None:
    text = "The keeper climbed the stairs at dusk. He carried a lamp and a notebook."
    assert similarity(text, text.upper()) == 1.0
    misheard = "The keeper climbed the stairs at dusk. He carried a lamp and the notebook."
    assert similarity(text, misheard) >= MATCH_THRESHOLD


def test_a_skipped_sentence_or_noise_is_flagged() -> None:
    text = (
        "The keeper climbed the stairs at dusk. He carried a lamp and a notebook. "
        "From the top he could see the harbour. Some nights the wind rattled the windows."
    )
    skipped = (
        "The keeper climbed the stairs at dusk. From the top he could see the harbour. "
        "Some nights the wind rattled the windows."
    )
    assert similarity(text, skipped) < MATCH_THRESHOLD
    assert similarity(text, "") == 0.0
    assert similarity(text, "you you you music") < 0.2
    # Extra words heard (noise decoded as speech) count against the match too
    assert similarity("Hello there.", "Hello there. " + "la " * 20) < MATCH_THRESHOLD


def test_numbers_and_spelling_variants_are_the_same_words() -> None:
    assert words("In part 1, 21 boats and 305 nets") == (
        ["in", "part", "one", "twenty", "one", "boats", "and", "three", "hundred", "five", "nets"]
    )
    expected = "In part 1, from the top he could see the harbour, the boats, and the grey sea."
    heard = "And part one, from the top you could see the harbor, the boats, and the gray sea."
    assert similarity(expected, heard) >= MATCH_THRESHOLD
