"""The whole job, top-down: input -> prior -> stage 1 (Gaussians) -> stage 2 (textured mesh) -> files.

:func:`generate` is the Python API behind ``dreamgs text`` and ``dreamgs image``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .config import Config, load_config, validate
from .errors import InputError

MAX_PROMPT_CHARS = 1000
PREVIEW_EVERY = 10  # stage-1 steps between preview renders sent to on_progress


@dataclass
class RunResult:
    run_dir: Path
    seed: int
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


ProgressFn = Callable[[dict], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def preview_image(model, cfg: Config, azimuth: float = 0.0, size: int = 128) -> np.ndarray:
    """A quick render of the current Gaussians (H, W, 3) uint8, for progress displays."""
    from .cameras import make_cameras
    from .render import render

    cams = make_cameras(cfg.elevation if cfg.mode == "image" else -15.0, (azimuth + 180.0) % 360.0 - 180.0,
                        cfg.camera.radius, cfg.camera.fovy, size, device=model.device)
    rgb = render(model, cams, background=torch.ones(3, device=model.device), backend=cfg.backend).rgb[0]
    return (rgb.clamp(0, 1) * 255).round().byte().cpu().numpy()


def textured_mesh(model, prior, cfg: Config, ref, run_dir: Path, result: RunResult, timings: dict,
                  on_progress: ProgressFn | None = None, progress: bool = True, transform=None) -> dict:
    """Stage 2 and the mesh exports (.glb, .obj/.mtl/.png, turntable) into ``run_dir``.

    ``transform``: (centre, scale) mapping the normalised frame stage 2 ran in back to the
    model's own frame for the exported files (see :func:`mesh_from`).
    """
    from .export import save_glb, save_obj
    from .media import turntable
    from .stage2 import run_stage2

    def report(step: int, loss: float) -> None:
        if on_progress is not None:
            on_progress({"stage": "stage2", "step": step, "total": cfg.stage2.iters, "loss": loss})

    mesh_timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mesh = run_stage2(model, prior, cfg, ref, progress=progress, timings=mesh_timings, callback=report)
    timings["stage2"] = time.perf_counter() - t0
    timings.update({f"stage2_{k}": v for k, v in mesh_timings.items()})
    if cfg.export.video:
        t0 = time.perf_counter()
        result.files["video_mesh"] = turntable(mesh_render_fn(mesh), run_dir / "mesh.mp4", **_video_args(cfg))
        timings["video_mesh"] = time.perf_counter() - t0
    if transform is not None:
        centre, scale = transform
        mesh = dataclasses.replace(mesh, vertices=mesh.vertices * scale + centre)
    if cfg.export.glb:
        result.files["glb"] = save_glb(mesh, run_dir / "model.glb")
    if cfg.export.obj:
        obj = save_obj(mesh, run_dir / "model.obj")
        result.files.update(obj=obj, mtl=obj.with_suffix(".mtl"))
        if mesh.texture is not None:
            result.files["albedo"] = run_dir / "model_albedo.png"
    return {"mesh_vertices": mesh.num_vertices, "mesh_faces": mesh.num_faces}


def mesh_from(source: str | Path, *, config: str | Path | None = None, overrides: Sequence[str] = (),
              out_dir: str | Path | None = None, progress: bool = True) -> RunResult:
    """Stage 2 on an existing stage-1 run folder, or on any 3DGS ``.ply`` (``dreamgs mesh``).

    A run folder is read with its own ``config.yaml`` (``overrides`` apply on top) and written
    into. A bare ``.ply`` is centred and scaled into the unit frame the stage-2 cameras expect,
    meshed there, and exported in its original frame; it is only baked, with no prior
    refinement, unless a prompt is given (``prompt=...``; the prior is ``prior.kind``).
    """
    import yaml

    from .config import apply_override, from_dict
    from .gaussians import load_ply
    from .priors import load_prior
    from .run import prepare_run_dir, write_json
    from .stage1 import make_reference, resolve_device

    src = Path(source)
    t_start = time.perf_counter()
    transform = None
    if src.is_dir():
        if not (src / "config.yaml").is_file() or not (src / "model.ply").is_file():
            raise InputError(f"{src}: not a dreamgs run folder (needs config.yaml and model.ply)")
        try:
            cfg = from_dict(yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise InputError(f"{src / 'config.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
        if config:
            from .config import apply_dict, load_yaml
            apply_dict(cfg, load_yaml(config), str(config))
        for ov in overrides:
            apply_override(cfg, ov)
        validate(cfg)
        run_dir = Path(out_dir) if out_dir else src
        model_path = src / "model.ply"
    elif src.suffix.lower() == ".ply":
        cfg = load_config("text", config, list(overrides))
        run_dir = Path(out_dir) if out_dir else src.with_name(f"{src.stem}_mesh")
        model_path = src
    else:
        raise InputError(f"{src}: expected a run folder or a 3DGS .ply file")
    device = resolve_device(cfg.device)
    model = load_ply(model_path, device=device)
    if not src.is_dir():
        model, centre, scale = normalize_gaussians(model)
        transform = (centre, scale)
    seed = int(cfg.seed or 0)
    seed_everything(seed)
    run_dir = prepare_run_dir(run_dir, cfg, seed) if run_dir != src else run_dir
    result = RunResult(run_dir, seed, {})
    ref, ref_image, prior = None, None, None
    if cfg.mode == "image" and src.is_dir() and (src / "input_rgba.png").is_file():
        from .media import load_image

        rgba = torch.as_tensor(load_image(src / "input_rgba.png")).float()
        ref = make_reference(rgba, cfg, device)
        a = ref.rgba[..., 3:4]
        ref_image = (ref.rgba[..., :3] * a + (1 - a)).permute(2, 0, 1)[None]
    if cfg.stage2.iters > 0 and (src.is_dir() or cfg.prompt.strip()):
        prior = load_prior(cfg, device, ref_image)
    timings: dict[str, float] = {}
    summary = {"source": str(src), "gaussians": len(model), "prior": prior.describe() if prior else None}
    summary.update(textured_mesh(model, prior, cfg, ref, run_dir, result, timings, progress=progress,
                                 transform=transform))
    summary["files"] = {k: str(p.relative_to(run_dir)) for k, p in result.files.items()}
    summary["timings_s"] = timings
    summary["total_s"] = time.perf_counter() - t_start
    result.summary = summary
    result.files["mesh_summary"] = write_json(run_dir / "mesh_summary.json", summary)
    return result


def normalize_gaussians(model, radius: float = 0.5):
    """Centre and scale a Gaussian model so its opaque core fits a sphere of ``radius``.

    Returns the normalised model and (centre, scale) with ``original = normalised * scale + centre``.
    The extent ignores the 1% most outlying opaque Gaussians (floaters in captured scenes).
    """
    from .gaussians import GaussianModel

    means = model.means.detach()
    opaque = model.opacities.detach() > 0.1
    core = means[opaque] if opaque.sum() >= 10 else means
    lo, hi = torch.quantile(core, 0.01, dim=0), torch.quantile(core, 0.99, dim=0)
    centre = (lo + hi) / 2
    scale = float((core - centre).norm(dim=-1).quantile(0.99).clamp_min(1e-8)) / radius
    params = {k: v.detach().clone() for k, v in model.params.items()}
    params["means"] = (params["means"] - centre) / scale
    params["scales"] = params["scales"] - math.log(scale)
    return GaussianModel(params, model.sh_degree), centre, scale


def _video_args(cfg: Config) -> dict:
    e = cfg.export
    return dict(frames=e.video_frames, size=e.video_size, elevation=cfg.elevation if cfg.mode == "image" else -15.0,
                radius=cfg.camera.radius, fovy=cfg.camera.fovy, progress=False)


def mesh_render_fn(mesh, background=(1.0, 1.0, 1.0)):
    """Render function for :func:`dreamgs.media.turntable`: textured mesh over ``background``."""
    from .mesh.raster import render_mesh

    bg = torch.tensor(background, device=mesh.device)

    @torch.no_grad()
    def fn(cams):
        return render_mesh(mesh, cams.to(mesh.device), background=bg, ssaa=2).rgb
    return fn


def check_prompt(prompt: str) -> str:
    if prompt is None or not str(prompt).strip():
        raise InputError("the prompt is empty; describe the object to generate, e.g. dreamgs text \"a ceramic mug\"")
    prompt = " ".join(str(prompt).split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS} "
                         "(text encoders read only the first ~77 tokens)")
    return prompt


def resolve_config(prompt: str | None = None, image: str | Path | None = None,
                   config: str | Path | Config | None = None, overrides: Sequence[str] = (),
                   seed: int | None = None) -> Config:
    """Build and check the run's config; the mode is image when an image is given, else text."""
    mode = "image" if image is not None else "text"
    if isinstance(config, Config):
        cfg = config
        cfg.mode = mode
        validate(cfg)
    else:
        cfg = load_config(mode, config, overrides)
    if prompt is not None:
        cfg.prompt = prompt
    if image is not None:
        cfg.image = str(image)
    if seed is not None:
        cfg.seed = seed
    if mode == "text":
        cfg.prompt = check_prompt(cfg.prompt)
    elif not Path(cfg.image).is_file():
        raise InputError(f"{cfg.image}: input image not found")
    validate(cfg)
    return cfg


def generate(prompt: str | None = None, *, image: str | Path | None = None,
             config: str | Path | Config | None = None, overrides: Sequence[str] = (),
             seed: int | None = None, output_dir: str | Path | None = None, run_dir: str | Path | None = None,
             on_progress: ProgressFn | None = None, progress: bool = True) -> RunResult:
    """Generate a 3D asset from a text ``prompt`` or an ``image`` (an RGBA file).

    Writes everything into a new run folder under ``output_dir`` (default: the config's
    ``output_dir``) and returns its paths. ``on_progress`` receives dicts with ``stage``,
    ``step``, ``total``, ``loss``, ``gaussians`` and, now and then, a ``preview`` image.
    """
    from .gaussians import save_ply
    from .media import gaussian_render_fn, turntable
    from .priors import load_prior
    from .run import default_run_name, prepare_run_dir, resolve_seed, write_json
    from .stage1 import Stage1, make_reference, resolve_device

    t_start = time.perf_counter()
    cfg = resolve_config(prompt, image, config, overrides, seed)
    seed = resolve_seed(cfg)
    seed_everything(seed)
    device = resolve_device(cfg.device)
    if run_dir is None:
        run_dir = Path(output_dir or cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
    run_dir = prepare_run_dir(run_dir, cfg, seed)
    result = RunResult(run_dir, seed, {"config": run_dir / "config.yaml", "seed": run_dir / "seed.txt"})
    timings: dict[str, float] = {}

    # Input and prior.
    t0 = time.perf_counter()
    ref, ref_image = None, None
    if cfg.mode == "image":
        from .images import preprocess
        from .media import save_image

        rgba = torch.as_tensor(preprocess(cfg.image, size=cfg.stage1.ref_size)).float()
        save_image(run_dir / "input_rgba.png", rgba.numpy())
        result.files["input"] = run_dir / "input_rgba.png"
        ref = make_reference(rgba, cfg, device)
        a = ref.rgba[..., 3:4]
        ref_image = (ref.rgba[..., :3] * a + (1 - a)).permute(2, 0, 1)[None]
    prior = load_prior(cfg, device, ref_image)
    timings["prior_load"] = time.perf_counter() - t0

    # Stage 1.
    t0 = time.perf_counter()
    stage1 = Stage1(cfg, prior, ref, device)

    def report(s1: Stage1) -> None:
        if on_progress is None:
            return
        info = {"stage": "stage1", "step": s1.step_count, "total": cfg.stage1.iters,
                "loss": s1.last.get("loss"), "gaussians": len(s1.model)}
        if s1.step_count % PREVIEW_EVERY == 0 or s1.step_count == cfg.stage1.iters:
            info["preview"] = preview_image(s1.model, cfg, azimuth=3.0 * s1.step_count)
        on_progress(info)

    model = stage1.run(callback=report, progress=progress)
    timings["stage1"] = time.perf_counter() - t0
    result.files["ply"] = save_ply(model, run_dir / "model.ply")
    if cfg.export.video:
        t0 = time.perf_counter()
        result.files["video_gaussians"] = turntable(
            gaussian_render_fn(model, backend=cfg.backend), run_dir / "gaussians.mp4", **_video_args(cfg))
        timings["video_gaussians"] = time.perf_counter() - t0
    summary = {"mode": cfg.mode, "prompt": cfg.prompt, "image": cfg.image, "seed": seed,
               "prior": prior.describe(), "device": str(device), "gaussians": len(model),
               "bad_steps": stage1.trainer.bad_steps}

    # Stage 2: textured mesh.
    if cfg.stage2.enabled:
        summary.update(textured_mesh(model, prior, cfg, ref, run_dir, result, timings, on_progress, progress))

    result.summary = summary
    summary["files"] = {k: str(p.relative_to(run_dir)) for k, p in result.files.items()}
    summary["timings_s"] = timings
    summary["total_s"] = time.perf_counter() - t_start
    result.files["summary"] = write_json(run_dir / "summary.json", summary)
    return result
