"""`stoker submit|run image` and `stoker submit|run mesh`: diffusers pipelines.

``--model`` is a catalog name (``[models.NAME] backend = "diffusers"``) or a pipeline
folder (one that holds model_index.json). `stoker run` adds the folder to this
process's settings (its in-process worker shares them) as a model named after it.
`stoker submit` records the folder's absolute path: workers load it from that path,
so it must exist there too (the same machine or a shared filesystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import DeviceOpt, OutOpt, PriorityOpt, run_app, settings_of, submit_app
from stoker.cli.capabilities import run_job, submit_job
from stoker.config import ModelEntry

PromptOpt = Annotated[str, typer.Option("--prompt", help="What to make.")]
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
ResolutionOpt = Annotated[
    int | None, typer.Option("--resolution", help="Marching-cubes grid per side (16-192).")
]
MaxFacesOpt = Annotated[int | None, typer.Option("--max-faces", help="Decimate above this.")]
MeshFormatOpt = Annotated[str, typer.Option("--format", help="glb, ply or obj.")]


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


def _image_request(prompt: str, model: str, **options: Any) -> dict[str, Any]:
    return _drop_unset({"prompt": prompt, "model": model, **options})


@submit_app.command("image")
def submit_image(
    ctx: typer.Context,
    prompt: PromptOpt,
    model: ModelOpt,
    negative_prompt: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    fmt: ImageFormatOpt = "png",
    priority: PriorityOpt = "normal",
) -> None:
    """Queue images from a prompt: one task per image, seeds seed, seed+1, ..."""
    request = _image_request(
        prompt,
        model_name(ctx, model, in_process=False),
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=seed,
        count=count,
        format=fmt,
    )
    submit_job(ctx, "image", request, priority)


@run_app.command("image")
def run_image(
    ctx: typer.Context,
    prompt: PromptOpt,
    model: ModelOpt,
    negative_prompt: NegativeOpt = None,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    fmt: ImageFormatOpt = "png",
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Make images on this machine; they go to --out."""
    request = _image_request(
        prompt,
        model_name(ctx, model, in_process=True),
        negative_prompt=negative_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
        seed=seed,
        count=count,
        format=fmt,
    )
    run_job(ctx, "image", request, out, device)


@submit_app.command("mesh")
def submit_mesh(
    ctx: typer.Context,
    prompt: PromptOpt,
    model: ModelOpt,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    resolution: ResolutionOpt = None,
    max_faces: MaxFacesOpt = None,
    fmt: MeshFormatOpt = "glb",
    priority: PriorityOpt = "normal",
) -> None:
    """Queue a 3D mesh from a prompt (a Shap-E pipeline)."""
    request = _image_request(
        prompt,
        model_name(ctx, model, in_process=False),
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        resolution=resolution,
        max_faces=max_faces,
        format=fmt,
    )
    submit_job(ctx, "mesh", request, priority)


@run_app.command("mesh")
def run_mesh(
    ctx: typer.Context,
    prompt: PromptOpt,
    model: ModelOpt,
    steps: StepsOpt = None,
    guidance_scale: GuidanceOpt = None,
    seed: SeedOpt = None,
    resolution: ResolutionOpt = None,
    max_faces: MaxFacesOpt = None,
    fmt: MeshFormatOpt = "glb",
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Make a 3D mesh on this machine; it goes to --out."""
    request = _image_request(
        prompt,
        model_name(ctx, model, in_process=True),
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        resolution=resolution,
        max_faces=max_faces,
        format=fmt,
    )
    run_job(ctx, "mesh", request, out, device)
