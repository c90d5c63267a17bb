"""CPU speed of the pure-torch rasteriser: screen tiles against a dense renderer (issue 14).

    python benchmarks/cpu_render.py [--counts 5000 50000] [--sizes 128 256 512] [--tiles 8 16]
                                    [--repeat 3] [--threads N] [--dense-max 1e8]

For every Gaussian count and image size it times, with one camera per call,

- ``renders/s``: forward only (under ``torch.no_grad``),
- ``fwd+bwd/s``: forward and the backward pass of a loss on colour, alpha and depth,

for the tile renderer (``rasterize_torch`` at each ``--tiles`` size) and for a dense renderer
that applies the same rules with every projected Gaussian composited at every pixel (no tiles,
no culling beyond projection; pixels are processed in chunks so memory stays bounded). Dense
cases with more than ``--dense-max`` (pixel x Gaussian) pairs are skipped and reported with a
time estimated from the per-pair cost of the largest dense case that ran (the dense cost is
linear in the number of pairs). Tile times are the median of ``--repeat`` runs after one warm-up
run; dense times are single runs.

The scene is DreamGaussian-like: means uniform in a ball of radius 0.5, per-axis scales
log-uniform in [0.005, 0.05], random rotations, opacities uniform in [0.1, 0.9]; one camera at
radius 2.5, elevation -15 deg, azimuth 30 deg, fovy 49.1 deg (``make_cameras``). Times are the
median of ``--repeat`` runs after one warm-up run. The tile and dense images are compared as a
sanity check (max abs difference, printed in the table).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import make_cameras  # noqa: E402
from dreamgs.render import RenderOutput, composite, project_gaussians, rasterize_torch  # noqa: E402


def dreamgaussian_scene(n: int, seed: int = 0):
    """Means, quats, scales, opacities, colours of a DreamGaussian-like object (float32)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    means = d * 0.5 * torch.rand(n, 1, generator=g).pow(1.0 / 3.0)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(math.log(0.005) + torch.rand(n, 3, generator=g) * math.log(10.0))
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


def rasterize_dense(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg,
                    near_plane=0.01, far_plane=1e10, eps2d=0.3, max_elements: int = 1 << 24
                    ) -> RenderOutput:
    """The tile renderer's rules with no tiles: every projected Gaussian at every pixel.

    Gaussians that survive projection (``valid``) are sorted by depth once per camera and
    composited at all pixels, a band of about ``max_elements // K`` pixels (whole rows) at a time.
    """
    C = viewmats.shape[0]
    dev, dt = means.device, means.dtype
    means2d, conics, depths, _, valid = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    if colors.dim() == 2:
        colors = colors[None].expand(C, -1, -1)
    px = torch.arange(width, device=dev, dtype=dt)[None] + 0.5  # (1, W): every column
    py_all = torch.arange(height, device=dev, dtype=dt) + 0.5
    imgs, trans = [], []
    for c in range(C):
        idx = torch.nonzero(valid[c]).squeeze(1)
        idx = idx[torch.argsort(depths[c, idx].detach(), stable=True)]
        K = max(1, idx.numel())
        xy, con = means2d[c, idx][None], conics[c, idx][None]
        op = opacities.expand(C, -1)[c, idx][None]
        feat = torch.cat([colors[c, idx], depths[c, idx, None]], dim=-1)[None]
        rows = max(1, max_elements // (K * width))  # image rows per composite call
        vals, ts = [], []
        for r in range(0, height, rows):
            v, t = composite(xy, con, op, feat, px, py_all[None, r:r + rows])
            vals.append(v[0])
            ts.append(t[0])
        imgs.append(torch.cat(vals).reshape(height, width, -1))
        trans.append(torch.cat(ts).reshape(height, width, 1))
    img, T = torch.stack(imgs), torch.stack(trans)
    D = colors.shape[-1]
    rgb = img[..., :D] + T * bg[:, None, None, :D]
    return RenderOutput(rgb, 1.0 - T, img[..., D:D + 1], means2d, valid)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def case(n: int, size: int, tiles: list[int], repeat: int, dense_max: float, dense_cost: dict) -> list[dict]:
    means, quats, scales, opac, colors = dreamgaussian_scene(n)
    cams = make_cameras(-15.0, 30.0, 2.5, 49.1, size)
    bg = torch.ones(1, 3)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, size, size, 5, generator=g)
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]

    def run(fn, backward: bool):
        if not backward:
            with torch.no_grad():
                return fn(*params, cams.viewmats, cams.Ks, size, size, bg)
        out = fn(*params, cams.viewmats, cams.Ks, size, size, bg)
        loss = ((out.rgb * w[..., :3]).sum() + (out.alpha * w[..., 3:4]).sum()
                + 0.1 * (out.depth * w[..., 4:5]).sum())
        loss.backward()
        for p in params:
            p.grad = None
        return out

    rows = []
    ref = None
    for ts in tiles:
        fn = lambda *a, ts=ts: rasterize_torch(*a, tile_size=ts)  # noqa: E731
        out = run(fn, False)  # also the warm-up
        ref = out.rgb if ref is None else ref
        rows.append({"n": n, "size": size, "renderer": f"tiles {ts}",
                     "fwd": timed(lambda: run(fn, False), repeat),
                     "fwd_bwd": timed(lambda: run(fn, True), repeat),
                     "diff": float((out.rgb - ref).abs().max())})
    with torch.no_grad():
        _, _, _, _, valid = project_gaussians(means, quats, scales, opac, cams.viewmats, cams.Ks, size, size)
    pairs = float(valid.sum()) * size * size
    if pairs <= dense_max:
        t0 = time.perf_counter()
        out = run(rasterize_dense, False)  # slow enough to need no warm-up: timed once
        r = {"n": n, "size": size, "renderer": "dense", "fwd": time.perf_counter() - t0,
             "fwd_bwd": timed(lambda: run(rasterize_dense, True), 1),
             "diff": float((out.rgb - ref).abs().max()) if ref is not None else float("nan")}
        if pairs >= dense_cost.get("pairs", 0):
            dense_cost.update(pairs=pairs, fwd=r["fwd"] / pairs, fwd_bwd=r["fwd_bwd"] / pairs)
    else:
        r = {"n": n, "size": size, "renderer": "dense", "skipped": True, "pairs": pairs}
    rows.append(r)
    return rows


def fmt_rate(t: float) -> str:
    r = 1.0 / t
    return f"{r:.1f}" if r >= 10 else f"{r:.3g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--tiles", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--dense-max", type=float, default=1e8,
                    help="skip dense cases with more (pixel x Gaussian) pairs than this")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    dense_cost: dict = {}
    rows = []
    for n in args.counts:
        for size in args.sizes:
            t0 = time.perf_counter()
            new = case(n, size, args.tiles, args.repeat, args.dense_max, dense_cost)
            rows += new
            print(f"  {n} Gaussians {size}²: {time.perf_counter() - t0:.1f} s; " + "; ".join(
                f"{r['renderer']} " + ("skipped" if r.get("skipped") else f"fwd {r['fwd'] * 1e3:.0f} ms, fwd+bwd {r['fwd_bwd'] * 1e3:.0f} ms")
                for r in new), file=sys.stderr, flush=True)
    print("\n| Gaussians | size | renderer | renders/s | fwd+bwd/s | fwd+bwd ms | speed-up vs dense (fwd+bwd) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.counts:
        for size in args.sizes:
            group = [r for r in rows if r["n"] == n and r["size"] == size]
            dense = next(r for r in group if r["renderer"] == "dense")
            if dense.get("skipped") and dense_cost:
                dense["est_fwd"] = dense["pairs"] * dense_cost["fwd"]
                dense["est_fwd_bwd"] = dense["pairs"] * dense_cost["fwd_bwd"]
            d_fb = dense.get("fwd_bwd", dense.get("est_fwd_bwd"))
            for r in group:
                if r.get("skipped"):
                    est = (f"skipped, est. {fmt_rate(r['est_fwd'])} | skipped, est. {fmt_rate(r['est_fwd_bwd'])} | "
                           f"~{r['est_fwd_bwd'] * 1e3:.0f}" if "est_fwd" in r else "skipped | skipped | –")
                    print(f"| {n:,} | {size}² | dense | {est} | 1 | – |")
                    continue
                sp = f"{d_fb / r['fwd_bwd']:.0f}×" if d_fb else "–"
                if dense.get("skipped") and d_fb and r["renderer"] != "dense":
                    sp = "~" + sp
                print(f"| {n:,} | {size}² | {r['renderer']} | {fmt_rate(r['fwd'])} | {fmt_rate(r['fwd_bwd'])} | "
                      f"{r['fwd_bwd'] * 1e3:.0f} | {sp} | {r['diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
