"""OpenAI request bodies → stoker requests, and results → OpenAI response bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stoker.api.batch_lines import line_files
from stoker.api.openai_shapes import ADAPTERS, adapter_for
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord, JobState, OutputRef


def test_speech_maps_openai_names_to_the_default_voice_and_formats() -> None:
    to = ADAPTERS["/v1/audio/speech"].to_request
    assert to({"model": "tts-1", "input": "Hi.", "voice": "alloy"}) == {
        "text": "Hi.",
        "format": "mp3",
    }
    assert to(
        {"input": "Hi.", "voice": "en_US-joe-medium", "response_format": "opus", "speed": 2.0}
    ) == {"text": "Hi.", "voice": "en_US-joe-medium", "format": "ogg", "length_scale": 0.5}
    assert to({"model": "en_US-joe-medium", "input": "Hi."})["voice"] == "en_US-joe-medium"
    for bad in (
        {"voice": "alloy"},
        {"input": "x", "response_format": "aac"},
        {"input": "x", "speed": 9},
    ):
        with pytest.raises(InvalidInput):
            to(bad)


def test_embeddings_chat_completions_and_images_requests() -> None:
    assert ADAPTERS["/v1/embeddings"].to_request(
        {"model": "text-embedding-3-small", "input": "a"}
    ) == {"texts": ["a"], "format": "jsonl"}
    chat = ADAPTERS["/v1/chat/completions"].to_request(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 5,
            "stop": "\n",
        }
    )
    assert chat == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stop": ["\n"],
    }
    assert ADAPTERS["/v1/completions"].to_request({"prompt": "x", "model": "mine"}) == {
        "prompt": "x",
        "model": "mine",
    }
    assert ADAPTERS["/v1/images/generations"].to_request(
        {"prompt": "a cat", "n": 2, "size": "256x256", "model": "dall-e-3"}
    ) == {"prompt": "a cat", "count": 2, "width": 256, "height": 256}
    with pytest.raises(InvalidInput):
        adapter_for("/v1/moderations")


def test_an_image_edit_is_an_image_job_from_its_one_starting_image() -> None:
    to = ADAPTERS["/v1/images/edits"].to_request
    asked = {"prompt": "a cat", "model": "sd", "size": "512x512", "strength": 0.4}
    expected = {
        "prompt": "a cat",
        "model": "sd",
        "count": 1,
        "width": 512,
        "height": 512,
        "path": "file-abc",
        "strength": 0.4,
    }
    assert to({**asked, "image": "file-abc"}) == expected
    assert to({**asked, "image": ["file-abc"], "input_fidelity": "high"}) == expected
    assert to({**asked, "image": "file-abc", "mask": "file-m"}) == {**expected, "mask": "file-m"}
    for bad, message in (
        ({"image": ["file-a", "file-b"]}, "one starting image"),
        ({}, "one starting image"),
        ({"image": "file-a", "background": "transparent"}, "transparent backgrounds"),
    ):
        with pytest.raises(InvalidInput, match=message):
            to({"prompt": "a cat", **bad})
    # strength is an edit's field only
    with pytest.raises(InvalidInput, match=r"body\.strength is not a field"):
        ADAPTERS["/v1/images/generations"].to_request({"prompt": "a cat", "strength": 0.4})


def test_an_embed_result_becomes_an_openai_embedding_list() -> None:
    ref = OutputRef(
        name="embeddings.jsonl",
        key="jobs/j/embeddings.jsonl",
        size_bytes=1,
        content_type="application/x-ndjson",
    )
    record = JobRecord(
        id="j", kind="embed", state=JobState.SUCCEEDED, outputs=[ref], model="minilm"
    )
    data = (
        b'{"id": "0", "embedding": [0.5, 1.0], "tokens": 7}\n'
        b'{"id": "1", "embedding": [2.0, 3.0], "tokens": 5}\n'
    )
    body = ADAPTERS["/v1/embeddings"].response_body(record, lambda k: "u", lambda k: data, {})
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["embedding"] for d in body["data"]] == [[0.5, 1.0], [2.0, 3.0]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    # usage is the tokens the model read of each input
    assert body["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    json.dumps(body)


def test_response_formats_and_json_schemas_map_to_the_capabilities_fields() -> None:
    chat = ADAPTERS["/v1/chat/completions"].to_request
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    messages = [{"role": "user", "content": "hi"}]
    assert chat(
        {
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema},
            },
        }
    ) == {"messages": messages, "json_schema": schema}
    assert chat({"messages": messages, "response_format": {"type": "json_object"}})[
        "json_schema"
    ] == {"type": "object"}
    for bad in ({"n": 2}, {"stream": True}, {"response_format": {"type": "xml"}}):
        with pytest.raises(InvalidInput):
            chat({"messages": messages, **bad})
    image = ADAPTERS["/v1/images/generations"]
    body = {"prompt": "p", "response_format": "b64_json", "steps": 2, "output_format": "webp"}
    assert image.to_request(body) == {"prompt": "p", "count": 1, "format": "webp", "steps": 2}
    assert image.options(body) == {"response_format": "b64_json"}
    with pytest.raises(InvalidInput):
        image.to_request({"prompt": "p", "response_format": "gif"})


def test_base64_embeddings_are_little_endian_float32() -> None:
    import base64
    import struct

    ref = OutputRef(
        name="embeddings.jsonl", key="k", size_bytes=1, content_type="application/x-ndjson"
    )
    record = JobRecord(id="j", kind="embed", state=JobState.SUCCEEDED, outputs=[ref])
    adapter = ADAPTERS["/v1/embeddings"]
    options = adapter.options({"input": "a", "encoding_format": "base64"})
    data = b'{"id": "0", "embedding": [0.5, -2.0]}\n'
    body = adapter.response_body(record, lambda k: "u", lambda k: data, options)
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -2.0)


@pytest.mark.parametrize(
    ("endpoint", "body", "field", "says"),
    [
        ("/v1/embeddings", {"input": "a", "dimensions": 256}, "dimensions", "fixed size"),
        ("/v1/embeddings", {"input": "a", "encodng_format": "base64"}, "encodng_format", "not a"),
        (
            "/v1/images/generations",
            {"prompt": "a", "num_inference_steps": 4},
            "num_inference_steps",
            "not a",
        ),
        (
            "/v1/images/generations",
            {"prompt": "a", "background": "transparent"},
            "background",
            "paints",
        ),
        ("/v1/images/generations", {"prompt": "a", "stream": True}, "stream", "streaming"),
        ("/v1/audio/speech", {"input": "Hi.", "instructions": "Whisper."}, "instructions", "Piper"),
        ("/v1/audio/speech", {"input": "Hi.", "stream_format": "sse"}, "stream_format", "stream"),
        ("/v1/audio/transcriptions", {"file": "f", "prompt": "Names: Ada"}, "prompt", "steer"),
        ("/v1/audio/transcriptions", {"file": "f", "temperature": 0.4}, "temperature", "beam"),
        (
            "/v1/audio/transcriptions",
            {"file": "f", "timestamp_granularities": ["word"]},
            "timestamp_granularities",
            "verbose_json",
        ),
        (
            "/v1/audio/transcriptions",
            {"file": "f", "timestamp_granularities": ["letter"]},
            "timestamp_granularities",
            '"segment", "word" or both',
        ),
    ],
)
def test_a_field_an_endpoint_cannot_honour_or_does_not_know_is_refused_by_name(
    endpoint: str, body: dict, field: str, says: str
) -> None:
    with pytest.raises(InvalidInput, match=f"body.{field}") as raised:
        ADAPTERS[endpoint].to_request(body)

    assert says in str(raised.value)
    assert raised.value.param == field


def test_fields_that_ask_for_nothing_or_change_nothing_here_are_accepted() -> None:
    # What OpenAI's clients send for the default behaviour, and hints of OpenAI's own
    # models that a local pipeline has no use for
    image = {"prompt": "a", "quality": "hd", "style": "vivid", "user": "u", "stream": False}
    assert ADAPTERS["/v1/images/generations"].to_request(image) == {"prompt": "a", "count": 1}
    speech = {"input": "Hi.", "instructions": "", "stream_format": "audio"}
    assert ADAPTERS["/v1/audio/speech"].to_request(speech) == {"text": "Hi.", "format": "mp3"}
    heard = {"file": "f", "temperature": 0, "timestamp_granularities": ["segment"]}
    assert ADAPTERS["/v1/audio/transcriptions"].to_request(heard)["path"] == "f"
    embed = {"input": ["a"], "user": "u", "normalize": True, "prompt": "query: "}
    assert ADAPTERS["/v1/embeddings"].to_request(embed) == {
        "texts": ["a"],
        "format": "jsonl",
        "normalize": True,
        "prompt": "query: ",
    }


def test_verbose_json_is_openais_shape_with_words_when_asked() -> None:
    from stoker.api.openai_shapes import verbose_transcription

    word = {"start": 0.5, "end": 0.9, "word": " fox", "probability": 0.9}
    transcript = {
        "language": "en",
        "language_probability": 0.99,
        "duration_s": 2.5,
        "model": "tiny",
        "options": {},
        "text": "The fox.",
        "segments": [
            {
                "start": 0.0,
                "end": 1.2,
                "text": "The fox.",
                "words": [word],
                "avg_logprob": -0.2,
                "no_speech_prob": 0.01,
            }
        ],
    }
    segment = {
        "id": 0,
        "start": 0.0,
        "end": 1.2,
        "text": "The fox.",
        "avg_logprob": -0.2,
        "no_speech_prob": 0.01,
    }
    asked = {"file": "f", "response_format": "verbose_json"}
    assert verbose_transcription(transcript, asked) == {
        "task": "transcribe",
        "language": "en",
        "duration": 2.5,
        "text": "The fox.",
        "segments": [segment],
    }
    words = verbose_transcription(transcript, {**asked, "timestamp_granularities": ["word"]})
    assert words["words"] == [{"word": "fox", "start": 0.5, "end": 0.9}]
    request = ADAPTERS["/v1/audio/transcriptions"].to_request(
        {**asked, "timestamp_granularities": ["word"]}
    )
    assert request["word_timestamps"] is True and request["formats"] == ["txt", "json"]


def test_a_batch_lines_files_go_in_a_folder_of_its_custom_id_when_that_can_be_a_name() -> None:
    refs = [
        OutputRef(name=name, key=f"jobs/j/{name}", size_bytes=1, content_type="x", partial=part)
        for name, part in (("speech.mp3", False), ("manifest.json", False), ("c0", True))
    ]
    kid = JobRecord(id="j", kind="speak", state=JobState.SUCCEEDED, outputs=refs, parent_index=6)
    out = Path("out")
    # A custom_id that can be a folder's name names it; only the finished outputs go
    assert line_files(kid, "intro-1.v2", out) == [
        ("jobs/j/speech.mp3", out / "intro-1.v2" / "speech.mp3")
    ]
    # One that cannot (a path, a space, none, the output or error file's own name)
    # gives the request's position, which starts with a character no name starts with
    for custom_id in ("a/b", "..", "two words", None, "x" * 101, "output.jsonl", "errors.jsonl"):
        assert line_files(kid, custom_id, out) == [
            ("jobs/j/speech.mp3", out / "_00007" / "speech.mp3")
        ]
