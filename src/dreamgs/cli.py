"""Command-line interface: ``dreamgs <command> ...``.

Each command has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>``
function that runs it. Errors caused by input (:class:`~dreamgs.errors.DreamGSError`) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import DreamGSError

OVERRIDES_HELP = "config overrides as section.key=value, e.g. stage1.iters=300 prior.guidance_scale=50"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with config values (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


# --- text / image ---------------------------------------------------------------------------------


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", metavar="NAME", help="dreamgaussian (default: 3D Gaussians) | dreamfusion (a NeRF "
                                                    "with shading) | gsgen (Gaussians as the result) | magic3d (a "
                                                    "NeRF, then a DMTet mesh); same as method=NAME")
    p.add_argument("--mesh", action="store_true", help="also export the textured mesh (stage 2) where the method's "
                                                       "result is the Gaussians (gsgen); same as stage2.enabled=true")
    p.add_argument("--prior", metavar="KIND",
                   help="sd | zero123 | stable-zero123 | mvdream | imagedream | oracle | oracle:ASSET_OR_FILE "
                        "| oracle-mv[:ASSET_OR_FILE] (oracle = the built-in exact prior, works offline; "
                        "oracle-mv = its joint 4-view version)")
    p.add_argument("--model", metavar="ID_OR_DIR", help="diffusers model: hub id or local folder (mvdream: "
                                                        "also its .safetensors checkpoint file)")
    p.add_argument("--seed", type=int, help="random seed (default: drawn and recorded in seed.txt)")
    p.add_argument("--out", metavar="DIR", help="parent folder for the run folder (default: outputs)")
    p.add_argument("--run-dir", metavar="DIR", help="exact run folder to write (default: a new folder under --out)")
    p.add_argument("--no-mesh", action="store_true", help="stop after stage 1 (Gaussians, .ply, video)")
    p.add_argument("--preset", choices=("auto", "preview", "full"),
                   help="sizes: preview (quick, the default on a CPU or with the oracle prior) or full "
                        "(DreamGaussian's sizes); auto picks by device and prior")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p)


def _add_text(sub) -> None:
    p = sub.add_parser("text", help="generate a 3D asset from a text prompt",
                       description="Text to 3D: score distillation from Stable Diffusion (or the oracle prior), "
                                   "then a textured mesh.")
    p.add_argument("prompt", help='what to generate, e.g. "a ceramic mug"')
    p.add_argument("--negative", metavar="TEXT", help="negative prompt")
    _add_generation_args(p)


def _add_image(sub) -> None:
    p = sub.add_parser("image", help="generate a 3D asset from one RGBA image",
                       description="Image to 3D: reference-view losses plus score distillation from Zero123 "
                                   "(or the oracle prior), then a textured mesh. The image should be RGBA with the "
                                   "object's mask in alpha (see `dreamgs prep`).")
    p.add_argument("image", help="input image (RGBA PNG; run `dreamgs prep` first for other images)")
    p.add_argument("--elevation", type=float, help="elevation of the input view in degrees (negative = above)")
    _add_generation_args(p)


def _generation_overrides(args) -> list[str]:
    ov = []
    if getattr(args, "method", None):
        ov.append(f"method={args.method}")
    if getattr(args, "mesh", False):
        ov.append("stage2.enabled=true")
    if args.prior:
        kind, _, asset = args.prior.partition(":")
        ov.append(f"prior.kind={kind}")
        if asset:
            ov.append(f"prior.asset={asset}")
    if args.model:
        ov.append(f"prior.model={args.model}")
    if args.no_mesh:
        ov.append("stage2.enabled=false")
    if getattr(args, "preset", None):
        ov.append(f"preset={args.preset}")
    if getattr(args, "negative", None):
        ov.append(f"negative_prompt={args.negative}")
    if getattr(args, "elevation", None) is not None:
        ov.append(f"elevation={args.elevation}")
    return ov + list(args.overrides)


def _run_generation(args, prompt=None, image=None) -> int:
    from .pipeline import generate

    result = generate(prompt, image=image, config=args.config, overrides=_generation_overrides(args),
                      seed=args.seed, output_dir=args.out, run_dir=args.run_dir, progress=not args.quiet)
    files = ", ".join(str(p) for p in result.files.values())
    print(f"done in {result.summary.get('total_s', 0):.1f} s (seed {result.seed}); wrote {files}")
    return 0


def _cmd_text(args) -> int:
    return _run_generation(args, prompt=args.prompt)


def _cmd_image(args) -> int:
    return _run_generation(args, image=args.image)


# --- resume ---------------------------------------------------------------------------------------


def _add_resume(sub) -> None:
    p = sub.add_parser(
        "resume", help="continue an interrupted text/image run from its checkpoint",
        description="Continue a run that stopped (killed, out of memory, diverged) from the checkpoint.safetensors in "
                    "its run folder, with the run's own config and seed. On the CPU with stage1.deterministic=true "
                    "the result equals an uninterrupted run's bit for bit. Overrides may change only where the run "
                    "happens and memory-related sizes (device, backend, stage1.batch_size, stage1.render_sizes, "
                    "stage1.size_milestones, densify.max_gaussians, ...) and the stage2/mesh/texture/export sections.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds checkpoint.safetensors)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="allowed changes, e.g. stage1.render_sizes=[128]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_resume(args) -> int:
    from .pipeline import resume_run

    result = resume_run(args.run_dir, args.overrides, progress=not args.quiet)
    start = result.summary.get("resumed_from", {})
    files = ", ".join(str(p) for p in result.files.values())
    print(f"resumed at {start.get('stage')} step {start.get('step')}; done in {result.summary.get('total_s', 0):.1f} s "
          f"(seed {result.seed}); wrote {files}")
    return 0


# --- mesh -----------------------------------------------------------------------------------------


def _add_mesh(sub) -> None:
    p = sub.add_parser(
        "mesh", help="stage 2 only: textured mesh from a run folder or any 3DGS .ply",
        description="Turn Gaussians into a textured mesh (.glb, .obj/.mtl/.png, turntable). SOURCE is a "
                    "dreamgs run folder (its config and prior are reused and its files are written into it) "
                    "or any 3DGS .ply (centred and scaled for meshing, exported in its own frame; the "
                    "texture is baked from renders and refined with a prior only if --prompt is given).")
    p.add_argument("source", help="run folder or .ply file")
    p.add_argument("--prompt", help="for a bare .ply: refine the texture with the prior under this prompt")
    p.add_argument("--prior", metavar="KIND", help="prior for the refinement (see `dreamgs text --help`)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the run folder, or <name>_mesh/ "
                                                "next to a .ply)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p)


def _cmd_mesh(args) -> int:
    from .pipeline import mesh_from

    ov = []
    if getattr(args, "method", None):
        ov.append(f"method={args.method}")
    if args.prior:
        kind, _, asset = args.prior.partition(":")
        ov.append(f"prior.kind={kind}")
        if asset:
            ov.append(f"prior.asset={asset}")
    if args.prompt:
        ov.append(f"prompt={args.prompt}")
    result = mesh_from(args.source, config=args.config, overrides=ov + list(args.overrides), out_dir=args.out,
                       progress=not args.quiet)
    files = ", ".join(str(p) for p in result.files.values())
    print(f"done in {result.summary['total_s']:.1f} s; wrote {files}")
    return 0


# --- fit ------------------------------------------------------------------------------------------


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="fit Gaussians to posed RGBA images (or to a built-in synthetic scene)",
        description="Fit 3D Gaussians to posed RGBA images. Without --data, renders a built-in synthetic "
                    "scene from known cameras, fits it from scratch and reports held-out PSNR.")
    p.add_argument("--data", metavar="DIR", help="folder with cameras.json and RGBA images (see README)")
    p.add_argument("--out", metavar="DIR", default="outputs/fit",
                   help="parent folder; each fit writes a new <date-time>-<data>-s<seed> folder in it "
                        "(default: outputs/fit)")
    _add_config_args(p)


def _cmd_fit(args) -> int:
    from .fit import run_fit_command

    return run_fit_command(args.data, args.out, args.config, args.overrides)


# --- prep -----------------------------------------------------------------------------------------


def _add_prep(sub) -> None:
    p = sub.add_parser(
        "prep", help="cut out, centre and scale the object of an input image (RGBA for image-to-3D)",
        description="Prepare an input image for image-to-3D: take the object's alpha (from --mask, the image's "
                    "own transparency, a local salient-object ONNX model given by --segmenter, prep.segmenter= "
                    "or $DREAMGS_SEGMENTER, or rembg if it and its model file are installed), keep the largest "
                    "object, centre the object's bounding box and scale its longer side to "
                    "(1 - border ratio) * size, and write a square RGBA PNG.")
    p.add_argument("image", metavar="IMAGE", help="input image (PNG, JPEG, WebP, ...)")
    p.add_argument("--mask", metavar="MASK", help="mask image of the same size: white = object (or a cut-out "
                                                   "whose alpha is the mask)")
    p.add_argument("--size", type=int, default=256, help="output width and height in pixels (default: 256)")
    p.add_argument("--border-ratio", type=float, default=0.2,
                   help="fraction of the size left as empty border around the object (default: 0.2)")
    p.add_argument("--out", metavar="OUT.png", help="output file (default: <stem>_rgba.png next to IMAGE)")
    p.add_argument("--segmenter", metavar="MODEL.onnx",
                   help="IS-Net/U²-Net-style ONNX salient-object model for images without transparency "
                        "(needs onnxruntime: pip install 'dreamgs[segment]'; README: Cut out a photo offline)")
    p.add_argument("--segmenter-norm", choices=("auto", "isnet", "imagenet"),
                   help="the model's input normalisation: isnet (x/255-0.5), imagenet (mean/std); auto (default): "
                        "isnet for inputs of 1024 px or more, imagenet below")
    _add_config_args(p)


def _cmd_prep(args) -> int:
    from .config import Config, apply_dict, apply_override, load_yaml, preset, validate
    from .images import prep_output_path, preprocess
    from .media import save_image

    # The image-mode config (without load_config's size preset, which imports torch); prep uses
    # only its prep section.
    full = Config(mode="image")
    apply_dict(full, preset("image"), "preset image.yaml")
    if args.config:
        apply_dict(full, load_yaml(args.config), str(args.config))
    for ov in args.overrides:
        apply_override(full, ov)
    validate(full)
    cfg = full.prep
    out = prep_output_path(args.image, args.out)
    rgba = preprocess(args.image, size=args.size, border_ratio=args.border_ratio, mask=args.mask,
                      segmenter=args.segmenter or cfg.segmenter or None,
                      segmenter_norm=args.segmenter_norm or cfg.segmenter_norm)
    save_image(out, rgba)
    print(out)
    return 0


# --- info -----------------------------------------------------------------------------------------


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info", help="show the device, render backend and which prior weights are available offline",
        description="Print the compute device, the render backend that backend=auto picks, which diffusion "
                    "priors have their weights on this machine (the Hugging Face cache for the default model "
                    "ids, and --model if given), and where weights are looked up. Never uses the network.")
    p.add_argument("--model", metavar="ID_OR_DIR",
                   help="also check this hub id (in the local cache) or local diffusers folder")
    p.add_argument("--torch", action="store_true",
                   help="import torch to check the device exactly (slower; by default the torch build and the "
                        "GPUs are read from the installed files and nvidia-smi)")


def _cmd_info(args) -> int:
    from .info import info_text

    print(info_text(args.model, use_torch=args.torch or None))
    return 0


# --- app ------------------------------------------------------------------------------------------


# The web app's defaults (dreamgs.app.DEFAULT_*), repeated so that building the parser does not import the
# app and its config module (start-up time of every command); tests/test_cli_ux.py checks that they agree.
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_WORKDIR, DEFAULT_MAX_UPLOAD_MB = "127.0.0.1", 7860, "outputs/app", 20.0


def _add_app(sub) -> None:
    p = sub.add_parser(
        "app", help="start the local web app (text→3D and image→3D in the browser)",
        description="Start a Gradio web app for text→3D and image→3D with live progress, 3D viewers and "
                    "downloads. Jobs from all browser tabs are queued and run one at a time. Everything the "
                    "app writes stays in its work folder. It listens on 127.0.0.1 only, unless --host says "
                    "otherwise (the app has no login: expose it only on networks you trust).")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    p.add_argument("--workdir", metavar="DIR", default=DEFAULT_WORKDIR,
                   help=f"the app's work folder: runs/, uploads/ and cache/ (default: {DEFAULT_WORKDIR})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest accepted upload in megabytes (default: {DEFAULT_MAX_UPLOAD_MB:g})")
    _add_config_args(p)


def _cmd_app(args) -> int:
    from .app import AppSettings, launch_app
    from .errors import InputError

    if not 0 < args.port < 65536:
        raise InputError(f"--port: expected a TCP port from 1 to 65535, got {args.port}")
    settings = AppSettings(args.workdir, args.config, tuple(args.overrides), args.max_upload_mb)
    settings.base_config("text"), settings.base_config("image")  # bad --config/overrides fail here
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dreamgs app: warning: listening on {args.host}; the app has no login, so anyone who can reach "
              "this address can run jobs", file=sys.stderr)
    launch_app(settings, args.host, args.port)
    return 0


# --- batch ----------------------------------------------------------------------------------------


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch", help="generate many assets from a jobs file, one per GPU, on Ray",
        description="Run the jobs of a YAML jobs file (prompts or images, each with its seed and overrides) as Ray "
                    "tasks, one asset per GPU: on a local Ray started for the batch, or on a running cluster with "
                    "--address. Complete jobs are skipped, failed ones retried; every event is appended to "
                    "<output_dir>/manifest.jsonl. Without Ray, or with --local, jobs run one by one in this process.")
    p.add_argument("jobs", metavar="JOBS.yaml", help="jobs file (see README: Batch generation)")
    p.add_argument("--out", metavar="DIR", help="output folder: run folders and manifest.jsonl "
                                                "(default: the file's output_dir, else outputs/<file stem> next to it)")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="extra attempts for a failed job (default: 1)")
    p.add_argument("--gpus-per-job", type=float, metavar="G",
                   help="GPUs per job, fractions allowed; 0 runs on CPUs "
                        "(default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-job", type=float, metavar="C",
                   help="CPUs per job, also its torch threads (default: a GPU node's CPUs split over its GPUs; "
                        "1 for CPU jobs)")
    p.add_argument("--address", metavar="ADDR", help="join a running Ray cluster (e.g. auto or HOST:6379) "
                                                     "instead of starting one here")
    p.add_argument("--num-gpus", type=int, metavar="N", help="GPUs the local Ray may use (default: all visible)")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs the local Ray may use (default: all)")
    p.add_argument("--local", action="store_true", help="no Ray: run the jobs one by one in this process")
    p.add_argument("--force", action="store_true", help="re-run jobs whose outputs are already complete")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and whether each is complete; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_batch(args) -> int:
    from .batch import MANIFEST_NAME, completion_problem, done_outputs, load_jobs, run_batch

    if args.dry_run:
        spec = load_jobs(args.jobs, args.out)
        recorded = done_outputs(spec.output_dir / MANIFEST_NAME)
        for job in spec.jobs:
            if job.error:
                state = f"invalid: {job.error}"
            else:
                problem = completion_problem(job.run_dir, job.config, recorded.get(str(job.run_dir), {}).values())
                state = "complete" if problem is None else f"to run ({problem})"
            print(f"{job.name}\t{job.run_dir}\t{state}")
        return 0
    ray_init = {k: v for k, v in (("num_gpus", args.num_gpus), ("num_cpus", args.num_cpus)) if v is not None}
    if ray_init and (args.address or args.local):
        from .errors import InputError

        raise InputError("--num-gpus/--num-cpus apply to a Ray started here, not with --address or --local")
    report = run_batch(args.jobs, output_dir=args.out, retries=args.retries, gpus_per_job=args.gpus_per_job,
                       cpus_per_job=args.cpus_per_job, address=args.address, local=args.local, force=args.force,
                       ray_init=ray_init, progress=False if args.quiet else None)
    counts = ", ".join(f"{len(report.names(s))} {s}" for s in ("done", "skipped", "failed", "interrupted"))
    print(f"batch finished in {report.wall_s:.1f} s ({report.backend}): {counts}; manifest {report.manifest}")
    for name in report.names("failed"):
        print(f"  failed: {name}: {report.records[name]['error']}", file=sys.stderr)
    return 0 if report.ok else 1


# --- bench ----------------------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="score methods against known 3D assets with the oracle prior, beside baselines",
        description="Run methods on assets x seeds with the oracle prior through the whole pipeline, score the "
                    "exported model.glb at held-out cameras (PSNR, masked PSNR, pose offset, Chamfer) beside the "
                    "baselines (truth, lookup, turned15, turned30, flat, blob); write bench.json, bench.md and "
                    "bench.png. Tune on the dev split, report on test.")
    p.add_argument("--methods", default="dreamgaussian", metavar="A,B",
                   help="methods to run (default dreamgaussian): dreamgaussian, dreamfusion, gsgen, magic3d, and "
                        "dreamgaussian's other starts: dreamgaussian-cloud (a noisy coloured cloud of the asset, "
                        "as a 3D prior gives it), dreamgaussian-silhouette (--mode image)")
    p.add_argument("--assets", nargs="+", default=["test"], metavar="ASSET",
                   help="dev | test (splits), mug | house | die | gen:N, or mesh files (default: test)")
    p.add_argument("--mode", choices=("text", "image"), default="text", help="text or image to 3D (default text)")
    p.add_argument("--setting", choices=("standard", "hard"), default="standard",
                   help="hard: the Janus-prone text oracle (no view words) / the image oracle that must infer the "
                        "unseen side")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 per asset (default 3)")
    p.add_argument("--out", default="outputs/bench", metavar="DIR", help="output folder (default outputs/bench)")
    p.add_argument("--views", type=int, default=24, help="held-out cameras per asset (default 24)")
    p.add_argument("--size", type=int, default=64, help="image size of the scores in pixels (default 64)")
    p.add_argument("--jobs", type=int, default=1, help="method runs in parallel processes (default 1)")
    p.add_argument("--device", default="auto", help="device of the runs: auto | cpu | cuda")
    p.add_argument("--no-baselines", action="store_true", help="score the methods only")
    _add_config_args(p)


def _cmd_bench(args) -> int:
    from .bench import run_bench
    from .errors import InputError

    if args.seeds < 1 or args.views < 1 or args.size < 8 or args.jobs < 1:
        raise InputError("bench: --seeds, --views and --jobs must be >= 1 and --size >= 8")
    run_bench([m.strip() for m in args.methods.split(",") if m.strip()], args.assets, mode=args.mode,
              setting=args.setting, seeds=range(args.seeds), out_dir=args.out, overrides=args.overrides,
              config=args.config, baselines=not args.no_baselines, views=args.views, size=args.size, device=args.device, jobs=args.jobs)
    return 0


# --- eval -----------------------------------------------------------------------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="CLIP score and CLIP R-precision of finished runs (needs your own CLIP weights)",
        description="Render each run's model.glb at fixed views and score the renders with CLIP (open_clip): "
                    "clip_score = mean 100*max(cos, 0) between each render and the run's prompt, and r_precision@1 "
                    "= how often the run's own prompt is CLIP's top-1 among all the runs' prompts (DreamFusion's "
                    "metric). Writes clip_score and r_precision@1 into RUN_DIR/metrics.json and prints a summary. "
                    "CLIP weights are never downloaded: give a local .safetensors file or model folder.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (each with model.glb)")
    p.add_argument("--clip", metavar="MODEL",
                   help="ARCH:FILE.safetensors (ARCH an open_clip name such as ViT-B-32, or a JSON model config), "
                        "a local open_clip model folder (open_clip_config.json + *.safetensors), or OWNER/NAME in "
                        "the local Hugging Face cache (default: $DREAMGS_CLIP)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line, one per RUN_DIR in the same order "
                                                      "(default: each run's prompt from its config.yaml)")
    p.add_argument("--distractors", metavar="FILE", help="more candidate prompts for R-precision, one per line")
    p.add_argument("--views", type=int, default=8, help="views per run, evenly spaced in azimuth (default 8)")
    p.add_argument("--size", type=int, help="render size in pixels (default: the CLIP model's input size)")
    p.add_argument("--elevation", type=float, help="elevation of the views in degrees, negative = above "
                                                   "(default: -15 for text runs, the input view's for image runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images/prompts per CLIP batch (default 32)")
    p.add_argument("--summary", metavar="FILE.json", help="also write the overall numbers and every run's to "
                                                          "this JSON file")


def _cmd_eval(args) -> int:
    from .clipeval import evaluate_runs, format_summary, load_clip, load_runs, parse_clip_spec, read_prompts
    from .errors import InputError

    if args.views < 1 or args.batch_size < 1 or (args.size is not None and args.size < 16):
        raise InputError("eval: --views and --batch-size must be >= 1 and --size >= 16")
    prompts = read_prompts(args.prompts) if args.prompts else None
    distractors = read_prompts(args.distractors) if args.distractors else []
    load_runs(args.run_dirs, prompts)  # bad folders and prompts fail before CLIP is loaded
    spec = parse_clip_spec(args.clip)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = load_clip(spec, device=device, batch_size=args.batch_size)
    size = args.size or _clip_input_size(encoder)
    result = evaluate_runs(args.run_dirs, encoder, prompts=prompts, distractors=distractors, views=args.views,
                           size=size, elevation=args.elevation, model_name=spec.describe())
    print(format_summary(result))
    if args.summary:
        from .run import write_json

        write_json(args.summary, {"summary": result.summary, "runs": result.runs})
    return 0


def _clip_input_size(encoder) -> int:
    import open_clip

    size = open_clip.get_model_preprocess_cfg(encoder.model).get("size", 224)
    return int(max(size) if isinstance(size, (tuple, list)) else size)


# --- main -----------------------------------------------------------------------------------------

COMMANDS = {
    "text": (_add_text, _cmd_text),
    "image": (_add_image, _cmd_image),
    "resume": (_add_resume, _cmd_resume),
    "mesh": (_add_mesh, _cmd_mesh),
    "fit": (_add_fit, _cmd_fit),
    "prep": (_add_prep, _cmd_prep),
    "info": (_add_info, _cmd_info),
    "app": (_add_app, _cmd_app),
    "batch": (_add_batch, _cmd_batch),
    "bench": (_add_bench, _cmd_bench),
    "eval": (_add_eval, _cmd_eval),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamgs",
        description="Turn a text prompt or a single image into 3D Gaussians and a textured mesh.",
    )
    parser.add_argument("--version", action="version", version=f"dreamgs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may follow options too: `dreamgs text "a mug" --prior oracle stage1.iters=50`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][1](args) or 0
    except DreamGSError as e:
        if args.debug:
            raise
        print(f"dreamgs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dreamgs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
