"""What this machine offers: device, render backend, and which prior weights exist locally.

Everything here is offline: hub ids are looked up in the Hugging Face cache only
(``local_files_only``), local folders are checked component by component, and nothing is
downloaded. ``dreamgs info`` prints :func:`info_text`; the web app uses :func:`prior_status`
to mark priors whose weights are missing.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import ConfigError, ModelNotFoundError
from .priors.sd import DEFAULT_SD_MODEL, SD_COMPONENTS
from .priors.zero123 import DEFAULT_STABLE_ZERO123_MODEL, DEFAULT_ZERO123_MODEL, ZERO123_COMPONENTS

# Diffusion priors that need weights, with their default model ids.
DEFAULT_MODELS = {"sd": DEFAULT_SD_MODEL, "zero123": DEFAULT_ZERO123_MODEL,
                  "stable-zero123": DEFAULT_STABLE_ZERO123_MODEL}
PRIOR_TITLES = {
    "oracle": "oracle: the built-in exact prior (offline, no weights)",
    "sd": "sd: Stable Diffusion (text)",
    "zero123": "zero123: Zero123-XL (image)",
    "stable-zero123": "stable-zero123: Stable-Zero123 (image)",
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
        return self.kind == "oracle" or self.folder is not None


def prior_status(kind: str, model: str = "") -> PriorStatus:
    """Look for the weights of prior ``kind`` (``model``: hub id or folder; "" = the default),
    without any network access."""
    from .priors.weights import check_folder, is_hub_id, missing

    if kind == "oracle":
        return PriorStatus("oracle", "built-in")
    if kind not in DEFAULT_MODELS:
        raise ConfigError(f"unknown prior kind '{kind}' (valid: oracle, {', '.join(DEFAULT_MODELS)})")
    model = model or DEFAULT_MODELS[kind]
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
    from huggingface_hub import snapshot_download

    from .priors.weights import _IGNORE, _allow_patterns, missing

    try:
        folder = snapshot_download(model, allow_patterns=_allow_patterns(components), ignore_patterns=_IGNORE,
                                   local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not in the cache
        raise missing(model, kind, f"not in the Hugging Face cache ({hf_cache_dir()})") from None
    return Path(folder)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that model loading reads (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def device_report() -> dict[str, str]:
    """Torch version, compute device and the render backend ``backend=auto`` picks."""
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


def weights_lookup() -> dict[str, str]:
    """Where prior weights and the rembg model are looked up."""
    from huggingface_hub import constants

    from .images import rembg_available, rembg_model_path

    offline = "yes (HF_HUB_OFFLINE=1: the cache only)" if constants.HF_HUB_OFFLINE else \
        "no (missing hub models are downloaded on first use when online)"
    return {
        "HF_HOME": str(constants.HF_HOME),
        "hub cache": str(hf_cache_dir()),
        "offline mode": offline,
        "local folders": "prior.model=/path/to/folder (or --model) in the diffusers layout",
        "rembg model": f"{rembg_model_path()} ({'found' if rembg_available() else 'not found'})",
    }


def info_text(model: str | None = None) -> str:
    """The report ``dreamgs info`` prints. ``model``: a hub id or folder to check as well."""
    lines = [f"dreamgs {__version__} (Python {platform.python_version()}, {platform.system()})", ""]
    for key, value in device_report().items():
        lines.append(f"{key + ':':16}{value}")
    lines += ["", "Priors (weights found locally?):"]
    lines.append(f"  {'oracle':16}yes (built in)")
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
