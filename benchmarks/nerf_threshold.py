"""Stage 2 again on finished NeRF runs (``--method dreamfusion``) at other ``nerf.mesh_threshold``
values, each ``model.glb`` scored like the bench (24 held-out views at 64 px, Chamfer). Stage 1 is
not rerun: the field is read from each run's ``nerf.safetensors``. Stage 2's own randomness is
reseeded, so the figures at the run's own threshold differ from its bench row by the refinement's
noise (a few tenths of a dB), not by the threshold. Runs whose stage 2 failed (an empty mesh at
their threshold) are meshed again too.

    python benchmarks/nerf_threshold.py BENCH_DIR [BENCH_DIR ...] --thresholds 5 20 50 --out rows.jsonl
    python benchmarks/nerf_threshold.py --table rows.jsonl
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import yaml

from dreamgs.bench import make_truth, score_mesh
from dreamgs.config import from_dict
from dreamgs.errors import EmptyModelError
from dreamgs.mesh.io import load_mesh
from dreamgs.pipeline import mesh_from


def rescore(bench_dirs, thresholds, out: Path, device: str) -> None:
    done = set()
    if out.is_file():
        done = {(r["run_dir"], r["threshold"]) for r in map(json.loads, out.read_text().splitlines())}
    for bench_dir in bench_dirs:
        report = json.loads((Path(bench_dir) / "bench.json").read_text())
        for res in report["results"]:
            run = Path(res["run_dir"])
            if not (run / "nerf.safetensors").is_file():  # a run that failed in stage 1
                continue
            cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
            truth = None
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
            for t in thresholds:
                if (str(run), t) in done:
                    continue
                truth = truth or make_truth(res["asset"], cfg, 24, 64)
                t0 = time.perf_counter()
                row = {"bench": str(bench_dir), "run_dir": str(run), "asset": res["asset"], "seed": res["seed"],
                       "threshold": t, "normals_facing_away": summary.get("normals_facing_away")}
                overrides = [f"nerf.mesh_threshold={t}", "export.video=false", f"device={device}"]
                try:
                    made = mesh_from(run, overrides=overrides, out_dir=run.parent / f"{run.name}-t{t:g}",
                                     progress=False)
                    row.update({k: v for k, v in score_mesh(load_mesh(made.files["glb"]), truth).items()
                                if not k.startswith("_")})
                except EmptyModelError as e:  # no surface at this threshold: a result, as in the bench
                    row["failed"] = str(e)
                row["seconds"] = time.perf_counter() - t0
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{res['asset']} s{res['seed']} t{t:g}: " + (row.get("failed") or
                      f"masked PSNR {row['psnr_masked']:.2f} dB, Chamfer {row['chamfer_pct']:.2f} %, "
                      f"pose {row['pose_offset_deg']:+.0f}"), flush=True)


def table(paths) -> None:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()]
    groups = defaultdict(list)
    for r in rows:
        groups[(Path(r["bench"]).name, r["threshold"])].append(r)
    print("| bench | threshold | runs | masked PSNR (dB) | Chamfer (% diag) | facing away "
          "| per run: asset s seed PSNR / Chamfer |")
    print("|---|---|---|---|---|---|---|")
    for (b, t), rs in sorted(groups.items()):
        rs.sort(key=lambda r: (r["asset"], r["seed"]))
        ok = [r for r in rs if not r.get("failed")]
        psnr = sum(r["psnr_masked"] for r in ok) / max(1, len(ok))
        chamfer = sum(r["chamfer_pct"] for r in ok) / max(1, len(ok))
        face = [r["normals_facing_away"] for r in rs if r.get("normals_facing_away") is not None]
        runs = "; ".join(f"{r['asset']} s{r['seed']} " + ("failed" if r.get("failed") else
                                                          f"{r['psnr_masked']:.2f} / {r['chamfer_pct']:.2f}")
                         for r in rs)
        print(f"| {b} | {t:g} | {len(ok)} of {len(rs)} | {psnr:.2f} | {chamfer:.2f} | "
              f"{100 * sum(face) / max(1, len(face)):.1f} % | {runs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benches", nargs="*", help="bench output folders (bench.json, runs/) of --methods dreamfusion")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[5.0, 20.0, 50.0])
    ap.add_argument("--out", default="nerf_threshold.jsonl")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print the table of earlier rows and stop")
    a = ap.parse_args()
    if a.table:
        table(a.table)
    else:
        rescore(a.benches, a.thresholds, Path(a.out), a.device)


if __name__ == "__main__":
    main()
