"""A 3D point prior: an auxiliary SDS on the Gaussian centres (GSGen's Point-E guidance).

GSGen adds to the 2D SDS of its geometry stage a score-distillation loss from Point-E, a diffusion
model of point clouds: the Gaussian centres are farthest-point sampled to Point-E's 1024 points,
noised at a random timestep and denoised, and the SDS gradient w(t) (eps_hat - eps) with
w(t) = 1 - abar_t moves the centres (weight 0.01 beside the 2D SDS's 0.1, for the first 2000 of
15000 steps, 4 draws per step, t uniform in [0.02, 0.98) of T).

No Point-E weights can be had here, so the denoiser is exact, as the image oracle's is: the data
distribution is the asset's surface, points ``y_j`` sampled on the part of its surface seen from
outside, and each noisy point is denoised on its own (the per-point analogue of the image
oracle's posterior mean over reference renders). With ``x_t = a_t x_0 + s_t eps``,

    x0_hat(x_t) = sum_j softmax_j(-|x_t - a_t y_j|^2 / (2 s_t^2)) y_j,
    eps_hat = (x_t - a_t x0_hat) / s_t,

on coordinates scaled by ``points_prior.coord_scale`` (Point-E's channel scale 2), with Point-E's
cosine noise schedule over T = 1024 steps. The oracle is the conditional model alone: it needs no
classifier-free guidance (GSGen's 100 pushes a learned, text-conditioned Point-E).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

POINT_E_TIMESTEPS = 1024


def cosine_alphas_cumprod(T: int = POINT_E_TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule (improved DDPM, as Point-E uses): abar_t = f(t) / f(0),
    f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), betas clipped at ``max_beta``; float64 (T,)."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def farthest_point_sample(points: Tensor, k: int, starts: Tensor) -> Tensor:
    """Farthest-point sampling: for each start index in ``starts`` (B,), ``k`` indices into
    ``points`` (N, 3), each the point farthest from those already chosen: (B, min(k, N)).
    Runs in numpy on the CPU (the loop is k steps of small array operations)."""
    p = points.detach().cpu().double().numpy()
    n, k, b = p.shape[0], min(k, p.shape[0]), len(starts)
    idx = np.empty((b, k), dtype=np.int64)
    idx[:, 0] = starts.cpu().numpy()
    dist = np.full((b, n), np.inf)
    px, py, pz = p[:, 0], p[:, 1], p[:, 2]
    for i in range(1, k):
        last = p[idx[:, i - 1]]  # (B, 3)
        d = np.square(px - last[:, :1])
        d += np.square(py - last[:, 1:2])
        d += np.square(pz - last[:, 2:3])
        np.minimum(dist, d, out=dist)
        idx[:, i] = dist.argmax(-1)
    return torch.from_numpy(idx).to(points.device)


class PointOracle:
    """Exact per-point denoiser over surface points; see the module docstring."""

    def __init__(self, surface: Tensor, *, coord_scale: float = 2.0, t_min: float = 0.02, t_max: float = 0.98,
                 batch_size: int = 4, num_points: int = 1024, chunk: int = 2048):
        if surface.ndim != 2 or surface.shape[1] != 3 or len(surface) == 0:
            raise ValueError("PointOracle: surface must be a non-empty (M, 3) array of points")
        self.y = surface.double() * coord_scale  # the data, in the denoiser's coordinates
        self.coord_scale = coord_scale
        self.alphas_cumprod = cosine_alphas_cumprod()
        self.t_min, self.t_max = t_min, t_max
        self.batch_size, self.num_points = batch_size, num_points
        self.chunk = chunk

    def denoise(self, x_t: Tensor, t: int, exact: bool = False) -> Tensor:
        """Posterior mean x0_hat (n, 3) of each noisy point x_t (n, 3) at integer timestep t,
        float64. The squared distances |x_t - a_t y_j|^2 and the softmax are computed in float32
        (about 10x faster on a CPU; a relative error near 1e-6 in the weights), or in float64 with
        ``exact``."""
        abar = float(self.alphas_cumprod[t])
        a, s2 = math.sqrt(abar), 1.0 - abar
        dt = torch.float64 if exact else torch.float32
        y = self.y.to(dt)
        out = []
        for i in range(0, len(x_t), self.chunk):
            d2 = torch.cdist(x_t[i:i + self.chunk].to(dt), a * y).square()
            w = torch.softmax(-d2 / (2 * s2), dim=-1)
            out.append((w @ y).double())
        return torch.cat(out) if out else x_t.new_zeros(0, 3, dtype=torch.float64)

    def timesteps(self, n: int, generator: torch.Generator) -> Tensor:
        lo = int(POINT_E_TIMESTEPS * self.t_min)
        hi = max(int(POINT_E_TIMESTEPS * self.t_max), lo + 1)
        return torch.randint(lo, hi, (n,), generator=generator)

    def sds(self, means: Tensor, generator: torch.Generator) -> Tensor:
        """GSGen's auxiliary SDS loss on the centres ``means`` (N, 3): ``batch_size`` draws, each
        a farthest-point sample of ``num_points`` centres (a random first point; 0: every centre),
        a timestep and noise; loss 0.5 * sum |x - sg(x - grad)|^2 / batch_size with grad = (1 - abar) (eps_hat - eps),
        so d loss / d x = grad / batch_size."""
        bs = self.batch_size
        if self.num_points > 0:
            starts = torch.randint(len(means), (bs,), generator=generator)
            idx = farthest_point_sample(means, self.num_points, starts)
        else:  # every centre in every draw
            idx = torch.arange(len(means), device=means.device).expand(bs, -1)
        ts = self.timesteps(bs, generator)
        noise = torch.randn(idx.shape + (3,), generator=generator, dtype=torch.float64).to(means.device)
        loss = means.new_zeros(())
        for b in range(bs):
            x = means[idx[b]] * self.coord_scale
            t = int(ts[b])
            abar = self.alphas_cumprod[t]
            with torch.no_grad():
                x_t = abar.sqrt() * x.detach().double() + (1 - abar).sqrt() * noise[b]
                eps_hat = (x_t - abar.sqrt() * self.denoise(x_t.cpu(), t).to(x_t.device)) / (1 - abar).sqrt()
                grad = ((1 - abar) * (eps_hat - noise[b])).to(x.dtype)
            loss = loss + 0.5 * (x - (x - grad).detach()).square().sum()
        return loss / bs


def asset_name(cfg, prior=None) -> str:
    """The asset the oracle prior of ``cfg`` models: ``prior.asset`` (a built-in or generated
    name, or a mesh file), else the asset the prompt names (text) or the asset the image oracle
    identified (the ``asset`` attribute of the built prior)."""
    from .. import assets

    name = cfg.prior.asset
    if not name:
        name = getattr(prior, "asset", "") if cfg.mode == "image" else assets.asset_for_prompt(cfg.prompt)
    return name


def asset_mesh(name: str):
    """The true mesh of an oracle asset name or mesh file, in the oracle's frame."""
    from .. import assets

    if name in assets.ASSET_NAMES or assets.generated_seed(name) is not None:
        return assets.make_asset(name)
    from ..mesh.io import load_mesh, normalize_mesh

    if not Path(name).is_file():
        raise InputError(f"points_prior: cannot find the oracle's asset '{name}' for its surface points")
    return normalize_mesh(load_mesh(name))


@functools.lru_cache(maxsize=16)
def surface_points(name: str, n: int, seed: int) -> Tensor:
    """``n`` points on the outer surface of asset ``name`` (cached: resumed and timed runs reuse them)."""
    from ..evaluate import outer_surface_samples

    return outer_surface_samples(asset_mesh(name), n, torch.Generator().manual_seed(seed))


def build_point_prior(cfg, prior=None, seed: int = 0) -> PointOracle:
    """The 3D point prior of ``cfg.points_prior`` for the oracle asset of ``cfg``."""
    pp = cfg.points_prior
    surface = surface_points(asset_name(cfg, prior), pp.surface_samples, seed)
    return PointOracle(surface, coord_scale=pp.coord_scale, t_min=pp.t_min, t_max=pp.t_max,
                       batch_size=pp.batch_size, num_points=pp.num_points)
