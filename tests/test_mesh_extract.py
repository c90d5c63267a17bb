"""Density grid against a float64 brute force; extracted meshes against known shapes."""

import math

import numpy as np
import pytest
import torch

from dreamgs.config import MeshConfig
from dreamgs.errors import InputError
from dreamgs.gaussians import GaussianModel, quat_to_rotmat, rgb_to_sh
from dreamgs.mesh.extract import clean_mesh, density_grid, extract_mesh, fill_cavities


def random_model(n, seed, scale_range=(0.02, 0.15)):
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    params = {
        "means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.0, 0.6, 0.8]) + 0.3,
        "scales": lo + (hi - lo) * torch.rand(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) * 2.0,
        "sh0": torch.zeros(n, 1, 3),
        "shN": torch.zeros(n, 0, 3),
    }
    return GaussianModel(params)


def brute_force(model, points, opacity_threshold=0.005, cutoff=None):
    """Sum over Gaussians of o * exp(-q/2) at each point, float64; with ``cutoff``, only q <= cutoff^2."""
    keep = model.opacities > opacity_threshold
    mu = model.means[keep].double()
    R = quat_to_rotmat(model.params["quats"][keep].double())
    S2 = model.scales[keep].double().square()
    cov = (R * S2[:, None, :]) @ R.transpose(-1, -2)
    inv = torch.linalg.inv(cov)
    o = model.opacities[keep].double()
    d = points.double()[:, None, :] - mu[None]
    q = torch.einsum("pni,nij,pnj->pn", d, inv, d)
    w = o * torch.exp(-0.5 * q)
    if cutoff is not None:
        w = torch.where(q <= cutoff ** 2, w, torch.zeros_like(w))
    return w.sum(-1)


@pytest.mark.parametrize("block_size", [3, 5, 16])
def test_density_grid_matches_brute_force(block_size):
    model = random_model(150, seed=1)
    grid = density_grid(model, resolution=13, block_size=block_size, cutoff=8.0)
    pts = grid.points().reshape(-1, 3)
    ref = brute_force(model, pts)
    assert ref.max() > 0.5  # the grid sees real structure
    torch.testing.assert_close(grid.values.reshape(-1).double(), ref, atol=2e-5, rtol=1e-4)


def test_density_grid_cutoff_bounds():
    """With the 3-sigma box cull every value lies between the ellipsoid-truncated and the full sum."""
    model = random_model(80, seed=2, scale_range=(0.01, 0.08))
    grid = density_grid(model, resolution=17, block_size=4, cutoff=3.0)
    pts = grid.points().reshape(-1, 3)
    full, truncated = brute_force(model, pts), brute_force(model, pts, cutoff=3.0)
    v = grid.values.reshape(-1).double()
    assert (v >= truncated - 1e-5).all() and (v <= full + 1e-5).all()
    assert (full - truncated).max() > 1e-4  # the cut is real, so the bounds are meaningful


def test_density_grid_float64_and_mapping():
    model = random_model(30, seed=3)
    grid = density_grid(model, resolution=9, block_size=4, cutoff=10.0, dtype=torch.float64)
    assert grid.values.dtype == torch.float64
    ijk = torch.tensor([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0], [2.0, 5.0, 7.0]], dtype=torch.float64)
    world = grid.to_world(ijk)
    torch.testing.assert_close(grid.values[2, 5, 7], brute_force(model, world[2:])[0], atol=1e-10, rtol=1e-10)
    # The cube holds every kept mean, with a margin.
    keep = model.opacities > 0.005
    assert (world[0] < model.means[keep].double().amin(0)).all()
    assert (world[1] > model.means[keep].double().amax(0)).all()
    torch.testing.assert_close(world[1] - world[0], torch.full((3,), 8 * grid.spacing, dtype=torch.float64))


def test_density_grid_colours_match_brute_force():
    model = random_model(120, seed=6)
    g = torch.Generator().manual_seed(0)
    model.params["sh0"] = (torch.rand(120, 1, 3, generator=g) - 0.5) * 3.0  # some colours clamp
    grid = density_grid(model, resolution=11, block_size=4, cutoff=8.0, dtype=torch.float64, colors=True)
    pts = grid.points().reshape(-1, 3)
    keep = model.opacities > 0.005
    rgb = model.colors()[keep].double().clamp(0, 1)
    # Weighted colour sum, brute force: sum_i w_i(x) rgb_i.
    mu = model.means[keep].double()
    R = quat_to_rotmat(model.params["quats"][keep].double())
    cov = (R * model.scales[keep].double().square()[:, None, :]) @ R.transpose(-1, -2)
    d = pts[:, None, :] - mu[None]
    w = model.opacities[keep].double() * torch.exp(-0.5 * torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d))
    torch.testing.assert_close(grid.colors.reshape(-1, 3), w @ rgb, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(grid.values.reshape(-1), w.sum(-1), atol=1e-9, rtol=1e-7)
    # At grid points, sample_colors is the weighted mean colour.
    mean = (w @ rgb) / w.sum(-1, keepdim=True)
    ok = w.sum(-1) > 0.1
    torch.testing.assert_close(grid.sample_colors(pts[ok]), mean[ok].clamp(0, 1), atol=1e-6, rtol=1e-6)


def test_extract_vertex_colours():
    """Left half of a ball red, right half green: the vertices take the colour of their side."""
    model = filled_model(sdf_sphere, spacing=0.05, extent=0.6)
    x = model.means[:, 0]
    colors = torch.where(x[:, None] < 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.9, 0.1]))
    model.params["sh0"] = rgb_to_sh(colors)[:, None, :]
    mesh = extract_mesh(model, MeshConfig(grid_resolution=40, target_faces=3000, vertex_colors=True))
    vx, vc = mesh.vertices[:, 0], mesh.vertex_colors
    assert vc.shape == mesh.vertices.shape
    torch.testing.assert_close(vc[vx < -0.15], torch.tensor([0.9, 0.1, 0.1]).expand(int((vx < -0.15).sum()), 3),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(vc[vx > 0.15], torch.tensor([0.1, 0.9, 0.1]).expand(int((vx > 0.15).sum()), 3),
                               atol=1e-3, rtol=0)
    assert extract_mesh(model, MeshConfig(grid_resolution=40, target_faces=3000)).vertex_colors is None


def test_density_grid_thin_gaussians_float32():
    """Very flat Gaussians (1e-4 thick): float32 values agree with float64."""
    model = random_model(40, seed=4)
    model.params["scales"][:, 2] = math.log(1e-4)
    g32 = density_grid(model, resolution=16, block_size=8, cutoff=3.0)
    g64 = density_grid(model, resolution=16, block_size=8, cutoff=3.0, dtype=torch.float64)
    torch.testing.assert_close(g32.values.double(), g64.values, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_density_grid_cuda_matches_cpu():
    model = random_model(200, seed=5)
    a = density_grid(model, resolution=32, block_size=8)
    b = density_grid(model.to("cuda"), resolution=32, block_size=8)
    assert b.values.is_cuda
    torch.testing.assert_close(b.values.cpu(), a.values, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Shapes filled with small Gaussians


def sdf_sphere(p, r=0.5):
    return np.linalg.norm(p, axis=-1) - r


def sdf_box(p, half=(0.45, 0.3, 0.35)):
    q = np.abs(p) - np.asarray(half)
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def sdf_torus(p, R=0.35, r=0.15):
    q = np.stack([np.linalg.norm(p[..., [0, 2]], axis=-1) - R, p[..., 1]], -1)
    return np.linalg.norm(q, axis=-1) - r


def filled_model(sdf, spacing, extent, seed=0, shell=None):
    """Gaussians on a jittered lattice inside ``sdf < 0`` (or within ``shell`` of the surface).

    The opacity is chosen so the density deep inside is about 2, so the default threshold 1
    sits at the shape's boundary.
    """
    rng = np.random.default_rng(seed)
    r = np.arange(-extent, extent + 1e-9, spacing)
    pts = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pts = pts + rng.uniform(-0.15, 0.15, pts.shape) * spacing
    d = sdf(pts)
    inside = d < 0 if shell is None else (d < 0) & (d > -shell)
    pts = pts[inside]
    sigma = 0.6 * spacing
    lattice_sum = (2 * math.pi) ** 1.5 * (sigma / spacing) ** 3
    opacity = 2.0 / lattice_sum
    return GaussianModel.from_points(torch.tensor(pts, dtype=torch.float32), opacity=opacity,
                                     scales=torch.full((len(pts), 3), sigma))


def sample_sphere(n, rng, r=0.5):
    v = rng.normal(size=(n, 3))
    return r * v / np.linalg.norm(v, axis=1, keepdims=True)


def sample_box(n, rng, half=(0.45, 0.3, 0.35)):
    h = np.asarray(half)
    areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
    axis = rng.choice(3, size=n, p=areas / areas.sum())
    p = rng.uniform(-1, 1, (n, 3)) * h
    p[np.arange(n), axis] = np.where(rng.random(n) < 0.5, -1, 1) * h[axis]
    return p


def sample_torus(n, rng, R=0.35, r=0.15):
    # Rejection sampling for uniform area: the area element is proportional to R + r cos(phi).
    u, phi = rng.uniform(0, 2 * np.pi, (2, 4 * n))
    keep = rng.uniform(0, R + r, 4 * n) < R + r * np.cos(phi)
    u, phi = u[keep][:n], phi[keep][:n]
    return np.stack([(R + r * np.cos(phi)) * np.cos(u), r * np.sin(phi), (R + r * np.cos(phi)) * np.sin(u)], -1)


def chamfer(mesh, sdf, surface_points, rng):
    """Symmetric Chamfer distance (mean of both directions) and the one-sided maxima."""
    import trimesh
    from scipy.spatial import cKDTree

    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    on_mesh = trimesh.sample.sample_surface(tm, 200_000, seed=int(rng.integers(1 << 31)))[0]
    d_mesh_to_true = np.abs(sdf(on_mesh))  # exact: these SDFs are true distances
    d_true_to_mesh = cKDTree(on_mesh).query(surface_points)[0]
    return 0.5 * (d_mesh_to_true.mean() + d_true_to_mesh.mean()), d_mesh_to_true.max(), d_true_to_mesh.max()


@pytest.mark.parametrize("name,sdf,sampler,half", [
    ("sphere", sdf_sphere, sample_sphere, (0.5, 0.5, 0.5)),
    ("box", sdf_box, sample_box, (0.45, 0.3, 0.35)),
    ("torus", sdf_torus, sample_torus, (0.5, 0.15, 0.5)),
])
def test_extract_known_shapes(name, sdf, sampler, half):
    import trimesh

    rng = np.random.default_rng(0)
    model = filled_model(sdf, spacing=0.04, extent=0.6)
    mesh = extract_mesh(model, MeshConfig(grid_resolution=64, target_faces=20_000))
    diag = 2 * np.linalg.norm(half)
    cd, max_out, max_in = chamfer(mesh, sdf, sampler(20_000, rng), rng)
    assert cd <= 0.015 * diag, (name, cd / diag)
    assert max(max_out, max_in) <= 0.05 * diag, (name, max_out / diag, max_in / diag)
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0  # counter-clockwise from outside
    assert len(tm.split(only_watertight=False)) == 1
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64


def test_hollow_shell_gives_one_outer_surface():
    """A fitted model is often a shell: cavity filling leaves only the outer surface."""
    import trimesh

    model = filled_model(sdf_sphere, spacing=0.04, extent=0.6, shell=0.12)
    filled = extract_mesh(model, MeshConfig(grid_resolution=48, target_faces=0))
    hollow = extract_mesh(model, MeshConfig(grid_resolution=48, target_faces=0, fill_cavities=False))
    tm = trimesh.Trimesh(filled.vertices.numpy(), filled.faces.numpy(), process=False)
    assert len(tm.split(only_watertight=False)) == 1 and tm.is_watertight
    r = np.linalg.norm(tm.vertices, axis=1)
    assert abs(r.mean() - 0.5) < 0.015 and r.min() > 0.45
    th = trimesh.Trimesh(hollow.vertices.numpy(), hollow.faces.numpy(), process=False)
    parts = th.split(only_watertight=False)
    assert len(parts) == 2  # outer wall and the inner wall of the cavity
    inner = min(parts, key=lambda p: p.area)
    assert inner.volume < 0  # the cavity wall faces inwards, into the empty space
    assert filled.num_faces < hollow.num_faces


def surface_model(n, radius=0.5, tangent_sigma=0.02, normal_sigma=5e-4, opacity=0.8, seed=0):
    """Flat opaque disks tangent to a sphere, as a photometric 3DGS fit produces: a thin shell."""
    # Evenly spread centres (Fibonacci sphere), slightly jittered: an optimised fit covers the
    # surface without holes.
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    d = torch.stack([torch.sqrt(1 - y * y) * torch.cos(phi), y, torch.sqrt(1 - y * y) * torch.sin(phi)], -1).float()
    d = d + 0.3 * math.sqrt(4 * math.pi / n) * (torch.rand(n, 3, generator=g) - 0.5)
    d = d / d.norm(dim=-1, keepdim=True)
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(d)
    axis = torch.linalg.cross(z, d)
    s, c = axis.norm(dim=-1, keepdim=True), (z * d).sum(-1, keepdim=True)
    half = torch.atan2(s, c) / 2  # rotate +z (the thin axis) onto the normal
    quats = torch.cat([torch.cos(half), axis / s.clamp_min(1e-12) * torch.sin(half)], -1)
    model = GaussianModel.from_points(d * radius, opacity=opacity,
                                      scales=torch.tensor([tangent_sigma, tangent_sigma, normal_sigma]).expand(n, 3))
    model.params["quats"] = quats
    return model


def test_thin_surface_disks_give_a_closed_surface():
    """Disks 40x thinner than a voxel: min_sigma widens them so the shell is sampled, and the
    cavity filling keeps only its outer side."""
    import trimesh

    rng = np.random.default_rng(1)
    mesh = extract_mesh(surface_model(6000), MeshConfig(grid_resolution=64, target_faces=20_000))
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0 and len(tm.split(only_watertight=False)) == 1
    diag = 2 * math.sqrt(3) * 0.5
    cd, max_out, max_in = chamfer(mesh, sdf_sphere, sample_sphere(20_000, rng), rng)
    assert cd <= 0.015 * diag and max(max_out, max_in) <= 0.05 * diag


def test_decimation_reaches_target_and_stays_closed():
    import trimesh

    model = filled_model(sdf_torus, spacing=0.04, extent=0.6)
    full = extract_mesh(model, MeshConfig(grid_resolution=64, target_faces=0))
    assert full.num_faces > 10_000
    for target in (5000, 1500):
        mesh = extract_mesh(model, MeshConfig(grid_resolution=64, target_faces=target))
        assert 0.9 * target <= mesh.num_faces <= target
        tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
        assert tm.is_watertight and tm.volume > 0
        assert tm.euler_number == 0  # still a torus


def winding_number(tm, point):
    """Sum of the solid angles of a closed mesh's triangles seen from ``point``, over 4 pi."""
    a, b, c = (np.asarray(tm.triangles)[:, i] - point for i in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
    det = np.einsum("ij,ij->i", a, np.cross(b, c))
    div = la * lb * lc + (a * b).sum(1) * lc + (b * c).sum(1) * la + (c * a).sum(1) * lb
    return 2 * np.arctan2(det, div).sum() / (4 * np.pi)


@pytest.mark.parametrize("seed", [1, 4, 7, 8])
def test_decimated_blobs_stay_closed(seed):
    """Overlapping random blobs with thin necks: decimation folds and pinches such surfaces
    (edges with four faces); the clean-up must leave a closed, consistently wound mesh."""
    import trimesh

    model = random_model(400, seed=seed, scale_range=(0.02, 0.1))
    for target in (300, 2000):
        mesh = extract_mesh(model, MeshConfig(grid_resolution=48, target_faces=target, min_component_fraction=0.0))
        tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
        assert tm.is_watertight and tm.is_winding_consistent and mesh.num_faces <= target
        parts = tm.split(only_watertight=False)
        assert max(parts, key=lambda p: len(p.faces)).volume > 0
        for p in parts:  # outward, unless it is the wall of a cavity inside another part
            if p.volume < 0:
                point = p.triangles_center[0]
                assert any(q is not p and q.volume > 0 and abs(winding_number(q, point)) > 0.5 for q in parts)


def test_empty_model_raises():
    model = filled_model(sdf_sphere, spacing=0.1, extent=0.6)
    transparent = model.detach()
    transparent.params["opacities"][:] = -10.0  # opacity 4.5e-5, below the 0.005 threshold
    with pytest.raises(InputError, match="empty"):
        extract_mesh(transparent)
    with pytest.raises(InputError, match="empty"):
        density_grid(transparent)
    faint = model.detach()
    faint.params["opacities"][:] = -3.0  # visible but the density never reaches 1
    with pytest.raises(InputError, match="empty"):
        extract_mesh(faint, MeshConfig(grid_resolution=32))


# ------------------------------------------------------------------------------------------------
# Clean-up on hand-made meshes


def cube(offset=(0.0, 0.0, 0.0), size=1.0):
    import trimesh

    m = trimesh.creation.box(extents=(size, size, size))
    return np.asarray(m.vertices) + np.asarray(offset), np.asarray(m.faces, np.int64)


def combine(*parts):
    vs, fs, n = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def test_clean_cuts_cubes_touching_along_an_edge():
    """Two closed cubes sharing an edge (4 faces on it): cut into two closed manifolds."""
    import trimesh

    v, f = combine(cube((0, 0, 0)), cube((1, 1, 0)))
    # Weld: the shared edge's vertices coincide, which makes that edge non-manifold.
    v, f = clean_mesh(v, f, merge_tol=1e-6)
    edges = np.sort(np.stack([f, np.roll(f, -1, 1)], -1).reshape(-1, 2), axis=1)
    assert np.unique(edges, axis=0, return_counts=True)[1].max() == 2
    tm = trimesh.Trimesh(v, f, process=False)
    assert tm.is_watertight and len(tm.split()) == 2 and abs(tm.volume - 2.0) < 1e-9


def test_clean_splits_bowtie_vertex_and_fixes_orientation():
    import trimesh

    a = trimesh.creation.icosahedron()
    va, fa = np.asarray(a.vertices), np.asarray(a.faces, np.int64)
    top = va[:, 2].argmax()
    # Reflect through the top vertex: a second icosahedron touching the first at that vertex.
    # The reflection (det -1) turns the same faces inside out.
    vb = 2 * va[top] - va
    assert trimesh.Trimesh(vb, fa, process=False).volume < 0
    v, f = clean_mesh(*combine((va, fa), (vb, fa)), merge_tol=1e-6)
    tm = trimesh.Trimesh(v, f, process=False)
    parts = tm.split(only_watertight=False)
    assert len(parts) == 2
    assert all(p.is_watertight and p.volume > 0 for p in parts)
    assert len(v) == 24  # the shared vertex was welded, then split again into one per fan


def test_clean_removes_degenerate_duplicate_faces_and_small_parts():
    import trimesh

    big = trimesh.creation.icosphere(3)
    small = trimesh.creation.icosphere(0, radius=0.05)
    vb, fb = np.asarray(big.vertices), np.asarray(big.faces, np.int64)
    vs, fs = np.asarray(small.vertices) + 3.0, np.asarray(small.faces, np.int64)
    v, f = combine((vb, fb), (vs, fs))
    extra = np.array([[0, 0, 1], [1, 2, 1], fb[5], fb[7][[1, 2, 0]]])  # repeated indices, duplicates
    v2, f2 = clean_mesh(v, np.concatenate([f, extra]), merge_tol=1e-6, min_component_fraction=0.05)
    assert len(f2) == len(fb) and len(v2) == len(vb)
    tm = trimesh.Trimesh(v2, f2, process=False)
    assert tm.is_watertight and abs(tm.volume - big.volume) < 1e-9
    # Without the fraction, the small sphere survives.
    v3, f3 = clean_mesh(v, f, merge_tol=1e-6)
    assert len(f3) == len(fb) + len(fs)
