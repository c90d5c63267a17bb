"""The representation seam: the smallest interface that the Gaussians and the NeRF both satisfy.

A method's stage 1 optimises a representation; stage 2 turns it into a textured mesh. What they
need of it:

- ``params``: the named trainable tensors (the checkpoint stores them by name), and
  ``param_groups(...)``: Adam groups, one named group per tensor, with their learning rates;
- ``render(cams, background, shading)``: colour, alpha, depth (and the NeRF's normals) per
  camera; stage 2 bakes from ``render_rgba(cams)`` (premultiplied colour, alpha);
- ``densify(step)``: an optional structural update (Gaussians: split/clone/prune on the
  trainer's schedule; the NeRF: none, its occupancy grid is refreshed by its stage);
- ``to_mesh(mesh_cfg, threshold, timings)``: the surface for stage 2 (a density grid through the
  shared marching cubes and clean-up in :mod:`dreamgs.mesh.extract`).

The Gaussian model keeps its own functions (:func:`dreamgs.render.render`,
:func:`dreamgs.gaussians.make_optimizer`, :func:`dreamgs.mesh.extract.extract_mesh`), which
stage 2 calls for it, so its numbers are unchanged; :func:`surface_renders` and
:func:`to_mesh` pick the right one.
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

    def param_groups(self, *lrs: float) -> list[dict]: ...

    def densify(self, step: int) -> None: ...

    def to_mesh(self, cfg, threshold: float, timings: dict | None = None): ...


def surface_renders(model, cams: Cameras, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Premultiplied colour (C, H, W, 3) and alpha (C, H, W, 1) of ``model`` over black, no gradient."""
    if hasattr(model, "render_rgba"):
        return model.render_rgba(cams.to(model.device))
    from ..render import render

    with torch.no_grad():
        out = render(model, cams, background=torch.zeros(3, device=model.device), backend=backend)
    return out.rgb, out.alpha
