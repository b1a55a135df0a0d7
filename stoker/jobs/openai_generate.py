"""OpenAI completion and chat request bodies → ``generate``'s request fields.

One translation for every place such a body arrives: the HTTP API's
``/v1/completions`` and ``/v1/chat/completions`` (synchronous routes and Batch lines,
api/openai_shapes.py) and the lines of a prompt file written in the OpenAI Batch shape
(prompts.py), so a batch file written for OpenAI means the same through either door.

Every field of a body is used, ignored because it cannot change the answer here
(``user``, ``metadata``, ...), or refused with what to do instead (openai_fields.py
says why). Pure: no model, no llama.cpp.
"""

from __future__ import annotations

from typing import Any

from stoker.errors import InvalidInput
from stoker.jobs.openai_fields import STREAM_REFUSED, EndpointFields, Refusals

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS)

#: OpenAI's sampling fields; generate's Sampling has the same names and meanings.
SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)
#: stoker's own fields a body may carry: llama.cpp's sampling beyond OpenAI's, and
#: constraints (generate checks their values).
STOKER_FIELDS = ("top_k", "min_p", "repeat_penalty", "grammar", "json_schema")
#: Fields that cannot change a local model's answer.
IGNORED = frozenset(
    {
        "model",  # the caller maps it (local_model), a prompt file's job names its own
        "user",
        "metadata",
        "store",
        "service_tier",
        "stream_options",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
        "reasoning_effort",
        "verbosity",
    }
)
_TOOLS = (
    "tool calls are not supported: describe the call in the prompt and constrain the "
    'reply with response_format {"type": "json_schema", ...}'
)
_LOGPROBS = (
    "log-probabilities are not returned: llama.cpp computes them only for a model loaded "
    "with logits_all, which slows every prompt; leave it out"
)
_ONE = "one completion per request: send several requests (or batch lines) with different seeds"
UNSUPPORTED: Refusals = {
    "stream": ((None, False), STREAM_REFUSED),
    "n": ((None, 1), _ONE),
    "best_of": ((None, 1), _ONE),
    "logprobs": ((None, False, 0), _LOGPROBS),
    "top_logprobs": ((None, 0), _LOGPROBS),
    "echo": ((None, False), "echo is not supported; put the prompt before the text yourself"),
    "suffix": ((None, ""), "insertion (suffix) is not supported; leave it out"),
    "tools": ((None, []), _TOOLS),
    "functions": ((None, []), _TOOLS),
    "tool_choice": ((None, "none", "auto"), _TOOLS),
    "function_call": ((None, "none", "auto"), _TOOLS),
    "logit_bias": (
        (None, {}),
        "logit_bias is not supported: its token ids are OpenAI's tokenizer's, not this "
        "model's; use stop, grammar or response_format",
    ),
    "modalities": ((None, ["text"]), "only text output is supported"),
    "audio": ((None,), "audio output is not supported; use /v1/audio/speech for speech"),
    "prediction": ((None,), "predicted outputs are not supported; leave it out"),
    "web_search_options": ((None,), "web search is not supported: nothing leaves this machine"),
}
_COMMON = frozenset({*SAMPLING, *STOKER_FIELDS, "response_format"})
_FIELDS = {
    endpoint: EndpointFields(endpoint, _COMMON | own, IGNORED, UNSUPPORTED)
    for endpoint, own in (
        (CHAT, {"messages", "max_completion_tokens"}),
        (COMPLETIONS, {"prompt"}),
    )
}
#: prompts in one /v1/completions request (OpenAI's own limit for a prompt array)
MAX_PROMPTS = 2048


def generate_fields(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """generate's request fields for a body sent to ``endpoint`` (not its model).

    Raises InvalidInput naming the field for anything the endpoint cannot honour.
    """
    _FIELDS[endpoint].check(body)
    fields = {k: body[k] for k in (*SAMPLING, *STOKER_FIELDS) if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None:  # OpenAI's newer name wins
        fields["max_tokens"] = body["max_completion_tokens"]
    if isinstance(fields.get("stop"), str):  # OpenAI takes one stop or a list
        fields["stop"] = [fields["stop"]]
    fields |= _json_schema(body)
    if endpoint == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidInput(
                "body.messages must be a non-empty list of {role, content}.", param="messages"
            )
        return {"messages": messages, **fields}
    return {"prompt": _prompt(body.get("prompt")), **fields}


def _prompt(value: Any) -> str | list[str]:
    """A completion's prompt: one string, or a list of them (one choice each)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) and p for p in value):
        if len(value) > MAX_PROMPTS:
            raise InvalidInput(
                f"body.prompt lists {len(value)} prompts, over {MAX_PROMPTS}; split them "
                f"into several requests or a batch.",
                param="prompt",
            )
        return value if len(value) > 1 else value[0]
    raise InvalidInput(
        "body.prompt must be a non-empty string or a list of them (token arrays are not "
        "supported).",
        param="prompt",
    )


def _json_schema(body: dict[str, Any]) -> dict[str, Any]:
    """generate's ``json_schema`` for OpenAI's ``response_format`` (``{}`` for text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidInput(
                "body.response_format.json_schema.schema must be a JSON object.",
                param="response_format",
            )
        return {"json_schema": schema}
    raise InvalidInput(
        'body.response_format must be {"type": "text"}, {"type": "json_object"} '
        'or {"type": "json_schema", "json_schema": {"name", "schema"}}.',
        param="response_format",
    )
