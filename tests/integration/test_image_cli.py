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
from tests.pictures import half_mask, picture

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


def test_run_image_makes_each_line_of_a_prompt_file_and_refuses_bad_lines_alone(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    # Given a prompt file: two good lines (one named, two images), one not JSON and
    # one asking for a size the pipeline cannot make
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a lighthouse at dusk", "seed": 7}\n'
        '{"prompt": "a red barn", "count": 2, "seed": 3, "name": "barn"}\n'
        "a cat, not JSON\n"
        '{"prompt": "too wide", "width": 100}\n'
    )
    out = tmp_path / "out"
    # When `stoker run image --prompts` runs it, every line with --steps 2
    result = stoker(
        "run", "image", "--prompts", str(prompts), "--model", str(tiny.image), "--steps", "2",
        "--out", str(out), data_dir=data_dir,
    )  # fmt: skip
    # Then it exits 0 (some lines succeeded) and says how many failed, and why the first
    assert result.returncode == 0, result.stderr
    assert "warning: 2 of 4 lines failed (the first: prompts.jsonl line 3: not valid JSON" in (
        result.stderr
    )
    # And each good line's images are in a folder of its name, with their seeds
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "00001/image-00.png", "barn/image-00.png", "barn/image-01.png",
        "errors.jsonl", "manifest.json",
    ]  # fmt: skip
    from PIL import Image

    seeds = [Image.open(out / f).text["seed"] for f in files[:3]]  # type: ignore[attr-defined]
    assert seeds == ["7", "3", "4"]
    # And the errors name each bad line, with the reason
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["name"] for e in errors] == ["00003", "00004"]
    assert "nearest valid width is 104" in errors[1]["error"]["message"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request_counts"] == {"total": 4, "completed": 2, "failed": 2}


def test_run_image_starts_every_line_from_the_image_given_and_refuses_a_bad_one(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    # Given a 128×64 starting image and a file of two prompts
    start = picture(tmp_path / "sketch.webp", (128, 64), fmt="WEBP")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na red barn\n")
    out = tmp_path / "out"
    # When `stoker run image --image --strength` makes both from it
    result = stoker(
        "run", "image", "--prompts", str(prompts), "--image", str(start), "--strength", "0.5",
        "--model", str(tiny.image), "--steps", "4", "--seed", "2", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip
    # Then both lines' images are at its proportions and name it and the strength
    assert result.returncode == 0, result.stderr
    for line in ("00001", "00002"):
        with Image.open(out / line / "image-00.png") as image:
            assert image.size == (88, 64)
            assert image.text["start_image"] == "sketch.webp"  # type: ignore[attr-defined]
            assert image.text["strength"] == "0.5"  # type: ignore[attr-defined]
    # And a starting image that is not an image is refused, naming it, before any work
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    refused = stoker(
        "run", "image", "--prompt", "x", "--image", str(bad), "--model", str(tiny.image),
        "--out", str(tmp_path / "bad"), data_dir=data_dir,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "error: the starting image notes.png could not be read as an image" in refused.stderr


def test_run_image_with_a_mask_inpaints_the_starting_image(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    # Given a starting image and a black mask, white over its right half
    start = picture(tmp_path / "room.png", (64, 64))
    mask = half_mask(tmp_path / "sofa.png", (64, 64), transparent=False)
    out = tmp_path / "out"
    # When `stoker run image --image --mask` runs
    result = stoker(
        "run", "image", "--image", str(start), "--mask", str(mask), "--prompt", "a red sofa",
        "--model", str(tiny.image), "--steps", "4", "--seed", "1", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip
    # Then the image is made from both, and says so
    assert result.returncode == 0, result.stderr
    with Image.open(out / "image-00.png") as image:
        assert image.text["mask"] == "sofa.png"  # type: ignore[attr-defined]
        assert image.text["start_image"] == "room.png"  # type: ignore[attr-defined]


def test_run_image_from_a_folder_makes_each_picture_and_fails_a_broken_one_alone(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    # Given a folder of pictures (one in a subfolder, one broken) and a file that is not one
    photos = tmp_path / "photos"
    (photos / "shoot 2").mkdir(parents=True)
    picture(photos / "cat.jpg", (128, 64), fmt="JPEG")
    picture(photos / "shoot 2" / "dog.png", (64, 128), "red")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    (photos / "notes.txt").write_text("not a picture, and not looked at")
    out = tmp_path / "out"
    # When `stoker run image --image FOLDER` makes an image from each
    result = stoker(
        "run", "image", "--image", str(photos), "--prompt", "a watercolour", "--strength",
        "0.5", "--model", str(tiny.image), "--steps", "4", "--out", str(out), data_dir=data_dir,
    )  # fmt: skip
    # Then it exits 0 (some succeeded), saying which picture failed and why
    assert result.returncode == 0, result.stderr
    assert "warning: 1 of 3 pictures failed (the first: " in result.stderr
    assert "broken.png could not be read as an image" in result.stderr
    # And each picture's image is in a folder of its name, in its proportions
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert files == ["cat/image-00.png", "shoot-2_dog/image-00.png"]
    with Image.open(out / "cat" / "image-00.png") as image:
        assert image.size == (88, 64)
        assert image.text["start_image"] == "cat.jpg"  # type: ignore[attr-defined]
    with Image.open(out / "shoot-2_dog" / "image-00.png") as image:
        assert image.size == (64, 88)
    # And a folder with a prompt file, or with no pictures, is refused saying what to do
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        (["--image", str(photos), "--prompts", str(tmp_path / "p.txt")], "one --prompt"),
        (["--image", str(empty), "--prompt", "x"], f"{empty} holds no pictures"),
    ):
        refused = stoker("submit", "image", "--model", str(tiny.image), *args, data_dir=data_dir)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr


def test_image_needs_one_prompt_or_one_prompt_file(tiny: TinyPipelines, data_dir: Path) -> None:
    neither = stoker("submit", "image", "--model", str(tiny.image), data_dir=data_dir)
    both = stoker(
        "submit", "image", "--model", str(tiny.image), "--prompt", "x", "--prompts", "p.txt",
        data_dir=data_dir,
    )  # fmt: skip
    for result in (neither, both):
        assert result.returncode != 0
        assert "give --prompt, or --prompts with a file of prompts" in result.stderr


def test_run_batch_of_image_requests_copies_each_lines_images_beside_its_output_file(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    # Given an OpenAI Batch file of image requests: one by URL, one by URL whose
    # custom_id cannot be a folder's name, one asking for base64
    requests = tmp_path / "requests.jsonl"
    body = {"model": str(tiny.image), "steps": 2, "seed": 7}
    lines = [
        ("lighthouse", {"prompt": "a lighthouse", "n": 2}),
        ("in/out", {"prompt": "a barn"}),
        ("inline", {"prompt": "a cat", "response_format": "b64_json"}),
    ]
    requests.write_text(
        "".join(
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": "/v1/images/generations",
                 "body": {**body, **extra}}
            ) + "\n"
            for cid, extra in lines
        )
    )  # fmt: skip
    out = tmp_path / "out"
    # When `stoker run batch` runs it
    result = stoker("run", "batch", str(requests), "--out", str(out), data_dir=data_dir)
    # Then every request succeeded, and the images of the lines that point at theirs by
    # URL are in --out, in a folder named after the custom_id (or the request's
    # position, `_00002`, where it cannot be a name); the base64 line's are in its line
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "_00002/image-00.png", "errors.jsonl",
        "lighthouse/image-00.png", "lighthouse/image-01.png", "output.jsonl",
    ]  # fmt: skip
    lines_out = (out / "output.jsonl").read_text().splitlines()
    got = {g["custom_id"]: g for g in map(json.loads, lines_out)}
    assert list(got) == ["lighthouse", "in/out", "inline"]
    [inline] = got["inline"]["response"]["body"]["data"]
    assert len(inline["b64_json"]) > 100
    # And each copy is the image its line's URL points at
    for cid, folder in (("lighthouse", "lighthouse"), ("in/out", "_00002")):
        urls = [d["url"] for d in got[cid]["response"]["body"]["data"]]
        copies = sorted((out / folder).iterdir())
        assert [Path(u.removeprefix("file://")).read_bytes() for u in urls] == [
            c.read_bytes() for c in copies
        ]


def test_run_batch_of_image_edits_reads_each_lines_starting_image_and_fails_a_bad_one_alone(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    # Given an OpenAI Batch file of edits: one of a picture, one of a file that is not one
    picture(tmp_path / "sketch.png", (128, 64))
    (tmp_path / "notes.png").write_text("not a picture")
    requests = tmp_path / "edits.jsonl"
    body = {"model": str(tiny.image), "steps": 4, "seed": 7, "strength": 0.5, "prompt": "x"}
    requests.write_text(
        "".join(
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": "/v1/images/edits",
                 "body": {**body, "image": str(tmp_path / image)}}
            ) + "\n"
            for cid, image in (("good", "sketch.png"), ("bad", "notes.png"))
        )
    )  # fmt: skip
    out = tmp_path / "out"
    # When `stoker run batch` runs it
    result = stoker("run", "batch", str(requests), "--out", str(out), data_dir=data_dir)
    # Then the picture's line made an image from it, and the other failed naming its file
    assert result.returncode == 0, result.stderr
    with Image.open(out / "good" / "image-00.png") as image:
        assert image.size == (88, 64)
        assert image.text["start_image"] == "sketch.png"  # type: ignore[attr-defined]
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["custom_id"] == "bad"
    assert "notes.png could not be read as an image" in json.dumps(error)


def test_run_mesh_models_the_object_in_a_picture_or_in_each_of_a_folder(
    tiny: TinyPipelines, data_dir: Path, tmp_path: Path
) -> None:
    import trimesh

    # Given a picture of an object, and a folder of two more and a broken one
    chair = picture(tmp_path / "chair.png", (96, 64))
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "lamp.jpg", (64, 96), "red", fmt="JPEG")
    picture(photos / "vase.png", (64, 64), "navy")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    model = ["--model", str(tiny.mesh_from_picture), "--steps", "2", "--resolution", "32"]
    many_out = tmp_path / "many"
    # When `stoker run mesh --image` models the one, then each of the folder
    one = stoker(
        "run", "mesh", "--image", str(chair), *model, "--seed", "3", "--out",
        str(tmp_path / "one"), data_dir=data_dir,
    )  # fmt: skip
    many = stoker(
        "run", "mesh", "--image", str(photos), *model, "--format", "ply", "--out",
        str(many_out), data_dir=data_dir,
    )  # fmt: skip
    # Then the one mesh is a GLB with triangles
    assert one.returncode == 0, one.stderr
    mesh = trimesh.load(tmp_path / "one" / "mesh.glb", file_type="glb", force="mesh")
    assert len(mesh.faces) > 0
    # stored once: the output is the chunk itself, linked by the local storage
    with Stoker(load_settings(data_dir=data_dir)) as client:
        (job,) = [j for j in client.jobs() if j.params.get("start", {}).get("name") == "chair.png"]
        with (
            client.storage.open(job.outputs[0].key) as a,
            client.storage.open(job.chunks[0].key) as b,
        ):
            assert os.fstat(a.fileno()).st_ino == os.fstat(b.fileno()).st_ino
    # And each picture of the folder has its mesh in a folder of its name; the broken
    # one failed alone, named
    assert many.returncode == 0, many.stderr
    assert "warning: 1 of 3 pictures failed (the first: " in many.stderr
    assert "broken.png could not be read as an image" in many.stderr
    found = sorted(p.relative_to(tmp_path / "many").as_posix() for p in many_out.rglob("*.ply"))
    assert found == ["lamp/mesh.ply", "vase/mesh.ply"]
    # And what an image-to-3D model cannot take is refused, saying what to give
    for args, message in (
        (["--image", str(chair), "--prompt", "a chair"], "reads no prompt"),
        (["--image", str(photos), "--prompt", "a chair"], "leave out --prompt and --prompts"),
        ([], "or --image with a picture of the object, for `mesh`"),
    ):
        refused = stoker("submit", "mesh", *model, *args, data_dir=data_dir)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
