"""Time one stage-1 distillation step with each rule (``prior.distill=sds|vsd|ism``) on a real
prior, e.g. the random full-size SD 2.1-base from ``full_size_models.py``::

    python benchmarks/full_size_models.py --out /tmp/models/sd --which sd --device cuda
    python benchmarks/distill_speed.py --model /tmp/models/sd

For each rule a fresh prior is loaded with the run's default speed options (CUDA graphs, channels
last, matmul VAE attention) and its rule built as stage 1 builds it; a step is the rule's loss on
``--batch`` renders of ``--size`` px (requiring grad) and its backward to the renders: SDS (encode,
guided UNet pair), VSD (that, plus one LoRA training step and the LoRA's prediction), ISM (that,
plus the DDIM inversion's unconditional UNet calls). Prints per rule the median milliseconds over
``--iters`` steps after ``--warmup``, the ratio to SDS and the peak CUDA memory of the steps; one
JSON line at the end. ``--cpu`` runs it on the CPU as a smoke test, e.g. with a tiny model folder at its size::

    python benchmarks/distill_speed.py --model TINY_SD --cpu --size 32 --resolution 32 --set prior.dtype=fp32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import make_cameras  # noqa: E402
from dreamgs.config import load_config  # noqa: E402
from dreamgs.priors import load_prior  # noqa: E402
from dreamgs.priors.distill import build_rule  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rule(rule: str, args, device: torch.device) -> dict:
    over = ["prompt=a hamburger", f"prior.model={args.model}", f"prior.distill={rule}", f"device={device}", "seed=0",
            *args.set]
    if args.resolution:
        over.append(f"prior.resolution={args.resolution}")
    cfg = load_config("text", overrides=over)
    prior = load_prior(cfg, device)
    step_rule = build_rule(cfg, prior)
    g = torch.Generator().manual_seed(0)
    cams = make_cameras([0.0] * args.batch, [30.0 * k for k in range(args.batch)], 2.5, 49.1, args.size)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)

    def step():
        x = images.clone().requires_grad_(True)
        step_rule(x, cams, 0.5).backward()

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(1000.0 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out = {"rule": rule, "ms": statistics.median(times), "peak_gib": peak, "guidance": prior.guidance_scale}
    del step_rule, prior
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="SD folder (diffusers layout)")
    ap.add_argument("--rules", nargs="+", default=["sds", "vsd", "ism"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=512, help="render size in pixels")
    ap.add_argument("--resolution", type=int, default=0, help="prior.resolution (0: native)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = ap.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device), "torch", torch.__version__)
    rows = [time_rule(r, args, device) for r in args.rules]
    base = next((r["ms"] for r in rows if r["rule"] == "sds"), None)
    for r in rows:
        r["x_sds"] = r["ms"] / base if base else None
        ratio = f", {r['x_sds']:.2f}x SDS" if base else ""
        peak = f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        print(f"{r['rule']}: {r['ms']:.1f} ms per step (batch {args.batch}, {args.size} px, guidance "
              f"{r['guidance']:g}){ratio}{peak}")
    print(json.dumps({"batch": args.batch, "size": args.size, "device": str(device), "rows": rows}))


if __name__ == "__main__":
    main()
