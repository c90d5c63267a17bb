"""Speed of a real prior's building blocks under each speed option, side by side, e.g. on the
random full-size folders from ``full_size_models.py``::

    python benchmarks/full_size_models.py --out /tmp/sd21 --which sd
    python benchmarks/prior_speed.py --model /tmp/sd21 --kind sd
    python benchmarks/full_size_models.py --out /tmp/z123 --which zero123
    python benchmarks/prior_speed.py --model /tmp/z123 --kind zero123

The prior is loaded once and the options are switched on one after another (``eager`` = plain
fp16 as the reference code runs it, then ``+channels_last``, then ``+cuda_graphs``). For each it
prints the median milliseconds of: the guided UNet call (the CFG pair in one batch), the VAE
encoder forward + backward, a whole SDS step (encode, UNet, backward to the images) and an SDEdit
refine (``strength`` 0.2, 5 DDIM steps, as stage 2 does), and the relative difference of the SDS
image gradient and the refined images from the eager ones on the same inputs and noise.
``--cpu`` runs the same on the CPU (no CUDA graphs) as a smoke test.
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
from dreamgs.priors.sd import StableDiffusionPrior  # noqa: E402
from dreamgs.priors.zero123 import Zero123Prior  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, iters: int, warmup: int) -> float:
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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def load(args, device):
    if args.kind == "sd":
        return StableDiffusionPrior(args.model, prompt="a photo of a hamburger", device=device, dtype=args.dtype,
                                    resolution=args.resolution, seed=0)
    ref = torch.ones(1, 3, 256, 256)
    ref[:, :, 64:192, 64:192] = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return Zero123Prior(args.model, ref_image=ref, stable=args.kind == "stable-zero123", device=device,
                        dtype=args.dtype, resolution=args.resolution, seed=0)


def measure(prior, batch: int, size: int, device, iters: int, warmup: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    cams = make_cameras(torch.linspace(-30, 20, batch), torch.linspace(-170, 150, batch), 2.5, 49.1, size,
                        device=device)
    images = torch.rand(batch, 3, size, size, generator=g).to(device).requires_grad_(True)
    with torch.no_grad():
        lat = prior.encode_images(images)
    noise = torch.randn(lat.shape, generator=g).to(device)
    cond = prior.condition(cams, batch)
    x_t = torch.randn(lat.shape, generator=g).to(device, prior.dtype)

    def unet():
        with torch.no_grad():
            prior.guided_eps(x_t, 500, cond)

    def vae():
        images.grad = None
        prior.encode_images(images).float().square().mean().backward()

    def sds():
        images.grad = None
        prior.sds(images, cams, 0.5, t=500, noise=noise).backward()

    def refine():
        return prior.refine(images.detach(), cams, 0.2, 5, noise=noise)

    times = {"unet_cfg": median_ms(unet, device, iters, warmup), "vae_fwd_bwd": median_ms(vae, device, iters, warmup),
             "sds_step": median_ms(sds, device, iters, warmup),
             "refine": median_ms(refine, device, max(1, iters // 2), 1)}
    sds()
    outputs = {"sds_grad": images.grad.detach().clone(), "refine": refine()}
    return times, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="hub id or diffusers folder")
    ap.add_argument("--kind", choices=["sd", "zero123", "stable-zero123"], default="sd")
    ap.add_argument("--cpu", action="store_true", help="smoke test on the CPU")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--resolution", type=int, default=0, help="prior resolution (0: native)")
    ap.add_argument("--render-size", type=int, default=0, help="rendered image size (0: the prior's resolution)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")

    start = time.perf_counter()
    prior = load(args, device)
    _sync(device)
    print(f"{prior.describe()} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{prior.dtype}: loaded in {time.perf_counter() - start:.1f} s", flush=True)
    size = args.render_size or prior.resolution
    variants = [("eager", {}), ("+channels_last", {"channels_last": True})]
    if device.type == "cuda":
        variants.append(("+cuda_graphs", {"cuda_graphs": True}))
    rows = []
    for batch in args.batch:
        ref_out = None
        for name, opts in variants:
            prior.optimize(**opts)  # options accumulate: each row adds one to the previous
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times, out = measure(prior, batch, size, device, args.iters, args.warmup)
            ref_out = ref_out or out
            row = {"kind": args.kind, "batch": batch, "variant": name, **times,
                   "sds_grad_rel_diff": rel(out["sds_grad"], ref_out["sds_grad"]),
                   "refine_rel_diff": rel(out["refine"], ref_out["refine"]),
                   "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}
            rows.append(row)
            print(json.dumps(row), flush=True)
        prior._unet_call = prior._encode_call = None  # next batch size starts eager again
        prior.unet = prior.unet.to(memory_format=torch.contiguous_format)
        prior.vae = prior.vae.to(memory_format=torch.contiguous_format)
    print(f"\n| prior | batch | variant | UNet CFG ms | VAE fwd+bwd ms | SDS step ms | refine ms | "
          f"SDS grad diff | refine diff | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['batch']} | {r['variant']} | {r['unet_cfg']:.2f} | {r['vae_fwd_bwd']:.2f} | "
              f"{r['sds_step']:.2f} | {r['refine']:.1f} | {r['sds_grad_rel_diff']:.1e} | {r['refine_rel_diff']:.1e} | "
              f"{r['peak_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
