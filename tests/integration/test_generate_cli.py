"""`stoker run generate` / `stoker submit generate` on the embedded default."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.config import load_settings
from tests.gguf_models import write_tiny_llama
from tests.integration.test_cli import stoker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_run_generate_with_a_gguf_path_a_prompt_file_and_a_schema(
    data_dir: Path, tmp_path: Path
) -> None:
    """Given a .gguf file, a two-line prompt file and a JSON schema file
    When `stoker run generate --model FILE.gguf --prompts ... --json-schema ...` runs
    Then results.jsonl holds one schema-shaped JSON answer per line."""
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"custom_id": "a", "prompt": "One"}\n{"prompt": "Two"}\n')
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        )
    )
    out = tmp_path / "out"
    args = ["--prompts", str(prompts), "--json-schema", str(schema), "--max-tokens", "32"]
    result = stoker(
        "run",
        "generate",
        "--model",
        str(model),
        *args,
        "--seed",
        "3",
        "--out",
        str(out),
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", None]
    assert all(isinstance(json.loads(x["text"])["ok"], bool) for x in lines)
    assert not (out / "errors.jsonl").exists() and not (out / "result.json").exists()


def test_submit_generate_records_a_model_path_as_an_absolute_path(
    data_dir: Path, tmp_path: Path
) -> None:
    """Given a .gguf file under ./models that no catalog names
    When `stoker submit generate --model ./models/tiny.gguf` runs there
    Then the job is queued with the file's absolute path as its model."""
    (tmp_path / "models").mkdir()
    model = write_tiny_llama(tmp_path / "models" / "tiny.gguf")
    result = stoker(
        "submit", "generate", "--model", "./models/tiny.gguf", "--prompt", "x",
        data_dir=data_dir, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Stoker(load_settings(data_dir=data_dir)) as client:
        record = client.status(result.stdout.strip())
    assert record.model == str(model) and record.params["model"] == str(model)


def test_run_generate_says_which_lines_failed(data_dir: Path, tmp_path: Path) -> None:
    """Given a prompt file of three lines, the second not JSON
    When `stoker run generate` runs it, then `stoker status` shows the job
    Then the run exits 0 with the two results, and both commands warn that 1 of 3
    lines failed, quoting that line's error and naming errors.jsonl."""
    prompts = '{"prompt": "One"}\n{"prompt": oops}\n{"prompt": "Three"}\n'
    result, out = run_tiny(tmp_path / "prompts.jsonl", prompts, data_dir)
    assert result.returncode == 0, result.stderr
    warning = "1 of 3 lines failed (the first: line 2 is not valid JSON"
    assert warning in " ".join(result.stderr.split())
    assert "errors.jsonl" in result.stderr
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["index"] for e in errors] == [1]
    with Stoker(load_settings(data_dir=data_dir)) as client:
        job_id = client.jobs()[0].id
        assert [e["index"] for e in client.item_errors(job_id)] == [1]
    shown = stoker("status", job_id, data_dir=data_dir)
    assert shown.returncode == 0 and warning in " ".join(shown.stdout.split())


def test_run_generate_reads_a_batch_file_written_for_openai(data_dir: Path, tmp_path: Path) -> None:
    """Given a prompt file of OpenAI Batch lines with the fields clients write
    (max_completion_tokens, response_format, n, user), and one asking for tools
    When `stoker run generate --prompts` runs it
    Then the three run (the second's reply a JSON object, as its response_format asks;
    the unit tests check each field's mapping), and the tools line fails alone
    under its custom_id, saying tools are not supported."""
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    chat = "/v1/chat/completions"
    bodies = [
        (chat, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
                "max_completion_tokens": 3, "n": 1, "user": "u-1"}),
        (chat, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "JSON"}],
                "max_tokens": 40, "response_format": {"type": "json_object"}, "seed": 2}),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "Once", "max_tokens": 2}),
        (chat, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Call"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
    ]  # fmt: skip
    prompts = tmp_path / "batch.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + "\n"
            for i, (url, body) in enumerate(bodies)
        )
    )
    out = tmp_path / "out"
    result = stoker(
        "run", "generate", "--model", str(model), "--prompts", str(prompts),
        "--max-tokens", "8", "--out", str(out), data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = (out / "results.jsonl").read_text().splitlines()
    lines = {x["custom_id"]: x for x in map(json.loads, results)}
    assert "message" in lines["r0"] and "text" in lines["r2"]
    assert isinstance(json.loads(lines["r1"]["message"]["content"]), dict)
    (error,) = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert error["custom_id"] == "r3" and "body.tools" in error["error"]["message"]


def test_run_generate_prints_a_failed_prompt_once(data_dir: Path, tmp_path: Path) -> None:
    """Given a single prompt longer than the tiny model's context
    When `stoker run generate` runs it
    Then it exits 1 and stderr gives the job's error once, without "line 1"."""
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    result = stoker(
        "run", "generate", "--model", str(model), "--prompt", "the story " * 200,
        "--n-ctx", "64", "--max-tokens", "4", "--out", str(tmp_path / "out"), data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("over the context of") == 1, result.stderr
    assert "error: job job_" in result.stderr and "line 1" not in result.stderr


def test_run_generate_with_a_system_message_answers_each_prompt_as_a_chat(
    data_dir: Path, tmp_path: Path
) -> None:
    """Given one prompt and a system message, on the packaged Gemma 270M (a base model:
    no chat template of its own)
    When `stoker run generate --prompt ... --system ...` runs
    Then result.json is a chat.completion, answered through the fallback transcript
    (tests/unit/test_generate_prompts.py shows what it holds), and the job keeps the
    system message and the sampling options given."""
    out = tmp_path / "out"
    result = stoker(
        "run", "generate", "--prompt", "Name a colour.", "--system", "Answer in one word.",
        "--max-tokens", "4", "--seed", "1", "--repeat-penalty", "1.1", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads((out / "result.json").read_text())
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    (line,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert line["chat_template"] == "fallback"
    with Stoker(load_settings(data_dir=data_dir)) as client:
        [job] = client.jobs()
    assert job.params["system"] == "Answer in one word."
    assert job.params["sampling"]["repeat_penalty"] == 1.1


def test_run_generate_reads_a_txt_file_as_a_prompt_per_line(data_dir: Path, tmp_path: Path) -> None:
    """Given a .txt prompt file: two prompts, a blank line, and a line that looks like
    JSON (in a .txt file it is a prompt like any other)
    When `stoker run generate --prompts prompts.txt` runs it
    Then each non-blank line is a prompt, answered in order, and none failed."""
    prompts = 'Once upon a time\n\n{"prompt": oops}\n  The sea  \n'
    result, out = run_tiny(tmp_path / "prompts.txt", prompts, data_dir)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    assert all("text" in x and "error" not in x for x in lines)
    assert not (out / "errors.jsonl").exists()
    # And the job's input is the JSONL the .txt stands for, each line its own prompt
    with Stoker(load_settings(data_dir=data_dir)) as client:
        [job] = client.jobs()
        [key] = job.inputs
        stored = client.storage.get_bytes(key).decode().splitlines()
    assert [json.loads(x)["prompt"] for x in stored if x] == [
        "Once upon a time", '{"prompt": oops}', "The sea"
    ]  # fmt: skip


def run_tiny(
    prompts: Path, text: str, data_dir: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`stoker run generate --prompts` of ``text`` written to ``prompts``, on a tiny
    random model, 4 tokens a prompt; the run and its --out folder."""
    prompts.write_text(text)
    model = write_tiny_llama(prompts.parent / "tiny.gguf")
    out = prompts.parent / "out"
    result = stoker(
        "run", "generate", "--model", str(model), "--prompts", str(prompts),
        "--max-tokens", "4", "--out", str(out), data_dir=data_dir,
    )  # fmt: skip
    return result, out
