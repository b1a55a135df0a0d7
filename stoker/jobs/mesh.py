"""mesh: a prompt → a 3D mesh (GLB, PLY or OBJ), with a diffusers Shap-E pipeline.

Plan: one chunk. The Shap-E prior denoises a latent; the renderer turns the latent
into a signed-distance field on a ``resolution``³ grid and runs marching cubes on it
(diffusers' ``decode_to_mesh``, called directly so the grid size can be chosen). The
mesh is kept a sensible size: the grid is capped at :data:`MAX_RESOLUTION`, and a
mesh over ``max_faces`` triangles is decimated: quadric edge collapses with
fast-simplification (the ``mesh`` extra), or, when it is missing, a cruder vertex
clustering (logged). The chunk is a GLB with vertex colours, and its size and bounds
are kept as the chunk's notes: a GLB job (the default) is assembled by copying the
chunk, with no mesh parsed again (for a 200,000-face mesh, loading a PLY chunk back
and writing the GLB cost ~95 ms); PLY and OBJ are converted from it with trimesh.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from typing import Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, JobCancelled, MissingDependency
from stoker.jobs.base import (
    NAME_PATTERN,
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    StopCheck,
    parse_request,
)
from stoker.jobs.image import MAX_SEED, check_prompt, pipeline_class

MAX_RESOLUTION = 192  # marching-cubes grid cells per side; 192³ SDF queries ≈ 7 M
SHAP_E_PIPELINES = ("ShapEPipeline",)
CONTENT_TYPES = {"glb": "model/gltf-binary", "ply": "application/ply", "obj": "model/obj"}

log = logging.getLogger(__name__)


class MeshRequest(BaseModel):
    """What a user may ask of ``mesh``."""

    model_config = {"extra": "forbid"}

    prompt: str
    model: str | None = Field(default=None, description="catalog name of a Shap-E pipeline")
    steps: int = Field(default=64, ge=1, le=200, description="denoising steps of the prior")
    guidance_scale: float = Field(default=15.0, ge=0.0, le=50.0)
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

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: MeshRequest = parse_request(request, MeshRequest)
        prompt = check_prompt(req.prompt, ctx.settings.max_text_bytes)
        spec, cls, _ = pipeline_class(ctx, req.model, self.kind)
        if cls not in SHAP_E_PIPELINES:
            raise InvalidInput(
                f"model {req.model!r} is a {cls}; `mesh` needs a text-to-3D Shap-E pipeline "
                f"(ShapEPipeline). Use `stoker submit image` for image models."
            )
        params = {
            "model": req.model,
            "prompt": prompt,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            "seed": secrets.randbelow(2**32) if req.seed is None else req.seed,
            "resolution": req.resolution,
            "max_faces": req.max_faces,
            "format": req.format,
        }
        shape = {k: v for k, v in params.items() if k not in ("model", "format")}
        if req.name:
            params["name"] = req.name
        chunk = ChunkPlan(payload={}, identity={"model": spec.fingerprint, **shape})
        return Prepared(params=params, model=req.model, chunks=[chunk])

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        raw = generate_raw_mesh(model, params, ctx.should_stop)
        mesh = limit_faces(to_trimesh(raw, params), params["max_faces"])
        mesh.export(ctx.out, file_type="glb")
        ctx.notes.update(shape_of(mesh))

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        fmt, chunk = params["format"], ctx.chunk_files[0]
        shape = ctx.chunk_notes[0] if ctx.chunk_notes else {}
        out = ctx.workdir / f"mesh.{fmt}"
        if fmt == "glb" and "faces" in shape:
            shutil.copyfile(chunk, out)
        else:  # another format, or a chunk without notes: parse it
            trimesh = import_trimesh()
            mesh = trimesh.load(chunk, file_type="glb", force="mesh", process=False)
            mesh.export(out, file_type=fmt)
            shape = shape_of(mesh)
        meta = {
            **shape,
            "prompt": params["prompt"],
            "seed": params["seed"],
            "steps": params["steps"],
            "guidance_scale": params["guidance_scale"],
            "resolution": params["resolution"],
            "model": params["model"],
        }
        return [Artifact(out.name, out, CONTENT_TYPES[fmt], meta)]


def shape_of(mesh: Any) -> dict[str, Any]:
    """Vertex and face counts and the bounding box of a trimesh, JSON-safe."""
    return {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "bounds": [[round(float(c), 6) for c in corner] for corner in mesh.bounds],
    }


def generate_raw_mesh(pipe: Any, params: dict[str, Any], should_stop: StopCheck) -> Any:
    """Shap-E's MeshDecoderOutput for the prompt (prior, then marching cubes).

    Raises JobCancelled when ``should_stop()`` turns true between the two stages, and
    InvalidInput when the field has no surface at all (an empty mesh).
    """
    import torch

    if should_stop():
        raise JobCancelled("the job was cancelled before the mesh was started")
    device = pipe.device
    generator = torch.Generator(device=str(device)).manual_seed(params["seed"])
    latents = pipe(
        params["prompt"],
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
    return InvalidInput(
        f"the model made an empty mesh (no triangles) for this prompt with seed "
        f"{params['seed']} at resolution {params['resolution']}; try another --seed or "
        f"prompt, or a higher --resolution."
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
