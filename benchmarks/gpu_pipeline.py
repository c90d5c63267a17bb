"""End-to-end GPU timing of text->3D and image->3D with full-size priors at random weights.

    python benchmarks/gpu_pipeline.py --models /tmp/models [--modes text image] \\
        [--variants baseline fast] [--iters 500] [--stage2-iters 50] [--phases] [--json out.json] [--set k=v ...]

Builds SD 2.1-base and Zero123-XL architectures with random weights (``full_size_models.py``)
if ``--models`` lacks them; timing does not depend on the weight values. For each mode and
variant it runs the real pipeline (``dreamgs.generate``: stage 1, .ply, mesh extraction, unwrap,
bake, stage-2 refinement, .glb/.obj and videos) and reports its wall time, per-stage times and
peak GPU memory. ``--phases`` adds isolated timings of one stage-1 step's parts at the final
render size and Gaussian count, and the step's floor: UNet + VAE FLOPs (torch's FLOP counter)
divided by the measured bf16 matrix-multiply rate of this GPU.

Variants (side by side in one process):
- ``baseline``: plain fp16 eager PyTorch as the reference implementation does it (no
  channels-last, no compilation, unfused Adam, xatlas on the whole mesh).
- ``fast``: the project's defaults on CUDA (fp16, CUDA graphs of the UNet and VAE encoder,
  channels-last UNet, matmul attention in the VAE, fused Adam, one host sync per step, xatlas on
  pieces of the mesh in parallel); see docs/benchmarks.md.
- ``fast-no-channels-last``, ``fast-bf16``, ``fast-compile``: ``fast`` with one option changed
  (compilation happens inside the timed run, as it would for a user).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dreamgs.pipeline import generate  # noqa: E402

IMAGE = ROOT / "examples" / "images" / "anya_rgba.png"

VARIANTS = {
    "baseline": ["prior.dtype=fp16", "prior.channels_last=false", "prior.compile=false", "prior.cuda_graphs=false",
                 "prior.vae_matmul_attention=false", "gaussians.fused_adam=false", "texture.unwrap_piece_faces=0"],
    "fast": [],  # the defaults on CUDA (see the docstring)
    "fast-no-channels-last": ["prior.channels_last=false"],
    "fast-bf16": ["prior.dtype=bf16"],
    "fast-compile": ["prior.compile=true"],
}


def ensure_models(root: Path, modes: list[str]) -> dict[str, Path]:
    import full_size_models  # benchmarks/full_size_models.py

    out = {}
    for which in [{"text": "sd", "image": "zero123"}[m] for m in modes]:
        folder = root / which
        if not (folder / "model_index.json").is_file():
            full_size_models.main(["--out", str(folder), "--which", which, "--device", DEVICE])
        out[which] = folder
    return out


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def mode_overrides(mode: str, models: dict[str, Path], iters: int, stage2_iters: int) -> list[str]:
    common = [f"stage1.iters={iters}", f"stage2.iters={stage2_iters}", "seed=0", f"device={DEVICE}"]
    if mode == "text":
        return common + ["prior.kind=sd", f"prior.model={models['sd']}"]
    return common + ["prior.kind=zero123", f"prior.model={models['zero123']}"]


def run_once(mode: str, variant: str, models, args, out_dir: Path) -> dict:
    ov = mode_overrides(mode, models, args.iters, args.stage2_iters) + VARIANTS[variant] + args.override
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    kw = dict(overrides=ov, run_dir=out_dir / f"{mode}-{variant}", progress=False)
    res = generate("a ceramic mug", **kw) if mode == "text" else generate(image=str(IMAGE), **kw)
    sync()
    wall = time.perf_counter() - t0
    return {"mode": mode, "variant": variant, "wall_s": wall, "timings_s": res.summary["timings_s"],
            "gaussians": res.summary["gaussians"], "faces": res.summary.get("mesh_faces"),
            "peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if DEVICE == "cuda" else 0.0,
            "run_dir": str(res.run_dir)}


def cuda_time(fn, warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1000)
    return statistics.median(ts)


def matmul_rate() -> float:
    n = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time(lambda: a @ b, 3, 10)


def phases(mode: str, variant: str, models, args, run_dir: Path) -> dict:
    """Isolated timings of one stage-1 step's parts at the final size, and the FLOP floor."""
    from torch.utils.flop_counter import FlopCounterMode

    from dreamgs.cameras import make_cameras
    from dreamgs.config import load_config
    from dreamgs.gaussians import DensifyStats, densify_and_prune, load_ply, make_optimizer
    from dreamgs.priors import load_prior
    from dreamgs.render import render
    from dreamgs.stage1 import make_reference

    ov = mode_overrides(mode, models, args.iters, args.stage2_iters) + VARIANTS[variant] + args.override
    cfg = load_config(mode, None, ov + (["prompt=a ceramic mug"] if mode == "text" else []))
    ref_image = None
    if mode == "image":
        from dreamgs.images import preprocess

        rgba = torch.as_tensor(preprocess(str(IMAGE), size=cfg.stage1.ref_size)).float()
        ref = make_reference(rgba, cfg, DEVICE)
        a = ref.rgba[..., 3:4]
        ref_image = (ref.rgba[..., :3] * a + (1 - a)).permute(2, 0, 1)[None]
    prior = load_prior(cfg, DEVICE, ref_image)
    model = load_ply(run_dir / "model.ply", device=DEVICE).requires_grad_(True)
    size = cfg.stage1.render_sizes[-1]
    cams = make_cameras([-10.0] * cfg.stage1.batch_size, [30.0] * cfg.stage1.batch_size, cfg.camera.radius,
                        cfg.camera.fovy, size, device=DEVICE)
    bg = torch.ones(3, device=DEVICE)
    out = {}

    def render_fb():
        r = render(model, cams, background=bg)
        r.rgb.mean().backward()
    out["render_fwd_bwd"] = cuda_time(render_fb)
    images = torch.rand(len(cams), 3, size, size, device=DEVICE, requires_grad=True)

    def vae_fb():
        lat = prior.encode_images(images)
        lat.float().square().mean().backward()
    out["vae_encode_bwd"] = cuda_time(vae_fb)
    with torch.no_grad():
        lat = prior.encode_images(images)
    cond = prior.condition(cams, len(cams))
    x_t = torch.randn_like(lat)

    def unet_cfg():
        with torch.no_grad():
            prior.guided_eps(x_t, 500, cond)
    out["unet_cfg"] = cuda_time(unet_cfg)
    opt = make_optimizer(model, cfg.gaussians)
    for p in model.params.values():
        p.grad = torch.randn_like(p) * 1e-3
    out["adam_step"] = cuda_time(lambda: opt.step())
    stats = DensifyStats(torch.rand(len(model), device=DEVICE) * 0.02, torch.ones(len(model), device=DEVICE))

    def densify():
        m = load_ply(run_dir / "model.ply", device=DEVICE)
        o = make_optimizer(m, cfg.gaussians)
        sync()
        densify_and_prune(m, o, stats, cfg.densify)
    out["densify"] = cuda_time(densify, 1, 3)
    # FLOPs of the eager modules: kernels replayed from a CUDA graph are invisible to the counter.
    prior._unet_call = prior._encode_call = None
    with torch.no_grad(), FlopCounterMode(display=False) as fc_unet:
        prior.guided_eps(x_t, 500, cond)
    with FlopCounterMode(display=False) as fc_vae:
        prior.encode_images(images).float().sum().backward()
    flops = fc_unet.get_total_flops() + fc_vae.get_total_flops()
    rate = matmul_rate()
    out.update(step_flops=flops, unet_flops=fc_unet.get_total_flops(), vae_fwd_bwd_flops=fc_vae.get_total_flops(),
               bf16_matmul_flops_per_s=rate, floor_s=flops / rate, gaussians=len(model), size=size)
    del prior
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="folder for the random-weight models")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dreamgs-bench"))
    ap.add_argument("--modes", nargs="+", default=["text", "image"], choices=["text", "image"])
    ap.add_argument("--variants", nargs="+", default=["baseline", "fast"], choices=list(VARIANTS))
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--stage2-iters", type=int, default=50)
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--warmup", action="store_true", help="one short untimed run first (CUDA/JIT warm-up)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", dest="override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every run")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test with --tiny")
    ap.add_argument("--tiny", action="store_true", help="use the tests' tiny random models (smoke test)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    print(f"device: {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}  torch {torch.__version__}",
          flush=True)
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import build_tiny_sd, build_tiny_zero123

        models = {"sd": args.models / "tiny-sd", "zero123": args.models / "tiny-zero123"}
        if not models["sd"].exists():
            build_tiny_sd(models["sd"])
            build_tiny_zero123(models["zero123"])
    else:
        models = ensure_models(args.models, args.modes)
    if args.warmup:
        w = argparse.Namespace(**{**vars(args), "iters": 20, "stage2_iters": 2})
        for mode in args.modes:
            run_once(mode, "baseline", models, w, args.out / "warmup")
    results, phase_rows = [], []
    for mode in args.modes:
        for variant in args.variants:
            r = run_once(mode, variant, models, args, args.out)
            results.append(r)
            t = r["timings_s"]
            print(f"{mode:5s} {variant:12s} wall {r['wall_s']:6.1f} s  stage1 {t.get('stage1', 0):5.1f}  "
                  f"stage2 {t.get('stage2', 0):5.1f}  peak {r['peak_alloc_gb']:.2f} GB  N={r['gaussians']}",
                  flush=True)
            if args.phases:
                ph = phases(mode, variant, models, args, Path(r["run_dir"]))
                ph.update(mode=mode, variant=variant, step_s=t.get("stage1", 0) / args.iters)
                phase_rows.append(ph)
                print("   phases " + ", ".join(f"{k}={v * 1000:.2f} ms" for k, v in ph.items()
                                               if k in ("render_fwd_bwd", "vae_encode_bwd", "unet_cfg", "adam_step",
                                                        "densify", "floor_s", "step_s"))
                      + f", step/floor={ph['step_s'] / ph['floor_s']:.1f}", flush=True)
    print("\n| mode | variant | wall s | stage 1 s | stage 2 s | peak GB | per-stage (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        t = r["timings_s"]
        detail = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k not in ("stage1", "stage2"))
        print(f"| {r['mode']} | {r['variant']} | {r['wall_s']:.1f} | {t.get('stage1', 0):.1f} | "
              f"{t.get('stage2', 0):.1f} | {r['peak_alloc_gb']:.2f} | {detail} |")
    for mode in args.modes:
        base = [r for r in results if r["mode"] == mode and r["variant"] == "baseline"]
        for r in results:
            if base and r["mode"] == mode and r["variant"] != "baseline":
                print(f"{mode}: {r['variant']} is {base[0]['wall_s'] / r['wall_s']:.2f}x the baseline speed")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "phases": phase_rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
