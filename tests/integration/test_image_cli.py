"""`stoker run image` and `stoker submit image` as a user types them, on the embedded
default, with a pipeline folder as --model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.config import load_settings
from tests.diffusers_models import TinyPipelines, tiny_pipelines
from tests.integration.test_cli import stoker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


def test_run_image_takes_a_pipeline_folder(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    # When `stoker run image` is given the folder itself and two images
    out = tmp_path / "out"
    result = stoker(
        "run", "image", "--prompt", "a lighthouse at dusk", "--model", str(tiny.image),
        "--steps", "2", "--seed", "7", "--count", "2", "--format", "webp", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip
    # Then both images and the manifest are written, named after the folder's model
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "image-00.webp",
        "image-01.webp",
        "manifest.json",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "tiny-sd"
    assert [o["meta"]["seed"] for o in manifest["outputs"]] == [7, 8]
    # And loading printed nothing the user cannot act on (accelerate is installed;
    # the image processors' PIL fallback goes unsaid)
    assert "accelerate" not in result.stderr and "torchvision" not in result.stderr


def test_submit_records_a_pipeline_folder_by_its_absolute_path(
    tiny: TinyPipelines, data_dir: Path
) -> None:
    # When `stoker submit image` is given a pipeline folder by a relative path
    relative = os.path.relpath(tiny.image, tiny.image.parent.parent)
    result = stoker(
        "submit", "image", "--prompt", "x", "--model", relative,
        data_dir=data_dir, cwd=tiny.image.parent.parent,
    )  # fmt: skip
    # Then the job is queued with the folder's absolute path (workers load it from there)
    assert result.returncode == 0, result.stderr
    with Stoker(load_settings(data_dir=data_dir)) as client:
        record = client.status(result.stdout.strip())
    assert record.model == str(tiny.image.resolve())
