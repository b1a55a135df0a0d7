"""image and mesh on tiny random diffusers pipelines, without queues: the loader,
seeds, metadata, formats and cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import InvalidInput, JobCancelled, ModelLoadError
from stoker.jobs.base import AssembleContext, ChunkContext, PrepareContext
from stoker.jobs.image import EXIF_DESCRIPTION, ImageCapability
from stoker.jobs.mesh import MeshCapability
from stoker.jobs.start_image import task_pipeline
from stoker.storage.keys import file_sha256
from stoker.workers.catalog import ModelCatalog
from stoker.workers.loaders.diffusers import DiffusersLoader
from tests.diffusers_models import IGNORE_HEUN_WARNING, TinyPipelines, tiny_pipelines
from tests.pictures import half_mask, picture

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings(IGNORE_HEUN_WARNING)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


@pytest.fixture(scope="module")
def catalog(tiny: TinyPipelines, tmp_path_factory: pytest.TempPathFactory) -> ModelCatalog:
    settings = load_settings(data_dir=tmp_path_factory.mktemp("data"), models=tiny.models())
    return ModelCatalog(settings)


@pytest.fixture(scope="module")
def sd(catalog: ModelCatalog) -> Any:
    return DiffusersLoader().load(catalog.get("tiny_sd"), "cpu")


@pytest.fixture(scope="module")
def shap_e(catalog: ModelCatalog) -> Any:
    return DiffusersLoader().load(catalog.get("tiny_shap_e"), "cpu")


def run(
    cap: Any, model: Any, catalog: ModelCatalog, tmp: Path, request: dict[str, Any]
) -> list[Any]:
    """prepare → every chunk → assemble, as a worker would; the artifacts."""
    tmp.mkdir(parents=True, exist_ok=True)
    settings = load_settings(data_dir=tmp)
    prepared = cap.prepare(request, PrepareContext(settings, catalog))
    files, notes = [], []
    inputs = dict(prepared.uploads)  # as the worker's input cache would give them
    for i, plan in enumerate(prepared.chunks):
        ctx = ChunkContext(tmp / f"chunk{i}.{cap.chunk_ext}", lambda: False, inputs=inputs)
        cap.run_chunk(model, prepared.params, plan.payload, ctx)
        files.append(ctx.out)
        notes.append(ctx.notes)
    (tmp / "out").mkdir(exist_ok=True)
    kept = notes if getattr(cap, "chunk_notes", False) else []
    return list(
        cap.assemble(prepared.params, AssembleContext(files, tmp / "out", chunk_notes=kept))
    )


IMAGE = {"model": "tiny_sd", "prompt": "a lighthouse at dusk", "steps": 2}


def test_the_same_seed_gives_the_same_bytes_and_the_metadata_says_how(
    sd: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    from PIL import Image

    # When the same request with seed 7 runs twice, and once with seed 8
    a = run(ImageCapability(), sd, catalog, tmp_path / "a", {**IMAGE, "seed": 7})
    b = run(ImageCapability(), sd, catalog, tmp_path / "b", {**IMAGE, "seed": 7})
    c = run(ImageCapability(), sd, catalog, tmp_path / "c", {**IMAGE, "seed": 8})
    # Then the two seed-7 PNGs are byte-identical and the seed-8 one differs
    assert a[0].path.read_bytes() == b[0].path.read_bytes() != c[0].path.read_bytes()
    # And the PNG carries its parameters in tEXt chunks, as does the manifest meta
    with Image.open(a[0].path) as image:
        assert image.size == (64, 64)
        text = dict(image.text)
    assert text["prompt"] == "a lighthouse at dusk" and text["seed"] == "7"
    assert json.loads(text["parameters"]) == a[0].meta
    assert a[0].meta == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": None,
        "seed": 7,
        "steps": 2,
        "guidance_scale": None,
        "model": "tiny_sd",
        "size": "64x64",
    }


def test_webp_images_carry_their_parameters_in_exif(
    sd: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    from PIL import Image

    request = {**IMAGE, "seed": 1, "count": 2, "format": "webp", "width": 72, "height": 64}
    artifacts = run(ImageCapability(), sd, catalog, tmp_path, request)
    assert [a.name for a in artifacts] == ["image-00.webp", "image-01.webp"]
    for i, artifact in enumerate(artifacts):
        with Image.open(artifact.path) as image:
            assert image.format == "WEBP" and image.size == (72, 64)
            meta = json.loads(image.getexif()[EXIF_DESCRIPTION])
        assert meta["seed"] == 1 + i and meta["size"] == "72x64"


def test_a_cancelled_job_stops_between_denoising_steps(
    sd: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    cap = ImageCapability()
    settings = load_settings(data_dir=tmp_path)
    prepared = cap.prepare({**IMAGE, "steps": 8}, PrepareContext(settings, catalog))
    calls = []

    def stop_after_two_checks() -> bool:
        calls.append(1)
        return len(calls) > 2

    ctx = ChunkContext(tmp_path / "x.png", stop_after_two_checks)
    with pytest.raises(JobCancelled, match="denoising step 2"):
        cap.run_chunk(sd, prepared.params, prepared.chunks[0].payload, ctx)
    assert not ctx.out.exists()


def test_images_made_from_a_starting_image_follow_it_and_its_seed(
    sd: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    from PIL import Image

    # Given two starting images, 128×64, one teal and one a red and white split
    teal = picture(tmp_path / "teal.png", (128, 64))
    split = tmp_path / "split.jpg"
    two = Image.new("RGB", (128, 64), "red")
    two.paste((255, 255, 255), (64, 0, 128, 64))
    two.save(split, format="JPEG")
    request = {**IMAGE, "seed": 7, "strength": 0.5, "steps": 4}
    [before] = run(ImageCapability(), sd, catalog, tmp_path / "before", {**IMAGE, "seed": 7})
    # When images are made from them, the first twice
    a = run(ImageCapability(), sd, catalog, tmp_path / "a", {**request, "path": str(teal)})
    b = run(ImageCapability(), sd, catalog, tmp_path / "b", {**request, "path": str(teal)})
    c = run(ImageCapability(), sd, catalog, tmp_path / "c", {**request, "path": str(split)})
    # Then the same start and seed give the same bytes, another start another image
    assert a[0].path.read_bytes() == b[0].path.read_bytes() != c[0].path.read_bytes()
    # And the image has the starting image's proportions, and says what it came from
    with Image.open(a[0].path) as image:
        assert image.size == (88, 64)
        text = dict(image.text)
    assert text["start_image"] == "teal.png" and text["strength"] == "0.5"
    assert json.loads(text["parameters"]) == a[0].meta
    assert a[0].meta["start_image_sha256"] == file_sha256(teal)
    assert c[0].meta["start_image_sha256"] == file_sha256(split)
    # And the loaded pipeline they shared makes the same text-to-image image as before
    [after] = run(ImageCapability(), sd, catalog, tmp_path / "after", {**IMAGE, "seed": 7})
    assert after.path.read_bytes() == before.path.read_bytes()
    assert "start_image" not in after.meta


def test_a_mask_redraws_the_parts_it_marks_through_the_inpainting_pipeline(
    sd: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    from PIL import Image

    # Given a starting image and a mask whose right half is transparent (to redraw)
    start = picture(tmp_path / "room.png", (64, 64))
    mask = half_mask(tmp_path / "sofa.png", (64, 64), transparent=True)
    request = {**IMAGE, "seed": 3, "steps": 4, "path": str(start)}
    # When the same request runs with the mask twice, and once without it
    a = run(ImageCapability(), sd, catalog, tmp_path / "a", {**request, "mask": str(mask)})
    b = run(ImageCapability(), sd, catalog, tmp_path / "b", {**request, "mask": str(mask)})
    whole = run(ImageCapability(), sd, catalog, tmp_path / "c", {**request, "strength": 1.0})
    # Then the masked runs agree with each other and differ from the unmasked one
    assert a[0].path.read_bytes() == b[0].path.read_bytes() != whole[0].path.read_bytes()
    # And the image says which mask it was made with
    assert a[0].meta["mask"] == "sofa.png" and a[0].meta["strength"] == 1.0
    assert a[0].meta["mask_sha256"] == file_sha256(mask)
    with Image.open(a[0].path) as image:
        assert image.size == (64, 64)


@pytest.mark.parametrize(("inpaint", "task"), [(False, "image-to-image"), (True, "inpainting")])
def test_a_pipeline_family_without_image_to_image_is_named(
    shap_e: Any, inpaint: bool, task: str
) -> None:
    with pytest.raises(InvalidInput, match=rf"'tiny_shap_e' \(ShapEPipeline\) has no {task} "):
        task_pipeline(shap_e, "tiny_shap_e", inpaint=inpaint)


@pytest.mark.parametrize("name", ["half_copied_sd", "no_unet_sd"])
def test_the_loader_names_the_missing_component(catalog: ModelCatalog, name: str) -> None:
    spec = catalog.get(name)
    with pytest.raises(ModelLoadError, match=rf"{spec.path / 'unet'} is missing"):
        DiffusersLoader().load(spec, "cpu")


@pytest.mark.parametrize("fmt", ["glb", "ply", "obj"])
def test_a_mesh_job_writes_a_mesh_trimesh_can_load(
    shap_e: Any, catalog: ModelCatalog, tmp_path: Path, fmt: str
) -> None:
    import trimesh

    request = {"model": "tiny_shap_e", "prompt": "a chair", "steps": 2, "seed": 3}
    [artifact] = run(
        MeshCapability(), shap_e, catalog, tmp_path, {**request, "resolution": 32, "format": fmt}
    )
    assert artifact.name == f"mesh.{fmt}"
    mesh = trimesh.load(artifact.path, file_type=fmt, force="mesh")
    assert len(mesh.faces) == artifact.meta["faces"] > 0
    assert artifact.meta["vertices"] > 0 and len(artifact.meta["bounds"]) == 2
    # A chunk without notes (made before they were kept) is parsed for the same meta
    chunk = tmp_path / "chunk0.glb"
    params = {**artifact.meta, "format": fmt}
    [again] = MeshCapability().assemble(params, AssembleContext([chunk], tmp_path / "again"))
    assert again.meta == artifact.meta


def test_a_big_mesh_is_decimated_under_max_faces(
    shap_e: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    request = {"model": "tiny_shap_e", "prompt": "a chair", "steps": 2, "seed": 3}
    [artifact] = run(
        MeshCapability(),
        shap_e,
        catalog,
        tmp_path,
        {**request, "resolution": 32, "max_faces": 5000, "format": "ply"},
    )
    assert 0 < artifact.meta["faces"] <= 5000


@pytest.fixture(scope="module")
def shap_e_img2img(catalog: ModelCatalog) -> Any:
    return DiffusersLoader().load(catalog.get("tiny_shap_e_img2img"), "cpu")


def test_a_mesh_is_made_of_the_object_in_a_picture_by_an_image_to_3d_model(
    shap_e_img2img: Any, catalog: ModelCatalog, tmp_path: Path
) -> None:
    # Given two pictures of "objects": a teal one, and a red one with a transparent border
    from PIL import Image

    teal = picture(tmp_path / "teal.png", (96, 64))
    red = tmp_path / "red.png"
    cutout = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (16, 16, 48, 48))
    cutout.save(red)
    request = {"model": "tiny_shap_e_img2img", "steps": 2, "seed": 3, "resolution": 32}
    cap = MeshCapability()
    # When a mesh is made of each, and of the teal one again
    a = run(cap, shap_e_img2img, catalog, tmp_path / "a", {**request, "path": str(teal)})
    b = run(cap, shap_e_img2img, catalog, tmp_path / "b", {**request, "path": str(teal)})
    c = run(cap, shap_e_img2img, catalog, tmp_path / "c", {**request, "path": str(red)})
    # Then the same picture and seed give the same GLB, and another picture another mesh
    assert a[0].path.read_bytes() == b[0].path.read_bytes() != c[0].path.read_bytes()
    assert a[0].meta["faces"] > 0
    # And the metadata names the picture and its digest, not a prompt, and the guidance
    # of an image-to-3D model by default
    assert "prompt" not in a[0].meta
    assert a[0].meta["start_image"] == "teal.png"
    assert a[0].meta["start_image_sha256"] == file_sha256(teal)
    assert a[0].meta["guidance_scale"] == 3.0
    # And a wide picture is modelled whole, as the same picture centred on a white square
    # (the pipeline's own processor would crop its middle)
    square = tmp_path / "square.png"
    with Image.open(teal) as wide:
        on_white = Image.new("RGB", (96, 96), "white")
        on_white.paste(wide, (0, 16))
    on_white.save(square)
    d = run(cap, shap_e_img2img, catalog, tmp_path / "d", {**request, "path": str(square)})
    assert d[0].path.read_bytes() == a[0].path.read_bytes()
    # And the picture's digest is part of the chunk's identity, the prompt's place
    settings = load_settings(data_dir=tmp_path / "e")
    plans = [
        cap.prepare({**request, "path": str(p)}, PrepareContext(settings, catalog)).chunks[0]
        for p in (teal, red)
    ]
    assert plans[0].identity["start"] == file_sha256(teal) != plans[1].identity["start"]
    assert "prompt" not in plans[0].identity


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"model": "tiny_shap_e_img2img", "prompt": "a chair"}, "reads no prompt"),
        ({"model": "tiny_shap_e_img2img"}, "give one with --image"),
        ({"model": "tiny_shap_e", "path": "PICTURE"}, "needs an image-to-3D Shap-E pipeline"),
        ({"model": "tiny_shap_e"}, "makes meshes from text; give --prompt"),
        ({"model": "tiny_shap_e_img2img", "path": "NOT_AN_IMAGE"}, "could not be read as an"),
        ({"model": "tiny_sd", "prompt": "a chair"}, "needs a Shap-E pipeline"),
    ],
)
def test_a_mesh_request_that_does_not_fit_its_model_is_refused_saying_what_to_give(
    catalog: ModelCatalog, tmp_path: Path, request_: dict[str, Any], message: str
) -> None:
    files = {
        "PICTURE": picture(tmp_path / "chair.png", (64, 64)),
        "NOT_AN_IMAGE": tmp_path / "chair.txt",
    }
    files["NOT_AN_IMAGE"].write_text("a chair")
    request = {k: str(files.get(v, v)) for k, v in request_.items()}
    ctx = PrepareContext(load_settings(data_dir=tmp_path), catalog)
    with pytest.raises(InvalidInput, match=message):
        MeshCapability().prepare(request, ctx)
