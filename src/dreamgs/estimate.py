"""A rough forecast of how long a run takes on this device, for the first line a run prints.

Stage 1 depends on everything (device, load, prior, render sizes), so it is measured: :func:`probe`
takes a few real stage-1 steps at the smallest and at the largest render size still ahead, on a
throwaway copy of the Gaussians, with every random generator saved and restored (the run itself is
unchanged, bit for bit), and times the prior's share of a step (its SDS loss and gradient) and, when
stage 2 refines the texture, one call of the prior's refinement. The rest follows from a small cost
model, :func:`forecast`: the render share of a step at size s is interpolated between the two
measured sizes as a power of s (a step has fixed costs, so a 32 px step costs far more than 1/16 of
a 128 px one; with one size, 1.45 is assumed when extrapolating), and mesh extraction, unwrapping,
baking, texture steps and videos cost fixed multiples of R, the render share of a 128 px step per
view it renders, fitted to measured CPU runs of the oracle prior (``_K``). Densification's growth of
the model (:func:`gaussian_counts`) slows the renders down as it goes.

The forecast is given as a range (``about 3-5 min``); it aims to be within a factor of two.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from .config import Config

PROBE_STEPS = 4  # timed stage-1 steps (the first is a warm-up)
SIZE_EXPONENT = 1.45  # render cost ~ size^1.45 over a stage-1 run (fitted: 128 -> 256 -> 512 px steps)
# Densification multiplies the Gaussians by about GROWTH per round (measured on the README's oracle
# runs: x1.35-1.5 a round, 5000 -> 30k in text mode, -> 28k in image mode), up to the cap; a render
# costs ~ count^COUNT_EXPONENT (fixed costs and tiles shared: 175 against 65 ms a step at 29k
# against 6k Gaussians, text; 277 against 140 ms at 21k against 5k, image).
GROWTH = 1.45
COUNT_EXPONENT = 0.6
# Costs in units of R (see the module docstring), fitted on CPU runs (text, oracle prior, 100 steps).
_K = {
    "grid": 28.0,        # density grid, per (grid/128)^3 * (gaussians/5000)
    "faces_per_cell": 4.2,  # marching-cubes faces per grid_resolution^2, before decimation
    "unwrap": 5.2,       # xatlas, per 10k faces
    "bake_view": 4.8,    # per bake view at 512 px (scaled by size^1.45 and the Gaussian count)
    "refine_mesh": 1.3,  # mesh render + backward per texture step at 512 px (scaled by pixels)
    "video_frame": 2.0,  # Gaussian turntable, per frame at 512 px (scaled by size^1.45 and the count's cost)
    "mesh_frame": 1.6,   # mesh turntable (2x supersampled), per frame at 512 px (scaled by pixels); a guess
    "exports": 2.0,      # .ply, .glb, .obj/.png
}


@contextmanager
def _random_state_kept(prior) -> Iterator[None]:
    """Restore every random generator (global ones and the prior's) after the block."""
    from .checkpoint import prior_generators

    gens = prior_generators(prior)
    saved = {k: g.get_state() for k, g in gens.items()}
    cpu, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        for k, g in gens.items():
            g.set_state(saved[k])
        torch.set_rng_state(cpu)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _probe_step(cfg: Config, s1, d) -> int:
    """A step of the segment starting at ``s1`` whose update neither densifies nor resets opacity."""
    from .train import densifies_at

    s = s1
    for _ in range(64):
        n = s + 1
        busy = densifies_at(d, n) or (d.enabled and d.opacity_reset_interval and n % d.opacity_reset_interval == 0)
        if not busy:
            break
        s += 1
    return s


def probe(stage1, cfg: Config) -> dict:
    """Timings for :func:`forecast` (seconds): ``step_s``, {render size: one stage-1 step} at the
    smallest and the largest size still ahead; ``prior_s``, the prior's share of a step;
    ``refine_s``, one texture refinement by the prior. Leaves ``stage1`` and every random generator
    exactly as they were."""
    from .gaussians import GaussianModel
    from .stage1 import Stage1, render_size, step_cameras

    s1cfg = cfg.stage1
    start = min(stage1.step_count, s1cfg.iters - 1)
    ahead = {}  # render size -> first step at it, from ``start`` on
    for k in range(start, s1cfg.iters):
        ahead.setdefault(render_size(cfg, k), k)
    size = render_size(cfg, start)
    out: dict = {"size": size, "gaussians": len(stage1.model), "prior_s": 0.0, "refine_s": 0.0, "step_s": {}}
    device, prior = stage1.device, stage1.prior
    with _random_state_kept(prior):
        model = stage1.model
        params = {k: v.detach().clone() for k, v in model.params.items()}
        rule_state = stage1.distill.state_dict()  # VSD's LoRA / particles: put back after the probe steps
        copy = Stage1(cfg, prior, stage1.ref, device, init=GaussianModel(params, model.sh_degree),
                      distill=stage1.distill)
        for s in sorted({min(ahead), max(ahead)}):
            step = _probe_step(cfg, ahead[s], cfg.densify)
            times = []
            for _ in range(PROBE_STEPS):
                copy.trainer.step_count = step
                _sync(device)
                t0 = time.perf_counter()
                copy.step()
                _sync(device)
                times.append(time.perf_counter() - t0)
            # The first step pays one-off costs; of the others the fastest, as other processes come and go.
            out["step_s"][s] = min(times[1:] or times)
        del copy
        stage1.distill.load_state_dict(rule_state)
        gen = torch.Generator().manual_seed(0)
        cams = step_cameras(cfg, prior, s1cfg.batch_size, size, device, gen)
        images = torch.full((len(cams), 3, size, size), 0.5, device=device, requires_grad=True)
        t0 = time.perf_counter()
        stage1.distill(images, cams, start / max(1, s1cfg.iters)).backward()
        stage1.distill.load_state_dict(rule_state)
        _sync(device)
        out["prior_s"] = min(time.perf_counter() - t0, 0.9 * min(out["step_s"].values()))
        if cfg.stage2.enabled and cfg.stage2.iters > 0:
            rs = cfg.stage2.render_size
            cams = step_cameras(cfg, prior, cfg.stage2.batch_size, rs, device, gen)
            with torch.no_grad():
                t0 = time.perf_counter()
                prior.refine(torch.full((len(cams), 3, rs, rs), 0.5, device=device), cams, cfg.stage2.noise_start,
                             cfg.stage2.refine_steps)
                _sync(device)
                out["refine_s"] = time.perf_counter() - t0
    return out


def render_model(timings: dict) -> Callable[[int], float]:
    """Seconds of a stage-1 step's non-prior share at a render size, from :func:`probe`'s timings:
    a power of the size through the smallest and largest measured sizes (exponent 0-2), or
    ``SIZE_EXPONENT`` from the one measured size."""
    prior_s = timings["prior_s"]
    pts = sorted((s, max(t - prior_s, 0.1 * t)) for s, t in timings["step_s"].items())
    (s0, c0), (s1, c1) = pts[0], pts[-1]
    k = min(max(math.log(c1 / c0) / math.log(s1 / s0), 0.0), 2.0) if s1 > s0 else SIZE_EXPONENT
    return lambda size: c0 * (size / s0) ** k


def stage1_step_cost(cfg: Config, timings: dict, start_step: int = 0) -> tuple[Callable[[int], float], list[int]]:
    """Predicted seconds of stage-1 step k (from ``start_step`` on): the prior's share plus the render
    share at the step's size, slowed as the model grows (:func:`gaussian_counts`, also returned)."""
    from .stage1 import render_size

    render_s = render_model(timings)
    counts = gaussian_counts(cfg, max(1, timings["gaussians"]), start_step)

    def cost(k: int) -> float:
        c = counts[min(max(k - start_step, 0), len(counts) - 1)]
        return timings["prior_s"] + render_s(render_size(cfg, k)) * (c / counts[0]) ** COUNT_EXPONENT
    return cost, counts


def forecast(cfg: Config, timings: dict, start_step: int = 0, stage1_done: bool = False) -> dict[str, float]:
    """Predicted seconds of each phase still ahead, from :func:`probe`'s ``timings``."""
    s1, s2, tex, ex, m = cfg.stage1, cfg.stage2, cfg.texture, cfg.export, cfg.mesh
    # R: the render share of a 128 px step per view it renders (image mode renders the input view too)
    r = render_model(timings)(128) / (s1.batch_size + (cfg.mode == "image"))

    def at(size: int, exponent: float = SIZE_EXPONENT) -> float:
        return (size / 512) ** exponent

    cost, counts = stage1_step_cost(cfg, timings, start_step)
    n0 = counts[0]
    n = n0 if stage1_done else counts[-1]
    phases: dict[str, float] = {}
    if not stage1_done:
        phases["stage 1"] = sum(cost(k) for k in range(start_step, s1.iters))
    outputs = _K["exports"] * r
    if ex.video:
        outputs += ex.video_frames * _K["video_frame"] * r * at(ex.video_size) * (n / n0) ** COUNT_EXPONENT
    if s2.enabled:
        faces = _K["faces_per_cell"] * m.grid_resolution ** 2
        faces = min(faces, m.target_faces) if m.target_faces else faces
        phases["mesh"] = r * (_K["grid"] * (m.grid_resolution / 128) ** 3 * n / 5000 + _K["unwrap"] * faces / 1e4)
        phases["bake"] = r * tex.bake_views * _K["bake_view"] * at(tex.bake_resolution) * n / 5000
        if s2.iters > 0:
            phases["texture"] = s2.iters * (timings["refine_s"]
                                            + r * _K["refine_mesh"] * at(s2.render_size, 2) * s2.batch_size)
        if ex.video:
            outputs += ex.video_frames * _K["mesh_frame"] * r * at(ex.video_size, 2)
    phases["outputs"] = outputs
    return phases


def gaussian_counts(cfg: Config, n0: int, start_step: int = 0) -> list[int]:
    """The expected number of Gaussians at each stage-1 step from ``start_step`` on, starting from
    ``n0``: times :data:`GROWTH` after each densification round (the update of step s densifies
    when ``start <= s + 1 < stop`` and ``(s + 1) % interval == 0``), up to ``max_gaussians``."""
    from .train import densifies_at

    d, n, out = cfg.densify, float(n0), []
    for s in range(start_step, cfg.stage1.iters):
        out.append(int(n))
        if densifies_at(d, s + 1):
            n = max(n, min(float(d.max_gaussians), n * GROWTH))
    return out or [n0]


def describe(seconds: float) -> str:
    """``about 2-3 min``: a range around the estimate, rounded to what a person plans with."""
    lo, hi = seconds * 0.75, seconds * 1.35
    if hi < 90:
        step = 5 if hi < 30 else 10
        lo_s, hi_s = max(step, round(lo / step) * step), max(step, round(hi / step) * step)
        return f"about {lo_s}-{hi_s} s" if hi_s > lo_s else f"about {hi_s} s"
    if hi < 90 * 60:
        lo_m, hi_m = max(1, round(lo / 60)), max(1, round(hi / 60))
        return f"about {lo_m}-{hi_m} min" if hi_m > lo_m else f"about {hi_m} min"
    return f"about {lo / 3600:.1f}-{hi / 3600:.1f} h"


def announce(stage1, cfg: Config, device, elapsed: float, stage1_done: bool = False) -> str:
    """Probe, forecast and return the run's first line, e.g. ``dreamgs: text -> 3D on cpu, about 3-6 min
    in all (stage 1 ~2:23, then ~1:54, 0:13 so far)``. ``$DREAMGS_ESTIMATE_DEBUG`` also prints the
    probe's timings and the predicted phases."""
    from .progress import clock

    t0 = time.perf_counter()
    timings = probe(stage1, cfg)
    phases = forecast(cfg, timings, stage1.step_count, stage1_done)
    stage1.step_cost = stage1_step_cost(cfg, timings, stage1.step_count)[0]  # the bar's ETA
    if os.environ.get("DREAMGS_ESTIMATE_DEBUG"):
        print(f"estimate: probe {timings}, phases {phases}", file=sys.stderr)
    spent = elapsed + time.perf_counter() - t0
    total = spent + sum(phases.values())
    after = sum(v for k, v in phases.items() if k != "stage 1")
    parts = []
    if "stage 1" in phases:
        parts.append(f"stage 1 ~{clock(phases['stage 1'])}")
    if after > 0:
        parts.append(f"{'then' if parts else 'stage 2 and outputs'} ~{clock(after)}")
    parts.append(f"{clock(spent)} so far")
    what = "image" if cfg.mode == "image" else "text"
    return f"dreamgs: {what} -> 3D on {device}, {describe(total)} in all ({', '.join(parts)})"
