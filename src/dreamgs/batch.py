"""Batch generation: many assets from one jobs file, one asset per GPU, as Ray tasks.

Jobs file (YAML)::

    output_dir: outputs/batch        # optional; relative to this file's folder
    config: base.yaml                 # optional config file for every job (relative to this file)
    seed: 0                           # optional default seed (default 0)
    overrides:                        # optional, for every job: a list of key=value ...
      - prior.kind=oracle
    jobs:
      - prompt: a ceramic mug
        seed: 3
      - name: luigi                   # optional; default <prompt or image stem>-s<seed>
        image: images/luigi_rgba.png  # relative to this file's folder
        overrides: {stage1.iters: 300, prior: {kind: zero123}}   # ... or a mapping

Each job has exactly one of ``prompt`` or ``image`` and may set ``name``, ``seed``, ``config`` and
``overrides`` (applied after the top-level ones). Mapping overrides may be nested; they are turned
into ``key=value`` strings. Names must be unique folder names; each job writes the run folder
``<output_dir>/<name>``. A job without a seed uses the top-level ``seed`` (default 0), so that
re-running a batch reproduces it. Structural mistakes in the file (unknown fields, a job with no
prompt or image, duplicate names) stop the batch before anything runs; a job whose config does not
resolve (a bad override, a missing image) is recorded as failed and the others run.

**Complete jobs are skipped.** A job is complete when its run folder holds

1. ``summary.json`` (the pipeline writes it last, so it marks a finished run), a JSON object;
2. ``config.yaml`` whose config equals the job's resolved config, seed included, ignoring the keys
   that say where and on what a run happens (``device``, ``output_dir``, ``run_name``);
3. ``model.ply``, every file listed under ``"files"`` in ``summary.json`` (paths relative to the
   run folder) and every output of the job's latest ``done`` record in the manifest, each non-empty.

A job that is started afresh first removes a stale ``summary.json`` from its run folder, so an
interrupted re-run is never mistaken for a finished one.

**Retries.** A failed attempt is retried up to ``retries`` times, then reported as failed while the
other jobs go on. Errors caused by the input (:class:`~dreamgs.errors.InputError`,
:class:`~dreamgs.errors.ConfigError`) are deterministic and are not retried.

**Resume.** When the run folder's ``config.yaml`` matches the job and the folder holds a
checkpoint (``checkpoint.safetensors``, as told by :func:`dreamgs.pipeline.has_checkpoint`), the
attempt calls :func:`dreamgs.pipeline.resume_run` instead of starting over, unless the previous
attempt resumed and failed: then it starts afresh. A failed resume is retried (afresh) even when
its error is an input error, since that error is the checkpoint's: a broken checkpoint must not
fail the job.

**Manifest.** ``<output_dir>/manifest.jsonl`` gets one JSON object per event, each appended with one
``write`` to a file opened for appending: ``time``, ``batch`` (id of this invocation), ``job``,
``index``, ``status`` (``done``, ``skipped``, ``retrying``, ``failed`` or ``interrupted``),
``attempt``, ``seed``, ``mode``, ``prompt``/``image``, ``run_dir``, ``outputs`` (name -> path),
``error``, ``duration_s``, ``host`` and ``resumed``. Only the process that runs the batch writes it.

**Where jobs run.** With Ray installed, jobs are Ray tasks with ``num_gpus=gpus_per_job`` (Ray sets
``CUDA_VISIBLE_DEVICES`` for each), on a local Ray started for the batch or, with ``address``, on an
existing cluster; there, the output folder and the input images must be on a filesystem that every
node sees, and dreamgs must be installed on every node. Without Ray, or with ``local=True``, jobs
run one after another in this process on the config's device.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import json
import os
import re
import secrets
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import yaml

from .errors import ConfigError, DreamGSError, InputError

if TYPE_CHECKING:
    from .config import Config

MANIFEST_NAME = "manifest.jsonl"
TOP_FIELDS = ("output_dir", "config", "seed", "overrides", "jobs")
JOB_FIELDS = ("name", "prompt", "image", "seed", "config", "overrides")
VOLATILE_KEYS = ("device", "output_dir", "run_name")  # not part of "what" a run makes
REQUIRED_FILES = ("summary.json", "config.yaml", "model.ply")
NO_RETRY = (InputError, ConfigError)  # deterministic input errors: retrying cannot help
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

LogFn = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# Jobs file


@dataclass
class Job:
    """One asset to make. ``config`` is the resolved config (None when ``error`` says why not)."""

    index: int  # 0-based position in the jobs file
    name: str
    mode: str  # text | image
    prompt: str | None
    image: str | None  # absolute path
    seed: int
    overrides: tuple[str, ...]
    config_file: str | None  # absolute path
    run_dir: Path
    config: Config | None = None
    error: str | None = None


@dataclass
class BatchSpec:
    path: Path
    output_dir: Path
    jobs: list[Job]


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def _flatten(mapping: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, f"{full}.")
        else:
            out.append(f"{full}={_override_value(value)}")
    return out


def parse_overrides(value: Any, where: str) -> list[str]:
    """``key=value`` strings from a list of them or a (possibly nested) mapping; None gives []."""
    if value is None:
        return []
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"{where}: override keys must be strings")
        return _flatten(value)
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, dict):
                out += _flatten(item)
            elif isinstance(item, str) and "=" in item:
                out.append(item)
            else:
                raise InputError(f"{where}: expected key=value, got {item!r}")
        return out
    if isinstance(value, str) and "=" in value:
        return [value]
    raise InputError(f"{where}: expected a list of key=value strings or a mapping, got {value!r}")


def _seed(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InputError(f"{where}: expected a non-negative integer seed, got {value!r}")
    return value


def _path_field(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: expected a file path, got {value!r}")
    return os.path.abspath(base / Path(value).expanduser())


def _slug(text: str) -> str:
    from .run import slug

    return slug(text)


def load_jobs(path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> BatchSpec:
    """Read and check a jobs file and resolve every job's config.

    Paths in the file are relative to its folder; ``output_dir`` (relative to the current folder)
    replaces the file's ``output_dir`` (default: ``outputs/<file stem>`` next to the file). Raises
    :class:`InputError` for structural mistakes; a job whose config does not resolve gets ``error``.
    """
    from .pipeline import resolve_config

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: jobs file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with a 'jobs:' list at the top level")
    for key in data:
        if key not in TOP_FIELDS:
            raise InputError(f"{path}: unknown top-level field '{key}'{_suggest(str(key), TOP_FIELDS)}; "
                             f"valid: {', '.join(TOP_FIELDS)}")
    base = path.parent
    raw_jobs = data.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise InputError(f"{path}: 'jobs' must be a non-empty list of jobs")
    if output_dir is not None:
        out = Path(os.path.abspath(output_dir))
    elif data.get("output_dir") is not None:
        out = Path(_path_field(data["output_dir"], base, f"{path}: output_dir"))
    else:
        out = Path(os.path.abspath(base / "outputs" / path.stem))
    default_seed = _seed(data["seed"], f"{path}: seed") if data.get("seed") is not None else 0
    default_config = _path_field(data["config"], base, f"{path}: config") if data.get("config") else None
    default_overrides = parse_overrides(data.get("overrides"), f"{path}: overrides")

    jobs: list[Job] = []
    for i, raw in enumerate(raw_jobs):
        where = f"{path}: job {i + 1}"
        if isinstance(raw, str):  # a bare string is a prompt
            raw = {"prompt": raw}
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected a mapping with 'prompt' or 'image', got {raw!r}")
        if isinstance(raw.get("name"), str):
            where += f" ('{raw['name']}')"
        for key in raw:
            if key not in JOB_FIELDS:
                raise InputError(f"{where}: unknown field '{key}'{_suggest(str(key), JOB_FIELDS)}; "
                                 f"valid: {', '.join(JOB_FIELDS)}")
        has_prompt, has_image = raw.get("prompt") is not None, raw.get("image") is not None
        if has_prompt == has_image:
            raise InputError(f"{where}: give exactly one of 'prompt' or 'image'")
        prompt = image = None
        if has_prompt:
            if not isinstance(raw["prompt"], str) or not raw["prompt"].strip():
                raise InputError(f"{where}: prompt: expected non-empty text, got {raw['prompt']!r}")
            prompt = raw["prompt"]
        else:
            image = _path_field(raw["image"], base, f"{where}: image")
        seed = _seed(raw["seed"], f"{where}: seed") if raw.get("seed") is not None else default_seed
        config_file = _path_field(raw["config"], base, f"{where}: config") if raw.get("config") else default_config
        overrides = tuple(default_overrides + parse_overrides(raw.get("overrides"), f"{where}: overrides"))
        if raw.get("name") is not None:
            name = raw["name"]
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise InputError(f"{where}: name: {name!r} is not a valid folder name "
                                 "(letters, digits, '.', '_' and '-'; at most 100 characters)")
        else:
            name = f"{_slug(prompt if prompt is not None else Path(image).stem)}-s{seed}"
        job = Job(i, name, "image" if image else "text", prompt, image, seed, overrides, config_file, out / name)
        try:
            job.config = resolve_config(prompt, image, config_file, overrides, seed)
        except DreamGSError as e:
            job.error = f"{type(e).__name__}: {e}"
        jobs.append(job)

    # Unique names: explicit duplicates are an error, derived ones get -2, -3, ...
    explicit = [j.name for j, raw in zip(jobs, raw_jobs) if isinstance(raw, dict) and raw.get("name") is not None]
    for name in set(explicit):
        if explicit.count(name) > 1:
            raise InputError(f"{path}: job name '{name}' is used by more than one job")
    taken = set(explicit)
    for job, raw in zip(jobs, raw_jobs):
        if isinstance(raw, dict) and raw.get("name") is not None:
            continue
        base_name, k = job.name, 1
        while job.name in taken:
            k += 1
            job.name = f"{base_name}-{k}"
        taken.add(job.name)
        job.run_dir = out / job.name
    return BatchSpec(path, out, jobs)


# ------------------------------------------------------------------------------------------------
# Completeness


def _comparable(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in VOLATILE_KEYS}


def completion_problem(run_dir: str | os.PathLike, config: Config, files: Iterable[str] = ()) -> str | None:
    """Why ``run_dir`` does not hold a complete run of ``config``, or None when it does.

    ``files`` are more paths (absolute, or relative to ``run_dir``) that must exist, e.g. the
    outputs the manifest recorded when the job was done (see :func:`done_outputs`).
    """
    from .config import from_dict, to_dict

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        return "no summary.json"
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        recorded = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    except FileNotFoundError:
        return "no config.yaml"
    except (ValueError, yaml.YAMLError, DreamGSError, UnicodeDecodeError) as e:
        return f"unreadable summary.json or config.yaml ({type(e).__name__})"
    if not isinstance(summary, dict):
        return "summary.json is not a JSON object"
    if _comparable(to_dict(recorded)) != _comparable(to_dict(config)):
        return "config.yaml differs from the job's config"
    listed = summary.get("files") or {}
    listed = list(listed.values()) if isinstance(listed, dict) else list(listed)
    for rel in list(REQUIRED_FILES) + [str(p) for p in listed] + [str(p) for p in files]:
        p = run_dir / rel
        if not p.is_file() or p.stat().st_size == 0:
            return f"missing or empty {rel}"
    return None


def is_complete(run_dir: str | os.PathLike, config: Config, files: Iterable[str] = ()) -> bool:
    """True when ``run_dir`` holds a finished run of ``config`` (see the module docstring)."""
    return completion_problem(run_dir, config, files) is None


def done_outputs(manifest_path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Run folder -> output files (name -> path) of its latest ``done`` record in a manifest."""
    out = {}
    for rec in read_manifest(manifest_path):
        if rec.get("status") == "done" and isinstance(rec.get("outputs"), dict):
            out[str(rec.get("run_dir"))] = {str(k): str(v) for k, v in rec["outputs"].items()}
    return out


# ------------------------------------------------------------------------------------------------
# Running one job (in a Ray worker or in this process)


def _config_matches(run_dir: Path, config: Config) -> bool:
    from .config import from_dict, to_dict

    try:
        recorded = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    except (OSError, ValueError, yaml.YAMLError, DreamGSError):
        return False
    return _comparable(to_dict(recorded)) == _comparable(to_dict(config))


def execute_job(task: dict) -> dict:
    """Run one job; never raises for a failed job (except KeyboardInterrupt).

    ``task`` has ``name``, ``mode``, ``prompt``, ``image``, ``config`` (a Config), ``run_dir``,
    ``force_cpu`` and ``allow_resume``. Returns ``ok``, ``outputs`` (name -> path), ``duration_s``,
    ``host``, ``resumed`` and, on failure, ``error``, ``retryable`` and ``traceback``.
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"ok": False, "host": socket.gethostname(), "resumed": False}
    try:
        from .pipeline import generate, has_checkpoint, resume_run

        cfg = copy.deepcopy(task["config"])  # generate() fills in fields; keep the caller's copy intact
        if task.get("force_cpu"):
            cfg.device = "cpu"
        run_dir = Path(task["run_dir"])
        if task.get("allow_resume") and _config_matches(run_dir, cfg) and has_checkpoint(run_dir):
            out["resumed"] = True  # also when resuming fails: the retry then starts afresh
            result = resume_run(run_dir, progress=False)
        else:
            (run_dir / "summary.json").unlink(missing_ok=True)  # never leave a stale "finished" marker
            result = generate(task["prompt"] if task["mode"] == "text" else None,
                              image=task["image"] if task["mode"] == "image" else None,
                              config=cfg, run_dir=run_dir, progress=False)
        out["outputs"] = {k: str(v) for k, v in result.files.items()}
        out["ok"] = True
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a job's failure is recorded, not fatal to the batch
        out["error"] = f"{type(e).__name__}: {e}"
        out["retryable"] = out["resumed"] or not isinstance(e, NO_RETRY)  # a fresh start may succeed
        if not isinstance(e, DreamGSError):
            out["traceback"] = traceback.format_exc(limit=-8)
    finally:
        _free_gpu_memory()
    out["duration_s"] = round(time.perf_counter() - t0, 3)
    return out


def _free_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Manifest


class Manifest:
    """Append-only JSONL file; each record is written with one ``write`` call (O_APPEND)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size > 0:  # a crash mid-write may have left a partial last line
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        return read_manifest(self.path)


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """All well-formed records of a manifest (a torn last line is skipped); [] when absent."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


# ------------------------------------------------------------------------------------------------
# Ray


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def start_local_ray(**init_kwargs) -> None:
    """Start a new Ray instance on this machine whose workers import this copy of dreamgs.

    Keyword arguments go to ``ray.init`` (e.g. ``num_cpus``, ``num_gpus``); the dashboard is off
    unless asked for.
    """
    import logging

    import ray

    src = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(init_kwargs.pop("runtime_env", None) or {})
    env["env_vars"] = {"PYTHONPATH": pythonpath, **env.get("env_vars", {})}
    init_kwargs.setdefault("address", "local")  # a new instance, even where RAY_ADDRESS names a cluster
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("logging_level", logging.WARNING)
    ray.init(runtime_env=env, **init_kwargs)


# ------------------------------------------------------------------------------------------------
# The batch


@dataclass
class BatchReport:
    """What a batch did: the last manifest record of each job, by job name."""

    manifest: Path
    backend: str  # ray | local
    wall_s: float
    records: dict[str, dict] = field(default_factory=dict)

    def names(self, status: str) -> list[str]:
        return [n for n, r in self.records.items() if r["status"] == status]

    @property
    def ok(self) -> bool:
        return all(r["status"] in ("done", "skipped") for r in self.records.values())


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


class _Tracker:
    """Writes manifest records, keeps each job's last record, and shows progress."""

    def __init__(self, manifest: Manifest, batch_id: str, total: int, progress: bool | None, log: LogFn):
        from tqdm import tqdm

        self.manifest, self.batch_id, self.log = manifest, batch_id, log
        self.records: dict[str, dict] = {}
        self.total, self.finished = total, 0
        self.bar = tqdm(total=total, desc="batch", unit="job", dynamic_ncols=True,
                        disable=None if progress is None else not progress)

    def record(self, job: Job, status: str, attempt: int, result: dict | None = None,
               error: str | None = None) -> dict:
        result = result or {}
        rec = {"time": _now(), "batch": self.batch_id, "job": job.name, "index": job.index, "status": status,
               "attempt": attempt, "seed": job.seed, "mode": job.mode, "prompt": job.prompt, "image": job.image,
               "run_dir": str(job.run_dir), "outputs": result.get("outputs", {}),
               "error": error if error is not None else result.get("error"),
               "duration_s": result.get("duration_s"), "host": result.get("host"),
               "resumed": bool(result.get("resumed", False))}
        if result.get("traceback"):
            rec["traceback"] = result["traceback"]
        self.manifest.append(rec)
        self.records[job.name] = rec
        if status != "retrying":
            self.finished += 1
            self.bar.update(1)
        counts = {s: sum(r["status"] == s for r in self.records.values()) for s in ("done", "skipped", "failed")}
        self.bar.set_postfix(counts, refresh=False)
        msg = f"[{self.finished}/{self.total}] {status} {job.name}"
        if rec["duration_s"] is not None:
            msg += f" ({rec['duration_s']:.1f} s)"
        if rec["error"]:
            msg += f": {rec['error']}"
        if self.bar.disable:
            self.log(msg)
        else:
            self.bar.write(msg, file=sys.stderr)
        return rec

    def close(self) -> None:
        self.bar.close()


def run_batch(jobs_file: str | os.PathLike, *, output_dir: str | os.PathLike | None = None, retries: int = 1,
              gpus_per_job: float | None = None, cpus_per_job: float | None = None, address: str | None = None,
              local: bool = False, force: bool = False, ray_init: dict | None = None,
              progress: bool | None = None, log: LogFn = _stderr) -> BatchReport:
    """Run every job of ``jobs_file`` that is not complete; see the module docstring.

    ``gpus_per_job`` None means 1 when the Ray cluster has GPUs, else 0 (CPU). ``cpus_per_job`` None
    splits each GPU node's CPUs evenly over its GPU slots (1 for CPU jobs); Ray sets each task's
    ``OMP_NUM_THREADS`` to it. In local mode both are ignored. ``ray_init`` holds
    extra ``ray.init`` arguments for a Ray started here (e.g. ``num_cpus``, ``num_gpus``); a Ray
    already initialised in this process is used as it is. ``force`` re-runs complete jobs.
    ``progress`` None shows a bar over jobs when stderr is a terminal.
    """
    if retries < 0:
        raise InputError(f"--retries must be 0 or more, got {retries}")
    if gpus_per_job is not None and gpus_per_job < 0:
        raise InputError(f"--gpus-per-job must be 0 or more, got {gpus_per_job}")
    if cpus_per_job is not None and cpus_per_job < 0:
        raise InputError(f"--cpus-per-job must be 0 or more, got {cpus_per_job}")
    use_ray = not local and ray_available()
    if address and not use_ray:
        raise InputError("--address needs Ray: pip install 'dreamgs[batch]'" if not local
                         else "--address and --local exclude each other")
    if not local and not use_ray:
        log("dreamgs batch: Ray is not installed (pip install 'dreamgs[batch]'); running jobs one by one here")

    spec = load_jobs(jobs_file, output_dir)
    manifest = Manifest(spec.output_dir / MANIFEST_NAME)
    batch_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    tracker = _Tracker(manifest, batch_id, len(spec.jobs), progress, log)
    t0 = time.perf_counter()
    todo: list[Job] = []
    recorded = done_outputs(manifest.path)
    try:
        for job in spec.jobs:
            outputs = recorded.get(str(job.run_dir), {})
            if job.error is not None:
                tracker.record(job, "failed", 0, error=job.error)
            elif not force and is_complete(job.run_dir, job.config, outputs.values()):
                tracker.record(job, "skipped", 0, {"outputs": outputs or _existing_outputs(job.run_dir)})
            else:
                todo.append(job)
        if todo and use_ray:
            _run_on_ray(todo, tracker, retries, gpus_per_job, cpus_per_job, address, ray_init or {}, log)
        elif todo:
            _run_here(todo, tracker, retries)
    finally:
        tracker.close()
    return BatchReport(manifest.path, "ray" if use_ray else "local", time.perf_counter() - t0, tracker.records)


def _existing_outputs(run_dir: Path) -> dict[str, str]:
    out = {}
    for name in ("config.yaml", "seed.txt", "input_rgba.png", "model.ply", "summary.json"):
        if (run_dir / name).is_file():
            out[Path(name).stem] = str(run_dir / name)
    try:
        listed = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    if isinstance(listed, dict):
        out.update({str(k): str(run_dir / v) for k, v in listed.items()})
    return out


def _task(job: Job, allow_resume: bool, force_cpu: bool) -> dict:
    return {"name": job.name, "mode": job.mode, "prompt": job.prompt, "image": job.image, "config": job.config,
            "run_dir": str(job.run_dir), "force_cpu": force_cpu, "allow_resume": allow_resume}


def _after_attempt(job: Job, attempt: int, result: dict, tracker: _Tracker, retries: int) -> bool:
    """Record an attempt's result; True when the job should be tried again."""
    if result.get("ok"):
        tracker.record(job, "done", attempt, result)
        return False
    again = result.get("retryable", True) and attempt <= retries
    tracker.record(job, "retrying" if again else "failed", attempt, result)
    return again


def _run_here(jobs: list[Job], tracker: _Tracker, retries: int) -> None:
    for k, job in enumerate(jobs):
        attempt, allow_resume = 1, True
        try:
            while True:
                result = execute_job(_task(job, allow_resume, False))
                if not _after_attempt(job, attempt, result, tracker, retries):
                    break
                attempt, allow_resume = attempt + 1, not result.get("resumed")
        except KeyboardInterrupt:
            for j in jobs[k:]:
                tracker.record(j, "interrupted", attempt if j is job else 0)
            raise


def _default_cpus_per_job(gpus_per_job: float) -> float:
    """A GPU node's CPUs split evenly over its GPU slots (the smallest share over nodes); 1 for CPU jobs."""
    import ray

    if gpus_per_job <= 0:
        return 1.0
    shares = []
    for node in ray.nodes():
        res = node.get("Resources", {}) if node.get("Alive", True) else {}
        slots = int(res.get("GPU", 0.0) // gpus_per_job)
        if slots >= 1:
            shares.append(max(1, int(res.get("CPU", 0.0) // slots)))
    return float(min(shares)) if shares else 1.0


def _run_on_ray(jobs: list[Job], tracker: _Tracker, retries: int, gpus_per_job: float | None,
                cpus_per_job: float | None, address: str | None, ray_init: dict, log: LogFn) -> None:
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            import logging

            ray.init(address=address, logging_level=logging.WARNING, **ray_init)
        else:
            start_local_ray(**ray_init)
        started = True
    try:
        resources = ray.cluster_resources()
        n_gpus, n_cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if gpus_per_job is None:
            gpus_per_job = 1.0 if n_gpus > 0 else 0.0
            if n_gpus == 0:
                log("dreamgs batch: the Ray cluster has no GPUs; running jobs on CPUs (--gpus-per-job 0)")
        if cpus_per_job is None:
            cpus_per_job = _default_cpus_per_job(gpus_per_job)
        log(f"dreamgs batch: {len(jobs)} job(s) on Ray, {gpus_per_job:g} GPU(s) and {cpus_per_job:g} CPU(s) each "
            f"(cluster: {n_gpus:g} GPUs, {n_cpus:g} CPUs)")
        for need, have, what in ((gpus_per_job, n_gpus, "GPU"), (cpus_per_job, n_cpus, "CPU")):
            if need > have:
                msg = (f"each job asks for {need:g} {what}(s) but the Ray cluster has {have:g}; "
                       f"lower --{what.lower()}s-per-job")
                if address:  # an autoscaling cluster may add nodes later
                    log(f"dreamgs batch: warning: {msg}; jobs wait until such nodes join")
                else:
                    raise InputError(msg)
        remote = ray.remote(num_gpus=gpus_per_job, num_cpus=cpus_per_job, max_retries=0)(execute_job)
        force_cpu = gpus_per_job == 0
        pending: dict[Any, tuple[Job, int]] = {}

        def submit(job: Job, attempt: int, allow_resume: bool = True) -> None:
            pending[remote.remote(_task(job, allow_resume, force_cpu))] = (job, attempt)

        for job in jobs:
            submit(job, 1)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job, attempt = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - the worker died (OOM kill, crash) or Ray failed
                    result = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              "retryable": True}
                if _after_attempt(job, attempt, result, tracker, retries):
                    submit(job, attempt + 1, allow_resume=not result.get("resumed"))
        except KeyboardInterrupt:
            for ref, (job, attempt) in pending.items():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort while shutting down
                    pass
                tracker.record(job, "interrupted", attempt)
            raise
    finally:
        if started:
            ray.shutdown()
