"""The progress line: a book's chapters finished and narration estimated, the hours of
audio of a batch of recordings."""

from __future__ import annotations

from typing import Any

from stoker.cli.jobs import _audio_hours, _book_progress
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


class _Client:
    """Reads the children of one batch, and counts how often it was asked."""

    def __init__(self, kids: list[JobRecord]) -> None:
        self.kids, self.asked = kids, 0

    def children(self, batch_id: str) -> list[JobRecord]:
        self.asked += 1
        return self.kids


def test_a_batch_of_recordings_shows_its_hours_and_other_batches_read_nothing() -> None:
    kids = [
        new_record(kind="transcribe", params={"duration_s": 5400.0}),
        new_record(kind="transcribe", params={"duration_s": 1800.0}),
    ]
    recordings = new_record(kind="batch", params={"kind": "transcribe"})
    client: Any = _Client(kids)
    assert _audio_hours(client, recordings) == " · 2.00 h audio"
    # An OpenAI batch of 50,000 prompts has no audio: its jobs are not read
    prompts = new_record(kind="batch", params={"kind": "generate"})
    client = _Client([])
    assert _audio_hours(client, prompts) == "" and client.asked == 0
