"""Finding diffusion weights on disk or in the Hugging Face cache, and loading them safely.

A model is named by a hub id (``owner/name``) or a local folder in the diffusers layout (one
sub-folder per component: ``unet/``, ``vae/``, ...). :func:`resolve_model_folder` turns either
into a local folder holding every component the prior needs, downloading only the files those
components use (configs, tokenizer files and ``*.safetensors`` weights; never pickled ``.bin``
or ``.ckpt`` files, never the fp16/EMA variants). Anything that goes wrong on the way (offline
without a cached copy, unknown or gated repository, a component missing from a local folder,
only pickled weights) becomes one :class:`~dreamgs.errors.ModelNotFoundError` whose message
names the model and says how to supply the weights. Nothing falls back silently.

Weights are always read with ``use_safetensors=True`` and never with ``trust_remote_code``.

This module does not import torch (only the functions that load tensors do), so ``dreamgs info``
can check what is on disk without paying for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from ..errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# Component kinds: what files a component folder must contain.
WEIGHTS = "weights"  # config.json + *.safetensors
TOKENIZER = "tokenizer"  # tokenizer files (vocab.json/merges.txt or tokenizer.json)
CONFIG = "config"  # a single JSON config (scheduler, image processor)

_CONFIG_FILES = {
    TOKENIZER: ("tokenizer_config.json", "vocab.json", "tokenizer.json"),
    CONFIG: ("scheduler_config.json", "preprocessor_config.json", "config.json"),
    WEIGHTS: ("config.json",),
}

_IGNORE = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx", "*.fp16.*", "*non_ema*", "*.ema.*"]

# The priors' default models and the components each needs (used by the priors and by `dreamgs info`).
DEFAULT_SD_MODEL = "stabilityai/stable-diffusion-2-1-base"
SD_COMPONENTS = {"tokenizer": TOKENIZER, "text_encoder": WEIGHTS, "vae": WEIGHTS, "unet": WEIGHTS,
                 "scheduler": CONFIG}
DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"
DEFAULT_STABLE_ZERO123_MODEL = "ashawkey/stable-zero123-diffusers"
ZERO123_COMPONENTS = {"unet": WEIGHTS, "vae": WEIGHTS, "image_encoder": WEIGHTS,
                      "feature_extractor": CONFIG, "scheduler": CONFIG, "clip_camera_projection": WEIGHTS}


def remedy(model: str) -> str:
    """The one-sentence 'how to supply weights' hint shared by every missing-weights error."""
    return (
        f"supply the weights with prior.model=/path/to/folder (a diffusers folder; --model on the command line), "
        f"or point HF_HOME at a Hugging Face cache that already holds '{model}'; for gated models log in "
        f"first (`hf auth login` or HF_TOKEN)"
    )


def missing(model: str, kind: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"{kind} weights '{model}' not found: {reason}; {remedy(model)}")


def resolve_dtype(name: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; ``fp32``/``fp16``/``bf16`` are explicit."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in table:
        raise ConfigError(f"prior.dtype: expected auto, fp32, fp16 or bf16, got '{name}'")
    return table[name]


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def is_hub_id(model: str) -> bool:
    """``owner/name`` with the characters the hub allows (a string that is not a folder)."""
    return bool(_HUB_ID.match(model)) and ".." not in model


def _component_problem(folder: Path, name: str, kind: str) -> str | None:
    """Why ``folder/name`` is not a usable component, or None if it looks complete."""
    sub = folder / name
    if not sub.is_dir():
        return f"the folder has no '{name}/' component"
    files = {p.name for p in sub.iterdir() if p.is_file()}
    if not any(f in files for f in _CONFIG_FILES[kind]):
        return f"'{name}/' has no {' or '.join(_CONFIG_FILES[kind])}"
    if kind == TOKENIZER and "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
        return f"'{name}/' has neither tokenizer.json nor vocab.json + merges.txt"
    if kind == WEIGHTS and not any(f.endswith(".safetensors") for f in files):
        pickled = sorted(f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth")))
        if pickled:
            return (f"'{name}/' only has pickled weights ({pickled[0]}), which are never loaded; "
                    f"convert them to .safetensors")
        return f"'{name}/' has no .safetensors weights"
    return None


def check_folder(folder: Path, components: dict[str, str], model: str, kind: str) -> Path:
    """Raise ModelNotFoundError unless ``folder`` holds every component."""
    for name, ckind in components.items():
        problem = _component_problem(folder, name, ckind)
        if problem:
            raise missing(model, kind, f"{problem} ({folder})")
    return folder


def _allow_patterns(components: dict[str, str]) -> list[str]:
    patterns = ["model_index.json"]
    for name, ckind in components.items():
        patterns.append(f"{name}/*.json")
        if ckind == TOKENIZER:
            patterns.append(f"{name}/*.txt")
        if ckind == WEIGHTS:
            patterns.append(f"{name}/*.safetensors")
    return patterns


def resolve_model_folder(model: str, components: dict[str, str], kind: str) -> Path:
    """A local folder holding ``components`` ({subfolder: WEIGHTS|TOKENIZER|CONFIG}) of ``model``.

    ``model`` is a local folder (used as is) or a hub id (fetched into, or found in, the Hugging
    Face cache; with ``HF_HUB_OFFLINE=1`` only the cache is consulted). ``kind`` names the prior
    in error messages.
    """
    if not model:
        raise ConfigError(f"prior.model is empty for kind '{kind}'")
    path = Path(model).expanduser()
    if path.is_dir():
        return check_folder(path.resolve(), components, model, kind)
    if not is_hub_id(model):
        raise missing(model, kind, "no such folder, and it is not a hub id of the form owner/name")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        folder = snapshot_download(model, allow_patterns=_allow_patterns(components), ignore_patterns=_IGNORE)
    except (OSError, ValueError, HfHubHTTPError) as e:  # reworded: the hub's own messages are long and vague
        raise missing(model, kind, _hub_failure(e)) from None
    return check_folder(Path(folder), components, model, kind)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that model loading reads (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    """Whether the Hugging Face hub is in offline mode (HF_HUB_OFFLINE=1: the cache only)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(model: str, components: dict[str, str], kind: str) -> Path:
    """The Hugging Face cache's snapshot folder of hub id ``model`` (the one ``refs/main`` names),
    read from the cache's documented layout without the hub client (fast, and never online)."""
    repo = hf_cache_dir() / f"models--{model.replace('/', '--')}"
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = ""
    folder = repo / "snapshots" / commit
    if not commit or "/" in commit or commit in (".", "..") or not folder.is_dir():
        raise missing(model, kind, f"not in the Hugging Face cache ({hf_cache_dir()})")
    return folder


def _hub_failure(e: BaseException) -> str:
    """Why a hub download failed, in our words (never the hub library's message)."""
    from huggingface_hub import errors

    not_cached = f"not in the local Hugging Face cache ({hf_cache_dir()})"
    if isinstance(e, errors.GatedRepoError):
        return "the repository is gated and this machine is not logged in"
    if isinstance(e, errors.RepositoryNotFoundError):
        return f"{not_cached}, and the hub has no such repository (or it is private and this machine is not logged in)"
    if isinstance(e, errors.LocalEntryNotFoundError):  # raised when the hub cannot be asked and nothing is cached
        if hf_offline():
            return f"{not_cached}, and offline mode is set (HF_HUB_OFFLINE=1)"
        return f"{not_cached}, and the Hugging Face hub could not be reached (no network)"
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return f"{not_cached}, and the hub refused the download (HTTP {status or 'error'})"
    if isinstance(e, OSError) and e.strerror:
        return f"{not_cached}, and downloading it failed ({e.strerror})"
    return f"{not_cached}, and downloading it failed ({type(e).__name__})"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines else type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def load_component(loader: Callable[..., T], folder: Path, subfolder: str, model: str, kind: str,
                   **kwargs) -> T:
    """``loader(folder, subfolder=..., **kwargs)``, with loading failures as ModelNotFoundError."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - older safetensors
        SafetensorError = OSError  # type: ignore[misc,assignment]
    try:
        return loader(str(folder), subfolder=subfolder, **kwargs)
    except (OSError, ValueError, HfHubHTTPError, SafetensorError) as e:
        raise missing(model, kind, f"could not load '{subfolder}/': {_first_line(e)}") from None


def load_safetensors(path: Path, model: str, kind: str) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` state dict (never a pickle), errors as ModelNotFoundError."""
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise missing(model, kind, f"refusing to load non-safetensors weights {path.name}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise missing(model, kind, f"could not read {path}: {_first_line(e)}") from None
