"""Do GSGen's parts help DreamGaussian's stage 1? (issue 19) Stage 1 only, against the oracle's truth.

For each asset and variant: stage 1 with the oracle prior (text mode, the CI-size config by default),
then the held-out PSNR of the Gaussians (24 held-out cameras at 64 px, as the bench scores) and the
mean distance from the Gaussian centres to the true outer surface (all centres, and weighted by
opacity); along the way the held-out masked PSNR on 8 of the cameras every ``--curve-every`` steps,
for the "steps to reach the ball's final PSNR" question. One JSON line per run into ``--out``.

Variants (config overrides on top of ``--config``):

- ``ball``: the default start and settings (DreamGaussian);
- ``points``: the 3D point prior in GSGen's geometry stage (the first 2/15 of the steps);
- ``points_all``: the 3D point prior throughout;
- ``points_all_t03``, ``points_all_t01``: ... with timesteps below 0.3 T or 0.1 T only (the
  per-point oracle's pull at large t is towards the centroid of the surface);
- ``points_t01``: the geometry-stage point prior with timesteps below 0.1 T;
- ``compact``: compactness densification instead of the gradient rule;
- ``both_densify``: gradient then compactness densification (GSGen's legacy mode);
- ``noisy_points``: start from 4096 points on the true surface with Gaussian noise (std 0.02)
  and grey colours (a stand-in for a 3D prior's point cloud), grown as GaussianDreamer does, and
  trained as the point starts are by default (init.start_learning_rates, init.start_timestep_range);
- ``noisy_points_ball_rates``: the same start trained as the ball is (its rates, t up to prior.t_max);
- ``noisy_points_colour5``: ``noisy_points`` with 5 times the colour rate at first;
- ``coloured_points``, ``coloured_points_ball_rates``: the same cloud with colours, as a 3D prior
  outputs them (each point the true surface colour plus Gaussian noise of std 0.1 per channel),
  trained as the point starts are by default, or as the ball is;
- ``silhouette`` (``--mode image``): the input's mask lifted into a slab of points;
- ``gsgen``: GSGen's recipe at CI size (benchmarks/gsgen_ci_size.yaml: the geometry stage with the
  point prior, then gradient and compactness densification).

    OMP_NUM_THREADS=1 python benchmarks/gsgen_parts.py --assets mug gen:1000 --variants ball points \\
        --out outputs/gsgen_parts.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# a point start trained as the ball is: its rates, and diffusion times up to prior.t_max
BALL_RATES = ["gaussians.cloud_position_lr_scale=1", "gaussians.cloud_color_lr_scale=1", "gaussians.cloud_t_max=0"]
VARIANTS = {
    "ball": [],
    "points": ["points_prior.use=on", "stage1.geometry_fraction=0.1333"],
    "points_all": ["points_prior.use=on"],
    "points_all_t03": ["points_prior.use=on", "points_prior.t_max=0.3"],
    "points_all_t01": ["points_prior.use=on", "points_prior.t_max=0.1"],
    "points_t01": ["points_prior.use=on", "points_prior.t_max=0.1", "stage1.geometry_fraction=0.1333"],
    "compact": ["densify.mode=compactness"],
    "both_densify": ["densify.mode=both"],
    "noisy_points": ["gaussians.init=points:{cloud}", "gaussians.init_colors=grey"],
    "noisy_points_ball_rates": ["gaussians.init=points:{cloud}", "gaussians.init_colors=grey", *BALL_RATES],
    "noisy_points_colour5": ["gaussians.init=points:{cloud}", "gaussians.init_colors=grey",
                             "gaussians.cloud_color_lr_scale=5"],
    "coloured_points": ["gaussians.init=points:{coloured}"],
    "coloured_points_ball_rates": ["gaussians.init=points:{coloured}", *BALL_RATES],
    "gsgen": ["@gsgen"],
    "silhouette": ["gaussians.init=silhouette"],  # image mode only
}


def table(paths: list[str]) -> str:
    """Markdown: one row per asset and variant; "reach" is the first curve step at which the
    8-view masked PSNR reaches the ball's final 8-view figure on that asset (and mode)."""
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    ball = {(r.get("mode", "text"), r["asset"]): r["curve"][-1][1] for r in rows if r["variant"] == "ball"}
    out = ["| mode | asset | variant | masked PSNR (dB) | PSNR (dB) | centre→surface (% diag) | opacity-weighted (% diag) "
           "| Gaussians | reaches ball's final 8-view PSNR at step | time (s) |", "|---" * 10 + "|"]
    for r in rows:
        mode = r.get("mode", "text")
        target = ball.get((mode, r["asset"]))
        reach = next((k for k, v in r["curve"] if target is not None and v >= target), None)
        out.append(f"| {mode} | {r['asset']} | {r['variant']} | {r['psnr_masked']:.2f} | {r['psnr']:.2f} | "
                   f"{r['centre_dist_pct']:.2f} | {r['centre_dist_opacity_pct']:.2f} | {r['gaussians']} | "
                   f"{reach if reach is not None else 'never'} of {r['curve'][-1][0]} | {r['seconds']:.0f} |")
    return "\n".join(out)


def summary(paths: list[str]) -> str:
    """Markdown: one row per variant over every (mode, asset, seed) that has a ball run: the 24-view
    masked PSNR and its paired difference to the ball (mean ± standard error), the centre distance
    and its mean relative change, the mean 8-view curve, and in how many runs the curve reaches the
    ball's final 8-view figure by half the steps."""
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    key = lambda r: (r.get("mode", "text"), r["asset"], r.get("seed", 0))  # noqa: E731
    ball = {key(r): r for r in rows if r["variant"] == "ball"}
    out = ["| variant | runs | masked PSNR (dB) | − ball (dB) | centre→surface (% diag) | change | "
           "mean 8-view curve (step: dB) | reach the ball's final by half the steps |", "|---" * 8 + "|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [(r, ball[key(r)]) for r in rows if r["variant"] == variant and key(r) in ball]
        if not runs:
            continue
        dp = np.array([r["psnr_masked"] - b["psnr_masked"] for r, b in runs])
        change = np.mean([r["centre_dist_pct"] / b["centre_dist_pct"] - 1 for r, b in runs])
        se = dp.std(ddof=1) / np.sqrt(len(dp)) if len(dp) > 1 else float("nan")
        reach = sum(any(v >= b["curve"][-1][1] for k, v in r["curve"] if k <= r["curve"][-1][0] / 2) for r, b in runs)
        curve = np.mean([[v for _, v in r["curve"]] for r, _ in runs], 0)
        steps = [k for k, _ in runs[0][0]["curve"]]
        shown = ", ".join(f"{k}: {v:.2f}" for k, v in zip(steps, curve) if k % 100 == 0 or k == 50)
        out.append(f"| {variant} | {len(runs)} | {np.mean([r['psnr_masked'] for r, _ in runs]):.2f} | "
                   f"{dp.mean():+.2f} ± {se:.2f} | {np.mean([r['centre_dist_pct'] for r, _ in runs]):.2f} | "
                   f"{100 * change:+.0f} % | {shown} | {reach} of {len(runs)} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", nargs="+", default=["mug", "gen:1000"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "ci_size.yaml"),
                    help="a YAML preset, or 'default' for the mode's defaults (the full-size sizes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=("text", "image"), default="text")
    ap.add_argument("--curve-every", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="outputs/gsgen_parts.jsonl")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print the results of earlier runs as a table")
    ap.add_argument("--summary", nargs="+", metavar="JSONL", help="... as one row per variant over assets and seeds")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)
    if args.table or args.summary:
        print(table(args.table) if args.table else summary(args.summary))
        return

    from dreamgs.bench import load_truth, surface_cloud
    from dreamgs.config import load_config
    from dreamgs.evaluate import gaussian_rgba_views, heldout_cameras, mesh_rgba_views, outer_surface_samples, \
        view_scores
    from dreamgs.metrics import nearest_distances
    from dreamgs.priors import load_prior
    from dreamgs.stage1 import Stage1, resolve_device

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    for asset in args.assets:
        truth = load_truth(asset)
        surface = outer_surface_samples(truth, 20000, torch.Generator().manual_seed(0))
        lo, hi = truth.bounds()
        diag = float((hi - lo).norm())
        name = f"{asset.replace(':', '')}_s{args.seed}"
        cloud = coloured = None  # the 3D prior's stand-in (bench.surface_cloud), grey or with its colours
        if any("{cloud}" in o for v in args.variants for o in VARIANTS[v]):
            cloud = surface_cloud(truth, out.parent / f"cloud_{name}.npy", args.seed, colour_noise=None)
        if any("{coloured}" in o for v in args.variants for o in VARIANTS[v]):
            coloured = surface_cloud(truth, out.parent / f"cloud_{name}_rgb.npy", args.seed)
        for variant in args.variants:
            ov = [o.format(cloud=cloud, coloured=coloured) for o in VARIANTS[variant]]
            config = None if args.config == "default" else args.config
            if ov == ["@gsgen"]:  # the recipe at CI size (stage 2 is not run here)
                ov, config = [], str(ROOT / "benchmarks" / "gsgen_ci_size.yaml")
            cfg = load_config(args.mode, config, ["prior.kind=oracle", f"prior.asset={asset}", "prompt=an object",
                                               f"seed={args.seed}", f"device={args.device}", *ov, *args.overrides])
            cams = heldout_cameras(cfg, 24, 64, seed=0)
            gt_rgb, gt_alpha = mesh_rgba_views(truth, cams)
            ref, ref_image = None, None
            if args.mode == "image":  # the true asset from the input camera, as the bench's image mode
                from dreamgs.bench import input_image
                from dreamgs.media import load_image
                from dreamgs.pipeline import _reference

                path = input_image(truth, cfg, out.parent / f"input_{asset.replace(':', '')}.png")
                ref, ref_image = _reference(torch.as_tensor(load_image(path)).float(), cfg, device)
            prior = load_prior(cfg, device, ref_image)
            t0 = time.perf_counter()
            st = Stage1(cfg, prior, ref, device)
            curve = []

            def cb(s):
                k = s.step_count
                if k % args.curve_every == 0 or k == cfg.stage1.iters:
                    m = s.model.detach()
                    rgb, a = gaussian_rgba_views(m, cams[:8])
                    curve.append([k, round(view_scores(rgb, a, gt_rgb[:8], gt_alpha[:8])["psnr_masked"], 3)])

            rgb0, a0 = gaussian_rgba_views(st.model.detach(), cams[:8])
            curve.append([0, round(view_scores(rgb0, a0, gt_rgb[:8], gt_alpha[:8])["psnr_masked"], 3)])
            model = st.run(callback=cb, progress=False)
            seconds = time.perf_counter() - t0
            rgb, a = gaussian_rgba_views(model, cams)
            scores = view_scores(rgb, a, gt_rgb, gt_alpha)
            d = nearest_distances(model.means.detach().cpu(), surface)
            w = model.opacities.detach().cpu().double()
            row = {"mode": args.mode, "asset": asset, "variant": variant, "seed": args.seed, "overrides": ov,
                   "psnr": scores["psnr"], "psnr_masked": scores["psnr_masked"],
                   "centre_dist_pct": float(100 * d.mean() / diag),
                   "centre_dist_opacity_pct": float(100 * (w * d).sum() / w.sum() / diag),
                   "gaussians": len(model), "seconds": round(seconds, 1), "curve": curve}
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


if __name__ == "__main__":
    main()
