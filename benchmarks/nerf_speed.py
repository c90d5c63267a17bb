"""Time DreamFusion's stage-1 step (``method=dreamfusion``): the NeRF render (forward and
backward) alone, and whole steps with a prior, e.g. the random full-size SD 2.1-base from
``full_size_models.py`` on the GPU::

    python benchmarks/full_size_models.py --out /tmp/models/sd --which sd --device cuda
    python benchmarks/nerf_speed.py --model /tmp/models/sd --device cuda --field gpu
    python benchmarks/nerf_speed.py --device cpu --prior oracle --steps 10      # the CPU preset

``--field cpu`` is the default field (6 levels to 96, mostly dense); ``--field gpu`` an
instant-NGP-sized hash grid (16 levels, 16 -> 2048, 2^19 entries, 2 features). Prints the
median milliseconds of each, after ``--warmup`` steps, with the shading modes as drawn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.config import load_config  # noqa: E402
from dreamgs.priors import load_prior  # noqa: E402
from dreamgs.stage1 import sample_training_cameras  # noqa: E402
from dreamgs.stage1_nerf import NerfStage1  # noqa: E402

FIELDS = {"cpu": [], "gpu": ["nerf.levels=16", "nerf.base_resolution=16", "nerf.max_resolution=2048",
                             "nerf.log2_table=19", "nerf.features=2", "nerf.hidden=64", "nerf.occ_resolution=64"]}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prior", default="sd", help="sd (with --model) or oracle")
    ap.add_argument("--model", default="", help="diffusers folder of the prior (sd)")
    ap.add_argument("--field", choices=tuple(FIELDS), default="cpu")
    ap.add_argument("--size", type=int, default=64, help="render size (DreamFusion: 64)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    ov = ["method=dreamfusion", f"prior.kind={args.prior}", f"device={args.device}",
          f"stage1.render_sizes=[{args.size}]", "stage1.size_milestones=[]", "stage1.iters=100000",
          "nerf.ambient_only_fraction=0", *FIELDS[args.field]]
    if args.model:
        ov.append(f"prior.model={args.model}")
    if args.prior == "oracle":
        ov.append("prior.asset=mug")
    cfg = load_config("text", None, ov)
    cfg.prompt, cfg.seed = "a ceramic mug", 0
    prior = load_prior(cfg, device)
    stage = NerfStage1(cfg, prior, None, device)
    print(f"field {args.field}: {len(stage.model)} parameters, levels {stage.model.spec.resolutions()}; "
          f"prior {prior.describe()}; {args.size} px renders on {device}")
    for _ in range(args.warmup):
        stage.step()
    step_ms, render_ms = [], []
    for _ in range(args.steps):
        _sync(device)
        t = time.perf_counter()
        stage.step()
        _sync(device)
        step_ms.append(1000 * (time.perf_counter() - t))
    gen = torch.Generator().manual_seed(1)
    n = cfg.nerf
    for _ in range(args.steps):
        cams = sample_training_cameras(cfg, 1, args.size, device, gen)
        _sync(device)
        t = time.perf_counter()
        out = stage.model.render(cams, torch.ones(3, device=device), shading="lambertian",
                                 light=cams.centers.cpu(), samples=n.samples, generator=gen,
                                 occupancy_threshold=n.occ_threshold)
        (out.rgb.mean() + out.orient).backward()
        _sync(device)
        render_ms.append(1000 * (time.perf_counter() - t))
    print(f"whole step (render + SDS + losses + Adam): median {statistics.median(step_ms):.1f} ms")
    print(f"render alone (Lambertian with normals, forward + backward): median {statistics.median(render_ms):.1f} ms")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
