"""``dreamgs bench``: methods x assets x seeds against the oracle's truth, with baselines.

Each run goes through the whole pipeline with the oracle prior of one asset (stage 1, mesh,
stage 2, exports), and what is scored is what the user receives: the exported ``model.glb``,
rendered at held-out cameras (:func:`dreamgs.evaluate.heldout_cameras`) and compared with the true
asset. Per run: PSNR over the whole image and over the union of the two silhouettes, the pose
offset (the azimuth turn of the truth that best matches the result), Chamfer distance between the
generated mesh and the true outer surface (percent of the bounding-box diagonal), the front/back
check, the mean saturation of the result's colours minus the truth's (over their silhouettes, HSV
saturation: SDS is known to over-saturate), and the wall time.

Baselines are scored in exactly the same way at the same cameras, per asset:

- ``truth``: the asset itself (PSNR capped at 100 dB), the ceiling;
- ``lookup``: at each held-out camera, the render at the nearest oracle reference camera;
- ``turned15``, ``turned20``, ``turned30``: the truth turned by 15, 20 and 30 degrees in azimuth
  (20: issue 16's bar for DreamFusion);
- ``flat``: the true silhouette filled with the asset's mean colour;
- ``blob``: the initial Gaussians (stage 1's starting ball).

Methods (:data:`METHODS`): ``dreamgaussian``, ``dreamfusion``, ``gsgen``, ``magic3d``, and DreamGaussian from
its other starts: ``dreamgaussian-cloud`` (a noisy coloured point cloud of the asset, a stand-in for what a
3D prior such as Point-E outputs: :func:`surface_cloud`) and ``dreamgaussian-silhouette`` (image mode).

Settings: ``standard`` is the mode's normal oracle; ``hard`` is the Janus-prone text oracle (the
prompt alone, no view words) in text mode, and in image mode the oracle that knows the input
asset only from the input view's side and must infer the rest (``prior.oracle_unseen=family``).

Splits (:data:`dreamgs.assets.SPLITS`): ``dev`` (the built-in assets and dev seeds of the
procedural generator) is where defaults may be tuned; ``test`` (procedural assets from a fixed
seed list) is what results are reported on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import EmptyModelError, InputError, TrainingError

BASELINES = ("truth", "lookup", "turned15", "turned20", "turned30", "flat", "blob")
SETTINGS = {
    ("text", "standard"): [],
    ("text", "hard"): ["prior.view_dependent_prompt=false"],
    ("image", "standard"): [],
    ("image", "hard"): ["prior.oracle_unseen=family"],
}
SHEET_VIEWS = 4  # held-out views per asset in bench.png


@dataclass
class Job:
    """One method run: a mode and setting, an asset, a seed, config overrides and its folder."""

    method: str
    mode: str
    setting: str
    asset: str
    seed: int
    overrides: list[str]
    run_dir: Path
    device: str = "auto"
    config: str | None = None  # a YAML config file applied before the overrides


MethodFn = Callable[[Job], Path]  # runs the job, returns the path of the exported model.glb


# ------------------------------------------------------------------------------------------------
# Assets and configs


def resolve_assets(specs: Sequence[str]) -> list[str]:
    """``dev`` / ``test`` (a split), built-in or generated names (``gen:N``) and mesh paths."""
    from . import assets

    out: list[str] = []
    for spec in specs:
        if spec in assets.SPLITS:
            out.extend(assets.split_assets(spec))
        elif spec in assets.ASSET_NAMES or spec.startswith("gen:"):
            assets.make_asset(spec)  # fails early with a clear message on a bad name
            out.append(spec)
        elif Path(spec).is_file():
            out.append(str(Path(spec)))
        else:
            raise InputError(f"bench: asset '{spec}' is neither a split ({', '.join(assets.SPLITS)}), a built-in "
                             f"asset ({', '.join(assets.ASSET_NAMES)}), a generated one (gen:N) nor a mesh file")
    return list(dict.fromkeys(out))


def load_truth(asset: str):
    """The true mesh of an asset, in the frame the oracle uses for it."""
    from . import assets

    if asset in assets.ASSET_NAMES or asset.startswith("gen:"):
        return assets.make_asset(asset)
    from .mesh.io import load_mesh, normalize_mesh

    return normalize_mesh(load_mesh(asset))


def asset_label(asset: str) -> str:
    return Path(asset).stem if Path(asset).suffix else asset


def job_config(job: Job):
    """The resolved run config of a job (the mode's preset, the setting, the oracle of its asset,
    the user's overrides)."""
    from .config import load_config

    ov = ["prior.kind=oracle", f"prior.asset={job.asset}", *SETTINGS[(job.mode, job.setting)], *job.overrides]
    return load_config(job.mode, job.config, ov), ov


def input_image(truth, cfg, path: Path, size: int | None = None) -> Path:
    """Image mode's input: the true asset seen from the input camera (azimuth 0, the config's
    elevation), RGBA with straight alpha at ``size`` pixels (default ``stage1.ref_size``)."""
    from .cameras import make_cameras
    from .media import save_image
    from .mesh.raster import render_mesh

    cam = make_cameras(cfg.elevation, 0.0, cfg.camera.radius, cfg.camera.fovy, size or cfg.stage1.ref_size)
    r = render_mesh(truth, cam, background=torch.zeros(3), ssaa=2)
    rgba = torch.cat([torch.where(r.alpha > 0, r.rgb / r.alpha.clamp_min(1e-6), r.rgb), r.alpha], -1)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(path, rgba.clamp(0, 1).numpy())


# ------------------------------------------------------------------------------------------------
# Methods: plain functions from a job to the exported model.glb


def run_dreamgaussian(job: Job, method: str = "dreamgaussian") -> Path:
    """DreamGaussian (this package's pipeline) on the job's oracle: stage 1, stage 2, exports."""
    from .pipeline import generate

    cfg, ov = job_config(job)
    ov = ov + [f"device={job.device}"] + ([f"method={method}"] if method != "dreamgaussian" else [])
    if job.mode == "text":
        name = asset_label(job.asset)
        prompt = f"a {name}" if name.isalpha() else "an object"
        res = generate(prompt, config=job.config, overrides=ov, seed=job.seed, run_dir=job.run_dir, progress=False)
    else:
        image = input_image(load_truth(job.asset), cfg, job.run_dir.parent / f"{job.run_dir.name}_input.png")
        res = generate(image=image, config=job.config, overrides=ov, seed=job.seed, run_dir=job.run_dir,
                       progress=False)
    if "glb" not in res.files:
        raise InputError("bench: the run wrote no model.glb (export.glb and stage2.enabled must be true)")
    return res.files["glb"]


def run_dreamfusion(job: Job) -> Path:
    """DreamFusion (``method=dreamfusion``: a NeRF with shading) through the same pipeline."""
    return run_dreamgaussian(job, method="dreamfusion")


def run_gsgen(job: Job) -> Path:
    """GSGen's recipe (``method=gsgen``), with stage 2 on so that its mesh is scored like the others'."""
    job = dataclasses.replace(job, overrides=[*job.overrides, "stage2.enabled=true"])
    return run_dreamgaussian(job, method="gsgen")


def run_magic3d(job: Job) -> Path:
    """Magic3D (``method=magic3d``: a coarse NeRF, then a DMTet mesh) through the same pipeline."""
    return run_dreamgaussian(job, method="magic3d")


def surface_cloud(mesh, path: Path, seed: int, n: int = 4096, noise: float = 0.02,
                  colour_noise: float | None = 0.1) -> Path:
    """A noisy point cloud of ``mesh`` as a 3D prior (Point-E, Shap-E) would give it, saved as
    ``.npy`` at ``path``: ``n`` points on the outer surface plus Gaussian noise of std ``noise``
    (world units), and unless ``colour_noise`` is None each point's surface colour plus Gaussian
    noise of that std per channel, clamped to [0, 1]. Deterministic in ``seed``."""
    from scipy.spatial import cKDTree

    from .evaluate import outer_surface_samples
    from .init import sample_mesh_points

    g = torch.Generator().manual_seed(seed)
    surf = outer_surface_samples(mesh, n, g).double()
    pts = surf + noise * torch.randn(surf.shape, generator=g, dtype=torch.float64)
    if colour_noise is not None:
        dense, cols = sample_mesh_points(mesh, 50 * n, g)
        _, idx = cKDTree(dense.numpy()).query(surf.numpy(), k=1)
        c = cols[torch.from_numpy(idx)] + colour_noise * torch.randn(n, 3, generator=g, dtype=torch.float64)
        pts = torch.cat([pts, c.clamp(0, 1)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pts.numpy())
    return path


def run_cloud_start(job: Job) -> Path:
    """DreamGaussian started from a noisy coloured cloud of the job's asset (:func:`surface_cloud`, seeded
    by the job's seed): the start a user with a 3D prior's point cloud gets (``gaussians.init=points``)."""
    cloud = surface_cloud(load_truth(job.asset), job.run_dir.parent / f"{job.run_dir.name}_cloud.npy", job.seed)
    return run_dreamgaussian(dataclasses.replace(job, overrides=[*job.overrides, f"gaussians.init=points:{cloud}"]))


SILHOUETTE_TEXT = "bench: dreamgaussian-silhouette lifts the input image: it needs --mode image"


def run_silhouette_start(job: Job) -> Path:
    """DreamGaussian started from the input's mask lifted into a slab (``gaussians.init=silhouette``)."""
    if job.mode != "image":
        raise InputError(SILHOUETTE_TEXT)
    return run_dreamgaussian(dataclasses.replace(job, overrides=[*job.overrides, "gaussians.init=silhouette"]))


METHODS: dict[str, MethodFn] = {"dreamgaussian": run_dreamgaussian, "dreamfusion": run_dreamfusion,
                                "gsgen": run_gsgen, "magic3d": run_magic3d, "dreamgaussian-cloud": run_cloud_start,
                                "dreamgaussian-silhouette": run_silhouette_start}


# ------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Truth:
    """An asset's ground truth at the held-out cameras, computed once per asset and mode."""

    asset: str
    mesh: object
    cams: object
    rgb: torch.Tensor
    alpha: torch.Tensor
    surface: torch.Tensor  # points on the outer surface
    diagonal: float
    cfg: object
    pose_cache: dict = field(default_factory=dict)  # truth renders per azimuth shift (evaluate.pose_offset)


def make_truth(asset: str, cfg, views: int, size: int) -> Truth:
    from .evaluate import heldout_cameras, mesh_rgba_views, outer_surface_samples

    mesh = load_truth(asset)
    cams = heldout_cameras(cfg, views, size, seed=0)
    rgb, alpha = mesh_rgba_views(mesh, cams)
    lo, hi = mesh.bounds()
    surface = outer_surface_samples(mesh, 20000, torch.Generator().manual_seed(0))
    return Truth(asset, mesh, cams, rgb, alpha, surface, float((hi - lo).norm()), cfg)


def chamfer_pct(mesh, truth: Truth, n: int = 20000) -> float:
    from .metrics import chamfer_distance, sample_surface

    pts = sample_surface(mesh.to("cpu"), n, torch.Generator().manual_seed(1))
    return 100.0 * chamfer_distance(pts, truth.surface) / truth.diagonal


def score_views(rgb: torch.Tensor, alpha: torch.Tensor, truth: Truth) -> dict:
    from .evaluate import pose_offset, view_scores

    from .metrics import mean_saturation

    out = view_scores(rgb, alpha, truth.rgb, truth.alpha)
    out["saturation"] = mean_saturation(rgb, alpha)
    out["saturation_delta"] = out["saturation"] - mean_saturation(truth.rgb, truth.alpha)
    out["pose_offset_deg"] = pose_offset(rgb, truth.mesh, truth.cams, cache=truth.pose_cache)
    return out


def score_mesh(mesh, truth: Truth) -> dict:
    """Scores of a result mesh (e.g. the loaded model.glb) against the truth."""
    from .evaluate import front_back, mesh_rgba_views

    rgb, alpha = mesh_rgba_views(mesh, truth.cams)
    out = score_views(rgb, alpha, truth)
    out["chamfer_pct"] = chamfer_pct(mesh, truth)
    c = truth.cfg
    fb = front_back(lambda cams: mesh_rgba_views(mesh, cams)[0], truth.mesh, c.camera.radius, c.camera.fovy,
                    truth.cams.width)
    out.update({k: min(v, 100.0) for k, v in fb.items()})
    out["_sheet"] = rgb[:SHEET_VIEWS].numpy()
    return out


def _turned(mesh, degrees: float):
    """The mesh turned about the vertical axis so that, seen from azimuth ``az``, it looks as the
    original does from ``az + degrees``."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=mesh.vertices.dtype)
    return dataclasses.replace(mesh, vertices=mesh.vertices @ rot.T)


def baseline_scores(truth: Truth, mode: str, seed: int = 0) -> list[dict]:
    """Every baseline of :data:`BASELINES`, scored like a method."""
    from .cameras import make_cameras
    from .evaluate import gaussian_rgba_views, mesh_rgba_views, reference_grid
    from .gaussians import GaussianModel
    from .priors.oracle import camera_angle

    cfg, cams = truth.cfg, truth.cams
    rows = []

    def add(name, rgb, alpha, chamfer):
        row = {"name": name, "mode": mode, "asset": truth.asset, **score_views(rgb, alpha, truth)}
        row["chamfer_pct"] = chamfer
        row["_sheet"] = rgb[:SHEET_VIEWS].numpy()
        rows.append(row)

    add("truth", truth.rgb, truth.alpha, 0.0)
    rel, raz, _, _ = reference_grid(cfg)
    ang = camera_angle(cams.elevation[:, None].double(), cams.azimuth[:, None].double(), rel[None], raz[None])
    near = ang.argmin(dim=1)
    look = make_cameras(rel[near], raz[near], cfg.camera.radius, cfg.camera.fovy, cams.width)
    add("lookup", *mesh_rgba_views(truth.mesh, look), None)
    for deg in (15, 20, 30):
        turned = _turned(truth.mesh, deg)
        add(f"turned{deg}", *mesh_rgba_views(turned, cams), chamfer_pct(turned, truth))
    a = truth.alpha
    mean = (truth.rgb * a).sum(dim=(0, 1, 2)) / a.sum().clamp_min(1e-6)  # alpha-weighted mean over the silhouette
    add("flat", mean * a + (1 - a), a, None)
    g = cfg.gaussians
    blob = GaussianModel.random_ball(g.num_points, g.init_radius, opacity=g.init_opacity, color=g.init_color,
                                     generator=torch.Generator().manual_seed(seed))
    add("blob", *gaussian_rgba_views(blob, cams), _blob_chamfer(blob, cfg, truth))
    return rows


def _blob_chamfer(blob, cfg, truth: Truth) -> float | None:
    from .mesh.extract import extract_mesh

    try:
        return chamfer_pct(extract_mesh(blob, cfg.mesh), truth)
    except (ValueError, RuntimeError):  # no surface at the threshold: no geometry to score
        return None


# ------------------------------------------------------------------------------------------------
# Running


def _run_job(job: Job, method: MethodFn, truth: Truth) -> dict:
    from .mesh.io import load_mesh

    t0 = time.perf_counter()
    row = {"method": job.method, "mode": job.mode, "setting": job.setting, "asset": job.asset, "seed": job.seed}
    try:
        glb = method(job)
    except (EmptyModelError, TrainingError) as e:  # the method failed on this run: a result, not a crash
        row.update({k: None for k in SCORE_KEYS}, failed=str(e), seconds=time.perf_counter() - t0,
                   run_dir=str(job.run_dir))
        return row
    seconds = time.perf_counter() - t0
    row.update(score_mesh(load_mesh(glb), truth))
    row["seconds"] = seconds
    row["run_dir"] = str(job.run_dir)
    return row


def _worker(args) -> dict:
    job, truth = args
    return _run_job(job, METHODS[job.method], truth)


def run_bench(methods: Sequence[str] | dict[str, MethodFn] = ("dreamgaussian",), assets: Sequence[str] = ("test",),
              mode: str = "text", setting: str = "standard", seeds: Sequence[int] = (0,),
              out_dir: str | Path = "outputs/bench", overrides: Sequence[str] = (), baselines: bool = True,
              views: int = 24, size: int = 64, device: str = "auto", jobs: int = 1,
              config: str | Path | None = None, progress: bool = True) -> dict:
    """Run ``methods`` on ``assets`` x ``seeds`` and score them; write ``bench.json``,
    ``bench.md`` and ``bench.png`` into ``out_dir``; return the report (bench.json's content).

    ``methods``: names of :data:`METHODS`, or a mapping name -> function of a :class:`Job` that
    returns the exported ``model.glb``. ``overrides``: ``key=value`` config overrides for every
    run, after the YAML file ``config``. ``jobs`` > 1 runs the method runs in that many processes (named methods only).
    """
    if (mode, setting) not in SETTINGS:
        raise InputError(f"bench: unknown mode/setting {mode}/{setting} (modes: text, image; settings: standard, hard)")
    fns = dict(methods) if isinstance(methods, dict) else {}
    for name in ([] if fns else methods):
        if name not in METHODS:
            raise InputError(f"bench: unknown method '{name}' (available: {', '.join(METHODS)})")
        fns[name] = METHODS[name]
    if mode != "image" and fns.get("dreamgaussian-silhouette") is run_silhouette_start:
        raise InputError(SILHOUETTE_TEXT)
    asset_list = resolve_assets(assets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides)
    config = str(config) if config else None
    job_list = [Job(m, mode, setting, a, int(s), overrides, out / "runs" / f"{m}-{_slug(a)}-s{s}", device, config)
                for a in asset_list for m in fns for s in seeds]
    say = print if progress else (lambda *a, **k: None)
    settings = {"mode": mode, "setting": setting, "views": views, "size": size, "overrides": overrides,
                "config": config}
    results, base_rows = previous_runs(out, settings)
    finished = {(r["method"], r["asset"], r["seed"]) for r in results}
    n_jobs = len(job_list)
    job_list = [j for j in job_list if (j.method, j.asset, j.seed) not in finished]
    if n_jobs > len(job_list):
        say(f"bench: {n_jobs - len(job_list)} of {n_jobs} runs are already in {out / 'bench.json'}: "
            f"running the other {len(job_list)}")
    scored = {r["asset"] for r in base_rows}
    base_assets = [a for a in asset_list if a not in scored] if baselines else []  # baselines still to score
    needed = {j.asset for j in job_list} | set(base_assets)
    truths: dict[str, Truth] = {}
    for a in [a for a in asset_list if a in needed]:
        cfg, _ = job_config(Job("", mode, setting, a, int(seeds[0]), overrides, out, device, config))
        truths[a] = make_truth(a, cfg, views, size)
    t_start = time.perf_counter()
    report = {
        **settings, "assets": _union([r["asset"] for r in results], asset_list),
        "seeds": sorted(set(int(s) for s in seeds) | {r["seed"] for r in results}),
        "methods": _union([r["method"] for r in results], fns), "complete": False,
        "results": results, "baselines": base_rows,
    }

    def done(r: dict, k: int) -> None:  # every finished run is in bench.json at once (complete: false)
        results.append(r)
        write_partial(report, out)
        say(_line(r, k + 1, len(job_list), t_start))
    if jobs > 1 and not isinstance(methods, dict):
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            base_futs = [ex.submit(baseline_scores, truths[a], mode, int(seeds[0])) for a in base_assets]
            futs = [ex.submit(_worker, (j, truths[j.asset])) for j in job_list]
            for k, fut in enumerate(cf.as_completed(futs)):
                done(fut.result(), k)
            for fut in base_futs:
                base_rows.extend(fut.result())
    else:
        for k, job in enumerate(job_list):
            done(_run_job(job, fns[job.method], truths[job.asset]), k)
        for a in base_assets:
            base_rows.extend(baseline_scores(truths[a], mode, int(seeds[0])))
    results.sort(key=lambda r: (r["asset"], r["method"], r["seed"]))
    report["complete"] = True
    write_report(report, out)
    say(f"bench: wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return _public(report)


def previous_runs(out: Path, settings: dict) -> tuple[list[dict], list[dict]]:
    """The runs and baselines of an earlier bench in ``out`` with the same ``settings`` (mode,
    setting, views, size, overrides, config), so that a bench started again into its folder (after
    an interruption, or with more seeds, assets or methods) runs only what is missing and keeps
    what was there. A ``bench.json`` of other settings is an error: nothing is overwritten."""
    path = out / "bench.json"
    if not path.exists():
        return [], []
    try:
        old = json.loads(path.read_text())
        results, base_rows = list(old["results"]), list(old["baselines"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"bench: {path} exists but is not a readable bench report ({e}); "
                         "choose another --out or move that file away")
    diff = [f"{k} {old[k]!r} here, {v!r} now" for k, v in settings.items() if k in old and old[k] != v]
    if diff:
        raise InputError(f"bench: {path} holds a bench with other settings ({'; '.join(diff)}); "
                         "choose another --out, or delete that folder to start again")
    return results, base_rows


def _union(first: Sequence, then: Sequence) -> list:
    return list(dict.fromkeys([*first, *then]))


def _slug(asset: str) -> str:
    return asset_label(asset).replace(":", "")


def _line(r: dict, k: int, n: int, t_start: float) -> str:
    if r.get("failed"):
        return (f"bench [{k}/{n}] {r['method']} {asset_label(r['asset'])} seed {r['seed']}: FAILED ({r['failed']}), "
                f"{r['seconds']:.0f} s ({time.perf_counter() - t_start:.0f} s elapsed)")
    return (f"bench [{k}/{n}] {r['method']} {asset_label(r['asset'])} seed {r['seed']}: masked PSNR "
            f"{r['psnr_masked']:.2f} dB, Chamfer {r['chamfer_pct']:.2f}%, pose {r['pose_offset_deg']:+.0f} deg, "
            f"{r['seconds']:.0f} s ({time.perf_counter() - t_start:.0f} s elapsed)")


# ------------------------------------------------------------------------------------------------
# Reports


def _public(report: dict) -> dict:
    """The report without the private (underscore) entries that only feed bench.png."""
    def clean(rows):
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {**report, "results": clean(report["results"]), "baselines": clean(report["baselines"])}


def _stat(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m = statistics.fmean(vals)
    return f"{m:.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{m:.2f}"


METRICS = (("psnr", "PSNR (dB)"), ("psnr_masked", "masked PSNR (dB)"), ("chamfer_pct", "Chamfer (% diag)"),
           ("pose_offset_deg", "pose offset (deg)"), ("saturation_delta", "saturation − truth"))
# A failed run (no surface, or diverged) has none of these; it is counted, not averaged.
SCORE_KEYS = tuple(k for k, _ in METRICS) + ("saturation", "front_vs_front", "front_vs_back", "back_vs_back",
                                             "back_vs_front")


def summary_rows(report: dict) -> list[dict]:
    """One row per method and per baseline: mean and std over assets x seeds of each metric."""
    rows = []
    for m in report["methods"]:
        rs = [r for r in report["results"] if r["method"] == m]
        if rs:
            rows.append({"name": m, "kind": "method", "n": len(rs), "failed": sum(1 for r in rs if r.get("failed")),
                         **{k: [r.get(k) for r in rs] for k, _ in METRICS + (("seconds", ""),
                                                                              ("front_vs_front", ""),
                                                                              ("front_vs_back", ""))}})
    for b in BASELINES:
        rs = [r for r in report["baselines"] if r["name"] == b]
        if rs:
            rows.append({"name": b, "kind": "baseline", "n": len(rs), **{k: [r.get(k) for r in rs] for k, _ in METRICS}})
    return rows


def verdicts(report: dict) -> list[str]:
    """For each method: does its mean masked PSNR beat each baseline's (the truth aside)?"""
    rows = {r["name"]: r for r in summary_rows(report)}
    lines = []
    for m in report["methods"]:
        if m not in rows:
            continue
        scored = [v for v in rows[m]["psnr_masked"] if v is not None]
        failed = rows[m]["failed"]
        if failed:
            lines.append(f"- {m}: **{failed} of {rows[m]['n']} runs failed** (no surface, or diverged); the means "
                         "are over the others")
        if not scored:
            continue
        mine = statistics.fmean(scored)
        for b in BASELINES[1:]:
            if b in rows:
                d = mine - statistics.fmean(rows[b]["psnr_masked"])
                lines.append(f"- {m} vs {b}: {d:+.2f} dB masked PSNR: {'beats' if d > 0 else '**does not beat**'} {b}")
    return lines


def markdown(report: dict) -> str:
    head = (f"# dreamgs bench\n\nmode **{report['mode']}**, setting **{report['setting']}**; "
            f"{len(report['assets'])} asset(s): {', '.join(asset_label(a) for a in report['assets'])}; "
            f"seeds {', '.join(map(str, report['seeds']))}; {report['views']} held-out views at "
            f"{report['size']} px; overrides: `{' '.join(report['overrides']) or '(none)'}`\n\n"
            "Mean ± std over assets × seeds (baselines: over assets). Masked PSNR is over the union of the result's "
            "and the truth's silhouettes; the pose offset is the azimuth turn of the truth that best matches.\n\n")
    cols = [c for _, c in METRICS]
    lines = ["| method / baseline | " + " | ".join(cols) + " | front vs front / back (dB) | time (s) | n |",
             "|---" * (len(cols) + 4) + "|"]
    for r in summary_rows(report):
        fb = (f"{_stat(r['front_vs_front'])} / {_stat(r['front_vs_back'])}" if r["kind"] == "method" else "")
        t = _stat(r["seconds"]) if r["kind"] == "method" else ""
        name = r["name"] if r["kind"] == "method" else f"*{r['name']}*"
        n = f"{r['n']} ({r['failed']} failed)" if r.get("failed") else str(r["n"])
        lines.append(f"| {name} | " + " | ".join(_stat(r[k]) for k, _ in METRICS) + f" | {fb} | {t} | {n} |")
    per_asset = ["", "## Per asset (methods: mean ± std over seeds)", "",
                 "| asset | method / baseline | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for a in report["assets"]:
        sub = {**report, "assets": [a], "results": [r for r in report["results"] if r["asset"] == a],
               "baselines": [r for r in report["baselines"] if r["asset"] == a]}
        for r in summary_rows(sub):
            name = r["name"] if r["kind"] == "method" else f"*{r['name']}*"
            per_asset.append(f"| {asset_label(a)} | {name} | " + " | ".join(_stat(r[k]) for k, _ in METRICS) + " |")
    v = verdicts(report)
    return head + "\n".join(lines) + "\n\n" + ("\n".join(v) + "\n" if v else "") + "\n".join(per_asset) + "\n"


def contact_sheet(report: dict, max_assets: int = 3) -> np.ndarray:
    """Rows: per asset, the truth, each method (first seed) and each baseline; columns: held-out views."""
    from .media import image_grid

    tiles = []
    for a in report["assets"][:max_assets]:
        rows = [r for r in report["baselines"] if r["asset"] == a and r["name"] == "truth"]
        for m in report["methods"]:
            rows += [r for r in report["results"] if r["asset"] == a and r["method"] == m and "_sheet" in r][:1]
        rows += [r for r in report["baselines"] if r["asset"] == a and r["name"] != "truth"]
        for r in [r for r in rows if "_sheet" in r]:  # rows read back from an earlier bench.json have no images
            tiles.extend(list(r["_sheet"]))
    if not tiles:
        return np.ones((8, 8, 3))
    return image_grid(np.stack(tiles), ncols=SHEET_VIEWS, pad=2)


def write_partial(report: dict, out: Path) -> None:
    """bench.json alone, as it stands: an interrupted bench keeps every run that finished."""
    from .run import atomic_write

    atomic_write(out / "bench.json", json.dumps(_public(report), indent=1, default=_json_default))


def write_report(report: dict, out: Path) -> None:
    from .media import save_image
    from .run import atomic_write

    public = _public(report)
    atomic_write(out / "bench.json", json.dumps(public, indent=1, default=_json_default))
    atomic_write(out / "bench.md", markdown(public))
    save_image(out / "bench.png", contact_sheet(report))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
