"""Why does a near-correct start not speed stage 1 up? (issue 19) Stage 1 with the text/image oracle at
CI size, instrumented every ``--every`` steps: the 8-view held-out masked PSNR (as gsgen_parts.py's
curve), the mean centre-to-surface distance (% of the diagonal; all and opacity-weighted), the count,
the mean opacity, the median largest scale, the fraction of centres within 2 % of the diagonal of
the surface, the position learning rate and the last densification's counts. One JSON line per run.

    OMP_NUM_THREADS=1 python benchmarks/start_probe.py --asset mug --start noisy --out outputs/probe.jsonl \\
        gaussians.init_opacity=0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asset", default="mug")
    ap.add_argument("--start", default="ball", help="ball | noisy | silhouette (image mode)")
    ap.add_argument("--mode", choices=("text", "image"), default="text")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "ci_size.yaml"))
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--iters", type=int, default=0, help="stop after this many steps (0: the config's)")
    ap.add_argument("--label", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/probe.jsonl")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from dreamgs.bench import load_truth, surface_cloud
    from dreamgs.config import load_config
    from dreamgs.evaluate import gaussian_rgba_views, heldout_cameras, mesh_rgba_views, outer_surface_samples, \
        view_scores
    from dreamgs.metrics import nearest_distances
    from dreamgs.priors import load_prior
    from dreamgs.stage1 import Stage1

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = load_truth(args.asset)
    surface = outer_surface_samples(truth, 20000, torch.Generator().manual_seed(0))
    lo, hi = truth.bounds()
    diag = float((hi - lo).norm())
    ov = []
    if args.start == "noisy":
        name = f"cloud_{args.asset.replace(':', '')}_{args.seed}.npy"
        cloud = surface_cloud(truth, out.parent / name, args.seed, colour_noise=None)
        ov = [f"gaussians.init=points:{cloud}", "gaussians.init_colors=grey"]
    elif args.start == "silhouette":
        ov = ["gaussians.init=silhouette"]
    cfg = load_config(args.mode, args.config, ["prior.kind=oracle", f"prior.asset={args.asset}", "prompt=an object",
                                               f"seed={args.seed}", "device=cpu", *ov, *args.overrides])
    cams = heldout_cameras(cfg, 24, 64, seed=0)
    gt_rgb, gt_alpha = mesh_rgba_views(truth, cams)
    ref, ref_image = None, None
    if args.mode == "image":
        from dreamgs.bench import input_image
        from dreamgs.media import load_image
        from dreamgs.pipeline import _reference

        path = input_image(truth, cfg, out.parent / f"input_{args.asset.replace(':', '')}.png")
        ref, ref_image = _reference(torch.as_tensor(load_image(path)).float(), cfg, "cpu")
    prior = load_prior(cfg, "cpu", ref_image)
    t0 = time.perf_counter()
    st = Stage1(cfg, prior, ref, "cpu")
    rows = []

    def probe(s):
        k = s.step_count
        if k % args.every and k != cfg.stage1.iters:
            return
        m = s.model.detach()
        rgb, a = gaussian_rgba_views(m, cams[:8])
        p = view_scores(rgb, a, gt_rgb[:8], gt_alpha[:8])["psnr_masked"]
        d = nearest_distances(m.means.cpu(), surface).double()
        w = m.opacities.cpu().double()
        row = {"step": k, "psnr8": round(p, 3), "dist": round(float(100 * d.mean() / diag), 3),
               "dist_w": round(float(100 * (w * d).sum() / w.sum() / diag), 3), "n": len(m),
               "opacity": round(float(w.mean()), 4), "scale_med": round(float(m.scales.amax(-1).median()), 4),
               "near": round(float((100 * d / diag < 2).double().mean()), 3),
               "lr_pos": round(next(g["lr"] for g in s.trainer.optimizer.param_groups if g["name"] == "means"), 6),
               "dens": dict(s.trainer.last_densify)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    probe(st)
    iters = args.iters or cfg.stage1.iters
    while st.step_count < iters:
        st.step()
        probe(st)
    rec = {"asset": args.asset, "seed": args.seed, "mode": args.mode, "start": args.start, "label": args.label,
           "overrides": args.overrides, "seconds": round(time.perf_counter() - t0, 1), "curve": rows}
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
