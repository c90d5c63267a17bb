"""Scoring a result against a known asset: held-out cameras, PSNR over the image and over the
silhouettes, pose offset, front/back check, Chamfer distance.

Used by ``dreamgs bench`` (:mod:`dreamgs.bench`), the oracle-prior quality tests and the GPU
quality script. Held-out cameras are drawn at random within the training cameras' range and kept
only if they are at least half a grid step (in the oracle's reference grid: ring step in
elevation, ``360 / oracle_azimuths`` in azimuth) from every reference camera, so a method that
copied the oracle's references cannot score as if it had generalised.
"""

from __future__ import annotations

import math

import torch

from .cameras import Cameras, make_cameras
from .metrics import chamfer_distance, psnr, sample_surface

MIN_GRID_DISTANCE = 0.5  # held-out cameras are at least this many grid steps from every reference


def reference_grid(cfg) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The oracle's reference cameras for ``cfg``: elevations and azimuths (M,) in degrees, and
    the grid steps (elevation, azimuth) in degrees."""
    from .priors.oracle import oracle_elevations

    rings = torch.tensor(oracle_elevations(cfg), dtype=torch.float64)
    n = cfg.prior.oracle_azimuths
    az = torch.arange(n, dtype=torch.float64) * (360.0 / n) - 180.0
    el_step = float(rings.diff().abs().min()) if len(rings) > 1 else float(cfg.prior.oracle_ring_step)
    el, az = torch.meshgrid(rings, az, indexing="ij")
    return el.reshape(-1), az.reshape(-1), el_step, 360.0 / n


def wrap_degrees(a: torch.Tensor) -> torch.Tensor:
    """Angles wrapped into [-180, 180)."""
    return torch.remainder(a + 180.0, 360.0) - 180.0


def grid_distance(el: torch.Tensor, az: torch.Tensor, cfg) -> torch.Tensor:
    """For cameras (el, az) in degrees, the distance to the nearest oracle reference camera in
    grid steps: sqrt((d_el / el_step)^2 + (d_az / az_step)^2), azimuth wrapped."""
    rel, raz, el_step, az_step = reference_grid(cfg)
    d_el = (el.double()[:, None] - rel[None]) / el_step
    d_az = wrap_degrees(az.double()[:, None] - raz[None]) / az_step
    return (d_el ** 2 + d_az ** 2).sqrt().amin(dim=1)


def camera_ranges(cfg) -> tuple[tuple[float, float], tuple[float, float]]:
    """The training cameras' absolute elevation and azimuth ranges (degrees) for ``cfg``."""
    lo, hi = cfg.camera.elevation_range
    if cfg.mode == "image":  # offsets from the input view, as stage 1 samples them
        from .cameras import relative_elevation_range

        lo, hi = relative_elevation_range(cfg.elevation, (lo, hi), cfg.camera.cover_elevation_range)
        lo, hi = max(cfg.elevation + lo, -80.0), min(cfg.elevation + hi, 80.0)
    return (lo, hi), tuple(cfg.camera.azimuth_range)


def heldout_cameras(cfg, n: int = 24, size: int = 64, seed: int = 0, device="cpu") -> Cameras:
    """``n`` held-out cameras for ``cfg``: uniform on the sphere within the training range (at the
    training radius), each at least :data:`MIN_GRID_DISTANCE` grid steps from every oracle
    reference camera. Deterministic in ``seed``."""
    (lo_e, hi_e), (lo_a, hi_a) = camera_ranges(cfg)
    g = torch.Generator().manual_seed(seed)
    kept_el, kept_az = [], []
    s_lo, s_hi = math.sin(math.radians(lo_e)), math.sin(math.radians(hi_e))
    for _ in range(1000):
        u = torch.rand(4 * n, 2, generator=g, dtype=torch.float64)
        el = torch.rad2deg(torch.asin(s_lo + (s_hi - s_lo) * u[:, 0]))  # uniform in area
        az = lo_a + (hi_a - lo_a) * u[:, 1]
        ok = grid_distance(el, az, cfg) >= MIN_GRID_DISTANCE
        kept_el.append(el[ok])
        kept_az.append(az[ok])
        if sum(len(e) for e in kept_el) >= n:
            break
    el, az = torch.cat(kept_el)[:n], torch.cat(kept_az)[:n]
    if len(el) < n:
        raise ValueError(f"could not place {n} held-out cameras away from the reference grid")
    return make_cameras(el, az, cfg.camera.radius, cfg.camera.fovy, size, device=device)


SSAA = 4  # scores compare antialiased images: rendered at 4x the size, then box-filtered


def _downsample(img: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return img
    x = img.permute(0, 3, 1, 2)
    return torch.nn.functional.avg_pool2d(x, factor).permute(0, 2, 3, 1)


@torch.no_grad()
def asset_views(mesh, cams: Cameras, ssaa: int = SSAA) -> torch.Tensor:
    """Ground-truth renders (C, H, W, 3) of a textured mesh over white, antialiased (CPU, float32)."""
    return mesh_rgba_views(mesh, cams, ssaa)[0]


@torch.no_grad()
def gaussian_views(model, cams: Cameras, ssaa: int = SSAA) -> torch.Tensor:
    """Renders (C, H, W, 3) of Gaussians over white, antialiased like :func:`asset_views`."""
    return gaussian_rgba_views(model, cams, ssaa)[0]


@torch.no_grad()
def mesh_rgba_views(mesh, cams: Cameras, ssaa: int = SSAA) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured mesh over white, antialiased: colour (C, H, W, 3) and alpha (C, H, W, 1)."""
    from .mesh.raster import render_mesh

    out = render_mesh(mesh, cams.to(mesh.device), background=torch.ones(3, device=mesh.device), ssaa=ssaa)
    return out.rgb.float().cpu(), out.alpha.float().cpu()


@torch.no_grad()
def gaussian_rgba_views(model, cams: Cameras, ssaa: int = SSAA) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussians over white, antialiased like :func:`mesh_rgba_views`: colour and alpha."""
    from .render import render

    big = cams.resized(cams.width * ssaa, cams.height * ssaa).to(model.device)
    out = render(model, big, background=torch.ones(3, device=model.device))
    return _downsample(out.rgb, ssaa).float().cpu(), _downsample(out.alpha, ssaa).float().cpu()


def view_scores(pred_rgb: torch.Tensor, pred_alpha: torch.Tensor, gt_rgb: torch.Tensor,
                gt_alpha: torch.Tensor) -> dict[str, float]:
    """Mean per-view PSNR over the whole image (white background included) and over the union of
    the two silhouettes (alpha > 0.5 in either), which the background cannot inflate."""
    whole, masked = [], []
    for p, pa, g, ga in zip(pred_rgb, pred_alpha, gt_rgb, gt_alpha):
        whole.append(psnr(p.clamp(0, 1), g.clamp(0, 1)))
        union = (pa > 0.5) | (ga > 0.5)
        masked.append(psnr(p.clamp(0, 1), g.clamp(0, 1), mask=union) if union.any() else math.inf)
    return {"psnr": _mean_capped(whole), "psnr_masked": _mean_capped(masked)}


PSNR_CAP = 100.0  # identical images (the truth against itself) score this instead of infinity


def _mean_capped(values: list[float]) -> float:
    return float(sum(min(v, PSNR_CAP) for v in values) / len(values))


@torch.no_grad()
def pose_offset(pred_rgb: torch.Tensor, true_mesh, cams: Cameras, views: int = 8, cache: dict | None = None
                ) -> float:
    """The azimuth shift d (degrees, in [-180, 180)) for which the truth seen from azimuth
    ``az + d`` best matches the result seen from ``az`` (least squared error over up to ``views``
    of ``cams``): 0 for a result in the right pose, 15 for the truth turned by 15 degrees.
    Searched on a 10-degree grid, then refined to 2 and 1 degree. ``cache`` (a dict kept per
    asset and cameras) keeps the truth's renders per shift for the next call."""
    from .mesh.raster import render_mesh

    idx = torch.linspace(0, len(cams) - 1, min(views, len(cams))).round().long().unique()
    pred = pred_rgb[idx].float().cpu()
    el, az = cams.elevation[idx].double().cpu(), cams.azimuth[idx].double().cpu()
    cache = {} if cache is None else cache

    def errors(shifts: torch.Tensor) -> torch.Tensor:
        new = [float(d) for d in shifts if float(d) not in cache]
        if new:
            a = (az[None] + torch.tensor(new, dtype=torch.float64)[:, None]).reshape(-1)
            c = make_cameras(el.repeat(len(new)), a, float(cams.radius[0]), cams.fovy, cams.width, cams.height)
            truth = render_mesh(true_mesh, c.to(true_mesh.device),
                                background=torch.ones(3, device=true_mesh.device)).rgb.float().cpu()
            cache.update(zip(new, truth.reshape(len(new), len(idx), *pred.shape[1:])))
        truth = torch.stack([cache[float(d)] for d in shifts])
        return ((truth - pred[None]) ** 2).mean(dim=(1, 2, 3, 4))

    best = 0.0
    for step, span in ((10.0, 180.0), (2.0, 8.0), (1.0, 1.0)):
        shifts = best + torch.arange(-span, span if span == 180.0 else span + step / 2, step, dtype=torch.float64)
        best = float(shifts[errors(shifts).argmin()])
    return float(wrap_degrees(torch.tensor(best)))


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
