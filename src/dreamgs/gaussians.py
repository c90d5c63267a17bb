"""3D Gaussians: parameters, initialisation, optimiser, densification, and the 3DGS ``.ply`` format.

Parameters are stored unconstrained, the way renderers and the ``.ply`` format expect them:

- ``means`` (N, 3)
- ``scales`` (N, 3): log of the standard deviations
- ``quats`` (N, 4): rotation quaternions (w, x, y, z), not necessarily normalised
- ``opacities`` (N,): logits
- ``sh0`` (N, 1, 3) and ``shN`` (N, K-1, 3): spherical-harmonic colour coefficients,
  K = (degree + 1)^2; colour = SH(view direction) + 0.5, clamped at 0.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_output
from .errors import InputError

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")

# Real spherical-harmonic basis constants (degrees 0-3), as used by 3DGS renderers.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour. ``coeffs`` (..., K, 3), ``dirs`` (..., 3) unit vectors -> (..., 3)."""
    out = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return out
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * coeffs[..., 4, :] + SH_C2[1] * yz * coeffs[..., 5, :]
           + SH_C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
           + SH_C2[3] * xz * coeffs[..., 7, :] + SH_C2[4] * (xx - yy) * coeffs[..., 8, :])
    if degree < 3:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
            + SH_C3[1] * xy * z * coeffs[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
            + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :])


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here -> (N, 3, 3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def nearest_neighbor_scales(points: Tensor, k: int = 3, chunk: int = 4096, method: str = "auto") -> Tensor:
    """Root-mean-square distance of each point to its ``k`` nearest neighbours (N,).

    ``method``: ``kdtree`` (scipy's, O(N log N), on the CPU), ``brute`` (chunked ``torch.cdist``
    on the points' device, O(N^2) work, O(chunk * N) memory) or ``auto``: the k-d tree for CPU
    tensors, brute force on a GPU.
    """
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    if method == "auto":
        method = "kdtree" if points.device.type == "cpu" else "brute"
    if method == "kdtree":
        from scipy.spatial import cKDTree

        p = points.detach().cpu().double().numpy()
        dist, _ = cKDTree(p).query(p, k=k + 1)  # the nearest is the point itself, at distance 0
        rms = np.sqrt(np.square(dist[:, 1:]).mean(axis=1))
        return torch.from_numpy(rms).to(points.device, points.dtype).clamp_min(1e-7)
    if method != "brute":
        raise ValueError(f"nearest_neighbor_scales: unknown method '{method}'")
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i:i + chunk], points)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")
        nn = d.topk(k, dim=-1, largest=False).values
        out.append(nn.square().mean(-1).sqrt())
    return torch.cat(out).clamp_min(1e-7)


class GaussianModel:
    """A set of 3D Gaussians with trainable parameters (plain leaf tensors in ``params``)."""

    def __init__(self, params: dict[str, Tensor], sh_degree: int | None = None):
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise ValueError(f"missing Gaussian parameters: {missing}")
        self.params = {k: params[k] for k in PARAM_NAMES}
        k = 1 + self.params["shN"].shape[1]
        degree = int(round(math.sqrt(k))) - 1
        if num_sh_bases(degree) != k:
            raise ValueError(f"{k} SH coefficients per channel is not (degree+1)^2")
        self.sh_degree = degree if sh_degree is None else sh_degree  # active degree <= stored

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_points(cls, points: Tensor, colors: Tensor | None = None, opacity: float = 0.1,
                    sh_degree: int = 0, scales: Tensor | None = None) -> "GaussianModel":
        points = points.float()
        n, dev = points.shape[0], points.device
        if colors is None:
            colors = torch.full((n, 3), 0.5, device=dev)
        if scales is None:
            scales = nearest_neighbor_scales(points)[:, None].expand(n, 3)
        quats = torch.zeros(n, 4, device=dev)
        quats[:, 0] = 1.0
        params = {
            "means": points.clone(),
            "scales": torch.log(scales.float()).clone(),
            "quats": quats,
            "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), device=dev),
            "sh0": rgb_to_sh(colors.float())[:, None, :].clone(),
            "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, device=dev),
        }
        return cls(params)

    @classmethod
    def random_ball(cls, num_points: int, radius: float = 0.5, opacity: float = 0.1, color: float = 0.5,
                    sh_degree: int = 0, device="cpu", generator: torch.Generator | None = None
                    ) -> "GaussianModel":
        """Points uniform in a ball (DreamGaussian's initialisation)."""
        g = generator
        direction = torch.randn(num_points, 3, generator=g)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = radius * torch.rand(num_points, 1, generator=g).pow(1.0 / 3.0)
        points = (direction * r).to(device)
        colors = torch.full((num_points, 3), color, device=device)
        return cls.from_points(points, colors, opacity=opacity, sh_degree=sh_degree)

    # -- derived quantities ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        """Standard deviations (N, 3)."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> Tensor:
        """Unit quaternions (N, 4)."""
        q = self.params["quats"]
        return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh(self) -> Tensor:
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    def covariances(self) -> Tensor:
        """World-space covariance matrices (N, 3, 3)."""
        R = quat_to_rotmat(self.params["quats"])
        S2 = self.scales.square()
        return (R * S2[:, None, :]) @ R.transpose(-1, -2)

    def colors(self, campos: Tensor | None = None) -> Tensor:
        """RGB per Gaussian: (N, 3) for degree 0, else (C, N, 3) for camera centres (C, 3)."""
        if self.sh_degree == 0 or campos is None:
            return (SH_C0 * self.params["sh0"][:, 0, :] + 0.5).clamp_min(0.0)
        k = num_sh_bases(self.sh_degree)
        dirs = self.means[None] - campos[:, None, :]
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (eval_sh(self.sh_degree, self.sh[None, :, :k], dirs) + 0.5).clamp_min(0.0)

    # -- utilities ------------------------------------------------------------------------------

    def requires_grad_(self, flag: bool = True) -> "GaussianModel":
        for p in self.params.values():
            p.requires_grad_(flag)
        return self

    def detach(self) -> "GaussianModel":
        return GaussianModel({k: v.detach().clone() for k, v in self.params.items()}, self.sh_degree)

    def to(self, device) -> "GaussianModel":
        return GaussianModel({k: v.detach().to(device) for k, v in self.params.items()}, self.sh_degree)

    def subset(self, mask: Tensor) -> "GaussianModel":
        return GaussianModel({k: v.detach()[mask].clone() for k, v in self.params.items()}, self.sh_degree)

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.means.detach().amin(0), self.means.detach().amax(0)

    # -- the representation seam (representations/base.py); densification lives in train.py --------

    def render(self, cams, background=None, shading: str = "albedo", backend: str = "auto"):
        """:func:`dreamgs.render.render` (the Gaussians carry their colour; ``shading`` is albedo only)."""
        from .render import render

        if shading != "albedo":
            raise ValueError("Gaussians are rendered unlit (shading='albedo')")
        return render(self, cams, background=background, backend=backend)

    def render_rgba(self, cams, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """Premultiplied colour and alpha over black, no gradient."""
        with torch.no_grad():
            out = self.render(cams, torch.zeros(3, device=self.device), backend=backend)
        return out.rgb, out.alpha

    def param_groups(self, cfg, spatial_scale: float = 1.0) -> list[dict]:
        """One named Adam group per parameter, learning rates from a GaussianConfig."""
        lrs = param_lrs(cfg, spatial_scale)
        return [{"params": [self.params[k]], "lr": lrs[k], "name": k} for k in PARAM_NAMES]

    def to_mesh(self, cfg, threshold: float | None = None, timings: dict | None = None):
        """:func:`dreamgs.mesh.extract.extract_mesh` (at ``threshold``, default ``cfg.density_threshold``)."""
        import dataclasses

        from .mesh.extract import extract_mesh

        if threshold is not None:
            cfg = dataclasses.replace(cfg, density_threshold=threshold)
        return extract_mesh(self, cfg, timings=timings)


# ------------------------------------------------------------------------------------------------
# Optimiser and learning-rate schedule


def log_linear(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Exponential (log-linear) interpolation from lr_init to lr_final over max_steps."""
    if max_steps <= 0:
        return lr_final
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


SHN_LR_DIVISOR = 20.0  # the higher-order SH coefficients learn at lr_color / 20 (3DGS, DreamGaussian)


def param_lrs(cfg, spatial_scale: float = 1.0) -> dict[str, float]:
    """Initial learning rate of each Gaussian parameter from a GaussianConfig."""
    return {
        "means": cfg.lr_position_init * spatial_scale,
        "scales": cfg.lr_scale,
        "quats": cfg.lr_rotation,
        "opacities": cfg.lr_opacity,
        "sh0": cfg.lr_color,
        "shN": cfg.lr_color / SHN_LR_DIVISOR,
    }


def make_optimizer(model: GaussianModel, cfg, spatial_scale: float = 1.0, fused: bool | None = None
                   ) -> torch.optim.Adam:
    """Adam with one parameter group per parameter, learning rates from a GaussianConfig."""
    model.requires_grad_(True)
    groups = model.param_groups(cfg, spatial_scale)
    kwargs = {}
    if fused is None:
        fused = model.device.type == "cuda" and getattr(cfg, "fused_adam", True)
    if fused:
        kwargs["fused"] = True
    return torch.optim.Adam(groups, lr=0.0, eps=cfg.adam_eps, **kwargs)


def update_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg, spatial_scale: float = 1.0
                         ) -> float:
    """Apply the position schedule for ``step``; returns the position learning rate. With
    ``cfg.lr_color_final`` > 0 the colour rate also decays log-linearly, from ``cfg.lr_color`` to it
    over ``cfg.lr_position_steps`` (the higher-order SH coefficients at 1/``SHN_LR_DIVISOR`` of it);
    otherwise (DreamGaussian) the colour rate is left alone."""
    lr = log_linear(step, cfg.lr_position_init * spatial_scale, cfg.lr_position_final * spatial_scale,
                    cfg.lr_position_steps)
    final = cfg.lr_color_final
    lr_color = log_linear(step, cfg.lr_color, final, cfg.lr_position_steps) if final > 0 else None
    for group in optimizer.param_groups:
        if group["name"] == "means":
            group["lr"] = lr
        elif lr_color is not None and group["name"] in ("sh0", "shN"):
            group["lr"] = lr_color if group["name"] == "sh0" else lr_color / SHN_LR_DIVISOR
    return lr


def _replace_params(model: GaussianModel, optimizer: torch.optim.Optimizer | None, param_fn,
                    state_fn=None) -> None:
    """Replace each parameter by ``param_fn(name, tensor)`` and Adam's moments by ``state_fn``.

    ``state_fn`` defaults to ``param_fn`` (right for row selections, which act alike on both).
    """
    state_fn = state_fn or param_fn
    for name in PARAM_NAMES:
        old = model.params[name]
        new = param_fn(name, old.detach()).requires_grad_(True)
        if optimizer is not None:
            for group in optimizer.param_groups:
                if group["params"][0] is old:
                    state = optimizer.state.pop(old, None)
                    if state:
                        for key in ("exp_avg", "exp_avg_sq"):
                            if key in state:
                                state[key] = state_fn(name, state[key])
                        optimizer.state[new] = state
                    group["params"][0] = new
        model.params[name] = new


# ------------------------------------------------------------------------------------------------
# Densification


@dataclass
class DensifyStats:
    """View-space gradient statistics, accumulated over every view rendered since the last reset."""

    grad_sum: Tensor  # (N,)
    count: Tensor  # (N,)

    @classmethod
    def zeros(cls, n: int, device) -> "DensifyStats":
        return cls(torch.zeros(n, device=device), torch.zeros(n, device=device))

    def add(self, means2d_grad: Tensor, visible: Tensor, width: int, height: int) -> None:
        """Accumulate one step. ``means2d_grad`` (C, N, 2) in pixels, ``visible`` (C, N) bool.

        Pixel gradients are converted to NDC units (times W/2, H/2) and multiplied by C, since the
        loss averages over the C views of the step; every view counts, not only the last one.
        """
        c = means2d_grad.shape[0]
        g = means2d_grad.detach().clone()
        g[..., 0] *= width / 2.0 * c
        g[..., 1] *= height / 2.0 * c
        norms = g.norm(dim=-1) * visible
        self.grad_sum += norms.sum(0)
        self.count += visible.sum(0).to(self.count.dtype)

    def mean(self) -> Tensor:
        return torch.where(self.count > 0, self.grad_sum / self.count.clamp_min(1), torch.zeros_like(self.grad_sum))


def densify_and_prune(model: GaussianModel, optimizer: torch.optim.Optimizer | None, stats: DensifyStats,
                      cfg, generator: torch.Generator | None = None) -> dict[str, int]:
    """Clone small, split large high-gradient Gaussians, then prune transparent or huge ones.

    Returns the counts of cloned, split and pruned Gaussians. ``stats`` must be reset afterwards.
    """
    with torch.no_grad():
        n0 = len(model)
        grads = stats.mean()
        max_scale = model.scales.amax(-1)
        want = grads >= cfg.grad_threshold
        room = max(cfg.max_gaussians - n0, 0)
        clone = want & (max_scale <= cfg.split_scale)
        split = want & (max_scale > cfg.split_scale)
        # Respect the Gaussian budget: keep the highest-gradient candidates.
        if int(clone.sum()) + int(split.sum()) > room:
            order = torch.argsort(torch.where(want, grads, torch.full_like(grads, -1.0)), descending=True)
            keep = torch.zeros_like(want)
            keep[order[:room]] = True
            clone, split = clone & keep, split & keep
        n_clone, n_split = int(clone.sum()), int(split.sum())

        # Split: two samples from each parent's Gaussian, scales shrunk by 1.6.
        idx_split = split.nonzero(as_tuple=True)[0]
        if n_split:
            std = model.scales[idx_split].repeat(2, 1)
            noise = torch.randn(std.shape, generator=generator, device="cpu").to(std.device) * std
            R = quat_to_rotmat(model.params["quats"][idx_split]).repeat(2, 1, 1)
            new_means = (R @ noise[..., None])[..., 0] + model.means[idx_split].repeat(2, 1)
        idx_clone = clone.nonzero(as_tuple=True)[0]

        n_new = n_clone + 2 * n_split

        def grow(name: str, t: Tensor) -> Tensor:
            parts = [t, t[idx_clone]]
            if n_split:
                if name == "means":
                    parts.append(new_means)
                elif name == "scales":
                    parts.append(t[idx_split].repeat(2, 1) - math.log(1.6))
                else:
                    parts.append(t[idx_split].repeat(2, *([1] * (t.dim() - 1))))
            return torch.cat(parts)

        def grow_state(name: str, t: Tensor) -> Tensor:  # new Gaussians start with zero moments
            return torch.cat([t, t.new_zeros((n_new, *t.shape[1:]))])

        if n_new:
            _replace_params(model, optimizer, grow, grow_state)
            keep = torch.ones(len(model), dtype=torch.bool, device=model.device)
            keep[idx_split] = False  # split parents are replaced by their two children
            _replace_params(model, optimizer, lambda name, t: t[keep])

        n_prune = prune_gaussians(model, optimizer, cfg)
    return {"cloned": n_clone, "split": n_split, "pruned": n_prune, "total": len(model)}


def prune_gaussians(model: GaussianModel, optimizer: torch.optim.Optimizer | None, cfg) -> int:
    """Remove transparent (opacity < ``cfg.min_opacity``) and huge (largest scale >
    ``cfg.prune_scale``) Gaussians, never all of them; returns how many were removed."""
    with torch.no_grad():
        prune = (model.opacities < cfg.min_opacity) | (model.scales.amax(-1) > cfg.prune_scale)
        if prune.all():  # never prune to nothing; keep the most opaque Gaussian
            prune[model.opacities.argmax()] = False
        n_prune = int(prune.sum())
        if n_prune:
            _replace_params(model, optimizer, lambda name, t: t[~prune])
    return n_prune


def ellipsoid_radius(scales: Tensor, quats: Tensor, directions: Tensor, sigmas: float = 1.0) -> Tensor:
    """Distance from a Gaussian's centre to the surface of its ``sigmas``-sigma ellipsoid
    {x : x^T Sigma^-1 x = sigmas^2} along unit ``directions``: sigmas / sqrt(u^T Sigma^-1 u),
    with Sigma = R diag(scales^2) R^T; ``scales`` (n, 3) standard deviations, ``quats`` (n, 4),
    ``directions`` (n, 3) -> (n,)."""
    local = (quat_to_rotmat(quats).transpose(-1, -2) @ directions[..., None])[..., 0]
    return sigmas / (local / scales).square().sum(-1).sqrt()


def compactness_gaps(model: GaussianModel, k: int = 3, sigmas: float = 1.0) -> dict[str, Tensor]:
    """GSGen's compactness test. For each Gaussian i and each of its ``k`` nearest neighbours j
    (centres, scipy's k-d tree), each unordered pair once: with d the distance between the centres,
    u the unit vector from i to j and r_i, r_j the radii of their ``sigmas``-sigma ellipsoids along
    the line between them (:func:`ellipsoid_radius`), the two do not touch along that line when
    gap = d - r_i - r_j > 0. Returns, for the pairs with a gap: ``i``, ``j``, ``gap``, ``u``, ``r_i``
    (float64)."""
    from scipy.spatial import cKDTree

    n = len(model)
    empty = {"i": torch.zeros(0, dtype=torch.long), "j": torch.zeros(0, dtype=torch.long)}
    if n < 2:
        return {**empty, **{key: torch.zeros(0, dtype=torch.float64) for key in ("gap", "r_i")},
                "u": torch.zeros(0, 3, dtype=torch.float64)}
    k = min(k, n - 1)
    m = model.means.detach().cpu().double()
    _, nn = cKDTree(m.numpy()).query(m.numpy(), k=k + 1)
    i = torch.arange(n).repeat_interleave(k)
    j = torch.from_numpy(nn[:, 1:].reshape(-1)).long()
    pairs = torch.unique(torch.stack([torch.minimum(i, j), torch.maximum(i, j)], 1), dim=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # coincident centres can list a point as its own neighbour
    i, j = pairs[:, 0], pairs[:, 1]
    delta = m[j] - m[i]
    d = delta.norm(dim=-1)
    ok = d > 0
    i, j, delta, d = i[ok], j[ok], delta[ok], d[ok]
    u = delta / d[:, None]
    scales = model.scales.detach().cpu().double()
    quats = model.params["quats"].detach().cpu().double()
    r_i = ellipsoid_radius(scales[i], quats[i], u, sigmas)
    r_j = ellipsoid_radius(scales[j], quats[j], u, sigmas)
    gap = d - r_i - r_j
    keep = gap > 0
    return {"i": i[keep], "j": j[keep], "gap": gap[keep], "u": u[keep], "r_i": r_i[keep]}


def densify_compactness(model: GaussianModel, optimizer: torch.optim.Optimizer | None, cfg) -> dict[str, int]:
    """Fill each gap found by :func:`compactness_gaps` (``cfg.compactness_k`` neighbours,
    ``cfg.compactness_sigmas``) with one new Gaussian, as GSGen does: centred in the middle of the
    gap, isotropic with standard deviation gap / 6 (so its 3-sigma ball spans the gap), with the
    rotation, opacity and colour of Gaussian i. The largest gaps first within
    ``cfg.max_gaussians``; new Gaussians start with zero Adam moments."""
    with torch.no_grad():
        g = compactness_gaps(model, cfg.compactness_k, cfg.compactness_sigmas)
        room = max(cfg.max_gaussians - len(model), 0)
        order = torch.argsort(g["gap"], descending=True)[:room]
        i, gap, u, r_i = g["i"][order], g["gap"][order], g["u"][order], g["r_i"][order]
        n_new = len(i)
        if n_new:
            dev = model.device
            m = model.means.detach().cpu().double()
            new_means = (m[i] + u * (r_i + gap / 2)[:, None]).to(dev, model.means.dtype)
            new_scales = torch.log(gap / 6.0)[:, None].expand(-1, 3).to(dev, model.params["scales"].dtype)
            idx = i.to(dev)

            def grow(name: str, t: Tensor) -> Tensor:
                if name == "means":
                    return torch.cat([t, new_means])
                if name == "scales":
                    return torch.cat([t, new_scales])
                return torch.cat([t, t[idx]])

            def grow_state(name: str, t: Tensor) -> Tensor:
                return torch.cat([t, t.new_zeros((n_new, *t.shape[1:]))])

            _replace_params(model, optimizer, grow, grow_state)
    return {"filled": n_new, "total": len(model)}


def reset_opacity(model: GaussianModel, optimizer: torch.optim.Optimizer | None, max_opacity: float = 0.01
                  ) -> None:
    """Clamp opacities to ``max_opacity`` (3DGS's periodic reset) and clear their Adam moments."""
    logit = math.log(max_opacity / (1 - max_opacity))
    _replace_params(model, optimizer,
                    lambda name, t: t.clamp_max(logit) if name == "opacities" else t,
                    lambda name, t: torch.zeros_like(t) if name == "opacities" else t)


# ------------------------------------------------------------------------------------------------
# The 3DGS .ply format (see docs/ply-format.md for the viewer survey behind these choices)

PLY_PAD_SH_DEGREE = 3  # save_ply pads SH to this degree by default: the layout every viewer reads
PLY_MAX_HEADER_BYTES = 1 << 20

# PLY scalar type names (both spellings of the spec) -> numpy type codes without byte order.
_PLY_SCALAR_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                 "rot_0", "rot_1", "rot_2", "rot_3")


def ply_property_names(n_rest: int) -> list[str]:
    """The reference 3DGS property order for ``n_rest`` f_rest coefficients (3 * (K - 1))."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _ply_header(n: int, names: list[str]) -> bytes:
    # Exactly the reference layout: LF line endings, the vertex count on the third line (the SIBR
    # viewer reads it from there), no comment or obj_info lines, a single 'vertex' element.
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def save_ply(model: GaussianModel, path: str | os.PathLike, pad_sh_degree: int | None = PLY_PAD_SH_DEGREE
             ) -> Path:
    """Write ``model`` as a 3DGS ``.ply`` (binary little-endian float32), atomically.

    Properties, in this order: ``x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3``.
    Normals are zeros; f_rest is channel-major (all R coefficients of bands 1.., then G, then B);
    opacity is a logit, scales are logs, rotations are raw (w, x, y, z) quaternions.

    ``pad_sh_degree`` (default 3) appends zero coefficients up to that SH degree, so SH-degree-0
    models get the 45 f_rest properties (248 bytes per Gaussian) that some viewers require;
    ``None`` writes the stored degree as it is. Padding never drops stored coefficients. The
    output is deterministic: the same model gives the same bytes.
    """
    path = Path(path)
    if pad_sh_degree is not None and not 0 <= pad_sh_degree <= 3:
        raise ValueError(f"pad_sh_degree must be 0..3 or None, got {pad_sh_degree}")
    p = {k: v.detach().to("cpu", torch.float32) for k, v in model.params.items()}
    n = p["means"].shape[0]
    if n == 0:
        raise ValueError(f"{path}: refusing to write a .ply with no Gaussians")
    for name, t in p.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: model has non-finite values in '{name}'; not writing an unreadable .ply")
    shN = p["shN"]
    if pad_sh_degree is not None and num_sh_bases(pad_sh_degree) - 1 > shN.shape[1]:
        shN = torch.cat([shN, torch.zeros(n, num_sh_bases(pad_sh_degree) - 1 - shN.shape[1], 3)], dim=1)
    f_rest = shN.transpose(1, 2).reshape(n, -1)
    data = torch.cat([p["means"], torch.zeros(n, 3), p["sh0"].reshape(n, 3), f_rest, p["opacities"][:, None],
                      p["scales"], p["quats"]], dim=1).numpy()
    header = _ply_header(n, ply_property_names(f_rest.shape[1]))
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
    return path


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[tuple[str, str | None]]  # (name, numpy type code) or (name, None) for list properties


def _parse_ply_header(path: Path, head: bytes) -> tuple[int, str, list[_PlyElement]]:
    """Parse a PLY header. Returns (header length in bytes, byte order '<' or '>', elements)."""
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise InputError(f"{path}: not a PLY file (it does not start with the 'ply' magic line)")
    match = re.search(rb"\nend_header\r?\n", head)
    if match is None:
        raise InputError(f"{path}: PLY header has no 'end_header' line in its first {len(head)} bytes "
                         "(truncated file, or not a PLY file)")
    try:
        text = head[:match.start()].decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path}: PLY header is not ASCII text") from None
    fmt, elements = None, []
    for lineno, raw in enumerate(text.split("\n")[1:], start=2):
        words = raw.strip().split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "format":
            if elements:
                raise InputError(f"{path}: the PLY 'format' line must come before the elements (line {lineno})")
            if fmt is not None or len(words) != 3:
                raise InputError(f"{path}: bad PLY header line {lineno}: {raw.strip()!r}")
            fmt = words[1]
            if fmt == "ascii":
                raise InputError(f"{path}: ASCII PLY is not supported; 3DGS files are binary "
                                 "(re-export it as binary_little_endian)")
            if fmt not in ("binary_little_endian", "binary_big_endian") or words[2] != "1.0":
                raise InputError(f"{path}: unknown PLY format {' '.join(words[1:])!r}")
        elif key == "element":
            if fmt is None:
                raise InputError(f"{path}: the PLY 'format' line must come before the elements (line {lineno})")
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(f"{path}: bad PLY element line {lineno}: {raw.strip()!r}")
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise InputError(f"{path}: PLY property before any element (line {lineno})")
            if len(words) == 5 and words[1] == "list":
                if words[2] not in _PLY_SCALAR_TYPES or words[3] not in _PLY_SCALAR_TYPES:
                    raise InputError(f"{path}: unknown PLY list types on line {lineno}: {raw.strip()!r}")
                elements[-1].props.append((words[4], None))
            elif len(words) == 3 and words[1] in _PLY_SCALAR_TYPES:
                elements[-1].props.append((words[2], _PLY_SCALAR_TYPES[words[1]]))
            else:
                raise InputError(f"{path}: bad PLY property line {lineno}: {raw.strip()!r}")
        else:
            raise InputError(f"{path}: unknown PLY header keyword {key!r} on line {lineno}")
    if fmt is None:
        raise InputError(f"{path}: PLY header has no 'format' line")
    return match.end(), "<" if fmt == "binary_little_endian" else ">", elements


def load_ply(path: str | os.PathLike, device="cpu") -> GaussianModel:
    """Read a 3DGS ``.ply`` (binary, either byte order, any numeric property types).

    Raises :class:`InputError` naming the file and the problem for anything that is not a valid
    Gaussian splat file: missing/empty/truncated files, meshes and point clouds, bad headers,
    non-finite values, zero quaternions.

    The returned model stores every coefficient in the file (so saving it again reproduces the
    file byte for byte), and its *active* ``sh_degree`` is the highest band with any nonzero
    coefficient: a degree-0 model saved with zero padding to degree 3 loads with 45 f_rest
    values per Gaussian but ``sh_degree == 0``, and renders exactly like the original.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .ply file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size == 0:
                raise InputError(f"{path}: empty file (0 bytes), not a .ply")
            head = f.read(min(size, PLY_MAX_HEADER_BYTES))
            header_len, order, elements = _parse_ply_header(path, head)
            names = [el.name for el in elements]
            if "vertex" not in names:
                raise InputError(f"{path}: no 'vertex' element (elements: {', '.join(names) or 'none'}); "
                                 "not a 3D Gaussian .ply")
            vi = names.index("vertex")
            offset = header_len
            for el in elements[:vi]:  # fixed-size elements before 'vertex' can be skipped
                if any(t is None for _, t in el.props):
                    raise InputError(f"{path}: element '{el.name}' before 'vertex' has list properties; "
                                     "not a 3D Gaussian .ply")
                offset += el.count * sum(int(t[1]) for _, t in el.props)
            vertex = elements[vi]
            _check_vertex_properties(path, vertex)
            if vertex.count == 0:
                raise InputError(f"{path}: the file holds no Gaussians (vertex count 0)")
            dtype = np.dtype([(name, order + t) for name, t in vertex.props])
            nbytes = vertex.count * dtype.itemsize
            if offset + nbytes > size:
                raise InputError(f"{path}: truncated: the header declares {vertex.count} Gaussians "
                                 f"({nbytes} bytes) but only {max(size - offset, 0)} bytes of data follow")
            f.seek(offset)
            buf = f.read(nbytes)
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({e.strerror or e})") from None
    if len(buf) != nbytes:
        raise InputError(f"{path}: truncated: expected {nbytes} bytes of vertex data, read {len(buf)}")
    data = np.frombuffer(buf, dtype=dtype)
    return _model_from_ply_data(path, data, device)


def _check_vertex_properties(path: Path, vertex: _PlyElement) -> None:
    props = [name for name, _ in vertex.props]
    lists = [name for name, t in vertex.props if t is None]
    if lists:
        raise InputError(f"{path}: 'vertex' has list properties ({', '.join(lists)}); not a 3D Gaussian .ply")
    dup = sorted({p for p in props if props.count(p) > 1})
    if dup:
        raise InputError(f"{path}: duplicate vertex properties: {', '.join(dup)}")
    if "packed_position" in props:
        raise InputError(f"{path}: this is a compressed splat .ply (packed_* properties), which is not "
                         "supported; decompress it to a standard 3DGS .ply first")
    missing = [r for r in _PLY_REQUIRED if r not in props]
    if missing:
        raise InputError(f"{path}: missing 3DGS vertex properties: {', '.join(missing)} "
                         "(is this a mesh or point cloud .ply rather than Gaussian splats?)")
    rest = [p for p in props if p.startswith("f_rest_")]
    idx = sorted(int(r[7:]) for r in rest if r[7:].isdigit() and str(int(r[7:])) == r[7:])
    if idx != list(range(len(rest))):
        raise InputError(f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1}")
    if len(rest) not in (0, 9, 24, 45):
        raise InputError(f"{path}: {len(rest)} f_rest_* properties match no SH degree 0-3 "
                         "(expected 0, 9, 24 or 45)")


def _model_from_ply_data(path: Path, data: np.ndarray, device) -> GaussianModel:
    n = data.shape[0]
    n_rest = sum(1 for name in data.dtype.names if name.startswith("f_rest_"))

    def col(names: list[str]) -> Tensor:
        if not names:
            return torch.zeros(n, 0)
        return torch.from_numpy(np.stack([data[name].astype(np.float32) for name in names], axis=1))

    k1 = n_rest // 3
    params = {
        "means": col(["x", "y", "z"]),
        "sh0": col(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": col([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k1).transpose(1, 2).contiguous(),
        "opacities": col(["opacity"]).reshape(n),
        "scales": col(["scale_0", "scale_1", "scale_2"]),
        "quats": col(["rot_0", "rot_1", "rot_2", "rot_3"]),
    }
    for name, t in params.items():
        bad = ~torch.isfinite(t.reshape(n, -1)).all(dim=1)
        if bad.any():
            raise InputError(f"{path}: non-finite values in '{name}' of {int(bad.sum())} Gaussians "
                             f"(first: #{int(bad.nonzero()[0, 0])})")
    zero_q = (params["quats"] == 0).all(dim=1)
    if zero_q.any():
        raise InputError(f"{path}: {int(zero_q.sum())} Gaussians have a zero rotation quaternion "
                         f"(first: #{int(zero_q.nonzero()[0, 0])})")
    active = 0
    for d in range(int(round(math.sqrt(k1 + 1))) - 1, 0, -1):
        if (params["shN"][:, d * d - 1:(d + 1) ** 2 - 1] != 0).any():
            active = d
            break
    return GaussianModel({k: t.to(device) for k, t in params.items()}, sh_degree=active)
