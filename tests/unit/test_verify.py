"""Comparing the words a chunk should say with the words Whisper heard."""

from __future__ import annotations

from stoker.jobs.verify import MAX_GAP_WORDS, MIN_RATIO, Check, compare, words

TEXT = (
    "The keeper climbed the stairs at dusk. He carried a lamp and a notebook. "
    "From the top he could see the harbour. Some nights the wind rattled the windows."
)


def check(expected: str, heard: str) -> Check:
    ratio, gap = compare(expected, heard)
    return Check(ratio, gap, heard)


def test_words_ignore_case_punctuation_and_curly_apostrophes() -> None:
    assert words("He said: “It’s late!”") == ["he", "said", "it's", "late"]


def test_numbers_and_spelling_variants_are_the_same_words() -> None:
    spelled = "in part one twenty one boats and three hundred five nets"
    assert words("In part 1, 21 boats and 305 nets") == spelled.split()
    expected = "In part 1, from the top he could see the harbour, the boats, and the grey sea."
    heard = "And part one, from the top you could see the harbor, the boats, and the gray sea."
    assert check(expected, heard).ok


def test_a_faithful_or_slightly_misheard_transcript_passes() -> None:
    assert compare(TEXT, TEXT.upper()) == (1.0, 0)
    # Misheard words leave short gaps (seen from tiny.en on Piper speech)
    misheard = TEXT.replace("keeper climbed the", "keep reclined in the")
    assert check(TEXT, misheard).ok


def test_a_skipped_sentence_is_flagged_by_its_gap() -> None:
    skipped = TEXT.replace("He carried a lamp and a notebook. ", "")
    result = check(TEXT, skipped)
    assert result.ratio >= MIN_RATIO  # most words are there...
    assert result.gap >= MAX_GAP_WORDS and not result.ok  # ...but seven in a row are not


def test_silence_noise_and_babble_are_flagged_by_their_ratio() -> None:
    assert not check(TEXT, "").ok
    assert not check(TEXT, "you you you music").ok
    # Extra words heard (noise decoded as speech) count against the match too
    assert not check("Hello there.", "Hello there. " + "la " * 20).ok
