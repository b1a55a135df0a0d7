"""OpenAI completion and chat bodies → generate's fields: what is used, what is
ignored, what is refused (and the same for OpenAI Batch lines in a prompt file)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.openai_generate import CHAT, COMPLETIONS, MAX_PROMPTS, generate_fields
from stoker.jobs.prompts import LineError, PromptItem, Sampling, parse_line

MESSAGES = [{"role": "user", "content": "Hi"}]
DEFAULTS = Sampling(max_tokens=32)


def test_sampling_fields_are_used_and_fields_that_change_nothing_are_ignored() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 9,
        "max_completion_tokens": 12,
        "temperature": 0.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["\n"],
        "seed": 4,
        "top_k": 10,
        "user": "u-1",
        "metadata": {"team": "a"},
        "n": 1,
        "stream": False,
        "logprobs": False,
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
    }
    assert generate_fields(body, CHAT) == {
        "messages": MESSAGES,
        "max_tokens": 12,  # max_completion_tokens is OpenAI's newer name and wins
        "temperature": 0.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["\n"],
        "seed": 4,
        "top_k": 10,
        "json_schema": {"type": "object"},
    }


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}], "tool calls"),
        ("tool_choice", "required", "tool calls"),
        ("logprobs", True, "log-probabilities"),
        ("top_logprobs", 3, "log-probabilities"),
        ("n", 2, "one completion per request"),
        ("n", True, "one completion per request"),  # True == 1, but it is not a count
        ("stream", True, "streaming"),
        ("logit_bias", {"50256": -100}, "tokenizer"),
        ("modalities", ["text", "audio"], "only text"),
        ("temprature", 0.5, "not a field of /v1/chat/completions"),  # a typo is not ignored
    ],
)
def test_a_field_it_cannot_honour_is_refused_by_name(field: str, value: Any, says: str) -> None:
    with pytest.raises(InvalidInput, match=f"body.{field}") as raised:
        generate_fields({"messages": MESSAGES, field: value}, CHAT)
    assert says in str(raised.value)
    assert raised.value.param == field


def test_completion_fields_belong_to_their_endpoint() -> None:
    assert generate_fields({"prompt": "Once", "logprobs": 0}, COMPLETIONS) == {"prompt": "Once"}
    for body, says in (
        ({"prompt": "Once", "echo": True}, "echo"),
        ({"prompt": "Once", "best_of": 3}, "one completion"),
        ({"prompt": "Once", "messages": MESSAGES}, "not a field of /v1/completions"),
    ):
        with pytest.raises(InvalidInput, match=says):
            generate_fields(body, COMPLETIONS)
    with pytest.raises(InvalidInput, match="messages must be a non-empty list"):
        generate_fields({"messages": []}, CHAT)


def test_a_completion_takes_one_prompt_or_a_list_of_them() -> None:
    assert generate_fields({"prompt": ["a", "b"]}, COMPLETIONS) == {"prompt": ["a", "b"]}
    assert generate_fields({"prompt": ["a"]}, COMPLETIONS) == {"prompt": "a"}
    for prompt in ("", [], [""], [[1, 2, 3]], 7):
        with pytest.raises(InvalidInput, match="token arrays are not supported"):
            generate_fields({"prompt": prompt}, COMPLETIONS)
    with pytest.raises(InvalidInput, match=f"over {MAX_PROMPTS}"):
        generate_fields({"prompt": ["a"] * (MAX_PROMPTS + 1)}, COMPLETIONS)


def batch_line(body: dict[str, Any], url: str | None = CHAT) -> str:
    line: dict[str, Any] = {"custom_id": "r1", "method": "POST", "body": body}
    if url is not None:
        line["url"] = url
    return json.dumps(line)


def test_an_openai_batch_line_in_a_prompt_file_is_read_as_the_api_reads_it() -> None:
    """Given a line written for OpenAI's Batch API with the fields clients send
    Then it runs with them mapped, as the HTTP API would run the same body."""
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_completion_tokens": 8,
        "response_format": {"type": "json_object"},
        "n": 1,
        "user": "u",
        "frequency_penalty": 1.0,
    }
    item = parse_line(0, 1, batch_line(body), DEFAULTS, 10_000)
    assert isinstance(item, PromptItem)
    assert (item.custom_id, item.messages) == ("r1", MESSAGES)
    assert item.sampling.max_tokens == 8 and item.sampling.frequency_penalty == 1.0
    assert item.sampling.json_schema == {"type": "object"}
    # Without a url, the body says which endpoint it is
    item = parse_line(0, 1, batch_line({"prompt": "Once"}, url=None), DEFAULTS, 10_000)
    assert isinstance(item, PromptItem) and item.prompt == "Once"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (batch_line({"messages": MESSAGES, "tools": [{"type": "function"}]}), "body.tools"),
        (batch_line({"input": "x"}, url="/v1/embeddings"), "not a generate endpoint"),
        (batch_line({"prompt": ["a", "b"]}, url=COMPLETIONS), "its own line"),
    ],
)
def test_a_batch_line_it_cannot_honour_fails_alone(line: str, says: str) -> None:
    error = parse_line(2, 3, line, DEFAULTS, 10_000)
    assert isinstance(error, LineError) and error.custom_id == "r1"
    assert error.message.startswith("line 3: ") and says in error.message
