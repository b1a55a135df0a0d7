"""image and mesh: what stoker adds to plain diffusers, same run, same pipelines.

No real image or 3D weights install offline (../shared/MODELS.md), so both sides run
the tiny random pipelines the tests build (tests/diffusers_models.py). Their model
work (~70 ms an image, ~0.4 s a mesh on 2 CPU cores) is far below a real Stable
Diffusion or Shap-E run, so the figure that carries over to real models is stoker's
*added milliseconds per output* (queueing, records, PNG metadata, storage,
manifest), not the ratio.

image (tiny text-to-image pipeline, 64×64, 4 steps):
  1. plain: the pipeline loaded once, one call per seed, each image saved as PNG;
  2. stoker: `image` jobs of ``count`` ≤ 16 (the most one job makes) queued on Redis,
     own redis-server, one `stoker worker --queues image` with the folder preloaded;
     submit to done.
image from a prompt file (``--prompts``: as many distinct prompts, one image each):
  1. plain: one call per prompt, as above;
  2. stoker: the file as one batch, a job per line (jobs/line_files.py), same
     worker set-up; submit to the batch done (its manifest written).
image from a starting image (``--edits``: image-to-image, a 64×64 picture, strength
0.5 of 8 steps, so 4 denoising steps as above):
  1. plain: diffusers' ``AutoPipelineForImage2Image.from_pipe`` of the loaded
     pipeline, one call per seed, each image saved as PNG;
  2. stoker: `image` jobs with ``path`` and ``strength``, as in 2. above (the picture
     is read, hashed and stored once per job at submission, inside the timing).
image with a mask (``--masks``: inpainting the right half of that picture, strength
1.0 of 4 steps):
  1. plain: ``AutoPipelineForInpainting.from_pipe``, one call per seed;
  2. stoker: `image` jobs with ``path`` and ``mask``.
mesh (tiny Shap-E, marching-cubes grid ``--resolution``):
  1. plain: the prior, ``decode_to_mesh``, a coloured trimesh exported to GLB, per prompt;
  2. stoker: one `mesh` job per prompt (GLB, no decimation, as plain), same worker
     set-up; submit to all done.
mesh of a picture (tiny Shap-E image-to-3D, as many 64×64 pictures as meshes):
  1. plain: each picture opened as RGB, then as above with the picture for the prompt;
  2. stoker: one `mesh` job per picture (``path``; read, hashed and stored at
     submission, inside the timing).
Both stoker sides first run one warm-up job (see stoker_side).

Usage: python bench/visual.py [--images 32] [--prompts 32] [--edits 32] [--masks 32]
                              [--meshes 6]
                              [--resolution 64] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.capabilities import wait_all  # noqa: E402
from bench.common import machine, markdown_table, write_section  # noqa: E402
from tests.diffusers_models import tiny_pipelines  # noqa: E402
from tests.servers import redis_server  # noqa: E402

SIDE, STEPS, SEED = 64, 4, 7
#: image-to-image runs int(steps × strength) steps: these make STEPS, as text-to-image.
EDIT_STEPS, STRENGTH = 8, 0.5
#: stoker decimates a mesh over ``max_faces`` (200,000 by default), which plain Shap-E
#: does not: the highest cap keeps both sides doing the same work.
NO_DECIMATION = 2_000_000
MAX_COUNT = 16  # images one job makes (ImageRequest.count)
PROMPT = "a lighthouse at dusk"


def load_pipeline(folder: Path) -> Any:
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_edits(pipe: Any, n: int, start: Path, out: Path, mask: Path | None = None) -> None:
    """``n`` images of PROMPT from the picture at ``start``, seeds SEED, SEED + 1, ...;
    with ``mask``, inpainting what it marks white at strength 1.0."""
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    with Image.open(start) as picture:
        rgb = picture.convert("RGB")
    kwargs: dict[str, Any] = {"strength": STRENGTH, "num_inference_steps": EDIT_STEPS}
    if mask is None:
        edit = AutoPipelineForImage2Image.from_pipe(pipe)
    else:
        edit = AutoPipelineForInpainting.from_pipe(pipe)
        with Image.open(mask) as marks:
            kwargs = {"strength": 1.0, "num_inference_steps": STEPS, "width": SIDE,
                      "height": SIDE, "mask_image": marks.convert("L")}  # fmt: skip
    for i in range(n):
        generator = torch.Generator("cpu").manual_seed(SEED + i)
        image = edit(
            prompt=PROMPT, image=rgb, generator=generator, output_type="pil", **kwargs
        ).images[0]
        image.save(out / f"image-{i:02d}.png", format="PNG")


def plain_images(pipe: Any, n: int, out: Path, prompts: list[str] | None = None) -> None:
    """``n`` images of PROMPT, seeds SEED, SEED + 1, ...; or one of each of ``prompts``
    with seed SEED (a prompt file's default seed)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        generator = torch.Generator("cpu").manual_seed(SEED if prompts else SEED + i)
        image = pipe(
            prompt=prompts[i] if prompts else PROMPT, num_inference_steps=STEPS,
            width=SIDE, height=SIDE, generator=generator, output_type="pil",
        ).images[0]  # fmt: skip
        image.save(out / f"image-{i:02d}.png", format="PNG")


def plain_meshes(
    pipe: Any, n: int, resolution: int, out: Path, pictures: list[Path] | None = None
) -> None:
    """``n`` meshes from prompts, or (an image-to-3D ``pipe``) of ``pictures``."""
    import numpy as np
    import torch
    import trimesh
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        generator = torch.Generator("cpu").manual_seed(SEED + i)
        if pictures is None:
            source, guidance = f"{PROMPT} {i}", 15.0
        else:
            with Image.open(pictures[i % len(pictures)]) as opened:
                source, guidance = opened.convert("RGB"), 3.0
        latents = pipe(
            source, num_inference_steps=STEPS, guidance_scale=guidance,
            generator=generator, output_type="latent",
        ).images  # fmt: skip
        raw = pipe.shap_e_renderer.decode_to_mesh(
            latents[0][None, :], pipe.device, grid_size=resolution
        )
        rgb = np.stack([raw.vertex_channels[c].cpu().numpy() for c in "RGB"], axis=1)
        mesh = trimesh.Trimesh(
            vertices=raw.verts.cpu().numpy(),
            faces=raw.faces.cpu().numpy(),
            vertex_colors=(np.clip(rgb, 0, 1) * 255).round().astype(np.uint8),
            process=False,
        )
        mesh.export(out / f"mesh-{i}.glb", file_type="glb")


def stoker_side(
    kind: str,
    folder: Path,
    requests: list[dict[str, Any]],
    redis_url: str,
    data_dir: Path,
    prompt_file: Path | None = None,
) -> float:
    """Seconds from submitting ``requests`` to the last one succeeded, on one worker
    started (``folder`` preloaded) before the first submit; with ``prompt_file``, from
    reading it (the first of ``requests`` its defaults) to its batch succeeded.

    A warm-up job runs first: a worker finds a new model path's queue at its next
    scheduler tick (``scheduler_interval_s``, 0.5 s), once per path, which would
    otherwise be counted here as a per-output cost."""
    import redis

    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    redis.Redis.from_url(redis_url).flushall()
    data_dir.mkdir(parents=True)
    dep = Deployment(
        env={"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)}, workdir=data_dir
    )
    try:
        dep.start_worker(kind, "--preload", str(folder))
        with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir)) as client:
            warm_up = {k: v for k, v in requests[0].items() if k != "count"}
            wait_all(client, [client.submit(kind, warm_up | {"seed": 1}).id], timeout_s=600)
            start = time.perf_counter()
            if prompt_file is None:
                ids = [client.submit(kind, r).id for r in requests]
            else:
                ids = [client.submit_lines(kind, prompt_file, requests[0]).id]
            wait_all(client, ids, timeout_s=3600)
            took = time.perf_counter() - start
            if prompt_file is not None and (failed := client.item_errors(ids[0])):
                raise RuntimeError(f"{len(failed)} lines failed, the first: {failed[0]}")
            return took
    finally:
        dep.stop_all()


def interleaved(
    plain: Callable[[int], None], stoker: Callable[[int], float], repeats: int
) -> tuple[float, float, list[tuple[float, float]]]:
    """Medians of ``repeats`` (plain, stoker) pairs, and each pair's seconds."""
    pairs = []
    for r in range(repeats):
        start = time.perf_counter()
        plain(r)
        pairs.append((time.perf_counter() - start, stoker(r)))
    return statistics.median(p for p, _ in pairs), statistics.median(s for _, s in pairs), pairs


def table(
    what: str, n: int, unit: str, plain_s: float, stoker_s: float, pairs: list[tuple[float, float]]
) -> str:
    rows = [
        [f"plain diffusers, one call per {unit}", f"{plain_s:.2f}", f"{plain_s / n * 1000:.0f}",
         "—", "1.00"],
        ["stoker, 1 worker (preloaded)", f"{stoker_s:.2f}", f"{stoker_s / n * 1000:.0f}",
         f"{(stoker_s - plain_s) / n * 1000:+.0f}", f"{plain_s / stoker_s:.2f}"],
    ]  # fmt: skip
    header = [what, "seconds", f"ms per {unit}", f"stoker adds, ms per {unit}", "× plain"]
    each = ", ".join(f"{p:.2f}/{s:.2f}" for p, s in pairs)
    return (
        markdown_table(header, rows)
        + f"\n\nMedians of {len(pairs)} interleaved pairs (plain/stoker seconds: {each}).\n"
    )


def image_section(folder: Path, n: int, redis_url: str, work: Path, repeats: int) -> str:
    pipe = load_pipeline(folder)
    plain_images(pipe, 2, work / "warm")  # as warm as the preloaded worker
    request = {"prompt": PROMPT, "model": str(folder), "steps": STEPS}
    request |= {"width": SIDE, "height": SIDE}
    # Seeds SEED, SEED + 1, ... as on the plain side, in jobs of at most MAX_COUNT images.
    requests = [
        request | {"seed": SEED + first, "count": min(MAX_COUNT, n - first)}
        for first in range(0, n, MAX_COUNT)
    ]
    plain_s, stoker_s, pairs = interleaved(
        lambda r: plain_images(pipe, n, work / f"plain-img-{r}"),
        lambda r: stoker_side("image", folder, requests, redis_url, work / f"img-{r}"),
        repeats,
    )
    what = f"image: {n} × {SIDE}×{SIDE}, {STEPS} steps"
    return table(what, n, "image", plain_s, stoker_s, pairs)


def prompts_section(folder: Path, n: int, redis_url: str, work: Path, repeats: int) -> str:
    pipe = load_pipeline(folder)
    plain_images(pipe, 2, work / "warm")
    prompts = [f"{PROMPT}, view {i}" for i in range(n)]
    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    # (the prompt: for the warm-up job; each line replaces it)
    defaults = {
        "prompt": PROMPT,
        "model": str(folder),
        "steps": STEPS,
        "width": SIDE,
        "height": SIDE,
    }
    plain_s, stoker_s, pairs = interleaved(
        lambda r: plain_images(pipe, n, work / f"plain-prompts-{r}", prompts),
        lambda r: stoker_side(
            "image",
            folder,
            [defaults | {"seed": SEED}],
            redis_url,
            work / f"prompts-{r}",
            prompt_file,
        ),
        repeats,
    )
    what = f"image --prompts: {n} lines, 1 image each"
    return table(what, n, "image", plain_s, stoker_s, pairs)


def edit_section(
    folder: Path, n: int, redis_url: str, work: Path, repeats: int, *, masked: bool = False
) -> str:
    """Images from a starting picture (``masked``: inpainting its right half)."""
    from PIL import Image

    pipe = load_pipeline(folder)
    start, mask = work / "start.png", work / "mask.png"
    picture = Image.new("RGB", (SIDE, SIDE), "teal")
    picture.paste((255, 255, 255), (SIDE // 2, 0, SIDE, SIDE))
    picture.save(start)
    marks = Image.new("L", (SIDE, SIDE), 0)
    marks.paste(255, (SIDE // 2, 0, SIDE, SIDE))
    marks.save(mask)
    used = mask if masked else None
    plain_edits(pipe, 2, start, work / "warm", used)
    request = {"prompt": PROMPT, "model": str(folder), "path": str(start)}
    request |= {"width": SIDE, "height": SIDE}
    if masked:
        request |= {"mask": str(mask), "steps": STEPS}  # strength 1.0, the default
    else:
        request |= {"strength": STRENGTH, "steps": EDIT_STEPS}
    requests = [
        request | {"seed": SEED + first, "count": min(MAX_COUNT, n - first)}
        for first in range(0, n, MAX_COUNT)
    ]
    tag = "mask" if masked else "edit"
    plain_s, stoker_s, pairs = interleaved(
        lambda r: plain_edits(pipe, n, start, work / f"plain-{tag}-{r}", used),
        lambda r: stoker_side("image", folder, requests, redis_url, work / f"{tag}-{r}"),
        repeats,
    )
    if masked:
        what = f"image --image --mask: {n} × {SIDE}×{SIDE}, half redrawn, {STEPS} steps"
    else:
        what = f"image --image: {n} × {SIDE}×{SIDE}, strength {STRENGTH} of {EDIT_STEPS} steps"
    return table(what, n, "image", plain_s, stoker_s, pairs)


def mesh_section(
    folder: Path,
    n: int,
    resolution: int,
    redis_url: str,
    work: Path,
    repeats: int,
    *,
    from_pictures: bool = False,
) -> str:
    """Meshes from prompts, or (``from_pictures``, an image-to-3D ``folder``) of as many
    pictures, each its own colour."""
    from PIL import Image

    pipe = load_pipeline(folder)
    pictures = None
    if from_pictures:
        pictures = [work / f"object-{i}.png" for i in range(n)]
        for i, path in enumerate(pictures):
            Image.new("RGB", (SIDE, SIDE), (40 * i % 256, 90, 200)).save(path)
    plain_meshes(pipe, 1, resolution, work / "warm", pictures)
    base = {"model": str(folder), "steps": STEPS, "resolution": resolution, "format": "glb",
            "max_faces": NO_DECIMATION}  # fmt: skip
    requests = [
        base
        | {"seed": SEED + i}
        | ({"prompt": f"{PROMPT} {i}"} if pictures is None else {"path": str(pictures[i])})
        for i in range(n)
    ]
    tag = "mesh-picture" if from_pictures else "mesh"
    plain_s, stoker_s, pairs = interleaved(
        lambda r: plain_meshes(pipe, n, resolution, work / f"plain-{tag}-{r}", pictures),
        lambda r: stoker_side("mesh", folder, requests, redis_url, work / f"{tag}-{r}"),
        repeats,
    )
    source = f"{n} pictures {SIDE}×{SIDE}" if from_pictures else f"{n} prompts"
    what = f"mesh{' --image' if from_pictures else ''}: {source}, grid {resolution}³, GLB"
    return table(what, n, "mesh", plain_s, stoker_s, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=32, help="lines of the prompt file")
    parser.add_argument("--edits", type=int, default=32, help="images from a starting image")
    parser.add_argument("--masks", type=int, default=32, help="images inpainted with a mask")
    parser.add_argument("--meshes", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        work = Path(tmp)
        tiny = tiny_pipelines(work / "models")
        parts = [
            image_section(tiny.image, args.images, redis_url, work, args.repeats),
            prompts_section(tiny.image, args.prompts, redis_url, work, args.repeats),
            edit_section(tiny.image, args.edits, redis_url, work, args.repeats),
            edit_section(tiny.image, args.masks, redis_url, work, args.repeats, masked=True),
            mesh_section(tiny.mesh, args.meshes, args.resolution, redis_url, work, args.repeats),
            mesh_section(
                tiny.mesh_from_picture,
                args.meshes,
                args.resolution,
                redis_url,
                work,
                args.repeats,
                from_pictures=True,
            ),
        ]
    for part in parts:
        print(part)
    command = "python bench/visual.py " + " ".join(sys.argv[1:])
    if os.environ.get("TMPDIR"):
        command = f"TMPDIR={os.environ['TMPDIR']} {command}"
    body = f"Command: `{command.strip()}` on {machine()}.\n\n" + "\n".join(parts)
    if not args.no_write:
        write_section("visual", body)


if __name__ == "__main__":
    main()
