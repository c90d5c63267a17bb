"""GPU check of the Gaussian renderers: torch vs gsplat parity, and gsplat throughput.

Run on a CUDA machine (see docs/benchmarks.md for the exact command used):

    python benchmarks/gpu_render.py [--quick]

Parity: the same random scenes rendered by both backends, the torch rasteriser at each of
``--tiles`` (default: 8 and 16, which include the default ``render.TILE_SIZE``); relative L2 error
``|a - b| / |b|`` of colour, alpha and depth, and of the gradients of a fixed random loss with
respect to every input. Throughput: renders per second and forward+backward per second for
5k, 50k and 500k Gaussians at 256^2 and 512^2 (one camera per call, median of CUDA-event timings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import orbit_views  # noqa: E402
from dreamgs.render import TILE_SIZE, _render_gsplat, rasterize_torch  # noqa: E402


def random_scene(n: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.0
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.rand(n, 3, generator=g) * 1.5 - 5.0)  # 0.007 .. 0.03
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    return [t.to(device) for t in (means, quats, scales, opac, colors)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def parity(n: int, size: int, n_cams: int, seed: int, device, tiles=(8, 16)) -> list[dict]:
    """One row per torch tile size: its relative errors against gsplat, images and gradients."""
    inputs = [t.requires_grad_(True) for t in random_scene(n, seed, device)]
    cams = orbit_views(n_cams, -20.0, 2.0, 49.1, size, device=device)
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    g = torch.Generator().manual_seed(seed + 2)
    w_rgb = torch.randn(n_cams, size, size, 3, generator=g).to(device)
    w_a = torch.randn(n_cams, size, size, 1, generator=g).to(device)
    w_d = torch.randn(n_cams, size, size, 1, generator=g).to(device)
    kwargs = dict(near_plane=0.01, far_plane=1e10, eps2d=0.3)

    def run(fn, **kw):
        out = fn(*inputs, cams.viewmats, cams.Ks, size, size, bg, **kwargs, **kw)
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + (out.depth * w_d).sum() * 0.1
        return (out.rgb.detach(), out.alpha.detach(), out.depth.detach()), torch.autograd.grad(loss, inputs)

    ref_out, ref_grads = run(_render_gsplat)
    rows = []
    for ts in tiles:
        out, grads = run(rasterize_torch, tile_size=ts)
        res = {"n": n, "size": size, "cams": n_cams, "tile": ts, "coverage": float(out[1].mean())}
        for i, k in enumerate(("rgb", "alpha", "depth")):
            res[k] = rel(ref_out[i], out[i])
        for k, ga, gb in zip(("means", "quats", "scales", "opacities", "colors"), ref_grads, grads):
            res[f"grad_{k}"] = rel(ga, gb)
        rows.append(res)
    return rows


def bench(fn, warmup=3, reps=20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2] / 1000.0


def throughput(n: int, size: int, device) -> dict:
    inputs = [t.requires_grad_(True) for t in random_scene(n, 0, device)]
    cams = orbit_views(1, -20.0, 2.0, 49.1, size, device=device)
    bg = torch.ones(1, 3, device=device)

    def fwd():
        with torch.no_grad():
            _render_gsplat(*inputs, cams.viewmats, cams.Ks, size, size, bg, 0.01, 1e10, 0.3)

    def fwd_bwd():
        out = _render_gsplat(*inputs, cams.viewmats, cams.Ks, size, size, bg, 0.01, 1e10, 0.3)
        out.rgb.square().mean().backward()

    return {"n": n, "size": size, "render_per_s": 1.0 / bench(fwd), "fwd_bwd_per_s": 1.0 / bench(fwd_bwd)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--tiles", type=int, nargs="+", default=sorted({8, 16, TILE_SIZE}),
                    help="tile sizes of the torch rasteriser to check against gsplat")
    args = ap.parse_args()
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    cases = [(2000, 64, 2, 0), (20000, 128, 2, 1), (50000, 256, 1, 2)] if not args.quick else [(2000, 64, 2, 0)]
    par = [r for c in cases for r in parity(*c, device=device, tiles=args.tiles)]
    keys = ["rgb", "alpha", "depth", "grad_means", "grad_quats", "grad_scales", "grad_opacities", "grad_colors"]
    print(f"\nParity (relative L2 error, gsplat vs torch backend; default tile size {TILE_SIZE}):")
    print("| Gaussians | size | cams | torch tile | coverage | " + " | ".join(keys) + " |")
    print("|" + "---|" * (5 + len(keys)))
    for r in par:
        print(f"| {r['n']} | {r['size']} | {r['cams']} | {r['tile']} | {r['coverage']:.2f} | "
              + " | ".join(f"{r[k]:.1e}" for k in keys) + " |")
    worst = max(max(r[k] for k in ("rgb", "alpha", "depth")) for r in par)
    worst_g = max(max(r[k] for k in keys if k.startswith("grad_")) for r in par)
    print(f"worst image error {worst:.2e} ({'PASS' if worst < 1e-3 else 'FAIL'} < 1e-3)")
    print(f"worst gradient error {worst_g:.2e} ({'PASS' if worst_g < 1e-3 else 'FAIL'} < 1e-3)")
    thr = []
    if not args.quick:
        for n in (5_000, 50_000, 500_000):
            for size in (256, 512):
                thr.append(throughput(n, size, device))
        print("\ngsplat throughput (1 camera per call):")
        print("| Gaussians | size | renders/s | fwd+bwd/s |")
        print("|---|---|---|---|")
        for r in thr:
            print(f"| {r['n']:,} | {r['size']}² | {r['render_per_s']:.0f} | {r['fwd_bwd_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"parity": par, "throughput": thr}, indent=2))
    ok = worst < 1e-3 and worst_g < 1e-3 and all(math.isfinite(v) for r in par for v in r.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
