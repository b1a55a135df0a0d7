"""`stoker run image` and `stoker submit image` as a user types them, on the embedded
default, with a pipeline folder as --model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_submit_refuses_a_folder_and_says_how_to_name_it(
    tiny: TinyPipelines, data_dir: Path
) -> None:
    result = stoker(
        "submit", "image", "--prompt", "x", "--model", str(tiny.image), data_dir=data_dir
    )
    assert result.returncode == 2
    assert '[models.tiny-sd] backend = "diffusers"' in result.stderr
    assert "stoker run" in result.stderr
