"""Mesh regularisers for geometry optimisation (stage 2's ``stage2.geometry``): a uniform
Laplacian and normal consistency.

- :func:`laplacian_loss`: the mean over vertices of ``|x_i - mean_{j ~ i} x_j|^2`` for any
  per-vertex quantity ``x`` (positions, or offsets from a starting mesh: then it penalises
  deformations that are not smooth, without shrinking the mesh), neighbours along mesh edges.
- :func:`normal_consistency_loss`: the mean over edges shared by exactly two faces of
  ``1 - cos`` of the angle between their normals (0 for a flat sheet, folds cost up to 2).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mesh_edges(faces: Tensor) -> Tensor:
    """The undirected edges of a mesh, (E, 2) int64 with ``e[:, 0] < e[:, 1]``, each once."""
    faces = faces.long()
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


def uniform_laplacian(values: Tensor, faces: Tensor) -> Tensor:
    """``x_i - mean_{j ~ i} x_j`` for per-vertex ``values`` (V, K); 0 at vertices without edges."""
    e = mesh_edges(faces.to(values.device))
    V = values.shape[0]
    total = torch.zeros_like(values)
    total = total.index_add(0, e[:, 0], values[e[:, 1]]).index_add(0, e[:, 1], values[e[:, 0]])
    deg = torch.zeros(V, dtype=values.dtype, device=values.device)
    ones = torch.ones(e.shape[0], dtype=values.dtype, device=values.device)
    deg = deg.index_add(0, e[:, 0], ones).index_add(0, e[:, 1], ones)
    lap = values - total / deg.clamp_min(1)[:, None]
    return torch.where(deg[:, None] > 0, lap, torch.zeros_like(lap))


def laplacian_loss(values: Tensor, faces: Tensor) -> Tensor:
    """Mean over vertices of the squared norm of :func:`uniform_laplacian`."""
    if values.shape[0] == 0:
        return values.sum() * 0
    return uniform_laplacian(values, faces).pow(2).sum(-1).mean()


def face_pairs(faces: Tensor) -> Tensor:
    """Pairs of faces sharing an edge that exactly two faces share: (P, 2) int64, each pair once."""
    faces = faces.long()
    nf = faces.shape[0]
    if nf == 0:
        return torch.empty(0, 2, dtype=torch.int64, device=faces.device)
    e = torch.sort(torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1).reshape(-1, 2), 1).values
    _, inv, counts = torch.unique(e, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    start = torch.cumsum(counts, 0) - counts
    two = (counts == 2).nonzero().squeeze(1)
    first, second = order[start[two]], order[start[two] + 1]
    return torch.stack([first // 3, second // 3], 1)


def normal_consistency_loss(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean of ``1 - cos(n_a, n_b)`` over pairs of faces sharing a (manifold) edge.

    Face normals follow each face's own winding, so the mesh must be consistently oriented. Pairs
    with a degenerate (zero-area) face are left out."""
    faces = faces.to(vertices.device).long()
    pairs = face_pairs(faces)
    if pairs.shape[0] == 0:
        return vertices.sum() * 0
    v = vertices[faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    norm = n.detach().norm(dim=-1)
    # Degenerate faces (no normal; their gradient would blow up) take no part.
    ok = norm > 1e-6 * norm.mean().clamp_min(1e-30)
    n = torch.where(ok[:, None], n, torch.ones_like(n))
    n = n / n.norm(dim=-1, keepdim=True)
    pairs = pairs[ok[pairs[:, 0]] & ok[pairs[:, 1]]]
    if pairs.shape[0] == 0:
        return vertices.sum() * 0
    return (1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()
