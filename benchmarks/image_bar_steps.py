"""How many steps does each start need to reach the image-mode bar? (issue 19, the silhouette start)

The image-mode bar is issue 3's (tests/test_quality.py): from one input view, the oracle prior,
stage 1 at 64 px for 400 steps, the Gaussians' mean PSNR over 8 held-out cameras at 64 px is at
least 24 dB. This script runs that test's stage 1 (the same overrides, the input rendered the same
way: the asset from elevation 0, azimuth 0, 256 px, over black, un-premultiplied) with each start,
and scores the same 8 held-out views every ``--every`` steps. "reach": the first step whose mean
reaches ``--bar`` dB; issue 19 asks the silhouette start to reach it within 60 % of the steps.
One JSON line per run into ``--out``; ``--table`` prints the runs as a table.

    python benchmarks/image_bar_steps.py --assets house --starts ball silhouette --seeds 0 1 2 \\
        --out outputs/image_bar_steps.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_quality import STAGE1  # noqa: E402  (the bar's stage 1; device and backend set from --device below)

BAR_OVERRIDES = [*STAGE1, "stage1.ref_size=128", "elevation=0"]  # test_image_mode_oracle_reaches_24db_from_one_view
INPUT_SIZE = 256  # the test renders its input at 256 px
STARTS = {"ball": [], "silhouette": ["gaussians.init=silhouette"]}


def table(paths: list[str], bar: float) -> str:
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    out = ["| asset | seed | start | final mean PSNR (dB) | first step at or above the bar | of | share |",
           "|---" * 7 + "|"]
    for r in sorted(rows, key=lambda r: (r["asset"], r["seed"], r["start"])):
        reach = next((k for k, v in r["curve"] if v >= bar), None)
        share = f"{100 * reach / r['iters']:.0f} %" if reach is not None else "—"
        out.append(f"| {r['asset']} | {r['seed']} | {r['start']} | {r['curve'][-1][1]:.2f} | "
                   f"{reach if reach is not None else 'never'} | {r['iters']} | {share} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", nargs="+", default=["house"])
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--bar", type=float, default=24.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="outputs/image_bar_steps.jsonl")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print the results of earlier runs as a table")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table, args.bar))
        return

    from dreamgs.bench import input_image, load_truth
    from dreamgs.config import load_config
    from dreamgs.evaluate import asset_views, gaussian_views, heldout_cameras, psnr_per_view
    from dreamgs.images import input_view
    from dreamgs.pipeline import _reference, seed_everything
    from dreamgs.priors import load_prior
    from dreamgs.stage1 import Stage1, resolve_device

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    backend = "torch" if device.type == "cpu" else "auto"
    for asset in args.assets:
        truth = load_truth(asset)
        image = None
        for seed in args.seeds:
            for start in args.starts:
                cfg = load_config("image", None, [*BAR_OVERRIDES, f"device={args.device}", f"backend={backend}",
                                                  f"seed={seed}", f"prior.asset={asset}", *STARTS[start],
                                                  *args.overrides])
                if image is None:  # per asset: the test's input (from the front at eye level, un-premultiplied),
                    # its 8 held-out cameras and the truth there
                    name = f"bar_input_{asset.replace(':', '').replace('/', '_')}.png"
                    image = input_image(truth, cfg, out.parent / name, size=INPUT_SIZE)
                    cams = heldout_cameras(cfg, 8, 64)
                    gt = asset_views(truth, cams)
                cfg.image = str(image)
                seed_everything(seed)
                rgba = torch.as_tensor(input_view(cfg.image, size=cfg.stage1.ref_size,
                                                  recenter=cfg.image_recenter)).float()
                ref, ref_image = _reference(rgba, cfg, device)
                prior = load_prior(cfg, device, ref_image)
                t0 = time.perf_counter()
                st = Stage1(cfg, prior, ref, device)

                def score(m):  # the test's figure: the mean of the 8 views' PSNR
                    return round(float(np.mean(psnr_per_view(gaussian_views(m.detach(), cams), gt))), 3)

                curve = [[0, score(st.model)]]

                def cb(s):
                    if s.step_count % args.every == 0 or s.step_count == cfg.stage1.iters:
                        curve.append([s.step_count, score(s.model)])

                st.run(callback=cb, progress=False)
                row = {"asset": asset, "seed": seed, "start": start, "iters": cfg.stage1.iters,
                       "overrides": list(args.overrides), "seconds": round(time.perf_counter() - t0, 1),
                       "curve": curve}
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                reach = next((k for k, v in curve if v >= args.bar), None)
                print(f"{asset} seed {seed} {start}: final {curve[-1][1]:.2f} dB, reaches {args.bar} dB at "
                      f"{reach if reach is not None else 'never'} of {cfg.stage1.iters}", flush=True)


if __name__ == "__main__":
    main()
