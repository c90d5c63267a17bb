"""Multi-view fitting: optimise Gaussians to match posed RGBA images (``dreamgs fit``).

This is the Gaussian engine's end-to-end check (a built-in synthetic scene is rendered from known
cameras and fitted from scratch), and :func:`reference_loss` is also image mode's reference-view
loss in stage 1.

Dataset layout for ``dreamgs fit --data DIR``: ``DIR/cameras.json`` ::

    {"fovy": 49.1,
     "frames": [{"file": "000.png", "elevation": -15, "azimuth": 30, "radius": 2.0},
                {"file": "001.png", "c2w": [[...4 rows...]]}, ...]}

Each frame gives either orbit angles (degrees, DreamGaussian's convention) or an OpenGL
camera-to-world matrix. Images are RGBA PNGs of one common size; alpha is the object mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .cameras import Cameras, cameras_from_c2w, cat_cameras, make_cameras, orbit_views
from .config import Config, load_config
from .errors import InputError
from .gaussians import GaussianModel, rgb_to_sh
from .render import RenderOutput, render
from .train import GaussianTrainer


def reference_loss(out: RenderOutput, target: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    """MSE of the composited colour and of the alpha against RGBA targets (C, H, W, 4).

    Target colours are straight (not premultiplied) and are composited over the same per-camera
    ``background`` (C, 3) that the render used.
    """
    a = target[..., 3:4]
    rgb = target[..., :3] * a + background[:, None, None, :] * (1.0 - a)
    return F.mse_loss(out.rgb, rgb), F.mse_loss(out.alpha, a)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = F.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


# ------------------------------------------------------------------------------------------------
# The synthetic scene


def synthetic_scene(n: int = 360, seed: int = 0) -> GaussianModel:
    """A coloured trefoil knot of ``n`` elongated Gaussians, about 0.9 units across."""
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    curve = torch.stack([torch.sin(s) + 2 * torch.sin(2 * s), torch.cos(s) - 2 * torch.cos(2 * s),
                         -torch.sin(3 * s)], dim=-1) * 0.15
    tangent = torch.roll(curve, -1, 0) - torch.roll(curve, 1, 0)
    tangent = tangent / tangent.norm(dim=-1, keepdim=True)
    # Quaternion rotating +x onto the tangent.
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand_as(tangent)
    axis = torch.linalg.cross(x, tangent)
    w = 1.0 + (x * tangent).sum(-1, keepdim=True)
    quats = torch.cat([w, axis], dim=-1)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    hue = s / (2 * math.pi)
    colors = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hue + k / 3)) for k in range(3)], dim=-1)
    colors = (0.8 * colors + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    scales = torch.tensor([0.05, 0.03, 0.03], dtype=torch.float64).expand(n, 3)
    model = GaussianModel.from_points(curve.float(), colors.float(), opacity=0.9, scales=scales.float())
    model.params["quats"] = quats.float()
    return model


def synthetic_views(size: int = 64, n_train: int = 24, n_test: int = 8, radius: float = 2.0,
                    fovy: float = 49.1) -> tuple[Cameras, Cameras]:
    """Training cameras on three orbits (elevations -30, 0, 20 degrees), held-out ones in between."""
    per = n_train // 3
    train = cat_cameras([orbit_views(per, el, radius, fovy, size, start_azimuth=off)
                         for el, off in ((-30.0, 0.0), (0.0, 15.0), (20.0, 30.0))])
    test = cat_cameras([orbit_views(n_test // 2, el, radius, fovy, size, start_azimuth=off)
                        for el, off in ((-15.0, 22.5), (10.0, 67.5))])
    return train, test


@torch.no_grad()
def render_rgba(model: GaussianModel, cams: Cameras, backend: str = "auto") -> Tensor:
    """Straight-alpha RGBA renders (C, H, W, 4) of ``model``."""
    out = render(model, cams, background=torch.zeros(3), backend=backend)
    a = out.alpha
    rgb = torch.where(a > 1e-6, out.rgb / a.clamp_min(1e-6), torch.zeros_like(out.rgb)).clamp(0, 1)
    return torch.cat([rgb, a], dim=-1)


# ------------------------------------------------------------------------------------------------
# Fitting


def fit_gaussians(images: Tensor, cams: Cameras, cfg: Config, seed: int = 0, progress: bool = True,
                  init: GaussianModel | None = None) -> GaussianModel:
    """Fit Gaussians to RGBA ``images`` (V, H, W, 4) seen from ``cams``; returns the model."""
    fc = cfg.fit
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    images = images.to(device)
    cams = cams.to(device)
    gen = torch.Generator().manual_seed(seed)
    if init is None:
        model = GaussianModel.random_ball(fc.num_points, fc.init_radius, opacity=fc.init_opacity,
                                          sh_degree=cfg.gaussians.sh_degree, generator=gen).to(device)
        # Start from the mean foreground colour rather than grey.
        a = images[..., 3:4]
        mean_rgb = (images[..., :3] * a).sum((0, 1, 2)) / a.sum().clamp_min(1e-6)
        model.params["sh0"][:] = rgb_to_sh(mean_rgb)
    else:
        model = init.detach().to(device)
    gcfg = cfg.gaussians
    gcfg_fit = type(gcfg)(**{**gcfg.__dict__, "lr_position_steps": fc.lr_position_steps})
    trainer = GaussianTrainer(model, gcfg_fit, fc.densify, seed)
    n_views = len(cams)
    bar = tqdm(range(fc.iters), desc="fit", disable=None if progress else True, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randperm(n_views, generator=trainer.generator)[: fc.views_per_step].to(device)
        bg = torch.rand(len(idx), 3, generator=trainer.generator).to(device)
        out = render(model, cams[idx], background=bg, backend=cfg.backend)
        l_rgb, l_a = reference_loss(out, images[idx], bg)
        loss = l_rgb + fc.lambda_alpha * l_a
        trainer.step(loss, [out])
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}", n=len(model))
    return trainer.model.detach()


def evaluate(model: GaussianModel, images: Tensor, cams: Cameras, backend: str = "auto") -> list[float]:
    """PSNR per view, both composited over white (colour and coverage both count)."""
    white = torch.ones(3, device=model.device)
    with torch.no_grad():
        out = render(model, cams.to(model.device), background=white, backend=backend)
    tgt = images.to(model.device)
    a = tgt[..., 3:4]
    gt = tgt[..., :3] * a + (1 - a)
    return [psnr(out.rgb[i], gt[i]) for i in range(len(cams))]


# ------------------------------------------------------------------------------------------------
# Dataset loading and the command


def load_posed_images(data_dir: str | Path) -> tuple[Tensor, Cameras, list[str]]:
    """Read ``cameras.json`` and its RGBA images; see the module docstring for the layout."""
    from .media import load_image

    data_dir = Path(data_dir)
    meta_path = data_dir / "cameras.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: not found (a fit dataset needs cameras.json; see `dreamgs fit --help`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        fovy = float(meta.get("fovy", 49.1))
        frames = meta["frames"]
        if not isinstance(frames, list) or not frames:
            raise ValueError("'frames' must be a non-empty list")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{meta_path}: invalid ({e})") from None
    images, names, c2ws, orbit = [], [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file" not in fr:
            raise InputError(f"{meta_path}: frame {i} has no 'file'")
        path = data_dir / str(fr["file"])
        img = load_image(path)
        if img.shape[-1] != 4:
            raise InputError(f"{path}: image has no alpha channel; fitting needs RGBA images with the object mask")
        if images and img.shape != images[0].shape:
            raise InputError(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the first image's "
                             f"{images[0].shape[1]}x{images[0].shape[0]}; all images must have one size")
        images.append(img)
        names.append(str(fr["file"]))
        try:
            if "c2w" in fr:
                c2ws.append(np.asarray(fr["c2w"], dtype=np.float64).reshape(4, 4))
            else:
                orbit.append((float(fr["elevation"]), float(fr["azimuth"]), float(fr["radius"])))
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{meta_path}: frame {i} needs 'c2w' (4x4) or elevation, azimuth and radius") from None
    if c2ws and orbit:
        raise InputError(f"{meta_path}: mix of 'c2w' and orbit frames; use one kind")
    h, w = images[0].shape[:2]
    if c2ws:
        cams = cameras_from_c2w(np.stack(c2ws), fovy, w, h)
    else:
        el, az, r = zip(*orbit)
        cams = make_cameras(list(el), list(az), list(r), fovy, w, h)
    return torch.from_numpy(np.stack(images)).float(), cams, names


def run_fit_command(data: str | None, out_dir: str, config_file: str | None, overrides: list[str]) -> int:
    from .gaussians import save_ply
    from .media import save_grid
    from .run import new_run_dir, prepare_run_dir, resolve_seed, write_json

    cfg = load_config("text", config_file, overrides)
    seed = resolve_seed(cfg)  # drawn when not given, and recorded in the run folder
    if data:
        images, cams, names = load_posed_images(data)
        n = len(cams)
        test_idx = list(range(0, n, 8)) if n >= 8 else []
        train_idx = [i for i in range(n) if i not in test_idx]
        train_imgs, train_cams = images[train_idx], cams[torch.tensor(train_idx)]
        test_imgs, test_cams = (images[test_idx], cams[torch.tensor(test_idx)]) if test_idx else (None, None)
    else:
        scene = synthetic_scene()
        train_cams, test_cams = synthetic_views()
        train_imgs, test_imgs = render_rgba(scene, train_cams), render_rgba(scene, test_cams)
    run_dir = prepare_run_dir(new_run_dir(out_dir, cfg, Path(data).resolve().name if data else "synthetic"), cfg, seed)
    model = fit_gaussians(train_imgs, train_cams, cfg, seed=seed)
    save_ply(model, run_dir / "model.ply")
    result = {"gaussians": len(model), "train_views": len(train_cams)}
    if test_cams is not None:
        scores = evaluate(model, test_imgs, test_cams, cfg.backend)
        result.update(test_views=len(test_cams), psnr_mean=sum(scores) / len(scores), psnr=scores)
        with torch.no_grad():
            pred = render(model, test_cams.to(model.device), background=torch.ones(3, device=model.device),
                          backend=cfg.backend).rgb.cpu()
        a = test_imgs[..., 3:4]
        gt = test_imgs[..., :3] * a + (1 - a)
        save_grid(run_dir / "heldout_grid.png", torch.cat([gt, pred]).numpy(), ncols=len(test_cams))
        print(f"held-out PSNR: {result['psnr_mean']:.2f} dB over {len(test_cams)} views")
    write_json(run_dir / "metrics.json", result)
    print(f"wrote {run_dir / 'model.ply'}, {run_dir / 'metrics.json'}")
    return 0
