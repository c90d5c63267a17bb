"""Stage 1: generative Gaussians by score distillation (DreamGaussian's first stage).

Each step samples random orbit cameras, renders the Gaussians over a white or black background,
and asks the prior for its SDS loss. A multi-view prior (``views_per_sample`` > 1: MVDream,
ImageDream) gets ``stage1.batch_size`` groups of 4 views at azimuths a, a+90, a+180, a+270 and one
elevation (:func:`step_cameras`), one background per group. In image mode the input view
is also rendered at its known camera (azimuth 0, the given elevation) and compared with the input
RGBA (colour and mask losses, warmed up linearly except with Stable-Zero123). Densification runs
on the configured schedule. The settings where dreamgs had drifted from DreamGaussian's code are
config keys whose defaults are the reference's values (docs/fidelity.md lists them with our old
values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .cameras import Cameras, make_cameras, relative_elevation_range, sample_cameras
from .config import Config
from .errors import ConfigError
from .estimate import SIZE_EXPONENT
from .fit import reference_loss
from .gaussians import GaussianModel
from .init import initial_gaussians, start_learning_rates, start_timestep_range
from .priors.base import Prior, timestep_range
from .priors.distill import build_rule
from .progress import Progress
from .render import render
from .train import GaussianTrainer


@dataclass
class ReferenceView:
    """Image mode's input: straight-alpha RGBA (H, W, 4) in [0, 1] and its camera."""

    rgba: Tensor
    cams: Cameras


def make_reference(rgba: Tensor, cfg: Config, device) -> ReferenceView:
    size = cfg.stage1.ref_size
    img = rgba.permute(2, 0, 1)[None].float()
    if img.shape[-1] != size or img.shape[-2] != size:
        img = torch.nn.functional.interpolate(img, (size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
    cams = make_cameras(cfg.elevation, 0.0, cfg.camera.radius, cfg.camera.fovy, size, device=device)
    return ReferenceView(img[0].permute(1, 2, 0).clamp(0, 1).to(device), cams)


def render_size(cfg: Config, step: int) -> int:
    """Render resolution at ``step``: steps up through render_sizes at the milestone fractions."""
    s = cfg.stage1
    frac = step / max(1, s.iters)
    i = sum(1 for m in s.size_milestones if frac >= m)
    return s.render_sizes[i]


def sample_training_cameras(cfg: Config, n: int, size: int, device, generator: torch.Generator,
                            relative: bool = False) -> Cameras:
    """Random orbit cameras from ``cfg.camera``; with ``relative`` (image mode) the elevations are
    offsets from the input view's elevation e. With ``camera.cover_elevation_range`` (DreamGaussian,
    main.py's train_step) the offset range [lo, hi] becomes [max(min(lo, lo - e), -80 - e),
    min(max(hi, hi - e), 80 - e)], so absolute elevations always cover [lo, hi] and stay within
    [-80, 80]; without it, e + [lo, hi] clamped to [-80, 80]."""
    cam_cfg = cfg.camera
    if relative and cfg.camera.cover_elevation_range:
        rng = relative_elevation_range(cfg.elevation, cfg.camera.elevation_range)
        cam_cfg = dataclasses.replace(cfg.camera, elevation_range=rng)
    cams = sample_cameras(n, cam_cfg, size, device=device, generator=generator)
    if relative:
        el = (cfg.elevation + cams.elevation).clamp(-80.0, 80.0)
        cams = make_cameras(el.cpu(), cams.azimuth.cpu(), cams.radius.cpu(), cfg.camera.fovy, size, device=device)
    return cams


def view_group_cameras(cfg: Config, groups: int, views: int, size: int, device, generator: torch.Generator,
                       relative: bool = False) -> Cameras:
    """``groups`` groups of ``views`` cameras for the multi-view priors, group after group: each
    group is one camera drawn as by :func:`sample_training_cameras` (azimuth a), turned to azimuths
    a + k * 360 / views for k = 0 .. views - 1 (wrapped to [-180, 180)), all at its elevation and
    radius."""
    base = sample_training_cameras(cfg, groups, size, device, generator, relative=relative)
    turn = torch.arange(views, dtype=torch.float64) * (360.0 / views)
    az = (base.azimuth.double().cpu()[:, None] + turn[None] + 180.0) % 360.0 - 180.0
    el = base.elevation.double().cpu()[:, None].expand(-1, views)
    r = base.radius.double().cpu()[:, None].expand(-1, views)
    return make_cameras(el.reshape(-1), az.reshape(-1), r.reshape(-1), cfg.camera.fovy, size, device=device)


def step_cameras(cfg: Config, prior: Prior, n: int, size: int, device, generator: torch.Generator,
                 relative: bool = False) -> Cameras:
    """The cameras of one training step for ``prior``: ``n`` random cameras
    (:func:`sample_training_cameras`), or for a multi-view prior ``n`` groups of its
    ``views_per_sample`` views (:func:`view_group_cameras`)."""
    views = getattr(prior, "views_per_sample", 1)
    if views > 1:
        return view_group_cameras(cfg, n, views, size, device, generator, relative=relative)
    return sample_training_cameras(cfg, n, size, device, generator, relative=relative)


def scheduled_guidance(schedule: tuple[float, ...], progress: float) -> float:
    """The guidance scale at training ``progress`` in [0, 1]: ``schedule`` split into equal parts
    of training (e.g. (100, 50, 20): 100 for the first third, 50, then 20)."""
    n = len(schedule)
    return float(schedule[min(max(int(progress * n), 0), n - 1)])


def warmup_cameras(cfg: Config, progress: float) -> Config:
    """``cfg`` with the azimuth range of the front-biased warm-up at ``progress``: within
    ``camera.front_warmup`` of training, azimuths within +-h of the front, h growing linearly from
    ``camera.front_warmup_azimuth`` to the full range; ``cfg`` itself otherwise."""
    c = cfg.camera
    if c.front_warmup <= 0 or progress >= c.front_warmup:
        return cfg
    lo, hi = c.azimuth_range
    full = max(abs(lo), abs(hi))
    half = c.front_warmup_azimuth + (full - c.front_warmup_azimuth) * (progress / c.front_warmup)
    rng = (max(lo, -half), min(hi, half))
    return dataclasses.replace(cfg, camera=dataclasses.replace(c, azimuth_range=rng))
def points_prior_active(cfg: Config) -> bool:
    """Whether stage 1 adds the 3D point prior (``points_prior.use``: on, or auto with an oracle prior)."""
    use = cfg.points_prior.use
    return use == "on" or (use == "auto" and cfg.prior.kind in ("oracle", "oracle-mv"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device '{name}' (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device: '{name}' is not available here ({torch.cuda.device_count()} CUDA devices); "
                          "use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: unsupported device type '{device.type}' (expected cpu or cuda)")
    return device


class Stage1:
    """The stage-1 optimisation, one :meth:`step` at a time (resumable through state_dict)."""

    def __init__(self, cfg: Config, prior: Prior, ref: ReferenceView | None = None,
                 device: torch.device | str = "cpu", init: GaussianModel | None = None, distill=None):
        self.cfg, self.prior, self.ref = cfg, prior, ref
        # The distillation rule (prior.distill: sds, vsd, ism); a copy of a Stage1 shares its rule
        # (VSD's LoRA is attached to the prior's UNet once).
        self.distill = distill if distill is not None else build_rule(cfg, prior)
        # prior.guidance_schedule drives the (main) prior's guidance in stage 1; run() puts the
        # configured scale back for stage 2
        self._guidance = prior.get_guidance() if hasattr(prior, "get_guidance") else None
        self.device = torch.device(device)
        seed = int(cfg.seed or 0)
        g = cfg.gaussians
        if init is None:
            init = initial_gaussians(cfg, ref, seed)  # gaussians.init: ball | points | mesh | silhouette | depth
        self.model = init.to(self.device)
        # points/mesh starts: their own position and colour rates (init.start_learning_rates); the ball's are g's
        g_train, spatial = start_learning_rates(g)
        self.t_range = start_timestep_range(cfg)  # ... and their own diffusion-time range, if set
        self.trainer = GaussianTrainer(self.model, g_train, cfg.densify, seed, spatial_scale=spatial,
                                       max_bad_steps=cfg.stage1.max_bad_steps)
        # GSGen's geometry stage (stage1.geometry_fraction > 0): the 3D point prior acts only in it and
        # densification waits for its end; without a split, one stage does both.
        s1 = cfg.stage1
        self.geometry_end = round(s1.geometry_fraction * s1.iters) if s1.geometry_fraction > 0 else s1.iters
        if s1.geometry_fraction > 0:
            self.trainer.densify_from = self.geometry_end
        self.points_prior = None
        if points_prior_active(cfg):
            from .priors.points import build_point_prior

            self.points_prior = build_point_prior(cfg, prior, seed)
        # DreamGaussian warms the reference losses up, except with Stable-Zero123 (image_sai.yaml).
        w = cfg.stage1.ref_warmup
        self.warmup = w == "on" or (w == "auto" and cfg.prior.kind != "stable-zero123")
        self.last: dict[str, float] = {}
        # Relative cost of step k, for the progress bar's ETA; estimate.announce sets the measured one.
        self.step_cost: Callable[[int], float] = lambda k: render_size(cfg, k) ** SIZE_EXPONENT

    @property
    def step_count(self) -> int:
        return self.trainer.step_count

    def step(self) -> bool:
        cfg, s1 = self.cfg, self.cfg.stage1
        step = self.trainer.step_count
        progress = step / max(1, s1.iters)
        size = render_size(cfg, step)
        gen = self.trainer.generator
        # Multi-view priors: batch_size groups of views, one SDS over them (fixed shapes for CUDA graphs).
        cams = step_cameras(warmup_cameras(cfg, progress), self.prior, s1.batch_size, size, self.device, gen,
                            relative=self.ref is not None)
        views = len(cams) // s1.batch_size
        white = (torch.rand(s1.batch_size, generator=gen) < s1.white_background_prob).repeat_interleave(views)
        bg = white.float()[:, None].expand(-1, 3).to(self.device)
        out = render(self.model, cams, background=bg, backend=cfg.backend)
        images = out.images()
        if cfg.prior.guidance_schedule:
            self.prior.set_guidance(scheduled_guidance(cfg.prior.guidance_schedule, progress))
        with timestep_range(self.prior, *self.t_range) if self.t_range else contextlib.nullcontext():
            loss_sds = self.distill(images.clamp(0.0, 1.0) if s1.clamp_render else images, cams, progress)
        loss = s1.lambda_sds * loss_sds
        renders = [out]
        report = {"sds": loss_sds}
        if s1.lambda_opacity > 0:
            reg = ((1.0 - self.model.opacities) ** 2).mean()
            loss = loss + s1.lambda_opacity * reg
            report["opacity_reg"] = reg
        if s1.lambda_scale > 0:
            reg = (self.model.scales ** 2).sum(-1).mean()
            loss = loss + s1.lambda_scale * reg
            report["scale_reg"] = reg
        if self.points_prior is not None and step < self.geometry_end:
            loss_pts = self.points_prior.sds(self.model.means, gen)
            loss = loss + s1.lambda_sds * cfg.points_prior.weight * loss_pts
            report["points"] = loss_pts
        if self.ref is not None and step % max(1, s1.ref_every) == 0:
            warm = min(1.0, (step + 1) / max(1.0, s1.warmup_fraction * s1.iters)) if self.warmup else 1.0
            white3 = torch.ones(1, 3, device=self.device)
            ref_out = render(self.model, self.ref.cams, background=white3, backend=cfg.backend)
            shown = dataclasses.replace(ref_out, rgb=ref_out.rgb.clamp(0.0, 1.0)) if s1.clamp_render else ref_out
            l_rgb, l_mask = reference_loss(shown, self.ref.rgba[None], white3)
            loss = loss + warm * (s1.lambda_rgb * l_rgb + s1.lambda_mask * l_mask)
            if cfg.densify.reference_view_stats:  # DreamGaussian: only the novel views' gradients
                renders.append(ref_out)
            report.update(rgb=l_rgb, mask=l_mask)
        report["loss"] = loss
        ok = self.trainer.step(loss, renders, report)
        self.last = dict(self.trainer.last_report)
        return ok

    def run(self, callback: Callable[["Stage1"], None] | None = None, progress: bool = True) -> GaussianModel:
        s1 = self.cfg.stage1
        with Progress("stage 1", s1.iters, "steps", initial=self.step_count, enabled=progress,
                      weight=self.step_cost) as bar:
            while self.step_count < s1.iters:
                self.step()
                bar.update(1, f"loss {self.last.get('loss', math.nan):.4g}, {len(self.model)} Gaussians")
                if callback is not None:
                    callback(self)
        if self.cfg.prior.guidance_schedule and self._guidance is not None:
            self.prior.set_guidance(self._guidance)
        return self.model.detach()
