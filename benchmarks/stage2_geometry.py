"""Stage 2 with and without geometry refinement (``stage2.geometry``, issue 17) on the same
stage-1 Gaussians, scored like ``dreamgs bench`` scores a run.

    python benchmarks/stage2_geometry.py --assets dev --seeds 0 1 --config benchmarks/ci_size.yaml \\
        --variants off on "lr3e-3:stage2.geometry_lr=0.003" --out outputs/geometry

For each asset and seed: stage 1 once (the bench's text-mode job: the asset's oracle, the config,
the seed), then stage 2 and the exports once per variant from that run folder (``dreamgs mesh``'s
path), and the bench's scores of each exported ``model.glb`` at its held-out cameras (masked
PSNR, PSNR, Chamfer % of the diagonal, ...). A variant is ``NAME[:KEY=VALUE,...]``; ``off`` and
``on`` are ``stage2.geometry=false`` / ``true`` with the defaults. Rows go to ``OUT/rows.jsonl``
as they finish (a rerun skips rows already there); ``--table`` prints the markdown summary.
This shares stage 1 between the variants, so it costs about half of two ``dreamgs bench`` runs
and the variants differ only in stage 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, _, rest = spec.partition(":")
    ov = [o for o in rest.split(",") if o]
    if name == "off":
        return name, ["stage2.geometry=false", *ov]
    return name, ["stage2.geometry=true", *ov]


def run(args) -> None:
    from dreamgs.bench import Job, job_config, make_truth, resolve_assets, score_mesh
    from dreamgs.mesh.io import load_mesh
    from dreamgs.pipeline import generate, mesh_from

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["asset"], r["seed"], r["variant"]))
    variants = [parse_variant(v) for v in args.variants]
    for asset in resolve_assets(args.assets):
        truth = None
        for seed in args.seeds:
            todo = [(n, ov) for n, ov in variants if (asset, seed, n) not in done]
            if not todo:
                continue
            slug = asset.replace(":", "")
            job = Job("dreamgaussian", "text", "standard", asset, seed, [f"device={args.device}"],
                      out / f"{slug}-s{seed}", args.device, args.config)
            cfg, ov = job_config(job)
            if truth is None:
                truth = make_truth(asset, cfg, 24, 64)
            stage1_dir = job.run_dir / "stage1"
            if not (stage1_dir / "model.ply").is_file():
                t0 = time.perf_counter()
                generate(f"a {asset}" if asset.isalpha() else "an object", overrides=ov + ["stage2.enabled=false"],
                         config=args.config, seed=seed, run_dir=stage1_dir, progress=False)
                print(f"{asset} seed {seed}: stage 1 {time.perf_counter() - t0:.0f} s", flush=True)
            for name, vov in todo:
                t0 = time.perf_counter()
                res = mesh_from(stage1_dir, overrides=["stage2.enabled=true", "export.video=false", *vov],
                                out_dir=job.run_dir / name, progress=False)
                seconds = time.perf_counter() - t0
                mesh = load_mesh(res.files["glb"])
                scores = {k: v for k, v in score_mesh(mesh, truth).items() if not k.startswith("_")}
                row = {"asset": asset, "seed": seed, "variant": name, "overrides": vov, "seconds": seconds,
                       "faces": mesh.num_faces, "refine_s": res.summary["timings_s"].get("stage2_refine"), **scores}
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{asset} seed {seed} {name}: masked PSNR {row['psnr_masked']:.2f} dB, PSNR {row['psnr']:.2f} dB, "
                      f"Chamfer {row['chamfer_pct']:.3f}%, {seconds:.0f} s", flush=True)


def table(paths: list[str]) -> None:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    keys = [("psnr_masked", "masked PSNR (dB)"), ("psnr", "PSNR (dB)"), ("chamfer_pct", "Chamfer (% diag)")]

    def ms(v):
        return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    print("| variant | overrides | " + " | ".join(t for _, t in keys) + " | stage 2 + export (s) | n |")
    print("|---" * (len(keys) + 4) + "|")
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        print(f"| {v} | {' '.join(rs[0]['overrides'])} | " + " | ".join(ms([r[k] for r in rs]) for k, _ in keys)
              + f" | {statistics.fmean(r['seconds'] for r in rs):.0f} | {len(rs)} |")
    if "off" in variants:
        print("\nPaired differences against `off` (same asset and seed), mean ± std, and wins:")
        base = {(r["asset"], r["seed"]): r for r in rows if r["variant"] == "off"}
        for v in variants:
            if v == "off":
                continue
            pairs = [(r, base[(r["asset"], r["seed"])]) for r in rows if r["variant"] == v and (r["asset"], r["seed"]) in base]
            if not pairs:
                continue
            parts = []
            for k, t in keys:
                d = [a[k] - b[k] for a, b in pairs]
                better = sum((x < 0) if k == "chamfer_pct" else (x > 0) for x in d)
                parts.append(f"{t} {ms(d)} ({better}/{len(d)} better)")
            print(f"- {v}: " + "; ".join(parts))
        print("\n| asset | seed | " + " | ".join(f"{v} Chamfer / masked PSNR" for v in variants) + " |")
        print("|---" * (len(variants) + 2) + "|")
        for (a, s) in sorted(base):
            cells = []
            for v in variants:
                r = next((r for r in rows if r["variant"] == v and r["asset"] == a and r["seed"] == s), None)
                cells.append(f"{r['chamfer_pct']:.3f} / {r['psnr_masked']:.2f}" if r else "—")
            print(f"| {a} | {s} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", nargs="+", default=["dev"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--config", default="benchmarks/ci_size.yaml")
    ap.add_argument("--variants", nargs="+", default=["off", "on"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="outputs/geometry")
    ap.add_argument("--table", nargs="*", help="print the summary of these rows.jsonl files and exit")
    args = ap.parse_args()
    if args.table is not None:
        table(args.table or [str(Path(args.out) / "rows.jsonl")])
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args)


if __name__ == "__main__":
    main()
