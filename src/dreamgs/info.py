"""What this machine offers: device, render backend, and which prior weights exist locally.

Everything here is offline: hub ids are looked up in the Hugging Face cache only
(``local_files_only``), local folders are checked component by component, and nothing is
downloaded. ``dreamgs info`` prints :func:`info_text`; the web app uses :func:`prior_status`
to mark priors whose weights are missing.

Torch is not imported unless asked (``dreamgs info --torch``) or already loaded: its version and
CUDA build come from the installed package's files, and GPUs from the NVIDIA driver
(``nvidia-smi``); the report then says that the device was not checked with torch itself.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import ConfigError, ModelNotFoundError
from .priors.mvdream_ckpt import DEFAULT_IMAGEDREAM_MODEL, DEFAULT_MVDREAM_MODEL
from .priors.weights import (DEFAULT_SD_MODEL, DEFAULT_STABLE_ZERO123_MODEL, DEFAULT_ZERO123_MODEL, SD_COMPONENTS,
                             ZERO123_COMPONENTS, hf_cache_dir)

# Diffusion priors that need weights, with their default model ids.
DEFAULT_MODELS = {"sd": DEFAULT_SD_MODEL, "zero123": DEFAULT_ZERO123_MODEL,
                  "stable-zero123": DEFAULT_STABLE_ZERO123_MODEL, "mvdream": DEFAULT_MVDREAM_MODEL,
                  "imagedream": DEFAULT_IMAGEDREAM_MODEL}
BUILT_IN = ("oracle", "oracle-mv")  # priors without weights
PRIOR_TITLES = {
    "oracle": "oracle: the built-in exact prior (offline, no weights)",
    "oracle-mv": "oracle-mv: the built-in exact joint 4-view prior (offline, no weights)",
    "sd": "sd: Stable Diffusion (text)",
    "zero123": "zero123: Zero123-XL (image)",
    "stable-zero123": "stable-zero123: Stable-Zero123 (image)",
    "mvdream": "mvdream: MVDream, 4-view (text)",
    "imagedream": "imagedream: ImageDream, 4-view (image)",
}


def _components(kind: str) -> dict[str, str]:
    return SD_COMPONENTS if kind == "sd" else ZERO123_COMPONENTS


@dataclass
class PriorStatus:
    """Whether the weights of one prior are available locally.

    ``folder`` is the local folder holding every component (None when missing); ``message``
    is then the same one-line "not found ... supply the weights with ..." text the prior itself
    would raise, naming the model and the remedy.
    """

    kind: str
    model: str
    folder: Path | None = None
    message: str = ""

    @property
    def found(self) -> bool:
        return self.kind in BUILT_IN or self.folder is not None


def prior_status(kind: str, model: str = "") -> PriorStatus:
    """Look for the weights of prior ``kind`` (``model``: hub id or folder; "" = the default),
    without any network access."""
    from .priors.weights import check_folder, is_hub_id, missing

    if kind in BUILT_IN:
        return PriorStatus(kind, "built-in")
    if kind not in DEFAULT_MODELS:
        raise ConfigError(f"unknown prior kind '{kind}' (valid: {', '.join(BUILT_IN + tuple(DEFAULT_MODELS))})")
    model = model or DEFAULT_MODELS[kind]
    if kind in ("mvdream", "imagedream"):  # a checkpoint file or either folder layout
        from .priors.mvdream_ckpt import locate

        try:
            return PriorStatus(kind, model, locate(model, kind).path)
        except ModelNotFoundError as e:
            return PriorStatus(kind, model, None, str(e))
    components = _components(kind)
    path = Path(model).expanduser()
    try:
        if path.is_dir():
            return PriorStatus(kind, model, check_folder(path.resolve(), components, model, kind))
        if not is_hub_id(model):
            raise missing(model, kind, "no such folder, and it is not a hub id of the form owner/name")
        return PriorStatus(kind, model, check_folder(_cached_snapshot(model, components, kind), components,
                                                     model, kind))
    except ModelNotFoundError as e:
        return PriorStatus(kind, model, None, str(e))


def _cached_snapshot(model: str, components: dict[str, str], kind: str) -> Path:
    """The Hugging Face cache's snapshot folder of ``model``, never touching the network."""
    from .priors.weights import cached_snapshot

    return cached_snapshot(model, components, kind)


def device_report(use_torch: bool | None = None) -> dict[str, str]:
    """Torch version, compute device and the render backend ``backend=auto`` picks.

    ``use_torch``: import torch and ask it (exact, ~2 s); False: read the installed package and the
    NVIDIA driver instead; None (default): ask torch only if it is already imported.
    """
    if use_torch is None:
        use_torch = "torch" in sys.modules
    return _torch_device_report() if use_torch else _static_device_report()


def _torch_device_report() -> dict[str, str]:
    import torch

    from .render import resolve_backend
    from .stage1 import resolve_device

    device = resolve_device("auto")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        dev = f"cpu ({os.cpu_count()} cores; no CUDA GPU visible)"
    try:
        import gsplat

        gs = f"gsplat {gsplat.__version__}"
    except Exception as e:  # gsplat is optional at run time on CPU
        gs = f"gsplat not importable ({type(e).__name__})"
    backend = resolve_backend("auto", device)
    why = "CUDA rasteriser" if backend == "gsplat" else "pure-PyTorch rasteriser"
    return {"device": dev, "render backend": f"{backend} ({why}; {gs})",
            "torch": f"{torch.__version__} (CUDA build: {torch.version.cuda or 'no'})"}


def torch_build() -> tuple[str | None, dict]:
    """The installed torch's version and the constants of its ``torch/version.py`` (``cuda``,
    ``hip``: the CUDA/ROCm versions it was built for, or None), read without importing torch;
    (None, {}) when torch is not installed."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, {}
    fields: dict = {}
    try:
        spec = importlib.util.find_spec("torch")
        folder = Path(next(iter(spec.submodule_search_locations)))
        tree = ast.parse((folder / "version.py").read_text(encoding="utf-8"))
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
                fields[target.id] = node.value.value
    except (OSError, SyntaxError, StopIteration, TypeError, AttributeError, ValueError):
        pass
    return version, fields


def nvidia_gpus() -> list[str] | None:
    """The NVIDIA GPUs the driver reports (``nvidia-smi``), as "name, N GiB"; [] when there is no
    NVIDIA driver, None when it could not be asked."""
    if not Path("/proc/driver/nvidia").exists() and shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append(f"{name.strip()}, {float(mem) / 1024:.0f} GiB")
        except ValueError:
            gpus.append(line.strip())
    return gpus


def _static_device_report() -> dict[str, str]:
    """:func:`device_report` without importing torch (see the module docstring)."""
    version, build = torch_build()
    if version is None:
        return {"device": "unknown (torch is not installed)", "render backend": "none (torch is not installed)",
                "torch": "not installed"}
    cuda, hip = build.get("cuda"), build.get("hip")
    try:
        gs = f"gsplat {importlib.metadata.version('gsplat')} installed"
    except importlib.metadata.PackageNotFoundError:
        gs = "gsplat not installed"
    unchecked = "not checked with torch: `dreamgs info --torch` does"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not cuda and not hip:
        dev, backend = f"cpu ({os.cpu_count()} cores; this torch build has no CUDA)", "torch"
    elif hip:
        dev, backend = f"unknown: a ROCm build of torch ({unchecked})", "unknown"
    else:
        gpus = nvidia_gpus()
        if gpus == [] or (gpus and visible in ("", "-1")):
            why = "no NVIDIA driver found" if gpus == [] else f"CUDA_VISIBLE_DEVICES={visible!r} hides the GPUs"
            dev, backend = f"cpu ({os.cpu_count()} cores; {why})", "torch"
        elif not gpus:
            dev, backend = f"unknown: nvidia-smi did not list any GPU ({unchecked})", "unknown"
        else:
            seen = f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} reported by nvidia-smi"
            if visible is not None:
                seen += f", CUDA_VISIBLE_DEVICES={visible}"
            dev, backend = f"cuda ({gpus[0]}; {seen}; {unchecked})", "gsplat"
    why = {"gsplat": "CUDA rasteriser", "torch": "pure-PyTorch rasteriser"}.get(backend, "follows the device")
    rocm = f"; ROCm build: {hip}" if hip else ""
    return {"device": dev, "render backend": f"{backend} ({why}; {gs})",
            "torch": f"{version} (CUDA build: {cuda or 'no'}{rocm})"}


def clip_status() -> str:
    """Whether ``dreamgs eval`` can run: open_clip installed (read from its metadata, not imported)
    and where its weights come from."""
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return "open_clip not installed (dreamgs eval needs it: pip install 'dreamgs[eval]')"
    env = os.environ.get("DREAMGS_CLIP", "").strip()
    return (f"open_clip {version} installed; weights: --clip or $DREAMGS_CLIP ({env or 'not set'}), "
            "local files only")


def weights_lookup() -> dict[str, str]:
    """Where prior weights, the rembg model and CLIP (``dreamgs eval``) are looked up."""
    from huggingface_hub import constants

    from .images import rembg_available, rembg_model_path
    from .segment import segmenter_status

    offline = "yes (HF_HUB_OFFLINE=1: the cache only)" if constants.HF_HUB_OFFLINE else \
        "no (missing hub models are downloaded on first use when online)"
    return {
        "HF_HOME": str(constants.HF_HOME),
        "hub cache": str(hf_cache_dir()),
        "offline mode": offline,
        "local folders": "prior.model=/path/to/folder (or --model) in the diffusers layout",
        "rembg model": f"{rembg_model_path()} ({'found' if rembg_available() else 'not found'})",
        "segmenter": segmenter_status(),
        "CLIP (eval)": clip_status(),
    }


def info_text(model: str | None = None, use_torch: bool | None = None) -> str:
    """The report ``dreamgs info`` prints. ``model``: a hub id or folder to check as well;
    ``use_torch``: see :func:`device_report`."""
    lines = [f"dreamgs {__version__} (Python {platform.python_version()}, {platform.system()})", ""]
    for key, value in device_report(use_torch).items():
        lines.append(f"{key + ':':16}{value}")
    lines += ["", "Priors (weights found locally?):"]
    for kind in BUILT_IN:
        lines.append(f"  {kind:16}yes (built in)")
    for kind in DEFAULT_MODELS:
        lines += _status_lines(prior_status(kind))
    if model:
        lines += ["", f"--model {model}:"]
        statuses = [prior_status(kind, model) for kind in ("sd", "zero123")]
        ok = [s for s in statuses if s.found]
        if ok:
            lines += [f"  usable as the {s.kind} prior ({s.folder})" for s in ok]
        else:
            lines += [f"  not usable: {s.message}" for s in statuses]
    lines += ["", "Weights are looked up in:"]
    for key, value in weights_lookup().items():
        lines.append(f"  {key + ':':16}{value}")
    return "\n".join(lines)


def _status_lines(s: PriorStatus) -> list[str]:
    if s.found:
        return [f"  {s.kind:16}yes: {s.model} ({s.folder})"]
    return [f"  {s.kind:16}no: {s.message}"]
