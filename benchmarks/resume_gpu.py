"""GPU check of checkpoints, resuming and out-of-memory handling (CPU tests cover exactness).

Run on a CUDA machine:

    python benchmarks/resume_gpu.py [--quick] [--out DIR]

1. **Resume on CUDA.** An oracle text run of ``--iters`` steps, uninterrupted; the same run
   stopped by a simulated OOM at 60% and resumed with ``resume_run``. Fused Adam keeps its step
   counters on the GPU, so this exercises restoring them there. Reports both runs' Gaussian
   counts and the PSNR between their renders from 8 views (gsplat uses atomics: close, not
   bit-exact), and whether the resumed run's log says it started at the checkpoint.
2. **Checkpoint cost.** Time and size of ``save_checkpoint``/``load_checkpoint`` for 100k and 1M
   Gaussians with Adam state (CUDA tensors copied to the host, written, fsynced).
3. **Real OOM.** A run with an impossible render size and batch (64 views of 32768², over 800 GB
   for the colours alone, so it fails on any GPU at its first large allocation); prints the one-line
   ``TrainingError`` (it must name stage1.render_sizes, stage1.batch_size, densify.max_gaussians)
   and whether the checkpoint survived.

Prints one JSON line per part as it finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dreamgs.cameras import orbit_views  # noqa: E402
from dreamgs.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, trainer_state  # noqa: E402
from dreamgs.config import Config, to_dict  # noqa: E402
from dreamgs.errors import TrainingError  # noqa: E402
from dreamgs.gaussians import GaussianModel, load_ply  # noqa: E402
from dreamgs.pipeline import generate, resume_run  # noqa: E402
from dreamgs.render import render  # noqa: E402
from dreamgs.stage1 import Stage1  # noqa: E402
from dreamgs.train import GaussianTrainer  # noqa: E402


CPU_SMOKE = ("stage1.render_sizes=[64]", "stage1.size_milestones=[]", "gaussians.num_points=1000",
             "prior.oracle_azimuths=12", "prior.oracle_resolution=32")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | str:
    mse = float(((a - b) ** 2).mean())
    return "identical" if mse == 0 else round(10 * math.log10(1.0 / mse), 2)


def renders(path: Path, device: str) -> torch.Tensor:
    model = load_ply(path, device=device)
    cams = orbit_views(8, -15.0, 2.5, 49.1, 256, device=device)
    with torch.no_grad():
        return render(model, cams, background=torch.ones(3, device=device)).rgb


def resume_check(out: Path, iters: int, device: str, extra: tuple[str, ...] = ()) -> dict:
    ov = ["prior.kind=oracle", f"stage1.iters={iters}", f"stage1.checkpoint_every={max(1, iters // 10)}",
          "export.video=false", "stage2.enabled=false", f"device={device}", *extra]
    t = time.perf_counter()
    a = generate("a ceramic mug", overrides=ov, seed=0, run_dir=out / "a", progress=False)
    t_a = time.perf_counter() - t
    stop = int(iters * 0.6)
    orig = Stage1.step

    def step(self):
        if self.step_count == stop:
            raise torch.OutOfMemoryError("simulated")
        return orig(self)
    Stage1.step = step
    try:
        generate("a ceramic mug", overrides=ov, seed=0, run_dir=out / "b", progress=False)
    except TrainingError as e:
        message = str(e)
    finally:
        Stage1.step = orig
    ckpt_step = load_checkpoint(out / "b" / CHECKPOINT_NAME).step
    steps: list[int] = []
    b = resume_run(out / "b", progress=False, on_progress=lambda i: steps.append(i["step"]))
    return {"iters": iters, "uninterrupted_s": round(t_a, 2), "oom_message": message, "checkpoint_step": ckpt_step,
            "resumed_first_step": steps[0] if steps else None, "gaussians": [a.summary["gaussians"],
                                                                            b.summary["gaussians"]],
            "psnr_resumed_vs_uninterrupted": psnr(renders(out / "a" / "model.ply", device),
                                                  renders(out / "b" / "model.ply", device))}


def checkpoint_cost(out: Path, n: int, device: str) -> dict:
    cfg = Config()
    model = GaussianModel.random_ball(n, device=device)  # its k-NN scale init on the GPU: brute force
    trainer = GaussianTrainer(model, cfg.gaussians, cfg.densify, seed=0)
    loss = sum(p.square().sum() for p in model.params.values())  # one step so Adam has state
    trainer.step(loss, [])
    path = out / f"ckpt_{n}.safetensors"
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    save_checkpoint(path, stage="stage1", config=to_dict(cfg), trainer=trainer)
    t_save = time.perf_counter() - t
    t = time.perf_counter()
    ckpt = load_checkpoint(path)
    t_load = time.perf_counter() - t
    trainer.load_state_dict(trainer_state(ckpt))
    steps = {k: str(v.device) for k, v in trainer.optimizer.state[trainer.model.params["means"]].items()}
    return {"gaussians": n, "bytes": path.stat().st_size, "save_s": round(t_save, 3), "load_s": round(t_load, 3),
            "adam_state_devices_after_load": steps}


def real_oom(out: Path) -> dict:
    ov = ["prior.kind=oracle", "stage1.iters=20", "stage1.checkpoint_every=1", "stage1.render_sizes=[64, 32768]",
          "stage1.size_milestones=[0.5]", "stage1.batch_size=64", "export.video=false", "stage2.enabled=false",
          "device=cuda"]
    try:
        generate("a ceramic mug", overrides=ov, seed=0, run_dir=out / "oom", progress=False)
        return {"error": None}
    except Exception as e:  # report whatever happens: the point is to see it
        return {"error_type": type(e).__name__, "message": str(e)[:400],
                "checkpoint_kept": (out / "oom" / CHECKPOINT_NAME).is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, smaller checkpoints")
    ap.add_argument("--out", help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--cpu", action="store_true", help="smoke test of this script on the CPU (tiny, no OOM part)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --cpu for a smoke test)")
    device = "cpu" if args.cpu else "cuda"
    out = Path(args.out or tempfile.mkdtemp(prefix="dreamgs-resume-"))
    iters = 20 if args.cpu else 100 if args.quick else 500
    sizes = (10_000,) if args.cpu else (100_000,) if args.quick else (100_000, 1_000_000)
    print(json.dumps({"device": "cpu" if args.cpu else torch.cuda.get_device_name()}), flush=True)
    if not args.cpu:
        print(json.dumps({"real_oom": real_oom(out)}), flush=True)
    print(json.dumps({"resume": resume_check(out, iters, device, CPU_SMOKE if args.cpu else ())}), flush=True)
    for n in sizes:
        print(json.dumps({"checkpoint": checkpoint_cost(out, n, device)}), flush=True)


if __name__ == "__main__":
    main()
