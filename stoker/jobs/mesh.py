"""mesh: a prompt → a 3D mesh (GLB, PLY or OBJ), with a diffusers Shap-E pipeline; or
a picture of an object → its mesh, with Shap-E's image-to-3D pipeline.

The model says which: a ``ShapEPipeline`` (openai/shap-e) reads a prompt, a
``ShapEImg2ImgPipeline`` (openai/shap-e-img2img) a picture (``path``), best of one
object on a plain background. The picture is read whole at submission and stored by
content, as image's starting image is (jobs/start_image.py), and its digest is part
of the chunk's identity.

Plan: one chunk. The Shap-E prior denoises a latent; the renderer turns the latent
into a signed-distance field on a ``resolution``³ grid and runs marching cubes on it
(diffusers' ``decode_to_mesh``, called directly so the grid size can be chosen). The
mesh is kept a sensible size: the grid is capped at :data:`MAX_RESOLUTION`, and a
mesh over ``max_faces`` triangles is decimated: quadric edge collapses with
fast-simplification (the ``mesh`` extra), or, when it is missing, a cruder vertex
clustering (logged). The chunk is a GLB with vertex colours, and its size and bounds
are kept as the chunk's notes: a GLB job (the default) publishes the chunk as it is
(a hard link on local storage, a server-side copy on S3), with no mesh parsed or
written again (for a 200,000-face mesh, loading a PLY chunk back and writing the GLB
cost ~95 ms); PLY and OBJ are converted from it with trimesh.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, JobCancelled, MissingDependency
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
from stoker.jobs.image import MAX_SEED, check_prompt, pipeline_class

MAX_RESOLUTION = 192  # marching-cubes grid cells per side; 192³ SDF queries ≈ 7 M
#: Shap-E's pipelines: from a prompt, and from a picture.
FROM_TEXT, FROM_PICTURE = "ShapEPipeline", "ShapEImg2ImgPipeline"
SHAP_E_PIPELINES = (FROM_TEXT, FROM_PICTURE)
#: Guidance when none is asked for: the values of diffusers' Shap-E examples (the
#: image prior is trained to follow its picture closely; more oversaturates).
DEFAULT_GUIDANCE = {FROM_TEXT: 15.0, FROM_PICTURE: 3.0}
CONTENT_TYPES = {"glb": "model/gltf-binary", "ply": "application/ply", "obj": "model/obj"}

log = logging.getLogger(__name__)


class MeshRequest(BaseModel):
    """What a user may ask of ``mesh``."""

    model_config = {"extra": "forbid"}

    prompt: str | None = Field(default=None, description="what to make (a text-to-3D model)")
    path: str | None = Field(
        default=None,
        min_length=1,
        description="a picture of the object on the submitting machine (an image-to-3D "
        "model, ShapEImg2ImgPipeline)",
    )
    model: str | None = Field(default=None, description="catalog name of a Shap-E pipeline")
    steps: int = Field(default=64, ge=1, le=200, description="denoising steps of the prior")
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=50.0, description="None: 15 from a prompt, 3 from a picture"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="None: random")
    resolution: int = Field(
        default=128, ge=16, le=MAX_RESOLUTION, description="marching-cubes grid per side"
    )
    max_faces: int = Field(default=200_000, ge=1_000, le=2_000_000, description="decimate above")
    format: Literal["glb", "ply", "obj"] = "glb"
    # Set by a line of a line file (jobs/line_files.py): the job's name in its batch.
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="its name in a batch")


def import_trimesh() -> Any:
    try:
        import trimesh
    except ImportError as exc:
        raise MissingDependency("trimesh", "mesh", "Building 3D meshes") from exc
    return trimesh


class MeshCapability:
    kind: str = "mesh"
    backend: str | None = "diffusers"
    chunk_ext: str = "glb"
    chunk_content_type: str = CONTENT_TYPES["glb"]
    chunk_notes: bool = True  # the mesh's size and bounds, for the manifest
    work_stage: str = "generate"
    engines: tuple[tuple[str, str], ...] = (("diffusers", "image"), ("trimesh", "mesh"))
    submit_needs = (SubmitNeed("PIL", "pillow", "reading a picture to model", always=False),)

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: MeshRequest = parse_request(request, MeshRequest)
        spec, cls, _ = pipeline_class(ctx, req.model, self.kind)
        if cls not in SHAP_E_PIPELINES:
            raise InvalidInput(
                f"model {req.model!r} is a {cls}; `mesh` needs a Shap-E pipeline "
                f"({FROM_TEXT} for prompts, {FROM_PICTURE} for pictures). "
                f"Use `stoker submit image` for image models."
            )
        params: dict[str, Any] = {
            "model": req.model,
            "steps": req.steps,
            "guidance_scale": (
                DEFAULT_GUIDANCE[cls] if req.guidance_scale is None else req.guidance_scale
            ),
            "seed": secrets.randbelow(2**32) if req.seed is None else req.seed,
            "resolution": req.resolution,
            "max_faces": req.max_faces,
            "format": req.format,
        }
        look = {k: v for k, v in params.items() if k not in ("model", "format")}
        payload: dict[str, Any] = {}
        uploads: dict[str, Path | bytes] = {}
        if cls == FROM_PICTURE:
            # The picture's digest takes the prompt's place in the identity; a text
            # job's identity is what it always was.
            picture = _read_picture(req)
            params["start"], look["start"] = picture.record(), picture.sha256
            payload = {"inputs": [picture.key]}
            uploads = {picture.key: picture.path}
        else:
            params["prompt"] = look["prompt"] = _read_prompt(req, ctx.settings.max_text_bytes)
        if req.name:
            params["name"] = req.name
        chunk = ChunkPlan(payload=payload, identity={"model": spec.fingerprint, **look})
        return Prepared(params=params, model=req.model, chunks=[chunk], uploads=uploads)

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        picture = None
        if "start" in params:
            path = ctx.inputs[params["start"]["key"]]
            picture = on_white_square(start_image.load_start_image(path))
        raw = generate_raw_mesh(model, params, ctx.should_stop, picture)
        mesh = limit_faces(to_trimesh(raw, params), params["max_faces"])
        mesh.export(ctx.out, file_type="glb")
        ctx.notes.update(shape_of(mesh))

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        fmt = params["format"]
        shape = ctx.chunk_notes[0] if ctx.chunk_notes else {}
        name = f"mesh.{fmt}"
        if fmt == "glb" and "faces" in shape:
            artifact = ctx.published(0, name, CONTENT_TYPES[fmt])
        else:  # another format, or a chunk without notes: parse it
            out = ctx.workdir / name
            artifact = Artifact(name, out, CONTENT_TYPES[fmt])
            trimesh = import_trimesh()
            chunk = ctx.chunk_files[0]  # fetched only here: a published GLB is not read
            mesh = trimesh.load(chunk, file_type="glb", force="mesh", process=False)
            mesh.export(out, file_type=fmt)
            shape = shape_of(mesh)
        source = {"prompt": params["prompt"]} if "prompt" in params else {
            "start_image": params["start"]["name"],
            "start_image_sha256": params["start"]["sha256"],
        }  # fmt: skip
        meta = {
            **shape,
            **source,
            "seed": params["seed"],
            "steps": params["steps"],
            "guidance_scale": params["guidance_scale"],
            "resolution": params["resolution"],
            "model": params["model"],
        }
        return [replace(artifact, meta=meta)]


def _read_prompt(req: MeshRequest, limit: int) -> str:
    """The prompt of a text-to-3D job; InvalidInput when there is none, or a picture."""
    if req.path is not None:
        raise InvalidInput(
            f"model {req.model!r} makes meshes from text ({FROM_TEXT}); a picture (--image) "
            f"needs an image-to-3D Shap-E pipeline ({FROM_PICTURE}, openai/shap-e-img2img).",
            "path",
        )
    if req.prompt is None:
        raise InvalidInput(f"model {req.model!r} makes meshes from text; give --prompt.", "prompt")
    return check_prompt(req.prompt, limit)


def _read_picture(req: MeshRequest) -> start_image.Picture:
    """The picture of an image-to-3D job, read whole; InvalidInput when there is none,
    it is not an image, or a prompt was given (this pipeline reads none)."""
    if req.prompt is not None:
        raise InvalidInput(
            f"model {req.model!r} makes meshes from a picture ({FROM_PICTURE}) and reads no "
            f"prompt; give --image alone, or a text-to-3D model ({FROM_TEXT}) for a prompt.",
            "prompt",
        )
    if req.path is None:
        raise InvalidInput(
            f"model {req.model!r} makes meshes from a picture; give one with --image (path).",
            "path",
        )
    return start_image.read_picture(Path(req.path), "picture", "path")


def on_white_square(picture: Any) -> Any:
    """The RGB PIL ``picture`` centred on a white square. Shap-E's image processor
    crops the middle square of what it is given (then scales it to its encoder's
    224×224), which would cut the sides off a wide photo's object; white is the
    background the image-to-3D model was trained on."""
    from PIL import Image

    side = max(picture.size)
    if picture.size == (side, side):
        return picture
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    return square


def shape_of(mesh: Any) -> dict[str, Any]:
    """Vertex and face counts and the bounding box of a trimesh, JSON-safe.

    The box is trimesh's (that of the vertices the faces use), computed here: trimesh's
    ``mesh.bounds`` first hashes every array of the mesh to check its cache, which
    took ~55 ms of a 10 MB mesh, a tenth of the tiny pipeline's whole mesh."""
    import numpy as np

    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    seen = vertices[used] if used.any() else vertices
    corners = (seen.min(axis=0), seen.max(axis=0)) if len(seen) else ((0.0,) * 3,) * 2
    return {
        "vertices": len(vertices),
        "faces": len(faces),
        "bounds": [[round(float(c), 6) for c in corner] for corner in corners],
    }


def generate_raw_mesh(
    pipe: Any, params: dict[str, Any], should_stop: StopCheck, picture: Any = None
) -> Any:
    """Shap-E's MeshDecoderOutput for the prompt, or for the PIL image ``picture`` on an
    image-to-3D pipeline (prior, then marching cubes).

    Raises JobCancelled when ``should_stop()`` turns true between the two stages, and
    InvalidInput when the field has no surface at all (an empty mesh).
    """
    import torch

    if should_stop():
        raise JobCancelled("the job was cancelled before the mesh was started")
    device = pipe.device
    generator = torch.Generator(device=str(device)).manual_seed(params["seed"])
    latents = pipe(
        params["prompt"] if picture is None else picture,
        num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        generator=generator,
        output_type="latent",
    ).images
    if should_stop():
        raise JobCancelled("the job was cancelled before the mesh was extracted")
    try:
        return pipe.shap_e_renderer.decode_to_mesh(
            latents[0][None, :], device, grid_size=params["resolution"]
        )
    except RuntimeError as exc:
        # diffusers concatenates an empty list of vertex colours when marching cubes
        # found no surface; that is the only way it reports an empty mesh.
        if "non-empty" in str(exc):
            raise empty_mesh_error(params) from exc
        raise


def empty_mesh_error(params: dict[str, Any]) -> InvalidInput:
    source = "prompt" if "prompt" in params else "picture"
    return InvalidInput(
        f"the model made an empty mesh (no triangles) for this {source} with seed "
        f"{params['seed']} at resolution {params['resolution']}; try another --seed or "
        f"{source}, or a higher --resolution."
    )


def to_trimesh(raw: Any, params: dict[str, Any]) -> Any:
    """A trimesh.Trimesh of Shap-E's mesh, with 8-bit vertex colours when it has them.

    Raises InvalidInput when the mesh has no triangles.
    """
    import numpy as np

    trimesh = import_trimesh()
    faces = raw.faces.detach().cpu().numpy().astype(np.int64)
    if len(faces) == 0:
        raise empty_mesh_error(params)
    verts = raw.verts.detach().cpu().float().numpy()
    colors = None
    channels = raw.vertex_channels or {}
    if all(c in channels for c in "RGB"):
        rgb = np.stack([channels[c].detach().cpu().float().numpy() for c in "RGB"], axis=1)
        colors = (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=colors, process=False)


def limit_faces(mesh: Any, max_faces: int) -> Any:
    """``mesh`` with at most ``max_faces`` triangles.

    Quadric decimation when fast-simplification is installed; vertex clustering on a
    coarser grid otherwise (cruder, but needs only numpy), with a warning saying so.
    """
    if len(mesh.faces) <= max_faces:
        return mesh
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        log.warning(
            "decimating a mesh of %d faces by vertex clustering (cruder): "
            "fast-simplification is not installed; `pip install 'stoker[mesh]'` adds it",
            len(mesh.faces),
        )
        return cluster_decimate(mesh, max_faces)
    out = quadric_decimate(mesh, max_faces)
    # Collapses aim at the count; should they stop short, clustering makes sure of it.
    return out if len(out.faces) <= max_faces else cluster_decimate(out, max_faces)


def quadric_decimate(mesh: Any, max_faces: int) -> Any:
    """``mesh`` decimated to ``max_faces`` triangles by quadric edge collapses
    (fast-simplification), keeping vertex colours: each kept vertex gets the mean
    colour of the vertices collapsed into it. (trimesh's own
    ``simplify_quadric_decimation`` drops the colours.)"""
    import fast_simplification
    import numpy as np

    trimesh = import_trimesh()
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int32)
    _, _, collapses = fast_simplification.simplify(
        mesh.vertices, faces, target_count=max_faces, return_collapses=True
    )
    # Replaying the collapses yields the same mesh and which vertex each one became.
    verts, faces, mapping = fast_simplification.replay_simplification(
        np.ascontiguousarray(mesh.vertices, dtype=np.float32), faces, collapses
    )
    colors = _mean_colors(mesh, np.asarray(mapping).reshape(-1), len(verts))
    return trimesh.Trimesh(
        vertices=verts.astype(np.float64), faces=faces, vertex_colors=colors, process=False
    )


def _mean_colors(mesh: Any, inverse: Any, count: int) -> Any:
    """Per new vertex, the mean colour of the old vertices ``inverse`` maps to it
    (None when ``mesh`` has no vertex colours)."""
    import numpy as np

    if mesh.visual.kind != "vertex":
        return None
    rgba = np.zeros((count, 4))
    np.add.at(rgba, inverse, mesh.visual.vertex_colors)
    counts = np.bincount(inverse, minlength=count)[:, None]
    return (rgba / np.maximum(counts, 1)).round().astype(np.uint8)


def cluster_decimate(mesh: Any, max_faces: int) -> Any:
    """Merge vertices that share a cell of a grid, coarsening until ≤ ``max_faces``.

    Each cell's vertices become their mean (colours too); triangles that collapse
    are dropped. The first cell is the mean edge length scaled by the square root of
    the reduction asked for (faces go with the square of the cell count per side);
    each further try is 25 % coarser.
    """
    import numpy as np

    v, f = mesh.vertices, mesh.faces
    edge = float(np.linalg.norm(v[f[:, 0]] - v[f[:, 1]], axis=1).mean()) or 1e-3
    cell = edge * (len(f) / max_faces) ** 0.5
    out = _cluster(mesh, cell)
    while len(out.faces) > max_faces:
        cell *= 1.25
        out = _cluster(mesh, cell)
    return out


def _cluster(mesh: Any, cell: float) -> Any:
    import numpy as np

    trimesh = import_trimesh()
    keys = np.floor((mesh.vertices - mesh.bounds[0]) / cell).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    verts = np.zeros((len(counts), 3))
    np.add.at(verts, inverse, mesh.vertices)
    verts /= counts[:, None]
    faces = inverse[mesh.faces]
    keep = (
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    )
    faces = np.unique(faces[keep], axis=0)
    colors = _mean_colors(mesh, inverse, len(counts))
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=colors, process=False)
