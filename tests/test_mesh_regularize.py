"""Mesh regularisers (dreamgs.mesh.regularize) against brute-force loops and closed forms."""

import math

import torch
import trimesh

from dreamgs.mesh.regularize import face_pairs, laplacian_loss, mesh_edges, normal_consistency_loss, uniform_laplacian


def bumpy_sphere(seed: int = 0, open_: bool = False):
    tm = trimesh.creation.icosphere(1)
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor(tm.vertices) * (1 + 0.2 * torch.rand(len(tm.vertices), 1, generator=g, dtype=torch.float64))
    faces = torch.tensor(tm.faces)
    if open_:
        faces = faces[torch.tensor(tm.triangles_center[:, 1] < 0.5)]
    return v, faces


def brute_neighbours(faces, n):
    nb = [set() for _ in range(n)]
    for a, b, c in faces.tolist():
        for i, j in ((a, b), (b, c), (c, a)):
            nb[i].add(j)
            nb[j].add(i)
    return nb


def test_edges_and_laplacian_match_brute_force():
    for open_ in (False, True):
        v, faces = bumpy_sphere(open_=open_)
        nb = brute_neighbours(faces, len(v))
        edges = {(min(i, j), max(i, j)) for i in range(len(v)) for j in nb[i]}
        assert sorted(map(tuple, mesh_edges(faces).tolist())) == sorted(edges)
        lap = uniform_laplacian(v, faces)
        for i in range(len(v)):
            want = v[i] - v[sorted(nb[i])].mean(0) if nb[i] else torch.zeros(3, dtype=v.dtype)
            torch.testing.assert_close(lap[i], want)
        want_loss = sum(float((lap_i ** 2).sum()) for lap_i in lap) / len(v)
        assert math.isclose(laplacian_loss(v, faces).item(), want_loss, rel_tol=1e-12)


def test_laplacian_is_zero_for_affine_offsets_on_a_regular_grid_and_for_constants():
    v, faces = bumpy_sphere()
    assert laplacian_loss(torch.ones_like(v) * 0.3, faces).item() < 1e-28  # a translation costs nothing
    # A flat regular grid: the Laplacian of an affine function vanishes at interior vertices.
    n = 6
    ij = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2).double()
    quads = [(i * n + j, i * n + j + 1, (i + 1) * n + j + 1, (i + 1) * n + j) for i in range(n - 1) for j in range(n - 1)]
    f = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d), )])
    # diagonals all one way, so the stencil is symmetric: 6 neighbours at interior vertices
    values = ij @ torch.tensor([[0.7], [-1.3]], dtype=torch.float64) + 0.2
    lap = uniform_laplacian(values, f).view(n, n)
    assert lap[1:-1, 1:-1].abs().max() < 1e-12
    assert lap[0, 0].abs() > 0.1  # the boundary is not symmetric


def test_normal_consistency_matches_brute_force_and_closed_form():
    for open_ in (False, True):
        v, faces = bumpy_sphere(1, open_)
        rows = faces.tolist()
        shared = {}
        for fi, (a, b, c) in enumerate(rows):
            for i, j in ((a, b), (b, c), (c, a)):
                shared.setdefault((min(i, j), max(i, j)), []).append(fi)
        pairs = [tuple(fs) for fs in shared.values() if len(fs) == 2]
        assert sorted(map(tuple, face_pairs(faces).sort(1).values.tolist())) == sorted(pairs)

        def normal(fi):
            a, b, c = (v[k] for k in rows[fi])
            n = torch.linalg.cross(b - a, c - a)
            return n / n.norm()

        want = sum(1 - float(normal(p) @ normal(q)) for p, q in pairs) / len(pairs)
        assert math.isclose(normal_consistency_loss(v, faces).item(), want, rel_tol=1e-12)
    # Closed form: two triangles folded by an angle theta about their shared edge cost 1 - cos(theta).
    for theta in (0.0, 0.3, 1.2, 2.5):
        v = torch.tensor([[0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -math.cos(theta), -math.sin(theta)]],
                         dtype=torch.float64)
        f = torch.tensor([[0, 1, 2], [1, 0, 3]])
        assert math.isclose(normal_consistency_loss(v, f).item(), 1 - math.cos(theta), abs_tol=1e-12)


def test_normal_consistency_gradient_matches_finite_differences_and_skips_degenerate_faces():
    v, faces = bumpy_sphere(2)
    v = v.clone().requires_grad_(True)
    normal_consistency_loss(v, faces).backward()
    g = torch.Generator().manual_seed(0)
    u = torch.randn(v.shape, generator=g, dtype=torch.float64)
    h = 1e-6
    fd = (normal_consistency_loss(v.detach() + h * u, faces) - normal_consistency_loss(v.detach() - h * u, faces)) / (2 * h)
    assert math.isclose((v.grad * u).sum().item(), fd.item(), rel_tol=1e-5)
    # A collapsed face (all corners at one point) neither counts nor poisons the gradient.
    w = v.detach().clone()
    a, b, c = faces[0].tolist()
    w[b] = w[a]
    w[c] = w[a]
    w.requires_grad_(True)
    loss = normal_consistency_loss(w, faces)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(w.grad).all()
