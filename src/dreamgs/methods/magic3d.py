"""Magic3D: a coarse NeRF, then a textured DMTet mesh refined by SDS at a high resolution.

- representation: first :class:`dreamgs.representations.nerf.NerfModel` (``nerf.*``), then
  :class:`dreamgs.representations.dmtet.DMTetModel`: a DMTet grid of ``magic3d.grid_resolution``
  cubes (an SDF and a bounded deformation per vertex) started from the NeRF's density, with the
  NeRF's albedo as the colour field;
- prior and distillation: the configured prior's rule (``prior.distill``): on 64 px volume renders
  in the coarse stage, on ``magic3d.render_size`` mesh renders with t <= ``magic3d.t_max`` (0.5)
  in the fine stage (``configs/method_magic3d.yaml``);
- stage 1: :class:`dreamgs.stage1_magic3d.Magic3DStage`: DreamFusion's loop for the first
  ``magic3d.coarse_fraction`` of the steps, then the fine loop with normal-consistency and
  Laplacian regularisers;
- exports: ``dmtet.safetensors`` (:func:`~dreamgs.representations.dmtet.load_dmtet` reads it),
  ``dmtet.mp4``; stage 2 takes the DMTet surface (marching tetrahedra, the shared clean-up and
  decimation), unwraps, bakes the colour field and refines the texture as for DreamGaussian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def make_stage1(cfg, prior, ref, device):
    from ..stage1_magic3d import Magic3DStage

    return Magic3DStage(cfg, prior, ref, device)


def save_model(model, run_dir: Path) -> dict[str, Path]:
    from ..representations.dmtet import save_dmtet

    return {"dmtet": save_dmtet(model, run_dir / "dmtet.safetensors")}


def _render_fn(model):
    def fn(cams):
        rgb, alpha = model.render_rgba(cams)
        return (rgb + (1.0 - alpha)).clamp(0.0, 1.0)  # over white
    return fn


def video(model, cfg, path: Path, **video_args) -> Path:
    from ..media import turntable

    return turntable(_render_fn(model), path, **video_args)


VIDEO_NAME = ("video_dmtet", "dmtet.mp4")
TIME_ESTIMATE = False  # dreamgs.estimate models the Gaussians' steps, not these


def preview(model, cfg, azimuth: float = 0.0, size: int = 64) -> np.ndarray:
    """A render of the current model (the NeRF during the coarse stage, then the mesh)."""
    from ..cameras import make_cameras
    from . import dreamfusion

    if not hasattr(model, "geometry"):
        return dreamfusion.preview(model, cfg, azimuth, size)
    cams = make_cameras(cfg.elevation if cfg.mode == "image" else -15.0, (azimuth + 180.0) % 360.0 - 180.0,
                        cfg.camera.radius, cfg.camera.fovy, size, device=model.device)
    rgb = _render_fn(model)(cams)[0]
    return (rgb * 255).round().byte().cpu().numpy()


def summary(model, cfg=None) -> dict:
    with torch.no_grad():
        verts, faces = model.surface()
    return {"dmtet_resolution": model.geometry.grid.resolution, "dmtet_parameters": len(model),
            "dmtet_surface_faces": int(len(faces))}


@torch.no_grad()
def load(path, device="cpu"):
    from ..representations.dmtet import load_dmtet

    return load_dmtet(path, device)
