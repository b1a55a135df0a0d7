"""Prompt files for generate: which lines run, which become error lines, and why."""

from __future__ import annotations

import json

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.completions import fallback_prompt
from stoker.jobs.generate import openai_response, request_error
from stoker.jobs.prompts import LineError, PromptItem, Sampling, parse_file, parse_line

DEFAULTS = Sampling(max_tokens=32, temperature=0.5)


def test_good_lines_take_job_defaults_and_their_own_overrides() -> None:
    """Given a completion line with overrides and a chat line without
    When the file is parsed
    Then each item carries the job's sampling with the line's overrides on top."""
    text = (
        json.dumps({"custom_id": "a", "prompt": "Hi", "max_tokens": 4, "stop": "\n"})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "Yo"}]}]})
    )
    first, second = parse_file(text, DEFAULTS, 1000)
    assert isinstance(first, PromptItem) and isinstance(second, PromptItem)
    assert (first.custom_id, first.prompt, first.sampling.max_tokens) == ("a", "Hi", 4)
    assert first.sampling.stop == ["\n"] and first.sampling.temperature == 0.5
    assert (second.index, second.line) == (1, 3)  # the blank line is skipped, not counted
    assert second.messages == [{"role": "user", "content": "Yo"}]
    assert second.sampling.max_tokens == 32


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"custom_id": "x"}', "exactly one of prompt or messages"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one"),
        ('{"prompt": 3}', "prompt"),
        ('{"prompt": "a", "max_tokens": "many"}', "max_tokens"),
        ('{"prompt": "a", "temperature": 9}', "temperature"),
        ('{"messages": [{"role": "robot", "content": "b"}]}', "role"),
        ('{"prompt": "a", "json_schema": {"type": "strin"}}', "not a valid JSON schema"),
        ('{"prompt": "a", "json_schema": {}, "grammar": "root ::= \\"x\\""}', "not both"),
        ('{"prompt": "  "}', "the prompt is empty"),
        ('{"prompt": "a", "tools": [{"type": "function"}]}', "tools: tool calls are not supported"),
        ('{"prompt": "a", "temprature": 0.5}', "temprature is not a field of a prompt line"),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, '
            '{"type": "image_url", "image_url": {"url": "x.png"}}]}]}',
            "content part 1 is of type 'image_url'; only text parts",
        ),
    ],
)
def test_a_malformed_line_is_an_error_for_that_line_only(line: str, reason: str) -> None:
    """Given a file with one malformed line between two good ones
    When it is parsed
    Then that line is an error naming its line number and the reason; the others run."""
    text = f'{{"prompt": "ok"}}\n{line}\n{{"prompt": "ok too"}}\n'
    items = parse_file(text, DEFAULTS, 1000)
    assert [type(i) for i in items] == [PromptItem, LineError, PromptItem]
    error = items[1]
    assert isinstance(error, LineError)
    assert error.message.startswith("line 2") and reason in error.message
    assert error.to_json()["error"]["code"] == "invalid_line"


def test_a_prompt_over_the_byte_limit_is_refused_per_line() -> None:
    """Given a 1 MB prompt and a 1 kB limit
    Then that line is a too_large error with its size; a short line still runs."""
    big = json.dumps({"custom_id": "big", "prompt": "x" * 1_000_000})
    items = parse_file(big + '\n{"prompt": "short"}', DEFAULTS, 1000)
    error = items[0]
    assert isinstance(error, LineError) and error.code == "too_large"
    assert "1000000 bytes" in error.message
    assert error.custom_id == "big" and isinstance(items[1], PromptItem)


def test_an_openai_batch_line_is_read_from_its_body() -> None:
    """Given a line in OpenAI's Batch shape
    Then its body is the item and the body's model name is ignored."""
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-x", "messages": [{"role": "user", "content": "Hi"}], "seed": 3},
    }
    (item,) = parse_file(json.dumps(line), DEFAULTS, 1000)
    assert isinstance(item, PromptItem)
    assert (item.custom_id, item.sampling.seed, item.messages) == (
        "req-1",
        3,
        [{"role": "user", "content": "Hi"}],
    )


def test_an_id_field_is_the_lines_custom_id() -> None:
    # {"id", ...} as embed's JSONL lines take it; both id and custom_id is an error
    items = parse_file(
        '{"id": "a", "prompt": "x"}\n{"id": 7, "prompt": "y"}\n'
        '{"id": "no", "custom_id": "yes", "prompt": "z"}\n{"id": "e", "prompt": ""}\n',
        DEFAULTS, 1000,
    )  # fmt: skip
    assert [i.custom_id for i in items] == ["a", "7", "yes", "e"]
    assert [type(i) for i in items] == [PromptItem, PromptItem, LineError, LineError]
    assert "custom_id or id, not both" in items[2].message  # type: ignore[union-attr]


def test_an_empty_file_and_an_all_malformed_file_are_refused_at_submit() -> None:
    """Given an empty file, then a file whose lines are all malformed
    Then both are InvalidInput; the second names the first lines and their reasons."""
    with pytest.raises(InvalidInput, match="empty"):
        parse_file("\n  \n", DEFAULTS, 1000)
    with pytest.raises(InvalidInput, match=r"\(4 malformed\): line 1 .*; line 2.*; line 3"):
        parse_file("{x\n[]\n{}\n{y\n", DEFAULTS, 1000)


def test_single_lines_are_parsed_with_their_position() -> None:
    """Given one line at index 7, file line 9
    Then the item keeps both (results are ordered and errors name the file line)."""
    item = parse_line(7, 9, '{"prompt": "p"}', DEFAULTS, 10)
    assert isinstance(item, PromptItem) and (item.index, item.line) == (7, 9)


def test_the_fallback_chat_template_is_a_plain_transcript() -> None:
    """Given system and user messages
    Then the fallback prompt is role: content lines ending with assistant:."""
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert fallback_prompt(messages) == "system: Be terse.\nuser: Hi\nassistant:"


def test_result_json_has_openai_shapes() -> None:
    """Given a single-prompt and a single-chat result line
    Then result.json bodies have OpenAI's fields for text_completion and chat.completion."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    text = {"index": 0, "custom_id": None, "text": "ab", "finish_reason": "length", "usage": usage}
    body = openai_response({"mode": "prompt", "model": "m", "request_id": "r"}, [text], 10)
    assert body == {
        "id": "cmpl-r",
        "object": "text_completion",
        "created": 10,
        "model": "m",
        "choices": [{"text": "ab", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": usage,
    }
    message = {"role": "assistant", "content": "hi"}
    chat = {"index": 0, "message": message, "finish_reason": "stop", "usage": usage}
    body = openai_response({"mode": "messages", "model": "m", "request_id": "r"}, [chat], 10)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-r"
    assert body["choices"] == [
        {"index": 0, "logprobs": None, "message": message, "finish_reason": "stop"}
    ]


def test_a_one_prompt_job_words_its_error_without_line_numbers() -> None:
    """Given the error of line 1, as a one-prompt job's only line reports it
    Then the job's error reads as the prompt's: no "line 1", no doubled subject."""
    too_long = "line 1: the prompt is 3002 tokens and max_tokens is 8"
    assert request_error(too_long, 1) == "the prompt is 3002 tokens and max_tokens is 8"
    assert request_error("line 1 is not valid JSON", 1) == "the prompt is not valid JSON"
    # Of a list of prompts, the error names which one
    third = "line 3: the prompt is 3002 tokens"
    assert request_error(third, 4) == "prompt 3: the prompt is 3002 tokens"


def test_a_list_of_prompts_answers_one_choice_each_with_usage_summed() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    lines = [
        {"index": i, "text": t, "finish_reason": "stop", "usage": usage}
        for i, t in enumerate(["a", "b"])
    ]
    body = openai_response({"mode": "prompt", "model": "m", "request_id": "r"}, lines, 10)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "a"), (1, "b")]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}


def test_a_jobs_system_message_makes_every_line_a_chat_unless_it_has_its_own() -> None:
    """Given a prompt line, a chat line, and a chat line that opens with its own system
    When the file is parsed with the job's system message
    Then the prompt is the user's turn after it, the chat gets it first, and the line's
    own system message is kept: a line is more particular than its job."""
    own = {"role": "system", "content": "Answer in French."}
    text = "\n".join(
        json.dumps(line)
        for line in (
            {"prompt": "Hi"},
            {"messages": [{"role": "user", "content": "Yo"}]},
            {"messages": [own, {"role": "user", "content": "Yo"}]},
        )
    )
    items = parse_file(text, DEFAULTS, 1000, system="Be terse.")
    assert all(isinstance(i, PromptItem) and i.prompt is None for i in items)
    system = {"role": "system", "content": "Be terse."}
    assert [i.messages for i in items if isinstance(i, PromptItem)] == [
        [system, {"role": "user", "content": "Hi"}],
        [system, {"role": "user", "content": "Yo"}],
        [own, {"role": "user", "content": "Yo"}],
    ]
    # And the system message counts towards a line's size
    too_big = parse_line(0, 1, '{"prompt": "Hi"}', DEFAULTS, 100, system="x" * 100)
    assert isinstance(too_big, LineError) and too_big.code == "too_large"
