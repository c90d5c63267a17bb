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
           eps2d: float = 0.3) -> RenderOutput:
    """Render ``model`` from every camera in ``cams``.

    ``background``: RGB (3,) or per-camera (C, 3), default black. Colours come from the model's
    SH coefficients evaluated at each camera centre (degree 0: view-independent).
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
        out = rasterize_torch(*args, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
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


def _alphas(xy, conic, op, px, py):
    """Per-pixel alphas (B, P, K) of K depth-sorted Gaussians at P pixels, gsplat's rules.

    Returns the composited alphas (zero where skipped or after termination) and, for the
    backward pass, the raw ``o * exp(-q)``, ``exp(-q)``, the offsets and the live mask.
    """
    dx = xy[:, None, :, 0] - px[:, :, None]
    dy = xy[:, None, :, 1] - py[:, :, None]
    q = 0.5 * (conic[:, None, :, 0] * dx * dx + conic[:, None, :, 2] * dy * dy) + conic[:, None, :, 1] * dx * dy
    e = torch.exp(-q)
    raw = op[:, None, :] * e
    alpha = raw.clamp_max(ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros((), dtype=alpha.dtype, device=alpha.device))
    keep = torch.cumprod(1.0 - alpha, dim=-1) > T_MIN  # stop before T would reach <= 1e-4
    alpha = alpha * keep
    return alpha, raw, e, dx, dy, keep


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of depth-sorted Gaussians over pixel batches.

    Inputs per batch b: Gaussian centres ``xy`` (B, K, 2), conics (B, K, 3), opacities (B, K),
    features (B, K, D) and pixel centres ``px``, ``py`` (B, P). Outputs the composited features
    (B, P, D) and the final transmittance (B, P). The backward pass is analytic and recomputes
    the alphas, so no (B, P, K) tensor is kept between the passes.
    """

    @staticmethod
    def forward(ctx, xy, conic, op, feat, px, py):
        alpha = _alphas(xy, conic, op, px, py)[0]
        t_incl = torch.cumprod(1.0 - alpha, dim=-1)
        w = alpha * torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
        ctx.save_for_backward(xy, conic, op, feat, px, py)
        return torch.bmm(w, feat), t_incl[..., -1]

    @staticmethod
    def backward(ctx, g_out, g_t):
        xy, conic, op, feat, px, py = ctx.saved_tensors
        alpha, raw, e, dx, dy, keep = _alphas(xy, conic, op, px, py)
        one_minus = 1.0 - alpha
        t_incl = torch.cumprod(one_minus, dim=-1)
        t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
        w = alpha * t_excl
        t_fin = t_incl[..., -1:]
        g_feat = torch.bmm(w.transpose(1, 2), g_out)
        cg = torch.bmm(g_out, feat.transpose(1, 2))  # (B, P, K): feature_k . dL/dout
        wc = w * cg
        later = wc.sum(-1, keepdim=True) - torch.cumsum(wc, dim=-1)  # contributions behind k
        g_alpha = t_excl * cg - (later + g_t[..., None] * t_fin) / one_minus
        live = (alpha > 0) & (raw < ALPHA_MAX)  # clamped or skipped alphas pass no gradient
        g_raw = torch.where(live, g_alpha, torch.zeros((), dtype=g_alpha.dtype, device=g_alpha.device))
        g_op = (g_raw * e).sum(1)
        g_q = -g_raw * raw
        a, b, c = conic[:, None, :, 0], conic[:, None, :, 1], conic[:, None, :, 2]
        g_conic = torch.stack([(g_q * dx * dx).sum(1) * 0.5, (g_q * dx * dy).sum(1),
                               (g_q * dy * dy).sum(1) * 0.5], dim=-1)
        g_xy = torch.stack([(g_q * (a * dx + b * dy)).sum(1), (g_q * (c * dy + b * dx)).sum(1)], dim=-1)
        return g_xy, g_conic, g_op, g_feat, None, None


def composite(xy, conic, op, feat, px, py) -> tuple[Tensor, Tensor]:
    """Composite depth-sorted Gaussians at pixels; see :class:`_Composite`."""
    return _Composite.apply(xy, conic, op, feat, px, py)


def rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg,
                    near_plane=0.01, far_plane=1e10, eps2d=0.3, tile_size=8,
                    max_elements: int = 1 << 24) -> RenderOutput:
    """Differentiable dense rasteriser in PyTorch; see the module docstring for the rules.

    ``colors`` (N, D) or (C, N, D); ``bg`` (C, D). ``max_elements`` bounds the size of the
    per-chunk (pixels x Gaussians) tensors.
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
        slot = torch.arange(bucket.numel(), device=dev) - start[bucket]

    # Padded per-Gaussian attributes; index C*N is a transparent dummy.
    flat = lambda t: t.reshape(C * N, *t.shape[2:])  # noqa: E731
    pad = lambda t: torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # noqa: E731
    op_cn = torch.where(valid, opacities[None].expand(C, N), torch.zeros((), device=dev, dtype=dt))
    g_xy, g_conic, g_op = pad(flat(means2d)), pad(flat(conics)), pad(flat(op_cn))
    g_feat = pad(flat(torch.cat([colors, depths[..., None]], dim=-1)))

    # Pixel centres of each tile (T, P, 2).
    ty_, tx_ = torch.meshgrid(torch.arange(TH, device=dev), torch.arange(TW, device=dev), indexing="ij")
    py_, px_ = torch.meshgrid(torch.arange(ts, device=dev), torch.arange(ts, device=dev), indexing="ij")
    pix_x = (tx_.reshape(T, 1) * ts + px_.reshape(1, P)).to(dt) + 0.5
    pix_y = (ty_.reshape(T, 1) * ts + py_.reshape(1, P)).to(dt) + 0.5

    out = torch.zeros(C * T, P, D + 1, device=dev, dtype=dt)
    trans = torch.ones(C * T, P, device=dev, dtype=dt)
    # Process buckets in chunks of similar length, so padding stays small.
    by_len = torch.argsort(counts, descending=True)
    counts_sorted = counts[by_len].tolist()
    nonempty = sum(1 for k in counts_sorted if k > 0)
    results_idx, results_val, results_T = [], [], []
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
        # Gather this chunk's Gaussians into (nb, kmax) index slots.
        local = torch.full((C * T,), -1, dtype=torch.long, device=dev)
        local[bsel] = torch.arange(nb, device=dev)
        sel = local[bucket] >= 0
        idx = torch.full((nb, kmax), C * N, dtype=torch.long, device=dev)
        idx[local[bucket[sel]], slot[sel]] = gid[sel]
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
