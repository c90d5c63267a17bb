"""Quality metrics against ground truth: image PSNR, surface sampling, Chamfer distance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .mesh.core import Mesh


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None, max_val: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between images ``a`` and ``b`` (same shape, values in
    [0, max_val]), over all elements, or over the elements where ``mask`` (broadcastable to ``a``,
    e.g. (..., 1) for per-pixel masks; bool or weights) is set. ``inf`` for identical images."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    err = (a.double() - b.double()) ** 2
    if mask is None:
        mse = err.mean()
    else:
        w = torch.broadcast_to(mask.to(err.dtype), err.shape)
        if w.sum() <= 0:
            raise ValueError("psnr: the mask selects nothing")
        mse = (err * w).sum() / w.sum()
    mse = float(mse)
    return math.inf if mse == 0 else 10.0 * math.log10(max_val ** 2 / mse)


def mean_saturation(rgb: Tensor, alpha: Tensor) -> float:
    """Alpha-weighted mean HSV saturation ``(max - min) / max`` (0 where max is 0) of images
    ``rgb`` (..., 3) in [0, 1] with coverage ``alpha`` (..., 1): how vivid the object's colours are,
    the background left out. NaN if nothing is covered."""
    c = rgb.double().clamp(0.0, 1.0)
    hi, lo = c.max(dim=-1).values, c.min(dim=-1).values
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    w = alpha.double().reshape(sat.shape).clamp(0.0, 1.0)
    total = float(w.sum())
    return float((sat * w).sum()) / total if total > 0 else math.nan


def sample_surface(mesh: Mesh, n: int, generator: torch.Generator | None = None,
                   return_faces: bool = False):
    """``n`` points drawn uniformly (by area) from the surface of ``mesh``: (n, 3) float32.

    With ``return_faces`` also the face index of each point, (n,) int64.
    """
    v = mesh.vertices.double()[mesh.faces]
    area = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1) / 2
    if not (area.sum() > 0):
        raise ValueError("sample_surface: the mesh has no area")
    gen_device = generator.device if generator is not None else "cpu"
    face = torch.multinomial(area.to(gen_device), n, replacement=True, generator=generator).to(mesh.device)
    r = torch.rand(n, 2, generator=generator, dtype=torch.float64, device=gen_device).to(mesh.device)
    # Uniform in a triangle: (1 - sqrt(r1), sqrt(r1) (1 - r2), sqrt(r1) r2).
    sq = r[:, 0].sqrt()
    w = torch.stack([1 - sq, sq * (1 - r[:, 1]), sq * r[:, 1]], -1)
    pts = (w[..., None] * v[face]).sum(1).float()
    return (pts, face) if return_faces else pts


def nearest_distances(points_a: Tensor, points_b: Tensor, chunk: int = 4096) -> Tensor:
    """For each point of ``points_a`` (N, 3), the Euclidean distance to the nearest of ``points_b``
    (M, 3): (N,). Computed in chunks of ``chunk`` rows, so memory stays O(chunk * M)."""
    if len(points_b) == 0:
        raise ValueError("nearest_distances: points_b is empty")
    out = []
    for i in range(0, len(points_a), chunk):
        d = torch.cdist(points_a[i:i + chunk].double(), points_b.double())
        out.append(d.amin(dim=1))
    return torch.cat(out) if out else points_a.new_zeros(0, dtype=torch.float64)


def chamfer_distance(points_a: Tensor, points_b: Tensor, chunk: int = 4096) -> float:
    """Symmetric Chamfer distance: the mean of (mean nearest distance from a to b) and (mean
    nearest distance from b to a), in the points' units (not squared)."""
    if len(points_a) == 0 or len(points_b) == 0:
        raise ValueError("chamfer_distance: empty point set")
    ab = nearest_distances(points_a, points_b, chunk).mean()
    ba = nearest_distances(points_b, points_a, chunk).mean()
    return float((ab + ba) / 2)
