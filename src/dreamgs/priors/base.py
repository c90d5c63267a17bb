"""The one small interface every 2D prior implements, and helpers shared by the priors.

A prior is built already conditioned (on a prompt, or on a reference image) and offers:

- ``sds(images, cams, progress)``: a scalar loss whose gradient with respect to ``images`` is the
  score-distillation gradient ``w(t) (eps_hat_cfg - eps)`` (through the VAE encoder for latent
  priors). ``progress`` in [0, 1] is the fraction of training done; it drives timestep annealing.
- the denoiser that the distillation rules (:mod:`dreamgs.priors.distill`: ``prior.distill``
  = sds, vsd or ism) turn into gradients: ``model_input``, ``timestep``, ``draw_noise``,
  ``condition``, ``eps`` (guided), ``eps_uncond`` and ``alphas_cumprod`` (priors that offer it
  set ``is_denoiser``; ``sds`` is :func:`dreamgs.priors.distill.sds` of it);
- ``refine(images, cams, strength, steps, schedule=...)``: SDEdit: noise the images and denoise
  them back with DDIM (eta = 0) along :func:`sdedit_timesteps` (the one definition of both
  schedules, ``"ddim"`` as DreamGaussian and ``"linear"``).

Images are (B, 3, H, W) in [0, 1] at any size; priors resize to their own ``resolution``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras

VIEW_BUCKETS = ("front", "side", "back", "overhead")


class Prior(ABC):
    """A 2D diffusion prior conditioned on a prompt or an input view."""

    name: str = "prior"
    resolution: int = 64  # the square image size the prior works at
    # Views per sample: 1 for single-view priors; the multi-view priors (MVDream, ImageDream) take
    # groups of 4 consecutive cameras at azimuths a, a+90, a+180, a+270 and one elevation
    # (stage1.view_group_cameras), so their batches are multiples of 4.
    views_per_sample: int = 1
    # Stage 2's loss is refine_weight * mse(x, refine(x)): 1, except for a weighted sum of priors
    # (priors/combined.py), whose refine returns the weighted mean of its parts' refinements.
    refine_weight: float = 1.0
    # Whether the prior exposes the denoiser methods below (single priors do; a weighted sum of
    # priors does not, so it takes SDS only).
    is_denoiser: bool = False
    acc_dtype: torch.dtype = torch.float32
    alphas_cumprod: Tensor  # (T,) abar_t in acc_dtype

    # -- the denoiser (used by the distillation rules, priors/distill.py) ------------------------

    def model_input(self, images: Tensor, cams: Cameras) -> Tensor:
        """Differentiable model-space ``x0`` (latents or pixels in [-1, 1]) of rendered images."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def timestep(self, progress: float) -> int:
        """Integer diffusion timestep for training ``progress`` (the prior's t schedule)."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def draw_noise(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like``, in ``acc_dtype``, from the prior's generator."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def condition(self, cams: Cameras, batch: int):
        """Everything the denoiser needs for ``batch`` images seen from ``cams``."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def eps(self, x_t: Tensor, t: int, cond) -> Tensor:
        """Classifier-free-guided noise prediction (``acc_dtype``) for ``x_t`` (``acc_dtype``)."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def eps_uncond(self, x_t: Tensor, t: int, cond) -> Tensor:
        """Unconditional noise prediction (``acc_dtype``) for ``x_t`` (``acc_dtype``)."""
        raise NotImplementedError(f"{self.name}: no denoiser interface")

    def set_guidance(self, scale: float) -> None:
        """Set the classifier-free guidance scale (the guidance schedule calls it every step)."""
        self.guidance_scale = float(scale)

    def get_guidance(self) -> float | None:
        """The classifier-free guidance scale (None for a prior without one)."""
        return getattr(self, "guidance_scale", None)

    @abstractmethod
    def sds(self, images: Tensor, cams: Cameras, progress: float) -> Tensor:
        """Score-distillation loss for rendered ``images`` seen from ``cams``."""

    @abstractmethod
    def refine(self, images: Tensor, cams: Cameras, strength: float, steps: int, *,
               schedule: str = "linear") -> Tensor:
        """SDEdit-refined copies of ``images`` (no gradient), same size as the input; the
        denoiser runs at :func:`sdedit_timesteps` ``(strength, steps, schedule)``."""

    def describe(self) -> str:
        return self.name

    def _groups(self, n: int) -> int:
        """How many groups of ``views_per_sample`` views ``n`` images make; a batch that is not a
        whole number of groups is refused."""
        v = self.views_per_sample
        if n % v:
            raise ValueError(f"{self.name}: {n} images; the prior takes groups of {v} views (azimuths a, a+90, "
                             f"a+180, a+270 at one elevation), so the batch must be a multiple of {v}")
        return n // v


def timestep_fraction(progress: float, t_min: float, t_max: float, schedule: str,
                      generator: torch.Generator | None = None) -> float:
    """Diffusion time in [t_min, t_max] as a fraction of T.

    ``anneal`` goes linearly from t_max at the start of training to t_min at the end;
    ``random`` draws uniformly from the range at every step.
    """
    if schedule == "random":
        u = float(torch.rand((), generator=generator))
        return t_min + (t_max - t_min) * u
    p = min(max(progress, 0.0), 1.0)
    return t_max - (t_max - t_min) * p


@contextmanager
def timestep_range(prior, t_min: float, t_max: float) -> Iterator[None]:
    """The prior's (and, for a weighted sum, its parts') diffusion-time range set to
    ``[t_min, t_max]`` for the block, then restored."""
    priors = [p for _, _, p in prior.parts] if hasattr(prior, "parts") else [prior]
    saved = [(p, p.t_min, p.t_max) for p in priors if hasattr(p, "t_max")]
    for p, _, _ in saved:
        p.t_min, p.t_max = t_min, t_max
    try:
        yield
    finally:
        for p, lo, hi in saved:
            p.t_min, p.t_max = lo, hi


def sdedit_timesteps(strength: float, steps: int, schedule: str = "linear",
                     num_train_timesteps: int = 1000) -> list[int]:
    """The descending timesteps at which SDEdit calls the denoiser; after the last one the
    refinement steps to the clean image (never a call at t = 0).

    ``"ddim"`` (DreamGaussian's ``refine``): the ``steps``-point DDIM grid of Stable Diffusion 2.1's
    scheduler ("leading" spacing, offset 1: 981, 961, ..., 1 for 50 steps), entered at index
    ``int(steps * strength)``; higher strength means less noise and fewer calls (0.8 -> 10 calls
    from t = 181, 0.95 -> 3 calls from t = 41 with 50 steps). The images are noised to the first.
    ``"linear"``: noise to ``round(strength * T)`` and take ``steps`` evenly spaced steps to 0.
    """
    T = int(num_train_timesteps)
    steps = max(1, int(steps))
    if schedule == "ddim":
        stride = T // steps
        grid = [i * stride + 1 for i in reversed(range(steps))]
        return grid[min(max(int(steps * strength), 0), steps - 1):]
    if schedule != "linear":
        raise ValueError(f"unknown SDEdit schedule '{schedule}' (expected ddim or linear)")
    t0 = min(max(int(round(strength * T)), 1), T - 1)
    ts = torch.linspace(t0, 0, steps + 1, dtype=torch.float64).round().long().tolist()[:-1]
    return sorted({t for t in ts if t > 0}, reverse=True)


def view_bucket(elevation: float, azimuth: float) -> str:
    """View-dependent prompt bucket for a camera (degrees; negative elevation is above).

    overhead: more than 60 degrees above; front: |azimuth| < 45; back: |azimuth| > 135;
    side otherwise. Azimuth 0 is the front (the input view in image mode).
    """
    if elevation < -60.0:
        return "overhead"
    a = abs((azimuth + 180.0) % 360.0 - 180.0)
    if a < 45.0:
        return "front"
    if a > 135.0:
        return "back"
    return "side"


def view_prompt(prompt: str, bucket: str) -> str:
    return f"{prompt}, {bucket} view"


def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """Loss whose gradient with respect to ``latents`` is ``grad / B`` (B = batch size)."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / latents.shape[0]


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size), antialiased when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=shrink)
