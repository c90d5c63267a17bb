"""Analytic antialiasing in the torch mesh rasteriser (dreamgs.mesh.raster.antialias): exact
coverage at straight edges, no blending across interior edges, gradients against finite
differences and against the closed-form derivative of a triangle's area, and a silhouette fit
(a sphere deformed into a cube from 8 views)."""

import math
import time

import pytest
import torch
import trimesh

from dreamgs.cameras import Cameras, make_cameras
from dreamgs.mesh import Mesh
from dreamgs.mesh.raster import antialias, edge_neighbors, project_vertices, rasterize, render_mesh
from dreamgs.mesh.regularize import laplacian_loss


def plane_camera(size: int = 32, f: float = 20.0) -> Cameras:
    """A camera at the origin looking down +z (OpenCV frame), principal point at the centre."""
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None]
    z = torch.zeros(1)
    return Cameras(torch.eye(4)[None], K, size, size, z, z, z + 1, 2 * math.degrees(math.atan(size / 2 / f)))


def quad(x0, x1, y0, y1, z, dtype=torch.float64) -> Mesh:
    """A rectangle in the plane ``z`` facing the camera at the origin, as two triangles."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=dtype)
    return Mesh(v, torch.tensor([[0, 2, 1], [0, 3, 2]]))


def to_world(px: float, z: float, f: float = 20.0, c: float = 16.0) -> float:
    return (px - c) * z / f


def face_colour_image(fid: torch.Tensor, colours: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    return torch.where(fid[..., None] >= 0, colours[fid.clamp_min(0)], bg)


def test_edge_neighbors_match_brute_force():
    tm = trimesh.creation.icosphere(1)
    faces = torch.tensor(tm.faces)
    keep = torch.tensor(tm.triangles_center[:, 1] < 0.3)  # an open cap: boundary edges too
    for f in (faces, faces[keep]):
        got = edge_neighbors(f)
        rows = f.tolist()
        for a, tri in enumerate(rows):
            for i in range(3):
                e = {tri[(i + 1) % 3], tri[(i + 2) % 3]}
                others = [b for b, t in enumerate(rows) if b != a and e <= set(t)]
                want = others[0] if len(others) == 1 else -1
                assert got[a, i].item() == want


def test_straight_edges_get_exact_coverage():
    cam = plane_camera()
    z = 2.0
    # Edges at pixel coordinates x = 5.7 and 20.3, y = 4.6 and 27.4.
    mesh = quad(to_world(5.7, z), to_world(20.3, z), to_world(4.6, z), to_world(27.4, z), z, torch.float32)
    a = render_mesh(mesh, cam, antialias=True).alpha[0, ..., 0]
    hard = render_mesh(mesh, cam).alpha[0, ..., 0]
    rows, cols = slice(6, 26), slice(7, 19)
    assert torch.equal(a[rows, cols], torch.ones_like(a[rows, cols]))
    torch.testing.assert_close(a[rows, 20], torch.full((20,), 0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[rows, 5], torch.full((20,), 0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[4, cols], torch.full((12,), 0.4), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[27, cols], torch.full((12,), 0.4), atol=1e-5, rtol=0)
    assert a[:, 22:].abs().max() == 0 and a[:3].abs().max() == 0
    assert torch.equal(render_mesh(mesh, cam, antialias=False).alpha[0, ..., 0], hard)  # default unchanged


def test_interior_edges_are_not_blended_and_silhouettes_are():
    cam = plane_camera()
    mesh = quad(to_world(3.3, 2.0), to_world(28.6, 2.0), to_world(4.2, 2.0), to_world(27.7, 2.0), 2.0)
    frags = rasterize(mesh.vertices, mesh.faces, cam)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    img = face_colour_image(frags.face_id, colours, torch.zeros(3, dtype=torch.float64))
    out = antialias(img, frags, project_vertices(mesh.vertices, cam), mesh.faces)
    changed = (out - img).abs().sum(-1) > 0
    inner = torch.zeros_like(changed[0])
    inner[6:26, 5:27] = True  # pixels whose neighbours are all covered (the diagonal runs through them)
    diagonal = frags.face_id[0, 6:26, 5:27]
    assert (diagonal == 0).any() and (diagonal == 1).any()
    assert not changed[0][inner].any()
    assert changed[0, :, 28].sum() >= 20 and changed[0, 27, :].sum() >= 20  # x = 28.6, y = 27.7 blend


def random_mesh(seed: int, open_: bool, subdivisions: int = 2) -> Mesh:
    """A bumpy, stretched, rotated icosphere (concave in places, so silhouettes also fall on the
    mesh itself); ``open_``: a bowl with boundary edges. 4 subdivisions: faces smaller than a
    pixel at 40 px, so segments between pixel centres cross several faces."""
    g = torch.Generator().manual_seed(seed)
    tm = trimesh.creation.icosphere(subdivisions)
    v = torch.tensor(tm.vertices)
    v = v * (1 + 0.25 * (torch.rand(len(v), 1, generator=g, dtype=torch.float64) - 0.5))
    v = v * (0.6 + 0.5 * torch.rand(3, generator=g, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    v = v @ q.T
    faces = torch.tensor(tm.faces)
    if open_:
        faces = faces[torch.tensor(tm.triangles_center[:, 1] < 0.4)]
    return Mesh(v, faces)


def random_cameras(seed: int, n: int = 2, size: int = 40) -> Cameras:
    g = torch.Generator().manual_seed(1000 + seed)
    el = (torch.rand(n, generator=g) * 120 - 60).double()
    az = (torch.rand(n, generator=g) * 360 - 180).double()
    radius = (2.2 + torch.rand(n, generator=g)).double()
    return make_cameras(el, az, radius, 40.0 + 15.0 * torch.rand(1, generator=g).item(), size)


@pytest.mark.parametrize("seed,open_,subdivisions", [(0, False, 2), (1, False, 2), (2, True, 2), (3, True, 2),
                                                     (4, False, 4), (5, True, 4)])
def test_gradient_matches_finite_differences(seed, open_, subdivisions):
    """Directional derivatives of a random linear loss of the antialiased image (random face
    colours: every gradient to the vertices comes from the antialiasing), float64."""
    mesh, cams = random_mesh(seed, open_, subdivisions), random_cameras(seed)
    g = torch.Generator().manual_seed(2000 + seed)
    colours = torch.rand(mesh.num_faces, 3, generator=g, dtype=torch.float64)
    bg = torch.rand(3, generator=g, dtype=torch.float64)
    neighbors = edge_neighbors(mesh.faces)
    frags0 = rasterize(mesh.vertices, mesh.faces, cams)
    weights = torch.randn(*frags0.face_id.shape, 3, generator=g, dtype=torch.float64)

    def loss(v, frags=None):
        frags = rasterize(v, mesh.faces, cams) if frags is None else frags
        img = face_colour_image(frags.face_id, colours, bg)
        out = antialias(img, frags, project_vertices(v, cams), mesh.faces, neighbors)
        return (weights * out).sum(), out, frags

    v = mesh.vertices.clone().requires_grad_(True)
    value, out, _ = loss(v, frags0)
    value.backward()
    img0 = face_colour_image(frags0.face_id, colours, bg)
    blended = ((out.detach() - img0).abs().sum(-1) > 1e-9).sum().item()
    assert blended >= 100, blended  # silhouettes are there: some inside the mesh, some against the background
    h, checked, errors = 1e-8, 0, []
    for k in range(20):
        u = torch.randn(mesh.vertices.shape, generator=g, dtype=torch.float64)
        plus, minus = loss(mesh.vertices + h * u), loss(mesh.vertices - h * u)
        if not (torch.equal(plus[2].face_id, frags0.face_id) and torch.equal(minus[2].face_id, frags0.face_id)):
            continue  # a pixel changed face: the finite difference straddles a step of the raster
        fd = (plus[0] - minus[0]).item() / (2 * h)
        an = (v.grad * u).sum().item()
        errors.append(abs(an - fd) / abs(fd))
        assert abs(fd) > 1e-2
        checked += 1
        if checked == 5:
            break
    print(f"\n{blended} blended pixels; relative errors of 5 directional derivatives: "
          + ", ".join(f"{e:.1e}" for e in errors))
    assert checked == 5
    assert max(errors) <= 0.05, errors


def shoelace(p: torch.Tensor) -> torch.Tensor:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * (x * y.roll(-1) - x.roll(-1) * y).sum().abs()


@pytest.mark.parametrize("seed", range(4))
def test_coverage_and_its_gradient_match_the_projected_area(seed):
    """The antialiased alpha of one triangle sums to its projected area (a continuous function of
    the vertices), and its gradient matches the closed-form derivative of that area."""
    g = torch.Generator().manual_seed(seed)
    cams = random_cameras(seed, n=1, size=64)
    size = 64
    while True:
        v = (torch.rand(3, 3, generator=g, dtype=torch.float64) - 0.5) * 1.6
        P = project_vertices(v, cams)[0]
        px = P[:, :2] / P[:, 2:]
        if (P[:, 2] > 0).all() and (px > 4).all() and (px < size - 4).all() and shoelace(px) > 300:
            break
    faces = torch.tensor([[0, 1, 2]])
    mesh = Mesh(v.clone().requires_grad_(True), faces)
    alpha = render_mesh(mesh, cams, antialias=True).alpha
    total = alpha.sum()
    total.backward()
    vr = v.clone().requires_grad_(True)
    Pr = project_vertices(vr, cams)[0]
    area = shoelace(Pr[:, :2] / Pr[:, 2:])
    area.backward()
    print(f"\ncoverage {total.item():.2f} px^2, area {area.item():.2f} px^2; "
          f"gradient error {((mesh.vertices.grad - vr.grad).norm() / vr.grad.norm()).item():.4f}")
    assert abs(total.item() - area.item()) <= 0.02 * area.item()
    assert (mesh.vertices.grad - vr.grad).norm() <= 0.05 * vr.grad.norm()
    assert render_mesh(Mesh(v, faces), cams).alpha.sum() != total  # the hard mask counts pixel centres only


def test_antialiased_alpha_is_closer_to_supersampling():
    mesh = random_mesh(5, False)
    mesh = Mesh(mesh.vertices.float(), mesh.faces)
    cams = random_cameras(5, n=2, size=48)
    ref = render_mesh(mesh, cams, ssaa=8).alpha
    hard = (render_mesh(mesh, cams).alpha - ref).abs().mean()
    aa = (render_mesh(mesh, cams, antialias=True).alpha - ref).abs().mean()
    print(f"\nmean |alpha - alpha(ssaa 8)|: hard {hard:.4f}, antialiased {aa:.4f}")
    assert aa < 0.35 * hard  # per pixel the blend is a 1-D estimate of the coverage, so not exact


def iou(mesh: Mesh, target: Mesh, cams: Cameras) -> float:
    a = rasterize(mesh.vertices.detach(), mesh.faces, cams).face_id >= 0
    b = rasterize(target.vertices, target.faces, cams).face_id >= 0
    return ((a & b).sum() / (a | b).sum()).item()


def fit_sphere_to_cube(antialiased: bool, steps: int):
    torch.manual_seed(0)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube = Mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    ball = trimesh.creation.icosphere(3)
    sphere = Mesh(torch.tensor(ball.vertices * 0.6, dtype=torch.float32), torch.tensor(ball.faces))
    el = torch.tensor([30.0] * 4 + [-30.0] * 4, dtype=torch.float64)
    az = torch.tensor([45.0, 135.0, -135.0, -45.0] * 2, dtype=torch.float64)
    cams = make_cameras(el, az, 2.5, 40.0, 64)
    target = render_mesh(cube, cams, ssaa=4).alpha
    offsets = torch.zeros_like(sphere.vertices, requires_grad=True)
    opt = torch.optim.Adam([offsets], lr=0.01)
    start = iou(sphere, cube, cams)
    for _ in range(steps):
        mesh = Mesh(sphere.vertices + offsets, sphere.faces)
        alpha = render_mesh(mesh, cams, antialias=antialiased).alpha
        loss = (alpha - target).pow(2).mean() + 0.5 * laplacian_loss(offsets, sphere.faces)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = Mesh(sphere.vertices + offsets.detach(), sphere.faces)
    return start, iou(final, cube, cams), offsets.detach(), final, cube


def test_sphere_fits_cube_silhouettes_only_with_antialiasing():
    t = time.perf_counter()
    start, end, offsets, final, cube = fit_sphere_to_cube(True, 200)
    held_out = make_cameras(torch.tensor([0.0, 60.0, -75.0]).double(), torch.tensor([10.0, 100.0, -160.0]).double(),
                            2.5, 40.0, 64)
    print(f"\nsphere -> cube: IoU {start:.3f} -> {end:.3f} over the 8 views "
          f"({iou(final, cube, held_out):.3f} on 3 others), {time.perf_counter() - t:.1f} s")
    assert start < 0.9 and end >= 0.97
    start2, end2, offsets2, _, _ = fit_sphere_to_cube(False, 20)
    assert offsets2.abs().max() == 0 and end2 == start2  # no gradient reaches the silhouettes without it
