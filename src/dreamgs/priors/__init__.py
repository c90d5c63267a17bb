"""2D diffusion priors behind one interface (see :mod:`dreamgs.priors.base`)."""

from __future__ import annotations

from .base import Prior, timestep_fraction, view_bucket, view_prompt

__all__ = ["Prior", "load_prior", "timestep_fraction", "view_bucket", "view_prompt"]

PRIOR_KINDS = ("sd", "zero123", "stable-zero123", "oracle")


def load_prior(cfg, device, ref_image=None) -> Prior:
    """Build the prior named by ``cfg.prior.kind``, conditioned on the prompt or the input view.

    ``ref_image``: image mode's input view, (1, 3, H, W) in [0, 1] over a white background.
    """
    from ..errors import ConfigError

    kind = cfg.prior.kind
    if kind == "oracle":
        from .oracle import build_oracle

        return build_oracle(cfg, device, ref_image)
    raise ConfigError(f"prior.kind: unknown prior '{kind}' (expected one of: {', '.join(PRIOR_KINDS)})")
