"""image from a starting image: what submission reads, checks and plans, without weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stoker.config import load_settings
from stoker.errors import InvalidInput
from stoker.jobs.base import NAME_PATTERN, PrepareContext
from stoker.jobs.image import Geometry, ImageCapability, start_size
from stoker.jobs.start_image import EXIF_ORIENTATION, check_steps, load_mask, load_start_image
from stoker.storage.keys import file_sha256
from stoker.workers.catalog import ModelCatalog
from tests.diffusers_models import TinyPipelines, tiny_pipelines
from tests.pictures import half_mask, picture


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


@pytest.fixture()
def ctx(tiny: TinyPipelines, tmp_path: Path) -> PrepareContext:
    settings = load_settings(data_dir=tmp_path / "data", models=tiny.models())
    return PrepareContext(settings, ModelCatalog(settings))


def prepare(ctx: PrepareContext, **request: Any) -> Any:
    return ImageCapability().prepare({"model": "tiny_sd", "prompt": "a lighthouse", **request}, ctx)


@pytest.mark.parametrize(
    ("start", "geo", "expected"),
    [
        ((512, 512), (512, 512, 8), (512, 512)),
        ((4032, 3024), (512, 512, 8), (592, 440)),  # a phone photo on SD 1.5's size
        ((3024, 4032), (1024, 1024, 16), (880, 1184)),  # portrait on SDXL's
        ((128, 64), (64, 64, 8), (88, 64)),  # 45 is under the smallest side, 64
        ((10_000, 50), (512, 512, 8), (2048, 64)),  # sides stay within what can be made
    ],
)
def test_a_starting_image_keeps_its_proportions_at_about_the_models_area(
    start: tuple[int, int], geo: tuple[int, int, int], expected: tuple[int, int]
) -> None:
    assert start_size(*start, Geometry(*geo)) == expected


def test_a_starting_image_is_uploaded_by_content_and_is_part_of_each_images_identity(
    ctx: PrepareContext, tmp_path: Path
) -> None:
    # Given a 128×64 JPEG starting image
    start = picture(tmp_path / "sketch.jpg", (128, 64), fmt="JPEG")
    digest = file_sha256(start)
    # When two images are planned from it
    prepared = prepare(ctx, path=str(start), count=2, seed=3, strength=0.5)
    # Then it is uploaded once under its content key, and each chunk reads it
    key = f"inputs/{digest[:2]}/{digest}.jpeg"
    assert prepared.uploads == {key: start}
    assert [c.payload for c in prepared.chunks] == [
        {"seed": 3, "inputs": [key]},
        {"seed": 4, "inputs": [key]},
    ]
    # And the images are made in its proportions, and the record says from what
    assert (prepared.params["width"], prepared.params["height"]) == (88, 64)
    assert prepared.params["start"] == {"name": "sketch.jpg", "sha256": digest, "key": key}
    assert prepared.params["strength"] == 0.5
    # And the image and the strength are part of each image's identity
    identity = prepared.chunks[0].identity
    assert identity["start"] == digest and identity["strength"] == 0.5
    other = prepare(ctx, path=str(picture(tmp_path / "b.png", (128, 64), "red")), seed=3)
    weaker = prepare(ctx, path=str(start), seed=3, strength=0.4)
    assert len({str(p.chunks[0].identity) for p in (prepared, other, weaker)}) == 3


def test_width_and_height_given_win_and_strength_defaults_to_diffusers_own(
    ctx: PrepareContext, tmp_path: Path
) -> None:
    start = picture(tmp_path / "a.png", (128, 64))
    prepared = prepare(ctx, path=str(start), width=64, height=64)
    assert (prepared.params["width"], prepared.params["height"]) == (64, 64)
    assert prepared.params["strength"] == 0.8


def test_a_text_to_image_job_keeps_the_identity_it_always_had(ctx: PrepareContext) -> None:
    prepared = prepare(ctx, seed=1)
    assert "start" not in prepared.params and "strength" not in prepared.params
    assert set(prepared.chunks[0].identity) == {
        "model", "prompt", "negative_prompt", "steps", "guidance_scale", "width", "height", "seed"
    }  # fmt: skip
    assert prepared.uploads == {} and prepared.chunks[0].payload == {"seed": 1}


def write_truncated_png(path: Path) -> Path:
    data = picture(path, (64, 64), "navy").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "request_", "message"),
    [
        (None, {"path": "nowhere.png"}, r"starting image nowhere\.png does not exist"),
        (
            lambda p: p.write_text("not a picture") and p,
            {},
            r"starting image start\.png could not be read as an image .*PNG, JPEG or WebP",
        ),
        (write_truncated_png, {}, r"starting image start\.png could not be read as an image"),
        (None, {"strength": 0.5}, r"strength applies to a starting image.*--image"),
        (None, {"mask": "m.png"}, r"mask applies to a starting image.*--image"),
        (picture, {"strength": 0.2, "steps": 4}, r"give --steps 5 or more, or a higher"),
        (picture, {"strength": 0.3, "steps": 3}, r"give --steps 4 or more"),
        (picture, {"strength": 0.0}, r"invalid strength 0\.0"),
        (picture, {"strength": 1.5}, r"invalid strength 1\.5"),
        (picture, {"path": ""}, r"path is empty"),
    ],
)
def test_a_bad_starting_image_or_strength_is_refused_naming_it(
    ctx: PrepareContext, tmp_path: Path, make: Any, request_: dict[str, Any], message: str
) -> None:
    path = tmp_path / "start.png"
    if make is picture:
        picture(path, (64, 64))
    elif make is not None:
        make(path)
    if make is not None and "path" not in request_:
        request_ = {"path": str(path), **request_}
    elif request_.get("path"):
        request_ = {**request_, "path": str(tmp_path / request_["path"])}
    with pytest.raises(InvalidInput, match=message):
        prepare(ctx, **request_)


def test_enough_steps_pass_the_check() -> None:
    check_steps(1, 1.0)
    check_steps(4, 0.25)
    check_steps(4, 0.3)
    check_steps(10, 0.1)


def test_the_starting_image_is_given_to_the_pipeline_as_rgb_at_the_jobs_size(
    tmp_path: Path,
) -> None:
    start = tmp_path / "grey.png"
    Image.new("LA", (128, 64), (90, 255)).save(start)
    image = load_start_image(start, 88, 48)
    assert image.mode == "RGB" and image.size == (88, 48)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_over_http_a_starting_image_is_an_uploaded_file_or_a_path_under_the_roots(
    tiny: TinyPipelines, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from stoker.api.app import create_app
    from tests.api_server import auth, make_key

    # Given the API on the embedded default with the tiny pipeline, and one path root
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settings = load_settings(
        data_dir=tmp_path / "data", models=tiny.models(), api={"path_roots": [str(inbox)]}
    )
    alice = auth(make_key(settings, "alice"))
    start = picture(tmp_path / "sketch.png", (128, 64))
    with TestClient(create_app(settings, deliver_webhooks=False)) as client:
        # When the picture is uploaded and an image job names its file id
        upload = client.post(
            "/v1/files",
            files={"file": ("sketch.png", start.read_bytes())},
            data={"purpose": "user_data"},
            headers=alice,
        ).json()
        body = {"model": "tiny_sd", "prompt": "a lighthouse", "path": upload["id"]}
        job = client.post("/v1/jobs", json={"kind": "image", "params": body}, headers=alice)
        # Then it is queued from that picture, named as uploaded, in its proportions
        assert job.status_code == 202, job.text
        params = job.json()["params"]
        assert params["start"]["name"] == "sketch.png" and params["strength"] == 0.8
        assert (params["width"], params["height"]) == (88, 64)
        assert "name" not in params  # an image's name is its line's in a batch, not the file's
        # And a path outside the roots is refused, one inside them is read
        outside = {**body, "path": str(start)}
        refused = client.post("/v1/jobs", json={"kind": "image", "params": outside}, headers=alice)
        assert refused.status_code == 400 and "not readable through the API" in refused.text
        inside = {**body, "path": str(picture(inbox / "in.png", (64, 64)))}
        taken = client.post("/v1/jobs", json={"kind": "image", "params": inside}, headers=alice)
        assert taken.status_code == 202, taken.text
        assert taken.json()["params"]["start"]["name"] == "in.png"
        # And a mask is guarded as the picture is: refused outside the roots, read inside
        masked = {**inside, "mask": str(start)}
        refused = client.post("/v1/jobs", json={"kind": "image", "params": masked}, headers=alice)
        assert refused.status_code == 400 and "params.mask" in refused.text
        masked["mask"] = str(half_mask(inbox / "m.png", (64, 64), transparent=True))
        taken = client.post("/v1/jobs", json={"kind": "image", "params": masked}, headers=alice)
        assert taken.status_code == 202, taken.text
        assert taken.json()["params"]["mask"]["name"] == "m.png"
        # And an OpenAI batch of edits reads each line's picture and mask by file id
        mask_upload = client.post(
            "/v1/files",
            files={
                "file": (
                    "m.png",
                    half_mask(tmp_path / "m.png", (128, 64), transparent=True).read_bytes(),
                )
            },
            data={"purpose": "user_data"},
            headers=alice,
        ).json()
        edit = {"model": "tiny_sd", "prompt": "a sofa", "image": upload["id"]}
        lines = [
            {"custom_id": "whole", "method": "POST", "url": "/v1/images/edits", "body": edit},
            {"custom_id": "part", "method": "POST", "url": "/v1/images/edits",
             "body": {**edit, "mask": mask_upload["id"]}},
        ]  # fmt: skip
        requests = client.post(
            "/v1/files",
            files={"file": ("edits.jsonl", "".join(json.dumps(x) + "\n" for x in lines))},
            data={"purpose": "batch"},
            headers=alice,
        ).json()
        batch = client.post(
            "/v1/batches",
            json={"input_file_id": requests["id"], "endpoint": "/v1/images/edits",
                  "completion_window": "24h"},
            headers=alice,
        )  # fmt: skip
        assert batch.status_code == 200, batch.text
        assert batch.json()["request_counts"]["failed"] == 0
        jobs = client.get("/v1/jobs", params={"kind": "image", "limit": 2}, headers=alice)
        kids = [j["params"] for j in jobs.json()["data"]]
        assert sorted("mask" in k for k in kids) == [False, True]
        assert all(k["start"]["name"] == "sketch.png" for k in kids)


def test_each_picture_of_a_folder_gets_a_name_a_batch_takes_and_no_two_the_same() -> None:
    from stoker.jobs.start_image import picture_names

    relatives = ["shoots/cat 1.jpg", "a.png", "a.jpg", "a-2.png", "ü.png", "x/y/z.tif"]
    names = picture_names(relatives)
    assert names == ["shoots_cat-1", "a", "a-3", "a-2", "picture", "x_y_z"]
    assert all(re.fullmatch(NAME_PATTERN, n) for n in names)


def test_a_photo_stored_sideways_is_used_upright_as_its_exif_orientation_says(
    ctx: PrepareContext, tmp_path: Path
) -> None:
    from PIL import ImageOps

    # Given a JPEG stored 128×64 whose EXIF says "rotate 90° to view" (a phone's portrait)
    photo = tmp_path / "portrait.jpg"
    stored = Image.new("RGB", (128, 64), "white")
    stored.paste((200, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # the 0th row is the visual right-hand side
    stored.save(photo, format="JPEG", exif=exif.tobytes())
    # Then it is sized as seen, 64 wide and 128 high, and handed to the pipeline upright
    prepared = prepare(ctx, path=str(photo))
    assert (prepared.params["width"], prepared.params["height"]) == (64, 88)
    with Image.open(photo) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    assert upright.size == (64, 128)
    assert load_start_image(photo, 64, 128).tobytes() == upright.tobytes()


def test_transparent_parts_of_a_starting_image_are_seen_on_white(tmp_path: Path) -> None:
    # Given a PNG whose left half is opaque red and right half transparent black
    logo = tmp_path / "logo.png"
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 32, 64))
    image.save(logo)
    # Then the pipeline gets red on white, not red on black
    start = load_start_image(logo, 64, 64)
    assert start.getpixel((10, 10)) == (200, 0, 0)
    assert start.getpixel((50, 10)) == (255, 255, 255)


@pytest.mark.parametrize("transparent", [True, False])
def test_a_mask_marks_what_to_redraw_by_transparency_or_else_by_brightness(
    tmp_path: Path, transparent: bool
) -> None:
    mask = half_mask(tmp_path / "mask.png", (64, 64), transparent=transparent)
    marks = load_mask(mask, 32, 32)
    assert marks.mode == "L" and marks.size == (32, 32)
    assert marks.getpixel((4, 4)) == 0 and marks.getpixel((28, 4)) == 255


def test_an_opaque_black_and_white_mask_with_an_alpha_channel_is_read_by_brightness(
    tmp_path: Path,
) -> None:
    # As an editor exports one: RGBA, every pixel opaque, white where to redraw
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((255, 255, 255, 255), (32, 0, 64, 64))
    mask.save(tmp_path / "mask.png")
    marks = load_mask(tmp_path / "mask.png", 64, 64)
    assert marks.getpixel((4, 4)) == 0 and marks.getpixel((60, 4)) == 255


def test_a_mask_is_uploaded_beside_the_starting_image_and_part_of_the_identity(
    ctx: PrepareContext, tmp_path: Path
) -> None:
    start = picture(tmp_path / "room.png", (128, 64))
    mask = half_mask(tmp_path / "sofa.png", (128, 64), transparent=True)
    prepared = prepare(ctx, path=str(start), mask=str(mask), seed=2)
    keys = [prepared.params["start"]["key"], prepared.params["mask"]["key"]]
    assert prepared.chunks[0].payload == {"seed": 2, "inputs": keys}
    assert prepared.uploads == {keys[0]: start, keys[1]: mask}
    assert prepared.params["mask"]["name"] == "sofa.png"
    # inpainting redraws the marked parts all the way unless told otherwise
    assert prepared.params["strength"] == 1.0
    other = half_mask(tmp_path / "other.png", (128, 64), transparent=False)
    unmasked = prepare(ctx, path=str(start), seed=2, strength=1.0)
    other_mask = prepare(ctx, path=str(start), mask=str(other), seed=2)
    identities = {str(p.chunks[0].identity) for p in (prepared, unmasked, other_mask)}
    assert len(identities) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: half_mask(p, (64, 64), transparent=True),
            r"the mask m\.png is 64×64 and the starting image start\.png 128×64; give a mask",
        ),
        (
            lambda p: Image.new("L", (128, 64), 0).save(p, format="PNG"),
            r"the mask m\.png marks nothing to redraw",
        ),
        (lambda p: p.write_text("no"), r"the mask m\.png could not be read as an image"),
    ],
)
def test_a_mask_that_cannot_mark_the_starting_image_is_refused_naming_it(
    ctx: PrepareContext, tmp_path: Path, make: Any, message: str
) -> None:
    start = picture(tmp_path / "start.png", (128, 64))
    make(tmp_path / "m.png")
    with pytest.raises(InvalidInput, match=message):
        prepare(ctx, path=str(start), mask=str(tmp_path / "m.png"))
