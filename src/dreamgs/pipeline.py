"""The whole job, top-down: input -> prior -> stage 1 (Gaussians) -> stage 2 (textured mesh) -> files.

:func:`generate` is the Python API behind ``dreamgs text`` and ``dreamgs image``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
                  on_progress: ProgressFn | None = None, progress: bool = True, transform=None,
                  stats: dict | None = None) -> dict:
    """Stage 2 and the mesh exports (.glb, .obj/.mtl/.png, turntable) into ``run_dir``.

    ``transform``: (centre, scale) mapping the normalised frame stage 2 ran in back to the
    model's own frame for the exported files (see :func:`mesh_from`). ``stats`` receives
    stage 2's ``bad_steps`` (skipped non-finite texture steps).
    """
    from .export import save_glb, save_obj
    from .media import turntable
    from .stage2 import run_stage2

    def report(step: int, loss: float) -> None:
        if on_progress is not None:
            on_progress({"stage": "stage2", "step": step, "total": cfg.stage2.iters, "loss": loss})

    mesh_timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mesh = run_stage2(model, prior, cfg, ref, progress=progress, timings=mesh_timings, callback=report, stats=stats)
    timings["stage2"] = time.perf_counter() - t0
    timings.update({f"stage2_{k}": v for k, v in mesh_timings.items()})
    if cfg.export.video:
        t0 = time.perf_counter()
        result.files["video_mesh"] = turntable(mesh_render_fn(mesh), run_dir / "mesh.mp4", **_video_args(cfg, progress))
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
    nerf_file = src / "nerf.safetensors" if src.is_dir() else None
    dmtet_file = src / "dmtet.safetensors" if src.is_dir() else None
    if src.is_dir():
        if not (src / "config.yaml").is_file() or not ((src / "model.ply").is_file() or nerf_file.is_file()
                                                       or dmtet_file.is_file()):
            raise InputError(f"{src}: not a dreamgs run folder (needs config.yaml and model.ply, nerf.safetensors "
                             "or dmtet.safetensors)")
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
    if dmtet_file is not None and not model_path.is_file() and dmtet_file.is_file():  # a --method magic3d run
        from .representations.dmtet import load_dmtet

        model = load_dmtet(dmtet_file, device=device)
    elif nerf_file is not None and not model_path.is_file():  # a --method dreamfusion run
        from .representations.nerf import load_nerf

        model = load_nerf(nerf_file, device=device)
    else:
        model = load_ply(model_path, device=device)
    if not src.is_dir():
        model, centre, scale = normalize_gaussians(model)
        transform = (centre, scale)
    seed = int(cfg.seed or 0)
    seed_everything(seed)
    if run_dir != src:
        check_output_location(run_dir)
    ref, ref_image, prior = None, None, None
    if cfg.mode == "image" and src.is_dir() and (src / "input_rgba.png").is_file():
        from .media import load_image

        rgba = torch.as_tensor(load_image(src / "input_rgba.png")).float()
        ref = make_reference(rgba, cfg, device)
        a = ref.rgba[..., 3:4]
        ref_image = (ref.rgba[..., :3] * a + (1 - a)).permute(2, 0, 1)[None]
    if cfg.stage2.iters > 0 and (src.is_dir() or cfg.prompt.strip()):
        prior = load_prior(cfg, device, ref_image)
    # The inputs are valid: only now is an output folder created.
    run_dir = prepare_run_dir(run_dir, cfg, seed) if run_dir != src else run_dir
    result = RunResult(run_dir, seed, {})
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


def _video_args(cfg: Config, progress: bool = False) -> dict:
    e = cfg.export
    return dict(frames=e.video_frames, size=e.video_size, elevation=cfg.elevation if cfg.mode == "image" else -15.0,
                radius=cfg.camera.radius, fovy=cfg.camera.fovy, progress=progress)


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
    elif not cfg.image:
        raise InputError("no input image given (image=path/to/image.png)")
    elif Path(cfg.image).is_dir():
        raise InputError(f"{cfg.image}: is a directory, expected an input image file")
    elif not Path(cfg.image).is_file():
        raise InputError(f"{cfg.image}: input image not found")
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# Running: validate everything, then create the run folder, then train (resumable)


@dataclass
class _Run:
    """A validated run: its config, device, folder, prior and (image mode) input."""

    cfg: Config
    seed: int
    device: torch.device
    run_dir: Path
    prior: object
    ref: object = None  # stage1.ReferenceView in image mode
    rgba: torch.Tensor | None = None  # the preprocessed input image (H, W, 4), image mode


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """With ``enabled``, run the body under ``torch.use_deterministic_algorithms(True)``.

    On the CPU this makes runs (and resumed runs) reproducible bit for bit. On CUDA, operations
    without a deterministic kernel warn instead of failing (``warn_only``); gsplat's kernels use
    atomics, so GPU runs are close but not bit-exact. The previous setting is restored afterwards.
    """
    if not enabled:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def check_output_location(run_dir: str | os.PathLike) -> None:
    """Raise :class:`InputError` unless ``run_dir`` is (or can be created as) a writable folder.

    Creates nothing that stays: writability is probed with a temporary file in the nearest
    existing folder, so a run that fails validation leaves no run folder behind.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"output folder {run_dir} exists and is not a folder")
    base = run_dir
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise InputError(f"output folder {run_dir} cannot be created: {base} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".dreamgs-write-test-"):
            pass
    except OSError as e:
        raise InputError(f"output folder {run_dir} is not writable ({e.strerror or e})") from None


def _reference(rgba: torch.Tensor | None, cfg: Config, device):
    """Image mode: the reference view and the prior's conditioning image (white background)."""
    if rgba is None:
        return None, None
    from .stage1 import make_reference

    ref = make_reference(rgba, cfg, device)
    a = ref.rgba[..., 3:4]
    return ref, (ref.rgba[..., :3] * a + (1 - a)).permute(2, 0, 1)[None]


def generate(prompt: str | None = None, *, image: str | Path | None = None,
             config: str | Path | Config | None = None, overrides: Sequence[str] = (),
             seed: int | None = None, output_dir: str | Path | None = None, run_dir: str | Path | None = None,
             on_progress: ProgressFn | None = None, progress: bool = True) -> RunResult:
    """Generate a 3D asset from a text ``prompt`` or an ``image`` (an RGBA file).

    Writes everything into a new run folder under ``output_dir`` (default: the config's
    ``output_dir``) and returns its paths. ``on_progress`` receives dicts with ``stage``,
    ``step``, ``total``, ``loss``, ``gaussians`` and, now and then, a ``preview`` image.

    Every input (config, prompt, image, output folder, prior and its asset or weights) is checked
    before the run folder is created; bad input raises a :class:`~dreamgs.errors.DreamGSError`
    and leaves nothing behind. Stage 1 writes ``checkpoint.safetensors`` every
    ``stage1.checkpoint_every`` steps and when it ends, so an interrupted run continues with
    :func:`resume_run`; the checkpoint is removed when the run finishes.
    """
    from .media import save_image
    from .priors import load_prior
    from .run import new_run_dir, prepare_run_dir, resolve_seed
    from .stage1 import resolve_device

    t_start = time.perf_counter()
    cfg = resolve_config(prompt, image, config, overrides, seed)
    seed = resolve_seed(cfg)
    device = resolve_device(cfg.device)
    if run_dir is None:
        parent = Path(output_dir or cfg.output_dir)
        run_dir = parent / cfg.run_name if cfg.run_name else new_run_dir(parent, cfg)
    run_dir = Path(run_dir)
    check_output_location(run_dir)
    seed_everything(seed)
    rgba = None
    if cfg.mode == "image":
        from .images import input_view

        rgba = torch.as_tensor(input_view(cfg.image, size=cfg.stage1.ref_size, recenter=cfg.image_recenter,
                                          segmenter=cfg.prep.segmenter or None,
                                          segmenter_norm=cfg.prep.segmenter_norm)).float()
    t0 = time.perf_counter()
    ref, ref_image = _reference(rgba, cfg, device)
    prior = load_prior(cfg, device, ref_image)
    timings = {"prior_load": time.perf_counter() - t0}

    # The inputs are valid: from here on the run folder exists.
    run_dir = prepare_run_dir(run_dir, cfg, seed)
    from .checkpoint import CHECKPOINT_NAME

    for stale in (CHECKPOINT_NAME, "summary.json"):  # from an earlier run in the same folder
        (run_dir / stale).unlink(missing_ok=True)
    if rgba is not None:
        save_image(run_dir / "input_rgba.png", rgba.numpy())
    run = _Run(cfg, seed, device, run_dir, prior, ref, rgba)
    return _execute(run, None, on_progress, progress, t_start, timings)


# Settings that may change when a run is resumed: where it runs, memory-related sizes, and
# everything after stage 1. The rest would make the checkpoint's state meaningless.
RESUME_KEYS = ("device", "backend", "stage1.batch_size", "stage1.render_sizes", "stage1.size_milestones",
               "stage1.checkpoint_every", "stage1.max_bad_steps", "stage1.deterministic", "densify.max_gaussians")
RESUME_SECTIONS = ("stage2", "mesh", "texture", "export")
# Keys outside those sections that only stage 2 reads: they may change once stage 1 is done.
STAGE2_KEYS = ("nerf.mesh_threshold", "nerf.bake_samples")


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint that :func:`resume_run` can read (header check only)."""
    from .checkpoint import checkpoint_path, read_meta
    from .errors import DreamGSError

    try:
        read_meta(checkpoint_path(run_dir))
    except DreamGSError:
        return False
    return True


def resume_run(run_dir: str | os.PathLike, overrides: Sequence[str] = (), *, on_progress: ProgressFn | None = None,
               progress: bool = True) -> RunResult:
    """Continue an interrupted run from its ``checkpoint.safetensors``.

    The run continues with the checkpoint's config (its seed included) and state; on the CPU with
    ``stage1.deterministic`` its outputs equal those of an uninterrupted run bit for bit. A run
    stopped after stage 1 continues at stage 2 without repeating stage 1. ``overrides`` may
    change only :data:`RESUME_KEYS`, the sections :data:`RESUME_SECTIONS` and, after stage 1,
    :data:`STAGE2_KEYS` (e.g. a smaller render size after running out of memory, or another
    threshold after an empty mesh); they are recorded in the folder's ``config.yaml``.
    """
    from .checkpoint import CHECKPOINT_NAME, checkpoint_path, load_checkpoint
    from .config import apply_override, dump_yaml, from_dict
    from .errors import ConfigError
    from .priors import load_prior
    from .run import atomic_write
    from .stage1 import resolve_device

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    path = checkpoint_path(run_dir)
    if not path.is_file():
        if (run_dir / "summary.json").is_file():
            raise InputError(f"{run_dir}: the run has finished (summary.json is there); nothing to resume")
        raise InputError(f"{run_dir}: no {CHECKPOINT_NAME} to resume from "
                         "(runs write one every stage1.checkpoint_every steps and when stage 1 ends)")
    ckpt = load_checkpoint(path)
    try:
        cfg = from_dict(ckpt.config)
    except ConfigError as e:
        raise InputError(f"{path}: the checkpoint's config is invalid ({e})") from None
    allowed = RESUME_KEYS + (STAGE2_KEYS if ckpt.stage == "stage2" else ())
    for ov in overrides:
        key = ov.split("=", 1)[0].strip()
        if "=" in ov and key not in allowed and key.split(".")[0] not in RESUME_SECTIONS:
            raise ConfigError(f"override '{key}' cannot change when resuming; allowed: {', '.join(allowed)} "
                              f"and the {', '.join(RESUME_SECTIONS)} sections")
        apply_override(cfg, ov)
    validate(cfg)
    if cfg.seed is None:
        raise InputError(f"{path}: the checkpoint's config has no seed")
    if cfg.mode == "image" and ckpt.ref_rgba is None:
        raise InputError(f"{path}: image-mode checkpoint without its input image")
    check_output_location(run_dir)
    device = resolve_device(cfg.device)
    rgba = ckpt.ref_rgba if cfg.mode == "image" else None
    t0 = time.perf_counter()
    ref, ref_image = _reference(rgba, cfg, device)
    prior = load_prior(cfg, device, ref_image)
    timings = {"prior_load": time.perf_counter() - t0}
    if overrides:
        atomic_write(run_dir / "config.yaml", dump_yaml(cfg))
    run = _Run(cfg, cfg.seed, device, run_dir, prior, ref, rgba)
    return _execute(run, ckpt, on_progress, progress, t_start, timings)


OOM_SETTINGS = {
    "stage1": "stage1.render_sizes (render size), stage1.batch_size (views per step) or densify.max_gaussians "
              "(Gaussian count)",
    "stage2": "stage2.render_size, stage2.batch_size, texture.bake_resolution, texture.size or mesh.grid_resolution",
    "outputs": "export.video_size",
}


def is_out_of_memory(e: BaseException) -> bool:
    """Out-of-memory errors, including those that extensions and libraries report as RuntimeError
    (cuBLAS/cuDNN allocation failures, the CPU allocator)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "can't allocate memory"))


def oom_message(phase: str, detail: str, run_dir: Path, checkpoint_kept: bool) -> str:
    """One line: where memory ran out (``phase`` is a key of :data:`OOM_SETTINGS`), which settings
    to lower, and how to continue."""
    where = {"stage1": "stage 1", "stage2": "stage 2", "outputs": "writing the outputs"}[phase]
    msg = f"out of memory in {where}{detail}; lower {OOM_SETTINGS[phase]}"
    if checkpoint_kept:
        msg += f"; the last checkpoint is kept, continue with: dreamgs resume {run_dir} KEY=VALUE"
    return msg


def _restore(stage1, prior, ckpt) -> None:
    from .checkpoint import distill_state, restore_prior_generators, trainer_state

    try:
        stage1.trainer.load_state_dict(trainer_state(ckpt))
        restore_prior_generators(prior, ckpt)
        stage1.distill.load_state_dict(distill_state(ckpt))
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise InputError(f"{ckpt.path}: cannot restore the run's state ({type(e).__name__}: {e})") from None


def _execute(run: _Run, ckpt, on_progress: ProgressFn | None, progress: bool, t_start: float,
             timings: dict[str, float]) -> RunResult:
    """Stage 1 (from scratch or a checkpoint), outputs, stage 2, exports and ``summary.json``."""
    from .checkpoint import checkpoint_path, save_checkpoint
    from .config import to_dict
    from .errors import DreamGSError, TrainingError
    from .methods import get_method
    from .run import write_json
    from .stage1 import render_size

    cfg, run_dir, prior = run.cfg, run.run_dir, run.prior
    method = get_method(cfg.method)
    ckpt_file = checkpoint_path(run_dir)
    result = RunResult(run_dir, run.seed, {"config": run_dir / "config.yaml", "seed": run_dir / "seed.txt"})
    if (run_dir / "input_rgba.png").is_file():
        result.files["input"] = run_dir / "input_rgba.png"
    phase, stage1, bad2 = "stage1", None, {"bad_steps": 0}
    out_of_memory = False
    with deterministic_algorithms(cfg.stage1.deterministic):
        try:
            t0 = time.perf_counter()
            stage1 = method.make_stage1(cfg, prior, run.ref, run.device)
            if ckpt is not None:
                _restore(stage1, prior, ckpt)
            if progress and not method.TIME_ESTIMATE:
                from .config import preset_line
                from .progress import say

                say(f"dreamgs: {cfg.mode} -> 3D with {cfg.method} on {run.device}")
                say(preset_line(cfg))
            elif progress:  # the run's first lines: how long it will take here (timed with real steps), the preset
                from .config import preset_line
                from .estimate import announce
                from .progress import say

                say(announce(stage1, cfg, run.device, time.perf_counter() - t_start,
                             stage1_done=ckpt is not None and ckpt.stage != "stage1"))
                say(preset_line(cfg))

            def save(stage: str) -> None:
                save_checkpoint(ckpt_file, stage=stage, config=to_dict(cfg), trainer=stage1.trainer, prior=prior,
                                ref_rgba=run.rgba, extra={"seed": run.seed}, distill=stage1.distill)

            def after_step(s1: Stage1) -> None:
                every = cfg.stage1.checkpoint_every
                if every and s1.step_count % every == 0 and s1.step_count < cfg.stage1.iters:
                    save("stage1")
                if on_progress is None:
                    return
                info = {"stage": "stage1", "step": s1.step_count, "total": cfg.stage1.iters,
                        "loss": s1.last.get("loss"), "gaussians": len(s1.model)}
                if s1.step_count % PREVIEW_EVERY == 0 or s1.step_count == cfg.stage1.iters:
                    info["preview"] = method.preview(s1.model, cfg, azimuth=3.0 * s1.step_count)
                on_progress(info)

            if ckpt is None or ckpt.stage == "stage1":
                stage1.run(callback=after_step, progress=progress)
                save("stage2")  # the stage boundary: a resumed run starts after stage 1
                timings["stage1"] = time.perf_counter() - t0
            model = stage1.model.detach()

            phase = "outputs"
            result.files.update(method.save_model(model, run_dir))
            if cfg.export.video:
                t0 = time.perf_counter()
                key, name = method.VIDEO_NAME
                result.files[key] = method.video(model, cfg, run_dir / name, **_video_args(cfg, progress))
                timings[key] = time.perf_counter() - t0
            summary = {"mode": cfg.mode, "prompt": cfg.prompt, "image": cfg.image, "seed": run.seed,
                       "prior": prior.describe(), "device": str(run.device), **method.summary(model, cfg)}
            if cfg.method != "dreamgaussian":
                summary["method"] = cfg.method
                summary["stage1_last"] = {k: v for k, v in stage1.last.items()}

            if cfg.stage2.enabled:
                phase = "stage2"
                try:
                    summary.update(textured_mesh(model, prior, cfg, run.ref, run_dir, result, timings, on_progress,
                                                 progress, stats=bad2))
                except DreamGSError as e:  # stage 1's outputs and checkpoint stay: say how to try stage 2 again
                    raise type(e)(f"{e}; stage 1's outputs are kept, try stage 2 again with: dreamgs resume "
                                  f"{run_dir} KEY=VALUE") from None
        except (torch.OutOfMemoryError, MemoryError):
            out_of_memory = True  # raised below, outside this handler, so the failed frames are freed
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            out_of_memory = True
    if out_of_memory:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        detail = ""
        if phase == "stage1" and stage1 is not None:
            step = stage1.step_count
            detail = (f" at step {step + 1} of {cfg.stage1.iters} (render size {render_size(cfg, step)}, "
                      f"batch {cfg.stage1.batch_size}, {len(stage1.model)} Gaussians)")
        raise TrainingError(oom_message(phase, detail, run_dir, ckpt_file.is_file()))

    bad1 = stage1.trainer.bad_steps
    summary["bad_steps"] = bad1 + bad2["bad_steps"]
    summary["bad_steps_by_stage"] = {"stage1": bad1, "stage2": bad2["bad_steps"]}
    if ckpt is not None:
        summary["resumed_from"] = {"stage": ckpt.stage, "step": ckpt.step}
    result.summary = summary
    summary["files"] = {k: str(p.relative_to(run_dir)) for k, p in result.files.items()}
    summary["timings_s"] = timings
    summary["total_s"] = time.perf_counter() - t_start
    result.files["summary"] = write_json(run_dir / "summary.json", summary)
    ckpt_file.unlink(missing_ok=True)  # the run is complete; summary.json marks it
    return result

