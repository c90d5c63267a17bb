"""DreamFusion: a NeRF trained by SDS on shaded renders, then the shared textured-mesh stage.

- representation: :class:`dreamgs.representations.nerf.NerfModel`, a multiresolution grid with
  small MLP heads (density with the centre blob, albedo), its shape from ``nerf.*``;
- prior and distillation: the configured prior's SDS on 64 px renders (``configs/method_dreamfusion.yaml``);
- stage 1: :class:`dreamgs.stage1_nerf.NerfStage1`: albedo / textureless / Lambertian shading
  with lights near the camera, orientation, sparsity and opaque-background losses, an occupancy grid;
- exports: ``nerf.safetensors`` (:func:`~dreamgs.representations.nerf.load_nerf` reads it),
  ``nerf.mp4``; stage 2 marches the density at ``nerf.mesh_threshold``, unwraps, bakes the
  albedo and refines the texture as for DreamGaussian.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VIDEO_MAX_SIZE = 64  # volume-rendered turntables are slow on a CPU (128 px: 3.5 min for 90 frames here)


def make_stage1(cfg, prior, ref, device):
    from ..stage1_nerf import NerfStage1

    return NerfStage1(cfg, prior, ref, device)


def save_model(model, run_dir: Path) -> dict[str, Path]:
    from ..representations.nerf import save_nerf

    return {"nerf": save_nerf(model, run_dir / "nerf.safetensors")}


def _render_fn(model, samples: int):
    def fn(cams):
        rgb, alpha = model.render_rgba(cams, samples=samples)
        return (rgb + (1.0 - alpha)).clamp(0.0, 1.0)  # over white
    return fn


def video(model, cfg, path: Path, **video_args) -> Path:
    from ..media import turntable

    video_args["size"] = min(video_args.get("size", VIDEO_MAX_SIZE), VIDEO_MAX_SIZE)
    return turntable(_render_fn(model, cfg.nerf.samples), path, **video_args)


VIDEO_NAME = ("video_nerf", "nerf.mp4")
TIME_ESTIMATE = False  # dreamgs.estimate models the Gaussians' steps, not these


def preview(model, cfg, azimuth: float = 0.0, size: int = 64) -> np.ndarray:
    from ..cameras import make_cameras

    cams = make_cameras(cfg.elevation if cfg.mode == "image" else -15.0, (azimuth + 180.0) % 360.0 - 180.0,
                        cfg.camera.radius, cfg.camera.fovy, min(size, 64), device=model.device)
    rgb = _render_fn(model, cfg.nerf.samples)(cams)[0]
    return (rgb * 255).round().byte().cpu().numpy()


def summary(model, cfg=None) -> dict:
    """Parameter count and the orientation check: the fraction of the rendering weight on normals
    facing away from the camera, over 8 views around the object at elevation -15 (64 px)."""
    from ..cameras import orbit_views

    from ..config import Config

    cfg = cfg or Config()
    cams = orbit_views(8, -15.0, cfg.camera.radius, cfg.camera.fovy, 64, device=model.device)
    with torch.no_grad():
        out = model.render(cams, torch.ones(3, device=model.device), shading="textureless", light=cams.centers.cpu(),
                           samples=cfg.nerf.samples, occupancy_threshold=cfg.nerf.occ_threshold)
    return {"nerf_parameters": len(model), "normals_facing_away": round(float(out.facing_away), 4)}


@torch.no_grad()
def load(path, device="cpu"):
    from ..representations.nerf import load_nerf

    return load_nerf(path, device)
