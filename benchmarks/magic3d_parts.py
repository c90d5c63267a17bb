"""Magic3D's stages on one asset: Chamfer of the surface after the coarse NeRF and along the DMTet
(fine) stage, and the time of a fine step and of marching tetrahedra. Prints numbers; a script,
not a test.

    python benchmarks/magic3d_parts.py --asset mug                      # dev: Chamfer along the run
    python benchmarks/magic3d_parts.py --asset mug magic3d.lambda_normal=100
    python benchmarks/magic3d_parts.py --timing --device cuda --preset full   # GPU: 512 px fine steps

Chamfer is the bench's (``dreamgs.bench.chamfer_pct``: % of the true bounding-box diagonal, against
the true outer surface). "coarse mc" is the NeRF's marching-cubes surface at ``nerf.mesh_threshold``
(what ``--method dreamfusion`` exports); "dmtet" is the DMTet surface (marching tetrahedra, no
clean-up). Use ``dev`` assets for tuning (built-in names, gen:N of the dev seeds).
"""

from __future__ import annotations

import argparse
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from dreamgs.bench import asset_label, chamfer_pct, make_truth
    from dreamgs.config import load_config
    from dreamgs.mesh import Mesh
    from dreamgs.pipeline import seed_everything
    from dreamgs.priors import load_prior
    from dreamgs.stage1_magic3d import Magic3DStage, coarse_steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asset", default="mug")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--every", type=int, default=100, help="fine steps between Chamfer measurements")
    ap.add_argument("--timing", action="store_true", help="only time fine steps and marching tetrahedra")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    name = asset_label(a.asset)
    ov = ["method=magic3d", "prior.kind=oracle", f"prior.asset={a.asset}", f"seed={a.seed}", f"device={a.device}",
          f"preset={a.preset}", f"prompt=a {name}" if name.isalpha() else "prompt=an object"]
    if a.timing:
        ov += ["stage1.iters=40", "magic3d.coarse_fraction=0.25"]
    cfg = load_config("text", None, ov + a.overrides)
    seed_everything(a.seed)
    dev = torch.device(a.device)
    prior = load_prior(cfg, dev, None)
    st = Magic3DStage(cfg, prior, None, dev)
    print(f"magic3d on {a.asset}: {cfg.stage1.iters} steps ({coarse_steps(cfg)} coarse), grid "
          f"{cfg.magic3d.grid_resolution}^3, fine renders {cfg.magic3d.render_size} px, device {dev}")
    truth = make_truth(a.asset, cfg, 8, 64) if not a.timing else None
    t0 = time.perf_counter()
    while st.step_count < coarse_steps(cfg):
        st.step()
    sync(dev)
    print(f"coarse stage: {time.perf_counter() - t0:.1f} s")
    if truth is not None:
        try:
            mc = st.coarse.model.detach().to_mesh(cfg.mesh, cfg.nerf.mesh_threshold)
            print(f"coarse mc (threshold {cfg.nerf.mesh_threshold:g}): Chamfer {chamfer_pct(mc, truth):.2f} %")
        except Exception as e:  # noqa: BLE001 - an empty field is a result too
            print(f"coarse mc: {e}")
    step_times = []

    def dmtet_chamfer(label: str) -> None:
        with torch.no_grad():
            v, f = st.model.surface()
        print(f"{label}: Chamfer {chamfer_pct(Mesh(v.float(), f), truth):.2f} %, {len(f)} faces, "
              f"last {({k: round(float(x), 4) for k, x in st.last.items() if k != 'shading'})}", flush=True)

    while st.step_count < cfg.stage1.iters:
        sync(dev)
        t = time.perf_counter()
        st.step()
        sync(dev)
        step_times.append(time.perf_counter() - t)
        k = st.step_count - coarse_steps(cfg)
        if truth is not None and (k == 1 or k % a.every == 0 or st.step_count == cfg.stage1.iters):
            dmtet_chamfer(f"dmtet after {k} fine steps")
    fine = step_times[2:] or step_times
    print(f"fine step: {1000 * sum(fine) / len(fine):.0f} ms mean over {len(fine)} (first, with the start from the "
          f"NeRF: {1000 * step_times[0]:.0f} ms)")
    sync(dev)
    t = time.perf_counter()
    reps = 5
    with torch.no_grad():
        for _ in range(reps):
            v, f = st.model.surface()
    sync(dev)
    print(f"marching tetrahedra ({cfg.magic3d.grid_resolution}^3 grid, {len(f)} faces): "
          f"{1000 * (time.perf_counter() - t) / reps:.1f} ms")


if __name__ == "__main__":
    main()
