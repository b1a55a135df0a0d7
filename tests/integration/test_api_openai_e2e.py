"""OpenAI's embeddings, completions, chat and images through the HTTP API, driven by the
official ``openai`` client: `stoker api` under uvicorn on loopback, one real `stoker
worker` for embed, generate and image, Redis and an S3-protocol server, tiny real models
(the packaged MiniLM, a random GGUF llama, a random diffusers pipeline)."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stoker.client import Stoker
from stoker.queues.records import JobRecord
from tests.api_server import api_server, make_key
from tests.deployment import Deployment
from tests.diffusers_models import build_text_to_image
from tests.gguf_models import write_tiny_llama
from tests.pictures import half_mask, picture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["small", "large"]}},
    "required": ["ok", "size"],
}


@dataclass
class Api:
    url: str
    key: str
    deployment: Deployment

    def client(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0)

    def stoker(self) -> Stoker:
        return Stoker(self.deployment.settings())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """STOKER_MODELS__… variables naming a tiny GGUF ("tiny") and pipeline ("tinysd")."""
    base = tmp_path_factory.mktemp("openai-models")
    gguf = write_tiny_llama(base / "tiny.gguf")
    sd = build_text_to_image(base / "tiny-sd")
    return {
        "STOKER_MODELS__TINY__BACKEND": "llama",
        "STOKER_MODELS__TINY__PATH": str(gguf),
        "STOKER_MODELS__TINYSD__BACKEND": "diffusers",
        "STOKER_MODELS__TINYSD__PATH": str(sd),
    }


@pytest.fixture()
def api(deployment: Deployment, models: dict[str, str]) -> Iterator[Api]:
    """The API over the deployment with one worker serving embed, generate and image."""
    deployment.env.update(models)
    deployment.env["STOKER_API__POLL_S"] = "0.2"
    deployment.start_worker("embed,generate,image")
    key = make_key(deployment.settings(), "dev")
    with api_server(deployment.env, deployment.workdir) as url:
        yield Api(url, key, deployment)


def output(client: Stoker, record: JobRecord, name: str) -> bytes:
    (ref,) = [o for o in record.outputs if o.name == name]
    return client.storage.get_bytes(ref.key)


def embed_directly(api: Api, texts: list[str], **options: Any) -> list[list[float]]:
    """The vectors of an embed job submitted with the Python client, not over HTTP."""
    with api.stoker() as client:
        job = client.submit("embed", {"texts": texts, **options})
        done = client.wait(job.id, timeout_s=120)
        lines = output(client, done, "embeddings.jsonl").decode().splitlines()
    return [json.loads(line)["embedding"] for line in lines]


def float32s(vectors: list[list[float]]) -> list[bytes]:
    """Each vector's float32 bytes: what two decimal spellings of one vector share."""
    import numpy as np

    return [np.asarray(v, dtype=np.float32).tobytes() for v in vectors]


def test_embeddings_of_a_string_and_a_list_equal_the_embed_jobs_vectors(api: Api) -> None:
    client = api.client()
    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday."]
    # When the OpenAI client asks for embeddings (it asks for base64 by default)
    one = client.embeddings.create(model="text-embedding-3-small", input=texts[0])
    many = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts, encoding_format="float"
    )
    # Then they are OpenAI's list of embeddings, equal to what an embed job of the same
    # texts makes (the same chunk, so the same float32s bit for bit, however each side
    # writes them in decimal; one text alone is encoded without padding, so only to
    # float32 precision)
    expected = embed_directly(api, texts)
    assert one.object == "list" and len(one.data) == 1
    assert one.data[0].embedding == pytest.approx(expected[0], abs=1e-6)
    assert [d.index for d in many.data] == [0, 1]
    assert float32s([d.embedding for d in many.data]) == float32s(expected)
    assert float32s([d.embedding for d in floats.data]) == float32s(expected)
    assert len(expected[0]) == 384 and many.model == "all-MiniLM-L6-v2"
    # And stoker's prompt (a retrieval model's "query: ") goes through as extra_body: the
    # vectors are the embed job's with that prompt, not the plain ones, and it is read
    queried = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts, extra_body={"prompt": "query: "}
    )
    with_prompt = embed_directly(api, texts, prompt="query: ")
    assert float32s([d.embedding for d in queried.data]) == float32s(with_prompt)
    assert float32s(with_prompt) != float32s(expected)
    assert queried.usage.prompt_tokens > many.usage.prompt_tokens
    # And usage counts the tokens the model read: [CLS] the cat sat on the mat . [SEP]
    assert (one.usage.prompt_tokens, one.usage.total_tokens) == (9, 9)
    assert many.usage.prompt_tokens == floats.usage.prompt_tokens > 9
    # And /metrics reports the worker's model loads from its heartbeat (every 2 s)
    pattern = r'stoker_worker_model_loads\{device="cpu",worker="[^"]+"\} (\d+)'
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{api.url}/metrics").text
        loads = re.search(pattern, text)
        if (loads and int(loads.group(1)) >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert loads is not None and int(loads.group(1)) >= 1, text
    assert "stoker_worker_memory_used_bytes{" in text


def test_completions_and_chat_on_a_tiny_gguf_model(api: Api) -> None:
    client = api.client()
    sampling = {"max_tokens": 6, "temperature": 0.7, "stop": ["zz"], "seed": 11}
    # When a completion is asked with OpenAI's sampling fields
    completion = client.completions.create(model="tiny", prompt="Once upon a time", **sampling)
    # Then it is a text_completion equal to a generate job with the same fields
    assert completion.object == "text_completion" and completion.model == "tiny"
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    with api.stoker() as stoker:
        direct = stoker.wait(
            stoker.submit(
                "generate", {"model": "tiny", "prompt": "Once upon a time", **sampling}
            ).id,
            timeout_s=60,
        )
        (line,) = [json.loads(x) for x in output(stoker, direct, "results.jsonl").splitlines()]
    assert choice.text == line["text"]

    # When a chat completion asks for JSON by a json_schema response_format
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Is it small?"}],
        max_tokens=64,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
    )
    # Then the reply is a chat.completion whose content is JSON of that schema
    assert chat.object == "chat.completion"
    message = chat.choices[0].message
    assert message.role == "assistant"
    reply = json.loads(message.content or "")
    assert isinstance(reply["ok"], bool) and reply["size"] in ("small", "large")


def test_a_list_of_prompts_and_openai_fields_stoker_cannot_honour(api: Api) -> None:
    import openai

    client = api.client()
    greedy = {"model": "tiny", "max_tokens": 6, "temperature": 0.0}
    prompts = ["Once upon a time", "The lighthouse", "In the morning"]
    # When a completion is asked for a list of prompts
    many = client.completions.create(prompt=prompts, **greedy)
    # Then each prompt has its choice, in order, equal to asking for it alone
    alone = [client.completions.create(prompt=p, **greedy) for p in prompts]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [a.choices[0].text for a in alone]
    # And its usage is theirs summed
    assert many.usage is not None
    assert many.usage.total_tokens == sum(a.usage.total_tokens for a in alone if a.usage)
    # And OpenAI's penalties reach llama.cpp: they change the greedy text, and the same
    # job through the Python client with the same penalties gives the same text
    longer = {**greedy, "max_tokens": 32}
    penalties = {"frequency_penalty": 2.0, "presence_penalty": 2.0}
    plain = client.completions.create(prompt=prompts[0], **longer).choices[0].text
    penalised = client.completions.create(prompt=prompts[0], **longer, **penalties)
    with api.stoker() as stoker:
        direct = stoker.wait(
            stoker.submit("generate", {"prompt": prompts[0], **longer, **penalties}).id,
            timeout_s=60,
        )
        (line,) = [json.loads(x) for x in output(stoker, direct, "results.jsonl").splitlines()]
    assert penalised.choices[0].text == line["text"] != plain

    # When a request asks for what stoker cannot give (tools, log-probabilities, a
    # misspelt field), Then it is refused with a 400 naming the field, not answered
    # as if the field had been left out
    messages = [{"role": "user", "content": "Hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for extra, field in (
        ({"tools": [tool]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"extra_body": {"temprature": 0.5}}, "temprature"),
    ):
        with pytest.raises(openai.BadRequestError, match=f"body.{field}") as refused:
            client.chat.completions.create(messages=messages, **greedy, **extra)  # type: ignore[arg-type]
        assert refused.value.param == field  # the SDK's own field for it


def test_models_lists_the_names_a_request_may_use_and_no_paths(api: Api) -> None:
    import openai

    client = api.client()
    # When an OpenAI client lists the models
    listed = {m.id: m for m in client.models.list()}
    # Then the configured and packaged models are there, each with the jobs that use it
    # and no file path
    # (gemma-3-270m is packaged in pieces, joined on first use: listed before that too)
    assert {"tiny", "tinysd", "all-MiniLM-L6-v2", "gemma-3-270m"} <= set(listed)
    assert listed["tiny"].capabilities == ["generate"]  # type: ignore[attr-defined]
    assert listed["tinysd"].capabilities == ["image"]  # type: ignore[attr-defined]
    assert listed["all-MiniLM-L6-v2"].capabilities == ["embed"]  # type: ignore[attr-defined]
    assert all(m.object == "model" and m.owned_by == "stoker" for m in listed.values())
    raw = httpx.get(f"{api.url}/v1/models", headers={"Authorization": f"Bearer {api.key}"})
    assert api.deployment.env["STOKER_MODELS__TINY__PATH"] not in raw.text
    # And one is read by id, an unknown id is a 404
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="no model with id 'nope'"):
        client.models.retrieve("nope")
    # And a listed name is one a request can use
    reply = client.completions.create(model="tiny", prompt="Once", max_tokens=2)
    assert reply.model == "tiny"


def test_images_as_urls_and_as_base64(api: Api) -> None:
    from PIL import Image

    client = api.client()
    asked: dict[str, Any] = {
        "model": "tinysd",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "64x64",
        "extra_body": {"steps": 2, "seed": 5},
    }
    # When two images are asked for as URLs, then the same as base64
    by_url = client.images.generate(response_format="url", **asked)
    by_b64 = client.images.generate(response_format="b64_json", **asked)
    # Then both answers hold the same two 64×64 PNGs (same seeds)
    assert len(by_url.data or []) == 2 and len(by_b64.data or []) == 2
    fetched = [httpx.get(str(d.url)).content for d in by_url.data or []]
    decoded = [base64.b64decode(str(d.b64_json)) for d in by_b64.data or []]
    assert fetched == decoded and fetched[0] != fetched[1]
    for data in decoded:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("PNG", (64, 64))


def test_an_image_edit_redraws_the_uploaded_picture_or_its_masked_part_leaving_no_upload(
    api: Api, tmp_path: Path
) -> None:
    import openai
    from PIL import Image

    start = picture(tmp_path / "sketch.png", (128, 64))
    client = api.client()
    # When the official client asks for an edit of the picture, stoker's fields as extra_body
    with start.open("rb") as opened:
        edited = client.images.edit(
            model="tinysd",
            image=opened,
            prompt="a lighthouse at dusk",
            n=2,
            response_format="b64_json",
            extra_body={"steps": 4, "seed": 5, "strength": 0.5},
        )
    # Then two images in the picture's proportions come back, each naming it
    decoded = [base64.b64decode(str(d.b64_json)) for d in edited.data or []]
    assert len(decoded) == 2 and decoded[0] != decoded[1]
    for data in decoded:
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (88, 64)
            assert image.text["start_image"] == "sketch.png"  # type: ignore[attr-defined]
            assert image.text["strength"] == "0.5"  # type: ignore[attr-defined]
    # And the upload is gone (the job keeps its own copy, by content)
    assert list(client.files.list()) == []
    # When a mask whose right half is transparent comes too (OpenAI's way to mark it)
    mask = half_mask(tmp_path / "mask.png", (128, 64), transparent=True)
    with start.open("rb") as opened, mask.open("rb") as marked:
        inpainted = client.images.edit(
            model="tinysd", image=opened, mask=marked, prompt="a red sofa",
            response_format="b64_json", extra_body={"steps": 4, "seed": 5},
        )  # fmt: skip
    # Then the image was inpainted from both, and neither upload is left behind
    [only] = inpainted.data or []
    with Image.open(io.BytesIO(base64.b64decode(str(only.b64_json)))) as image:
        assert image.text["mask"] == "mask.png"  # type: ignore[attr-defined]
        assert image.text["strength"] == "1.0"  # type: ignore[attr-defined]
    assert list(client.files.list()) == []
    # And a mask of another size, or a file that is not a picture, is a bad request
    small_mask = half_mask(tmp_path / "small.png", (64, 64), transparent=True)
    with (
        start.open("rb") as opened,
        small_mask.open("rb") as small,
        pytest.raises(openai.BadRequestError, match=r"give a mask of the image's size"),
    ):
        client.images.edit(model="tinysd", image=opened, mask=small, prompt="x")
    with pytest.raises(openai.BadRequestError, match="could not be read as an image"):
        client.images.edit(model="tinysd", image=("notes.png", b"not a picture"), prompt="x")


def test_a_batch_of_embeddings_lines_with_one_malformed_line(api: Api, tmp_path: Path) -> None:
    client = api.client()
    texts = ["first line of the batch", "second line of the batch"]
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
        for i, body in enumerate(
            [
                {"model": "text-embedding-3-small", "input": texts[0]},
                {"model": "text-embedding-3-small", "input": [texts[1]]},
                {"model": "text-embedding-3-small", "input": 42},
            ]
        )
    ]
    # Given an OpenAI batch file of three embeddings requests, the last malformed
    path = tmp_path / "embeddings.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with path.open("rb") as f:
        upload = client.files.create(file=f, purpose="batch")
    # When the OpenAI client runs it as a batch
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_until_ended(client, batch.id)
    # Then two lines succeeded with the embed job's vectors and one is in the error file
    assert done.status == "completed", done
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    vectors = {line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in out}
    assert vectors == dict(zip(["e0", "e1"], embed_directly(api, texts), strict=True))
    assert all(line["response"]["body"]["usage"]["prompt_tokens"] > 2 for line in out)
    (error,) = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "e2" and error["response"]["status_code"] == 400
    assert "body.input" in error["response"]["body"]["error"]["message"]


def wait_until_ended(client: Any, batch_id: str, timeout_s: float = 120) -> Any:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.3)
    raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout_s}s")
