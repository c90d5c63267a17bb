"""From 3D Gaussians to a clean triangle mesh.

The Gaussians define a density field ``d(x) = sum_i o_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))``
(``o_i`` the opacity). :func:`density_grid` samples it on a cube around the model, block by
block, each block using only the Gaussians whose ``cutoff``-sigma bounding box touches it.
:func:`extract_mesh` runs marching cubes on that grid and cleans the result: cavities filled,
small floating parts dropped, degenerate and duplicate faces removed, non-manifold vertices and
edges cut apart, faces wound counter-clockwise seen from outside, and the mesh decimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import MeshConfig
from ..errors import EmptyModelError, InputError
from ..gaussians import GaussianModel, quat_to_rotmat
from .core import Mesh


@dataclass
class DensityGrid:
    """Samples of the density on a regular grid.

    ``values[i, j, k]`` is the density at world point ``origin + spacing * (i, j, k)``: axis 0
    runs along world x, axis 1 along y, axis 2 along z.
    """

    values: Tensor  # (R, R, R)
    origin: Tensor  # (3,) world position of grid point (0, 0, 0)
    spacing: float  # world distance between neighbouring grid points
    colors: Tensor | None = None  # (R, R, R, 3) sum of weight * RGB, if asked for

    def sample_colors(self, points: Tensor) -> Tensor:
        """Density-weighted mean colour (P, 3) at world points, trilinear on the grid."""
        if self.colors is None:
            raise ValueError("this grid was computed without colours")
        R = self.resolution
        # grid_sample wants (x, y, z) -> (W, H, D) = grid axes (2, 1, 0), in [-1, 1] (corner-aligned).
        idx = (points.to(self.values.dtype) - self.origin) / self.spacing
        g = (2.0 * idx / (R - 1) - 1.0).flip(-1)[None, :, None, None, :]
        vol = torch.cat([self.colors, self.values[..., None]], -1).permute(3, 0, 1, 2)[None]
        out = torch.nn.functional.grid_sample(vol, g, mode="bilinear", padding_mode="border", align_corners=True)
        out = out[0, :, :, 0, 0].T  # (P, 4)
        return (out[:, :3] / out[:, 3:].clamp_min(1e-12)).clamp(0.0, 1.0)

    @property
    def resolution(self) -> int:
        return self.values.shape[0]

    def to_world(self, index: Tensor) -> Tensor:
        """Map (fractional) grid indices (..., 3) to world coordinates (..., 3)."""
        return self.origin.to(index.dtype) + self.spacing * index

    def points(self) -> Tensor:
        """World positions of every grid point, (R, R, R, 3)."""
        r = torch.arange(self.resolution, device=self.values.device, dtype=self.values.dtype)
        ijk = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1)
        return self.to_world(ijk)


@dataclass
class _Splats:
    """The Gaussians that take part in a density evaluation, in the grid's dtype."""

    means: Tensor  # (N, 3) world
    whiten: Tensor  # (N, 3, 3) W = S^-1 R^T, so that (x-mu)^T Sigma^-1 (x-mu) = |W (x-mu)|^2
    opacities: Tensor  # (N,)
    half_box: Tensor  # (N, 3) half-size of the cutoff-sigma axis-aligned bounding box
    colors: Tensor | None = None  # (N, 3) RGB, when colours are accumulated too


def _kept(model: GaussianModel, opacity_threshold: float) -> Tensor:
    keep = model.opacities.detach() > opacity_threshold
    if not bool(keep.any()):
        raise EmptyModelError(f"the model is empty: none of its {len(model)} Gaussians has an opacity "
                         f"above {opacity_threshold:g}")
    return keep


def _splats(model: GaussianModel, keep: Tensor, cutoff: float, min_sigma: float, dtype,
            colors: bool = False) -> _Splats:
    with torch.no_grad():
        means = model.means[keep].to(dtype)
        scales = model.scales[keep].to(dtype).clamp_min(max(min_sigma, 1e-12))
        R = quat_to_rotmat(model.params["quats"][keep].to(dtype))
        whiten = R.transpose(-1, -2) / scales[:, :, None]
        # Axis-aligned box of the cutoff-sigma ellipsoid: |x_a - mu_a| <= cutoff * sqrt(Sigma_aa).
        var = (R.square() * scales.square()[:, None, :]).sum(-1)
        rgb = model.colors()[keep].to(dtype).clamp(0.0, 1.0) if colors else None
        return _Splats(means, whiten, model.opacities[keep].to(dtype), cutoff * var.sqrt(), rgb)


def _box_cells(count: Tensor) -> tuple[Tensor, Tensor]:
    """Enumerate the integer points of K boxes with ``count`` (K, 3) points per axis.

    Returns the owning box of each point (T,) and its offset from the box's first corner (T, 3),
    x slowest, z fastest.
    """
    n = count.prod(-1)
    owner = torch.repeat_interleave(torch.arange(len(count), device=count.device), n)
    start = torch.cumsum(n, 0) - n
    local = torch.arange(int(n.sum()), device=count.device) - start[owner]
    c = count[owner]
    dz = local % c[:, 2]
    dy = (local // c[:, 2]) % c[:, 1]
    dx = local // (c[:, 2] * c[:, 1])
    return owner, torch.stack([dx, dy, dz], dim=-1)


def _splat_block(s: _Splats, g: Tensor, first: Tensor, last: Tensor, lo: Tensor, shape: tuple[int, int, int],
                 origin: Tensor, spacing: float, max_pairs: int) -> Tensor:
    """Density on one block of grid points ``lo + [0, shape)`` from the Gaussians ``g``.

    Each Gaussian is evaluated on the grid points inside both its box (``first``..``last``, grid
    indices) and the block. The Gaussians are sorted by the size of that window and taken in
    runs of similar size; a run is evaluated on dense windows of its largest size (points outside
    a Gaussian's own window are masked), at most about ``max_pairs`` (Gaussian, point) pairs at a
    time. The whitened offset ``y = W (x - mu)`` is built as
    ``W (x0 - mu) + spacing * (i W e_x + j W e_y + k W e_z)`` from the window corner ``x0`` and
    integer steps ``(i, j, k)``, which keeps float32 round-off small even for very thin Gaussians.
    """
    dev = lo.device
    hi = lo + torch.tensor(shape, device=dev) - 1
    a = torch.maximum(first[g], lo)
    count = torch.minimum(last[g], hi) - a + 1
    order = torch.argsort(count.prod(-1))
    g, a, count = g[order], a[order], count[order]
    W = s.whiten[g]
    y0 = torch.einsum("mij,mj->mi", W, origin + spacing * a.to(W.dtype) - s.means[g])
    cols = spacing * W.transpose(-1, -2)  # cols[:, c] = spacing * W e_c
    n_cells = shape[0] * shape[1] * shape[2]
    nch = 1 if s.colors is None else 4  # density, then weight * RGB
    out = torch.zeros(n_cells + 1, nch, dtype=W.dtype, device=dev)  # last slot collects masked pairs
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=dev)
    base = ((a - lo) * strides).sum(-1)
    # Runs: sorted by window volume, so the last (largest) member bounds each run's window.
    vol = count.prod(-1).tolist()
    i0 = 0
    while i0 < len(g):
        i1 = min(len(g), i0 + max(1, max_pairs // max(vol[i0], 1)))
        while i1 - 1 > i0 and (i1 - i0) * vol[i1 - 1] > max_pairs:
            i1 = i0 + max(1, (i1 - i0) // 2)
        K = count[i0:i1].amax(0).tolist()
        steps = [torch.arange(k, device=dev) for k in K]
        m = i1 - i0
        yx = y0[i0:i1, None, :] + steps[0][None, :, None].to(W.dtype) * cols[i0:i1, None, 0]  # (m, Kx, 3)
        yy = steps[1][None, :, None].to(W.dtype) * cols[i0:i1, None, 1]  # (m, Ky, 3)
        yz = steps[2][None, :, None].to(W.dtype) * cols[i0:i1, None, 2]  # (m, Kz, 3)
        y = yx[:, :, None, None] + yy[:, None, :, None] + yz[:, None, None, :]  # (m, Kx, Ky, Kz, 3)
        w = s.opacities[g[i0:i1], None, None, None] * torch.exp(-0.5 * y.square().sum(-1))
        c = count[i0:i1]
        valid = ((steps[0][None, :] < c[:, 0:1])[:, :, None, None] & (steps[1][None, :] < c[:, 1:2])[:, None, :, None]
                 & (steps[2][None, :] < c[:, 2:3])[:, None, None, :])
        cell = (base[i0:i1, None, None, None] + steps[0][None, :, None, None] * strides[0]
                + steps[1][None, None, :, None] * strides[1] + steps[2][None, None, None, :])
        w = w.reshape(-1, 1)
        if s.colors is not None:
            rgb = s.colors[g[i0:i1], None, None, None, :].expand(*valid.shape, 3).reshape(-1, 3)
            w = torch.cat([w, w * rgb], -1)
        out.index_add_(0, torch.where(valid, cell, n_cells).reshape(-1), w)
        i0 = i1
    return out[:n_cells].reshape(*shape, nch)


def density_grid(model: GaussianModel, resolution: int = 128, block_size: int = 16,
                 opacity_threshold: float = 0.005, margin: float = 0.1, cutoff: float = 3.0,
                 min_sigma: float = 0.0, max_pairs: int = 1 << 20,
                 dtype: torch.dtype = torch.float32, colors: bool = False) -> DensityGrid:
    """Sample the Gaussians' density on a ``resolution``^3 grid, on the model's device.

    The grid is a cube centred on the means of the Gaussians with opacity above
    ``opacity_threshold`` (the others are ignored); its half-size is the largest half-extent of
    those means, enlarged by ``margin`` (a fraction) plus three times the 95th percentile of the
    Gaussians' largest standard deviation, so the surface of a filled shape lies inside it.

    The grid is processed in blocks of ``block_size``^3 points. A block uses only the Gaussians
    whose ``cutoff``-sigma bounding box overlaps it, and each of those only at the points inside
    its box, so every contribution that is dropped is below ``opacity * exp(-cutoff^2 / 2)``.
    Work happens in runs of at most about ``max_pairs`` (Gaussian, point) pairs (under 100 bytes
    of temporaries each), so memory is bounded, and the cost grows with the occupied space only.

    ``min_sigma`` (in grid spacings) widens every Gaussian to at least that standard deviation
    along each axis, keeping its opacity: a flat Gaussian thinner than the grid spacing falls
    between grid points and would leave holes in the surface (fitted 3DGS models are made of
    such disks). 0 evaluates the exact density.

    With ``colors``, the grid also accumulates ``sum_i w_i(x) rgb_i`` (view-independent SH
    colour), from which :meth:`DensityGrid.sample_colors` gives density-weighted mean colours.
    """
    if resolution < 2:
        raise InputError(f"resolution: need at least 2 grid points per axis, got {resolution}")
    if block_size < 1:
        raise InputError(f"block_size: must be at least 1, got {block_size}")
    keep = _kept(model, opacity_threshold)
    with torch.no_grad():
        means = model.means[keep].to(dtype)
        device = means.device
        lo, hi = means.amin(0), means.amax(0)
        centre = (lo + hi) / 2
        sig = torch.sort(model.scales[keep].amax(-1).to(dtype)).values
        pad = 3.0 * sig[int(0.95 * (len(sig) - 1))]
        half = float(((hi - lo).amax() / 2) * (1.0 + margin) + pad)
        half = max(half, 1e-6)
        spacing = 2.0 * half / (resolution - 1)
        origin = centre - half
    s = _splats(model, keep, cutoff, min_sigma * spacing, dtype, colors)

    # Grid points inside each Gaussian's box, then the (Gaussian, block) pairs, sorted by block.
    u = (s.means - origin) / spacing
    r = s.half_box / spacing
    first = torch.ceil(u - r).clamp_min(0).long()
    last = torch.floor(u + r).clamp_max(resolution - 1).long()
    gid = torch.nonzero((first <= last).all(-1)).squeeze(1)
    nb = (resolution + block_size - 1) // block_size
    b0 = first[gid] // block_size
    owner, off = _box_cells(last[gid] // block_size - b0 + 1)
    blk = b0[owner] + off
    block = (blk[:, 0] * nb + blk[:, 1]) * nb + blk[:, 2]
    order = torch.argsort(block, stable=True)
    block, pair_g = block[order], gid[owner[order]]
    blocks, per_block = torch.unique_consecutive(block, return_counts=True)

    nch = 4 if colors else 1
    values = torch.zeros(resolution, resolution, resolution, nch, dtype=dtype, device=device)
    offsets = torch.cumsum(per_block, 0) - per_block
    for b, o, n in zip(blocks.tolist(), offsets.tolist(), per_block.tolist()):
        ijk = (b // (nb * nb), (b // nb) % nb, b % nb)
        sl = tuple(slice(c * block_size, min((c + 1) * block_size, resolution)) for c in ijk)
        shape = tuple(x.stop - x.start for x in sl)
        lo_idx = torch.tensor([x.start for x in sl], device=device)
        values[sl] = _splat_block(s, pair_g[o:o + n], first, last, lo_idx, shape, origin, spacing, max_pairs)
    return DensityGrid(values[..., 0].contiguous(), origin, spacing, values[..., 1:].contiguous() if colors else None)


# ------------------------------------------------------------------------------------------------
# Mesh clean-up (numpy, on the CPU)


def _remove_degenerate_and_duplicate(v: np.ndarray, f: np.ndarray, area_eps: float) -> np.ndarray:
    """Drop faces with repeated indices or area at most ``area_eps``, and resolve faces that
    share a vertex set: copies with the same orientation are kept once, and a face together
    with its reverse cancel (a two-sided sliver of zero volume, as decimation can leave).
    Faces that remain keep their order."""
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    if len(f):
        tri = v[f]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        f = f[area > area_eps]
    if len(f) == 0:
        return f
    order = np.argsort(f, axis=1)
    sf = np.take_along_axis(f, order, axis=1)
    # Orientation: +1 if sorting the corners is an even permutation, -1 if odd.
    parity = np.where((order == [0, 1, 2]).all(1) | (order == [1, 2, 0]).all(1) | (order == [2, 0, 1]).all(1),
                      1, -1)
    n = int(f.max()) + 1
    if n < 2_000_000:  # one int64 key per face is much faster than unique rows
        _, first, group = np.unique((sf[:, 0] * n + sf[:, 1]) * n + sf[:, 2], return_index=True,
                                    return_inverse=True)
    else:
        _, first, group = np.unique(sf, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    net = np.bincount(group, weights=parity)
    # One face per group with a net orientation, taken with that orientation.
    keep = np.zeros(len(f), bool)
    rep = np.full(len(first), -1)
    for sign in (1, -1):
        idx = np.nonzero(parity == sign)[0]
        wanted = np.sign(net[group[idx]]) == sign
        g, i = group[idx][wanted], idx[wanted]
        _, pos = np.unique(g, return_index=True)
        rep[g[pos]] = i[pos]
    keep[rep[rep >= 0]] = True
    return f[keep]


def _merge_close_vertices(v: np.ndarray, f: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices that fall in the same ``tol``-sized cell; drop unreferenced vertices."""
    key = np.round(v / tol).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    f = inverse.reshape(-1)[f]
    v = v[first]
    used = np.zeros(len(v), bool)
    used[f.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return v[used], remap[f]


def _edge_table(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges of every face corner: (3F, 2) sorted pairs, edge ids (3F,), counts (E,).

    Corner ``3 * face + k`` owns the edge from vertex ``k`` to vertex ``k + 1`` of its face.
    """
    directed = np.stack([f, np.roll(f, -1, axis=1)], axis=-1).reshape(-1, 2)
    n = int(f.max()) + 1
    key = directed.min(1) * n + directed.max(1)
    _, eid, counts = np.unique(key, return_inverse=True, return_counts=True)
    return directed, eid.reshape(-1), counts


def _pair_around_edges(v: np.ndarray, directed: np.ndarray, corners: np.ndarray, edge: np.ndarray,
                       outside: set[int] = frozenset()) -> np.ndarray:
    """Pair the faces around non-manifold edges: (K, 2) corner pairs.

    ``corners`` own (run along) the edges ``edge`` (same length, grouped per edge). Around an
    edge a->b the faces are sorted by angle (counter-clockwise about a->b). A face running b->a
    has its back (the solid's inside) towards increasing angle, a face running a->b towards
    decreasing angle; so each b->a face is paired with its counter-clockwise neighbour when that
    one runs a->b: the two enclose a wedge of solid. Solids that touch along the edge come apart,
    and folds or fins made by decimation pair up into closed surfaces. For the edges in
    ``outside`` the other pairing is used (faces enclosing a wedge of empty space).
    """
    pairs = []
    order = np.argsort(edge, kind="stable")
    corners, edge = corners[order], edge[order]
    starts = np.flatnonzero(np.r_[True, edge[1:] != edge[:-1]])
    ends = np.r_[starts[1:], len(edge)]
    for s0, s1 in zip(starts, ends):
        cs = corners[s0:s1]
        a, b = directed[cs[0]]
        axis = v[b] - v[a]
        axis = axis / max(np.linalg.norm(axis), 1e-300)
        face, k = cs // 3, cs % 3
        # The third vertex of each face: the one after the edge's end.
        third = v[directed[3 * face + (k + 1) % 3, 1]] - v[a]
        radial = third - np.outer(third @ axis, axis)
        ref = radial[0] / max(np.linalg.norm(radial[0]), 1e-300)
        angle = np.arctan2(np.cross(ref, radial) @ axis, radial @ ref)
        srt = np.argsort(angle, kind="stable")
        cs = cs[srt]
        forward = directed[cs, 0] == a  # runs a->b
        first = forward if int(edge[s0]) in outside else ~forward
        m = len(cs)
        for j in range(m):
            nxt = (j + 1) % m
            if first[j] and forward[nxt] != forward[j]:
                pairs.append((cs[j], cs[nxt]))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def _split_nonmanifold(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the mesh apart at non-manifold edges and vertices.

    Face corners at the same vertex are linked when their faces are joined across an edge: an
    edge with exactly two faces traversed in opposite directions joins them; around an edge with
    more faces they are joined in pairs by :func:`_pair_around_edges`. Each linked group of
    corners (a fan) gets its own copy of the vertex, so afterwards every edge has at most two
    faces and every vertex neighbourhood is a single fan. Two closed surfaces that touched along
    an edge or at a vertex become two closed surfaces.
    """
    nf = len(f)
    if nf == 0:
        return v, f
    directed, eid, counts = _edge_table(f)
    corner = np.arange(3 * nf)
    good = counts[eid] == 2
    order = np.argsort(eid[good], kind="stable")
    c = corner[good][order].reshape(-1, 2)  # the two corners owning each manifold edge
    # Opposite traversal: corner a goes p->q, corner b must go q->p.
    c = c[directed[c[:, 0], 0] == directed[c[:, 1], 1]]
    many = counts[eid] > 2
    if not many.any():
        return _split_by_links(v, f, c)
    # A surface pinched along an edge (both ends' neighbourhoods single disks) stays joined
    # with one pairing of the faces around it but comes apart with the other: retry those.
    outside: set[int] = set()
    for _ in range(3):
        v2, f2 = _split_by_links(v, f, np.concatenate([c, _pair_around_edges(v, directed, corner[many], eid[many],
                                                                               outside)]))
        _, eid2, counts2 = _edge_table(f2)
        stuck = set(eid[counts2[eid2] > 2].tolist()) - outside
        if not stuck:
            break
        outside |= stuck
    return v2, f2


def _split_by_links(v: np.ndarray, f: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per group of face corners linked through the joined corner pairs ``c``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nf = len(f)
    face, k = c // 3, c % 3
    # Edge of corner (face, k) runs from vertex k to k+1. The corner at vertex p = start of a
    # links to the corner at the end of b (k_b + 1), and the end of a to the start of b.
    a_start, a_end = 3 * face[:, 0] + k[:, 0], 3 * face[:, 0] + (k[:, 0] + 1) % 3
    b_start, b_end = 3 * face[:, 1] + k[:, 1], 3 * face[:, 1] + (k[:, 1] + 1) % 3
    rows = np.concatenate([a_start, a_end])
    cols = np.concatenate([b_end, b_start])
    graph = coo_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(3 * nf, 3 * nf))
    _, label = connected_components(graph, directed=False)
    # Vertex position of each corner, then one new vertex per corner group.
    corner_vertex = f.reshape(-1)
    uniq, first, inverse = np.unique(label, return_index=True, return_inverse=True)
    return v[corner_vertex[first]], inverse.reshape(nf, 3)


def _face_components(f: np.ndarray) -> np.ndarray:
    """Label of the connected component of each face (faces linked through shared edges)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nf = len(f)
    _, eid, _ = _edge_table(f)
    order = np.argsort(eid, kind="stable")
    e_sorted, faces_sorted = eid[order], (np.arange(3 * nf) // 3)[order]
    same = e_sorted[1:] == e_sorted[:-1]
    graph = coo_matrix((np.ones(int(same.sum()), bool), (faces_sorted[1:][same], faces_sorted[:-1][same])),
                       shape=(nf, nf))
    return connected_components(graph, directed=False)[1]


def _signed_volumes(v: np.ndarray, f: np.ndarray, label: np.ndarray, n: int) -> np.ndarray:
    tri = v[f]
    vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    return np.bincount(label, weights=vol, minlength=n)


def _winding_numbers(v: np.ndarray, f: np.ndarray, label: np.ndarray, n: int, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of each point (P, 3) with respect to each component: (P, n).

    Sum of the signed solid angles of the component's triangles (Van Oosterom-Strackee) over 4 pi:
    +-1 inside a closed component, 0 outside.
    """
    out = np.zeros((len(points), n))
    tri = v[f]
    for i, p in enumerate(points):
        a, b, c = tri[:, 0] - p, tri[:, 1] - p, tri[:, 2] - p
        la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
        num = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", b, c) * la
               + np.einsum("ij,ij->i", c, a) * lb)
        out[i] = np.bincount(label, weights=2.0 * np.arctan2(num, den), minlength=n) / (4 * np.pi)
    return out


def _nesting_depth(v: np.ndarray, f: np.ndarray, label: np.ndarray, n: int, samples: int = 3) -> np.ndarray:
    """How many other components enclose each component (0 = outermost).

    Tested at the centroids of a few of the component's faces (majority vote), so components
    that touch another one at a vertex or an edge are still classified correctly.
    """
    if n == 1:
        return np.zeros(1, np.int64)
    order = np.argsort(label, kind="stable")
    starts = np.searchsorted(label[order], np.arange(n))
    sizes = np.bincount(label, minlength=n)
    pick = [order[starts[c] + (np.arange(samples) * sizes[c]) // samples] for c in range(n)]
    pick = np.concatenate(pick)
    owner = label[pick]
    w = _winding_numbers(v, f, label, n, v[f[pick]].mean(1))
    inside = np.abs(w) > 0.5
    inside[np.arange(len(pick)), owner] = False
    votes = np.zeros((n, n))
    np.add.at(votes, owner, inside)
    return (votes > samples / 2).sum(1)


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, merge_tol: float, min_component_fraction: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Clean an indexed triangle mesh (numpy float64 / int64).

    Steps: weld vertices closer than ``merge_tol``; drop faces with repeated vertices, area below
    ``merge_tol^2 * 1e-6`` or the same vertex set as an earlier face; make winding consistent and
    cut non-manifold edges and vertices apart; drop connected components with fewer than
    ``min_component_fraction`` of all faces (the largest is always kept); finally orient every
    component so its faces are counter-clockwise seen from outside the solid: positive volume,
    except the walls of cavities (components inside an odd number of others), which face into
    the cavity.
    """
    import trimesh

    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    if len(f) == 0:
        return v[:0], f[:0]
    v, f = _merge_close_vertices(v, f, merge_tol)
    f = _remove_degenerate_and_duplicate(v, f, 1e-6 * merge_tol * merge_tol)
    if len(f) == 0:
        return v[:0], f[:0]
    tm = trimesh.Trimesh(v, f, process=False)
    if not tm.is_winding_consistent:
        trimesh.repair.fix_winding(tm)
        f = np.asarray(tm.faces, np.int64)
    v, f = _split_nonmanifold(v, f)
    label = _face_components(f)
    n = int(label.max()) + 1
    sizes = np.bincount(label, minlength=n)
    keep_comp = sizes >= min_component_fraction * len(f)
    keep_comp[np.argmax(sizes)] = True
    keep = keep_comp[label]
    f, label = f[keep], np.unique(label[keep], return_inverse=True)[1]
    n = int(label.max()) + 1
    # Outward orientation: a component enclosed by an odd number of others is the wall of a
    # cavity and must face into it (negative volume); every other one gets positive volume.
    want_negative = _nesting_depth(v, f, label, n) % 2 == 1
    flip = (_signed_volumes(v, f, label, n) < 0) != want_negative
    f = np.where(flip[label][:, None], f[:, ::-1], f)
    used = np.zeros(len(v), bool)
    used[f.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return v[used], remap[f]


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification) down to at most about ``target_faces`` faces."""
    import fast_simplification

    if target_faces <= 0 or len(faces) <= target_faces:
        return vertices, faces
    v, f = fast_simplification.simplify(np.ascontiguousarray(vertices, np.float64),
                                        np.ascontiguousarray(faces, np.int32), target_count=int(target_faces))
    return np.asarray(v, np.float64), np.asarray(f, np.int64)


def fill_cavities(values: np.ndarray, threshold: float) -> np.ndarray:
    """Raise every enclosed below-threshold region of a grid above ``threshold``.

    A region is enclosed if no path of below-threshold points, moving along the grid axes,
    leads from it to the grid border. Surfaces that face such cavities (the inner wall of a
    hollow shell, as a fitted model often has) disappear. Gaps in a shell that are open only
    diagonally are closed too; marching cubes stays watertight for any values, and the outer
    surface moves only at those gaps.
    """
    from scipy import ndimage

    occupied = values > threshold
    outside = ndimage.binary_fill_holes(occupied)
    cavity = outside & ~occupied
    if cavity.any():
        values = values.copy()
        values[cavity] = 2.0 * abs(threshold) + 1.0
    return values


def _lap(timings: dict[str, float] | None, name: str, start: float, device: torch.device) -> float:
    if timings is None:
        return start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now


def extract_mesh(model: GaussianModel, cfg: MeshConfig | None = None,
                 timings: dict[str, float] | None = None) -> Mesh:
    """Triangle mesh of the surface ``density = cfg.density_threshold`` of the Gaussians.

    Density grid (:func:`density_grid`) -> cavities filled (``cfg.fill_cavities``) -> marching
    cubes (the grid is padded with zeros, so every surface is closed) -> world coordinates ->
    :func:`clean_mesh` -> :func:`decimate` to ``cfg.target_faces`` -> :func:`clean_mesh` again
    (quadric decimation can fold or pinch the surface; the clean-up cuts those places apart).
    With ``cfg.vertex_colors`` each vertex gets the density-weighted mean colour of the
    Gaussians around it (enough for an untextured export).

    The mesh is returned on the model's device, float32 vertices and int64 faces, counter-
    clockwise seen from outside. Raises :class:`InputError` if the model has no Gaussian above
    the opacity threshold or its density never reaches the threshold. ``timings``, if given,
    receives the seconds spent in each step (density_grid, marching_cubes, cleanup, decimate).
    """
    cfg = cfg or MeshConfig()
    device = model.device
    t = time.perf_counter()
    grid = density_grid(model, resolution=cfg.grid_resolution, block_size=cfg.block_size,
                        opacity_threshold=cfg.opacity_threshold, margin=cfg.grid_margin,
                        min_sigma=cfg.min_sigma, colors=cfg.vertex_colors)
    _lap(timings, "density_grid", t, device)
    mesh = mesh_from_grid(grid, cfg, float(cfg.density_threshold), timings, "mesh.density_threshold")
    t = time.perf_counter()
    if cfg.vertex_colors:
        mesh.vertex_colors = grid.sample_colors(mesh.vertices).float()
        _lap(timings, "vertex_colors", t, device)
    return mesh


def mesh_from_grid(grid: DensityGrid, cfg: MeshConfig, threshold: float,
                   timings: dict[str, float] | None = None, threshold_key: str = "the threshold") -> Mesh:
    """The surface ``density = threshold`` of a sampled density grid, cleaned as
    :func:`extract_mesh` describes (cavities filled, marching cubes on the zero-padded grid, world
    coordinates, clean-up, decimation, clean-up). Any representation with a density (the
    Gaussians, the NeRF) goes through here."""
    import mcubes

    device = grid.values.device
    t = time.perf_counter()
    values = np.pad(grid.values.double().cpu().numpy(), 1)
    thr = float(threshold)
    if not (values > thr).any():
        raise EmptyModelError(f"the model is empty: its density (max {values.max():.3g}) never reaches "
                         f"{threshold_key}={thr:g}")
    if cfg.fill_cavities:
        values = fill_cavities(values, thr)
    verts, faces = mcubes.marching_cubes(values, thr)
    verts = grid.origin.double().cpu().numpy() + grid.spacing * (np.asarray(verts) - 1.0)
    faces = np.asarray(faces, np.int64)
    t = _lap(timings, "marching_cubes", t, device)
    tol = 1e-3 * grid.spacing
    verts, faces = clean_mesh(verts, faces, tol, cfg.min_component_fraction)
    t = _lap(timings, "cleanup", t, device)
    if len(faces) > cfg.target_faces > 0:
        verts, faces = decimate(verts, faces, cfg.target_faces)
        t = _lap(timings, "decimate", t, device)
        verts, faces = clean_mesh(verts, faces, tol, cfg.min_component_fraction)
        t = _lap(timings, "cleanup", t, device)
    if len(faces) == 0:
        raise EmptyModelError("the model is empty: no surface left after mesh clean-up")
    return Mesh(torch.as_tensor(verts, dtype=torch.float32, device=device),
                torch.as_tensor(faces, dtype=torch.int64, device=device))
