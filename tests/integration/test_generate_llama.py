"""The llama loader, one prompt item and the model manager, on tiny random GGUF models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stoker.config import ModelEntry, Settings
from stoker.errors import ModelLoadError
from stoker.jobs.base import PrepareContext
from stoker.jobs.completions import run_item
from stoker.jobs.generate import GenerateCapability
from stoker.jobs.prompts import PromptItem, Sampling
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.loaders.llama import LlamaLoader
from stoker.workers.manager import ModelManager
from tests.gguf_models import CHAT_TEMPLATE, write_not_gguf, write_tiny_llama, write_truncated

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    tiny = write_tiny_llama(root / "tiny.gguf")
    return {
        "tiny": tiny,
        "chat": write_tiny_llama(root / "chat.gguf", chat_template=CHAT_TEMPLATE),
        "strict": write_tiny_llama(root / "strict.gguf", chat_template=STRICT_TEMPLATE),
        "not": write_not_gguf(root / "not.gguf"),
        "truncated": write_truncated(tiny, root / "truncated.gguf"),
    }


# Like Gemma's and Qwen 2.5's: a system turn, then user and assistant alternating
# (any other order raises); no developer role.
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|sys|>{{ m['content'] }}\n"
    "{% elif m['role'] in ('user', 'assistant') %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == (1 if messages[0]['role'] == 'system' "
    "else 0)) %}{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
    "{% endif %}{% endfor %}<|assistant|>"
)


def load(path: Path, **options: object) -> object:
    return LlamaLoader().load(ModelSpec("m", "llama", path, options=options), "cpu")


def item(sampling: Sampling, prompt: str | None = None, messages: list | None = None) -> PromptItem:
    return PromptItem(0, 1, "c", prompt, messages, sampling)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("not", r"not a GGUF file \(it starts with b'this'"),
        ("truncated", r"not within the file bounds.* \(the file is truncated\)"),
    ],
)
def test_a_bad_model_file_is_a_load_error_naming_it(
    models: dict[str, Path], name: str, reason: str
) -> None:
    """Given a file that is not GGUF, and one cut in half
    When each is loaded
    Then ModelLoadError names the file and says what is wrong with it."""
    with pytest.raises(ModelLoadError, match=reason) as caught:
        load(models[name])
    assert str(models[name]) in str(caught.value)


def test_an_unreadable_file_is_a_load_error(tmp_path: Path, models: dict[str, Path]) -> None:
    """Given a model file without read permission (or a folder without one .gguf)
    Then loading it fails with the path in the message."""
    locked = tmp_path / "locked.gguf"
    locked.write_bytes(models["tiny"].read_bytes())
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: use an empty folder instead
        locked = tmp_path / "empty-folder"
        locked.mkdir()
    with pytest.raises(ModelLoadError, match=str(locked)):
        load(locked)


def test_completion_counts_tokens_and_refuses_a_prompt_over_the_context(
    models: dict[str, Path],
) -> None:
    """Given the tiny model with a 128-token context
    When a short prompt runs, then one whose tokens + max_tokens exceed the context
    Then the first has text and usage; the second is an error line with the counts."""
    model = load(models["tiny"], n_ctx=256)
    short = run_item(model, item(Sampling(max_tokens=6, seed=1), prompt="Once upon a time"))
    assert set(short) == {"index", "custom_id", "text", "finish_reason", "usage"}
    assert short["usage"]["prompt_tokens"] > 0 and short["usage"]["completion_tokens"] > 0
    long = run_item(model, item(Sampling(max_tokens=100), prompt="the story " * 20))
    assert long["error"]["code"] == "context_length_exceeded"
    assert "max_tokens is 100" in long["error"]["message"]
    assert "over the context of 256 tokens" in long["error"]["message"]


def test_chat_uses_the_gguf_template_or_the_fallback(models: dict[str, Path]) -> None:
    """Given a model with a chat template in its metadata and one without
    When the same messages run on each
    Then each result is an assistant message saying which template was used."""
    messages = [{"role": "user", "content": "Name a colour."}]
    sampling = Sampling(max_tokens=5, seed=2)
    with_template = run_item(load(models["chat"]), item(sampling, messages=messages))
    without = run_item(load(models["tiny"]), item(sampling, messages=messages))
    assert with_template["chat_template"] == "gguf" and without["chat_template"] == "fallback"
    for result in (with_template, without):
        assert result["message"]["role"] == "assistant"
        assert isinstance(result["message"]["content"], str)


def test_a_json_schema_makes_even_random_weights_write_matching_json(
    models: dict[str, Path],
) -> None:
    """Given a schema with a boolean and an enum, both required
    When the random model generates under it
    Then the text parses as JSON with exactly those keys and allowed values."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "blue"]}},
        "required": ["ok", "colour"],
    }
    model = load(models["tiny"], n_ctx=256)
    for seed in range(3):
        result = run_item(model, item(Sampling(max_tokens=64, seed=seed, json_schema=schema), "x"))
        value = json.loads(result["text"])
        assert set(value) == {"ok", "colour"}
        assert isinstance(value["ok"], bool) and value["colour"] in ("red", "blue")


def test_json_strings_never_hold_raw_control_characters(models: dict[str, Path]) -> None:
    """Given a free-form JSON object schema (strings of any content), twenty seeds
    When the random model generates under it
    Then no reply holds a raw control character (JSON forbids them inside strings; the
    converter llama-cpp-python ships allows them: 4 of these 20 replies had one), and
    every reply that ended by itself parses."""
    model = load(models["tiny"], n_ctx=512)
    for seed in range(20):
        sampling = Sampling(max_tokens=60, seed=seed, json_schema={"type": "object"})
        result = run_item(model, item(sampling, "user: JSON\nassistant:"))
        assert not [c for c in result["text"] if ord(c) < 0x20], (seed, result["text"])
        if result["finish_reason"] == "stop":
            assert isinstance(json.loads(result["text"]), dict)


def test_an_invalid_grammar_is_an_error_line_not_a_crash(models: dict[str, Path]) -> None:
    """Given a GBNF grammar that does not parse (llama.cpp aborts when sampling with one)
    Then the item's error says so, and the model still serves a good grammar next."""
    model = load(models["tiny"])
    bad = run_item(model, item(Sampling(max_tokens=4, grammar="root ::= foo ("), prompt="x"))
    assert bad["error"]["code"] == "invalid_grammar"
    good = run_item(model, item(Sampling(max_tokens=4, grammar='root ::= "yes" | "no"'), "x"))
    assert good["text"] in ("yes", "no")


def test_jobs_with_different_n_ctx_load_twice_and_equal_ones_share(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Given one configured model and the real loader under the model manager
    When it is used with n_ctx 256, 512, then 256 again
    Then there are two loads and the third use is a hit on the first."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models={"tiny": ModelEntry(backend="llama", path=models["tiny"])},
    )
    spec = ModelCatalog(settings).get("tiny", "llama")
    manager = ModelManager(settings)
    try:
        contexts = []
        for n_ctx in (256, 512, 256):
            with manager.use(spec.with_options({"n_ctx": n_ctx}), "cpu") as model:
                contexts.append(model.n_ctx())
        (stats,) = manager.stats()
        assert contexts == [256, 512, 256]
        assert (stats.loads, stats.hits) == (2, 1)
    finally:
        manager.unload_all()


def test_a_chunk_stops_between_lines_when_the_job_is_cancelled(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Given a chunk of three prompt lines whose job is cancelled after the first line
    When the chunk runs
    Then it raises JobCancelled before the second line and writes no output."""
    from stoker.errors import JobCancelled
    from stoker.jobs.base import ChunkContext
    from stoker.jobs.generate import GenerateCapability

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(3)))
    params = {
        "mode": "prompts",
        "sampling": Sampling(max_tokens=2).model_dump(),
        "max_prompt_bytes": 1000,
    }
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    out = tmp_path / "out.jsonl"
    ctx = ChunkContext(out=out, should_stop=should_stop, inputs={"k": prompts})
    with pytest.raises(JobCancelled):
        GenerateCapability().run_chunk(
            load(models["tiny"]), params, {"inputs": ["k"], "first": 0, "count": 8}, ctx
        )
    assert len(asked) == 2 and not out.exists()


def test_a_developer_message_is_the_system_turn_of_a_template_without_that_role(
    models: dict[str, Path],
) -> None:
    """Given a model whose chat template knows system, user and assistant only
    When messages open with OpenAI's developer role
    Then the model reads it as the system turn (not dropped: the prompt is as long as
    with a system message, and longer than without)."""
    model = load(models["strict"])
    sampling = Sampling(max_tokens=2, seed=1)
    user = {"role": "user", "content": "Name a colour."}

    def prompt_tokens(messages: list[dict[str, str]]) -> int:
        result = run_item(model, item(sampling, messages=messages))
        assert "error" not in result, result
        return int(result["usage"]["prompt_tokens"])

    developer = prompt_tokens([{"role": "developer", "content": "Answer in one word."}, user])
    system = prompt_tokens([{"role": "system", "content": "Answer in one word."}, user])
    assert developer == system > prompt_tokens([user])


def test_messages_the_chat_template_refuses_fail_that_line_only(
    models: dict[str, Path],
) -> None:
    """Given a template that raises on two user turns in a row (as Gemma's does)
    When such messages run
    Then that item is an error line quoting the template, and the model still serves
    the next item."""
    model = load(models["strict"])
    sampling = Sampling(max_tokens=2, seed=1)
    twice = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Hello?"}]
    failed = run_item(model, item(sampling, messages=twice))
    assert failed["error"]["code"] == "chat_template"
    assert "line 1: the model's chat template refuses these messages" in failed["error"]["message"]
    assert "Conversation roles must alternate" in failed["error"]["message"]
    fine = run_item(model, item(sampling, messages=twice[:1]))
    assert fine["message"]["role"] == "assistant"


def test_a_system_message_is_part_of_each_chunks_identity(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """Given the same prompt with no system message, with one, and with another
    When each is prepared
    Then their chunks differ, so a chunk answered under one is never reused for
    another, and a job without one keeps the identity it had before there were any."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models={"tiny": ModelEntry(backend="llama", path=models["tiny"])},
    )
    ctx = PrepareContext(settings, ModelCatalog(settings))
    request = {"model": "tiny", "prompt": "Hi"}
    plain, terse, french = (
        GenerateCapability().prepare(request | system, ctx)
        for system in ({}, {"system": "Be terse."}, {"system": "Answer in French."})
    )
    assert "system" not in plain.chunks[0].identity and "system" not in plain.params
    assert (terse.params["system"], terse.params["mode"]) == ("Be terse.", "messages")
    identities = [json.dumps(p.chunks[0].identity, sort_keys=True) for p in (plain, terse, french)]
    assert len(set(identities)) == 3
