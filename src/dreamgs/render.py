"""Rendering 3D Gaussians: one function, two backends.

``render(model, cameras, background)`` returns RGB, alpha and depth for a batch of cameras.

- ``gsplat``: gsplat's CUDA rasteriser (used automatically when the model is on a CUDA device).
- ``torch``: a pure-PyTorch, differentiable rasteriser for the CPU (and any device). It computes
  the same function as gsplat: EWA projection with the same Jacobian clamping and 0.3 px blur,
  front-to-back compositing in camera-depth order, per-pixel alpha
  ``min(0.999, o * exp(-q/2))`` skipped below 1/255, and termination before the first Gaussian
  that would take transmittance to 1e-4 or less. Pixels are bucketed into screen tiles, and each
  tile composites only the Gaussians whose 3-sigma box touches it, which changes nothing in the
  result (the box contains every pixel where alpha >= 1/255) but saves most of the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras
from .gaussians import GaussianModel, quat_to_rotmat

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
TILE_SIZE = 8  # screen-tile edge of the torch backend, in pixels (see benchmarks/cpu_render.py)


@dataclass
class RenderOutput:
    rgb: Tensor  # (C, H, W, 3), background composited
    alpha: Tensor  # (C, H, W, 1)
    depth: Tensor  # (C, H, W, 1): accumulated sum(w z), or expected depth if asked
    means2d: Tensor  # (C, N, 2) screen positions; its .grad drives densification
    visible: Tensor  # (C, N) bool: Gaussians that reach the image

    def images(self) -> Tensor:
        """RGB as (C, 3, H, W), the layout image models take."""
        return self.rgb.permute(0, 3, 1, 2)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend not in ("gsplat", "torch"):
        raise ValueError(f"unknown render backend '{backend}' (expected auto, gsplat or torch)")
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("the gsplat backend needs the model on a CUDA device; use backend=torch on CPU")
    return backend


def _background(background, cams: Cameras, device, dtype) -> Tensor:
    if background is None:
        return torch.zeros(len(cams), 3, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    return bg.expand(len(cams), 3) if bg.dim() == 1 else bg


def render(model: GaussianModel, cams: Cameras, background=None, backend: str = "auto",
           expected_depth: bool = False, near_plane: float = 0.01, far_plane: float = 1e10,
           eps2d: float = 0.3, tile_size: int = TILE_SIZE) -> RenderOutput:
    """Render ``model`` from every camera in ``cams``.

    ``background``: RGB (3,) or per-camera (C, 3), default black. Colours come from the model's
    SH coefficients evaluated at each camera centre (degree 0: view-independent). ``tile_size``:
    screen-tile edge in pixels of the torch backend (it changes speed, not the image); gsplat
    keeps its own 16.
    """
    device = model.device
    backend = resolve_backend(backend, device)
    cams = cams.to(device)
    colors = model.colors(cams.centers if model.sh_degree > 0 else None)
    bg = _background(background, cams, device, model.means.dtype)
    args = (model.means, model.quats, model.scales, model.opacities, colors, cams.viewmats, cams.Ks,
            cams.width, cams.height, bg)
    if backend == "gsplat":
        out = _render_gsplat(*args, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
    else:
        out = rasterize_torch(*args, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, tile_size=tile_size)
    if expected_depth:
        out.depth = out.depth / out.alpha.clamp_min(1e-10)
    return out


# ------------------------------------------------------------------------------------------------
# gsplat backend


def _render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg,
                   near_plane, far_plane, eps2d) -> RenderOutput:
    import gsplat

    rgbd, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, packed=False,
        render_mode="RGB+D", backgrounds=bg,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    visible = (meta["radii"] > 0).all(dim=-1) if meta["radii"].dim() == 3 else meta["radii"] > 0
    return RenderOutput(rgbd[..., :3], alpha, rgbd[..., 3:4], means2d, visible)


# ------------------------------------------------------------------------------------------------
# Pure-torch backend


def project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                      near_plane=0.01, far_plane=1e10, eps2d=0.3):
    """EWA projection of N Gaussians into C cameras (gsplat's rules).

    Returns means2d (C, N, 2), conics (C, N, 3) = (a, b, c) of the inverse 2D covariance,
    depths (C, N), radii (C, N, 2) in whole pixels, and a validity mask (C, N).
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    x, y, z = mc.unbind(-1)
    ok_z = (z > near_plane) & (z < far_plane)
    zs = torch.where(ok_z, z, torch.ones_like(z))  # keep masked-out lanes finite for autograd

    rot = quat_to_rotmat(quats)
    M = rot * scales[:, None, :]
    cov = M @ M.transpose(-1, -2)  # (N, 3, 3)
    cov_c = R[:, None] @ cov[None] @ R.transpose(-1, -2)[:, None]  # (C, N, 3, 3)

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, x / zs))
    ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack([
        torch.stack([fx / zs, zero, -fx * tx / zs**2], dim=-1),
        torch.stack([zero, fy / zs, -fy * ty / zs**2], dim=-1),
    ], dim=-2)  # (C, N, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    ok_det = det > 0
    dets = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / dets, -b / dets, a / dets], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach().expand_as(z)
        ok_op = op >= ALPHA_MIN
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        on_screen = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        valid = ok_z & ok_det & ok_op & on_screen & ((rx > 0) | (ry > 0))
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
    return means2d, conics, z, radii, valid


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``x`` (so ``t > _below(x)`` is ``t >= x`` in ``dtype``)."""
    return torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()


def _alphas(xy, conic, op, px, py):
    """Alphas and transmittances of K depth-sorted Gaussians on a Y x X pixel grid, gsplat's rules.

    ``px`` (B, X) and ``py`` (B, Y) are the pixel-centre coordinates of each batch's grid; pixel
    (y, x) is row ``y * X + x`` of the (B, Y*X, K) results. The Mahalanobis term separates on a
    grid, ``q = a dx^2 / 2 + c dy^2 / 2 + b dx dy`` with dx depending on (x, k) and dy on (y, k),
    so only ``b dx dy`` and two additions are per (pixel, Gaussian); the opacity enters as
    ``exp(log(o) - q)``.

    Returns ``alpha`` (0 where skipped; not yet cut at termination), ``one_minus`` = 1 - alpha,
    the inclusive and exclusive transmittances ``t_incl``, ``t_excl`` of the uncut alphas, the
    weights ``w = alpha * t_excl`` cut at termination (zero from the first Gaussian that would take
    T to 1e-4 or less), and the offsets dx (B, X, K), dy (B, Y, K).
    """
    B, K = op.shape
    X, Y = px.shape[1], py.shape[1]
    dx = xy[:, None, :, 0] - px[:, :, None]
    dy = xy[:, None, :, 1] - py[:, :, None]
    lx = -0.5 * conic[:, None, :, 0] * dx * dx  # (B, X, K)
    ly = torch.log(op)[:, None, :] - 0.5 * conic[:, None, :, 2] * dy * dy  # (B, Y, K)
    s = torch.addcmul(lx[:, None], -conic[:, None, None, :, 1] * dy[:, :, None], dx[:, None])
    s += ly[:, :, None]
    alpha = s.exp_().clamp_max_(ALPHA_MAX)  # (B, Y, X, K)
    alpha = torch.nn.functional.threshold_(alpha, _below(ALPHA_MIN, alpha.dtype), 0.0).view(B, Y * X, K)
    t = alpha.new_empty(B, Y * X, K + 1)
    t[..., 0] = 1.0
    one_minus = torch.sub(1.0, alpha, out=t[..., 1:])
    t = torch.cumprod(t, dim=-1)
    t_excl, t_incl = t[..., :-1], t[..., 1:]
    w = torch.where(t_incl > T_MIN, alpha * t_excl, torch.zeros((), dtype=alpha.dtype, device=alpha.device))
    return alpha, one_minus, t_incl, t_excl, w, dx, dy


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of depth-sorted Gaussians over pixel grids.

    Inputs per batch b: Gaussian centres ``xy`` (B, K, 2), conics (B, K, 3), opacities (B, K),
    features (B, K, D) and the grid's pixel centres ``px`` (B, X), ``py`` (B, Y). Outputs the
    composited features (B, Y*X, D) and the final transmittance (B, Y*X), rows in row-major
    pixel order. The backward pass is analytic and recomputes the alphas, so no (B, P, K) tensor
    is kept between the passes.
    """

    @staticmethod
    def forward(ctx, xy, conic, op, feat, px, py):
        w = _alphas(xy, conic, op, px, py)[4]
        ones = feat.new_ones(*feat.shape[:-1], 1)
        out = torch.bmm(w, torch.cat([feat, ones], dim=-1))  # last column: sum(w) = 1 - T
        ctx.save_for_backward(xy, conic, op, feat, px, py)
        return out[..., :-1], 1.0 - out[..., -1]

    @staticmethod
    def backward(ctx, g_out, g_t):
        xy, conic, op, feat, px, py = ctx.saved_tensors
        alpha, one_minus, _, _, w, dx, dy = _alphas(xy, conic, op, px, py)
        B, K = op.shape
        X, Y = px.shape[1], py.shape[1]
        t_fin = 1.0 - w.sum(-1, keepdim=True)
        g_feat = torch.bmm(w.transpose(1, 2), g_out)
        wc = w * torch.bmm(g_out, feat.transpose(1, 2))  # (B, P, K): w_k feature_k . dL/dout
        # dL/dalpha_k = T_excl_k c_k - (sum_{j>k} w_j c_j + g_T T_fin) / (1 - alpha_k), and
        # dL/dq = -dL/dalpha * alpha for live alphas (not skipped, clamped or cut).
        behind = wc.sum(-1, keepdim=True) - torch.cumsum(wc, dim=-1)
        behind += g_t[..., None] * t_fin
        g_q = behind.div_(one_minus).mul_(alpha).sub_(wc)
        live = (w > 0) & (alpha < ALPHA_MAX)
        g_q = torch.where(live, g_q, torch.zeros((), dtype=g_q.dtype, device=g_q.device)).view(B, Y, X, K)
        gx, gy = g_q.sum(1), g_q.sum(2)  # (B, X, K), (B, Y, K)
        gxy = (g_q * dx[:, None]).sum(2)  # (B, Y, K): sum over x of g_q dx
        sx, sy = (gx * dx).sum(1), (gy * dy).sum(1)  # sum g_q dx, sum g_q dy
        a, b, c = conic.unbind(-1)
        g_conic = torch.stack([0.5 * (gx * dx * dx).sum(1), (gxy * dy).sum(1), 0.5 * (gy * dy * dy).sum(1)], dim=-1)
        g_xy = torch.stack([a * sx + b * sy, c * sy + b * sx], dim=-1)
        g_op = torch.where(op > 0, -gx.sum(1) / op, torch.zeros((), dtype=op.dtype, device=op.device))
        return g_xy, g_conic, g_op, g_feat, None, None


def composite(xy, conic, op, feat, px, py) -> tuple[Tensor, Tensor]:
    """Composite depth-sorted Gaussians on pixel grids; see :class:`_Composite`."""
    return _Composite.apply(xy, conic, op, feat, px, py)


def rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg,
                    near_plane=0.01, far_plane=1e10, eps2d=0.3, tile_size: int = TILE_SIZE,
                    max_elements: int = 1 << 20) -> RenderOutput:
    """Differentiable tile rasteriser in PyTorch; see the module docstring for the rules.

    ``colors`` (N, D) or (C, N, D); ``bg`` (C, D). ``tile_size``: screen-tile edge in pixels
    (speed only: every size gives the same image). ``max_elements`` bounds the size of the
    per-chunk (tiles x pixels x Gaussians) tensors; 2^20 keeps them in cache on CPUs.
    """
    C, N = viewmats.shape[0], means.shape[0]
    dev, dt = means.device, means.dtype
    means2d, conics, depths, radii, valid = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    if means2d.requires_grad:
        means2d.retain_grad()
    if colors.dim() == 2:
        colors = colors[None].expand(C, -1, -1)
    D = colors.shape[-1]

    ts = tile_size
    TW, TH = math.ceil(width / ts), math.ceil(height / ts)
    T, P = TW * TH, ts * ts

    # --- bucket (camera, tile, Gaussian) intersections, sorted by depth within each bucket -----
    with torch.no_grad():
        mx, my = means2d.detach().unbind(-1)
        rx, ry = radii.unbind(-1)
        x0 = torch.floor((mx - rx) / ts).clamp(0, TW).long()
        x1 = torch.ceil((mx + rx) / ts).clamp(0, TW).long()
        y0 = torch.floor((my - ry) / ts).clamp(0, TH).long()
        y1 = torch.ceil((my + ry) / ts).clamp(0, TH).long()
        nx = (x1 - x0).clamp_min(0)
        cnt = (nx * (y1 - y0).clamp_min(0) * valid).reshape(-1)
        gid = torch.repeat_interleave(torch.arange(C * N, device=dev), cnt)
        first = torch.cumsum(cnt, 0) - cnt
        off = torch.arange(gid.numel(), device=dev) - first[gid]
        nxg = nx.reshape(-1)[gid].clamp_min(1)
        tile = (y0.reshape(-1)[gid] + off // nxg) * TW + x0.reshape(-1)[gid] + off % nxg
        cam = gid // N
        rank = torch.empty_like(depths, dtype=torch.long)
        order_d = torch.argsort(depths.detach(), dim=1, stable=True)
        rank.scatter_(1, order_d, torch.arange(N, device=dev).expand(C, N).contiguous())
        bucket = cam * T + tile
        order = torch.argsort(bucket * N + rank.reshape(-1)[gid], stable=True)
        bucket, gid = bucket[order], gid[order]
        counts = torch.bincount(bucket, minlength=C * T)
        start = torch.cumsum(counts, 0) - counts

    # Padded per-Gaussian attributes; index C*N is a transparent dummy.
    flat = lambda t: t.reshape(C * N, *t.shape[2:])  # noqa: E731
    pad = lambda t: torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # noqa: E731
    op_cn = torch.where(valid, opacities[None].expand(C, N), torch.zeros((), device=dev, dtype=dt))
    g_xy, g_conic, g_op = pad(flat(means2d)), pad(flat(conics)), pad(flat(op_cn))
    g_feat = pad(flat(torch.cat([colors, depths[..., None]], dim=-1)))

    # Pixel-centre coordinates of each tile's columns (T, ts) and rows (T, ts).
    ty_, tx_ = torch.meshgrid(torch.arange(TH, device=dev), torch.arange(TW, device=dev), indexing="ij")
    lin = torch.arange(ts, device=dev)
    pix_x = (tx_.reshape(T, 1) * ts + lin).to(dt) + 0.5
    pix_y = (ty_.reshape(T, 1) * ts + lin).to(dt) + 0.5

    out = torch.zeros(C * T, P, D + 1, device=dev, dtype=dt)
    trans = torch.ones(C * T, P, device=dev, dtype=dt)
    # Process buckets in chunks of similar length, so padding stays small.
    by_len = torch.argsort(counts, descending=True)
    counts_sorted = counts[by_len].tolist()
    nonempty = sum(1 for k in counts_sorted if k > 0)
    results_idx, results_val, results_T = [], [], []
    lin_k = torch.arange(counts_sorted[0] if counts_sorted else 0, device=dev)
    gid_pad = torch.cat([gid, gid.new_full((1,), C * N)])
    i = 0
    while i < nonempty:
        # A chunk holds buckets whose lengths are within 2/3 of its longest, within the budget.
        kmax = counts_sorted[i]
        limit = max(1, max_elements // max(1, kmax * P))
        nb = 1
        while nb < limit and i + nb < nonempty and 3 * counts_sorted[i + nb] >= 2 * kmax:
            nb += 1
        bsel = by_len[i:i + nb]
        i += nb
        # Gather this chunk's Gaussians into (nb, kmax) index slots: a bucket's intersections are
        # contiguous in the sorted list, from its start for its count (padding: the dummy C*N).
        pos = start[bsel, None] + lin_k[:kmax]
        idx = torch.where(lin_k[:kmax] < counts[bsel, None], gid_pad[pos.clamp_max(gid.numel())], C * N)
        tiles = bsel % T
        val, t_fin = composite(g_xy[idx], g_conic[idx], g_op[idx], g_feat[idx], pix_x[tiles], pix_y[tiles])
        results_idx.append(bsel)
        results_val.append(val)
        results_T.append(t_fin)
    if results_idx:
        bidx = torch.cat(results_idx)
        out = out.index_put((bidx,), torch.cat(results_val))
        trans = trans.index_put((bidx,), torch.cat(results_T))

    # Tiles -> images.
    def untile(t: Tensor) -> Tensor:
        k = t.shape[-1]
        t = t.reshape(C, TH, TW, ts, ts, k).permute(0, 1, 3, 2, 4, 5).reshape(C, TH * ts, TW * ts, k)
        return t[:, :height, :width]

    img = untile(out)
    T_img = untile(trans[..., None])
    rgb = img[..., :D] + T_img * bg[:, None, None, :D]
    return RenderOutput(rgb, 1.0 - T_img, img[..., D:D + 1], means2d, valid)
