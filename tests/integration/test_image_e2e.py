"""image and mesh end to end: a real `stoker worker` process on queues "image,mesh",
real Redis, a real S3-protocol server and tiny random diffusers pipelines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput
from stoker.queues.records import JobState
from tests.deployment import Deployment, can_hide
from tests.diffusers_models import TinyPipelines, tiny_pipelines
from tests.pictures import picture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

IMAGE = {"model": "tiny_sd", "prompt": "a lighthouse at dusk", "steps": 2}
MESH = {"model": "tiny_shap_e", "prompt": "a chair", "steps": 2, "seed": 3, "resolution": 32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


@pytest.fixture()
def visual(deployment: Deployment, tiny: TinyPipelines) -> Deployment:
    """The deployment with the tiny pipelines configured as models."""
    deployment.env.update(tiny.env())
    return deployment


def found(folder: Path, pattern: str) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(pattern))


def png_text(data: bytes) -> dict[str, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return dict(image.text)


def test_images_and_meshes_are_made_stored_and_reproducible(visual: Deployment) -> None:
    import trimesh

    visual.start_worker("image,mesh")
    with Stoker(visual.settings()) as client:
        # When 3 images with seed 7 and a mesh in three formats are submitted
        images = client.submit("image", {**IMAGE, "seed": 7, "count": 3})
        meshes = {f: client.submit("mesh", {**MESH, "format": f}) for f in ("glb", "ply", "obj")}
        done = client.wait(images.id, timeout_s=120)

        # Then there are 3 PNGs, seeds 7, 8, 9 in their metadata, all different
        assert done.state is JobState.SUCCEEDED, done.error
        names = [o.name for o in done.outputs]
        assert names == ["image-00.png", "image-01.png", "image-02.png", "manifest.json"]
        pngs = [client.storage.get_bytes(o.key) for o in done.outputs[:3]]
        assert [png_text(p)["seed"] for p in pngs] == ["7", "8", "9"]
        assert len(set(pngs)) == 3
        manifest = json.loads(client.storage.get_bytes(done.outputs[3].key))
        assert manifest["outputs"][1]["meta"]["seed"] == 8
        assert manifest["outputs"][1]["meta"]["size"] == "64x64"

        # When the chunks are deleted and seed 8 is asked for again
        for chunk in done.chunks:
            client.storage.delete(chunk.key)
        again = client.wait(client.submit("image", {**IMAGE, "seed": 8}).id, timeout_s=120)
        # Then the recomputed image is byte-identical to the first job's seed-8 image
        assert again.state is JobState.SUCCEEDED, again.error
        assert client.storage.get_bytes(again.outputs[0].key) == pngs[1]

        # And each mesh format loads in trimesh with triangles
        for fmt, job in meshes.items():
            mesh_done = client.wait(job.id, timeout_s=120)
            assert mesh_done.state is JobState.SUCCEEDED, mesh_done.error
            assert mesh_done.outputs[0].name == f"mesh.{fmt}"
            data = client.storage.get_bytes(mesh_done.outputs[0].key)
            mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")
            assert len(mesh.faces) > 0
            # the manifest's counts, for GLB from the chunk's notes, are the file's
            manifest = json.loads(client.storage.get_bytes(mesh_done.outputs[1].key))
            assert manifest["outputs"][0]["meta"]["faces"] == len(mesh.faces)


def test_a_bad_size_is_refused_at_submission_naming_the_valid_size(visual: Deployment) -> None:
    with Stoker(visual.settings()) as client:
        with pytest.raises(InvalidInput, match=r"width 100 .*nearest valid width is 104"):
            client.submit("image", {**IMAGE, "width": 100})
        with pytest.raises(InvalidInput, match=r"resolution"):
            client.submit("mesh", {**MESH, "resolution": 1024})
        assert client.jobs() == []


def test_a_half_copied_model_fails_its_job_and_the_worker_serves_the_next(
    visual: Deployment, tiny: TinyPipelines
) -> None:
    worker = visual.start_worker("image,mesh")
    with Stoker(visual.settings()) as client:
        # Given a model folder whose unet has its config but no weights
        bad = client.submit("image", {**IMAGE, "model": "half_copied_sd"})
        good = client.submit("image", {**IMAGE, "seed": 1})
        bad_done = client.wait(bad.id, timeout_s=120)
        good_done = client.wait(good.id, timeout_s=120)
    # Then the bad job failed naming the folder and the component, the good one succeeded
    assert bad_done.state is JobState.FAILED
    assert bad_done.error is not None and bad_done.error.kind == "model_load_failed"
    unet = Path(tiny.image_without_unet_weights) / "unet"
    assert f"{unet} is missing" in bad_done.error.message
    assert "lists unet in model_index.json" in bad_done.error.message
    assert good_done.state is JobState.SUCCEEDED, good_done.error
    assert worker.alive


def test_prompt_files_become_batches_whose_outputs_download_by_line(
    visual: Deployment, tmp_path: Path
) -> None:
    # Given a worker, a file of three image prompts and a file of two mesh prompts
    visual.start_worker("image,mesh")
    images = tmp_path / "images.txt"
    images.write_text("a lighthouse at dusk\na red barn\n\na green field\n")
    meshes = tmp_path / "meshes.jsonl"
    meshes.write_text('{"prompt": "a chair", "name": "chair"}\n{"prompt": "a table"}\n')
    # When both are submitted from the CLI, as a user would, and waited for
    submit_images = visual.cli(
        "submit", "image", "--prompts", str(images), "--model", "tiny_sd", "--steps", "2",
        "--seed", "5", "--format", "webp",
    )  # fmt: skip
    submit_meshes = visual.cli(
        "submit", "mesh", "--prompts", str(meshes), "--model", "tiny_shap_e", "--steps", "2",
        "--resolution", "32", "--format", "ply",
    )  # fmt: skip
    assert submit_images.returncode == 0, submit_images.stderr
    assert submit_meshes.returncode == 0, submit_meshes.stderr
    image_batch, mesh_batch = submit_images.stdout.strip(), submit_meshes.stdout.strip()
    with Stoker(visual.settings()) as client:
        for batch in (image_batch, mesh_batch):
            done = client.wait(batch, timeout_s=180)
            assert done.state is JobState.SUCCEEDED, done.error
            assert done.progress.done == done.progress.total
    # Then `stoker get` puts each line's outputs in a folder of its name (or line)
    out = tmp_path / "out"
    for batch in (image_batch, mesh_batch):
        got = visual.cli("get", batch, "--out", str(out / batch))
        assert got.returncode == 0, got.stderr
    assert found(out / image_batch, "*.webp") == [
        "00001/image-00.webp", "00002/image-00.webp", "00004/image-00.webp"
    ]  # fmt: skip
    assert found(out / mesh_batch, "*.ply") == ["00002/mesh.ply", "chair/mesh.ply"]
    # And the batch's manifest and status name the lines
    manifest = json.loads((out / image_batch / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["00001", "00002", "00004"]
    status = visual.cli("status", image_batch)
    assert "3 lines: 3 succeeded" in status.stdout


def test_images_start_from_a_local_file_or_an_s3_object_the_worker_reads_from_storage(
    visual: Deployment, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    # Given a starting image on this machine, and the same picture in a bucket
    mine = tmp_path / "mine"
    mine.mkdir()
    start = picture(mine / "sketch.png", (128, 64))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.upload_file(str(start), s3_bucket, "sketches/sketch.png")
    visual.start_worker("image", hide=mine if can_hide() else None)
    request = {**IMAGE, "seed": 4, "steps": 4, "strength": 0.5}
    with Stoker(visual.settings()) as client:
        # When an image is made from each (the worker, where it can be kept from seeing
        # this machine's folder, sees neither: it reads the picture from storage)
        local = client.submit("image", {**request, "path": str(start)})
        remote = client.submit(
            "image", {**request, "path": f"s3://{s3_bucket}/sketches/sketch.png"}
        )
        done = [client.wait(job.id, timeout_s=120) for job in (local, remote)]
        # Then both succeed, at the starting image's proportions, naming it
        for job in done:
            assert job.state is JobState.SUCCEEDED, job.error
            text = png_text(client.storage.get_bytes(job.outputs[0].key))
            assert text["start_image"] == "sketch.png" and text["size"] == "88x64"
        # And the picture was stored once, by content, and both made the same image
        assert [k.key for k in client.storage.list("inputs/")] == [local.params["start"]["key"]]
        images = [client.storage.get_bytes(job.outputs[0].key) for job in done]
        assert images[0] == images[1]
    # When the bucket's prefix of pictures is submitted from the CLI, as a user would
    s3.upload_file(str(start), s3_bucket, "sketches/more/again.png")
    submitted = visual.cli(
        "submit", "image", "--image", f"s3://{s3_bucket}/sketches/", "--prompt", IMAGE["prompt"],
        "--model", "tiny_sd", "--steps", "4", "--seed", "4", "--strength", "0.5",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    # Then it is one batch of a job per picture, named after its path under the prefix
    with Stoker(visual.settings()) as client:
        batch = client.wait(submitted.stdout.strip(), timeout_s=120)
        assert batch.state is JobState.SUCCEEDED, batch.error
        kids = client.children(batch.id)
        assert [k.params["name"] for k in kids] == ["more_again", "sketch"]
        assert client.storage.get_bytes(kids[1].outputs[0].key) == images[0]


def test_meshes_of_pictures_in_a_bucket_are_made_by_a_worker_that_reads_them_from_storage(
    visual: Deployment, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3
    import trimesh

    # Given two pictures of objects in a bucket, and a worker on the mesh queue
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name, colour in (("chair", "teal"), ("lamp", "red")):
        path = picture(tmp_path / f"{name}.png", (96, 64), colour)
        s3.upload_file(str(path), s3_bucket, f"objects/{name}.png")
    visual.start_worker("mesh")
    # When the prefix is submitted from the CLI to an image-to-3D model, as a user would
    submitted = visual.cli(
        "submit", "mesh", "--image", f"s3://{s3_bucket}/objects/", "--model",
        "tiny_shap_e_img2img", "--steps", "2", "--seed", "3", "--resolution", "32",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    # Then it is one batch of a mesh per picture, each named after it and made of it
    with Stoker(visual.settings()) as client:
        batch = client.wait(submitted.stdout.strip(), timeout_s=120)
        assert batch.state is JobState.SUCCEEDED, batch.error
        kids = client.children(batch.id)
        assert [k.params["name"] for k in kids] == ["chair", "lamp"]
        meshes = []
        for kid in kids:
            assert kid.outputs[0].name == "mesh.glb"
            data = client.storage.get_bytes(kid.outputs[0].key)
            assert len(trimesh.load(io.BytesIO(data), file_type="glb", force="mesh").faces) > 0
            manifest = json.loads(client.storage.get_bytes(kid.outputs[1].key))
            assert manifest["outputs"][0]["meta"]["start_image"] == f"{kid.params['name']}.png"
            meshes.append(data)
        assert meshes[0] != meshes[1]
