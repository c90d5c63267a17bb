"""The representation seam: the smallest interface that the Gaussians and the NeRF both satisfy.

A method's stage 1 optimises a representation; stage 2 turns it into a textured mesh. What they
need of it:

- ``params``: the named trainable tensors (the checkpoint stores them by name), and
  ``param_groups(...)``: Adam groups, one named group per tensor, with their learning rates;
- ``render(cams, background, shading)``: colour, alpha, depth (and the NeRF's normals) per
  camera; stage 2 bakes from ``render_rgba(cams)`` (premultiplied colour, alpha);
- optionally a structural update (Gaussians: split/clone/prune, driven by
  :class:`dreamgs.train.GaussianTrainer` from its gradient statistics; the NeRF: none, its
  occupancy grid is refreshed by its stage);
- ``to_mesh(mesh_cfg, threshold, timings)``: the surface for stage 2 (a density grid through the
  shared marching cubes and clean-up in :mod:`dreamgs.mesh.extract`).

:class:`~dreamgs.gaussians.GaussianModel`'s methods call the functions the Gaussian path has
always used (:func:`dreamgs.render.render`, :func:`dreamgs.gaussians.make_optimizer`'s groups,
:func:`dreamgs.mesh.extract.extract_mesh`), so its numbers are unchanged;
:class:`~dreamgs.representations.nerf.NerfModel` implements them for the NeRF.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..cameras import Cameras


@runtime_checkable
class Representation(Protocol):
    params: dict[str, Tensor]

    @property
    def device(self) -> torch.device: ...

    def render(self, cams: Cameras, background=None, shading: str = "albedo"): ...

    def render_rgba(self, cams: Cameras) -> tuple[Tensor, Tensor]: ...

    def param_groups(self, *args) -> list[dict]: ...

    def to_mesh(self, cfg, threshold: float, timings: dict | None = None): ...


def surface_renders(model, cams: Cameras, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Premultiplied colour (C, H, W, 3) and alpha (C, H, W, 1) of ``model`` over black, no gradient."""
    from ..gaussians import GaussianModel

    if isinstance(model, GaussianModel):
        return model.render_rgba(cams, backend=backend)
    return model.render_rgba(cams.to(model.device))
