"""Speed of a real prior's building blocks under each speed option, side by side, e.g. on the
random full-size folders from ``full_size_models.py``::

    python benchmarks/full_size_models.py --out /tmp/sd21 --which sd
    python benchmarks/prior_speed.py --model /tmp/sd21 --kind sd
    python benchmarks/full_size_models.py --out /tmp/z123 --which zero123
    python benchmarks/prior_speed.py --model /tmp/z123 --kind zero123
    python benchmarks/full_size_models.py --out /tmp/mvdream --which mvdream
    python benchmarks/prior_speed.py --model /tmp/mvdream --kind mvdream --batch 4

MVDream's batch counts views: it must be a multiple of 4 (groups at azimuths a, a+90, a+180,
a+270 with one elevation, as stage 1 renders them), at its native 256 px; ``--batch 4`` is one
4-view SDS step, to set beside SD's ``--batch 1`` at 512 px.

The prior is loaded once and each variant of ``--variants`` (``eager`` = plain fp16 as the
reference code runs it, or a '+'-joined set of ``prior.optimize`` options, e.g.
``cuda_graphs+vae_matmul_attention``) is set with ``prior.optimize``. For each it prints the seconds of the
first UNet call and VAE forward + backward (compilation, graph capture, autotuning), then the
median milliseconds of: the guided UNet call (the CFG pair in one batch), the VAE
encoder forward + backward, a whole SDS step (encode, UNet, backward to the images) and an SDEdit
refine (``strength`` 0.2, 5 DDIM steps, as stage 2 does), and the relative difference of the SDS
image gradient and the refined images from the eager ones on the same inputs and noise.
``--profile`` prints the CUDA kernels that take the VAE encoder's forward + backward time, eager
and with matrix-multiply attention.
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
from dreamgs.priors.mvdream import VIEWS, MVDreamPrior  # noqa: E402
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
    if args.kind == "mvdream":
        return MVDreamPrior(args.model, prompt="a photo of a hamburger", device=device, dtype=args.dtype,
                            resolution=args.resolution, seed=0)
    if args.kind == "sd":
        return StableDiffusionPrior(args.model, prompt="a photo of a hamburger", device=device, dtype=args.dtype,
                                    resolution=args.resolution, seed=0)
    ref = torch.ones(1, 3, 256, 256)
    ref[:, :, 64:192, 64:192] = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return Zero123Prior(args.model, ref_image=ref, stable=args.kind == "stable-zero123", device=device,
                        dtype=args.dtype, resolution=args.resolution, seed=0)


def measure(prior, batch: int, size: int, device, iters: int, warmup: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    views = getattr(prior, "views_per_sample", 1)
    groups = batch // views
    elevation = torch.linspace(-30, 20, groups).repeat_interleave(views)
    azimuth = (torch.linspace(-170, 150, groups)[:, None] + torch.arange(views) * (360 / views)).reshape(-1)
    cams = make_cameras(elevation, (azimuth + 180) % 360 - 180, 2.5, 49.1, size, device=device)
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

    start = time.perf_counter()
    unet()
    vae()
    _sync(device)
    first_s = time.perf_counter() - start
    times = {"first_s": first_s, "unet_cfg": median_ms(unet, device, iters, warmup),
             "vae_fwd_bwd": median_ms(vae, device, iters, warmup), "sds_step": median_ms(sds, device, iters, warmup),
             "refine": median_ms(refine, device, max(1, iters // 2), 1)}
    sds()
    outputs = {"sds_grad": images.grad.detach().clone(), "refine": refine()}
    return times, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="hub id or diffusers folder")
    ap.add_argument("--kind", choices=["sd", "zero123", "stable-zero123", "mvdream"], default="sd")
    ap.add_argument("--cpu", action="store_true", help="smoke test on the CPU")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--resolution", type=int, default=0, help="prior resolution (0: native)")
    ap.add_argument("--render-size", type=int, default=0, help="rendered image size (0: the prior's resolution)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["eager", "channels_last", "cuda_graphs"],
                    help="each a '+'-joined set of prior.optimize options: channels_last, cuda_graphs, "
                         "compile, vae_matmul_attention; or eager")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.kind == "mvdream" and any(b % VIEWS for b in args.batch):
        ap.error(f"--kind mvdream: --batch counts views and must be a multiple of {VIEWS}")

    start = time.perf_counter()
    prior = load(args, device)
    _sync(device)
    print(f"{prior.describe()} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"{prior.dtype}: loaded in {time.perf_counter() - start:.1f} s", flush=True)
    size = args.render_size or prior.resolution
    if args.profile and device.type == "cuda":
        profile_vae(prior, size, device)
        profile_vae(prior, size, device, vae_matmul_attention=True)
    rows = []
    for batch in args.batch:
        ref_out = None
        for name in args.variants:
            opts = {o: True for o in name.split("+") if o != "eager"}
            if device.type != "cuda" and "cuda_graphs" in opts:
                continue
            prior.optimize(**opts)
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
    print(f"\n| prior | batch | variant | first call s | UNet CFG ms | VAE fwd+bwd ms | SDS step ms | refine ms | "
          f"SDS grad diff | refine diff | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['batch']} | {r['variant']} | {r['first_s']:.1f} | {r['unet_cfg']:.2f} | "
              f"{r['vae_fwd_bwd']:.2f} | {r['sds_step']:.2f} | {r['refine']:.1f} | {r['sds_grad_rel_diff']:.1e} | "
              f"{r['refine_rel_diff']:.1e} | {r['peak_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def profile_vae(prior, size: int, device, **opts) -> None:
    """The kernels of one VAE encoder forward + backward, grouped by name, by CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    prior.optimize(**opts)
    images = torch.rand(1, 3, size, size, device=device, requires_grad=True)

    def step():
        images.grad = None
        prior.encode_images(images).float().square().mean().backward()
    for _ in range(3):
        step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        _sync(device)
    groups: dict[str, float] = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0)
        if ev.device_type.name != "CUDA" or t <= 0:
            continue
        n = ev.key.lower()
        kind = ("attention" if "fmha" in n or "attention" in n or "flash" in n or "softmax" in n
                else "layout transposes (cuDNN NCHW <-> NHWC)" if "nchwtonhwc" in n or "nhwctonchw" in n
                else "convolution" if any(k in n for k in ("conv", "implicit_gemm", "xmma", "cudnn"))
                else "group norm" if any(k in n for k in ("moments", "groupnorm", "group_norm", "computeinternal"))
                else "matmul (cuBLAS)" if "gemm" in n or "cutlass" in n
                else "elementwise (SiLU, add, scale, cast)" if "elementwise" in n or "vectorized" in n
                else "other")
        groups[kind] = groups.get(kind, 0.0) + t / 5 / 1000
    total = sum(groups.values())
    print(f"VAE encoder forward + backward at {size}^2 {opts or 'eager'}, kernel time per call: {total:.2f} ms")
    for kind, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:40s} {ms:7.2f} ms  {100 * ms / total:5.1f}%")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
