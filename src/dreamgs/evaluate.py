"""Scoring a result against a known asset: novel-view PSNR, front/back check, Chamfer distance.

Used by the oracle-prior quality tests and by the GPU quality script; the held-out cameras lie
between the oracle's reference views, so a method that copied references would not score well.
"""

from __future__ import annotations

import torch

from .cameras import Cameras, make_cameras
from .metrics import chamfer_distance, psnr, sample_surface

HELDOUT_ELEVATIONS = (-20.0, 10.0, 0.0, 25.0, -5.0, 15.0, -25.0, 5.0)
HELDOUT_AZIMUTHS = (17.0, 100.0, -160.0, -70.0, -155.0, 50.0, 130.0, -35.0)


def heldout_cameras(radius: float, fovy: float, size: int, device="cpu") -> Cameras:
    return make_cameras(list(HELDOUT_ELEVATIONS), list(HELDOUT_AZIMUTHS), radius, fovy, size, device=device)


SSAA = 4  # scores compare antialiased images: rendered at 4x the size, then box-filtered


def _downsample(img: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return img
    x = img.permute(0, 3, 1, 2)
    return torch.nn.functional.avg_pool2d(x, factor).permute(0, 2, 3, 1)


@torch.no_grad()
def asset_views(mesh, cams: Cameras, ssaa: int = SSAA) -> torch.Tensor:
    """Ground-truth renders (C, H, W, 3) of a textured mesh over white, antialiased."""
    from .mesh.raster import render_mesh

    return render_mesh(mesh, cams.to(mesh.device), background=torch.ones(3, device=mesh.device), ssaa=ssaa).rgb


@torch.no_grad()
def gaussian_views(model, cams: Cameras, ssaa: int = SSAA) -> torch.Tensor:
    """Renders (C, H, W, 3) of Gaussians over white, antialiased like :func:`asset_views`."""
    from .render import render

    big = cams.resized(cams.width * ssaa, cams.height * ssaa).to(model.device)
    return _downsample(render(model, big, background=torch.ones(3, device=model.device)).rgb, ssaa)


def psnr_per_view(pred: torch.Tensor, gt: torch.Tensor) -> list[float]:
    return [psnr(p.float().cpu(), g.float().cpu()) for p, g in zip(pred, gt)]


def front_back(render_fn, mesh, radius: float, fovy: float, size: int) -> dict[str, float]:
    """PSNR of the result's front view against the asset's front and back views (and back/back).

    A Janus or swapped result matches the wrong side at least as well as the right one.
    """
    cams = make_cameras([0.0, 0.0], [0.0, 180.0], radius, fovy, size)
    pred, gt = render_fn(cams), asset_views(mesh, cams)
    return {"front_vs_front": psnr(pred[0].cpu(), gt[0].cpu()), "front_vs_back": psnr(pred[0].cpu(), gt[1].cpu()),
            "back_vs_back": psnr(pred[1].cpu(), gt[1].cpu()), "back_vs_front": psnr(pred[1].cpu(), gt[0].cpu())}


def relative_chamfer(mesh, true_mesh, n: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance between the surfaces, as a fraction of the true bounding-box diagonal."""
    lo, hi = true_mesh.bounds()
    g = torch.Generator().manual_seed(seed)
    a = sample_surface(mesh.to("cpu"), n, g)
    b = sample_surface(true_mesh.to("cpu"), n, g)
    return chamfer_distance(a, b) / float((hi - lo).norm())
