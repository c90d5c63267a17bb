"""UV unwrapping, UV rasterisation, baking and inpainting against brute-force references."""

import math

import numpy as np
import pytest
import torch

from dreamgs.cameras import make_cameras, sphere_views
from dreamgs.errors import EmptyModelError, InputError
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.texture import bake, inpaint, rasterize_uv, texel_maps, unwrap


def trimesh_to_mesh(tm):
    return Mesh(torch.tensor(np.asarray(tm.vertices), dtype=torch.float32),
                torch.tensor(np.asarray(tm.faces), dtype=torch.int64))


def icosphere(subdiv=2, radius=0.5):
    import trimesh

    return trimesh_to_mesh(trimesh.creation.icosphere(subdiv, radius=radius))


def torus():
    import trimesh

    return trimesh_to_mesh(trimesh.creation.torus(0.45, 0.18, major_sections=40, minor_sections=20))


def raycast(mesh, cams, color_fn=None):
    """Reference renderer: exact ray-triangle intersection (Moller-Trumbore, float64) at each
    pixel centre (+0.5), tested only against the faces whose projected bounding box contains it.

    Returns camera-space depth (C, H, W) (0 where empty) and, with ``color_fn``, the colour of
    the nearest hit point (C, H, W, 3) (0 where empty).
    """
    V, Fc = mesh.vertices.double(), mesh.faces
    tri = V[Fc]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    H, W = cams.height, cams.width
    depths, colors = [], []
    for i in range(len(cams)):
        K, vm = cams.Ks[i].double(), cams.viewmats[i].double()
        R, o = vm[:3, :3], -vm[:3, :3].T @ vm[:3, 3]
        cam = tri @ R.T + vm[:3, 3]  # (F, 3, 3) camera space
        assert (cam[..., 2] > 0.05).all()
        px = K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2]
        py = K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2]
        x0 = torch.ceil(px.amin(1) - 0.5).clamp(0, W).long()
        x1 = torch.floor(px.amax(1) - 0.5).clamp(-1, W - 1).long()
        y0 = torch.ceil(py.amin(1) - 0.5).clamp(0, H).long()
        y1 = torch.floor(py.amax(1) - 0.5).clamp(-1, H - 1).long()
        nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
        n = nx * ny
        f = torch.repeat_interleave(torch.arange(len(Fc)), n)
        local = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        xs, ys = x0[f] + local % nx[f], y0[f] + local // nx[f]
        d_cam = torch.stack([(xs + 0.5 - K[0, 2]) / K[0, 0], (ys + 0.5 - K[1, 2]) / K[1, 1],
                             torch.ones(len(xs), dtype=torch.float64)], -1)
        d = d_cam @ R  # world direction with camera-space z = 1, so t is the depth
        p = torch.linalg.cross(d, e2[f])
        det = (e1[f] * p).sum(-1)
        s = o - tri[f, 0]
        u = (s * p).sum(-1) / det
        q = torch.linalg.cross(s, e1[f])
        v = (d * q).sum(-1) / det
        t = (e2[f] * q).sum(-1) / det
        hit = (det.abs() > 1e-15) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        best = torch.full((H * W,), math.inf, dtype=torch.float64)
        best.scatter_reduce_(0, (ys * W + xs)[hit], t[hit], reduce="amin")
        covered = torch.isfinite(best)
        depths.append(torch.where(covered, best, torch.zeros_like(best)).reshape(H, W))
        if color_fn is not None:
            yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                                    torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
            dirs = torch.stack([(xx - K[0, 2]) / K[0, 0], (yy - K[1, 2]) / K[1, 1], torch.ones_like(xx)],
                               -1).reshape(-1, 3) @ R
            pts = o + dirs * torch.where(covered, best, torch.zeros_like(best))[:, None]
            c = torch.where(covered[:, None], color_fn(pts), torch.zeros_like(pts))
            colors.append(c.reshape(H, W, 3))
    depth = torch.stack(depths).float()
    return (depth, torch.stack(colors).float()) if color_fn is not None else depth


def paint(p):
    """A smooth colour function of the 3D point, in [0.1, 0.9]."""
    p = p.double()
    return torch.stack([0.5 + 0.4 * torch.sin(3.0 * p[:, 0] + 1.0),
                        0.5 + 0.4 * torch.sin(3.0 * p[:, 1] + 2.0 * p[:, 2]),
                        0.5 + 0.4 * torch.cos(2.0 * p[:, 2] - p[:, 0])], -1)


# ------------------------------------------------------------------------------------------------


def test_unwrap_keeps_geometry_and_gives_a_valid_atlas():
    mesh = icosphere(2)
    out = unwrap(mesh, resolution=256)
    assert torch.equal(out.vertices, mesh.vertices) and torch.equal(out.faces, mesh.faces)
    assert out.face_uvs.shape == mesh.faces.shape and out.uvs.shape[1] == 2
    assert out.uvs.shape[0] >= mesh.num_vertices  # split along seams
    assert int(out.face_uvs.max()) < out.uvs.shape[0]
    assert (out.uvs >= 0).all() and (out.uvs <= 1).all()
    uv = out.uvs.double()[out.face_uvs]
    uv_area = 0.5 * ((uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1])
                     - (uv[:, 1, 1] - uv[:, 0, 1]) * (uv[:, 2, 0] - uv[:, 0, 0])).abs()
    v = mesh.vertices.double()[mesh.faces]
    area = 0.5 * torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1)
    ratio = uv_area / area
    assert (ratio > 0).all()
    assert ratio.max() / ratio.min() < 4.0  # charts keep relative areas roughly
    # No two charts overlap: strictly inside texel centres are covered at most once.
    cover = brute_force_coverage(out, 96, margin=1e-6)
    assert cover.max() <= 1 and (cover > 0).mean() > 0.3


def test_unwrap_in_pieces_keeps_geometry_and_charts_do_not_overlap():
    mesh = icosphere(3)  # 1280 faces -> 8 pieces of 160
    out = unwrap(mesh, resolution=256, max_piece_faces=200)
    assert torch.equal(out.vertices, mesh.vertices) and torch.equal(out.faces, mesh.faces)
    assert (out.uvs >= 0).all() and (out.uvs <= 1).all() and int(out.face_uvs.max()) < out.uvs.shape[0]
    whole = unwrap(mesh, resolution=256, max_piece_faces=0)
    assert out.uvs.shape[0] > whole.uvs.shape[0]  # the cuts add seams
    uv = out.uvs.double()[out.face_uvs]
    uv_area = 0.5 * ((uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1])
                     - (uv[:, 1, 1] - uv[:, 0, 1]) * (uv[:, 2, 0] - uv[:, 0, 0])).abs()
    assert (uv_area > 0).all()
    cover = brute_force_coverage(out, 128, margin=1e-6)
    assert cover.max() <= 1 and (cover > 0).mean() > 0.3


def test_unwrap_in_pieces_survives_a_region_of_degenerate_faces():
    sphere = icosphere(2)
    n = 300  # zero-area slivers far from the sphere: pieces made only of them after the split
    base = torch.tensor([5.0, 0.0, 0.0]) + torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor([0.01, 0, 0])
    flat_v = torch.cat([base, base + torch.tensor([0.001, 0, 0]), base + torch.tensor([0.002, 0, 0])])
    flat_f = torch.stack([torch.arange(n), torch.arange(n) + n, torch.arange(n) + 2 * n], -1) + sphere.num_vertices
    mesh = Mesh(torch.cat([sphere.vertices, flat_v]), torch.cat([sphere.faces, flat_f]))
    out = unwrap(mesh, resolution=128, max_piece_faces=100)
    assert torch.equal(out.faces, mesh.faces) and out.face_uvs.shape == mesh.faces.shape
    assert (out.uvs >= 0).all() and (out.uvs <= 1).all()


def test_unwrap_rejects_empty_and_degenerate_meshes():
    with pytest.raises(InputError, match="empty"):
        unwrap(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)))
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), torch.tensor([[0, 1, 2]]))
    with pytest.raises(InputError, match="degenerate"):
        unwrap(flat)
    with pytest.raises(InputError, match="NaN"):
        unwrap(Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, float("nan"), 0]]), torch.tensor([[0, 1, 2]])))


def brute_force_coverage(mesh, size, margin):
    """Count of faces containing each texel centre (with barycentrics >= margin), float64 loop."""
    uv = mesh.uvs.double()[mesh.face_uvs].numpy()
    S = size
    c, r = np.meshgrid(np.arange(S), np.arange(S))
    pu, pv = (c + 0.5) / S, 1.0 - (r + 0.5) / S
    count = np.zeros((S, S), int)
    for a, b, cc in uv:
        det = (b[0] - a[0]) * (cc[1] - a[1]) - (b[1] - a[1]) * (cc[0] - a[0])
        if abs(det) < 1e-14:
            continue
        w1 = ((pu - a[0]) * (cc[1] - a[1]) - (pv - a[1]) * (cc[0] - a[0])) / det
        w2 = ((b[0] - a[0]) * (pv - a[1]) - (b[1] - a[1]) * (pu - a[0])) / det
        w0 = 1 - w1 - w2
        count += (w0 >= margin) & (w1 >= margin) & (w2 >= margin)
    return count


def test_texel_maps_match_brute_force_point_in_triangle():
    mesh = unwrap(icosphere(1), resolution=48)
    S = 48
    position, normal, mask = texel_maps(mesh, S)
    face_map, bary = rasterize_uv(mesh, S)
    uv = mesh.uvs.double()[mesh.face_uvs].numpy()
    V = mesh.vertices.double().numpy()
    strict = brute_force_coverage(mesh, S, 1e-6) > 0
    loose = brute_force_coverage(mesh, S, -1e-6) > 0
    m = mask.numpy()
    assert (m[strict]).all() and not (m & ~loose).any()
    assert strict.sum() > 200
    # The surface point: barycentric interpolation of the face's corners, checked texel by texel.
    rows, cols = np.nonzero(m)
    for r, c in zip(rows, cols):
        f = int(face_map[r, c])
        a, b, cc = uv[f]
        pu, pv = (c + 0.5) / S, 1.0 - (r + 0.5) / S
        det = (b[0] - a[0]) * (cc[1] - a[1]) - (b[1] - a[1]) * (cc[0] - a[0])
        w1 = ((pu - a[0]) * (cc[1] - a[1]) - (pv - a[1]) * (cc[0] - a[0])) / det
        w2 = ((b[0] - a[0]) * (pv - a[1]) - (b[1] - a[1]) * (pu - a[0])) / det
        assert min(1 - w1 - w2, w1, w2) > -1e-6
        ref = V[mesh.faces[f].numpy()].T @ np.array([1 - w1 - w2, w1, w2])
        np.testing.assert_allclose(position[r, c].numpy(), ref, atol=1e-5)
    # Normals are unit and, on a sphere, point away from the centre.
    n = normal[mask]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)), atol=1e-5, rtol=0)
    p = position[mask]
    assert ((n * p).sum(-1) / p.norm(dim=-1) > 0.97).all()
    assert (position[~mask] == 0).all()


def test_inpaint_fills_from_nearest_texel():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(24, 20, 3, generator=g)
    mask = torch.rand(24, 20, generator=g) < 0.1
    out = inpaint(tex, mask)
    assert torch.equal(out[mask], tex[mask])
    filled = torch.nonzero(mask).double()
    for r in range(24):
        for c in range(20):
            d = ((filled - torch.tensor([r, c], dtype=torch.float64)) ** 2).sum(-1)
            nearest = d == d.min()
            # The chosen value is that of one of the nearest filled texels.
            candidates = tex[mask][nearest]
            assert (candidates == out[r, c]).all(-1).any()
    with pytest.raises(InputError, match="empty"):
        inpaint(tex, torch.zeros(24, 20, dtype=torch.bool))


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def test_bake_reproduces_painted_colours_with_occlusion():
    mesh = unwrap(torus(), resolution=128)
    cams = sphere_views(20, radius=2.2, fovy=40.0, size=96)
    depth, images = raycast(mesh, cams, paint)
    texture, filled = bake(mesh, cams, images, depth, 128, cos_threshold=0.5)
    position, _, mask = texel_maps(mesh, 128)
    assert not (filled & ~mask).any()
    assert filled.sum() >= 0.97 * mask.sum()  # nearly every covered texel is seen by some view
    ref = paint(position[filled]).float()
    assert psnr(texture[filled], ref) > 45.0
    # Inpainting: every texel has a colour, none left black, seen texels unchanged.
    assert texture.shape == (128, 128, 3) and (texture.amin(-1) > 0.05).all()
    # Without a depth test (an infinitely far depth map), hidden views leak in and quality drops.
    far = torch.full_like(depth, 1e9)
    leaky, _ = bake(mesh, cams, images, far, 128, cos_threshold=0.5)
    assert psnr(leaky[filled], ref) < psnr(texture[filled], ref) - 10.0


def test_bake_with_rasterised_depths_matches_reference_depths():
    """depths=None takes the visibility from the mesh z-buffer (dreamgs.mesh.raster)."""
    from dreamgs.mesh.texture import mesh_depths

    mesh = unwrap(torus(), resolution=96)
    cams = sphere_views(12, radius=2.2, fovy=40.0, size=80)
    depth, images = raycast(mesh, cams, paint)
    zbuf = mesh_depths(mesh, cams)
    covered = depth > 0
    assert torch.equal(zbuf > 0, covered) or (zbuf > 0).ne(covered).float().mean() < 1e-3
    torch.testing.assert_close(zbuf[covered & (zbuf > 0)], depth[covered & (zbuf > 0)], atol=1e-4, rtol=1e-4)
    ref_tex, ref_filled = bake(mesh, cams, images, depth, 96, cos_threshold=0.5)
    tex, filled = bake(mesh, cams, images, None, 96, cos_threshold=0.5)
    assert (filled != ref_filled).float().mean() < 0.002
    assert psnr(tex, ref_tex) > 50.0


def quad_mesh(z=0.0, half=1.0, uv_box=(0.0, 0.0, 1.0, 1.0)):
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    u0, v0, u1, v1 = uv_box
    uv = torch.tensor([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
    return v, f, uv


def test_bake_picks_the_best_facing_view():
    v, f, uv = quad_mesh(half=0.5)
    mesh = Mesh(v, f, uv, f.clone())
    red, green = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    S = 32
    position, _, mask = texel_maps(mesh, S)
    assert mask.all()

    def run(azimuths, colours, cos_threshold):
        cams = make_cameras(0.0, azimuths, 3.0, 40.0, 64)
        images = torch.stack([c.expand(64, 64, 3) for c in colours])
        return bake(mesh, cams, images, raycast(mesh, cams), S, cos_threshold)

    # Both views pass the threshold; each texel takes the one that faces it best.
    tex, filled = run([-40.0, 40.0], [red, green], 0.5)
    # Away from the border, where both views see the texel (the border is seen by fewer views).
    interior = mask & (position[..., :2].abs() < 0.42).all(-1)
    left, right = position[..., 0] < -0.1, position[..., 0] > 0.1
    seen = filled & interior
    assert seen.sum() == interior.sum()
    assert ((tex[left & seen] - red).abs() < 1e-5).all()
    assert ((tex[right & seen] - green).abs() < 1e-5).all()
    assert (left & seen).sum() > 100 and (right & seen).sum() > 100
    # A frontal view beats a slanted one everywhere.
    tex, filled = run([50.0, 5.0], [red, green], 0.5)
    assert filled.float().mean() > 0.8 and ((tex - green).abs() < 1e-5).all()
    # A view below the cosine threshold is not used at all.
    tex, filled = run([5.0, 75.0], [red, green], 0.5)
    assert ((tex - red).abs() < 1e-5).all()
    with pytest.raises(EmptyModelError, match="no texel"):
        run([75.0], [green], 0.5)


def test_bake_depth_test_hides_occluded_texels():
    back_v, back_f, back_uv = quad_mesh(0.0, 1.0, (0.0, 0.0, 0.5, 1.0))
    front_v, front_f, front_uv = quad_mesh(0.3, 0.2, (0.5, 0.0, 1.0, 0.5))
    mesh = Mesh(torch.cat([back_v, front_v]), torch.cat([back_f, front_f + 4]),
                torch.cat([back_uv, front_uv]), torch.cat([back_f, front_f + 4]))
    cams = make_cameras(0.0, [0.0, 45.0], 2.5, 50.0, 96)
    red, green = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    images = torch.stack([red.expand(96, 96, 3), green.expand(96, 96, 3)])
    S = 64
    position, _, mask = texel_maps(mesh, S)
    tex, filled = bake(mesh, cams, images, raycast(mesh, cams), S, 0.5)
    back = mask & (position[..., 2].abs() < 1e-6)
    centre = back & (position[..., :2].norm(dim=-1) < 0.05)  # hidden from the frontal view
    outer = back & (position[..., 0] < -0.5) & (position[..., 0] > -0.8) & (position[..., 1].abs() < 0.8)
    assert centre.sum() > 0 and outer.sum() > 0
    assert ((tex[centre] - green).abs() < 1e-5).all() and ((tex[outer] - red).abs() < 1e-5).all()
    # With depth maps that hide nothing, the frontal view would win at the centre too.
    tex2, _ = bake(mesh, cams, images, torch.full((2, 96, 96), 1e9), S, 0.5)
    assert ((tex2[centre] - red).abs() < 1e-5).all()


def test_rebake_textured_asset_onto_a_new_atlas():
    """End to end with the mesh rasteriser: render a textured asset, bake the views onto a fresh
    xatlas unwrap of the same geometry, and compare renders from views not used for baking."""
    from dreamgs.assets import make_asset
    from dreamgs.cameras import orbit_views
    from dreamgs.mesh.raster import render_mesh

    asset = make_asset("mug")
    geometry = unwrap(Mesh(asset.vertices, asset.faces), resolution=256)
    cams = sphere_views(16, radius=2.0, fovy=40.0, size=128)
    texture, filled = bake(geometry, cams, render_mesh(asset, cams).rgb, None, 256, cos_threshold=0.5)
    rebaked = geometry.with_texture(texture)
    novel = orbit_views(4, -20.0, 2.0, 40.0, 96, start_azimuth=15.0)
    original, copy = render_mesh(asset, novel), render_mesh(rebaked, novel)
    assert torch.equal(original.alpha, copy.alpha)  # same geometry
    assert psnr(copy.rgb, original.rgb) > 28.0
