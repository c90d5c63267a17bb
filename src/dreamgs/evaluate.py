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


@torch.no_grad()
def outer_surface_samples(mesh, n: int, generator: torch.Generator | None = None, views: int = 64,
                          size: int = 256) -> torch.Tensor:
    """``n`` points sampled uniformly on the part of the surface visible from outside.

    Assets built from overlapping closed parts (a roof on a box, a handle into a wall) have faces
    inside the solid; they are not part of the shape's surface, so a point counts only if some
    view around the sphere sees it (its depth matches that view's z-buffer).
    """
    from .cameras import project_points, sphere_views
    from .mesh.raster import rasterize

    mesh = mesh.to("cpu")
    lo, hi = mesh.bounds()
    radius = 3.0 * float((hi - lo).norm())
    cams = sphere_views(views, radius, 30.0, size)
    cand = sample_surface(mesh, 4 * n, generator)
    seen = torch.zeros(len(cand), dtype=torch.bool)
    tol = 2e-3 * float((hi - lo).norm())
    for i in range(0, views, 8):
        c = cams[i:i + 8]
        depth = rasterize(mesh.vertices, mesh.faces, c).depth
        uv, z = project_points(cand, c)
        px = uv.floor().long()
        inside = (px[..., 0] >= 0) & (px[..., 0] < size) & (px[..., 1] >= 0) & (px[..., 1] < size)
        pxc = px.clamp(0, size - 1)
        d = depth[torch.arange(len(c))[:, None], pxc[..., 1], pxc[..., 0]]
        seen |= (inside & (d > 0) & (z <= d + tol)).any(0)
    pts = cand[seen]
    return pts[torch.randperm(len(pts), generator=generator)[:n]]


def relative_chamfer(mesh, true_mesh, n: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance between the outer surfaces, as a fraction of the true
    bounding-box diagonal."""
    lo, hi = true_mesh.bounds()
    g = torch.Generator().manual_seed(seed)
    a = sample_surface(mesh.to("cpu"), n, g)
    b = outer_surface_samples(true_mesh, n, g)
    return chamfer_distance(a, b) / float((hi - lo).norm())
