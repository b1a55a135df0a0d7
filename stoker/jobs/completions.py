"""One prompt item on a loaded llama.cpp model → one result line (or error line).

Chat messages use the model's own chat template when its GGUF metadata has one
(``tokenizer.chat_template``, rendered by llama-cpp-python's
``create_chat_completion``). Base models have none (the packaged Gemma 3 270M is a
base model): they get :func:`fallback_prompt`, a plain transcript::

    system: You are terse.
    user: Name a colour.
    assistant:

and generation stops where the model starts a next turn (``\\nuser:`` ...). Each chat
result says which was used: ``"chat_template": "gguf" | "fallback"``.
"""

from __future__ import annotations

import json
from typing import Any, cast

from stoker.jobs.prompts import PromptItem, Sampling

TEMPLATE_KEY = "tokenizer.chat_template"
# A base model continues the transcript with the next turn; stop before it.
FALLBACK_STOPS = ("\nuser:", "\nsystem:", "\nassistant:", "\ndeveloper:")


class ItemFailed(Exception):
    """This item cannot run; ``code`` and the message go in its error line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def fallback_prompt(messages: list[dict[str, str]]) -> str:
    """The plain ``role: content`` transcript, ending with ``assistant:`` for the reply."""
    turns = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*turns, "assistant:"])


# llama-cpp-python's JSON-schema converter lets a JSON string hold raw control
# characters (a raw newline, say), which JSON forbids, so a model constrained by it can
# still write JSON that does not parse; llama.cpp's own converter excludes them, and
# this is its rule. (Once the vendored converter has it, the replace does nothing.)
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_schema_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF grammar of JSON matching ``schema``, strings free of control characters."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema)).replace(_LOOSE_CHAR, _STRICT_CHAR)


def _grammar(model: Any, sampling: Sampling) -> Any | None:
    """The LlamaGrammar for ``sampling``'s json_schema or grammar, checked by llama.cpp.

    An invalid GBNF grammar aborts the process when llama-cpp-python samples with it,
    so it is parsed here first, on its own, and refused with llama.cpp's reason.
    """
    if sampling.json_schema is None and sampling.grammar is None:
        return None
    import llama_cpp

    from stoker.workers.loaders.llama import captured_errors

    if sampling.json_schema is not None:
        try:
            gbnf = json_schema_gbnf(sampling.json_schema)
            grammar = llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
        except Exception as exc:
            raise ItemFailed(
                "invalid_json_schema",
                f"the json_schema cannot be turned into a grammar: {exc}; "
                f"use plain types, properties, required, enum and items",
            ) from exc
    else:
        grammar = llama_cpp.LlamaGrammar.from_string(str(sampling.grammar), verbose=False)
    with captured_errors(llama_cpp) as errors:
        checked = llama_cpp.llama_sampler_init_grammar(
            model._model.vocab, grammar._grammar.encode(), grammar._root.encode()
        )
    if not checked:
        reason = errors[0] if errors else "it does not parse"
        raise ItemFailed("invalid_grammar", f"the grammar is not valid GBNF: {reason}")
    llama_cpp.llama_sampler_free(checked)
    return grammar


def template_roles(template: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` in the roles ``template`` knows. OpenAI's ``developer`` is its newer
    name for ``system``; chat templates older than it drop it (Qwen 2.5), print a role
    the model never saw (Llama 3) or refuse it (Gemma), so it is sent as ``system``
    unless the template names it. The fallback transcript is treated the same way."""
    if "developer" in template:
        return messages
    return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]


def _gguf_chat_tokens(model: Any, template: str, messages: list[dict[str, str]], line: int) -> int:
    """Prompt tokens of ``messages`` rendered with the GGUF template, as llama-cpp-python
    does; ItemFailed when the template refuses them (its ``raise_exception``)."""
    from jinja2 import TemplateError
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = model.detokenize([model.token_bos()], special=True).decode("utf-8", "replace")
    eos = model.detokenize([model.token_eos()], special=True).decode("utf-8", "replace")
    try:
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        rendered = formatter(messages=cast(Any, messages))
    except (ValueError, TemplateError) as exc:  # raise_exception raises ValueError
        raise ItemFailed(
            "chat_template",
            f"line {line}: the model's chat template refuses these messages ({exc}); "
            f"send the roles in the order it expects (usually an optional system "
            f"message, then user and assistant turns in turn, starting with user)",
        ) from exc
    text = rendered.prompt.encode("utf-8")
    return len(model.tokenize(text, add_bos=not rendered.added_special, special=True))


def _check_fits(model: Any, item: PromptItem, prompt_tokens: int) -> None:
    n_ctx = model.n_ctx()
    wanted = prompt_tokens + item.sampling.max_tokens
    if wanted > n_ctx:
        raise ItemFailed(
            "context_length_exceeded",
            f"line {item.line}: the prompt is {prompt_tokens} tokens and max_tokens is "
            f"{item.sampling.max_tokens}, {wanted} in all, over the context of {n_ctx} "
            f"tokens (n_ctx); shorten the prompt, lower max_tokens, or submit with a "
            f"larger --n-ctx",
        )


def _options(sampling: Sampling, grammar: Any, extra_stops: tuple[str, ...] = ()) -> dict:
    return {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repeat_penalty": sampling.repeat_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "seed": sampling.seed,
        "stop": [*sampling.stop, *extra_stops],
        "grammar": grammar,
    }


def _usage(response: dict[str, Any]) -> dict[str, int]:
    usage = response["usage"]
    return {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _complete(model: Any, item: PromptItem, grammar: Any) -> dict[str, Any]:
    assert item.prompt is not None
    tokens = model.tokenize(item.prompt.encode("utf-8"), add_bos=True, special=True)
    _check_fits(model, item, len(tokens))
    response = model.create_completion(item.prompt, **_options(item.sampling, grammar))
    choice = response["choices"][0]
    return {
        "text": choice["text"],
        "finish_reason": choice["finish_reason"],
        "usage": _usage(response),
    }


def _chat(model: Any, item: PromptItem, grammar: Any) -> dict[str, Any]:
    assert item.messages is not None
    template = model.metadata.get(TEMPLATE_KEY)
    messages = template_roles(template or "", item.messages)
    if template:
        _check_fits(model, item, _gguf_chat_tokens(model, template, messages, item.line))
        response = model.create_chat_completion(messages, **_options(item.sampling, grammar))
        choice = response["choices"][0]
        content = choice["message"].get("content") or ""
        used = "gguf"
    else:
        prompt = fallback_prompt(messages)
        tokens = model.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        _check_fits(model, item, len(tokens))
        options = _options(item.sampling, grammar, FALLBACK_STOPS)
        response = model.create_completion(prompt, **options)
        choice = response["choices"][0]
        content = choice["text"].strip()
        used = "fallback"
    message = {"role": "assistant", "content": content}
    return {
        "message": message,
        "finish_reason": choice["finish_reason"],
        "usage": _usage(response),
        "chat_template": used,
    }


def run_item(model: Any, item: PromptItem) -> dict[str, Any]:
    """The result line of ``item`` on ``model`` (a ``llama_cpp.Llama``).

    ``{"index", "custom_id", "text" | "message", "finish_reason", "usage",
    "chat_template"?}``, or ``{"index", "custom_id", "error": {"code", "message"}}``
    when the item cannot run (too long for the context, a bad schema or grammar, messages
    the model's chat template refuses).
    """
    head = {"index": item.index, "custom_id": item.custom_id}
    try:
        grammar = _grammar(model, item.sampling)
        if item.prompt is not None:
            return {**head, **_complete(model, item, grammar)}
        return {**head, **_chat(model, item, grammar)}
    except ItemFailed as exc:
        return {**head, "error": {"code": exc.code, "message": str(exc)}}
