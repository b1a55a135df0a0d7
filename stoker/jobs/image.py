"""image: a prompt → images, with a diffusers text-to-image pipeline.

Plan: one chunk per image; image i of a job uses seed ``seed + i``, so a job of 4
images is 4 tasks that any workers can share, and each image can be reproduced alone.
The seed is chosen at submission when not given, and recorded. Each chunk writes a PNG
that carries its parameters as tEXt chunks; assembly names them ``image-00.png`` …
or re-encodes them as WebP with the parameters in its EXIF ImageDescription.

The default size and the size rule come from the pipeline folder's JSON configs, read
at submission without loading any weights: the UNet's (or transformer's)
``sample_size`` × the VAE's scale factor, and multiples of what the pipeline needs.

With ``path``, a job starts from an image instead of noise (image-to-image,
jobs/start_image.py), and with ``mask`` too redraws only the parts it marks
(inpainting); its default size is then the starting image's proportions at about the
model's default area.
"""

from __future__ import annotations

import inspect
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, JobCancelled, ModelLoadError
from stoker.jobs import start_image
from stoker.jobs.base import (
    NAME_PATTERN,
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    StopCheck,
    SubmitNeed,
    parse_request,
)

if TYPE_CHECKING:
    from stoker.workers.catalog import ModelSpec

MIN_SIDE = 64  # pixels
MAX_SIDE = 2048  # pixels
MAX_SEED = 2**63 - 1
#: EXIF tag of the WebP metadata (ImageDescription).
EXIF_DESCRIPTION = 0x010E
#: Pipelines that do not produce images (served by `mesh`, or not at all).
NOT_IMAGE_PIPELINES = ("ShapEPipeline", "ShapEImg2ImgPipeline")


class ImageRequest(BaseModel):
    """What a user may ask of ``image``."""

    model_config = {"extra": "forbid"}

    prompt: str
    model: str | None = Field(default=None, description="catalog name of a diffusers pipeline")
    negative_prompt: str | None = None
    steps: int = Field(default=25, ge=1, le=200, description="denoising steps")
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=50.0, description="None: the pipeline's default"
    )
    width: int | None = Field(default=None, gt=0, description="pixels; None: model default")
    height: int | None = Field(default=None, gt=0, description="pixels; None: model default")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - 16, description="None: random")
    count: int = Field(default=1, ge=1, le=16, description="images, seeds seed..seed+count-1")
    format: Literal["png", "webp"] = "png"
    path: str | None = Field(
        default=None,
        min_length=1,
        description="a starting image on the submitting machine (image-to-image): the "
        "images are made from it, in its proportions unless width and height are given",
    )
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="with path: how far to move from the starting image, 0 to 1 "
        f"(None: {start_image.DEFAULT_STRENGTH}, with a mask "
        f"{start_image.DEFAULT_INPAINT_STRENGTH})",
    )
    mask: str | None = Field(
        default=None,
        min_length=1,
        description="with path: a picture of its size marking the parts to redraw "
        "(inpainting): fully transparent ones, or in a mask without transparency white ones",
    )
    # Set by a line of a line file (jobs/line_files.py): the job's name in its batch.
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="its name in a batch")


@dataclass(frozen=True)
class Geometry:
    """Image sizes a pipeline takes, in pixels."""

    default_width: int
    default_height: int
    multiple: int  # width and height must be multiples of this


def read_config(spec: ModelSpec, component: str, name: str = "config.json") -> dict[str, Any]:
    """``component/name`` of pipeline ``spec`` as a dict (from its worker's model card
    when its files are elsewhere); ModelLoadError naming the file otherwise."""
    path = spec.path / component / name
    try:
        data = spec.read_json(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not read {path}: {exc}; copy the whole diffusers folder"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object; copy the whole diffusers folder")
    return data


def _sides(sample_size: Any) -> tuple[int, int]:
    if isinstance(sample_size, list | tuple):
        return int(sample_size[0]), int(sample_size[-1])  # (height, width)
    return int(sample_size), int(sample_size)


def pipeline_geometry(spec: ModelSpec, index: dict[str, Any]) -> Geometry:
    """Default size and size multiple of pipeline ``spec``, from its JSON configs only.

    Raises ModelLoadError naming the file when a config cannot be read, and
    InvalidInput when the pipeline has neither a unet nor a transformer.
    """
    vae = read_config(spec, "vae")
    scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    if index.get("unet", [None])[0] is not None:
        denoiser, patch = read_config(spec, "unet"), 1
        sample_size = denoiser.get("sample_size", 64)
    elif index.get("transformer", [None])[0] is not None:
        denoiser = read_config(spec, "transformer")
        patch = int(denoiser.get("patch_size") or 1)
        # As diffusers' transformer pipelines (SD3, PixArt, Flux) do: the default side
        # is sample_size latent pixels, 128 where the config has none (Flux's).
        sample_size = denoiser.get("sample_size") or 128
        if str(index.get("_class_name", "")).startswith("Flux"):
            # Flux packs 2×2 latent patches itself (its config says patch_size 1), so
            # its sides must be multiples of twice the VAE scale.
            patch = max(patch, 2)
    else:
        raise InvalidInput(
            f"{spec.path} is a {index.get('_class_name')} with neither a unet nor a "
            f"transformer; `image` needs a text-to-image pipeline."
        )
    height, width = _sides(sample_size)
    # The patch size sets the multiple, not the default: a latent side must be a
    # whole number of patches. Stable Diffusion's pipelines refuse non-multiples of 8.
    return Geometry(width * scale, height * scale, math.lcm(8, scale * patch))


def side_bounds(multiple: int) -> tuple[int, int]:
    """The smallest and largest valid image side, for sides that are multiples of ``multiple``."""
    return math.ceil(MIN_SIDE / multiple) * multiple, MAX_SIDE // multiple * multiple


def check_side(name: str, value: int, multiple: int) -> int:
    """``value`` if it is a valid image side; InvalidInput naming the nearest valid one."""
    low, high = side_bounds(multiple)
    nearest = min(max((value + multiple // 2) // multiple * multiple, low), high)
    if value % multiple or not low <= value <= high:
        raise InvalidInput(
            f"{name} {value} is not a valid size for this model: sizes are multiples of "
            f"{multiple} from {low} to {high}; the nearest valid {name} is {nearest}."
        )
    return value


def start_size(width: int, height: int, geo: Geometry) -> tuple[int, int]:
    """The size to make images at from a ``width``×``height`` starting image when none is
    given: about the model's default area (what it was trained at), in the starting
    image's proportions, each side valid. A 4032×3024 photo on a 512×512 model: 592×440."""
    scale = math.sqrt(geo.default_width * geo.default_height / (width * height))
    low, high = side_bounds(geo.multiple)

    def snap(side: float) -> int:
        return min(max(round(side / geo.multiple) * geo.multiple, low), high)

    return snap(width * scale), snap(height * scale)


def check_prompt(prompt: str, limit_bytes: int, field: str = "prompt") -> str:
    """The prompt, stripped; InvalidInput when it is empty or over ``limit_bytes``."""
    size = len(prompt.encode("utf-8"))
    if size > limit_bytes:
        raise InvalidInput(
            f"the {field} is {size:,} bytes, over the {limit_bytes:,}-byte limit (max_text_bytes)."
        )
    if not prompt.strip():
        raise InvalidInput(f"the {field} is empty; pass --prompt with some text.")
    return prompt.strip()


def pipeline_class(ctx: PrepareContext, model: str | None, kind: str) -> tuple[Any, str, Any]:
    """(spec, class name, model_index) of diffusers model ``model``; InvalidInput when unset."""
    from stoker.workers.loaders.diffusers import read_model_index

    if not model:
        known = ", ".join(ctx.catalog.names("diffusers")) or "none are configured"
        raise InvalidInput(
            f"name a diffusers model for `{kind}` with --model; known models: {known}."
        )
    spec = ctx.catalog.get(model, backend="diffusers")
    index = read_model_index(spec.path, spec.read_json)
    return spec, str(index.get("_class_name")), index


class ImageCapability:
    kind: str = "image"
    backend: str | None = "diffusers"
    chunk_ext: str = "png"
    chunk_content_type: str = "image/png"
    work_stage: str = "generate"
    engines: tuple[tuple[str, str], ...] = (("diffusers", "image"), ("torch", "image"))
    submit_needs = (SubmitNeed("PIL", "pillow", "reading a starting image", always=False),)

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: ImageRequest = parse_request(request, ImageRequest)
        limit = ctx.settings.max_text_bytes
        prompt = check_prompt(req.prompt, limit)
        negative = None
        if req.negative_prompt and req.negative_prompt.strip():
            negative = check_prompt(req.negative_prompt, limit, "negative_prompt")
        spec, cls, index = pipeline_class(ctx, req.model, self.kind)
        if cls in NOT_IMAGE_PIPELINES:
            raise InvalidInput(
                f"model {req.model!r} is a {cls}, which makes 3D meshes; use `stoker submit mesh`."
            )
        geo = pipeline_geometry(spec, index)
        start = start_image.read_start(req.path, req.strength, req.steps, req.mask)
        width, height = geo.default_width, geo.default_height
        if start is not None:
            width, height = start_size(start.image.width, start.image.height, geo)
        seed = secrets.randbelow(2**32) if req.seed is None else req.seed
        params: dict[str, Any] = {
            "model": req.model,
            "prompt": prompt,
            "negative_prompt": negative,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            "width": check_side("width", req.width or width, geo.multiple),
            "height": check_side("height", req.height or height, geo.multiple),
            "seed": seed,
            "count": req.count,
            "format": req.format,
            **({"name": req.name} if req.name else {}),
        }
        look = {k: params[k] for k in IDENTITY_PARAMS}
        inputs: dict[str, Any] = {}
        uploads: dict[str, Path | bytes] = {}
        if start is not None:
            # Only image-to-image jobs carry these, so text-to-image identities (and the
            # chunks kept under them) stay as they were.
            params.update(start=start.image.record(), strength=start.strength)
            look.update(start=start.image.sha256, strength=start.strength)
            if start.mask is not None:
                params["mask"] = start.mask.record()
                look["mask"] = start.mask.sha256
            inputs = {"inputs": [p.key for p in start.pictures()]}
            uploads = {p.key: p.path for p in start.pictures()}
        chunks = [
            ChunkPlan(
                payload={"seed": seed + i, **inputs},
                identity={"model": spec.fingerprint, **look, "seed": seed + i},
            )
            for i in range(req.count)
        ]
        return Prepared(params=params, model=req.model, chunks=chunks, uploads=uploads)

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        start = mask = None
        size = params["width"], params["height"]
        if "start" in params:
            start = start_image.load_start_image(ctx.inputs[params["start"]["key"]], *size)
        if "mask" in params:
            mask = start_image.load_mask(ctx.inputs[params["mask"]["key"]], *size)
        image = generate_image(model, params, payload["seed"], ctx.should_stop, start, mask)
        image.save(ctx.out, format="PNG", pnginfo=png_info(image_meta(params, payload["seed"])))

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        def name(i: int) -> str:
            return f"image-{i:02d}.{params['format']}"

        def meta(i: int) -> dict[str, Any]:
            return image_meta(params, params["seed"] + i)

        if params["format"] == "png":
            # Each chunk is its output as it is (it carries its tEXt metadata): published
            # by key, never read here.
            count = len(ctx.chunk_files)
            return [ctx.published(i, name(i), "image/png", meta(i)) for i in range(count)]
        artifacts = []
        for i, chunk in enumerate(ctx.chunk_files):  # iterating fetches them side by side
            out = ctx.workdir / name(i)
            save_webp(chunk, out, meta(i))
            artifacts.append(Artifact(out.name, out, "image/webp", meta(i)))
        return artifacts


#: The params that change the pixels (with the model and the seed).
IDENTITY_PARAMS = ("prompt", "negative_prompt", "steps", "guidance_scale", "width", "height")


def image_meta(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The parameters one image was made with: written into the file and the manifest."""
    meta = {
        "prompt": params["prompt"],
        "negative_prompt": params["negative_prompt"],
        "seed": seed,
        "steps": params["steps"],
        "guidance_scale": params["guidance_scale"],
        "model": params["model"],
        "size": f"{params['width']}x{params['height']}",
    }
    if "start" in params:
        meta["start_image"] = params["start"]["name"]
        meta["start_image_sha256"] = params["start"]["sha256"]
        meta["strength"] = params["strength"]
    if "mask" in params:
        meta["mask"] = params["mask"]["name"]
        meta["mask_sha256"] = params["mask"]["sha256"]
    return meta


def png_info(meta: dict[str, Any]) -> Any:
    """PNG tEXt chunks: one per parameter, plus all of them as JSON under "parameters"."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in meta.items():
        info.add_text(key, "" if value is None else str(value))
    info.add_text("parameters", json.dumps(meta, sort_keys=True))
    info.add_text("Software", "stoker")
    return info


def save_webp(png: Path, out: Path, meta: dict[str, Any]) -> None:
    """Re-encode ``png`` as lossless WebP with ``meta`` as JSON in EXIF ImageDescription."""
    from PIL import Image

    with Image.open(png) as image:
        exif = Image.Exif()
        exif[EXIF_DESCRIPTION] = json.dumps(meta, sort_keys=True)
        image.save(out, format="WEBP", lossless=True, exif=exif.tobytes())


def generate_image(
    pipe: Any,
    params: dict[str, Any],
    seed: int,
    should_stop: StopCheck,
    start: Any = None,
    mask: Any = None,
) -> Any:
    """One PIL image from a loaded text-to-image pipeline, seeded with ``seed``; from
    the PIL image ``start`` (already at the job's size) when given, redrawing only what
    the greyscale ``mask`` marks white when that is given too.

    The torch generator lives on the pipeline's device, so a seed gives the same image
    again on the same device and dtype. Raises JobCancelled when ``should_stop()``
    turns true between two denoising steps.
    """
    import torch

    if should_stop():
        raise JobCancelled("the job was cancelled before this image was started")
    generator = torch.Generator(device=str(pipe.device)).manual_seed(seed)
    kwargs: dict[str, Any] = {
        "prompt": params["prompt"],
        "negative_prompt": params["negative_prompt"],
        "num_inference_steps": params["steps"],
        "generator": generator,
        "output_type": "pil",
    }
    if start is None:
        kwargs.update(width=params["width"], height=params["height"])
    else:
        # Image-to-image pipelines take their size from the image itself.
        pipe = start_image.task_pipeline(pipe, params["model"], inpaint=mask is not None)
        kwargs.update(image=start, strength=params["strength"])
        if mask is not None:
            kwargs.update(mask_image=mask, width=params["width"], height=params["height"])
    if params["guidance_scale"] is not None:
        kwargs["guidance_scale"] = params["guidance_scale"]
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        kwargs["callback_on_step_end"] = _stop_between_steps(should_stop)
    return pipe(**kwargs).images[0]


def _stop_between_steps(should_stop: StopCheck) -> Any:
    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        if should_stop():
            raise JobCancelled(f"the job was cancelled at denoising step {step + 1}")
        return tensors

    return on_step_end
