"""The HTTP API on the embedded default (SQLite broker and records, outputs in a local
folder) with an in-process worker and the tiny diffusers pipeline: outputs reach a
client through the API, since the folder's ``file://`` URLs only work on its machine."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stoker.api.app import create_app
from stoker.config import load_settings
from stoker.workers.inprocess import inprocess_worker
from tests.api_server import auth, make_key
from tests.diffusers_models import IGNORE_HEUN_WARNING, TinyPipelines, tiny_pipelines

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings(IGNORE_HEUN_WARNING),
    # kombu's SQLAlchemy transport (the embedded broker) uses a loader SQLAlchemy 2.1
    # deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


def test_openai_image_urls_on_local_storage_are_the_apis_own(
    tiny: TinyPipelines, tmp_path: Path
) -> None:
    # Given the API on the embedded default, and a worker in this process
    settings = load_settings(data_dir=tmp_path / "data", models=tiny.models())
    assert settings.storage_url.startswith("file:")
    key = auth(make_key(settings, "alice"))
    other = auth(make_key(settings, "bob"))
    with (
        TestClient(create_app(settings, deliver_webhooks=False)) as client,
        inprocess_worker(settings, ["image"], "cpu"),
    ):
        # When images are asked for by URL, as OpenAI's client does by default
        body = {"model": "tiny_sd", "prompt": "a lighthouse", "n": 2, "size": "64x64",
                "steps": 2, "seed": 3}  # fmt: skip
        answer = client.post("/v1/images/generations", json=body, headers=key)
        assert answer.status_code == 200, answer.text
        urls = [d["url"] for d in answer.json()["data"]]
        # Then each URL is this API's, and gives the PNG to the key that asked
        assert all(u.startswith("http://testserver/v1/jobs/") for u in urls), urls
        assert urls[0].endswith("/outputs/image-00.png")
        for url in urls:
            got = client.get(url, headers=key)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(got.content)) as image:
                assert image.size == (64, 64)
            # and to no one else
            assert client.get(url, headers=other).status_code == 404
            assert client.get(url).status_code == 401


def test_a_batchs_output_file_on_local_storage_points_at_the_apis_own_urls(
    tiny: TinyPipelines, tmp_path: Path
) -> None:
    # Given the API on the embedded default, a worker in this process, and an OpenAI
    # batch file of two image requests (the second by b64_json, which holds no URL)
    settings = load_settings(data_dir=tmp_path / "data", models=tiny.models())
    key = auth(make_key(settings, "alice"))
    bodies = [
        {"model": "tiny_sd", "prompt": "a lighthouse", "n": 2, "size": "64x64", "seed": 1},
        {"model": "tiny_sd", "prompt": "a harbour", "size": "64x64",
         "response_format": "b64_json"},
    ]  # fmt: skip
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/images/generations", "body": b}
        for i, b in enumerate(bodies)
    ]
    batch_file = "".join(json.dumps(line) + "\n" for line in lines)
    with (
        TestClient(create_app(settings, deliver_webhooks=False)) as client,
        inprocess_worker(settings, ["image"], "cpu"),
    ):
        upload = client.post(
            "/v1/files",
            files={"file": ("images.jsonl", batch_file)},
            data={"purpose": "batch"},
            headers=key,
        ).json()
        # When it runs as a batch and its output file is read
        body = {"input_file_id": upload["id"], "endpoint": "/v1/images/generations"}
        batch = client.post("/v1/batches", json=body, headers=key).json()
        deadline = time.monotonic() + 120
        while batch["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            batch = client.get(f"/v1/batches/{batch['id']}", headers=key).json()
        assert batch["status"] == "completed", batch
        content = client.get(f"/v1/files/{batch['output_file_id']}/content", headers=key)
        out = {x["custom_id"]: x for x in map(json.loads, content.text.splitlines())}
        # Then the URL line points at this API's URLs, each giving its PNG to the key
        urls = [d["url"] for d in out["r0"]["response"]["body"]["data"]]
        assert len(urls) == 2 and all(u.startswith("http://testserver/v1/jobs/") for u in urls)
        for url in urls:
            got = client.get(url, headers=key)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        # and the b64_json line still holds its image
        (image,) = out["r1"]["response"]["body"]["data"]
        assert "url" not in image and len(image["b64_json"]) > 100
