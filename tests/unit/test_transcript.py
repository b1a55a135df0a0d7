"""Transcript results and their files: txt, srt, vtt, json, and time shifts."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
import srt
import webvtt
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import Word as FwWord

from stoker.errors import InvalidInput
from stoker.jobs.transcript import (
    FORMATS,
    Segment,
    Transcript,
    Word,
    from_json_dict,
    render,
    segments_from_faster_whisper,
    shift,
    to_json_dict,
    to_srt,
    to_txt,
    to_vtt,
)


def make_transcript(segments: tuple[Segment, ...] | None = None) -> Transcript:
    if segments is None:
        segments = (
            Segment(
                0.0,
                1.52,
                "The lighthouse keeper.",
                words=(
                    Word(0.0, 0.3, " The", 0.99),
                    Word(0.3, 0.9, " lighthouse", 0.95),
                    Word(0.9, 1.52, " keeper.", 0.875),
                ),
                avg_logprob=-0.25,
                no_speech_prob=0.01,
            ),
            Segment(
                3661.25,
                3663.007,
                "Climbed the stairs.",
                words=(Word(3661.25, 3663.0, " Climbed", 0.5),),
            ),
        )
    return Transcript(
        segments=segments,
        language="en",
        language_probability=0.97,
        duration_s=3664.5,
        model="base",
        options={"word_timestamps": True, "beam_size": 5},
    )


def test_srt_parses_back_to_the_same_times_and_text() -> None:
    # Given a transcript of two segments, one past the first hour
    t = make_transcript()

    # When it is written as SubRip and parsed back
    subs = list(srt.parse(to_srt(t)))

    # Then each segment is one numbered caption with its times to the millisecond
    assert [s.index for s in subs] == [1, 2]
    assert [s.content for s in subs] == ["The lighthouse keeper.", "Climbed the stairs."]
    assert subs[0].start == timedelta(0) and subs[0].end == timedelta(seconds=1.52)
    assert subs[1].start == timedelta(hours=1, minutes=1, seconds=1.25)
    assert subs[1].end == timedelta(hours=1, minutes=1, seconds=3.007)


def test_vtt_parses_back_to_the_same_times_and_text() -> None:
    vtt = to_vtt(make_transcript())

    assert vtt.startswith("WEBVTT")
    captions = webvtt.from_buffer(io.StringIO(vtt)).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:01.520", "The lighthouse keeper."),
        ("01:01:01.250", "01:01:03.007", "Climbed the stairs."),
    ]


def test_vtt_escapes_markup_characters_in_speech() -> None:
    t = make_transcript((Segment(0.0, 1.0, "A <b> & B --> C"),))

    captions = webvtt.from_string(to_vtt(t)).captions

    assert len(captions) == 1
    assert captions[0].raw_text == "A &lt;b&gt; &amp; B --&gt; C"


def test_json_roundtrips_exactly() -> None:
    t = make_transcript()

    d = to_json_dict(t)

    assert from_json_dict(d) == t
    assert from_json_dict(json.loads(json.dumps(d))) == t
    assert d["text"] == "The lighthouse keeper. Climbed the stairs."
    assert d["segments"][0]["words"][1] == {
        "start": 0.3,
        "end": 0.9,
        "word": " lighthouse",
        "probability": 0.95,
    }
    assert d["options"] == {"word_timestamps": True, "beam_size": 5}


def test_txt_is_one_stripped_segment_per_line() -> None:
    assert to_txt(make_transcript()) == "The lighthouse keeper.\nClimbed the stairs.\n"


def test_shift_adds_the_offset_to_segment_and_word_times() -> None:
    shifted = shift(make_transcript().segments, 30.0)

    assert (shifted[0].start, shifted[0].end) == (30.0, 31.52)
    assert [(w.start, w.end) for w in shifted[0].words] == [
        (30.0, 30.3),
        (30.3, 30.9),
        (30.9, 31.52),
    ]
    assert (shifted[1].start, shifted[1].end) == (3691.25, 3693.007)
    assert shifted[0].text == "The lighthouse keeper."


def test_empty_transcript_gives_empty_files() -> None:
    t = make_transcript(())

    assert to_txt(t) == ""
    assert to_srt(t) == ""
    assert webvtt.from_string(to_vtt(t)).captions == []
    assert to_vtt(t).startswith("WEBVTT")
    assert to_json_dict(t)["segments"] == []
    assert to_json_dict(t)["text"] == ""


def test_faster_whisper_segments_are_converted_with_an_offset() -> None:
    # Given segments as faster-whisper yields them (text with a leading space)
    fw = [
        FwSegment(
            id=1, seek=0, start=0.5, end=2.0, text=" Hello there.", tokens=[1, 2],
            avg_logprob=-0.2, compression_ratio=1.1, no_speech_prob=0.02,
            words=[FwWord(0.5, 1.0, " Hello", 0.9), FwWord(1.0, 2.0, " there.", 0.8)],
            temperature=0.0,
        ),
        FwSegment(
            id=2, seek=0, start=2.0, end=3.0, text=" Bye.", tokens=[3],
            avg_logprob=-0.3, compression_ratio=1.0, no_speech_prob=0.03,
            words=None, temperature=0.0,
        ),
    ]  # fmt: skip

    # When they are converted for a chunk that starts 10 s into the recording
    segments = segments_from_faster_whisper(iter(fw), offset_s=10.0)

    # Then times are shifted, text stripped, words kept as Whisper spells them
    assert segments == [
        Segment(
            10.5,
            12.0,
            "Hello there.",
            words=(Word(10.5, 11.0, " Hello", 0.9), Word(11.0, 12.0, " there.", 0.8)),
            avg_logprob=-0.2,
            no_speech_prob=0.02,
        ),
        Segment(12.0, 13.0, "Bye.", avg_logprob=-0.3, no_speech_prob=0.03),
    ]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_render_knows_every_format(fmt: str) -> None:
    t = make_transcript()

    text = render(t, fmt)

    assert "lighthouse" in text
    ext, content_type = FORMATS[fmt]
    assert ext == fmt
    assert content_type


def test_render_refuses_an_unknown_format() -> None:
    with pytest.raises(
        InvalidInput, match=r"unknown transcript format .docx.; choose one of txt, srt, vtt, json"
    ):
        render(make_transcript(), "docx")
