"""CLIP score and CLIP R-precision of finished runs (``dreamgs eval``), DreamFusion's metric.

Each run's exported ``model.glb`` is rendered at fixed views (``views`` azimuths evenly spaced from
0, at one elevation, with the run's own training radius and field of view, over white). Every
rendering is a query: CLIP ranks the candidate prompts by the cosine similarity of their text
embedding to the image embedding.

- ``r_precision@1`` (DreamFusion, after Dream Fields and Park et al.): the fraction of renderings
  whose own prompt is CLIP's top-1 among the candidates (the distinct prompts of the evaluated runs,
  plus any distractors). A tie at the top counts as ``1 / k`` for a ``k``-way tie, the expected
  value of breaking it at random. Chance level is ``1 / number of candidates``.
- ``clip_score`` (torchmetrics / Hessel et al.'s scale): ``100 * max(cos(image, own prompt), 0)``,
  averaged over the renderings; ``clip_cosine`` is the plain mean cosine.

Per run, both are averaged over its views; overall, over all renderings (every run has the same
number of views). Results go into each ``RUN_DIR/metrics.json`` (written atomically, merged with keys
already there) and a summary to stdout.

Weights are the user's: an open_clip architecture plus a local ``.safetensors`` file, or a local
open_clip model folder (``open_clip_config.json`` + ``open_clip_model.safetensors``, e.g. a Hugging Face
snapshot the user downloaded). Nothing is downloaded and nothing is unpickled: ``.bin``/``.pt``/``.pth``
files are refused, and the Hugging Face libraries are put in offline mode before open_clip is imported.
Torch and open_clip are imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import torch

CLIP_ENV = "DREAMGS_CLIP"  # default for --clip
DEFAULT_VIEWS = 8
TEXT_ELEVATION = -15.0  # degrees (negative = above): the elevation of text runs' turntables
SSAA = 2  # renders are antialiased: drawn at 2x the size, then box-filtered
WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = "open_clip_model.safetensors"
HOW_TO_SUPPLY = ("pass --clip ARCH:FILE.safetensors (e.g. ViT-B-32:/path/open_clip_model.safetensors) or --clip "
                 "FOLDER (a local open_clip model folder), or set $DREAMGS_CLIP; dreamgs never downloads CLIP "
                 "weights (README: Score results with CLIP)")


# ------------------------------------------------------------------------------------------------
# Which weights: the --clip value


@dataclass(frozen=True)
class ClipSpec:
    """Where the CLIP model comes from.

    ``arch``: an open_clip built-in architecture name (``ViT-B-32``) or None; ``config``: a JSON
    model config file or None; ``folder``: a local open_clip model folder or None; ``weights``: the
    ``.safetensors`` file. Exactly one of ``arch``, ``config``, ``folder`` gives the architecture.
    """

    weights: Path
    arch: str | None = None
    config: Path | None = None
    folder: Path | None = None
    text: str = ""

    def describe(self) -> str:
        return self.text or str(self.weights)


def _weights_file(path: Path, what: str) -> Path:
    """Check that ``path`` is a readable ``.safetensors`` file (never a pickle)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InputError(f"{what} {path}: only .safetensors weights are loaded (pickled {suffix} files are never "
                         "opened); use the model's open_clip_model.safetensors or convert the file to safetensors")
    if suffix != WEIGHT_SUFFIX:
        raise InputError(f"{what} {path}: expected a .safetensors weights file")
    if not path.is_file():
        raise InputError(f"{what} {path}: file not found")
    return path


def _folder_weights(folder: Path) -> Path:
    """The one ``.safetensors`` file of a model folder (``open_clip_model.safetensors`` preferred)."""
    preferred = folder / FOLDER_WEIGHTS
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob(f"*{WEIGHT_SUFFIX}"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InputError(f"--clip {folder}: several .safetensors files ({', '.join(p.name for p in found[:4])}); "
                         f"name one: --clip ARCH:{folder}/FILE.safetensors")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    extra = (f" (found {', '.join(pickles[:3])}: pickled weights are never opened; use the safetensors "
             "version)") if pickles else ""
    raise InputError(f"--clip {folder}: no .safetensors weights in this folder{extra}")


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot of ``repo_id`` (the one ``refs/main`` names), or None;
    read from the cache's layout, never online."""
    from .priors.weights import cached_snapshot

    try:
        return cached_snapshot(repo_id, {}, "CLIP")
    except Exception:  # not cached
        return None


def parse_clip_spec(text: str | None) -> ClipSpec:
    """Parse ``--clip`` (or ``$DREAMGS_CLIP``); nothing is loaded.

    Forms: ``FOLDER`` (a local open_clip model folder: ``open_clip_config.json`` and one
    ``.safetensors`` file); ``OWNER/NAME`` (such a folder in the local Hugging Face cache only);
    ``ARCH:FILE.safetensors`` or ``ARCH:FOLDER`` with ARCH an open_clip architecture name
    (``open_clip.list_models()``) or a JSON model config file.
    """
    text = (text or "").strip() or os.environ.get(CLIP_ENV, "").strip()
    if not text:
        raise InputError(f"no CLIP weights were given: {HOW_TO_SUPPLY}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_spec(path, text)
    if path.is_file():
        _weights_file(path, "--clip")  # a bare file: refuse pickles first, then ask for the architecture
        raise InputError(f"--clip {text}: name the architecture too, as ARCH:FILE.safetensors "
                         "(e.g. ViT-B-32:/path/open_clip_model.safetensors)")
    arch, sep, rest = text.partition(":")
    if not sep:
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and (cached := _hub_cache_folder(text)) is not None:
            return _folder_spec(cached, text)
        raise InputError(f"--clip {text}: no such folder or file, not in the local Hugging Face cache, and not "
                         f"ARCH:FILE.safetensors; {HOW_TO_SUPPLY}")
    arch, rest = arch.strip(), Path(rest.strip()).expanduser()
    if not arch or not str(rest):
        raise InputError(f"--clip {text}: expected ARCH:FILE.safetensors")
    weights = _folder_weights(rest) if rest.is_dir() else _weights_file(rest, "--clip")
    if arch.lower().endswith(".json"):
        config = Path(arch).expanduser()
        if not config.is_file():
            raise InputError(f"--clip {text}: model config {config} not found")
        return ClipSpec(weights, config=config, text=text)
    return ClipSpec(weights, arch=arch, text=text)


def _folder_spec(folder: Path, text: str) -> ClipSpec:
    if not (folder / FOLDER_CONFIG).is_file():
        raise InputError(f"--clip {folder}: no {FOLDER_CONFIG} in this folder; give the architecture: "
                         f"--clip ARCH:{folder}")
    return ClipSpec(_folder_weights(folder), folder=folder, text=text)


# ------------------------------------------------------------------------------------------------
# Encoders


class Encoder(Protocol):
    """What :func:`evaluate_runs` needs from CLIP (a stand-in in the tests)."""

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> unit-norm embeddings (N, D)."""

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N prompts -> unit-norm embeddings (N, D)."""


@dataclass
class OpenClipEncoder:
    """An open_clip model with its tokenizer and image preprocessing, encoding in batches."""

    model: object
    tokenizer: object
    preprocess: object
    device: str = "cpu"
    batch_size: int = 32
    name: str = ""

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        import torch
        from PIL import Image

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode_images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self.preprocess(Image.fromarray(im)) for im in images[i:i + self.batch_size]])
                out.append(self.model.encode_image(x.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(out).cpu(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[i:i + self.batch_size]))
                out.append(self.model.encode_text(tokens.to(self.device)).float())
        return torch.nn.functional.normalize(torch.cat(out).cpu(), dim=-1)


def _offline() -> None:
    """No downloads: the Hugging Face libraries read these when first imported."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[key] = "1"


def _import_open_clip():
    _offline()
    try:
        import open_clip
    except ImportError as e:
        raise InputError(f"dreamgs eval needs open_clip, which is not installed ({e}); "
                         "pip install 'dreamgs[eval]'") from None
    except Exception as e:  # e.g. a torchvision that does not match the installed torch
        raise InputError(f"open_clip is installed but cannot be imported ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); check that torch and torchvision match") from None
    return open_clip


def _read_config(path: Path) -> tuple[dict, dict]:
    """(model config, preprocess config) from a JSON file: either a bare model config (open_clip's
    model_configs/*.json) or an ``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON model config ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("model_cfg"), dict):
        return data["model_cfg"], data.get("preprocess_cfg") or {}
    if not isinstance(data, dict) or not all(k in data for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InputError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg and text_cfg, "
                         "or model_cfg)")
    return data, {}


def _quiet_create(open_clip, *args, **kwargs):
    """open_clip.create_model without its 'initialized randomly' warning (weights are loaded next)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(*args, **kwargs)
    finally:
        logging.disable(previous)


def _build(open_clip, spec: ClipSpec):
    """(model with random weights, tokenizer) for ``spec``, never downloading."""
    opts = dict(pretrained=None, load_weights=False, pretrained_image=False, pretrained_text=False)
    try:
        if spec.folder is not None:
            ident = f"local-dir:{spec.folder}"
            return _quiet_create(open_clip, ident, **opts), open_clip.get_tokenizer(ident)
        if spec.config is not None:
            model_cfg, pre_cfg = _read_config(spec.config)
            digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
            name = f"dreamgs-eval-{digest}"
            # open_clip registers architectures from JSON files named after them.
            with tempfile.TemporaryDirectory() as tmp:
                cfg_path = Path(tmp) / f"{name}.json"
                cfg_path.write_text(json.dumps(model_cfg), encoding="utf-8")
                open_clip.add_model_config(cfg_path)
            model = _quiet_create(open_clip, name, force_preprocess_cfg=pre_cfg or None, **opts)
            return model, open_clip.get_tokenizer(name)
        if spec.arch not in open_clip.list_models():
            raise InputError(f"--clip {spec.describe()}: unknown open_clip architecture '{spec.arch}' "
                             "(see open_clip.list_models(), e.g. ViT-B-32, ViT-L-14) or a JSON config file")
        return _quiet_create(open_clip, spec.arch, **opts), open_clip.get_tokenizer(spec.arch)
    except InputError:
        raise
    except Exception as e:  # an HF text tower whose config/tokenizer is not cached, a bad config, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"--clip {spec.describe()}: cannot build the model offline ({type(e).__name__}: {msg})") \
            from None


def load_state_dict_checked(model, path: Path, what: str) -> None:
    """Load a safetensors state dict into ``model``; any missing, unexpected or mis-shaped key is one
    :class:`InputError` naming the file and a few of the keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{what} {path}: not a valid safetensors file ({str(e).splitlines()[0] if str(e) else e})") \
            from None
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    for key in ("logit_scale", "logit_bias"):  # scalar or (1,), as open_clip's own loader allows
        if key in state and key in own and state[key].numel() == own[key].numel():
            state[key] = state[key].reshape(own[key].shape)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]

    def few(items):
        return ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing {few(missing)}")
    if unexpected:
        problems.append(f"unexpected {few(unexpected)}")
    if shapes:
        problems.append(f"wrong shape {few(shapes)}")
    if problems:
        raise InputError(f"{what} {path}: these weights do not fit the architecture ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)


def load_clip(spec: ClipSpec | str | None, device: str = "cpu", batch_size: int = 32) -> OpenClipEncoder:
    """Build the architecture of ``spec`` and load its safetensors weights; no network, no pickle."""
    if not isinstance(spec, ClipSpec):
        spec = parse_clip_spec(spec)
    open_clip = _import_open_clip()
    model, tokenizer = _build(open_clip, spec)
    load_state_dict_checked(model, spec.weights, "--clip")
    model = model.to(device).eval()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pre = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess = image_transform_v2(PreprocessCfg(**pre), is_train=False)
    return OpenClipEncoder(model, tokenizer, preprocess, device, batch_size, spec.describe())


# ------------------------------------------------------------------------------------------------
# Ranking


@dataclass
class Retrieval:
    """Per-query results of ranking the candidate prompts for each image."""

    cosine: np.ndarray  # (N,) cosine similarity of each image to its own prompt
    hit: np.ndarray  # (N,) 1 when the own prompt is the unique top-1, 1/k in a k-way tie at the top, else 0
    top1: np.ndarray  # (N,) index of the best candidate (the first one in a tie)

    @property
    def clip_score(self) -> np.ndarray:
        return 100.0 * np.maximum(self.cosine, 0.0)


def rank_prompts(image_emb, text_emb, labels) -> Retrieval:
    """Rank candidates ``text_emb`` (M, D) for every image ``image_emb`` (N, D), both unit-norm;
    ``labels`` (N,) is each image's own candidate. Similarities are compared in float64."""
    import torch

    img = torch.as_tensor(image_emb).double()
    txt = torch.as_tensor(text_emb).double()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"rank_prompts: embeddings (N, D) and (M, D) expected, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    if len(labels) != len(img) or (len(labels) and (labels.min() < 0 or labels.max() >= len(txt))):
        raise ValueError("rank_prompts: one label in 0..M-1 per image expected")
    sims = img @ txt.T  # (N, M)
    own = sims.gather(1, labels[:, None])[:, 0]
    best = sims.max(dim=1).values
    at_top = sims >= best[:, None] - 1e-12 * best.abs().clamp_min(1.0)[:, None]
    own_top = at_top.gather(1, labels[:, None])[:, 0]
    hit = torch.where(own_top, 1.0 / at_top.sum(dim=1).double(), torch.zeros_like(own))
    return Retrieval(own.numpy(), hit.numpy(), sims.argmax(dim=1).numpy())


# ------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunInput:
    run_dir: Path
    prompt: str
    cfg: object  # dreamgs.config.Config


@dataclass
class EvalResult:
    runs: list[dict] = field(default_factory=list)  # per run: what went into its metrics.json
    summary: dict = field(default_factory=dict)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with ``#`` are skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: prompts file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read the prompts file ({e})") from None
    prompts = [" ".join(line.split()) for line in text.splitlines()]
    prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise InputError(f"{p}: no prompts in this file (one prompt per line)")
    return prompts


def load_runs(run_dirs: Sequence[str | os.PathLike], prompts: Sequence[str] | None = None) -> list[RunInput]:
    """Check the run folders and pair each with its prompt (``prompts`` in order, else the prompt in
    its ``config.yaml``)."""
    import yaml

    from .config import from_dict
    from .errors import ConfigError

    if not run_dirs:
        raise InputError("no run folders given")
    if prompts is not None and len(prompts) != len(run_dirs):
        raise InputError(f"the prompts file has {len(prompts)} prompts for {len(run_dirs)} run folders; give one "
                         "prompt per run folder, in the same order (or leave --prompts out to use each run's own)")
    seen, runs = set(), []
    for i, d in enumerate(run_dirs):
        run_dir = Path(d)
        if not run_dir.is_dir():
            raise InputError(f"{run_dir}: run folder not found")
        if run_dir.resolve() in seen:
            raise InputError(f"{run_dir}: given twice")
        seen.add(run_dir.resolve())
        if not (run_dir / "model.glb").is_file():
            raise InputError(f"{run_dir}: no model.glb in this run folder (was the run finished with "
                             "stage2.enabled=true and export.glb=true?)")
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise InputError(f"{run_dir}: not a dreamgs run folder (no config.yaml)")
        try:
            cfg = from_dict(yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise InputError(f"{cfg_path}: not valid YAML ({str(e).splitlines()[0]})") from None
        except ConfigError as e:
            raise InputError(f"{cfg_path}: {e}") from None
        prompt = prompts[i] if prompts is not None else " ".join(str(cfg.prompt or "").split())
        if not prompt:
            raise InputError(f"{run_dir}: its config.yaml has no prompt (an image-to-3D run?); give one per run "
                             "with --prompts FILE")
        runs.append(RunInput(run_dir, prompt, cfg))
    return runs


def view_cameras(cfg, views: int, size: int, elevation: float | None = None):
    """The fixed evaluation cameras of a run: ``views`` azimuths from 0 at ``elevation`` (default:
    the turntable's, -15 degrees for text runs, the input view's for image runs), the run's radius
    and field of view."""
    from .cameras import orbit_views

    if elevation is None:
        elevation = float(cfg.elevation) if cfg.mode == "image" else TEXT_ELEVATION
    return orbit_views(views, elevation, float(cfg.camera.radius), float(cfg.camera.fovy), size)


def render_run(run: RunInput, views: int, size: int, elevation: float | None = None) -> np.ndarray:
    """uint8 renders (views, size, size, 3) of a run's ``model.glb`` over white."""
    import torch

    from .evaluate import mesh_rgba_views
    from .media import to_uint8
    from .mesh.io import load_mesh

    mesh = load_mesh(run.run_dir / "model.glb")
    with torch.no_grad():
        rgb, _ = mesh_rgba_views(mesh, view_cameras(run.cfg, views, size, elevation), ssaa=SSAA)
    return to_uint8(rgb)


def _merge_metrics(path: Path, update: dict) -> None:
    from .run import write_json

    data = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            data = old if isinstance(old, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
    data.update(update)
    try:
        write_json(path, data)
    except OSError as e:
        raise InputError(f"{path}: cannot write the metrics ({e.strerror or e})") from None


def evaluate_runs(run_dirs: Sequence[str | os.PathLike], encoder: Encoder, *, prompts: Sequence[str] | None = None,
                  distractors: Sequence[str] = (), views: int = DEFAULT_VIEWS, size: int = 224,
                  elevation: float | None = None, model_name: str = "", write: bool = True) -> EvalResult:
    """Render, encode and rank (see the module docstring); writes ``RUN_DIR/metrics.json`` when
    ``write``. Runs are checked before anything is rendered."""
    if views < 1 or size < 16:
        raise InputError(f"eval: --views must be >= 1 and --size >= 16, got {views} and {size}")
    runs = load_runs(run_dirs, prompts)
    candidates: list[str] = []
    for s in [r.prompt for r in runs] + [" ".join(d.split()) for d in distractors]:
        if s and s not in candidates:
            candidates.append(s)
    images = np.concatenate([render_run(r, views, size, elevation) for r in runs])
    labels = np.repeat([candidates.index(r.prompt) for r in runs], views)
    image_emb, text_emb = encoder.encode_images(images), encoder.encode_texts(candidates)
    if tuple(image_emb.shape) != (len(images), text_emb.shape[-1]) or len(text_emb) != len(candidates):
        raise RuntimeError(f"encoder returned shapes {tuple(image_emb.shape)} and {tuple(text_emb.shape)} for "
                           f"{len(images)} images and {len(candidates)} prompts")
    ret = rank_prompts(image_emb, text_emb, labels)
    m = len(candidates)
    chance = 1.0 / m
    result = EvalResult()
    for i, run in enumerate(runs):
        sl = slice(i * views, (i + 1) * views)
        cams = view_cameras(run.cfg, views, size, elevation)
        per_view = [{"azimuth": round(float(az), 3), "clip_score": float(cs), "cosine": float(c), "hit": float(h),
                     "top1": candidates[int(t)]}
                    for az, cs, c, h, t in zip(cams.azimuth.tolist(), ret.clip_score[sl], ret.cosine[sl], ret.hit[sl],
                                               ret.top1[sl])]
        row = {
            "clip_score": float(ret.clip_score[sl].mean()),
            "r_precision@1": float(ret.hit[sl].mean()) if m > 1 else None,
            "clip_eval": {
                "model": model_name, "prompt": run.prompt, "candidates": m, "chance_r_precision@1": chance,
                "clip_cosine": float(ret.cosine[sl].mean()), "views": views, "size": size,
                "elevation": float(cams.elevation[0]), "radius": float(cams.radius[0]), "fovy": float(cams.fovy),
                "per_view": per_view,
                "definition": "clip_score = mean over views of 100*max(cos,0) with the run's prompt; "
                              "r_precision@1 = fraction of views whose own prompt is CLIP's top-1 of the candidates",
            },
        }
        if write:
            _merge_metrics(run.run_dir / "metrics.json", row)
        result.runs.append({"run_dir": str(run.run_dir), **row})
    n = len(images)
    hits = float(ret.hit.sum())
    result.summary = {
        "model": model_name, "runs": len(runs), "views": views, "renderings": n, "candidates": m,
        "clip_score": float(ret.clip_score.mean()), "clip_cosine": float(ret.cosine.mean()),
        "r_precision@1": hits / n if m > 1 else None, "chance_r_precision@1": chance,
        # binomial standard deviation of R@1 at chance if the renderings were independent queries
        "chance_sigma": math.sqrt(chance * (1 - chance) / n),
    }
    return result


def format_summary(result: EvalResult) -> str:
    """The table ``dreamgs eval`` prints."""
    s = result.summary
    lines = [f"{'run':50} {'clip_score':>10} {'R@1':>6}  prompt"]
    for r in result.runs:
        rp = "n/a" if r["r_precision@1"] is None else f"{r['r_precision@1']:.3f}"
        name = r["run_dir"] if len(r["run_dir"]) <= 50 else "..." + r["run_dir"][-47:]
        lines.append(f"{name:50} {r['clip_score']:10.2f} {rp:>6}  {r['clip_eval']['prompt']}")
    rp = "n/a (needs 2+ distinct prompts)" if s["r_precision@1"] is None else \
        f"{s['r_precision@1']:.3f} (chance {s['chance_r_precision@1']:.3f})"
    lines.append(f"overall: {s['runs']} runs x {s['views']} views, {s['candidates']} candidate prompts; "
                 f"clip_score {s['clip_score']:.2f}, R@1 {rp}; CLIP {s['model']}")
    return "\n".join(lines)
