"""2D diffusion priors behind one interface (see :mod:`dreamgs.priors.base`)."""

from .base import Prior, timestep_fraction, view_bucket, view_prompt

__all__ = ["Prior", "timestep_fraction", "view_bucket", "view_prompt"]
