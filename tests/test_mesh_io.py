"""Mesh loading (.obj/.mtl/texture, .glb, .gltf, .ply) and normalisation."""

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from dreamgs.cameras import make_cameras
from dreamgs.errors import InputError
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.io import load_mesh, normalize_mesh
from dreamgs.mesh.raster import render_mesh

RED, BLUE = np.array([255, 0, 0], np.uint8), np.array([0, 0, 255], np.uint8)


def red_top_image(h=8, w=8):
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = RED
    img[h // 2:] = BLUE
    return img


def assert_top_red_bottom_blue(mesh):
    """Seen from +z, a unit quad textured with red_top_image is red above the middle."""
    out = render_mesh(mesh, make_cameras(0.0, 0.0, 2.0, 49.1, 32))
    rgb, m = out.rgb[0], out.alpha[0, ..., 0] > 0
    rows = torch.nonzero(m.any(1)).squeeze(1)
    top, bottom = rgb[rows.min() + 1][m[rows.min() + 1]], rgb[rows.max() - 1][m[rows.max() - 1]]
    torch.testing.assert_close(top, torch.tensor([1.0, 0, 0]).expand_as(top))
    torch.testing.assert_close(bottom, torch.tensor([0.0, 0, 1.0]).expand_as(bottom))


def test_obj_with_mtl_and_texture_written_by_hand(tmp_path):
    # OBJ's convention: vt v = 0 is the bottom of the image.
    Image.fromarray(red_top_image()).save(tmp_path / "tex.png")
    (tmp_path / "quad.mtl").write_text("newmtl mat\nKd 1 1 1\nmap_Kd tex.png\n")
    (tmp_path / "quad.obj").write_text(
        "mtllib quad.mtl\n"
        "v -0.5 -0.5 0\nv 0.5 -0.5 0\nv 0.5 0.5 0\nv -0.5 0.5 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl mat\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")
    mesh = load_mesh(tmp_path / "quad.obj")
    assert mesh.num_faces == 2 and mesh.texture.shape == (8, 8, 3)
    torch.testing.assert_close(mesh.texture, torch.tensor(red_top_image() / 255.0, dtype=torch.float32))
    assert_top_red_bottom_blue(mesh)


def white_material(img):
    # trimesh's default diffuse is 0.4 grey, which its glTF export writes as baseColorFactor.
    return trimesh.visual.material.SimpleMaterial(image=Image.fromarray(img), diffuse=[255, 255, 255, 255])


def textured_quad_trimesh(img=None):
    v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)  # trimesh: v = 0 at the bottom
    visual = trimesh.visual.TextureVisuals(uv=uv, material=white_material(red_top_image() if img is None else img))
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], visual=visual, process=False)


@pytest.mark.parametrize("suffix", [".glb", ".gltf", ".obj"])
def test_textured_round_trip_keeps_uv_convention(tmp_path, suffix):
    textured_quad_trimesh().export(tmp_path / f"quad{suffix}")
    mesh = load_mesh(tmp_path / f"quad{suffix}")
    assert mesh.texture is not None and mesh.uvs is not None
    assert_top_red_bottom_blue(mesh)


def test_gltf_base_color_factor_multiplies_the_texture(tmp_path):
    t = textured_quad_trimesh()
    t.visual.material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(red_top_image()), baseColorFactor=[0.5, 1.0, 1.0, 1.0])
    t.export(tmp_path / "half.glb")
    mesh = load_mesh(tmp_path / "half.glb")
    torch.testing.assert_close(mesh.texture[0, 0], torch.tensor([0.5, 0.0, 0.0]), atol=3e-3, rtol=0)


def test_uv_seams_are_welded_so_closed_meshes_stay_closed(tmp_path):
    box = trimesh.creation.box()
    # Give every face corner its own uv (a split at every edge), as textured exports do.
    soup = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3), process=False)
    uv = np.random.default_rng(0).random((36, 2))
    soup.visual = trimesh.visual.TextureVisuals(uv=uv, material=white_material(red_top_image()))
    soup.export(tmp_path / "box.glb")
    mesh = load_mesh(tmp_path / "box.glb")
    assert mesh.num_vertices == 8 and mesh.num_faces == 12
    assert trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False).is_watertight
    # Each corner keeps its own uv.
    corner_uv = mesh.uvs[mesh.face_uvs].reshape(-1, 2).numpy()
    assert len(np.unique(np.round(corner_uv, 5), axis=0)) > 30


def test_ply_with_vertex_colors(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    colours = np.random.default_rng(1).integers(0, 256, (len(sphere.vertices), 4)).astype(np.uint8)
    colours[:, 3] = 255
    sphere.visual.vertex_colors = colours
    sphere.export(tmp_path / "s.ply")
    mesh = load_mesh(tmp_path / "s.ply")
    assert mesh.texture is None and mesh.num_faces == len(sphere.faces)
    np.testing.assert_allclose(mesh.vertices.numpy(), sphere.vertices, atol=1e-6)
    np.testing.assert_allclose(mesh.vertex_colors.numpy(), colours[:, :3] / 255.0, atol=1e-6)


def test_glb_scene_with_two_textured_meshes_is_packed(tmp_path):
    scene = trimesh.Scene()
    for colour, offset in ((RED, -1.0), (BLUE, 1.0)):
        t = textured_quad_trimesh(np.tile(colour, (4, 6, 1)))
        t.apply_translation([offset, 0, 0])
        scene.add_geometry(t)
    scene.export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    assert mesh.num_faces == 4
    out = render_mesh(mesh, make_cameras(0.0, 0.0, 4.0, 49.1, 48))
    left, right = out.rgb[0, 24, 12], out.rgb[0, 24, 36]
    torch.testing.assert_close(left, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(right, torch.tensor([0.0, 0.0, 1.0]))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.obj: mesh file not found"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "fake.glb").write_text("this is not a glb")
    with pytest.raises(InputError, match="fake.glb: not a binary glTF"):
        load_mesh(tmp_path / "fake.glb")
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(tmp_path / "points.ply")
    with pytest.raises(InputError, match="points.ply: contains no triangle faces"):
        load_mesh(tmp_path / "points.ply")
    (tmp_path / "verts.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(InputError, match="verts.obj: contains no triangle faces"):
        load_mesh(tmp_path / "verts.obj")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="junk.ply: cannot read mesh"):
        load_mesh(tmp_path / "junk.ply")
    (tmp_path / "model.stl").write_text("solid x\nendsolid x\n")
    with pytest.raises(InputError, match="model.stl: unsupported mesh format"):
        load_mesh(tmp_path / "model.stl")


def test_normalize_mesh_closed_form():
    v = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 5.0], [2.0, 2.0, 3.0]])
    mesh = Mesh(v, torch.tensor([[0, 1, 2]]))
    out = normalize_mesh(mesh, radius=0.8)
    # bbox centre (2, 4, 4); farthest vertex at sqrt(6).
    expected = (v - torch.tensor([2.0, 4.0, 4.0])) * (0.8 / 6 ** 0.5)
    torch.testing.assert_close(out.vertices, expected)
    assert out.faces is mesh.faces
    with pytest.raises(InputError, match="zero"):
        normalize_mesh(Mesh(torch.ones(3, 3), torch.tensor([[0, 1, 2]])))
