"""Time one SDS step (VAE encode with gradient, guided UNet, backward) and one SDEdit refine of
a real prior, e.g. on the random full-size folders from ``full_size_models.py``::

    python benchmarks/full_size_models.py --out /tmp/sd21 --which sd
    python benchmarks/prior_speed.py --model /tmp/sd21 --kind sd --batch 1 4
    python benchmarks/full_size_models.py --out /tmp/z123 --which zero123
    python benchmarks/prior_speed.py --model /tmp/z123 --kind zero123 --batch 1 4

Prints load time, then per batch size the median milliseconds of ``sds`` + ``backward`` and of
``refine(strength=0.5, steps=4)``, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import make_cameras  # noqa: E402
from dreamgs.priors.sd import StableDiffusionPrior  # noqa: E402
from dreamgs.priors.zero123 import Zero123Prior  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="hub id or diffusers folder")
    ap.add_argument("--kind", choices=["sd", "zero123", "stable-zero123"], default="sd")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--resolution", type=int, default=0, help="prior resolution (0 = native)")
    ap.add_argument("--render-size", type=int, default=512, help="size of the rendered images fed to sds")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    start = time.perf_counter()
    if args.kind == "sd":
        prior = StableDiffusionPrior(args.model, prompt="a photo of a hamburger", device=device, dtype=args.dtype,
                                     resolution=args.resolution, seed=0)
    else:
        ref = torch.ones(1, 3, 256, 256)
        ref[:, :, 64:192, 64:192] = torch.rand(1, 3, 128, 128)
        prior = Zero123Prior(args.model, ref_image=ref, stable=args.kind == "stable-zero123", device=device,
                             dtype=args.dtype, resolution=args.resolution, seed=0)
    _sync(device)
    print(f"{prior.describe()} on {device}, {prior.dtype}: loaded in {time.perf_counter() - start:.1f} s")

    for batch in args.batch:
        cams = make_cameras(torch.linspace(-30, 20, batch), torch.linspace(-180, 150, batch), 2.5, 49.1,
                            args.render_size, device=device)
        images = torch.rand(batch, 3, args.render_size, args.render_size, device=device, requires_grad=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def sds_step():
            images.grad = None
            prior.sds(images, cams, 0.5).backward()

        sds_ms = _median_ms(sds_step, device, args.iters, args.warmup)
        refine_ms = _median_ms(lambda: prior.refine(images.detach(), cams, 0.5, 4), device,
                               max(1, args.iters // 2), 1)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"batch {batch}: sds+backward {sds_ms:.1f} ms, refine(0.5, 4 steps) {refine_ms:.1f} ms, "
              f"peak {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
