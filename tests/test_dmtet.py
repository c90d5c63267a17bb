"""DMTet (representations/dmtet.py): the grid, marching tetrahedra against an analytic sphere,
gradients against finite differences (float64), a fit to a target shape by Chamfer, the
regularisers against brute force and closed forms, and starting from a coarse field."""

import itertools
import math

import pytest
import torch

from dreamgs.mesh.regularize import laplacian_loss
from dreamgs.mesh.regularize import normal_consistency_loss as normal_consistency
from dreamgs.representations.dmtet import (DMTet, case_table, marching_tets, sample_density_grid, sdf_from_density,
                                           sdf_from_grid, sdf_from_nerf, tet_grid, vertex_normals)


def _closed_and_oriented(faces: torch.Tensor) -> bool:
    """Every directed edge appears once and its reverse once: a closed, consistently wound mesh."""
    directed = torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2).tolist()
    seen = {}
    for a, b in directed:
        seen[(a, b)] = seen.get((a, b), 0) + 1
    return all(c == 1 and seen.get((b, a)) == 1 for (a, b), c in seen.items())


def _volume(verts, faces) -> float:
    v = verts.double()[faces]
    return float(torch.linalg.det(v).sum() / 6.0)


def test_grid_tets_are_positive_and_fill_the_box():
    g = tet_grid(3, bound=0.5)
    assert g.vertices.shape == (64, 3) and g.tets.shape == (6 * 27, 4)
    v = g.vertices.double()[g.tets]
    det = torch.linalg.det(v[:, 1:] - v[:, :1])
    assert bool((det > 0).all())
    assert math.isclose(float(det.sum() / 6), 1.0, rel_tol=1e-9)  # the volumes add up to the box's
    assert int(g.boundary.sum()) == 64 - 8  # all but the 2^3 interior vertices


def test_case_table_against_geometry_of_random_tets():
    """Every sign case on random positive tetrahedra with random crossing points: the triangles
    separate inside from outside and face outwards."""
    table, count = case_table()
    assert count.tolist() == [0] + [1 if bin(c).count("1") in (1, 3) else 2 for c in range(1, 15)] + [0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        if torch.linalg.det(p[1:] - p[:1]) < 0:
            p[[2, 3]] = p[[3, 2]]
        for code in range(1, 15):
            sdf = torch.tensor([-1.0 if code >> i & 1 else 1.0 for i in range(4)], dtype=torch.float64)
            sdf = sdf * (0.2 + torch.rand(4, generator=gen, dtype=torch.float64))
            verts, faces = marching_tets(p, sdf, torch.tensor([[0, 1, 2, 3]]))
            assert len(faces) == count[code]
            ins, outs = p[sdf < 0].mean(0), p[sdf >= 0].mean(0)
            for f in faces:
                a, b, c = verts[f]
                n = torch.linalg.cross(b - a, c - a)
                assert float(torch.dot(n, outs - ins)) > 0, code


@pytest.mark.parametrize("radius", [0.3, 0.41])
def test_marching_tets_of_a_sphere_is_closed_oriented_and_on_the_sphere(radius):
    g = tet_grid(12, bound=0.5)
    sdf = (g.vertices.double().norm(dim=-1) - radius) / g.cell
    verts, faces = marching_tets(g.vertices.double(), sdf, g.tets)
    assert len(faces) > 100
    assert _closed_and_oriented(faces)
    assert len(torch.unique(faces)) == len(verts)  # every vertex is used
    r = verts.norm(dim=-1)
    # Linear interpolation of |x| - r along an edge of length <= sqrt(3) cell errs by less than a cell.
    assert float((r - radius).abs().max()) < g.cell
    vol = _volume(verts, faces)
    assert vol > 0  # counter-clockwise from outside
    assert abs(vol - 4 / 3 * math.pi * radius**3) / (4 / 3 * math.pi * radius**3) < 0.05
    # Euler characteristic of a sphere: V - E + F = 2.
    edges = torch.unique(torch.sort(torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2), -1).values, dim=0)
    assert len(verts) - len(edges) + len(faces) == 2


def test_surface_is_closed_where_the_shape_reaches_the_border():
    g = tet_grid(6, bound=0.5)
    m = DMTet(g, (g.vertices.norm(dim=-1) - 0.9) / g.cell)  # a sphere larger than the box
    verts, faces = m.surface()
    assert len(faces) > 0 and _closed_and_oriented(faces)


def _gradcheck_setup():
    g = tet_grid(4, bound=0.5)
    g.vertices = g.vertices.double()
    gen = torch.Generator().manual_seed(1)
    sdf = (g.vertices.norm(dim=-1) - 0.3) / g.cell + 0.05 * torch.randn(len(g.vertices), generator=gen,
                                                                         dtype=torch.float64)
    deform = 0.5 * torch.randn(len(g.vertices), 3, generator=gen, dtype=torch.float64)
    return g, sdf, deform


def test_vertex_gradients_match_finite_differences_in_sdf_and_deformation():
    g, sdf0, deform0 = _gradcheck_setup()
    m = DMTet(g, sdf0, deform0, deform_scale=0.4)
    verts, faces = m.surface()
    weights = torch.randn(verts.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(sdf, deform):
        m.params[DMTet.SDF], m.params[DMTet.DEFORM] = sdf, deform
        v, f = m.surface()
        assert torch.equal(f, faces)  # the perturbations never change a sign
        n = vertex_normals(v, f)
        return (weights * v).sum() + (n[:, 0] * v[:, 1]).sum()  # vertices and their normals

    sdf, deform = sdf0.clone().requires_grad_(True), deform0.clone().requires_grad_(True)
    loss(sdf, deform).backward()
    eps = 1e-6
    near = torch.nonzero((sdf0.abs() < 1.5)).squeeze(1)[:12]  # vertices at crossing edges
    assert len(near) >= 8
    for i in near.tolist():
        d = torch.zeros_like(sdf0)
        d[i] = eps
        fd = (loss(sdf0 + d, deform0) - loss(sdf0 - d, deform0)) / (2 * eps)
        assert abs(float(fd) - float(sdf.grad[i])) <= 1e-6 * max(1.0, abs(float(fd))), i
        for k in range(3):
            d3 = torch.zeros_like(deform0)
            d3[i, k] = eps
            fd = (loss(sdf0, deform0 + d3) - loss(sdf0, deform0 - d3)) / (2 * eps)
            assert abs(float(fd) - float(deform.grad[i, k])) <= 1e-6 * max(1.0, abs(float(fd))), (i, k)
    assert float(sdf.grad.abs().sum()) > 0 and float(deform.grad.abs().sum()) > 0


def test_gradcheck_of_the_surface():
    g, sdf0, deform0 = _gradcheck_setup()

    def fn(sdf, deform):
        m = DMTet(g, sdf0, deform0, deform_scale=0.4)
        m.params = {DMTet.SDF: sdf, DMTet.DEFORM: deform}
        return m.surface()[0]

    assert torch.autograd.gradcheck(fn, (sdf0.clone().requires_grad_(True), deform0.clone().requires_grad_(True)),
                                    eps=1e-6, atol=1e-6)


def _surface_samples(verts, faces, per_side: int = 4):
    """Points on every face on a fixed barycentric lattice (for a mesh-to-points Chamfer)."""
    k = torch.tensor([(i, j) for i in range(per_side + 1) for j in range(per_side + 1 - i)], dtype=verts.dtype)
    b = torch.cat([k, per_side - k.sum(1, keepdim=True)], 1) / per_side  # (S, 3)
    return torch.einsum("sk,fkd->fsd", b, verts[faces]).reshape(-1, 3)


def _chamfer(verts, faces, target, axes):
    """Surface to ellipsoid (first-order distance |f| / |grad f| of f = |x / axes|^2 - 1, exact to
    first order near it) plus target points to the nearest surface sample."""
    x = _surface_samples(verts, faces, 6).double()
    a = axes.double()
    f = ((x / a) ** 2).sum(-1) - 1
    to_shape = (f.abs() / (2 * x / a**2).norm(dim=-1)).mean()
    to_mesh = torch.cdist(target.double(), x).min(1).values.mean()
    return float(to_shape + to_mesh)


def test_fitting_the_sdf_to_points_on_a_target_reaches_a_small_chamfer():
    """From a sphere to an ellipsoid by a Chamfer loss of the surface vertices to points sampled on
    it (no rasteriser); scored by the Chamfer of the whole surface (points on every face)."""
    g = tet_grid(10, bound=0.5)
    axes = torch.tensor([0.36, 0.24, 0.18])
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    target = dirs * axes
    m = DMTet(g, (g.vertices.norm(dim=-1) - 0.26) / g.cell, deform_scale=0.25)
    start = _chamfer(*[t.detach() for t in m.surface()], target, axes)
    opt = torch.optim.Adam(list(m.params.values()), lr=0.1)
    for _ in range(60):
        v, f = m.surface()
        d = torch.cdist(v, target)
        loss = d.min(1).values.mean() + d.min(0).values.mean() + 0.1 * laplacian_loss(v, f)
        opt.zero_grad()
        loss.backward()
        opt.step()
    v, f = (t.detach() for t in m.surface())
    end = _chamfer(v, f, target, axes)
    assert end < 0.1 * g.cell and end < start / 5, (start, end)
    assert _closed_and_oriented(f)


def test_normal_consistency_closed_form_cube_and_brute_force():
    import trimesh

    cube = trimesh.creation.box((1.0, 1.0, 1.0))
    v, f = torch.tensor(cube.vertices), torch.tensor(cube.faces)
    # 12 cube edges at right angles (1 - cos = 1) and 6 face diagonals between coplanar faces (0).
    assert math.isclose(float(normal_consistency(v, f)), 12 / 18, rel_tol=1e-12)
    sphere = trimesh.creation.icosphere(1)
    gen = torch.Generator().manual_seed(4)
    v = torch.tensor(sphere.vertices) + 0.05 * torch.randn(len(sphere.vertices), 3, generator=gen,
                                                           dtype=torch.float64)
    f = torch.tensor(sphere.faces)
    total, n = 0.0, 0
    for i, j in itertools.combinations(range(len(f)), 2):
        if len(set(f[i].tolist()) & set(f[j].tolist())) == 2:
            ni = torch.linalg.cross(v[f[i, 1]] - v[f[i, 0]], v[f[i, 2]] - v[f[i, 0]])
            nj = torch.linalg.cross(v[f[j, 1]] - v[f[j, 0]], v[f[j, 2]] - v[f[j, 0]])
            total += 1 - float(torch.dot(ni, nj) / (ni.norm() * nj.norm()))
            n += 1
    assert n == 120 and math.isclose(float(normal_consistency(v, f)), total / n, rel_tol=1e-10)


def test_laplacian_closed_form_octahedron_and_brute_force():
    import trimesh

    r = 0.7
    octa = torch.tensor([[r, 0, 0], [-r, 0, 0], [0, r, 0], [0, -r, 0], [0, 0, r], [0, 0, -r]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert math.isclose(float(laplacian_loss(octa, faces)), r * r, rel_tol=1e-12)  # neighbours' centroid: 0
    sphere = trimesh.creation.icosphere(1)
    gen = torch.Generator().manual_seed(5)
    v = torch.tensor(sphere.vertices) + 0.05 * torch.randn(len(sphere.vertices), 3, generator=gen,
                                                           dtype=torch.float64)
    f = torch.tensor(sphere.faces)
    total = 0.0
    for i in range(len(v)):
        nb = {int(x) for face in f.tolist() if i in face for x in face} - {i}
        c = v[sorted(nb)].mean(0)
        total += float(((v[i] - c) ** 2).sum())
    assert math.isclose(float(laplacian_loss(v, f)), total / len(v), rel_tol=1e-10)


def test_sdf_from_density_keeps_the_crossings_and_scales_to_cells():
    g = tet_grid(10, bound=0.5)
    radius = 0.3
    # A density falling linearly through the threshold 5 at |x| = radius, 40 units per world unit.
    dens = 5.0 + 40.0 * (radius - g.vertices.double().norm(dim=-1))
    sdf = sdf_from_density(g, dens, threshold=5.0)
    exact = (g.vertices.double().norm(dim=-1) - radius) / g.cell
    near = (exact.abs() < 2.0) & (exact.abs() > 0.1)
    ratio = sdf[near].double() / exact[near]
    assert float(ratio.std()) < 1e-5  # one scale: the crossings of the density are kept
    assert abs(float(ratio.mean()) - 1.0) < 0.05  # slope 40 per world unit -> a distance in cells
    assert float(sdf.abs().max()) <= 3.0
    assert bool((sdf_from_density(g, torch.zeros(len(g.vertices)), 5.0) > 0).all())  # no surface: all outside


def test_sdf_from_the_gaussians_density_grid_and_from_a_nerf():
    from dreamgs.gaussians import GaussianModel
    from dreamgs.config import MeshConfig
    from dreamgs.mesh.extract import density_grid, mesh_from_grid
    from dreamgs.representations.nerf import NerfModel, NerfSpec

    g = tet_grid(10, bound=0.6)
    # Gaussians: a ball of points; the DMTet surface starts near the density grid's own iso-surface.
    gen = torch.Generator().manual_seed(6)
    pts = torch.nn.functional.normalize(torch.randn(3000, 3, generator=gen), dim=-1) * 0.3 * torch.rand(
        3000, 1, generator=gen) ** (1 / 3)
    model = GaussianModel.from_points(pts, opacity=0.5, scales=torch.full((3000, 3), 0.03))
    dg = density_grid(model, resolution=48, margin=0.2)
    verts, _ = DMTet(g, sdf_from_grid(g, dg, 1.0)).surface()
    truth = mesh_from_grid(dg, MeshConfig(target_faces=0), 1.0).vertices  # marching cubes of the same grid
    d = torch.cdist(verts.detach(), truth).min(1).values
    # Signs differ at both ends of a crossing edge (at most sqrt(3) cells long), so the grid's own
    # surface crosses that edge too: no vertex can be farther from it than the edge's length.
    assert len(verts) > 50 and float(d.mean()) < 0.4 * g.cell and float(d.max()) < math.sqrt(3) * g.cell
    # NeRF: the untrained field is the centre blob, softplus(10 (1 - |x| / 0.5) + small).
    nerf = NerfModel.create(NerfSpec(levels=2, base_resolution=8, max_resolution=16, hidden=8))
    sdf = sdf_from_nerf(g, nerf, threshold=5.0)
    verts = DMTet(g, sdf).surface()[0].detach()
    # softplus(z) = 5 at z ~ 4.993: |x| = 0.5 (1 - 4.993 / 10) ~ 0.25
    r = verts.norm(dim=-1)
    assert abs(float(r.mean()) - 0.2503) < 0.02 and float((r - 0.2503).abs().max()) < g.cell


def test_render_antialiases_when_asked(monkeypatch):
    import dreamgs.mesh.raster as raster
    from dreamgs.cameras import make_cameras
    from dreamgs.representations.dmtet import DMTetModel
    from dreamgs.representations.nerf import NerfModel, NerfSpec

    g = tet_grid(6, bound=0.75)
    color = NerfModel.create(NerfSpec(levels=2, base_resolution=8, max_resolution=16, hidden=8))
    model = DMTetModel(DMTet(g, (g.vertices.norm(dim=-1) - 0.4) / g.cell), color)
    cams = make_cameras(0.0, 0.0, 2.5, 49.1, 16)
    original, calls = raster.render_mesh, []

    def spy(mesh, cams, background=None, ssaa=1, near=0.01, antialias=False):
        calls.append(antialias)
        return original(mesh, cams, background=background, ssaa=ssaa, near=near, antialias=antialias)

    monkeypatch.setattr(raster, "render_mesh", spy)
    r = model.render(cams, torch.ones(3))
    assert r.rgb.shape == (1, 16, 16, 3) and float(r.alpha.detach().sum()) > 0
    model.render(cams, torch.ones(3), antialias=False)
    assert calls == [True, False]
