"""A pure-PyTorch triangle rasteriser: face ids, barycentrics, depth, and textured mesh renders.

Conventions (the same as :func:`dreamgs.cameras.project_points` and the Gaussian renderer):

- Cameras are OpenCV pinholes: ``viewmats`` world-to-camera (x right, y down, z forward) and
  intrinsics ``Ks``. Pixel ``(i, j)`` (row ``i``, column ``j``) is sampled at its centre,
  ``(x, y) = (j + 0.5, i + 0.5)`` in the coordinates of ``project_points``.
- A pixel sees the nearest triangle that its ray hits at a camera depth ``z > near``
  (z-buffer on camera-space z). There is no back-face culling: both sides of a face are drawn.
- Barycentrics are perspective-correct: the weights of the 3D hit point in its triangle, so
  interpolating vertex attributes with them interpolates on the surface.

How it works. For a triangle with camera-space vertices ``X0, X1, X2`` and a pixel ray direction
``d = K^-1 (x, y, 1)``, the hit point ``t d = sum_i b_i X_i`` gives ``b_i = e_i / sum_j e_j`` with
edge functions ``e_i = (X_j x X_k) . d`` (``(i, j, k)`` cyclic) and depth ``z = t = det / sum_j e_j``,
``det = X0 . (X1 x X2)``. Each ``e_i`` is affine in the pixel coordinates. After multiplying by
``sign(det)``, a pixel is covered (inside the triangle and in front of the camera) exactly when all
three ``e_i >= 0``, and ``1 / z`` is affine in the pixel coordinates too. This is ray casting, so
triangles that cross the near plane or pass behind the camera need no clipping. Two faces that
share an edge evaluate that edge's function with exactly opposite signs (the cross product is
exactly antisymmetric in floating point), so closed meshes rasterise without cracks.

Work is bounded: cameras are processed in groups, each visible triangle's screen bounding box
(of its part in front of the near plane) is binned into square tiles whose size is chosen per
group to minimise the work, and (triangle, tile) pairs are evaluated in fixed-size chunks whose
depth/face-id keys are merged into a per-pixel z-buffer with ``scatter_reduce(amax)``.
Setup runs in float64, the per-pixel coverage pass in float32, and the winners' barycentrics and
depths are recomputed in float64.

Gradients: ``bary`` and ``depth`` are differentiable with respect to the vertices (through the
winning face; visibility and silhouettes carry no gradient). :func:`render_mesh` is
differentiable with respect to ``mesh.texture`` and ``mesh.vertex_colors``, and with
``antialias=True`` also with respect to ``mesh.vertices`` at silhouettes (:func:`antialias`).

Analytic antialiasing (:func:`antialias`, after nvdiffrast's ``antialias``, Laine et al. 2020).
A rendered image is a step function of the vertices at silhouettes. The pass looks at every
pair of horizontally or vertically adjacent pixels that see different faces (or a face and the
background). The pixel that sees the nearer surface (the "front" pixel; a covered pixel is
nearer than the background) sees a triangle; the segment between the two pixel centres leaves
that triangle through one edge, at a fraction ``t`` of the way, with ``t`` a function of the
projected vertices (edge functions in homogeneous pixel coordinates, so vertices behind the
camera need no special case). If that edge is a silhouette of the mesh from this camera (a
boundary edge, or the face across it folds back behind it: its far vertex lies on the same side
of the edge's plane through the camera centre as this triangle's), the front surface is taken to
cover the pair up to ``t``, and the pixel the edge passes through is blended: the back pixel gets
``(t - 1/2) (c_front - c_back)`` when ``t > 1/2``, else the front pixel gets
``(1/2 - t) (c_back - c_front)``. Where triangles are smaller than a pixel, the segment may leave
the front triangle through an edge that is not a silhouette: it is then followed into the face
across that edge, and on, until it leaves a face through a silhouette edge (or ends inside one:
no blend). The blend is continuous as the edge sweeps over a pixel centre,
and its derivative in ``t`` carries the gradient to the edge's vertices. Each edge is handled by
one direction only: horizontal pairs for edges steeper than 45 degrees, vertical pairs for the
others, so a pixel's coverage is not counted twice.

What it does not do (as nvdiffrast's pass does not): the blend of a pair is set by the first
silhouette edge met from the front pixel, so where a surface folds and a farther part of it peeks
out beyond that edge (bumpy meshes near their outline), or where a silhouette vertex or an edge
turning past 45 degrees crosses a pixel centre, the antialiased image still jumps a little. It is
continuous for a straight edge sweeping over pixel centres; the sum of a triangle's antialiased
coverage follows its projected area (tests/test_antialias.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from .core import Mesh

# Bounds on the working set: face-views set up per camera group, and pixel evaluations per chunk.
_MAX_FACE_VIEWS = 1 << 18
_MAX_CHUNK_PIXELS = 1 << 21
_MAX_RENDER_PIXELS = 1 << 23  # supersampled pixels per camera group in render_mesh
_TILE_SIZES = (2, 4, 8, 16, 32)
_PAIR_OVERHEAD = 24  # cost of one (triangle, tile) pair, in per-pixel evaluations
_BBOX_MARGIN = 1e-3  # pixels; guards float32/float64 disagreement at bounding-box borders
_DEFAULT_GREY = 0.7


@dataclass
class Fragments:
    """Per-pixel rasterisation result for C cameras of size H x W."""

    face_id: Tensor  # (C, H, W) int64 index into faces, -1 where no face is hit
    bary: Tensor  # (C, H, W, 3) float32 perspective-correct barycentrics, 0 where empty
    depth: Tensor  # (C, H, W) float32 camera-space z of the hit, 0 where empty

    @property
    def mask(self) -> Tensor:
        """(C, H, W) bool: pixels that see a face."""
        return self.face_id >= 0


@dataclass
class MeshRender:
    """:func:`render_mesh` output; every field is 0 (face_id -1) where no face is seen."""

    rgb: Tensor  # (C, H, W, 3) colour composited over the background
    alpha: Tensor  # (C, H, W, 1) coverage in [0, 1] (fractional at edges when ssaa > 1 or antialiased)
    depth: Tensor  # (C, H, W, 1) camera-space z, mean over the covered subsamples
    normal: Tensor  # (C, H, W, 3) world-space unit face normal (winding: counter-clockwise = outside)
    uv: Tensor  # (C, H, W, 2) texture coordinates, mean over the covered subsamples
    face_id: Tensor  # (C, H, W) int64, the face at each pixel's central subsample

    def images(self) -> Tensor:
        """RGB as (C, 3, H, W)."""
        return self.rgb.permute(0, 3, 1, 2)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    # Written out so that _cross(b, a) == -_cross(a, b) bit for bit.
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)


def _edge_setup(tri: Tensor, K: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Edge functions of triangles ``tri`` (N, 3 vertices, 3) in camera space seen through
    intrinsics ``K`` (N, 3, 3), in pixel coordinates.

    Returns ``edges`` (N, 3, 3), rows ``(a_i, b_i, c_i)`` with ``e_i = a_i x + b_i y + c_i``, already
    multiplied by sign(det); ``absdet`` (N,), so that ``z = absdet / sum_i e_i``; and ``ok`` (N,),
    False for zero-area faces and faces seen exactly edge-on (they cover no pixel centre).
    """
    x0, x1, x2 = tri.unbind(1)
    n = torch.stack([_cross(x1, x2), _cross(x2, x0), _cross(x0, x1)], dim=1)  # (N, 3, 3)
    det = (x0 * n[:, 0]).sum(-1)
    sgn = torch.where(det < 0, -1.0, 1.0).to(det.dtype)
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    a = n[..., 0] / fx
    b = n[..., 1] / fy
    c = n[..., 2] - a * cx - b * cy
    edges = torch.stack([a, b, c], dim=-1) * sgn[:, None, None]
    absdet = det.abs()
    normal = _cross(x1 - x0, x2 - x0)
    ok = absdet.detach() > 1e-9 * (normal.detach().norm(dim=-1) * x0.detach().norm(dim=-1))
    return edges, absdet, ok


def _pixel_range(lo: Tensor, hi: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Indices of the pixels whose centres (index + 0.5) lie in [lo, hi] (+ a small margin)."""
    first = torch.ceil((lo - 0.5 - _BBOX_MARGIN).clamp(-1, size + 1)).long().clamp_min(0)
    last = torch.floor((hi - 0.5 + _BBOX_MARGIN).clamp(-1, size + 1)).long().clamp_max(size - 1)
    return first, last


@torch.no_grad()
def _screen_boxes(verts_cam: Tensor, faces: Tensor, Ks: Tensor, near: float, width: int, height: int):
    """Pixel boxes of the parts of the faces in front of the near plane.

    ``verts_cam`` (V, Cg, 3) camera-space vertices. Returns inclusive pixel-index ranges
    ``(x0, x1, y0, y1)``, each (F, Cg) int32, and ``valid`` (F, Cg): the box holds a pixel centre.
    """
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    X, Y, Z = verts_cam.unbind(-1)  # (V, Cg)
    front = Z > near
    Zs = torch.where(front, Z, 1.0)
    u, v = fx * X / Zs + cx, fy * Y / Zs + cy
    # Pixel j is sampled at j + 0.5. Per vertex: the first/last pixel index a box through it may
    # need, clamped to [-1, size]; min/max over the corners then give the face's box. Vertices
    # behind the near plane take no part (+/- "infinite" values).
    big = max(width, height) + 2

    def lo_hi(w, size):
        lo = torch.ceil((w - 0.5 - _BBOX_MARGIN).clamp(-1, size)).int()
        hi = torch.floor((w - 0.5 + _BBOX_MARGIN).clamp(-1, size)).int()
        return torch.where(front, lo, big), torch.where(front, -hi, big)

    xlo, nxhi = lo_hi(u, width)
    ylo, nyhi = lo_hi(v, height)
    per_vertex = torch.stack([xlo, ylo, nxhi, nyhi], -1)  # (V, Cg, 4)
    m = torch.minimum(torch.minimum(per_vertex[faces[:, 0]], per_vertex[faces[:, 1]]), per_vertex[faces[:, 2]])
    x0, y0 = m[..., 0].clamp_min(0), m[..., 1].clamp_min(0)
    x1, y1 = (-m[..., 2]).clamp_max(width - 1), (-m[..., 3]).clamp_max(height - 1)
    if not front.all():
        # Faces crossing the near plane: their box also holds the points where edges cross z = near.
        nf = front[faces[:, 0]].int() + front[faces[:, 1]].int() + front[faces[:, 2]].int()
        f, cam = ((nf > 0) & (nf < 3)).nonzero(as_tuple=True)
        if f.numel():
            tri = verts_cam[faces[f], cam[:, None]]  # (S, 3, 3)
            z = tri[..., 2]
            pts, ok = [tri[:, k] for k in range(3)], [z[:, k] > near for k in range(3)]
            for j, k in ((0, 1), (1, 2), (2, 0)):
                crosses = (z[:, j] - near) * (z[:, k] - near) < 0
                t = (near - z[:, j]) / torch.where(crosses, z[:, k] - z[:, j], 1.0)
                pts.append(tri[:, j] + t[:, None] * (tri[:, k] - tri[:, j]))
                ok.append(crosses)
            pts, ok = torch.stack(pts, 1), torch.stack(ok, 1)  # (S, 6, 3), (S, 6)
            zc = torch.where(ok, pts[..., 2], 1.0)
            us = fx[cam, None] * pts[..., 0] / zc + cx[cam, None]
            vs = fy[cam, None] * pts[..., 1] / zc + cy[cam, None]
            inf = float("inf")
            bx0, bx1 = _pixel_range(torch.where(ok, us, inf).amin(1), torch.where(ok, us, -inf).amax(1), width)
            by0, by1 = _pixel_range(torch.where(ok, vs, inf).amin(1), torch.where(ok, vs, -inf).amax(1), height)
            x0[f, cam], x1[f, cam], y0[f, cam], y1[f, cam] = bx0.int(), bx1.int(), by0.int(), by1.int()
    valid = (x0 <= x1) & (y0 <= y1)
    return (x0, x1, y0, y1), valid


def _pick_tile_size(bx0, bx1, by0, by1) -> int:
    best, best_cost = _TILE_SIZES[0], None
    for ts in _TILE_SIZES:
        pairs = ((bx1 // ts - bx0 // ts + 1) * (by1 // ts - by0 // ts + 1)).sum().item()
        cost = pairs * (ts * ts + _PAIR_OVERHEAD)
        if best_cost is None or cost < best_cost:
            best, best_cost = ts, cost
    return best


def _zbuffer(edges32: Tensor, face: Tensor, base: Tensor, box, width: int, height: int,
             n_pixels: int, near: float) -> Tensor:
    """Z-buffer over valid face-views. Returns int64 keys (n_pixels,): -1 empty, else
    ``(float32 bits of 1/z) << 32 | face``, so the maximum key is the nearest face."""
    device = edges32.device
    keys = torch.full((n_pixels,), -1, dtype=torch.int64, device=device)
    if face.numel() == 0:
        return keys
    bx0, bx1, by0, by1 = box
    ts = _pick_tile_size(bx0, bx1, by0, by1)
    tx0, ty0 = bx0 // ts, by0 // ts
    ntx = bx1 // ts - tx0 + 1
    counts = ntx * (by1 // ts - ty0 + 1)
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])
    offs = torch.arange(ts, device=device)
    inv_near = 1.0 / near
    chunk = max(1, _MAX_CHUNK_PIXELS // (ts * ts))
    for p0 in range(0, total, chunk):
        p = torch.arange(p0, min(p0 + chunk, total), device=device)
        fv = torch.searchsorted(ends, p, right=True)
        local = p - (ends[fv] - counts[fv])
        x_start = (tx0[fv] + local % ntx[fv]) * ts
        y_start = (ty0[fv] + local // ntx[fv]) * ts
        px = x_start[:, None] + offs  # (P, ts) pixel columns
        py = y_start[:, None] + offs  # (P, ts) pixel rows
        nan = float("nan")
        xs = torch.where(px < width, px.float() + 0.5, nan)  # NaN fails every coverage test
        ys = torch.where(py < height, py.float() + 0.5, nan)
        e = edges32[fv]  # (P, 4, 3): three edges and the inverse-depth plane

        def lin(i):
            return (e[:, i, 0:1] * xs)[:, None, :] + (e[:, i, 1:2] * ys + e[:, i, 2:3])[:, :, None]

        m = torch.minimum(torch.minimum(lin(0), lin(1)), lin(2))
        s = lin(3)
        hit = (m >= 0) & (s > 0) & (s < inv_near)
        idx = hit.reshape(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        pair, rem = idx // (ts * ts), idx % (ts * ts)
        pix = base[fv[pair]] + (y_start[pair] + rem // ts) * width + x_start[pair] + rem % ts
        bits = s.reshape(-1)[idx].view(torch.int32).to(torch.int64)
        keys.scatter_reduce_(0, pix, (bits << 32) | face[fv[pair]], reduce="amax")
    return keys


def rasterize(vertices: Tensor, faces: Tensor, cams: Cameras, near: float = 0.01) -> Fragments:
    """Rasterise a triangle mesh into every camera of ``cams``.

    ``vertices`` (V, 3) world positions, ``faces`` (F, 3) vertex indices. Returns
    :class:`Fragments` on the vertices' device. See the module docstring for conventions.
    """
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {tuple(vertices.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    device = vertices.device
    cams = cams.to(device)
    faces = faces.to(device=device, dtype=torch.int64)
    C, H, W, nf = len(cams), cams.height, cams.width, faces.shape[0]
    face_id = torch.full((C, H, W), -1, dtype=torch.int64, device=device)
    if nf == 0 or C == 0:
        return Fragments(face_id, torch.zeros(C, H, W, 3, device=device), torch.zeros(C, H, W, device=device))
    bary_parts, depth_parts = [], []
    v64 = vertices.double()
    group = max(1, _MAX_FACE_VIEWS // nf)
    for c0 in range(0, C, group):
        vm = cams.viewmats[c0:c0 + group].double()
        Ks = cams.Ks[c0:c0 + group].double()
        cg = vm.shape[0]
        verts_cam = torch.einsum("cij,vj->vci", vm[:, :3, :3], v64) + vm[:, :3, 3]  # (V, cg, 3)
        box, valid = _screen_boxes(verts_cam.detach(), faces, Ks, near, W, H)
        # Set up edge functions only for the face-views whose box holds a pixel centre.
        # Face-views are numbered face-major: index = face * cg + camera.
        sel = valid.reshape(-1).nonzero().squeeze(1)
        face_of, cam = sel // cg, sel % cg
        edges, absdet, ok = _edge_setup(verts_cam[faces[face_of], cam[:, None]], Ks[cam])
        with torch.no_grad():
            # The inverse depth 1/z = sum_i e_i / |det| is a fourth affine function.
            plane = edges.detach().sum(1) / absdet.detach().clamp_min(1e-300)[:, None]
            coef32 = torch.cat([edges.detach(), plane[:, None]], dim=1).float()  # (N, 4, 3)
            keep = ok.nonzero().squeeze(1)
            keys = _zbuffer(coef32[keep], face_of[keep], cam[keep] * (H * W),
                            tuple(t.reshape(-1)[sel[keep]].long() for t in box), W, H, cg * H * W, near)
            # Which set-up face-view holds the winner of each pixel.
            lookup = torch.full((nf * cg,), -1, dtype=torch.int64, device=device)
            lookup[sel] = torch.arange(sel.numel(), device=device)
        fid = torch.where(keys >= 0, keys & 0xFFFFFFFF, -1).view(cg, H, W)
        face_id[c0:c0 + cg] = fid
        # Barycentrics and depth of the winners, in float64 and differentiable.
        pix = (fid.reshape(-1) >= 0).nonzero().squeeze(1)
        rem = pix % (H * W)
        x = (rem % W).double() + 0.5
        y = (rem // W).double() + 0.5
        row = lookup[fid.reshape(-1)[pix] * cg + pix // (H * W)]
        e = edges[row]
        ev = e[:, :, 0] * x[:, None] + e[:, :, 1] * y[:, None] + e[:, :, 2]
        b = ev.clamp_min(0)
        b = b / b.sum(-1, keepdim=True).clamp_min(1e-300)
        z = absdet[row] / ev.sum(-1)
        bary_g = torch.zeros(cg * H * W, 3, dtype=torch.float32, device=device)
        depth_g = torch.zeros(cg * H * W, dtype=torch.float32, device=device)
        bary_parts.append(bary_g.index_put((pix,), b.float()).view(cg, H, W, 3))
        depth_parts.append(depth_g.index_put((pix,), z.float()).view(cg, H, W))
    bary = torch.cat(bary_parts) if len(bary_parts) > 1 else bary_parts[0]
    depth = torch.cat(depth_parts) if len(depth_parts) > 1 else depth_parts[0]
    return Fragments(face_id, bary, depth)


def interpolate(attr: Tensor, fragments: Fragments, faces: Tensor | None = None) -> Tensor:
    """Interpolate a mesh attribute at every pixel: (C, H, W, K), zeros where no face is seen.

    ``attr`` is per vertex (V, K), indexed through ``faces`` (F, 3), or face-varying (F, 3, K)
    (one value per face corner; ``faces`` unused).
    """
    if attr.dim() == 2:
        if faces is None:
            raise ValueError("interpolate: per-vertex attributes (V, K) need faces")
        corner = attr[faces.to(attr.device)]
    elif attr.dim() == 3 and attr.shape[1] == 3:
        corner = attr
    else:
        raise ValueError(f"interpolate: attr must be (V, K) or (F, 3, K), got {tuple(attr.shape)}")
    mask = fragments.face_id >= 0
    fid = fragments.face_id[mask]
    vals = (corner[fid] * fragments.bary[mask][..., None].to(corner.dtype)).sum(1)
    out = torch.zeros(*fragments.face_id.shape, corner.shape[-1], dtype=corner.dtype, device=corner.device)
    return out.index_put((mask,), vals)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinearly sample ``texture`` (Ht, Wt, K), row 0 = top = ``v = 1``, at ``uv`` (..., 2).

    Texel ``(row, col)`` covers ``u in [col, col + 1] / Wt``, ``v in [Ht - row - 1, Ht - row] / Ht``;
    lookups outside [0, 1] clamp to the border. Differentiable with respect to the texture.
    """
    shape = uv.shape[:-1]
    flat = uv.reshape(1, -1, 1, 2).to(texture.dtype)
    grid = torch.stack([flat[..., 0] * 2 - 1, 1 - flat[..., 1] * 2], dim=-1)
    img = texture.permute(2, 0, 1)[None]
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].t().reshape(*shape, texture.shape[-1])


def project_vertices(vertices: Tensor, cams: Cameras) -> Tensor:
    """Homogeneous pixel coordinates ``P = K (R v + t)`` of ``vertices`` (V, 3) in every camera of
    ``cams``: (C, V, 3) float64, differentiable. A vertex in front of the camera lands on pixel
    coordinates ``(P_x / P_z, P_y / P_z)`` (the module's convention: pixel ``(i, j)`` has its
    centre at ``(j + 0.5, i + 0.5)``); ``P_z`` is its camera-space depth."""
    cams = cams.to(vertices.device)
    vm, Ks = cams.viewmats.double(), cams.Ks.double()
    cam = torch.einsum("cij,vj->cvi", vm[:, :3, :3], vertices.double()) + vm[:, None, :3, 3]
    return torch.einsum("cij,cvj->cvi", Ks, cam)


def edge_neighbors(faces: Tensor) -> Tensor:
    """For each edge of each face, the face across it: (F, 3) int64 face indices, entry ``i`` for
    the edge opposite corner ``i`` (between corners ``i + 1`` and ``i + 2``), -1 on boundary edges
    and on edges shared by more than two faces."""
    faces = faces.long()
    nf = faces.shape[0]
    if nf == 0:
        return torch.empty(0, 3, dtype=torch.int64, device=faces.device)
    a, b = faces[:, [1, 2, 0]].reshape(-1), faces[:, [2, 0, 1]].reshape(-1)
    n = int(faces.max()) + 1
    key = torch.minimum(a, b) * n + torch.maximum(a, b)
    _, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)  # face-edges grouped by edge
    start = torch.cumsum(counts, 0) - counts
    pair = counts[inv] == 2
    partner = order[start[inv]] + order[(start[inv] + 1).clamp_max(order.numel() - 1)] - torch.arange(
        3 * nf, device=faces.device)
    return torch.where(pair, partner // 3, -1).view(nf, 3)


_MAX_HOPS = 16  # faces a pixel-to-pixel segment may cross before it meets the silhouette


def antialias(image: Tensor, fragments: Fragments, verts_hom: Tensor, faces: Tensor,
              neighbors: Tensor | None = None) -> Tensor:
    """Analytic antialiasing at silhouettes (see the module docstring): ``image`` (C, H, W, K)
    rendered from ``fragments`` of the mesh ``faces`` (F, 3), whose vertices project to
    ``verts_hom`` (C, V, 3) homogeneous pixel coordinates (:func:`project_vertices`).

    Returns the blended image, differentiable with respect to ``image`` and ``verts_hom`` (so to
    the vertex positions and the cameras). Pixels away from silhouettes are returned unchanged.
    ``neighbors``: :func:`edge_neighbors` of ``faces``, to reuse it across calls.

    Triangles smaller than a pixel: when the segment between the two pixel centres leaves the
    front pixel's triangle through an edge that is not a silhouette, it is followed into the face
    across that edge, and so on (up to 16 faces), until it leaves through a silhouette edge (which
    then sets the blend) or ends inside a face (no blend). Each pair of pixels adds one blend to
    one pixel, so a pixel between silhouettes on several sides (a feature thinner than a pixel)
    may leave the range of the inputs.
    """
    if image.dim() != 4:
        raise ValueError(f"antialias: image must be (C, H, W, K), got {tuple(image.shape)}")
    C, H, W, K = image.shape
    fid = fragments.face_id.to(image.device)
    if tuple(fid.shape) != (C, H, W):
        raise ValueError(f"antialias: fragments are {tuple(fid.shape)}, the image is {(C, H, W)}")
    if verts_hom.dim() != 3 or verts_hom.shape[0] != C or verts_hom.shape[2] != 3:
        raise ValueError(f"antialias: verts_hom must be ({C}, V, 3), got {tuple(verts_hom.shape)}")
    faces = faces.to(image.device).long()
    if neighbors is None:
        neighbors = edge_neighbors(faces)
    neighbors = neighbors.to(image.device)
    fid_flat = fid.reshape(-1)
    depth = fragments.depth.to(image.device).reshape(-1)
    flat = image.reshape(C * H * W, K)
    vh = verts_hom.detach().double()
    targets, deltas = [], []
    for horizontal in (True, False):
        if horizontal:
            c, i, j = (fid[:, :, :-1] != fid[:, :, 1:]).nonzero(as_tuple=True)
            step = 1
        else:
            c, i, j = (fid[:, :-1, :] != fid[:, 1:, :]).nonzero(as_tuple=True)
            step = W
        if c.numel() == 0:
            continue
        p0 = (c * H + i) * W + j
        p1 = p0 + step
        f0, f1 = fid_flat[p0], fid_flat[p1]
        first = (f1 < 0) | ((f0 >= 0) & (depth[p0] <= depth[p1]))  # pixel 0 sees the front surface
        pf, pb = torch.where(first, p0, p1), torch.where(first, p1, p0)
        xf, yf = (pf % W).double() + 0.5, ((pf // W) % H).double() + 0.5
        xb, yb = (pb % W).double() + 0.5, ((pb // W) % H).double() + 0.5
        with torch.no_grad():
            face, edge = _walk_to_silhouette(vh, faces, neighbors, c, torch.where(first, f0, f1), xf, yf, xb, yb)
            ok = face >= 0
            rows = torch.arange(int(ok.sum()), device=c.device)
            lk = _edge_lines(vh[c[ok][:, None], faces[face[ok]]])[rows, edge[ok]]
            steep = lk[:, 0].abs() >= lk[:, 1].abs()  # the edge is closer to vertical than to horizontal
            keep = ok.nonzero().squeeze(1)[steep if horizontal else ~steep]
        if keep.numel() == 0:
            continue
        c, g, k, pf, pb = c[keep], face[keep], edge[keep], pf[keep], pb[keep]
        xf, yf, xb, yb = xf[keep], yf[keep], xb[keep], yb[keep]
        # The crossing, now with gradients: only the silhouette edge's line is needed.
        tri = faces[g]
        ka = tri.gather(1, ((k + 1) % 3)[:, None]).squeeze(1)
        kb = tri.gather(1, ((k + 2) % 3)[:, None]).squeeze(1)
        Pv = vh[c[:, None], tri]
        det = (Pv[:, 0] * _cross(Pv[:, 1], Pv[:, 2])).sum(-1)  # orientation only: no gradient needed
        line = _cross(verts_hom[c, ka].to(torch.float64), verts_hom[c, kb].to(torch.float64))
        line = line * torch.where(det < 0, -1.0, 1.0).to(line.dtype)[:, None]
        ef = line[:, 0] * xf + line[:, 1] * yf + line[:, 2]
        eb = line[:, 0] * xb + line[:, 1] * yb + line[:, 2]
        t = (ef / (ef - eb)).clamp(0.0, 1.0)
        cf, cb = flat[pf], flat[pb]
        into_back = t > 0.5
        w = torch.where(into_back, t - 0.5, 0.5 - t).to(image.dtype)[:, None]
        targets.append(torch.where(into_back, pb, pf))
        deltas.append(w * torch.where(into_back[:, None], cf - cb, cb - cf))
    if not targets:
        return image
    return flat.index_add(0, torch.cat(targets), torch.cat(deltas)).view(C, H, W, K)


def _walk_to_silhouette(vh: Tensor, faces: Tensor, neighbors: Tensor, cam: Tensor, face: Tensor,
                        xf: Tensor, yf: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
    """Follow each segment from the front pixel centre ``(xf, yf)`` (inside ``face``) towards the
    back one ``(xb, yb)`` across faces until it leaves one through a silhouette edge.

    Returns ``(face, edge)`` (N,) each: the face and the index of its silhouette edge, face -1
    where the segment ends inside a face, meets no silhouette within :data:`_MAX_HOPS` faces, or
    never leaves the starting face."""
    n = face.numel()
    out_face = torch.full((n,), -1, dtype=torch.int64, device=face.device)
    out_edge = torch.zeros(n, dtype=torch.int64, device=face.device)
    active = torch.arange(n, device=face.device)
    cur = face.clone()
    t_in = torch.zeros(n, dtype=torch.float64, device=face.device)
    for _ in range(_MAX_HOPS):
        if active.numel() == 0:
            break
        g = cur[active]
        P = vh[cam[active][:, None], faces[g]]  # (A, 3 corners, 3)
        lines = _edge_lines(P)
        ef = lines[..., 0] * xf[active, None] + lines[..., 1] * yf[active, None] + lines[..., 2]
        eb = lines[..., 0] * xb[active, None] + lines[..., 1] * yb[active, None] + lines[..., 2]
        # Along the segment, e(t) = ef + t (eb - ef): the face is left at the smallest root of a
        # falling edge function.
        falling = eb < ef
        root = torch.where(falling, ef / torch.where(falling, ef - eb, 1.0), float("inf"))
        t_out, k = root.min(1)
        leaves = t_out < 1.0  # else the segment ends inside this face: no silhouette between the pixels
        rows = torch.arange(active.numel(), device=face.device)
        nb = neighbors[g, k]
        # Silhouette: no face across the edge, or the face across folds back behind it (its far
        # corner lies on the same side of the edge's plane through the camera centre as ours).
        Q = vh[cam[active], torch.where(nb >= 0, faces[nb.clamp_min(0)].sum(1) - faces[g].sum(1)
                                        + faces[g, k], 0)]
        lk = lines[rows, k]
        silhouette = (nb < 0) | ((lk * P[rows, k]).sum(-1) * (lk * Q).sum(-1) >= 0)
        found = leaves & silhouette
        out_face[active[found]] = g[found]
        out_edge[active[found]] = k[found]
        go = leaves & ~silhouette & (t_out >= t_in[active] - 1e-9)
        cur[active[go]] = nb[go]
        t_in[active[go]] = t_out[go]
        active = active[go]
    return out_face, out_edge


def _edge_lines(P: Tensor) -> Tensor:
    """Edge lines (N, 3 edges, 3) of triangles with homogeneous pixel corners ``P`` (N, 3, 3):
    row ``i`` gives ``e_i(x, y) = l_x x + l_y y + l_z`` for the edge opposite corner ``i``, signed
    so that the covered side (in front of the camera) is ``e_i >= 0``."""
    p0, p1, p2 = P.unbind(1)
    lines = torch.stack([_cross(p1, p2), _cross(p2, p0), _cross(p0, p1)], dim=1)
    det = (p0 * lines[:, 0]).sum(-1)
    return lines * torch.where(det < 0, -1.0, 1.0).to(lines.dtype)[:, None, None]


def _scaled_cameras(cams: Cameras, s: int) -> Cameras:
    """The same cameras with an s-times denser pixel grid (intrinsics scaled, poses kept)."""
    Ks = cams.Ks.clone()
    Ks[:, :2, :] *= s
    return Cameras(cams.viewmats, Ks, cams.width * s, cams.height * s, cams.elevation, cams.azimuth,
                   cams.radius, cams.fovy)


def _background_image(background, C: int, H: int, W: int, device, dtype) -> Tensor:
    if background is None:
        return torch.zeros(C, H, W, 3, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.dim() == 1:
        bg = bg[None, None, None]
    elif bg.dim() == 2:
        bg = bg[:, None, None]
    return bg.expand(C, H, W, 3)


def render_mesh(mesh: Mesh, cams: Cameras, background=None, ssaa: int = 1, near: float = 0.01,
                antialias: bool = False) -> MeshRender:
    """Render ``mesh`` from every camera in ``cams``.

    Colour comes from ``mesh.texture`` sampled at the interpolated UVs (``mesh.face_uvs`` index
    ``mesh.uvs`` per face corner; without face_uvs the UVs are per vertex), else from
    ``mesh.vertex_colors``, else a uniform grey. ``background``: RGB (3,), per camera (C, 3) or an
    image (C, H, W, 3); default black. ``ssaa``: render at ``ssaa`` times the resolution and
    average ``ssaa x ssaa`` blocks (antialiased edges, fractional alpha). Cameras are processed in
    groups, so the supersampled buffers of only one group are held at a time. ``antialias``: blend
    colour and alpha across silhouettes (:func:`antialias`, before the ``ssaa`` average), which
    makes ``rgb`` and ``alpha`` differentiable with respect to ``mesh.vertices`` there; off by
    default (the render is then unchanged).
    """
    if ssaa < 1:
        raise ValueError(f"ssaa must be >= 1, got {ssaa}")
    if mesh.texture is not None and mesh.uvs is None:
        raise ValueError("render_mesh: the mesh has a texture but no uvs")
    device = mesh.device
    cams = cams.to(device)
    hi = _scaled_cameras(cams, ssaa) if ssaa > 1 else cams
    group = max(1, _MAX_RENDER_PIXELS // (hi.width * hi.height))
    neighbors = edge_neighbors(mesh.faces.to(device)) if antialias else None
    parts = [_render_group(mesh, hi[c0:c0 + group], ssaa, near, neighbors) for c0 in range(0, len(cams), group)]
    rgb, alpha, depth, normal, uv, fid = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*parts))
    bg = _background_image(background, len(cams), cams.height, cams.width, device, rgb.dtype)
    rgb = rgb + (1 - alpha) * bg
    return MeshRender(rgb=rgb, alpha=alpha, depth=depth, normal=normal, uv=uv, face_id=fid)


def _render_group(mesh: Mesh, hi: Cameras, ssaa: int, near: float, neighbors: Tensor | None = None):
    """Premultiplied colour, alpha, depth, normal, uv and face ids of one group of cameras;
    ``neighbors`` (:func:`edge_neighbors`) given: antialiased colour and alpha."""
    device = mesh.device
    frags = rasterize(mesh.vertices, mesh.faces, hi, near=near)
    mask = frags.face_id >= 0
    C, Hs, Ws = frags.face_id.shape
    faces = mesh.faces.to(device)
    uv = torch.zeros(C, Hs, Ws, 2, device=device)
    if mesh.uvs is not None:
        corner_uv = mesh.uvs[mesh.face_uvs] if mesh.face_uvs is not None else mesh.uvs[faces]
        uv = interpolate(corner_uv.float(), frags)
    if mesh.texture is not None:
        vals = sample_texture(mesh.texture, uv[mask])
        color = torch.zeros(C, Hs, Ws, 3, device=device, dtype=vals.dtype).index_put((mask,), vals)
    elif mesh.vertex_colors is not None:
        color = interpolate(mesh.vertex_colors, frags, faces)
    else:
        color = mask[..., None].float() * _DEFAULT_GREY
    fid = frags.face_id
    normal = torch.zeros(C, Hs, Ws, 3, device=device).index_put(
        (mask,), mesh.face_normals().detach().float()[fid[mask]])
    alpha = mask[..., None].to(color.dtype)
    depth = frags.depth[..., None]
    if neighbors is not None:
        both = antialias(torch.cat([color, alpha], -1), frags, project_vertices(mesh.vertices, hi), faces, neighbors)
        color, alpha = both[..., :-1], both[..., -1:]
    if ssaa > 1:
        def pool(t):
            return F.avg_pool2d(t.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)

        alpha = pool(alpha)
        cover = alpha.clamp_min(1e-12)
        color = pool(color)  # zero where empty: premultiplied
        depth = pool(depth) / cover.to(depth.dtype)
        uv = pool(uv) / cover.to(uv.dtype)
        normal = F.normalize(pool(normal), dim=-1)
        fid = fid[:, ssaa // 2::ssaa, ssaa // 2::ssaa]
    return color, alpha, depth, normal, uv, fid
