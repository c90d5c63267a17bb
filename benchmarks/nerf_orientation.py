"""Where along the rays a DreamFusion NeRF's normals face away from the camera (issue 16's
orientation bar), for trained ``nerf.safetensors`` files::

    python benchmarks/nerf_orientation.py RUN_DIR_OR_FILE [...] [--views 8] [--size 64] [--samples 64] [--jsonl OUT]

Renders the same check as the run's ``normals_facing_away`` (8 views around the object at
elevation -15, 64 px, bin-centred samples, here without occupancy skipping) and prints the share of
the rendering weight on normals facing away (n . d > 0), split by how much opacity the ray has
already accumulated before the sample: the front of the surface (little accumulated) against what
lies behind it (a thin wall's far side, the soft interior of the field). ``--jsonl`` writes one
row per file instead: its run folder, this bare-field share and the run's own (summary.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import orbit_views  # noqa: E402
from dreamgs.representations.nerf import camera_rays, load_nerf, ray_box, volume_weights  # noqa: E402

BANDS = [(0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0)]


def facing_away_by_depth(model, views: int = 8, size: int = 64, samples: int = 64, radius: float = 2.5,
                         fovy: float = 49.1) -> dict:
    o, d = camera_rays(orbit_views(views, -15.0, radius, fovy, size))
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    near, far, hit = ray_box(o, d, model.spec.bound)
    o, d, t0, t1 = o[hit], d[hit], near[hit], far[hit]
    step = (t1 - t0) / samples
    t = t0[:, None] + (torch.arange(samples)[None] + 0.5) * step[:, None]
    x = (o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3)
    with torch.no_grad():
        parts = [model.density_albedo_normal(x[i:i + 65536]) for i in range(0, len(x), 65536)]
        sigma = torch.cat([p[0] for p in parts]).reshape(-1, samples)
        normal = torch.cat([p[2] for p in parts]).reshape(-1, samples, 3)
        w = volume_weights(sigma, step[:, None].expand(-1, samples))
    away = ((normal * d[:, None]).sum(-1) > 0).to(w.dtype)
    before = torch.cumsum(w, -1) - w  # opacity accumulated in front of each sample
    total = w.sum()
    out = {"facing_away": float((w * away).sum() / total), "max_density": float(sigma.max()), "bands": []}
    for lo, hi in BANDS:
        sel = ((before >= lo) & (before < hi if hi < 1.0 else before <= 1.0)).to(w.dtype)
        ws = (w * sel).sum()
        out["bands"].append({"band": (lo, hi), "weight_share": float(ws / total),
                             "away_of_all": float((w * sel * away).sum() / total),
                             "away_within": float((w * sel * away).sum() / ws.clamp_min(1e-12))})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+", help="run folders (their nerf.safetensors, searched below them) or files")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--jsonl", type=Path, help="write one JSON row per file here instead of the tables")
    args = ap.parse_args()
    rows = []
    for p in map(Path, args.paths):
        files = [p] if p.is_file() else sorted(p.rglob("nerf.safetensors"))
        for f in files:
            r = facing_away_by_depth(load_nerf(f), args.views, args.size, args.samples)
            if args.jsonl:
                summary = f.parent / "summary.json"
                run = json.loads(summary.read_text()).get("normals_facing_away") if summary.is_file() else None
                rows.append({"run": str(f.parent), "facing_away_bare": r["facing_away"], "facing_away_run": run})
                continue
            print(f"{f}: facing away {100 * r['facing_away']:.1f} % of the weight, max density {r['max_density']:.1f}")
            print("| opacity accumulated in front | share of the weight | facing away, of all weight | facing away, within |")
            print("|---|---|---|---|")
            for b in r["bands"]:
                lo, hi = b["band"]
                print(f"| {lo:.1f}-{hi:.1f} | {100 * b['weight_share']:.1f} % | {100 * b['away_of_all']:.1f} % "
                      f"| {100 * b['away_within']:.1f} % |")

    if args.jsonl:
        args.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
