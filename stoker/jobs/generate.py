"""generate: prompts → completions with a GGUF model (llama-cpp-python).

A request is one ``prompt`` (completion), one ``messages`` list (chat), or
``prompts``: the text of a JSONL prompt file (see prompts.py for the line shape).
Every form becomes a JSONL text stored once under a content-addressed input key, so
the task messages carry only a key and a line range, whatever the prompts weigh.

Chunks are :data:`CHUNK_LINES` lines. Each writes one JSONL result line per input
line (completions.py); a line that cannot run becomes an error line and the rest go
on. Assembly writes ``results.jsonl`` (every line, in order), ``errors.jsonl`` when
a line failed, and for a prompt, a list of prompts (one choice each) or a messages
job ``result.json`` in OpenAI's ``text_completion`` / ``chat.completion`` shape.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from pydantic import Field

from stoker.errors import InvalidInput, JobCancelled
from stoker.jobs import completions, openai_generate, prompts
from stoker.jobs.base import (
    ERRORS_NAME,
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    parse_request,
)
from stoker.storage.keys import content_input_key

# Lines per chunk: a line takes seconds (256 tokens at ~65 tokens/s on 2 CPU cores),
# so 8 lines keep a task well under a minute (far inside the visibility timeout) and
# progress fine-grained, while the per-task cost (~10 ms) stays negligible.
CHUNK_LINES = 8
DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_N_CTX = 2048
JSONL = "application/x-ndjson"


class GenerateRequest(prompts.Sampling):
    """What a user may ask of ``generate``: exactly one of prompt, messages, prompts."""

    prompt: str | list[str] | None = Field(
        default=None, description="a prompt, or a list of them (one OpenAI choice each)"
    )
    messages: list[dict[str, Any]] | None = None
    prompts: str | None = Field(default=None, description="a JSONL prompt file's text")
    model: str = Field(default=DEFAULT_MODEL, description="catalog name of a GGUF model")
    n_ctx: int | None = Field(default=None, ge=64, le=262_144, description="context tokens")
    system: str | None = Field(
        default=None,
        min_length=1,
        description="a system message for every prompt, each then answered as a chat",
    )


def _request_lines(req: GenerateRequest) -> str:
    """A prompt, a list of prompts or one messages list as prompt-file lines."""
    if isinstance(req.prompt, list):
        if not req.prompt or len(req.prompt) > openai_generate.MAX_PROMPTS:
            raise InvalidInput(
                f"prompt lists {len(req.prompt)} prompts; give 1 to "
                f"{openai_generate.MAX_PROMPTS}, or a prompt file (prompts) for more."
            )
        return "\n".join(json.dumps({"prompt": p}) for p in req.prompt)
    if req.prompt is not None:
        return json.dumps({"prompt": req.prompt})
    return json.dumps({"messages": req.messages})


def _mode(req: GenerateRequest) -> str:
    given = [k for k in ("prompt", "messages", "prompts") if getattr(req, k) is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of prompt, messages or prompts (a JSONL file).")
    return given[0]


def _sampling(req: GenerateRequest) -> prompts.Sampling:
    return prompts.Sampling.model_validate(
        req.model_dump(include=set(prompts.Sampling.model_fields))
    )


class GenerateCapability:
    kind: str = "generate"
    backend: str | None = "llama"
    chunk_ext: str = "jsonl"
    chunk_content_type: str = JSONL
    work_stage: str = "generate"
    engines: tuple[tuple[str, str], ...] = (("llama_cpp", "generate"),)

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: GenerateRequest = parse_request(request, GenerateRequest)
        mode = _mode(req)
        if mode == "prompt" and req.system is not None:
            mode = "messages"  # answered as chat.completion, a message per prompt
        max_bytes = ctx.settings.max_text_bytes
        text = req.prompts if req.prompts is not None else _request_lines(req)
        sampling = _sampling(req)
        if mode == "prompts":
            count = len(prompts.parse_file(text, sampling, max_bytes, req.system))
        else:
            # A request's prompts fail it as a whole: the caller (an API client) asked
            # for one answer, not a results file with error lines.
            lines = prompts.split_lines(text)
            for i, (line_no, raw) in enumerate(lines):
                item = prompts.parse_line(i, line_no, raw, sampling, max_bytes, req.system)
                if isinstance(item, prompts.LineError):
                    raise InvalidInput(request_error(item.message, len(lines)))
            count = len(lines)
        spec = ctx.catalog.get(req.model, backend="llama")
        configured = int(spec.options.get("n_ctx", DEFAULT_N_CTX))
        n_ctx = req.n_ctx or configured
        # Only a context other than the model's own is a load option: jobs at the
        # model's context share the instance a worker preloaded (same fingerprint).
        load_options = {"n_ctx": n_ctx} if n_ctx != configured else {}
        fingerprint = spec.with_options(load_options).fingerprint
        data = text.encode("utf-8")
        key = content_input_key(hashlib.sha256(data).hexdigest(), "jsonl")
        params = {
            "model": req.model,
            "mode": mode,
            "sampling": sampling.model_dump(),
            "load_options": load_options,
            "lines": count,
            "max_prompt_bytes": max_bytes,
            "request_id": uuid.uuid4().hex,
        }
        # Only when given: the chunks of a job without one keep the identity they had.
        system = {"system": req.system} if req.system is not None else {}
        params |= system
        lines = prompts.split_lines(text)
        chunks = []
        for first in range(0, len(lines), CHUNK_LINES):
            part = "\n".join(raw for _, raw in lines[first : first + CHUNK_LINES])
            chunks.append(
                ChunkPlan(
                    payload={"inputs": [key], "first": first, "count": CHUNK_LINES},
                    identity={
                        "model": fingerprint,
                        "sampling": params["sampling"],
                        "max_prompt_bytes": max_bytes,
                        "first": first,
                        "lines": hashlib.sha256(part.encode("utf-8")).hexdigest(),
                        **system,
                    },
                )
            )
        return Prepared(params=params, model=req.model, chunks=chunks, uploads={key: data})

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        text = ctx.inputs[payload["inputs"][0]].read_text(encoding="utf-8")
        first = payload["first"]
        lines = prompts.split_lines(text)[first : first + payload["count"]]
        defaults = prompts.Sampling.model_validate(params["sampling"])
        results = []
        for offset, (line_no, raw) in enumerate(lines):
            if ctx.should_stop():
                raise JobCancelled("the job was cancelled between two prompts")
            item = prompts.parse_line(
                first + offset,
                line_no,
                raw,
                defaults,
                params["max_prompt_bytes"],
                params.get("system"),
            )
            if isinstance(item, prompts.LineError):
                result = item.to_json()
            else:
                result = completions.run_item(model, item)
            if params["mode"] != "prompts" and "error" in result:
                # A request's prompt: its failure is the job's (the API answers an error).
                message = result["error"]["message"]
                # .get: a job queued by a stoker from before lists of prompts has no count
                raise InvalidInput(request_error(message, params.get("lines", 1)))
            results.append(result)
        ctx.out.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        results = [
            json.loads(line)
            for f in ctx.chunk_files
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        failed = [r for r in results if "error" in r]
        meta = {
            "lines": len(results),
            "failed": len(failed),
            "completion_tokens": sum(
                r.get("usage", {}).get("completion_tokens", 0) for r in results
            ),
        }
        out = ctx.workdir / "results.jsonl"
        _write_jsonl(out, results)
        artifacts = [Artifact(out.name, out, JSONL, meta)]
        if failed:
            errors = ctx.workdir / ERRORS_NAME
            _write_jsonl(errors, failed)
            artifacts.append(Artifact(errors.name, errors, JSONL, {"lines": len(failed)}))
        if params["mode"] != "prompts" and results and not failed:
            single = ctx.workdir / "result.json"
            body = openai_response(params, results, int(time.time()))
            single.write_text(json.dumps(body, indent=2), encoding="utf-8")
            artifacts.append(Artifact(single.name, single, "application/json", meta))
        return artifacts


def _write_jsonl(path: Any, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def openai_response(params: dict[str, Any], results: list[dict[str, Any]], created: int) -> dict:
    """OpenAI's completion (``text_completion``) or chat (``chat.completion``) response
    for a request's result lines: one choice per prompt, usage summed."""
    choices: list[dict[str, Any]] = []
    for result in results:
        choice: dict[str, Any] = {"index": result["index"], "logprobs": None}
        if params["mode"] == "prompt":
            choice = {"text": result["text"], **choice}
        else:
            choice = {**choice, "message": result["message"]}
        choices.append({**choice, "finish_reason": result["finish_reason"]})
    kind, prefix = (
        ("text_completion", "cmpl")
        if params["mode"] == "prompt"
        else ("chat.completion", "chatcmpl")
    )
    usage = {
        k: sum(r["usage"][k] for r in results)
        for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return {
        "id": f"{prefix}-{params['request_id']}",
        "object": kind,
        "created": created,
        "model": params["model"],
        "choices": choices,
        "usage": usage,
    }


def request_error(message: str, prompts_given: int) -> str:
    """A line's error as the error of a request's prompt, which has no lines: with one
    prompt "line 1: the prompt is 3002 tokens ..." → "the prompt is 3002 tokens ...";
    of a list, "line 3: ..." → "prompt 3: ..."."""
    if prompts_given > 1:
        return message.replace("line ", "prompt ", 1)
    if message.startswith("line 1: "):
        return message.removeprefix("line 1: ")
    return message.replace("line 1", "the prompt", 1)
