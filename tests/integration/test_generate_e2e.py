"""generate end to end: prompt files, chat, JSON schemas and broken model files through a
real worker process on Redis + an S3-protocol server, with tiny random GGUF models and
the packaged Gemma 3 270M."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord, JobState
from tests.deployment import Deployment
from tests.gguf_models import write_not_gguf, write_tiny_llama, write_truncated

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["small", "large"]}},
    "required": ["ok", "size"],
}


def configure(deployment: Deployment, **paths: Path) -> None:
    for name, path in paths.items():
        deployment.env[f"STOKER_MODELS__{name.upper()}__BACKEND"] = "llama"
        deployment.env[f"STOKER_MODELS__{name.upper()}__PATH"] = str(path)


def output(client: Stoker, record: JobRecord, name: str) -> bytes:
    (ref,) = [o for o in record.outputs if o.name == name]
    return client.storage.get_bytes(ref.key)


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def prompt_file() -> str:
    lines: list[Any] = [{"custom_id": f"p{i}", "prompt": f"Once upon a time {i}"} for i in range(9)]
    lines[3] = "{this line is not JSON"
    lines[5] = {"custom_id": "chat", "messages": [{"role": "user", "content": "Hi"}]}
    lines[7] = {"custom_id": "json", "prompt": "Answer:", "json_schema": SCHEMA, "max_tokens": 64}
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"


def test_a_prompt_file_runs_line_by_line_and_bad_models_fail_only_their_jobs(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given one worker and models: a good tiny one, a text file named .gguf, a truncated GGUF
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    configure(
        deployment,
        tiny=tiny,
        notgguf=write_not_gguf(tmp_path / "notes.gguf"),
        cut=write_truncated(tiny, tmp_path / "cut.gguf"),
    )
    deployment.start_worker("generate")
    sampling = {"model": "tiny", "max_tokens": 8, "seed": 1}
    with Stoker(deployment.settings()) as client:
        # When a 9-line prompt file with one malformed line is submitted
        batch = client.wait(
            client.submit("generate", {"prompts": prompt_file(), **sampling}).id, timeout_s=120
        )
        results = jsonl(output(client, batch, "results.jsonl"))
        errors = jsonl(output(client, batch, "errors.jsonl"))
        # And jobs on the two broken files, then a good single prompt, on the same worker
        broken = [
            client.wait(
                client.submit("generate", {**sampling, "prompt": "a", "model": m}).id, timeout_s=60
            )
            for m in ("notgguf", "cut")
        ]
        single = client.wait(
            client.submit("generate", {**sampling, "prompt": "Hi"}).id, timeout_s=60
        )
        result = json.loads(output(client, single, "result.json"))

    # Then every line has a result in order, the malformed one as an error line
    assert batch.state is JobState.SUCCEEDED, batch.error
    assert batch.progress.total == 2  # 9 lines in chunks of 8
    assert [r["index"] for r in results] == list(range(9))
    expected_ids = ["p0", "p1", "p2", None, "p4", "chat", "p6", "json", "p8"]
    assert [r["custom_id"] for r in results] == expected_ids
    assert (
        results[3]["error"]["code"] == "invalid_line" and "line 4" in errors[0]["error"]["message"]
    )
    assert errors == [results[3]]
    assert all(
        "text" in results[i] and results[i]["usage"]["completion_tokens"] > 0
        for i in (0, 1, 2, 4, 6, 8)
    )
    assert results[5]["chat_template"] == "fallback"
    assert results[5]["message"]["role"] == "assistant"
    answer = json.loads(results[7]["text"])
    assert set(answer) == {"ok", "size"} and answer["size"] in ("small", "large")
    # The broken files failed their jobs with the file named, and the worker served on
    for record, path, reason in zip(
        broken, ("notes.gguf", "cut.gguf"), ("not a GGUF file", "truncated"), strict=True
    ):
        assert record.state is JobState.FAILED and record.error is not None
        assert str(tmp_path / path) in record.error.message and reason in record.error.message
    assert single.state is JobState.SUCCEEDED
    assert result["object"] == "text_completion" and result["model"] == "tiny"
    assert set(result) == {"id", "object", "created", "model", "choices", "usage"}
    assert [o.name for o in single.outputs][:2] == ["results.jsonl", "result.json"]


def test_a_job_whose_input_left_storage_fails_saying_so_and_the_next_runs(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given two queued jobs, the first one's prompt file deleted from storage (as a
    # sweep in the instant of its submission would), and then a worker
    configure(deployment, tiny=write_tiny_llama(tmp_path / "tiny.gguf"))
    sampling = {"model": "tiny", "max_tokens": 4, "seed": 1}
    with Stoker(deployment.settings()) as client:
        lost = client.submit("generate", {**sampling, "prompt": "Lost"})
        (key,) = lost.inputs
        client.storage.delete(key)
        kept = client.submit("generate", {**sampling, "prompt": "Kept"})
        deployment.start_worker("generate")

        # When both are waited for
        lost, kept = (client.wait(j.id, timeout_s=60) for j in (lost, kept))

    # Then the first failed naming its input and what to do; the second succeeded
    assert lost.state is JobState.FAILED and lost.error is not None
    assert key in lost.error.message and "submit the job again" in lost.error.message
    assert kept.state is JobState.SUCCEEDED, kept.error


def test_bad_requests_are_refused_at_submission(deployment: Deployment, tmp_path: Path) -> None:
    """Given bad generate requests (empty or all-malformed files, two inputs, a bad schema,
    a 1 MB prompt, a message without content)
    Then each is InvalidInput naming the problem, and nothing is recorded."""
    configure(deployment, tiny=write_tiny_llama(tmp_path / "tiny.gguf"))
    with Stoker(deployment.settings()) as client:
        cases = [
            ({"prompts": "\n\n"}, "prompt file is empty"),
            (
                {"prompts": "{x\n[]\n"},
                r"no line of the prompt file can run \(2 malformed\): line 1",
            ),
            ({"prompt": "a", "prompts": '{"prompt": "b"}'}, "exactly one of prompt, messages"),
            ({"prompt": "a", "json_schema": {"type": "strin"}}, "not a valid JSON schema"),
            ({"prompt": "x" * 1_000_001}, "over the 1000000-byte limit"),
            ({"messages": [{"role": "user"}]}, "content"),
        ]
        for request, message in cases:
            with pytest.raises(InvalidInput, match=message):
                client.submit("generate", {"model": "tiny", **request})
        assert client.jobs() == []


def test_the_packaged_gemma_completes_and_chats(deployment: Deployment) -> None:
    # Given a worker with the packaged Gemma 3 270M (a base model: no chat template)
    deployment.start_worker("generate")
    with Stoker(deployment.settings()) as client:
        # When it gets a prompt and a chat, a few tokens each
        options = {"max_tokens": 6, "seed": 7, "temperature": 0.0}
        text = client.wait(
            client.submit("generate", {"prompt": "The sky is", **options}).id, timeout_s=120
        )
        messages = [{"role": "user", "content": "Say hello."}]
        chat = client.wait(
            client.submit("generate", {"messages": messages, **options}).id, timeout_s=120
        )
        text_body = json.loads(output(client, text, "result.json"))
        chat_body = json.loads(output(client, chat, "result.json"))
        chat_line = jsonl(output(client, chat, "results.jsonl"))[0]

    # Then both succeed in OpenAI's shapes, with real words from the real model
    assert text.state is JobState.SUCCEEDED and chat.state is JobState.SUCCEEDED
    assert text_body["model"] == "gemma-3-270m" and text_body["object"] == "text_completion"
    assert any(c.isalpha() for c in text_body["choices"][0]["text"])
    assert 0 < text_body["usage"]["completion_tokens"] <= 6
    assert chat_body["object"] == "chat.completion"
    assert chat_body["choices"][0]["message"]["role"] == "assistant"
    assert chat_line["chat_template"] == "fallback"
