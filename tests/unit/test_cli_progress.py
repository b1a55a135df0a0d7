"""The progress line of a book: chapters finished and narration estimated."""

from __future__ import annotations

from stoker.cli.jobs import _book_progress
from stoker.queues.records import JobRecord, new_record


def book(length_scale: float = 1.0) -> JobRecord:
    chapters = [
        {"title": "One", "first": 0, "count": 2, "words": 310},
        {"title": "Two", "first": 2, "count": 3, "words": 465},
        {"title": "Three", "first": 5, "count": 1, "words": 155},
    ]
    return new_record(
        kind="audiobook",
        owner="local",
        params={"chapters": chapters, "length_scale": length_scale},
    )


def test_chapters_finished_and_minutes_estimated_from_words() -> None:
    record = book()
    assert _book_progress(record, set()) == " · chapter 1/3 · ≈ 0/6 min audio"
    # First chapter done and one chunk of the second: 310 + 155 words of 930
    assert _book_progress(record, {0, 1, 2}) == " · chapter 2/3 · ≈ 3/6 min audio"
    assert _book_progress(record, set(range(6))).startswith(" · chapter 3/3 · ≈ 6/6")


def test_slower_speech_is_longer_audio() -> None:
    assert _book_progress(book(2.0), set()).endswith("≈ 0/12 min audio")
