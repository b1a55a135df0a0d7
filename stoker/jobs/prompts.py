"""Prompt files for ``generate``: JSONL lines → validated items, or a per-line error.

One line is ``{"custom_id"?, "prompt": str}`` or ``{"custom_id"?, "messages": [...]}``
(OpenAI chat shape), with optional sampling overrides (:class:`Sampling` fields). A
line in the OpenAI Batch shape (``{"custom_id", "method", "url", "body": {...}}``) is
read from its ``body`` as the HTTP API reads it (openai_generate.py: OpenAI's field
names, unsupported ones refused); its ``model`` is ignored (the job names the model).
Blank lines are skipped. A malformed line becomes a :class:`LineError` for that line
only; the submission fails only when the file is empty or every line is malformed.
Pure: no model, no llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from stoker.errors import InvalidInput
from stoker.jobs import openai_generate

JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class Sampling(BaseModel):
    """How tokens are chosen; the job sets defaults, a line may override any of them."""

    model_config = {"extra": "forbid"}

    max_tokens: int = Field(default=256, ge=1, le=32768, description="tokens to generate, at most")
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=100_000, description="0 = no top-k cut")
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=5.0)
    # OpenAI's: subtract from a token's logit once it has appeared / per appearance.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, lt=2**32, description="None = random")
    stop: list[str] = Field(default_factory=list, max_length=16)
    json_schema: dict[str, Any] | None = Field(default=None, description="constrain to JSON")
    grammar: str | None = Field(default=None, description="GBNF grammar to constrain to")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_json_schema(value)
        return value

    def model_post_init(self, context: Any) -> None:
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("give json_schema or grammar, not both")


class Message(BaseModel):
    """One chat message; ``content`` may be a string or a list of text parts."""

    model_config = {"extra": "forbid"}

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"content part {i} is of type {part.get('type')!r}; only text parts "
                    f'({{"type": "text", "text": "..."}}) are supported: the model reads text'
                )
            parts.append(part["text"])
        return "".join(parts)


class Line(Sampling):
    """One line of a prompt file: a prompt or messages, and optional overrides."""

    custom_id: str | None = Field(default=None, max_length=512)
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    # Every override is optional here: unset fields take the job's values.
    max_tokens: int | None = Field(default=None, ge=1, le=32768)  # type: ignore[assignment]
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)  # type: ignore[assignment]
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)  # type: ignore[assignment]
    top_k: int | None = Field(default=None, ge=0, le=100_000)  # type: ignore[assignment]
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)  # type: ignore[assignment]
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=5.0)  # type: ignore[assignment]
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # type: ignore[assignment]
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # type: ignore[assignment]
    stop: list[str] | None = Field(default=None, max_length=16)  # type: ignore[assignment]


@dataclass(frozen=True)
class PromptItem:
    """A valid line: ``prompt`` (completion) or ``messages`` (chat), and its sampling."""

    index: int  # position among the file's non-blank lines, from 0
    line: int  # line number in the file, from 1
    custom_id: str | None
    prompt: str | None
    messages: list[dict[str, str]] | None
    sampling: Sampling


@dataclass(frozen=True)
class LineError:
    """A line that cannot run; ``code`` is machine-readable, ``message`` a sentence."""

    index: int
    line: int
    custom_id: str | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "custom_id": self.custom_id,
            "error": {"code": self.code, "message": self.message},
        }


def check_json_schema(schema: Any) -> None:
    """Raise ValueError unless ``schema`` is a JSON Schema (checked with ``jsonschema``
    when installed, else structurally: types, properties, required)."""
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be a JSON object")
    try:
        from jsonschema import SchemaError, validators
    except ImportError:
        _check_schema_shape(schema)
        return
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


def _check_schema_shape(schema: dict[str, Any]) -> None:
    kinds = schema.get("type", "object")
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind not in JSON_TYPES:
            raise ValueError(f"not a valid JSON schema: unknown type {kind!r}")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError("not a valid JSON schema: properties must be an object")
    for sub in properties.values():
        check_json_schema(sub)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError("not a valid JSON schema: required must be a list of names")


#: What a prompt file's line looks like, for the errors that say how to fix one.
LINE_SHAPE = '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'


def split_lines(text: str) -> list[tuple[int, str]]:
    """(line number from 1, line) of every non-blank line of ``text``."""
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
        # An unknown field of the line: the reason when it is OpenAI's (tools, n, ...),
        # as a Batch-shaped line gets it, else the fields a line may have.
        if where in openai_generate.UNSUPPORTED:
            return f"{where}: {openai_generate.UNSUPPORTED[where][1]}"
        return (
            f"{where} is not a field of a prompt line; remove it (a line has: "
            f"{', '.join(Line.model_fields)})"
        )
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _object(raw: str) -> dict[str, Any]:
    """A line's JSON object, its ``id`` read as the custom_id; ValueError otherwise."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError(f"a line must be a JSON object: {LINE_SHAPE}")
    if "id" in obj and "custom_id" not in obj and isinstance(obj["id"], str | int):
        # {"id", "prompt"} as embed's {"id", "text"} lines: the id is the custom_id
        obj = {"custom_id": str(obj["id"]), **{k: v for k, v in obj.items() if k != "id"}}
    return obj


def _fields(obj: dict[str, Any], custom_id: str | None) -> dict[str, Any]:
    """The Line fields of a line's object (an OpenAI Batch line's from its body)."""
    if isinstance(obj.get("body"), dict):  # OpenAI Batch shape, read as the API reads it
        fields = openai_generate.generate_fields(obj["body"], _endpoint(obj))
        if isinstance(fields.get("prompt"), list):
            raise ValueError("a line holds one prompt; put each prompt of the list on its own line")
        return {"custom_id": custom_id, **fields}
    return obj


def _endpoint(line: dict[str, Any]) -> str:
    """The generate endpoint an OpenAI Batch line names (by its body when it has no url)."""
    url = line.get("url")
    if url is None:
        return openai_generate.CHAT if "messages" in line["body"] else openai_generate.COMPLETIONS
    if url not in openai_generate.ENDPOINTS:
        raise ValueError(
            f"url {url!r} is not a generate endpoint; use one of "
            f"{', '.join(openai_generate.ENDPOINTS)}"
        )
    return str(url)


def parse_line(
    index: int,
    line_no: int,
    raw: str,
    defaults: Sampling,
    max_bytes: int,
    system: str | None = None,
) -> PromptItem | LineError:
    """The item on one line of a prompt file, or why it cannot run.

    ``defaults`` are the job's sampling options; ``max_bytes`` caps a prompt's (or the
    messages' total) UTF-8 size. With the job's ``system`` message every line is a
    chat (:func:`with_system`).
    """
    custom_id: str | None = None
    try:
        obj = _object(raw)
        # Read first, so that a line refused for its fields still names its custom_id.
        custom_id = obj["custom_id"] if isinstance(obj.get("custom_id"), str) else None
        fields = _fields(obj, custom_id)
        if "id" in fields:  # kept by _fields only beside a custom_id
            raise ValueError("give custom_id or id, not both")
        line = Line.model_validate(fields)
        if (line.prompt is None) == (line.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if line.prompt is not None and not line.prompt.strip():
            raise ValueError("the prompt is empty; give the text to continue, or drop the line")
        overrides = line.model_dump(exclude_none=True, exclude={"custom_id", "prompt", "messages"})
        sampling = Sampling.model_validate({**defaults.model_dump(), **overrides})
        messages = [{"role": m.role, "content": m.text()} for m in line.messages or []]
        prompt = line.prompt
        if system is not None:
            prompt, messages = None, with_system(system, line.prompt, messages)
    except ValidationError as exc:
        return LineError(
            index, line_no, custom_id, "invalid_line", f"line {line_no}: {_first_error(exc)}"
        )
    except json.JSONDecodeError as exc:
        return LineError(
            index,
            line_no,
            custom_id,
            "invalid_line",
            f"line {line_no} is not valid JSON ({exc}); write it as {LINE_SHAPE}",
        )
    except (ValueError, InvalidInput) as exc:
        return LineError(index, line_no, custom_id, "invalid_line", f"line {line_no}: {exc}")
    size = len((prompt or "").encode()) + sum(len(m["content"].encode()) for m in messages)
    if size > max_bytes:
        return LineError(
            index,
            line_no,
            custom_id,
            "too_large",
            f"line {line_no}: the prompt is {size} bytes, over the {max_bytes}-byte limit "
            f"(max_text_bytes); shorten it or split it into several lines",
        )
    return PromptItem(index, line_no, custom_id, prompt, messages or None, sampling)


def with_system(
    system: str, prompt: str | None, messages: list[dict[str, str]]
) -> list[dict[str, str]]:
    """A line as a chat under the job's system message: its prompt as the user's
    message, or its messages after the system message unless they open with their
    own (a line is more particular than its job, as its sampling overrides are)."""
    if prompt is not None:
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    if messages and messages[0]["role"] in ("system", "developer"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def parse_file(
    text: str, defaults: Sampling, max_bytes: int, system: str | None = None
) -> list[PromptItem | LineError]:
    """Every non-blank line of a prompt file, parsed (:func:`parse_line`). Raises
    InvalidInput when the file has no lines, or when every line is malformed (naming
    the first few)."""
    lines = split_lines(text)
    if not lines:
        raise InvalidInput("the prompt file is empty; give one JSON object per line.")
    items = [parse_line(i, n, raw, defaults, max_bytes, system) for i, (n, raw) in enumerate(lines)]
    errors = [item for item in items if isinstance(item, LineError)]
    if len(errors) == len(items):
        shown = "; ".join(e.message for e in errors[:3])
        raise InvalidInput(
            f"no line of the prompt file can run ({len(errors)} malformed): {shown}. "
            f"Each line must be {LINE_SHAPE}."
        )
    return items
