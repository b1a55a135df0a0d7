"""Splitting text for speech: sentences, bounded chunks, decoding user files."""

from __future__ import annotations

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.text import decode_text, normalise, pack_chunks, split_sentences


def test_sentences_split_at_terminal_punctuation_and_paragraphs() -> None:
    text = 'Hello there. "Is it late?" she asked!\n\nChapter Two\nIt was… late. 夜です。はい。'
    assert split_sentences(text) == [
        "Hello there.",
        '"Is it late?"',
        "she asked!",
        "Chapter Two It was…",
        "late.",
        "夜です。",
        "はい。",
    ]


def test_chunks_never_exceed_the_limit_and_keep_every_word() -> None:
    sentences = [f"Sentence number {i} is here." for i in range(200)]
    chunks = pack_chunks(sentences, 300)
    assert all(len(c) <= 300 for c in chunks)
    assert " ".join(chunks).split() == " ".join(sentences).split()


def test_a_sentence_longer_than_a_chunk_is_cut_at_whitespace() -> None:
    # Given a 10,000-character run with no punctuation
    words = ["word"] * 2000
    chunks = pack_chunks([" ".join(words)], 1000)
    # Then it is cut into bounded pieces without splitting any word
    assert all(len(c) <= 1000 for c in chunks)
    assert " ".join(chunks).split() == words


def test_text_without_whitespace_is_cut_mid_word_rather_than_failing() -> None:
    chunks = pack_chunks(["x" * 2500], 1000)
    assert [len(c) for c in chunks] == [1000, 1000, 500]


def test_invalid_utf8_is_refused_with_the_offset_and_a_fix() -> None:
    with pytest.raises(
        InvalidInput, match=r"chapter.txt is not valid UTF-8 \(bad byte at offset 3\)"
    ):
        decode_text(b"abc\xff\xfe", "chapter.txt")


def test_binary_files_are_refused() -> None:
    with pytest.raises(InvalidInput, match="looks binary"):
        decode_text(b"\x00\x01text", "image.txt")


def test_bom_is_dropped_and_control_characters_removed() -> None:
    assert decode_text("\ufeffhi".encode(), "f") == "hi"
    assert normalise("a\x07b\r\nc") == "ab\nc"
    # Format characters (a soft hyphen, a zero-width space) go too; a no-break space,
    # a separator that is not a control character, stays; text with none is unchanged
    assert normalise("co\u00adop\u200b era\u00a0tion\ttab") == "coop era\u00a0tion\ttab"
    assert normalise("Plain words.\n\n\tIndented.") == "Plain words.\n\n\tIndented."
