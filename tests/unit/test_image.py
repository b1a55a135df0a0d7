"""image: sizes, seeds, chunk plans and pipeline-folder checks, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import InvalidInput, ModelLoadError, UnknownModel
from stoker.jobs.base import PrepareContext
from stoker.jobs.image import (
    ImageCapability,
    check_side,
    pipeline_geometry,
)
from stoker.workers.catalog import ModelCatalog, ModelSpec
from stoker.workers.loaders.diffusers import check_pipeline_folder, read_model_index
from tests.diffusers_models import TinyPipelines, tiny_pipelines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


@pytest.fixture()
def ctx(tiny: TinyPipelines, tmp_path: Path) -> PrepareContext:
    settings = load_settings(data_dir=tmp_path, models=tiny.models())
    return PrepareContext(settings, ModelCatalog(settings))


def prepare(ctx: PrepareContext, **request: Any) -> Any:
    return ImageCapability().prepare({"model": "tiny_sd", "prompt": "a lighthouse", **request}, ctx)


def test_the_default_size_comes_from_the_folder_configs(tiny: TinyPipelines) -> None:
    # Given the tiny pipeline (unet sample_size 32, a VAE that halves the size once)
    spec = ModelSpec("tiny_sd", "diffusers", tiny.image)
    geo = pipeline_geometry(spec, read_model_index(tiny.image))
    # Then its default size is sample_size × VAE scale, in multiples of 8
    assert (geo.default_width, geo.default_height, geo.multiple) == (64, 64, 8)


def fake_pipeline(folder: Path, cls: str, denoiser: str, config: dict[str, Any]) -> Path:
    """The JSON files of a pipeline folder (no weights): what pipeline_geometry reads."""
    for component, data in (("vae", {"block_out_channels": [1, 2, 3, 4]}), (denoiser, config)):
        (folder / component).mkdir(parents=True)
        (folder / component / "config.json").write_text(json.dumps(data))
    index = {"_class_name": cls, denoiser: ["diffusers", "X"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(
    ("cls", "denoiser", "config", "expected"),
    [
        # the defaults and multiples diffusers' own pipelines use for these shapes
        ("StableDiffusionPipeline", "unet", {"sample_size": 64}, (512, 512, 8)),
        ("StableDiffusion3Pipeline", "transformer", {"sample_size": 128, "patch_size": 2},
         (1024, 1024, 16)),
        ("PixArtAlphaPipeline", "transformer", {"sample_size": 128, "patch_size": 2},
         (1024, 1024, 16)),
        ("FluxPipeline", "transformer", {"patch_size": 1, "in_channels": 64}, (1024, 1024, 16)),
    ],
)  # fmt: skip
def test_transformer_pipelines_default_to_sample_size_times_the_vae_scale(
    tmp_path: Path, cls: str, denoiser: str, config: dict[str, Any], expected: tuple[int, ...]
) -> None:
    folder = fake_pipeline(tmp_path / "p", cls, denoiser, config)
    spec = ModelSpec("p", "diffusers", folder)
    geo = pipeline_geometry(spec, read_model_index(folder))
    assert (geo.default_width, geo.default_height, geo.multiple) == expected


@pytest.mark.parametrize(
    ("value", "nearest"), [(100, 104), (70, 72), (4000, 2048), (8, 64), (65, 64)]
)
def test_a_bad_side_names_the_nearest_valid_one(value: int, nearest: int) -> None:
    with pytest.raises(InvalidInput, match=rf"width {value} .*nearest valid width is {nearest}\."):
        check_side("width", value, 8)


def test_valid_sides_pass(ctx: PrepareContext) -> None:
    assert check_side("height", 64, 8) == 64
    assert check_side("height", 2048, 64) == 2048


def test_count_fans_out_one_chunk_per_image_with_consecutive_seeds(ctx: PrepareContext) -> None:
    # When 3 images are asked for with seed 7
    prepared = prepare(ctx, count=3, seed=7, steps=4)
    # Then there are 3 chunks, seeds 7, 8, 9, each with its own identity
    assert [c.payload["seed"] for c in prepared.chunks] == [7, 8, 9]
    assert len({str(c.identity) for c in prepared.chunks}) == 3
    assert prepared.params["width"] == prepared.params["height"] == 64
    assert prepared.model == "tiny_sd"


def test_an_unset_seed_is_chosen_and_recorded(ctx: PrepareContext) -> None:
    first, second = prepare(ctx), prepare(ctx)
    assert isinstance(first.params["seed"], int)
    assert first.chunks[0].payload["seed"] == first.params["seed"]
    assert first.params["seed"] != second.params["seed"]  # 1 in 2**32 to collide


def test_the_same_request_plans_the_same_chunk_keys(ctx: PrepareContext) -> None:
    a, b = prepare(ctx, seed=1), prepare(ctx, seed=1)
    c = prepare(ctx, seed=1, prompt="a lighthouse at dusk")
    assert a.chunks[0].identity == b.chunks[0].identity != c.chunks[0].identity


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "x" * 2000}, "over the 1,000-byte limit"),
        ({"width": 100}, "nearest valid width is 104"),
        ({"count": 17}, "invalid count 17: "),
        ({"steps": 0}, "invalid steps"),
        ({"format": "gif"}, "invalid format"),
        ({"model": None}, "name a diffusers model.*tiny_sd"),
        ({"model": "tiny_shap_e"}, "ShapEPipeline.*stoker submit mesh"),
    ],
)
def test_bad_requests_are_refused_with_a_sentence(
    tiny: TinyPipelines, tmp_path: Path, request_: dict[str, Any], message: str
) -> None:
    settings = load_settings(data_dir=tmp_path, models=tiny.models(), max_text_bytes=1000)
    with pytest.raises(InvalidInput, match=message):
        prepare(PrepareContext(settings, ModelCatalog(settings)), **request_)


def test_an_unknown_model_lists_the_diffusers_models(ctx: PrepareContext) -> None:
    with pytest.raises(UnknownModel, match=r"unknown model 'nope'.*tiny_sd"):
        prepare(ctx, model="nope")


def test_a_whole_folder_passes_the_check(tiny: TinyPipelines) -> None:
    assert "unet" in check_pipeline_folder(tiny.image)


def test_a_missing_component_folder_is_named(tiny: TinyPipelines) -> None:
    with pytest.raises(ModelLoadError) as caught:
        check_pipeline_folder(tiny.image_without_unet)
    message = str(caught.value)
    assert f"{tiny.image_without_unet / 'unet'} is missing" in message
    assert "lists unet in model_index.json; copy the whole diffusers folder" in message


def test_a_component_without_weights_is_named(tiny: TinyPipelines) -> None:
    with pytest.raises(ModelLoadError, match=r"unet is missing \(.*no weights\)"):
        check_pipeline_folder(tiny.image_without_unet_weights)


def test_a_folder_without_model_index_is_not_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        check_pipeline_folder(tmp_path)
