"""`stoker run generate` / `stoker submit generate` on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_submit_generate_refuses_a_path_and_says_how_to_configure_it(
    data_dir: Path, tmp_path: Path
) -> None:
    """Given a .gguf path that no worker's catalog knows
    Then `stoker submit generate` exits 2 saying to add it under [models.NAME]."""
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    result = stoker("submit", "generate", "--model", str(model), "--prompt", "x", data_dir=data_dir)
    assert result.returncode == 2
    assert "[models.NAME]" in result.stderr and "stoker run generate" in result.stderr
