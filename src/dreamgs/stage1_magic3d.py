"""Stage 1 for Magic3D: the coarse NeRF, then the fine DMTet mesh, one step at a time.

The first ``magic3d.coarse_fraction`` of ``stage1.iters`` steps are DreamFusion's
(:class:`dreamgs.stage1_nerf.NerfStage1`, with the coarse share as its length). At the boundary the
fine model is built (:func:`start_fine`): a DMTet grid of ``magic3d.grid_resolution`` cubes over
the NeRF's box, its SDF ``threshold - density`` of the NeRF at the grid vertices
(:func:`dreamgs.representations.dmtet.sdf_from_nerf`), and the NeRF itself as the colour field.
Each fine step (:class:`FineStage`) draws cameras, background, shading and lights as the NeRF
stage does (every shading from the start: the coarse stage has already learnt the albedo), renders
the extracted surface at ``magic3d.render_size``, and adds to the distillation loss (the rule of
``prior.distill`` with the diffusion time in ``[magic3d.t_min, magic3d.t_max]``, annealed over the
fine steps) the normal-consistency and Laplacian regularisers of the surface.

The trainer (:class:`PhasedTrainer`) is the coarse NeRF trainer, then the fine one (the same
checkpoint format, named tensors and Adam states; the fine state has ``representation: dmtet``),
so checkpoints and ``dreamgs resume`` work in both stages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .config import Config
from .errors import EmptyModelError
from .mesh.regularize import laplacian_loss, normal_consistency_loss
from .priors.base import timestep_range
from .progress import Progress
from .representations.dmtet import DMTetModel, dmtet_model, sdf_from_nerf
from .stage1_nerf import NerfStage1, NerfTrainer, nerf_spec


def coarse_steps(cfg: Config) -> int:
    """Steps of the coarse (NeRF) stage: ``coarse_fraction`` of ``stage1.iters``, at least 1, and
    at least one step left for the fine stage."""
    n = cfg.stage1.iters
    return min(max(1, int(round(cfg.magic3d.coarse_fraction * n))), max(1, n - 1))


def coarse_config(cfg: Config) -> Config:
    """``cfg`` with ``stage1.iters`` the coarse stage's length (its schedules run over it)."""
    return dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, iters=coarse_steps(cfg)))


def initial_threshold(cfg: Config, nerf, grid) -> float:
    """The density of the starting surface: ``magic3d.init_threshold``, or ``nerf.mesh_threshold``
    when that is 0 and the field reaches it, else half the field's maximum over the grid."""
    if cfg.magic3d.init_threshold > 0:
        return cfg.magic3d.init_threshold
    with torch.no_grad():
        pts = grid.vertices.to(nerf.device)
        top = max(float(nerf.density(pts[i:i + (1 << 16)]).max()) for i in range(0, len(pts), 1 << 16))
    return cfg.nerf.mesh_threshold if top > cfg.nerf.mesh_threshold else 0.5 * top


class FineTrainer(NerfTrainer):
    """The NeRF trainer over the fine model's tensors (SDF, deformation, colour field, background);
    its state says ``representation: dmtet``."""

    representation = "dmtet"

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["representation"] = self.representation
        return state


def start_fine(cfg: Config, coarse: NerfStage1) -> tuple[DMTetModel, FineTrainer]:
    """The fine model from the coarse NeRF and its trainer, continuing the coarse trainer's step
    count, bad-step count and random generator."""
    nerf = coarse.model
    model = dmtet_model(cfg, nerf.detach(), device=coarse.device)
    grid = model.geometry.grid
    thr = initial_threshold(cfg, nerf, grid)
    sdf = sdf_from_nerf(grid, nerf, thr)
    if not bool((sdf < 0).any()):
        raise EmptyModelError("the model is empty: the coarse NeRF's density never reaches "
                              f"{thr:g} on the {cfg.magic3d.grid_resolution}^3 DMTet grid")
    with torch.no_grad():
        model.params["dmtet.sdf"].copy_(sdf)
    old = coarse.trainer
    trainer = FineTrainer(model, cfg, int(cfg.seed or 0), old.background)
    trainer.generator.set_state(old.generator.get_state())
    trainer.step_count, trainer.bad_steps = old.step_count, old.bad_steps
    return model, trainer


class FineStage:
    """Magic3D's fine stage: SDS on renders of the DMTet surface (see the module docstring)."""

    def __init__(self, cfg: Config, prior, ref, distill, model: DMTetModel, trainer: FineTrainer, start: int):
        self.cfg, self.prior, self.ref, self.distill = cfg, prior, ref, distill
        self.model, self.trainer, self.start = model, trainer, start
        self.device = model.device
        self.last: dict[str, float] = {}

    def step(self) -> bool:
        from .fit import reference_loss
        from .representations.nerf import camera_rays, choose_shading, sample_lights
        from .stage1 import step_cameras

        cfg, s1, n, m = self.cfg, self.cfg.stage1, self.cfg.nerf, self.cfg.magic3d
        k = self.trainer.step_count - self.start
        progress = k / max(1, s1.iters - self.start)
        gen = self.trainer.generator
        cams = step_cameras(cfg, self.prior, s1.batch_size, m.render_size, self.device, gen,
                            relative=self.ref is not None)
        views = len(cams) // s1.batch_size
        white = (torch.rand(s1.batch_size, generator=gen) < s1.white_background_prob).repeat_interleave(views)
        bg = white.float()[:, None].expand(-1, 3).to(self.device)
        shading = choose_shading(k, 0, n.albedo_prob, n.textureless_prob, gen)
        lights = sample_lights(cams, n.light_distance_range, n.light_perturb, gen)
        if self.trainer.background is not None:  # the background MLP of the view direction, as an image
            dirs = camera_rays(cams)[1].to(self.device)
            bg = self.trainer.background(dirs.reshape(-1, 3)).reshape(*dirs.shape)
        out = self.model.render(cams, bg, shading=shading, light=lights, ambient=n.ambient, diffuse=n.diffuse,
                                antialias=m.antialias)
        images = out.images()
        with timestep_range(self.prior, m.t_min, m.t_max):
            loss_sds = self.distill(images.clamp(0.0, 1.0) if s1.clamp_render else images, cams, progress)
        loss = s1.lambda_sds * loss_sds
        report = {"sds": loss_sds, "faces": torch.tensor(float(len(out.faces)))}
        if len(out.faces):
            if m.lambda_normal > 0:
                nc = normal_consistency_loss(out.verts, out.faces)
                loss = loss + m.lambda_normal * nc
                report["normal"] = nc
            if m.lambda_laplacian > 0:
                lap = laplacian_loss(out.verts, out.faces)
                loss = loss + m.lambda_laplacian * lap
                report["laplacian"] = lap
        if self.ref is not None and k % max(1, s1.ref_every) == 0:
            white3 = torch.ones(1, 3, device=self.device)
            size = m.render_size
            r = self.model.render(self.ref.cams.resized(size).to(self.device), white3, antialias=m.antialias)
            target = torch.nn.functional.interpolate(self.ref.rgba.permute(2, 0, 1)[None], (size, size),
                                                     mode="bilinear", antialias=True, align_corners=False)
            l_rgb, l_mask = reference_loss(r, target.permute(0, 2, 3, 1), white3)
            loss = loss + s1.lambda_rgb * l_rgb + s1.lambda_mask * l_mask
            report.update(rgb=l_rgb, mask=l_mask)
        report["loss"] = loss
        ok = self.trainer.step(loss, report)
        self.last = dict(self.trainer.last_report, shading=shading)
        return ok


class PhasedTrainer:
    """The coarse trainer until the fine stage starts, then the fine one; ``load_state_dict``
    builds the fine model first when the state is a fine stage's."""

    def __init__(self, stage: "Magic3DStage"):
        self._stage = stage

    @property
    def current(self):
        s = self._stage
        return s.fine.trainer if s.fine is not None else s.coarse.trainer

    def __getattr__(self, name):
        return getattr(self.current, name)

    def state_dict(self) -> dict:
        return self.current.state_dict()

    def load_state_dict(self, state: dict) -> None:
        s = self._stage
        if "dmtet.sdf" in state["params"]:
            from .representations.nerf import NerfModel

            color = NerfModel.create(nerf_spec(s.cfg), device=s.device)
            model = dmtet_model(s.cfg, color, device=s.device)
            trainer = FineTrainer(model, s.cfg, int(s.cfg.seed or 0), s.coarse.trainer.background)
            trainer.load_state_dict(state)
            s.fine = FineStage(s.cfg, s.prior, s.ref, s.distill, model, trainer, coarse_steps(s.cfg))
        else:
            s.fine = None
            s.coarse.trainer.load_state_dict(state)


class Magic3DStage:
    """Coarse NeRF then fine DMTet behind stage 1's interface (``step``, ``run``, ``model``,
    ``trainer``, ``distill``, ``step_count``, ``last``)."""

    def __init__(self, cfg: Config, prior, ref=None, device: torch.device | str = "cpu"):
        self.cfg, self.prior, self.ref = cfg, prior, ref
        self.device = torch.device(device)
        self.coarse = NerfStage1(coarse_config(cfg), prior, ref, device)
        self.distill = self.coarse.distill
        self.fine: FineStage | None = None
        self.trainer = PhasedTrainer(self)
        self.step_cost: Callable[[int], float] = lambda k: 1.0

    @property
    def model(self):
        return self.fine.model if self.fine is not None else self.coarse.model

    @property
    def step_count(self) -> int:
        return self.trainer.step_count

    @property
    def last(self) -> dict:
        return self.fine.last if self.fine is not None else self.coarse.last

    @property
    def stage(self) -> str:
        return "fine" if self.fine is not None else "coarse"

    def step(self) -> bool:
        if self.fine is None and self.step_count < coarse_steps(self.cfg):
            return self.coarse.step()
        if self.fine is None:
            model, trainer = start_fine(self.cfg, self.coarse)
            self.fine = FineStage(self.cfg, self.prior, self.ref, self.distill, model, trainer, self.step_count)
        return self.fine.step()

    def run(self, callback: Callable[["Magic3DStage"], None] | None = None, progress: bool = True):
        s1 = self.cfg.stage1
        with Progress("stage 1 (Magic3D: NeRF, then DMTet)", s1.iters, "steps", initial=self.step_count,
                      enabled=progress) as bar:
            while self.step_count < s1.iters:
                self.step()
                bar.update(1, f"{self.stage} loss {self.last.get('loss', math.nan):.4g}")
                if callback is not None:
                    callback(self)
        return self.model.detach()


def fine_step_seconds(stage: Magic3DStage, steps: int = 3) -> float:
    """Mean wall time of ``steps`` fine steps (after one warm-up), for the GPU benchmark."""
    import time

    stage.step()
    if stage.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        stage.step()
    if stage.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps

