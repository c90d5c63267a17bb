"""DreamGaussian (the default method): 3D Gaussians trained by SDS, then a textured mesh.

- representation: :class:`dreamgs.gaussians.GaussianModel`, a random ball of ``gaussians.num_points``;
- prior and distillation: the configured prior's SDS (:mod:`dreamgs.priors`);
- stage 1: :class:`dreamgs.stage1.Stage1` (densification on its schedule);
- exports: ``model.ply``, ``gaussians.mp4``; stage 2 meshes the Gaussians' density.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_stage1(cfg, prior, ref, device):
    from ..stage1 import Stage1

    return Stage1(cfg, prior, ref, device)


def save_model(model, run_dir: Path) -> dict[str, Path]:
    from ..gaussians import save_ply

    return {"ply": save_ply(model, run_dir / "model.ply")}


def video(model, cfg, path: Path, **video_args) -> Path:
    from ..media import gaussian_render_fn, turntable

    return turntable(gaussian_render_fn(model, backend=cfg.backend), path, **video_args)


VIDEO_NAME = ("video_gaussians", "gaussians.mp4")
TIME_ESTIMATE = True  # dreamgs.estimate models these Gaussian steps


def preview(model, cfg, azimuth: float = 0.0, size: int = 128) -> np.ndarray:
    from ..pipeline import preview_image

    return preview_image(model, cfg, azimuth=azimuth, size=size)


def summary(model, cfg=None) -> dict:
    return {"gaussians": len(model)}
