"""A local web app (``dreamgs app``): text→3D and image→3D in the browser, one run at a time.

Layout of the app's work folder (everything the app writes stays inside it):

- ``runs/``: one run folder per job, exactly as ``dreamgs text``/``image`` write them, plus the
  download zips;
- ``uploads/``: uploaded images, copied under sanitised names, and their preprocessed RGBA;
- ``cache/``: Gradio's own upload/serving cache (``GRADIO_TEMP_DIR``);
- ``tmp/``: the process's temporary folder (``TMPDIR``), for libraries that write temporary files.

Jobs from all users go through one queue with a single worker (``concurrency_limit=1`` shared by
both tabs), and :class:`JobRunner` additionally holds a lock around :func:`~dreamgs.pipeline.generate`,
so two runs never share the GPU even if a browser disconnects mid-run.

The Gradio layer (:func:`build_app`) only maps :class:`JobRunner` events to components; the
runner, the upload handling and the zips are plain functions, tested without a browser.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import threading
import time
import traceback
import unicodedata
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_output
from .config import Config, load_config
from .errors import DreamGSError, InputError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_WORKDIR = "outputs/app"
DEFAULT_MAX_UPLOAD_MB = 20.0
MAX_QUEUE = 32  # jobs waiting at once; more are refused with a "queue full" message
TEXT_PRIORS = ("oracle", "oracle-mv", "sd", "mvdream")
IMAGE_PRIORS = ("oracle", "oracle-mv", "zero123", "stable-zero123", "imagedream")
STATUS_INTERVAL_S = 0.25  # least time between two status updates (previews always go through)
MAX_STEPS = 5000


# --- files ----------------------------------------------------------------------------------------


def safe_filename(name: str, default: str = "upload") -> str:
    """A file name safe to create inside a folder: the last path component of ``name`` (``/`` and
    ``\\`` both count), reduced to ASCII letters, digits, ``-``, ``_`` and ``.``, with no leading
    dot and at most 100 characters. ``../../x.png`` becomes ``x.png``; an empty result becomes
    ``default``."""
    base = re.split(r"[/\\]", str(name))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._-")
    stem, dot, ext = base.rpartition(".")
    if dot and len(base) > 100:
        base = stem[: 99 - len(ext[:10])] + "." + ext[:10]
    base = base[:100]
    return base if base and base not in (".", "..") else default


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` resolves to a location inside ``folder`` (symlinks followed)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def stage_upload(src: str | os.PathLike, uploads: Path, max_bytes: int, name: str | None = None) -> Path:
    """Copy an uploaded file into ``uploads/<random>/<safe name>`` and return the copy.

    ``name`` is the client's file name (default: ``src``'s); only its sanitised last component
    is used, so the copy can never land outside ``uploads``. Files over ``max_bytes`` are refused.
    """
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src.name}: the uploaded file is missing")
    size = src.stat().st_size
    if size > max_bytes:
        raise InputError(f"{safe_filename(name or src.name)}: the upload is {size / 2**20:.1f} MB; "
                         f"the limit is {max_bytes / 2**20:.0f} MB")
    folder = Path(uploads) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / safe_filename(name or src.name, default="image.png")
    if not inside(dest, uploads):  # cannot happen after safe_filename; checked anyway
        raise InputError(f"{name}: invalid file name")
    with atomic_output(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def prepare_image(path: Path, size: int = 256, segmenter=None, segmenter_norm: str = "auto") -> Path:
    """The RGBA input for image→3D: ``path`` cut out, centred and scaled by
    :func:`~dreamgs.images.preprocess` (alpha from the image, else the ``segmenter`` model, else
    rembg when installed; otherwise its InputError explains the options), written as
    ``<stem>_rgba.png`` next to ``path``."""
    from .images import NoAlphaError, no_alpha_message, preprocess
    from .media import save_image

    try:
        rgba = preprocess(path, size=size, segmenter=segmenter, segmenter_norm=segmenter_norm)
    except NoAlphaError:
        raise InputError(no_alpha_message(path.name, "cut the object out first with `dreamgs prep IMAGE --mask "
                                                     "MASK.png` (white = object) and upload the _rgba.png it writes",
                                          "start the app with a local segmenter model (prep.segmenter=MODEL.onnx "
                                          "or DREAMGS_SEGMENTER) and choose it under Cut-out")) from None
    out = path.with_name(f"{path.stem}_rgba.png")
    save_image(out, rgba)
    return out


def obj_bundle(obj: Path) -> list[Path]:
    """The ``.obj`` and the files it needs: its ``mtllib`` files and their texture maps, taken
    only from the obj's own folder (references elsewhere are ignored)."""
    folder = obj.parent

    def refs(path: Path, keys: tuple[str, ...]) -> list[Path]:
        found = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2 and parts[0] in keys:
                p = folder / parts[1].strip()
                if p.is_file() and inside(p, folder) and p.parent.resolve() == folder.resolve():
                    found.append(p)
        return found

    files = [obj]
    for mtl in refs(obj, ("mtllib",)):
        files.append(mtl)
        files += refs(mtl, ("map_Kd", "map_Ka", "map_Ks", "map_Bump", "map_d", "norm", "bump"))
    return list(dict.fromkeys(files))


def write_zip(path: Path, files: list[Path], root: Path) -> Path:
    """Zip ``files`` (stored under their paths relative to ``root``), atomically."""
    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(root).as_posix())
    return path


def downloads(files: dict[str, Path], run_dir: Path) -> dict[str, Path]:
    """The files offered for download: ``ply``, ``glb``, ``obj_zip`` (the .obj with its .mtl
    and texture) and ``all_zip`` (every file of the run folder), for those that exist."""
    out: dict[str, Path] = {}
    for key in ("ply", "glb"):
        if key in files and Path(files[key]).is_file():
            out[key] = Path(files[key])
    obj = files.get("obj")
    if obj is not None and Path(obj).is_file():
        out["obj_zip"] = write_zip(run_dir / "model_obj.zip", obj_bundle(Path(obj)), run_dir)
    everything = sorted(p for p in run_dir.rglob("*")
                        if p.is_file() and p.suffix != ".zip" and not p.name.startswith("."))
    out["all_zip"] = write_zip(run_dir / f"{run_dir.name}.zip", everything, run_dir)
    return out


def turntable_video(files: dict[str, Path]) -> Path | None:
    """The turntable to show: the textured mesh's if there is one, else the Gaussians'."""
    keys = ["video_mesh", "video_gaussians"] + sorted(k for k in files if k.startswith("video"))
    return next((Path(files[k]) for k in keys if k in files and Path(files[k]).is_file()), None)


# --- jobs -----------------------------------------------------------------------------------------


@dataclass
class AppSettings:
    """How the app runs jobs: its work folder, the base config (a YAML file and overrides applied
    before the page's controls) and the upload size cap."""

    workdir: Path = Path(DEFAULT_WORKDIR)
    config: str | None = None
    overrides: tuple[str, ...] = ()
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.overrides = tuple(self.overrides)
        if not self.max_upload_mb > 0:
            raise InputError(f"--max-upload-mb: expected a positive size, got {self.max_upload_mb}")

    @property
    def runs(self) -> Path:
        return self.workdir / "runs"

    @property
    def uploads(self) -> Path:
        return self.workdir / "uploads"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    @property
    def tmp(self) -> Path:
        return self.workdir / "tmp"

    def base_config(self, mode: str) -> Config:
        return load_config(mode, self.config, self.overrides)


@dataclass
class JobEvent:
    """One update of a job: a status line, and possibly a preview image, the result or an error."""

    status: str
    preview: Any = None  # (H, W, 3) uint8
    result: Any = None  # RunResult
    downloads: dict[str, Path] = field(default_factory=dict)
    error: str | None = None


def format_progress(info: dict) -> str:
    stage = {"stage1": "Stage 1 (Gaussians)", "stage2": "Stage 2 (mesh)"}.get(info.get("stage"), info.get("stage"))
    parts = [f"{stage}: step {info.get('step')}/{info.get('total')}"]
    if info.get("loss") is not None:
        parts.append(f"loss {float(info['loss']):.4g}")
    if info.get("gaussians") is not None:
        parts.append(f"{info['gaussians']} Gaussians")
    return " · ".join(parts)


def parse_seed(seed) -> int | None:
    """The page's seed field: -1 or empty = random, else an integer in [0, 2**63)."""
    if seed is None or seed == "":
        return None
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise InputError(f"seed: expected an integer, got {seed!r}") from None
    if not value.is_integer():
        raise InputError(f"seed: expected an integer, got {seed!r}")
    value = int(value)
    if value == -1:
        return None
    if not 0 <= value < 2**63:
        raise InputError(f"seed: expected -1 (random) or an integer from 0 to 2**63-1, got {value}")
    return value


def parse_steps(steps) -> int:
    try:
        value = float(steps)
    except (TypeError, ValueError):
        raise InputError(f"steps: expected an integer, got {steps!r}") from None
    if not value.is_integer() or not 1 <= value <= MAX_STEPS:
        raise InputError(f"steps: expected an integer from 1 to {MAX_STEPS}, got {steps!r}")
    return int(value)


class JobRunner:
    """Runs generation jobs one at a time and reports their progress as :class:`JobEvent` s.

    ``generate_fn`` is :func:`dreamgs.pipeline.generate` (replaceable in tests).
    """

    def __init__(self, settings: AppSettings, generate_fn: Callable | None = None):
        if generate_fn is None:
            from .pipeline import generate as generate_fn
        self.settings = settings
        self.generate_fn = generate_fn
        self.lock = threading.Lock()  # held while a job uses the device

    def job_config(self, mode: str, prior: str, steps, seed, prompt: str = "", negative: str = "",
                   image: str | None = None, elevation: float = 0.0) -> Config:
        cfg = self.settings.base_config(mode)
        allowed = TEXT_PRIORS if mode == "text" else IMAGE_PRIORS
        if prior not in allowed:
            raise InputError(f"prior: '{prior}' is not available for {mode}→3D (choose {', '.join(allowed)})")
        if prior != cfg.prior.kind:
            cfg.prior.model = ""  # a model configured for another kind does not apply
        cfg.prior.kind = prior
        cfg.stage1.iters = parse_steps(steps)
        cfg.seed = parse_seed(seed)
        cfg.output_dir = str(self.settings.runs)
        cfg.run_name = ""
        if mode == "text":
            cfg.prompt, cfg.negative_prompt = prompt or "", negative or ""
        else:
            cfg.image = str(image or "")
            try:
                cfg.elevation = float(elevation)
            except (TypeError, ValueError):
                raise InputError(f"elevation: expected a number of degrees, got {elevation!r}") from None
            if not -90.0 < cfg.elevation < 90.0:
                raise InputError(f"elevation: expected degrees between -90 and 90, got {cfg.elevation:g}")
        return cfg

    def prepare_upload(self, upload, name: str | None = None, size: int = 256, segmenter=None,
                       segmenter_norm: str = "auto") -> Path:
        """Stage an uploaded image inside the work folder and preprocess it to ``size`` px RGBA
        (``segmenter``: see :func:`prepare_image`)."""
        if upload is None or upload == "":
            raise InputError("no image uploaded: drop an image (PNG with transparency, or any image with a "
                             "segmenter model or rembg installed) into the image box")
        staged = stage_upload(upload, self.settings.uploads, int(self.settings.max_upload_mb * 2**20), name)
        return prepare_image(staged, size, segmenter, segmenter_norm)

    def run(self, mode: str, *, prompt: str = "", negative: str = "", image=None, image_name: str | None = None,
            elevation: float = 0.0, prior: str = "oracle", seed=-1, steps=None,
            cutout: str = "segmenter") -> Iterator[JobEvent]:
        """Validate the inputs, wait for the device, run the job and yield its progress. ``cutout``
        (image mode, images without transparency): ``segmenter`` uses the configured segmenter model
        (prep.segmenter or $DREAMGS_SEGMENTER) if any, ``none`` does not."""
        try:
            base = self.settings.base_config(mode)
            if steps is None:
                steps = base.stage1.iters
            if mode == "image":  # preprocessed at the reference size, so the pipeline's own pass changes nothing
                if cutout not in ("segmenter", "none"):
                    raise InputError(f"cut-out: expected segmenter or none, got {cutout!r}")
                segmenter = (base.prep.segmenter or None) if cutout == "segmenter" else False
                image = self.prepare_upload(image, image_name, base.stage1.ref_size, segmenter,
                                            base.prep.segmenter_norm)
            elif mode == "text":
                from .pipeline import check_prompt

                prompt = check_prompt(prompt)
            else:
                raise InputError(f"mode: expected text or image, got {mode!r}")
            cfg = self.job_config(mode, prior, steps, seed, prompt, negative, image, elevation)
        except DreamGSError as e:
            yield JobEvent(f"Error: {e}", error=str(e))
            return

        events: queue.Queue = queue.Queue()
        t0 = time.perf_counter()

        def work() -> None:
            if not self.lock.acquire(blocking=False):
                events.put(("waiting", None))
                self.lock.acquire()
            run_dir = None
            try:
                events.put(("started", None))
                run_dir = self.new_run_dir(cfg)
                result = self.generate_fn(config=cfg, image=cfg.image if mode == "image" else None,
                                          run_dir=run_dir, progress=False,
                                          on_progress=lambda info: events.put(("progress", info)))
                outcome = ("done", result)
            except DreamGSError as e:
                outcome = ("error", str(e))
            except BaseException as e:  # a bug: keep the traceback in the server log
                traceback.print_exc()
                outcome = ("error", f"internal error ({type(e).__name__}: {e}); see the server log")
            finally:
                self.lock.release()
            if outcome[0] == "error" and run_dir is not None:
                drop_if_empty(run_dir)
            events.put(outcome)

        threading.Thread(target=work, name="dreamgs-job", daemon=True).start()
        last = 0.0
        while True:
            kind, payload = events.get()
            if kind == "waiting":
                yield JobEvent("Waiting for the previous run to finish…")
            elif kind == "started":
                t0 = time.perf_counter()
                yield JobEvent("Loading the prior…")
            elif kind == "progress":
                now = time.perf_counter()
                preview = payload.get("preview")
                if preview is not None or now - last >= STATUS_INTERVAL_S:
                    last = now
                    yield JobEvent(f"{format_progress(payload)} · {now - t0:.0f} s", preview=preview)
            elif kind == "done":
                result = payload
                try:
                    files = downloads(result.files, result.run_dir)
                except OSError as e:
                    yield JobEvent(f"Error: could not write the download files ({e})", error=str(e))
                    return
                written = ", ".join(sorted(p.name for p in result.files.values()))
                yield JobEvent(f"Done in {time.perf_counter() - t0:.1f} s (seed {result.seed}): "
                               f"{result.run_dir.name} — {written}", result=result, downloads=files)
                return
            else:
                yield JobEvent(f"Error: {payload}", error=payload)
                return

    def new_run_dir(self, cfg: Config) -> Path:
        """``runs/<date-time>-<subject>-s<seed>`` (the CLI's naming), with ``-2``, ``-3``... if taken.
        Draws the seed now when the page asked for a random one."""
        from .run import new_run_dir, resolve_seed

        resolve_seed(cfg)
        return new_run_dir(self.settings.runs, cfg)


def drop_if_empty(run_dir: Path) -> None:
    """Remove a failed run's folder if it holds nothing but its config and seed."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"config.yaml", "seed.txt"}:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- the page -------------------------------------------------------------------------------------


def prior_choices(mode: str, settings: AppSettings) -> tuple[list[tuple[str, str]], str, dict[str, str]]:
    """Dropdown choices (label, kind), the default kind, and each kind's missing-weights note."""
    from .info import PRIOR_TITLES, prior_status

    kinds = TEXT_PRIORS if mode == "text" else IMAGE_PRIORS
    cfg = settings.base_config(mode)
    choices, notes = [], {}
    for kind in kinds:
        status = prior_status(kind, cfg.prior.model if kind == cfg.prior.kind else "")
        label = PRIOR_TITLES[kind]
        if not status.found:
            label += " — weights not found locally"
            notes[kind] = f"⚠️ {status.message}"
        choices.append((label, kind))
    default = cfg.prior.kind if cfg.prior.kind in kinds and cfg.prior.kind not in notes else "oracle"
    return choices, default, notes


def cutout_choices(settings: AppSettings) -> tuple[list[tuple[str, str]], str]:
    """The image tab's cut-out choices (label, value) and the default: the configured segmenter
    model (prep.segmenter or $DREAMGS_SEGMENTER), if any, and none."""
    from .images import rembg_available
    from .segment import configured_segmenter

    model = configured_segmenter(settings.base_config("image").prep.segmenter or None)
    none = ("None: the image's own transparency" + (" (or rembg)" if rembg_available() else ""), "none")
    if model is None:
        return [none], "none"
    return [(f"Segmenter model: {model.name}", "segmenter"), none], "segmenter"


def prior_note(kind: str, notes: dict[str, str]) -> str:
    if kind == "oracle":
        return ("The oracle prior knows three built-in objects (a mug, a house, a die): name one in the "
                "prompt, or upload a render of one. It needs no weights and works offline.")
    if kind == "oracle-mv":
        return ("The joint 4-view oracle: the same built-in objects, denoised 4 views 90° apart at a time "
                "(the multi-view testbed of MVDream and ImageDream). It needs no weights and works offline.")
    return notes.get(kind, "Weights found locally.")


CSS = """
#dreamgs-status {min-height: 2.5em}
"""


def build_app(settings: AppSettings, runner: JobRunner | None = None):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    runner = runner or JobRunner(settings)
    text_cfg, image_cfg = settings.base_config("text"), settings.base_config("image")

    # Each Generate click runs three steps: clear the previous results, run the job (a generator
    # streaming status and preview; the queued, one-at-a-time step) and show the results. The
    # results are shown by a plain function after the generator: a Model3D given a .glb by a
    # generator's update never draws it (Gradio 6.31), while one set by a plain function does.

    def cleared() -> list:
        hidden = gr.update(value=None, visible=False)
        return ["Queued…", None, None, gr.update(value=None, visible="hidden"), hidden, hidden, hidden, hidden,
                hidden, None]

    def progress_outputs(ev: JobEvent) -> list:
        status = f"**Error:** {ev.error}" if ev.error else ev.status
        preview = ev.preview if ev.preview is not None else gr.skip()
        final = ev if ev.result is not None or ev.error else gr.skip()
        return [status, preview, final]

    def run_text(prompt, negative, prior, seed, steps):
        for ev in runner.run("text", prompt=prompt, negative=negative, prior=prior, seed=seed, steps=steps):
            yield progress_outputs(ev)

    def run_image(image, elevation, prior, seed, steps, cutout_choice="none"):
        name = Path(image).name if image else None
        for ev in runner.run("image", image=image, image_name=name, elevation=elevation, prior=prior,
                             seed=seed, steps=steps, cutout=cutout_choice):
            yield progress_outputs(ev)

    def show_results(ev: JobEvent | None) -> list:
        if ev is None or ev.result is None:
            return [gr.skip()] * 7
        files = ev.result.files
        video = turntable_video(files)
        glb = ev.downloads.get("glb")
        dl = []
        for key in ("ply", "glb", "obj_zip", "all_zip"):
            path = ev.downloads.get(key)
            dl.append(gr.update(value=str(path) if path else None, visible=path is not None))
        # The mesh viewer switches between visible and "hidden" (kept in the page, so it can draw).
        return [gr.update(value=str(files["ply"]) if "ply" in files else None),
                gr.update(value=str(glb) if glb else None, visible=True if glb else "hidden"),
                gr.update(value=str(video) if video else None, visible=video is not None), *dl]

    with gr.Blocks(title="dreamgs") as demo:
        gr.Markdown("# dreamgs\nText or one image → 3D Gaussians → textured mesh. Runs are queued and "
                    "processed one at a time.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Text → 3D", id="text"):
                        t_choices, t_default, t_notes = prior_choices("text", settings)
                        prompt = gr.Textbox(label="Prompt", placeholder="a ceramic mug", elem_id="prompt",
                                            max_length=1000)
                        negative = gr.Textbox(label="Negative prompt", placeholder="blurry, low quality",
                                              elem_id="negative", max_length=1000)
                        t_prior = gr.Dropdown(t_choices, value=t_default, label="Prior", elem_id="text-prior")
                        t_note = gr.Markdown(prior_note(t_default, t_notes), elem_id="text-prior-note")
                        with gr.Row():
                            t_seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="text-seed")
                            t_steps = gr.Number(value=text_cfg.stage1.iters, precision=0, minimum=1,
                                                maximum=MAX_STEPS, label="Steps (stage 1)", elem_id="text-steps")
                        t_go = gr.Button("Generate", variant="primary", elem_id="text-generate")
                    with gr.Tab("Image → 3D", id="image"):
                        i_choices, i_default, i_notes = prior_choices("image", settings)
                        image = gr.Image(label="Input image (PNG with transparency, or any image with a "
                                               "segmenter model or rembg)",
                                         type="filepath", image_mode=None, format="png", sources=["upload"],
                                         elem_id="image-input")
                        c_choices, c_default = cutout_choices(settings)
                        cutout = gr.Dropdown(c_choices, value=c_default, label="Cut-out (images without transparency)",
                                             info="a local IS-Net/U²-Net ONNX model: start the app with "
                                                  "prep.segmenter=MODEL.onnx or DREAMGS_SEGMENTER (README: Cut out a "
                                                  "photo offline)", elem_id="image-cutout")
                        elevation = gr.Slider(-80, 80, value=image_cfg.elevation, step=1,
                                              label="Elevation of the input view (degrees, negative = above)",
                                              elem_id="image-elevation")
                        i_prior = gr.Dropdown(i_choices, value=i_default, label="Prior", elem_id="image-prior")
                        i_note = gr.Markdown(prior_note(i_default, i_notes), elem_id="image-prior-note")
                        with gr.Row():
                            i_seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="image-seed")
                            i_steps = gr.Number(value=image_cfg.stage1.iters, precision=0, minimum=1,
                                                maximum=MAX_STEPS, label="Steps (stage 1)", elem_id="image-steps")
                        i_go = gr.Button("Generate", variant="primary", elem_id="image-generate")
            with gr.Column(scale=1):
                status = gr.Markdown("Ready.", elem_id="dreamgs-status")
                preview = gr.Image(label="Preview (stage 1)", interactive=False, height=256, elem_id="preview")
        with gr.Row():
            splat = gr.Model3D(label="Gaussian splat (.ply)", interactive=False, height=420, elem_id="splat-viewer",
                               clear_color=(1.0, 1.0, 1.0, 1.0))
            mesh = gr.Model3D(label="Textured mesh (.glb)", interactive=False, height=420, visible="hidden",
                              elem_id="mesh-viewer", clear_color=(1.0, 1.0, 1.0, 1.0))
            video = gr.Video(label="Turntable", interactive=False, visible=False, height=420, autoplay=True, loop=True,
                             elem_id="turntable")
        with gr.Row():
            dl_ply = gr.DownloadButton("Download .ply", visible=False, elem_id="download-ply")
            dl_glb = gr.DownloadButton("Download .glb", visible=False, elem_id="download-glb")
            dl_obj = gr.DownloadButton("Download .obj (zip)", visible=False, elem_id="download-obj")
            dl_all = gr.DownloadButton("Download all (zip)", visible=False, elem_id="download-all")

        last_job = gr.State(None)
        results = [splat, mesh, video, dl_ply, dl_glb, dl_obj, dl_all]
        t_prior.change(lambda k: prior_note(k, t_notes), t_prior, t_note, queue=False)
        i_prior.change(lambda k: prior_note(k, i_notes), i_prior, i_note, queue=False)
        # One worker for both tabs: concurrency_id shares the single slot.
        for button, fn, inputs in ((t_go, run_text, [prompt, negative, t_prior, t_seed, t_steps]),
                                   (i_go, run_image, [image, elevation, i_prior, i_seed, i_steps, cutout])):
            button.click(cleared, None, [status, preview, *results, last_job], queue=False).then(
                fn, inputs, [status, preview, last_job], concurrency_limit=1, concurrency_id="generate").then(
                show_results, last_job, results, queue=False)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)
    return demo


def page_theme():
    """Gradio's default theme with system fonts, so the page fetches no web fonts (works offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def confine_to_workdir(settings: AppSettings) -> None:
    """Point Gradio's cache and the process's temporary folder into the work folder, and turn off
    Gradio's analytics (no network calls).

    Call before ``gradio`` (and torch) are imported: Gradio reads these variables at import time,
    and libraries that keep temporary files (torch's compile cache) read TMPDIR on first use."""
    import tempfile

    for d in (settings.cache, settings.tmp):
        d.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(settings.cache)
    os.environ["TMPDIR"] = str(settings.tmp)
    tempfile.tempdir = None  # re-read TMPDIR
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def launch_app(settings: AppSettings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               block: bool = True):
    """Start the app at ``http://host:port`` and print its address; ``block=False`` returns the
    running Blocks (``.close()`` stops it), otherwise this serves until interrupted."""
    confine_to_workdir(settings)
    for d in (settings.runs, settings.uploads):
        d.mkdir(parents=True, exist_ok=True)
    demo = build_app(settings)
    try:
        demo.launch(server_name=host, server_port=port, max_file_size=int(settings.max_upload_mb * 2**20),
                    allowed_paths=[str(settings.runs)], prevent_thread_lock=True, quiet=True, show_error=True,
                    theme=page_theme(), css=CSS, footer_links=["gradio"], ssr_mode=False, mcp_server=False)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({str(e).splitlines()[0]}); "
                         "choose another --port or --host") from None
    print(f"dreamgs app: serving http://{host}:{port}/ (work folder {settings.workdir}); press Ctrl+C to stop",
          flush=True)
    if block:
        demo.block_thread()
    return demo
