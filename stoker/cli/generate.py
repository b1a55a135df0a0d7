"""`stoker submit generate` and `stoker run generate`: prompts → completions (GGUF).

``--model`` is a catalog name or the path of a ``.gguf`` file. A path is recorded as
its absolute path (the client checks it exists here); workers load it from that path,
so with ``stoker submit`` it must exist there too (the same machine or a shared
filesystem), or be configured under ``[models.NAME]`` on every worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import DeviceOpt, OutOpt, PriorityOpt, run_app, submit_app
from stoker.cli.capabilities import run_job, submit_job
from stoker.errors import InvalidInput

PromptOpt = Annotated[str | None, typer.Option("--prompt", help="One prompt (completion).")]
PromptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help='JSONL: one {"prompt"} or {"messages"} a line; or a .txt file, a prompt a line.',
    ),
]
MessagesOpt = Annotated[
    Path | None, typer.Option("--messages", help="JSON file: a chat messages list.")
]
SystemOpt = Annotated[
    str | None,
    typer.Option(help="A system message for every prompt; each is then answered as a chat."),
]
ModelOpt = Annotated[str, typer.Option(help="GGUF model name (`stoker models`) or .gguf path.")]
MaxTokensOpt = Annotated[int, typer.Option(help="Tokens to generate, at most, per prompt.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling mass.")]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest tokens; 0 = all.")]
MinPOpt = Annotated[float, typer.Option(help="Drop tokens less likely than this × the likeliest.")]
RepeatOpt = Annotated[float, typer.Option(help="Penalty on repeated tokens; 1 = none.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed, for repeatable output.")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop text (repeatable).")]
SchemaOpt = Annotated[Path | None, typer.Option(help="JSON Schema file the output must match.")]
GrammarOpt = Annotated[Path | None, typer.Option(help="GBNF grammar file to constrain output.")]
NCtxOpt = Annotated[int | None, typer.Option(help="Context window in tokens (default 2048).")]


def _read(path: Path, what: str) -> str:
    if not path.is_file():
        raise InvalidInput(f"{what} {path} does not exist or is not a file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} {path} is not UTF-8 text ({exc.reason}).") from exc


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read(path, what))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} {path} is not valid JSON: {exc}.") from exc


def _prompt_lines(path: Path) -> str:
    """A prompt file as the job takes it, JSONL: a ``.txt`` file holds a prompt per
    non-blank line (as image's --prompts reads one), made a ``{"prompt"}`` line each;
    any other file is JSONL already. Blank lines stay, so each keeps its number."""
    text = _read(path, "--prompts")
    if path.suffix.lower() != ".txt":
        return text
    return "\n".join(
        json.dumps({"prompt": line.strip()}) if line.strip() else "" for line in text.splitlines()
    )


def _source(
    prompt: str | None, prompts: Path | None, messages: Path | None, system: str | None
) -> dict[str, Any]:
    given = [x for x in (prompt, prompts, messages) if x is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --prompt, --prompts FILE or --messages FILE.")
    system_field = {} if system is None else {"system": system}
    if prompt is not None:
        return {"prompt": prompt, **system_field}
    if prompts is not None:
        return {"prompts": _prompt_lines(prompts), **system_field}
    assert messages is not None
    return {"messages": _read_json(messages, "--messages"), **system_field}


def _request(
    source: dict[str, Any],
    model: str,
    sampling: dict[str, Any],
    schema: Path | None,
    grammar: Path | None,
    n_ctx: int | None,
) -> dict[str, Any]:
    request = {**source, "model": model, **sampling}
    if schema is not None:
        request["json_schema"] = _read_json(schema, "--json-schema")
    if grammar is not None:
        request["grammar"] = _read(grammar, "--grammar")
    if n_ctx is not None:
        request["n_ctx"] = n_ctx
    return request


def _sampling(
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    stop: Any,
) -> dict[str, Any]:
    """The job's sampling options (jobs/prompts.Sampling)."""
    return {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
        "seed": seed,
        "stop": list(stop or []),
    }


@submit_app.command("generate")
def submit_generate(
    ctx: typer.Context,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    messages: MessagesOpt = None,
    system: SystemOpt = None,
    model: ModelOpt = "gemma-3-270m",
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.8,
    top_p: TopPOpt = 0.95,
    top_k: TopKOpt = 40,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    json_schema: SchemaOpt = None,
    grammar: GrammarOpt = None,
    n_ctx: NCtxOpt = None,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue prompts for a GGUF model; results.jsonl (and result.json for one prompt)."""
    sampling = _sampling(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    source = _source(prompt, prompts, messages, system)
    submit_job(
        ctx, "generate", _request(source, model, sampling, json_schema, grammar, n_ctx), priority
    )


@run_app.command("generate")
def run_generate(
    ctx: typer.Context,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    messages: MessagesOpt = None,
    system: SystemOpt = None,
    model: ModelOpt = "gemma-3-270m",
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.8,
    top_p: TopPOpt = 0.95,
    top_k: TopKOpt = 40,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    json_schema: SchemaOpt = None,
    grammar: GrammarOpt = None,
    n_ctx: NCtxOpt = None,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Generate here with an in-process worker; results go to --out."""
    sampling = _sampling(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    source = _source(prompt, prompts, messages, system)
    request = _request(source, model, sampling, json_schema, grammar, n_ctx)
    run_job(ctx, "generate", request, out, device)
