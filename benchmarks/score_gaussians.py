"""Score the Gaussians of finished runs (their ``model.ply``) against the true asset, as the bench
scores a ``model.glb``: masked PSNR at the bench's 24 held-out cameras of the run's own config,
and the Chamfer distance between the Gaussian centres (opacity above ``--min-opacity``) and the
true outer surface, in percent of its bounding-box diagonal. Issue 19's GSGen bar reads the
Gaussians themselves, which are GSGen's result::

    dreamgs bench --methods gsgen --assets kettle.glb --seeds 1 --out /tmp/b19k
    python benchmarks/score_gaussians.py /tmp/b19k/runs/gsgen-*-s0 --asset kettle.glb

Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.bench import load_truth  # noqa: E402
from dreamgs.config import load_config  # noqa: E402
from dreamgs.evaluate import gaussian_rgba_views, heldout_cameras, mesh_rgba_views, outer_surface_samples, \
    view_scores  # noqa: E402
from dreamgs.gaussians import load_ply  # noqa: E402
from dreamgs.metrics import chamfer_distance, nearest_distances  # noqa: E402


def score(run_dir: Path, truth, surface: torch.Tensor, diag: float, min_opacity: float) -> dict:
    cfg = load_config(config_file=run_dir / "config.yaml")
    model = load_ply(run_dir / "model.ply")
    cams = heldout_cameras(cfg, 24, 64, seed=0)
    gt_rgb, gt_alpha = mesh_rgba_views(truth, cams)
    rgb, alpha = gaussian_rgba_views(model, cams)
    scores = view_scores(rgb, alpha, gt_rgb, gt_alpha)
    centres = model.means.detach()[model.opacities.detach().reshape(-1) > min_opacity].double()
    return {"run": str(run_dir), "psnr": scores["psnr"], "psnr_masked": scores["psnr_masked"],
            "chamfer_centres_pct": 100 * chamfer_distance(centres, surface) / diag,
            "centre_to_surface_pct": float(100 * nearest_distances(centres, surface).mean() / diag),
            "gaussians": len(model), "scored_centres": len(centres)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (model.ply, config.yaml)")
    ap.add_argument("--asset", required=True, help="the true asset: a built-in name, gen:K or a mesh file")
    ap.add_argument("--min-opacity", type=float, default=0.5, help="centres of Gaussians above this opacity count")
    args = ap.parse_args()
    truth = load_truth(args.asset)
    surface = outer_surface_samples(truth, 20000, torch.Generator().manual_seed(0)).double()
    lo, hi = truth.bounds()
    diag = float((hi - lo).norm())
    for run in args.runs:
        print(json.dumps(score(run, truth, surface, diag, args.min_opacity)), flush=True)


if __name__ == "__main__":
    main()
