"""Several priors guiding one model: an image prior plus text guidance (``prior.text_guidance``).

DreamGaussian's image mode can add Stable Diffusion's SDS under a prompt to Zero123's
(``lambda_sd`` and ``lambda_zero123``: both losses on the same rendered views, summed with their
weights; stage 2 sums their SDEdit losses the same way). :class:`WeightedPriors` is that sum:

- ``sds`` is ``sum_i w_i * sds_i`` over the same images and cameras, each prior resizing them
  to its own resolution and drawing its own noise and timestep;
- ``refine`` returns the weighted mean of the priors' refinements, and ``refine_weight`` the sum of
  the weights: ``sum_i w_i |x - r_i|^2 = W |x - mean_w(r)|^2 + const``, so stage 2's loss
  ``refine_weight * mse(x, refine(x))`` has the reference's gradient.

The weights are ``1`` for the main prior (``prior.kind``, whose loss ``stage1.lambda_sds`` scales as
for a single prior) and ``prior.text_weight`` for the text prior; DreamGaussian's ``lambda_zero123``
is ``stage1.lambda_sds`` and its ``lambda_sd`` is ``stage1.lambda_sds * prior.text_weight``.
A multi-view text prior (MVDream) sets the view groups; a single-view prior takes any batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from ..errors import ConfigError
from .base import Prior


class WeightedPriors(Prior):
    """``sum_i w_i * prior_i`` behind the one prior interface."""

    def __init__(self, parts: list[tuple[str, float, Prior]]):
        if len(parts) < 2:
            raise ValueError("WeightedPriors needs at least two priors")
        groups = {p.views_per_sample for _, _, p in parts if p.views_per_sample > 1}
        if len(groups) > 1:
            raise ConfigError("prior.text_guidance: the priors take view groups of different sizes "
                              f"({', '.join(map(str, sorted(groups)))})")
        self.parts = parts
        self.name = "+".join(name for name, _, _ in parts)
        self.views_per_sample = max(p.views_per_sample for _, _, p in parts)
        self.resolution = max(p.resolution for _, _, p in parts)
        self.refine_weight = sum(w for _, w, _ in parts)
        if self.refine_weight <= 0:
            raise ConfigError("prior.text_weight: the weights of the priors must sum to more than 0")

    def describe(self) -> str:
        return " + ".join(p.describe() if w == 1 else f"{w:g} x {p.describe()}" for _, w, p in self.parts)

    def generators(self) -> dict[str, torch.Generator]:
        """Every part's random generators, named ``<part>.<attribute>`` (saved in checkpoints)."""
        from ..checkpoint import prior_generators

        return {f"{name}.{k}": g for name, _, p in self.parts for k, g in prior_generators(p).items()}

    def set_guidance(self, scale: float) -> None:
        """The guidance schedule drives the main prior (``prior.kind``) only."""
        self.parts[0][2].set_guidance(scale)

    def get_guidance(self) -> float | None:
        return self.parts[0][2].get_guidance()

    def sds(self, images: Tensor, cams: Cameras, progress: float) -> Tensor:
        return sum(w * p.sds(images, cams, progress) for _, w, p in self.parts if w != 0)

    def refine(self, images: Tensor, cams: Cameras, strength: float, steps: int, *,
               schedule: str = "linear") -> Tensor:
        acc = torch.promote_types(images.dtype, torch.float32)
        out = sum(w * p.refine(images, cams, strength, steps, schedule=schedule).to(acc)
                  for _, w, p in self.parts if w != 0)
        return (out / self.refine_weight).to(images.dtype)
