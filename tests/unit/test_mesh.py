"""mesh: request checks, Shap-E mesh → trimesh, face limits, and the test fixture's
marching-cubes table (checked on a sphere, so the tiny pipelines' meshes are real)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import InvalidInput
from stoker.jobs.base import PrepareContext
from stoker.jobs.mesh import MeshCapability, cluster_decimate, limit_faces, shape_of, to_trimesh
from stoker.workers.catalog import ModelCatalog
from tests.diffusers_models import TinyPipelines, marching_cubes_table, tiny_pipelines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


@pytest.fixture()
def ctx(tiny: TinyPipelines, tmp_path: Path) -> PrepareContext:
    settings = load_settings(data_dir=tmp_path, models=tiny.models())
    return PrepareContext(settings, ModelCatalog(settings))


def sphere_mesh(grid: int = 24, radius: float = 0.6) -> Any:
    """diffusers' MeshDecoder, with the table filled, run on a sphere's SDF."""
    import torch
    from diffusers.pipelines.shap_e.renderer import MeshDecoder

    decoder = MeshDecoder()
    cases, masks = marching_cubes_table()
    decoder.cases.copy_(cases)
    decoder.masks.copy_(masks)
    axis = torch.linspace(-1, 1, grid)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    field = radius - (x**2 + y**2 + z**2).sqrt()  # positive inside, as Shap-E's SDF
    raw = decoder(field, torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([2.0, 2.0, 2.0]))
    n = len(raw.verts)
    raw.vertex_channels = {
        c: torch.full((n,), v) for c, v in zip("RGB", (1.0, 0.5, 0.0), strict=True)
    }
    return raw


def test_the_marching_cubes_table_makes_a_closed_sphere() -> None:
    # Given a sphere's signed distance field decoded with the fixture's table
    mesh = to_trimesh(sphere_mesh(), {"seed": 1, "resolution": 24})
    mesh.merge_vertices()
    # Then the surface is closed, consistently wound, and of the sphere's volume
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert abs(mesh.volume) == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.05)
    # And the vertex colours are carried over as 8-bit RGBA
    assert mesh.visual.vertex_colors[0].tolist() == [255, 128, 0, 255]


def test_an_empty_mesh_fails_with_a_sentence() -> None:
    import torch
    from diffusers.pipelines.shap_e.renderer import MeshDecoderOutput

    empty = MeshDecoderOutput(
        verts=torch.zeros(0, 3), faces=torch.zeros(0, 3, dtype=torch.long), vertex_channels={}
    )
    with pytest.raises(InvalidInput, match=r"empty mesh .*seed 5 at resolution 64"):
        to_trimesh(empty, {"seed": 5, "resolution": 64})


def test_a_mesh_over_the_face_limit_is_decimated_keeping_its_shape() -> None:
    # Given a sphere of several thousand triangles
    mesh = to_trimesh(sphere_mesh(grid=48), {"seed": 1, "resolution": 48})
    assert len(mesh.faces) > 5000
    # When it is limited to 1500 faces by vertex clustering (without fast-simplification)
    small = cluster_decimate(mesh, 1500)
    # Then it has at most 1500 faces and still spans the same box, with colours
    assert 0 < len(small.faces) <= 1500
    assert small.bounds == pytest.approx(mesh.bounds, abs=0.1)
    assert small.visual.vertex_colors[0].tolist()[:3] == [255, 128, 0]


def test_quadric_decimation_keeps_a_closed_surface_its_volume_and_colours() -> None:
    import numpy as np

    # Given a closed sphere of several thousand triangles, red above z = 0, blue below
    mesh = to_trimesh(sphere_mesh(grid=48), {"seed": 1, "resolution": 48})
    above = mesh.vertices[:, 2] > 0
    mesh.visual.vertex_colors = np.where(above[:, None], [255, 0, 0, 255], [0, 0, 255, 255])
    assert mesh.is_watertight and len(mesh.faces) > 5000

    # When it is limited to 1500 faces (fast-simplification is installed)
    small = limit_faces(mesh, 1500)

    # Then it has at most 1500 faces, close to that count, and is still a closed,
    # consistently wound surface of about the same volume
    assert 1200 <= len(small.faces) <= 1500
    assert small.is_watertight and small.is_winding_consistent
    assert small.volume == pytest.approx(mesh.volume, rel=0.03)  # same sign: same winding
    # And the colours follow their vertices: red well above the equator, blue below
    colors, z = small.visual.vertex_colors, small.vertices[:, 2]
    assert (colors[z > 0.1, :3] == [255, 0, 0]).all()
    assert (colors[z < -0.1, :3] == [0, 0, 255]).all()


def test_without_fast_simplification_it_clusters_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given fast-simplification cannot be imported
    monkeypatch.setitem(sys.modules, "fast_simplification", None)
    mesh = to_trimesh(sphere_mesh(grid=48), {"seed": 1, "resolution": 48})

    # When a mesh over the limit is decimated
    with caplog.at_level(logging.WARNING, logger="stoker.jobs.mesh"):
        small = limit_faces(mesh, 1500)

    # Then vertex clustering keeps it under the limit, and the log says why it is cruder
    assert 0 < len(small.faces) <= 1500
    assert "fast-simplification is not installed" in caplog.text


def test_the_shape_of_a_mesh_is_trimeshs_own_counts_and_bounds() -> None:
    import numpy as np
    import trimesh

    # A sphere, and the same with a far vertex no face uses (bounds leave it out)
    sphere = to_trimesh(sphere_mesh(), {"seed": 1, "resolution": 24})
    stray = trimesh.Trimesh(
        vertices=np.vstack([sphere.vertices, [[9.0, 9.0, 9.0]]]), faces=sphere.faces, process=False
    )
    for mesh in (sphere, stray):
        shape = shape_of(mesh)
        assert (shape["vertices"], shape["faces"]) == (len(mesh.vertices), len(mesh.faces))
        assert np.allclose(shape["bounds"], mesh.bounds, atol=1e-6)
    assert shape_of(stray)["bounds"] == shape_of(sphere)["bounds"]


def test_a_mesh_under_the_limit_is_unchanged() -> None:
    mesh = to_trimesh(sphere_mesh(), {"seed": 1, "resolution": 24})
    assert limit_faces(mesh, len(mesh.faces)) is mesh


def test_a_mesh_job_is_one_chunk_with_its_parameters(ctx: PrepareContext) -> None:
    cap = MeshCapability()
    prepared = cap.prepare({"prompt": "a chair", "model": "tiny_shap_e", "seed": 3}, ctx)
    assert len(prepared.chunks) == 1
    assert prepared.params["seed"] == 3 and prepared.params["format"] == "glb"
    glb = cap.prepare({"prompt": "a chair", "model": "tiny_shap_e", "seed": 3}, ctx)
    ply = cap.prepare(
        {"prompt": "a chair", "model": "tiny_shap_e", "seed": 3, "format": "ply"}, ctx
    )
    # The format is applied at assembly: every format shares the one mesh chunk
    assert glb.chunks[0].identity == ply.chunks[0].identity


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"model": "tiny_sd"}, "StableDiffusionPipeline; `mesh` needs .*Shap-E"),
        ({"resolution": 512}, "invalid resolution"),
        ({"format": "stl"}, "invalid format 'stl': "),
        ({"prompt": ""}, "prompt is empty"),
    ],
)
def test_bad_mesh_requests_are_refused(
    ctx: PrepareContext, request_: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        MeshCapability().prepare({"prompt": "a chair", "model": "tiny_shap_e", **request_}, ctx)
