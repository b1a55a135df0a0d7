"""`stoker submit|run image` and `stoker submit|run mesh`: diffusers pipelines.

Both take pictures with ``--image``: a file, or a folder or s3:// prefix of them
(a batch, a job per picture): image's starting images, mesh's objects to model.

``--model`` is a catalog name (``[models.NAME] backend = "diffusers"``) or a pipeline
folder (one that holds model_index.json). `stoker run` adds the folder to this
process's settings (its in-process worker shares them) as a model named after it.
`stoker submit` records the folder's absolute path: workers load it from that path,
so it must exist there too (the same machine or a shared filesystem).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import (
    DeviceOpt,
    OutOpt,
    PriorityOpt,
    parse_priority,
    run_app,
    settings_of,
    submit_app,
)
from stoker.cli.capabilities import run_with, submit_with
from stoker.config import ModelEntry, Priority
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord
from stoker.storage.sources import is_s3_url

PromptOpt = Annotated[str | None, typer.Option("--prompt", help="What to make.")]
PromptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help="A file of prompts, a job each, as one batch: one per line, or JSONL lines "
        '{"prompt", "name"?, "seed"?, ...}. The other options are every line\'s defaults.',
    ),
]
ModelOpt = Annotated[
    str, typer.Option("--model", help="diffusers model name (`stoker models`) or pipeline folder.")
]
NegativeOpt = Annotated[str | None, typer.Option("--negative-prompt", help="What to avoid.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Denoising steps.")]
GuidanceOpt = Annotated[
    float | None, typer.Option("--guidance-scale", help="Prompt strength; model default if unset.")
]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Pixels; model default if unset.")]
HeightOpt = Annotated[int | None, typer.Option("--height", help="Pixels; model default if unset.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random if unset (and recorded).")]
CountOpt = Annotated[int, typer.Option("--count", help="Images, seeds seed..seed+count-1.")]
ImageFormatOpt = Annotated[str, typer.Option("--format", help="png or webp.")]
StartImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image",
        help="Start from this picture (image-to-image): PNG, JPEG, WebP...; or from each "
        "picture of a folder or s3:// prefix (one batch, a job per picture). Its "
        "proportions at the model's size unless --width/--height say otherwise.",
    ),
]
StrengthOpt = Annotated[
    float | None,
    typer.Option(
        "--strength",
        help="With --image: how far to move from it, 0-1 (default 0.8; 1.0 with --mask).",
    ),
]
MaskOpt = Annotated[
    str | None,
    typer.Option(
        "--mask",
        help="With --image: redraw only what this picture of its size marks (inpainting): "
        "its transparent parts, or in a mask without transparency its white parts.",
    ),
]
ResolutionOpt = Annotated[
    int | None, typer.Option("--resolution", help="Marching-cubes grid per side (16-192).")
]
MaxFacesOpt = Annotated[int | None, typer.Option("--max-faces", help="Decimate above this.")]
MeshFormatOpt = Annotated[str, typer.Option("--format", help="glb, ply or obj.")]
MeshImageOpt = Annotated[
    str | None,
    typer.Option(
        "--image",
        help="A picture of the object to model (an image-to-3D model, ShapEImg2ImgPipeline; "
        "best one object on a plain background); or each picture of a folder or s3:// "
        "prefix (one batch, a mesh per picture).",
    ),
]


def _drop_unset(request: dict[str, Any]) -> dict[str, Any]:
    """The request without unset options, so the capability's defaults apply."""
    return {k: v for k, v in request.items() if v is not None}


def model_name(ctx: typer.Context, model: str, in_process: bool) -> str:
    """``model`` as the job's model: a catalog name as it is; a pipeline folder as its
    absolute path, or with ``in_process`` as a diffusers model named after the folder,
    added to this process's settings."""
    settings = settings_of(ctx)
    folder = Path(model).expanduser()
    if model in settings.models or not (folder / "model_index.json").is_file():
        return model  # a name (the catalog says whether it exists), or a path to check
    if not in_process:
        return str(folder.resolve())
    name = folder.resolve().name
    known = settings.models.get(name)
    if known is not None and known.path.expanduser().resolve() != folder.resolve():
        name = str(folder.resolve())  # the folder's name is taken by another model
    settings.models[name] = ModelEntry(backend="diffusers", path=folder.resolve())
    return name


Submit = Callable[[Any], JobRecord]


def _submitter(
    kind: str,
    prompt: str | None,
    prompts: Path | None,
    request: dict[str, Any],
    priority: Priority,
    picture: bool = False,
) -> Submit:
    """How to submit ``request`` (the options, unset ones dropped): one job for
    ``--prompt`` (or, with ``picture``, for mesh's ``--image`` alone); for ``--prompts``,
    one batch of a job per line of the file (read when submitted), each line on top of
    ``request`` (jobs/line_files.py)."""
    both, neither = None not in (prompt, prompts), prompt is None and prompts is None
    if both or (neither and not picture):
        also = ", or --image with a picture of the object" if kind == "mesh" else ""
        raise InvalidInput(
            f"give --prompt, or --prompts with a file of prompts{also}, for `{kind}`."
        )
    options = _drop_unset(request)
    if prompts is None:
        job = {**options, **({} if prompt is None else {"prompt": prompt})}
        return lambda client: client.submit(kind, job, priority=priority)
    file = prompts
    return lambda client: client.submit_lines(kind, file, options, priority=priority)


def _picture_submitter(
    kind: str,
    prompt: str | None,
    prompts: Path | None,
    image: str | None,
    request: dict[str, Any],
    priority: Priority,
) -> Submit:
    """As :func:`_submitter`, from the picture ``image`` when given (image's starting
    image; the object mesh models); for a folder or s3:// prefix of pictures, one batch
    of a job per picture (each named after its path, start_image.picture_names), image's
    all from one ``prompt``."""
    if image is None or not _is_picture_folder(image):
        picture = kind == "mesh" and image is not None  # a picture is mesh's whole input
        return _submitter(kind, prompt, prompts, {**request, "path": image}, priority, picture)
    if prompts is not None or (kind == "image") == (prompt is None):
        raise InvalidInput(
            "--image FOLDER makes each picture from one --prompt; for a prompt per "
            'picture, give --prompts a JSONL file whose lines each name a "path".'
            if kind == "image"
            else "--image FOLDER makes a mesh of each picture, which is the whole input of "
            "an image-to-3D model; leave out --prompt and --prompts."
        )
    options, target = _drop_unset(request), image
    text = {} if prompt is None else {"prompt": prompt}

    def submit(client: Any) -> JobRecord:
        from stoker.jobs.start_image import IMAGE_EXTENSIONS, picture_names

        found = client.files_under(target, IMAGE_EXTENSIONS)
        if not found:
            raise InvalidInput(
                f"{target} holds no pictures ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                f"--image FILE takes a single one."
            )
        names = picture_names([name for name, _ in found])
        requests = [
            {**options, **text, "path": location, "name": name}
            for name, (_, location) in zip(names, found, strict=True)
        ]
        return client.submit_batch(
            kind, requests, source=target, priority=priority, unit="pictures"
        )

    return submit


def _is_picture_folder(target: str) -> bool:
    """Whether ``--image`` names a folder or s3:// prefix of pictures, not one picture."""
    from stoker.jobs.start_image import IMAGE_EXTENSIONS

    if is_s3_url(target):
        return Path(target).suffix.lower() not in IMAGE_EXTENSIONS
    return Path(target).is_dir()


@submit_app.command("image")
def submit_image(
    ctx: typer.Context,
    model: ModelOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    negative_prompt: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    fmt: ImageFormatOpt = "png",
    image: StartImageOpt = None,
    strength: StrengthOpt = None,
    mask: MaskOpt = None,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue images from a prompt, or from each line of a file of them (--prompts);
    from a picture, or from each picture of a folder (--image).

    One task per image, seeds seed, seed+1, ...; a file or a folder is one batch, a job
    per line or picture."""
    request = dict(
        model=model_name(ctx, model, in_process=False),
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=seed,
        count=count,
        format=fmt,
        strength=strength,
        mask=mask,
    )
    submit = _picture_submitter("image", prompt, prompts, image, request, parse_priority(priority))
    submit_with(ctx, submit)


@run_app.command("image")
def run_image(
    ctx: typer.Context,
    model: ModelOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    negative_prompt: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    fmt: ImageFormatOpt = "png",
    image: StartImageOpt = None,
    strength: StrengthOpt = None,
    mask: MaskOpt = None,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Make images on this machine (--prompts: a file of them; --image: from a picture
    or a folder of them); they go to --out."""
    request = dict(
        model=model_name(ctx, model, in_process=True),
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=seed,
        count=count,
        format=fmt,
        strength=strength,
        mask=mask,
    )
    submit = _picture_submitter("image", prompt, prompts, image, request, "interactive")
    run_with(ctx, "image", submit, out, device)


@submit_app.command("mesh")
def submit_mesh(
    ctx: typer.Context,
    model: ModelOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    resolution: ResolutionOpt = None,
    max_faces: MaxFacesOpt = None,
    fmt: MeshFormatOpt = "glb",
    image: MeshImageOpt = None,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue a 3D mesh from a prompt, or one per line of a file of them (--prompts); or
    of the object in a picture, or in each picture of a folder (--image).

    The model is a Shap-E pipeline: text-to-3D for prompts, image-to-3D for pictures; a
    file or a folder is one batch, a job per line or picture."""
    request = dict(
        model=model_name(ctx, model, in_process=False),
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        resolution=resolution,
        max_faces=max_faces,
        format=fmt,
    )
    submit = _picture_submitter("mesh", prompt, prompts, image, request, parse_priority(priority))
    submit_with(ctx, submit)


@run_app.command("mesh")
def run_mesh(
    ctx: typer.Context,
    model: ModelOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    resolution: ResolutionOpt = None,
    max_faces: MaxFacesOpt = None,
    fmt: MeshFormatOpt = "glb",
    image: MeshImageOpt = None,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Make a 3D mesh on this machine (--prompts: one per line of a file; --image: of
    the object in a picture, or in each of a folder); to --out."""
    request = dict(
        model=model_name(ctx, model, in_process=True),
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        resolution=resolution,
        max_faces=max_faces,
        format=fmt,
    )
    submit = _picture_submitter("mesh", prompt, prompts, image, request, "interactive")
    run_with(ctx, "mesh", submit, out, device)
