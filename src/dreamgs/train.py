"""The optimisation step shared by multi-view fitting and stage 1.

:class:`GaussianTrainer` owns a Gaussian model, its Adam optimiser, the learning-rate schedule,
densification statistics and schedule, and the guard against non-finite steps. Callers compute a
loss from renders and hand both to :meth:`GaussianTrainer.step`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checkpoint import global_rng_state, set_global_rng_state
from .config import DensifyConfig, GaussianConfig
from .errors import TrainingError
from .gaussians import DensifyStats, GaussianModel, densify_and_prune, densify_compactness, make_optimizer, \
    prune_gaussians, reset_opacity, update_learning_rate
from .render import RenderOutput


def densifies_at(d: DensifyConfig, step: int, densify_from: int = 0) -> bool:
    """Whether the update that brings the step count to ``step`` densifies (DreamGaussian's rule:
    ``start <= step < stop`` and ``step % interval == 0``; never before ``densify_from``)."""
    return d.enabled and max(d.start, densify_from) <= step < d.stop and step % d.interval == 0


def finite_and_floats(checked: list[Tensor], values: list[Tensor]) -> tuple[bool, list[float]]:
    """Whether every tensor in ``checked`` is finite, and the scalar tensors ``values`` as floats,
    read back from the device in one copy (in ``checked[0]``'s dtype), so a step waits once."""
    ref = checked[0]
    flag = torch.stack([torch.isfinite(t.detach()).all() for t in checked]).all()
    out = torch.stack([flag.to(ref.dtype)] + [v.detach().to(ref.device, ref.dtype).reshape(()) for v in values])
    ok, *floats = out.tolist()
    return bool(ok), floats


class GaussianTrainer:
    def __init__(self, model: GaussianModel, gcfg: GaussianConfig, dcfg: DensifyConfig, seed: int,
                 spatial_scale: float = 1.0, max_bad_steps: int = 20):
        self.model = model
        self.gcfg, self.dcfg = gcfg, dcfg
        self.spatial_scale = spatial_scale
        self.optimizer = make_optimizer(model, gcfg, spatial_scale)
        self.stats = DensifyStats.zeros(len(model), model.device)
        self.generator = torch.Generator().manual_seed(seed)  # cameras, backgrounds, splits
        self.step_count = 0
        self.bad_steps = 0
        self.max_bad_steps = max_bad_steps
        self.last_densify: dict[str, int] = {}
        self.densify_from = 0  # no densification before this step (stage 1 sets GSGen's geometry stage end)
        self.last_report: dict[str, float] = {}
        update_learning_rate(self.optimizer, 0, gcfg, spatial_scale)

    def step(self, loss: Tensor, renders: list[RenderOutput], report: dict[str, Tensor] | None = None) -> bool:
        """Backpropagate ``loss``, update the parameters and densify on schedule.

        Returns False (and changes nothing) when the loss or a gradient is not finite; after
        ``max_bad_steps`` such steps a :class:`TrainingError` is raised. ``report``: scalar
        tensors (losses) read back to the host together with the finiteness check, into
        :attr:`last_report` as floats, so a step waits for the device once.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad for p in self.model.params.values() if p.grad is not None]
        names = list(report or {})
        ok, vals = finite_and_floats([loss, *grads], [report[k] for k in names])
        self.last_report = dict(zip(names, vals))
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.step_count += 1
            if self.bad_steps > self.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} steps had a non-finite loss or gradient (limit {self.max_bad_steps}); "
                    "training diverged. Try a lower learning rate or guidance scale.")
            return False
        # DreamGaussian gathers statistics only from densify.start on (its step = step_count + 1).
        collect = self.dcfg.stats_before_start or self.step_count + 1 >= self.dcfg.start
        for r in renders if collect else ():
            if r.means2d.grad is not None:
                self.stats.add(r.means2d.grad, r.visible, r.rgb.shape[2], r.rgb.shape[1])
        self.optimizer.step()
        self.step_count += 1
        update_learning_rate(self.optimizer, self.step_count, self.gcfg, self.spatial_scale)
        d = self.dcfg
        s = self.step_count
        if densifies_at(d, s, self.densify_from):
            self.last_densify = {}
            if d.mode in ("grad", "both"):
                self.last_densify = densify_and_prune(self.model, self.optimizer, self.stats, d, self.generator)
            if d.mode in ("compactness", "both"):  # GSGen: after the gradient densification
                self.last_densify.update(densify_compactness(self.model, self.optimizer, d))
                if d.mode == "compactness":
                    self.last_densify["pruned"] = prune_gaussians(self.model, self.optimizer, d)
            self.stats = DensifyStats.zeros(len(self.model), self.model.device)
        if d.enabled and d.opacity_reset_interval and s % d.opacity_reset_interval == 0 and s < d.stop:
            reset_opacity(self.model, self.optimizer)
        return True

    # -- checkpoint state ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        names = {id(g["params"][0]): g["name"] for g in self.optimizer.param_groups}
        opt_state = {names[id(p)]: {k: v for k, v in st.items()} for p, st in self.optimizer.state.items()}
        return {
            "params": {k: v.detach().clone() for k, v in self.model.params.items()},
            "sh_degree": self.model.sh_degree,
            "optimizer": opt_state,
            "lrs": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
            "stats": {"grad_sum": self.stats.grad_sum.clone(), "count": self.stats.count.clone()},
            "generator": self.generator.get_state(),
            "step": self.step_count,
            "bad_steps": self.bad_steps,
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        dev = self.model.device
        self.model.params = {k: v.to(dev).requires_grad_(True) for k, v in state["params"].items()}
        self.model.sh_degree = state["sh_degree"]
        self.optimizer = make_optimizer(self.model, self.gcfg, self.spatial_scale)
        for g in self.optimizer.param_groups:
            g["lr"] = state["lrs"][g["name"]]
            st = state["optimizer"].get(g["name"])
            if st:
                # Adam keeps its scalar step on the CPU, except fused/capturable Adam (on the device).
                on_dev = bool(g.get("fused") or g.get("capturable"))
                self.optimizer.state[g["params"][0]] = {
                    k: (v.to(dev) if torch.is_tensor(v) and (v.dim() > 0 or on_dev) else v) for k, v in st.items()}
        self.stats = DensifyStats(state["stats"]["grad_sum"].to(dev), state["stats"]["count"].to(dev))
        self.generator.set_state(state["generator"])
        self.step_count = state["step"]
        self.bad_steps = state["bad_steps"]
        set_global_rng_state(state["rng"])
