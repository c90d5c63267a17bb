"""GPU check for ``dreamgs batch``: the same batch of image jobs on 2 GPUs and on 1 GPU, through Ray.

Usage (on a machine with 2 or more NVIDIA GPUs and ``ray`` installed)::

    python benchmarks/batch_gpus.py [--out DIR] [--quick] [--jobs 4] [--iters 500]
                                    [--prior oracle|zero123|stable-zero123] [--model ID_OR_DIR] [key=value ...]

Writes a jobs file of ``--jobs`` image-to-3D jobs (the example images, cycled, one seed each) and
runs it twice with a local Ray started by this script: first with ``CUDA_VISIBLE_DEVICES`` set to
two GPUs, then to one, one job per GPU (``--gpus-per-job 1``) and the same CPUs per job both
times. Prints both wall times (from submitting the jobs to the last result; Ray's start-up is
reported apart) and their ratio; the target is <= 0.6 (ideal 0.5 for an even number of jobs). Each
run's folders and ``manifest.jsonl`` go to ``OUT/gpus2`` and ``OUT/gpus1``; ``OUT/results.json``
holds the numbers. Exits 1 if a job fails or the ratio misses the target.

Defaults are DreamGaussian's image-to-3D sizes with the oracle prior (no weights needed): 500
stage-1 steps, renders growing 128 -> 256 -> 512, a 256-pixel reference; stage 2 and the videos
are off unless ``--stage2``. ``--quick`` is a fast functional check (100 steps, small renders).
``--cpu`` runs 2 workers against 1 on CPUs (no GPU needed; a smoke test of this script).
Extra ``key=value`` arguments are config overrides for every job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dreamgs import batch  # noqa: E402

TARGET = 0.6


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def job_overrides(args) -> list[str]:
    ov = [f"prior.kind={args.prior}", f"stage1.iters={args.iters}"]
    if args.model:
        ov.append(f"prior.model={args.model}")
    if args.quick:
        ov += ["stage1.render_sizes=[64,128]", "stage1.size_milestones=[0.5]", "stage1.ref_size=128",
               "gaussians.num_points=2000", "prior.oracle_azimuths=24", "prior.oracle_elevations=[-30,0,30]"]
    if not args.stage2:
        ov += ["stage2.enabled=false", "export.video=false"]
    if args.cpu:
        ov.append("backend=torch")
    return ov + list(args.overrides)


# A tiny job run first, untimed: loads the libraries into the page cache, initialises CUDA and
# compiles gsplat's kernels if they are built on first use, so neither timed run pays for that.
WARMUP = ["stage1.iters=5", "stage1.render_sizes=[64]", "stage1.size_milestones=[]", "stage1.ref_size=64",
          "gaussians.num_points=500", "prior.oracle_azimuths=4", "prior.oracle_elevations=[0]",
          "prior.oracle_resolution=32", "stage2.enabled=false", "export.video=false"]


def write_jobs_file(path: Path, n_jobs: int, overrides: list[str]) -> Path:
    images = sorted((ROOT / "examples" / "images").glob("*_rgba.png"))
    if not images:
        sys.exit(f"batch_gpus: no example images in {ROOT / 'examples' / 'images'}")
    jobs = [{"name": f"job{i}-{images[i % len(images)].stem}", "image": str(images[i % len(images)]), "seed": i}
            for i in range(n_jobs)]
    path.write_text(yaml.safe_dump({"overrides": overrides, "jobs": jobs}, sort_keys=False), encoding="utf-8")
    return path


def run_once(jobs_file: Path, out: Path, units: int, gpu_ids: list[str], cpus_per_job: int, cpu: bool,
             label: str | None = None) -> dict:
    """One batch on ``units`` GPUs (or CPU workers) with a fresh local Ray; returns its numbers."""
    import ray

    if out.exists():
        shutil.rmtree(out)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        init = {"num_cpus": units * cpus_per_job, "num_gpus": 0}
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids[:units])  # the local Ray inherits it
        init = {"num_cpus": os.cpu_count() or units * cpus_per_job, "num_gpus": units}
    label = label or f"{units} {'CPU worker' if cpu else 'GPU'}{'s' if units > 1 else ''}"
    print(f"--- {label}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}, "
          f"{cpus_per_job} CPUs per job", flush=True)
    try:
        t0 = time.perf_counter()
        batch.start_local_ray(**init)
        ray_start = time.perf_counter() - t0
        report = batch.run_batch(jobs_file, output_dir=out, retries=0, gpus_per_job=0 if cpu else 1,
                                 cpus_per_job=cpus_per_job)
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    times = [r["duration_s"] for r in report.records.values() if r["duration_s"] is not None]
    stages = stage_times(report)
    res = {"units": units, "wall_s": round(report.wall_s, 2), "ray_start_s": round(ray_start, 2),
           "job_s": times, "stage_s": stages,
           "hosts": sorted({r["host"] for r in report.records.values() if r["host"]}),
           "done": report.names("done"), "failed": {n: report.records[n]["error"] for n in report.names("failed")},
           "manifest": str(report.manifest)}
    print(f"{label}: {report.wall_s:.1f} s wall (Ray start {ray_start:.1f} s apart); job times "
          + (f"mean {sum(times) / len(times):.1f} s, min {min(times):.1f}, max {max(times):.1f}" if times else "-"),
          flush=True)
    for stage, values in stages.items():
        print(f"  {stage}: " + ", ".join(f"{v:.1f}" for v in values) + " s (in job order of completion)", flush=True)
    for name, err in res["failed"].items():
        print(f"  FAILED {name}: {err}", flush=True)
    return res


def stage_times(report) -> dict[str, list[float]]:
    """Per-job seconds of each pipeline stage, from the runs' summary.json (prior load, stage 1, ...)."""
    out: dict[str, list[float]] = {}
    for rec in report.records.values():
        try:
            summary = json.loads((Path(rec["run_dir"]) / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for stage, seconds in (summary.get("timings_s") or {}).items():
            out.setdefault(stage, []).append(round(float(seconds), 2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/batch_gpus", help="output folder (default: outputs/batch_gpus)")
    ap.add_argument("--jobs", type=int, default=4, help="number of image jobs (default: 4)")
    ap.add_argument("--iters", type=int, help="stage-1 steps per job (default: 500, --quick: 100)")
    ap.add_argument("--prior", default="oracle", help="oracle | zero123 | stable-zero123 (default: oracle)")
    ap.add_argument("--model", help="diffusers model id or folder for the zero123 priors")
    ap.add_argument("--stage2", action="store_true", help="keep stage 2 (mesh) and the videos on")
    ap.add_argument("--quick", action="store_true", help="fast functional check: 100 steps, small renders")
    ap.add_argument("--cpus-per-job", type=int, help="CPUs (torch threads) per job "
                                                     "(default: this machine's CPUs / 2; --cpu: 1)")
    ap.add_argument("--cpu", action="store_true", help="2 CPU workers against 1, no GPU (smoke test)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up job")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every job")
    args = ap.parse_args()
    if args.iters is None:
        args.iters = 100 if args.quick else 500
    if args.jobs < 2:
        sys.exit("batch_gpus: --jobs must be at least 2")
    if not batch.ray_available():
        sys.exit("batch_gpus: needs Ray (pip install 'ray>=2.10,<3' or pip install -e '.[batch]')")
    gpu_ids = [] if args.cpu else visible_gpus()
    if not args.cpu and len(gpu_ids) < 2:
        sys.exit(f"batch_gpus: needs 2 GPUs, found {len(gpu_ids)} (use --cpu for a CPU smoke run)")
    cpus_per_job = args.cpus_per_job or (1 if args.cpu else max(1, (os.cpu_count() or 2) // 2))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs_file = write_jobs_file(out / "jobs.yaml", args.jobs, job_overrides(args))
    print(f"batch_gpus: {args.jobs} image jobs, prior {args.prior}, {args.iters} stage-1 steps"
          f"{' (quick)' if args.quick else ''}; jobs file {jobs_file}", flush=True)
    if not args.no_warmup:
        warm = write_jobs_file(out / "warmup.yaml", 1, job_overrides(args) + WARMUP)
        res = run_once(warm, out / "warmup", 1, gpu_ids, cpus_per_job, args.cpu, label="warm-up (untimed)")
        if res["failed"]:
            print("batch_gpus: the warm-up job failed; see above", flush=True)
            return 1

    runs = [run_once(jobs_file, out / f"{'cpu' if args.cpu else 'gpus'}{n}", n, gpu_ids, cpus_per_job, args.cpu)
            for n in (2, 1)]
    ratio = runs[0]["wall_s"] / runs[1]["wall_s"] if runs[1]["wall_s"] > 0 else float("nan")
    ideal = -(-args.jobs // 2) / args.jobs
    ok = not runs[0]["failed"] and not runs[1]["failed"] and ratio <= TARGET
    results = {"jobs": args.jobs, "prior": args.prior, "iters": args.iters, "quick": args.quick, "cpu": args.cpu,
               "overrides": job_overrides(args), "cpus_per_job": cpus_per_job, "runs": runs,
               "ratio": round(ratio, 3), "ideal": ideal, "target": TARGET, "pass": ok}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    unit = "CPU workers" if args.cpu else "GPUs"
    print(f"\nwall time, 2 {unit}: {runs[0]['wall_s']:.1f} s; 1 {unit[:-1]}: {runs[1]['wall_s']:.1f} s; "
          f"ratio {ratio:.2f} (target <= {TARGET}, ideal {ideal:.2f}): {'PASS' if ok else 'FAIL'}")
    print(f"results: {out / 'results.json'}; manifests: {runs[0]['manifest']}, {runs[1]['manifest']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
