"""Stage 1 for a NeRF (DreamFusion): score distillation on shaded volume renders.

Each step draws ``stage1.batch_size`` cameras as stage 1 does (:func:`dreamgs.stage1.step_cameras`),
a shading mode (:func:`~dreamgs.representations.nerf.choose_shading`: albedo only for the first
``nerf.ambient_only_fraction`` of training, then albedo / textureless / Lambertian with
DreamFusion's probabilities) and point lights near the cameras, renders the field over a random
white-or-black background (or the background MLP), and adds to the prior's SDS loss the
orientation loss (its weight ramped up linearly), the sparsity and the opaque-background losses,
the distortion loss of the rays' weights (``nerf.lambda_distortion``, optionally normalised per
ray and ramped up) and the empty-space loss (``nerf.lambda_empty``: the opacity of random points in
cells the occupancy grid skips, which renders never see).
In image mode the input view is also rendered (albedo, white background) and compared with the
input as in stage 1. The occupancy grid is refreshed every ``nerf.occ_every`` steps.

:class:`NerfTrainer` has the state-dict format of :class:`dreamgs.train.GaussianTrainer` (named
parameters, one Adam group each), so checkpoints and ``dreamgs resume`` work unchanged.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .checkpoint import global_rng_state, set_global_rng_state
from .config import Config
from .errors import TrainingError
from .priors.base import Prior
from .progress import Progress
from .representations.nerf import (BackgroundMLP, NerfModel, NerfSpec, choose_shading, opaque_loss,
                                   sample_lights, sparsity_loss)
from .train import finite_and_floats


def linear_ramp(progress: float, fraction: float, start: float = 0.0) -> float:
    """A loss weight's ramp: 0 for the first ``start`` of training, then rising linearly from 0 to 1
    over the next ``fraction`` (``progress`` in [0, 1]); a step from 0 to 1 when ``fraction`` is 0."""
    if progress < start:
        return 0.0
    return min(1.0, (progress - start) / fraction) if fraction > 0 else 1.0


def nerf_spec(cfg: Config) -> NerfSpec:
    n = cfg.nerf
    return NerfSpec(bound=n.bound, levels=n.levels, base_resolution=n.base_resolution,
                    max_resolution=n.max_resolution, features=n.features, log2_table=n.log2_table,
                    hidden=n.hidden, blob_scale=n.blob_scale, blob_std=n.blob_std, occ_resolution=n.occ_resolution,
                    density_activation=n.density_activation)


class NerfTrainer:
    """Adam over the field's (and the background MLP's) named tensors, with the non-finite guard."""

    representation = "nerf"

    def __init__(self, model: NerfModel, cfg: Config, seed: int, background: BackgroundMLP | None = None):
        self.model, self.cfg, self.background = model, cfg, background
        self.generator = torch.Generator().manual_seed(seed)  # cameras, shading, lights, samples
        self.step_count = 0
        self.bad_steps = 0
        self.max_bad_steps = cfg.stage1.max_bad_steps
        self.last_report: dict[str, float] = {}
        self.optimizer = self._optimizer()

    def tensors(self) -> dict[str, Tensor]:
        return {**self.model.params, **(self.background.params if self.background else {})}

    def _optimizer(self) -> torch.optim.Adam:
        n = self.cfg.nerf
        groups = self.model.param_groups(n.lr_grid, n.lr_mlp)
        if self.background is not None:
            groups += [{"params": [p], "name": k, "lr": n.lr_mlp} for k, p in self.background.params.items()]
        return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)

    def step(self, loss: Tensor, report: dict[str, Tensor] | None = None) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad for p in self.tensors().values() if p.grad is not None]
        names = list(report or {})
        ok, vals = finite_and_floats([loss, *grads], [report[k] for k in names])
        self.last_report = dict(zip(names, vals))
        self.step_count += 1
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            if self.bad_steps > self.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} steps had a non-finite loss or gradient (limit {self.max_bad_steps}); "
                    "training diverged. Try a lower learning rate (nerf.lr_grid) or guidance scale.")
            return False
        self.optimizer.step()
        return True

    # -- checkpoint state (GaussianTrainer's format) ------------------------------------------------

    def state_dict(self) -> dict:
        names = {id(g["params"][0]): g["name"] for g in self.optimizer.param_groups}
        opt_state = {names[id(p)]: dict(st) for p, st in self.optimizer.state.items()}
        params = {k: v.detach().clone() for k, v in self.tensors().items()}
        params["occupancy"] = self.model.occupancy.clone()
        return {
            "representation": "nerf",
            "params": params,
            "sh_degree": 0,
            "optimizer": opt_state,
            "lrs": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
            "stats": {"grad_sum": torch.zeros(0), "count": torch.zeros(0)},
            "generator": self.generator.get_state(),
            "step": self.step_count,
            "bad_steps": self.bad_steps,
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        dev = self.model.device
        params = dict(state["params"])
        self.model.occupancy = params.pop("occupancy").to(dev)
        mine = self.tensors()
        if sorted(params) != sorted(mine) or any(params[k].shape != mine[k].shape for k in params):
            raise ValueError("the checkpoint's NeRF tensors do not match nerf.* in its config")
        for k, v in params.items():
            target = self.background.params if k.startswith("bg.") else self.model.params
            target[k] = v.to(dev).requires_grad_(True)
        self.optimizer = self._optimizer()
        for g in self.optimizer.param_groups:
            g["lr"] = state["lrs"][g["name"]]
            st = state["optimizer"].get(g["name"])
            if st:
                self.optimizer.state[g["params"][0]] = {
                    k: (v.to(dev) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in st.items()}
        self.generator.set_state(state["generator"])
        self.step_count = state["step"]
        self.bad_steps = state["bad_steps"]
        set_global_rng_state(state["rng"])


class NerfStage1:
    """DreamFusion's optimisation, one :meth:`step` at a time (the interface of :class:`dreamgs.stage1.Stage1`)."""

    def __init__(self, cfg: Config, prior: Prior, ref=None, device: torch.device | str = "cpu",
                 init: NerfModel | None = None, distill=None):
        from .priors.distill import build_rule

        self.cfg, self.prior, self.ref = cfg, prior, ref
        self.distill = distill if distill is not None else build_rule(cfg, prior)  # prior.distill: sds, vsd, ism
        self.device = torch.device(device)
        seed = int(cfg.seed or 0)
        g = torch.Generator().manual_seed(seed)
        self.model = (init or NerfModel.create(nerf_spec(cfg), generator=g)).to(self.device)
        bg = BackgroundMLP(generator=g, device=self.device) if cfg.nerf.background == "mlp" else None
        self.trainer = NerfTrainer(self.model, cfg, seed, bg)
        self.last: dict[str, float] = {}
        self.step_cost: Callable[[int], float] = lambda k: 1.0

    @property
    def step_count(self) -> int:
        return self.trainer.step_count

    def step(self) -> bool:
        from .fit import reference_loss
        from .stage1 import render_size, step_cameras

        cfg, s1, n = self.cfg, self.cfg.stage1, self.cfg.nerf
        step = self.trainer.step_count
        progress = step / max(1, s1.iters)
        gen = self.trainer.generator
        if step % n.occ_every == 0:
            self.model.update_occupancy(gen)
        size = render_size(cfg, step)
        cams = step_cameras(cfg, self.prior, s1.batch_size, size, self.device, gen, relative=self.ref is not None)
        views = len(cams) // s1.batch_size
        white = (torch.rand(s1.batch_size, generator=gen) < s1.white_background_prob).repeat_interleave(views)
        bg = white.float()[:, None].expand(-1, 3).to(self.device)
        shading = choose_shading(step, int(n.ambient_only_fraction * s1.iters), n.albedo_prob, n.textureless_prob,
                                 gen)
        lights = sample_lights(cams, n.light_distance_range, n.light_perturb, gen)
        bg_fn = self.trainer.background
        out = self.model.render(cams, bg, shading=shading, light=lights, samples=n.samples, generator=gen,
                                occupancy_threshold=n.occ_threshold, ambient=n.ambient, diffuse=n.diffuse,
                                normals=shading != "albedo", bg_fn=bg_fn,
                                distortion=None if n.lambda_distortion == 0 else
                                "normalised" if n.distortion_normalise else "plain", orient=n.orient_weights)
        images = out.images()
        loss_sds = self.distill(images.clamp(0.0, 1.0) if s1.clamp_render else images, cams, progress)
        orient_weight = n.lambda_orient * linear_ramp(progress, n.orient_warmup, n.orient_start)
        loss = s1.lambda_sds * loss_sds + orient_weight * out.orient
        report = {"sds": loss_sds, "orient": out.orient, "facing_away": out.facing_away}
        if n.lambda_sparsity > 0:
            loss = loss + n.lambda_sparsity * sparsity_loss(out.alpha)
        if n.lambda_opaque > 0:
            loss = loss + n.lambda_opaque * opaque_loss(out.alpha)
        if n.lambda_empty > 0:
            report["empty"] = self.model.empty_space_alpha(n.empty_points, n.occ_threshold, n.samples, gen).mean()
            loss = loss + n.lambda_empty * report["empty"]
        if n.lambda_distortion > 0:
            loss = loss + n.lambda_distortion * linear_ramp(progress, n.distortion_warmup) * out.distortion
            report["distortion"] = out.distortion
        if self.ref is not None and step % max(1, s1.ref_every) == 0:
            white3 = torch.ones(1, 3, device=self.device)
            r = self.model.render(self.ref.cams.resized(size).to(self.device), white3, samples=n.samples,
                                  generator=gen, occupancy_threshold=n.occ_threshold, normals=False)
            target = torch.nn.functional.interpolate(self.ref.rgba.permute(2, 0, 1)[None], (size, size),
                                                     mode="bilinear", antialias=True, align_corners=False)
            l_rgb, l_mask = reference_loss(r, target.permute(0, 2, 3, 1), white3)
            warm = min(1.0, (step + 1) / max(1.0, s1.warmup_fraction * s1.iters))
            loss = loss + warm * (s1.lambda_rgb * l_rgb + s1.lambda_mask * l_mask)
            report.update(rgb=l_rgb, mask=l_mask)
        report["loss"] = loss
        ok = self.trainer.step(loss, report)
        self.last = dict(self.trainer.last_report, shading=shading)
        return ok

    def run(self, callback: Callable[["NerfStage1"], None] | None = None, progress: bool = True) -> NerfModel:
        s1 = self.cfg.stage1
        with Progress("stage 1 (NeRF)", s1.iters, "steps", initial=self.step_count, enabled=progress) as bar:
            while self.step_count < s1.iters:
                self.step()
                bar.update(1, f"loss {self.last.get('loss', math.nan):.4g}")
                if callback is not None:
                    callback(self)
        return self.model.detach()
