"""Distillation rules: how a prior's noise predictions become a gradient on the rendered images.

A prior is a denoiser (:class:`~dreamgs.priors.base.Prior`'s denoiser methods): ``model_input``
(renders -> the differentiable space it denoises in: VAE latents or pixels in [-1, 1]),
``timestep``/``draw_noise`` (its random draws), ``condition`` (cameras -> conditioning),
``eps`` (the classifier-free-guided noise prediction), ``eps_uncond`` (the unconditional one) and
``alphas_cumprod``. ``prior.distill`` picks the rule that uses them:

- ``sds`` (:func:`sds`): ``w(t) (eps_cfg(x_t) - eps)`` with ``w(t) = 1 - abar_t``: score
  distillation as DreamFusion / DreamGaussian. This is what ``Prior.sds`` always computed.
- ``vsd`` (:class:`VSD`, ProlificDreamer): ``w(t) (eps_cfg(x_t) - eps_est(x_t; c))``: the noise
  is replaced by a second denoiser's prediction that models the distribution of the current
  renders given their camera ``c``. For the diffusion models that is a LoRA of the same UNet
  (:class:`~dreamgs.priors.lora.UNetLoRA`, trained every step on the renders); for the oracle
  it is :class:`ParticleDenoiser`, the exact posterior mean over a buffer of recent renders.
- ``ism`` (:class:`ISM`, LucidDreamer): DDIM-invert the render to ``x_s`` with the unconditional
  prediction (``ism_xs_steps`` steps of ``ism_xs_delta_t``), one more inversion step to ``x_t``
  (``t = s + delta_t``), and ``w(t) (eps_cfg(x_t, t) - eps_uncond(x_s, s))`` with
  ``w(t) = sqrt((1 - abar_t) / abar_t)`` times ``ism_grad_scale``.

Every rule returns :func:`~dreamgs.priors.base.sds_loss` of the model-space input and its gradient,
so stage 1 sees one scalar whatever the rule. Rules with state (the LoRA and its optimiser, the
particle buffer) expose ``state_dict``/``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..cameras import Cameras
from ..errors import ConfigError
from .base import Prior, sds_loss

DISTILL_RULES = ("sds", "vsd", "ism")


def _loss(x0: Tensor, grad: Tensor) -> Tensor:
    """``sds_loss`` with the gradient in at least float32 and the input's precision otherwise."""
    return sds_loss(x0, grad.to(torch.promote_types(x0.dtype, torch.float32)))


def add_noise(prior: Prior, x0: Tensor, noise: Tensor, t: int) -> Tensor:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` in the prior's accumulation dtype."""
    abar = prior.alphas_cumprod[t]
    return abar.sqrt() * x0.detach().to(prior.acc_dtype) + (1 - abar).sqrt() * noise.to(prior.acc_dtype)


def _draw(prior: Prior, images: Tensor, cams: Cameras, progress: float, t: int | None, noise: Tensor | None):
    """A rule's inputs: the prior's input ``x0`` for ``images``, the timestep and noise (drawn by the
    prior unless given) and the conditioning."""
    x0 = prior.model_input(images, cams)
    if t is None:
        t = prior.timestep(progress)
    if noise is None:
        noise = prior.draw_noise(x0)
    return x0, t, noise, prior.condition(cams, x0.shape[0])


def sds(prior: Prior, images: Tensor, cams: Cameras, progress: float, *, t: int | None = None,
        noise: Tensor | None = None) -> Tensor:
    """The SDS loss of ``prior`` for ``images`` from ``cams``; ``t`` and ``noise`` override the
    prior's random draws."""
    x0, t, noise, cond = _draw(prior, images, cams, progress, t, noise)
    with torch.no_grad():
        x_t = add_noise(prior, x0, noise, t)
        abar = prior.alphas_cumprod[t]
        # Not nan_to_num'ed: a non-finite prediction must reach the trainer's guard, which skips
        # and counts the step, instead of becoming a silent zero gradient.
        grad = (1 - abar) * (prior.eps(x_t, t, cond) - noise.to(prior.acc_dtype))
    return _loss(x0, grad)


class SDS:
    """SDS as a rule object: the prior's own ``sds`` (a weighted sum for combined priors)."""

    name = "sds"

    def __init__(self, prior: Prior):
        self.prior = prior

    def __call__(self, images: Tensor, cams: Cameras, progress: float) -> Tensor:
        return self.prior.sds(images, cams, progress)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# VSD


def camera_vector(cams: Cameras) -> Tensor:
    """(C, 16) float32: the flattened camera-to-world matrices (the VSD camera condition)."""
    return cams.c2w.reshape(-1, 16).float()


class ParticleDenoiser:
    """The exact posterior-mean denoiser of the recent renders (VSD's LoRA role for the oracle).

    The buffer holds the last ``size`` model-space renders ``y_j`` with their cameras. For a
    noisy ``x_t`` from camera ``c`` the prior weight of render ``j`` is a Gaussian kernel over the
    angle between ``c`` and its camera (``sigma`` radians), and ``x0_hat`` is the posterior mean
    ``sum_j softmax_j(log pi_j - |x_t - a_t y_j|^2 / (2 s_t^2)) y_j``, ``eps = (x_t - a_t x0_hat) / s_t``.
    With one render in the buffer at the requested camera this is exactly the noise that made
    ``x_t`` from it, so VSD reduces to SDS."""

    def __init__(self, prior: Prior, size: int = 8, sigma: float = 0.35):
        if size < 1:
            raise ConfigError(f"prior.vsd_particles must be at least 1, got {size}")
        self.prior, self.size, self.sigma = prior, int(size), float(sigma)
        self.images: Tensor | None = None  # (K, ...) float64
        self.dirs: Tensor | None = None  # (K, 3) unit camera directions

    @staticmethod
    def _dirs(cams: Cameras) -> Tensor:
        c = cams.c2w[:, :3, 3].double()
        return c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def observe(self, x0: Tensor, cams: Cameras) -> None:
        imgs = x0.detach().double()
        dirs = self._dirs(cams).to(imgs.device)
        if self.images is not None:
            imgs, dirs = torch.cat([self.images, imgs]), torch.cat([self.dirs, dirs])
        self.images, self.dirs = imgs[-self.size:], dirs[-self.size:]

    @torch.no_grad()
    def eps(self, x_t: Tensor, t: int, cams: Cameras) -> Tensor:
        abar = self.prior.alphas_cumprod[t].double()
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x = x_t.double().reshape(len(x_t), -1)
        y = self.images.reshape(len(self.images), -1).to(x.device)
        d2 = torch.cdist(x, a * y).pow(2) if len(y) > 1 else ((x[:, None] - a * y[None]) ** 2).sum(-1)
        cos = (self._dirs(cams).to(x.device) @ self.dirs.to(x.device).T).clamp(-1.0, 1.0)
        log_pi = -0.5 * (torch.arccos(cos) / self.sigma) ** 2
        w = torch.softmax(log_pi - d2 / (2 * (1 - abar)), dim=-1)
        x0_hat = w @ y
        return ((x - a * x0_hat) / s).reshape(x_t.shape).to(self.prior.acc_dtype)

    def state_dict(self) -> dict[str, Tensor]:
        if self.images is None:
            return {}
        return {"particles.images": self.images.clone(), "particles.dirs": self.dirs.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "particles.images" in state:
            device = self.prior.alphas_cumprod.device
            self.images = state["particles.images"].double().to(device)
            self.dirs = state["particles.dirs"].double().to(device)
        else:
            self.images = self.dirs = None


class VSD:
    """Variational score distillation: ``w(t) (eps_cfg(x_t) - eps_est(x_t; c))``.

    ``estimator`` has ``observe(x0, cams)`` (LoRA: one training step on the renders; particles:
    add them to the buffer), ``eps(x_t, t, cams)`` and ``state_dict``/``load_state_dict``. It
    sees the current renders before it predicts."""

    name = "vsd"

    def __init__(self, prior: Prior, estimator):
        self.prior, self.estimator = prior, estimator

    def __call__(self, images: Tensor, cams: Cameras, progress: float, *, t: int | None = None,
                 noise: Tensor | None = None) -> Tensor:
        prior = self.prior
        x0, t, noise, cond = _draw(prior, images, cams, progress, t, noise)
        self.estimator.observe(x0.detach(), cams)
        with torch.no_grad():
            x_t = add_noise(prior, x0, noise, t)
            abar = prior.alphas_cumprod[t]
            grad = (1 - abar) * (prior.eps(x_t, t, cond) - self.estimator.eps(x_t, t, cams))
        return _loss(x0, grad)

    def state_dict(self) -> dict[str, Tensor]:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.estimator.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# ISM


def ddim_step(prior: Prior, x: Tensor, eps: Tensor, t_from: int, t_to: int) -> Tensor:
    """Deterministic DDIM move of ``x`` from timestep ``t_from`` to ``t_to`` (either direction)
    with noise prediction ``eps``: ``x0 = (x - s_from eps) / a_from``, ``x' = a_to x0 + s_to eps``."""
    ac = prior.alphas_cumprod
    a_f, a_t = ac[t_from], ac[t_to]
    x0 = (x - (1 - a_f).sqrt() * eps) / a_f.sqrt()
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def ddim_invert(prior: Prior, x: Tensor, cond: Any, t_from: int, t_to: int, stride: int,
                max_steps: int) -> tuple[Tensor, list[int]]:
    """DDIM inversion of ``x`` (at ``t_from``) towards ``t_to`` with the unconditional prediction,
    in steps of ``stride`` (the last one shorter), at most ``max_steps`` steps (LucidDreamer's
    ``add_noise_with_cfg`` with guidance 1). Returns the inverted ``x`` and the timesteps visited."""
    ts = [t_from]
    cur = t_from
    for _ in range(max_steps):
        if cur >= t_to:
            break
        nxt = min(cur + stride, t_to)
        x = ddim_step(prior, x, prior.eps_uncond(x, cur, cond), cur, nxt)
        cur = nxt
        ts.append(cur)
    return x, ts


def ddim_denoise(prior: Prior, x: Tensor, cond: Any, ts: list[int], guided: bool = False) -> Tensor:
    """Deterministic DDIM from ``ts[-1]`` back through ``ts`` (ascending list) to ``ts[0]``."""
    for cur, nxt in zip(ts[::-1][:-1], ts[::-1][1:]):
        eps = prior.eps(x, cur, cond) if guided else prior.eps_uncond(x, cur, cond)
        x = ddim_step(prior, x, eps, cur, nxt)
    return x


class ISM:
    """Interval score matching (LucidDreamer); see the module docstring. ``delta_t`` anneals from
    ``delta_t_start`` to ``delta_t`` over the first ``warmup`` fraction of training."""

    name = "ism"

    def __init__(self, prior: Prior, *, delta_t: int = 25, delta_t_start: int = 100, warmup: float = 0.3,
                 xs_delta_t: int = 200, xs_steps: int = 5, grad_scale: float = 0.1):
        if min(delta_t, delta_t_start, xs_delta_t, xs_steps) < 1:
            raise ConfigError("prior.ism_delta_t, ism_delta_t_start, ism_xs_delta_t and ism_xs_steps must be >= 1")
        self.prior = prior
        self.delta_t, self.delta_t_start, self.warmup = int(delta_t), int(delta_t_start), float(warmup)
        self.xs_delta_t, self.xs_steps, self.grad_scale = int(xs_delta_t), int(xs_steps), float(grad_scale)

    def interval(self, progress: float) -> int:
        rate = 1.0 - min(progress / self.warmup, 1.0) if self.warmup > 0 else 0.0
        return int(self.delta_t + math.ceil(rate * (self.delta_t_start - self.delta_t)))

    def __call__(self, images: Tensor, cams: Cameras, progress: float, *, t: int | None = None,
                 noise: Tensor | None = None) -> Tensor:
        prior = self.prior
        x0, t, noise, cond = _draw(prior, images, cams, progress, t, noise)
        s = max(t - self.interval(progress), 0)
        with torch.no_grad():
            start = max(s - self.xs_delta_t * self.xs_steps, 0)
            x_s, _ = ddim_invert(prior, add_noise(prior, x0, noise, start), cond, start, s, self.xs_delta_t,
                                 self.xs_steps)
            eps_s = prior.eps_uncond(x_s, s, cond)
            x_t = ddim_step(prior, x_s, eps_s, s, t)
            abar = prior.alphas_cumprod[t]
            w = ((1 - abar) / abar).sqrt() * self.grad_scale
            grad = w * (prior.eps(x_t, t, cond) - eps_s)
        return _loss(x0, grad)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# Building


def build_rule(cfg, prior: Prior):
    """The distillation rule of ``cfg.prior.distill`` for ``prior``."""
    p = cfg.prior
    if p.distill == "sds":
        return SDS(prior)
    if p.distill not in DISTILL_RULES:
        raise ConfigError(f"prior.distill: expected {', '.join(DISTILL_RULES)}, got '{p.distill}'")
    if not getattr(prior, "is_denoiser", False):
        raise ConfigError(f"prior.distill={p.distill}: not available for {prior.describe()} "
                          "(a single prior is needed; drop prior.text_guidance)")
    if p.distill == "ism":
        return ISM(prior, delta_t=p.ism_delta_t, delta_t_start=p.ism_delta_t_start, warmup=p.ism_warmup,
                   xs_delta_t=p.ism_xs_delta_t, xs_steps=p.ism_xs_steps, grad_scale=p.ism_grad_scale)
    kind = p.vsd_estimator
    if kind == "auto":
        kind = "lora" if hasattr(prior, "lora_unet_call") else "particle" if prior.name.startswith("oracle") else ""
        if not kind:
            raise ConfigError(f"prior.distill=vsd: no LoRA for {prior.describe()}; "
                              "set prior.vsd_estimator=particle or use sd, zero123 or an oracle")
    if kind == "particle":
        return VSD(prior, ParticleDenoiser(prior, p.vsd_particles, p.vsd_particle_sigma))
    if kind != "lora":
        raise ConfigError(f"prior.vsd_estimator: expected auto, lora or particle, got '{kind}'")
    if not hasattr(prior, "lora_unet_call"):
        raise ConfigError(f"prior.vsd_estimator=lora: {prior.describe()} has no UNet to adapt; use particle")
    from .lora import UNetLoRA

    seed = int(cfg.seed or 0) + 7919
    return VSD(prior, UNetLoRA(prior, rank=p.vsd_lora_rank, lr=p.vsd_lora_lr,
                               camera_dropout=p.vsd_camera_dropout, seed=seed))
