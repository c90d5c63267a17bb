"""The torch mesh rasteriser against an independent per-pixel float64 ray caster."""

import numpy as np
import torch

from dreamgs.cameras import Cameras, make_cameras, orbit_views, project_points
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.raster import interpolate, rasterize, render_mesh, sample_texture


def reference_raster(vertices, faces, viewmat, K, W, H, near):
    """Brute force Möller–Trumbore in world space, float64: nearest hit with camera z > near."""
    V = np.asarray(vertices, np.float64)
    Fc = np.asarray(faces, np.int64)
    M = np.asarray(viewmat, np.float64)
    K = np.asarray(K, np.float64)
    R, t = M[:3, :3], M[:3, 3]
    origin = -R.T @ t
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_cam = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], -1).reshape(-1, 3)
    d = d_cam @ R  # world directions; camera z along the ray equals the ray parameter
    p0, p1, p2 = V[Fc[:, 0]], V[Fc[:, 1]], V[Fc[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    pvec = np.cross(d[:, None, :], e2[None])  # (P, F, 3)
    det = (pvec * e1[None]).sum(-1)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = origin - p0  # (F, 3)
    u = (pvec * tvec[None]).sum(-1) * inv
    qvec = np.cross(tvec, e1)  # (F, 3)
    v = (d @ qvec.T) * inv
    tt = (qvec * e2).sum(-1)[None] * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (tt > near)
    tt = np.where(hit, tt, np.inf)
    fid = tt.argmin(1)
    z = tt[np.arange(len(fid)), fid]
    fid = np.where(np.isfinite(z), fid, -1)
    z = np.where(np.isfinite(z), z, 0.0)
    return fid.reshape(H, W), z.reshape(H, W)


def check_against_reference(vertices, faces, cams, near=0.01, min_agree=0.999):
    fr = rasterize(vertices, faces, cams, near=near)
    agree_n, total = 0, 0
    for c in range(len(cams)):
        fid_ref, z_ref = reference_raster(vertices, faces, cams.viewmats[c], cams.Ks[c], cams.width,
                                          cams.height, near)
        fid = fr.face_id[c].numpy()
        same = fid == fid_ref
        agree_n += same.sum()
        total += same.size
        z = fr.depth[c].numpy()
        np.testing.assert_allclose(z[same], z_ref[same], atol=1e-5, rtol=0)
        assert (z[fid < 0] == 0).all()
    assert agree_n / total >= min_agree, f"face ids agree on {agree_n}/{total} pixels"
    return fr


def random_soup(n, seed, spread=0.6, size=0.35):
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 1, 3, generator=g) * 2 - 1) * spread
    verts = (centres + torch.randn(n, 3, 3, generator=g) * size).reshape(-1, 3)
    faces = torch.arange(3 * n).reshape(n, 3)
    return verts, faces


def bumpy_sphere(seed, subdiv=2):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdiv, radius=0.5)
    rng = np.random.default_rng(seed)
    v = s.vertices * (1 + 0.15 * rng.random((len(s.vertices), 1)))
    return torch.tensor(v, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int64)


def test_random_soup_matches_reference():
    verts, faces = random_soup(150, seed=0)
    cams = make_cameras([-30.0, 10.0, 60.0], [0.0, 120.0, -75.0], 2.5, 49.1, 48, 40)
    fr = check_against_reference(verts, faces, cams)
    assert 0.2 < (fr.face_id >= 0).float().mean() < 0.95  # the test actually sees triangles


def test_closed_mesh_matches_reference():
    verts, faces = bumpy_sphere(seed=1)
    cams = make_cameras([0.0, -45.0, 80.0], [30.0, 200.0, 0.0], [2.0, 2.5, 3.0], 49.1, 40, 44)
    check_against_reference(verts, faces, cams)


def test_near_plane_and_triangles_behind_camera():
    # Triangles all around the camera: some behind it, some crossing the near plane.
    verts, faces = random_soup(120, seed=2, spread=2.8, size=0.6)
    cams = make_cameras([-10.0, 25.0], [40.0, -150.0], 2.5, 70.0, 40, 36)
    check_against_reference(verts, faces, cams, near=0.3)
    check_against_reference(verts, faces, cams, near=1.7)


def test_hit_points_project_to_pixel_centres():
    verts, faces = bumpy_sphere(seed=3)
    cams = orbit_views(2, -20.0, 2.2, 49.1, 32)
    fr = rasterize(verts, faces, cams)
    for c in range(2):
        m = fr.face_id[c] >= 0
        tri = verts.double()[faces[fr.face_id[c][m]]]
        p = (fr.bary[c][m].double()[..., None] * tri).sum(1)
        uv, z = project_points(p, cams[c])
        ii, jj = torch.nonzero(m, as_tuple=True)
        torch.testing.assert_close(uv[0, :, 0], jj.double() + 0.5, atol=2e-4, rtol=0)
        torch.testing.assert_close(uv[0, :, 1], ii.double() + 0.5, atol=2e-4, rtol=0)
        torch.testing.assert_close(z[0], fr.depth[c][m].double(), atol=1e-5, rtol=0)


def _pinhole(W, H, f, cx, cy):
    """One camera at the world origin looking down +z (identity viewmat)."""
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    z = torch.zeros(1)
    return Cameras(torch.eye(4)[None], K[None], W, H, z, z, z, 60.0)


def test_shared_edges_through_pixel_centres_leave_no_cracks():
    # A plane at z = 1 split into triangles whose vertices and diagonals pass through pixel centres.
    W = H = 16
    f, c = 10.0, 8.0
    n = 10
    # Vertices at pixel x, y = -1.5, 0.5, 2.5, ..., 16.5: on pixel centres, so are the diagonals.
    coords = (torch.arange(n) * 2 - 1.5 - c) / f
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    verts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, cc, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, cc], -1).reshape(-1, 3)])
    fr = rasterize(verts, faces, _pinhole(W, H, f, c, c))
    assert (fr.face_id >= 0).all()
    torch.testing.assert_close(fr.depth, torch.ones_like(fr.depth), atol=1e-6, rtol=0)


def test_interpolate_vertex_and_face_varying():
    verts, faces = bumpy_sphere(seed=4, subdiv=1)
    cams = orbit_views(2, 0.0, 2.5, 49.1, 24)
    fr = rasterize(verts, faces, cams)
    pos = interpolate(verts, fr, faces)
    pos_fv = interpolate(verts[faces], fr)
    torch.testing.assert_close(pos, pos_fv)
    m = fr.face_id >= 0
    # Interpolated positions are the ray hits: their camera depth is the fragment depth.
    for c in range(2):
        _, z = project_points(pos[c][m[c]], cams[c])
        torch.testing.assert_close(z[0], fr.depth[c][m[c]], atol=1e-5, rtol=0)
    assert (pos[~m] == 0).all()


def quad_mesh(texture=None, vertex_colors=None, z=0.0, half=0.5):
    """A square in the plane z facing +z, uv (0,0) at bottom-left (-half, -half)."""
    verts = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return Mesh(verts, faces, uvs=uvs, face_uvs=faces.clone(), texture=texture, vertex_colors=vertex_colors)


def test_uv_convention_top_half_of_texture_is_top_of_surface():
    tex = torch.zeros(8, 8, 3)
    tex[:4, :, 0] = 1.0  # rows 0..3 (top of the image) red
    tex[4:, :, 2] = 1.0  # bottom blue
    mesh = quad_mesh(tex)
    cams = make_cameras(0.0, 0.0, 2.0, 49.1, 32)
    out = render_mesh(mesh, cams, background=(0.0, 1.0, 0.0))
    m = out.alpha[0, ..., 0] > 0
    v = out.uv[0, ..., 1]
    red = torch.tensor([1.0, 0.0, 0.0])
    blue = torch.tensor([0.0, 0.0, 1.0])
    top, bottom = m & (v > 0.55), m & (v < 0.45)
    assert top.sum() > 50 and bottom.sum() > 50
    torch.testing.assert_close(out.rgb[0][top], red.expand(int(top.sum()), 3))
    torch.testing.assert_close(out.rgb[0][bottom], blue.expand(int(bottom.sum()), 3))
    # v grows upwards in the image (world +y is up, image rows go down).
    rows = torch.nonzero(top, as_tuple=True)[0]
    assert rows.float().mean() < torch.nonzero(bottom, as_tuple=True)[0].float().mean()
    # The uv value at a pixel is where the texture is sampled: texel row = (1 - v) * H.
    torch.testing.assert_close(sample_texture(tex, torch.tensor([[0.3, 0.9], [0.3, 0.1]])),
                               torch.stack([red, blue]))


def test_background_where_empty_and_vertex_colors():
    vc = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    mesh = quad_mesh(vertex_colors=vc, half=0.3)
    cams = orbit_views(2, 0.0, 2.5, 49.1, 24)
    bg = torch.tensor([[0.2, 0.4, 0.6], [0.9, 0.1, 0.5]])
    out = render_mesh(mesh, cams, background=bg)
    for c in range(2):
        empty = out.alpha[c, ..., 0] == 0
        assert empty.sum() > 100
        torch.testing.assert_close(out.rgb[c][empty], bg[c].expand(int(empty.sum()), 3))
        assert (out.depth[c][empty] == 0).all() and (out.face_id[c][empty] == -1).all()
    fr = rasterize(mesh.vertices, mesh.faces, cams)
    full = out.alpha[..., 0] == 1
    torch.testing.assert_close(out.rgb[full], interpolate(vc, fr, mesh.faces)[full])
    # Normals: the quad faces +z; seen from behind (azimuth 180) it is still drawn (no culling).
    torch.testing.assert_close(out.normal[full], torch.tensor([0.0, 0.0, 1.0]).expand(int(full.sum()), 3))
    assert (out.alpha[1] > 0).sum() == (out.alpha[0] > 0).sum()


def test_texture_gradient_matches_gradcheck():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(3, 4, 3, generator=g, dtype=torch.float64)
    mesh = quad_mesh(tex, half=0.4)
    cams = make_cameras(30.0, 20.0, 2.0, 49.1, 10)
    w = torch.randn(1, 10, 10, 3, generator=g, dtype=torch.float64)

    def f(t):
        return (render_mesh(mesh.with_texture(t), cams, ssaa=2).rgb * w).sum()

    assert torch.autograd.gradcheck(f, (tex.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    t = tex.clone().requires_grad_(True)
    f(t).backward()
    assert t.grad.abs().sum() > 0


def test_depth_gradient_wrt_vertices_matches_finite_differences():
    verts, faces = bumpy_sphere(seed=5, subdiv=1)
    verts = verts.double()
    cams = make_cameras(10.0, 30.0, 2.0, 49.1, 16)
    fr = rasterize(verts, faces, cams)
    w = torch.randn(fr.depth.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-4
    ids, counts = fr.face_id[fr.face_id >= 0].unique(return_counts=True)
    for k in faces[ids[counts.argmax()]].tolist():  # the vertices of the largest visible face
        largest = 0.0
        for a in range(3):
            dv = torch.zeros_like(verts)
            dv[k, a] = h
            plus, minus = rasterize(verts + dv, faces, cams), rasterize(verts - dv, faces, cams)
            # Only pixels whose visible face does not change have a derivative.
            keep = (plus.face_id == fr.face_id) & (minus.face_id == fr.face_id) & (fr.face_id >= 0)
            fd = ((plus.depth.double() - minus.depth.double()) * w)[keep].sum() / (2 * h)
            v = verts.clone().requires_grad_(True)
            (rasterize(v, faces, cams).depth.double() * w)[keep].sum().backward()
            assert abs(fd.item() - v.grad[k, a].item()) < 2e-3 * (1 + abs(fd.item()))
            largest = max(largest, abs(fd.item()))
        assert largest > 1e-2  # the vertex is visible, so the check is not vacuous


def test_ssaa_gives_fractional_edges_and_same_interior():
    tex = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(0))
    mesh = quad_mesh(tex, half=0.37)
    cams = make_cameras(0.0, 25.0, 2.0, 49.1, 20)
    lo = render_mesh(mesh, cams, background=(1.0, 1.0, 1.0))
    hi = render_mesh(mesh, cams, background=(1.0, 1.0, 1.0), ssaa=3)
    assert ((hi.alpha > 0) & (hi.alpha < 1)).any()
    inner = hi.alpha[..., 0] == 1
    assert (lo.face_id[inner] >= 0).all()
    torch.testing.assert_close(hi.depth[inner], lo.depth[inner], atol=1e-4, rtol=0)
    # Coverage matches the exact projected area of the quad to within the edge pixels.
    assert abs(hi.alpha.sum() - (lo.alpha > 0).sum()) < 0.1 * (lo.alpha > 0).sum()


def test_empty_inputs():
    cams = orbit_views(2, 0.0, 2.5, 49.1, 8)
    fr = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), cams)
    assert (fr.face_id == -1).all() and (fr.depth == 0).all()
    # A triangle entirely behind the camera is never drawn.
    verts = torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.0, 3.0], [0.0, 0.1, 3.0]])
    fr = rasterize(verts, torch.tensor([[0, 1, 2]]), make_cameras(0.0, 180.0, 2.5, 49.1, 8))
    assert (fr.face_id == -1).all()


def test_results_do_not_depend_on_chunk_sizes(monkeypatch):
    from dreamgs.mesh import raster

    verts, faces = bumpy_sphere(seed=6)
    tex = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    uvs = torch.rand(len(verts), 2, generator=torch.Generator().manual_seed(1))
    mesh = Mesh(verts, faces, uvs=uvs, texture=tex)
    cams = orbit_views(5, -20.0, 2.5, 49.1, 24)
    ref = render_mesh(mesh, cams, ssaa=2)
    monkeypatch.setattr(raster, "_MAX_FACE_VIEWS", 300)  # several camera groups
    monkeypatch.setattr(raster, "_MAX_CHUNK_PIXELS", 64)  # many (triangle, tile) chunks
    monkeypatch.setattr(raster, "_MAX_RENDER_PIXELS", 48 * 48 * 2)  # render_mesh groups of 2 cameras
    out = render_mesh(mesh, cams, ssaa=2)
    assert torch.equal(out.face_id, ref.face_id)
    torch.testing.assert_close(out.rgb, ref.rgb)
    torch.testing.assert_close(out.depth, ref.depth)
    ids = []
    for sizes in [(2,), (32,)]:  # the tile size changes the binning, never the result
        monkeypatch.setattr(raster, "_TILE_SIZES", sizes)
        ids.append(rasterize(verts, faces, cams).face_id)
    assert torch.equal(ids[0], ids[1])
