"""Run checkpoints: one ``checkpoint.safetensors`` file per run folder, written atomically.

A checkpoint holds everything needed to continue a run exactly where it stopped:

- ``stage``: ``"stage1"`` (stage 1 in progress; ``step`` stage-1 steps are done) or ``"stage2"``
  (stage 1 finished; the run continues with its ``.ply``, video and stage 2);
- the stage-1 trainer state (:meth:`dreamgs.train.GaussianTrainer.state_dict`): Gaussian
  parameters, Adam moments and step counts, learning rates, densification statistics, the
  trainer's generator, the step and bad-step counts, and the global torch/CUDA/numpy/python RNG
  states;
- the prior's own random generators (every ``torch.Generator`` attribute of the prior object:
  the SDS noise and timestep draws), by attribute name;
- the distillation rule's state (``prior.distill=vsd``: the LoRA, its camera embedding, their
  AdamW moments and the LoRA's generator; or the oracle's particle buffer) under ``distill.*``;
- the resolved config (as :func:`dreamgs.config.to_dict`) and, in image mode, the preprocessed
  input image (the exact float RGBA the run trains against).

Format: a single safetensors file. Tensors are stored under flat names (``params.means``,
``optim.means.exp_avg``, ``rng.torch``, ``gen.prior._cpu_gen``, ...); everything else is one JSON
document in the safetensors metadata under ``dreamgs``. Loading never unpickles anything, so a
checkpoint from an untrusted source can at worst be rejected as malformed
(:class:`~dreamgs.errors.InputError`). Writing goes to a temporary file in the same folder,
fsync, then ``os.replace``: a reader (or a resumed run after a crash) sees either the previous
checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_output
from .errors import InputError

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "dreamgs-checkpoint"
VERSION = 1
STAGES = ("stage1", "stage2")
_META_KEY = "dreamgs"


def global_rng_state() -> dict:
    """The global random generators' states (torch, CUDA, numpy, Python), as trainers checkpoint them."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_global_rng_state(rng: dict) -> None:
    """Restore what :func:`global_rng_state` returned."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` is the JSON document, ``tensors`` the named tensors (on CPU)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def ref_rgba(self) -> Tensor | None:
        return self.tensors.get("ref.rgba")


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


# ------------------------------------------------------------------------------------------------
# Prior generators


def prior_generators(prior: Any) -> dict[str, torch.Generator]:
    """The prior's ``torch.Generator`` attributes by name (sorted; aliases of one generator appear
    under each name; a prior of several parts names them by part). These drive its SDS noise and
    random timesteps."""
    if prior is None:
        return {}
    if hasattr(prior, "generators"):
        return dict(sorted(prior.generators().items()))
    return {k: v for k, v in sorted(vars(prior).items()) if isinstance(v, torch.Generator)}


def restore_prior_generators(prior: Any, ckpt: Checkpoint) -> None:
    """Set the prior's generators to their checkpointed states.

    A generator is restored only when the checkpoint has one of that name on the same device
    type (a run resumed on another device continues with freshly seeded CUDA generators)."""
    saved = ckpt.meta.get("prior_generators", {})
    for name, gen in prior_generators(prior).items():
        key = f"gen.prior.{name}"
        if saved.get(name) == gen.device.type and key in ckpt.tensors:
            gen.set_state(ckpt.tensors[key])


# ------------------------------------------------------------------------------------------------
# Trainer state <-> flat tensors + JSON


def _flatten_trainer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors: dict[str, Tensor] = {}
    for name, t in state["params"].items():
        tensors[f"params.{name}"] = t
    for name, st in state["optimizer"].items():
        for key, v in st.items():
            if not torch.is_tensor(v):
                v = torch.tensor(v)
            tensors[f"optim.{name}.{key}"] = v
    tensors["stats.grad_sum"] = state["stats"]["grad_sum"]
    tensors["stats.count"] = state["stats"]["count"]
    tensors["gen.trainer"] = state["generator"]
    rng = state["rng"]
    tensors["rng.torch"] = rng["torch"]
    for i, s in enumerate(rng["cuda"]):
        tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss_next = rng["python"]
    meta = {
        "sh_degree": int(state["sh_degree"]),
        "lrs": {k: float(v) for k, v in state["lrs"].items()},
        "step": int(state["step"]),
        "bad_steps": int(state["bad_steps"]),
        "optimizer_params": sorted(state["optimizer"]),
        "cuda_rng_count": len(rng["cuda"]),
        "numpy_rng": [str(kind), int(pos), int(has_gauss), float(cached)],
        "python_rng": [int(version), [int(x) for x in py_state], gauss_next],
    }
    if state.get("representation", "gaussians") != "gaussians":  # a NeRF (stage1_nerf.NerfTrainer)
        meta["representation"] = state["representation"]
    return tensors, meta


def trainer_state(ckpt: Checkpoint) -> dict:
    """The checkpoint's trainer state in the form of :meth:`GaussianTrainer.state_dict`."""
    t, m = ckpt.tensors, ckpt.meta["trainer"]
    params = {k[len("params."):]: v for k, v in t.items() if k.startswith("params.")}
    optimizer: dict[str, dict] = {}
    for name in m["optimizer_params"]:
        prefix = f"optim.{name}."
        optimizer[name] = {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}
    kind, pos, has_gauss, cached = m["numpy_rng"]
    version, py_state, gauss_next = m["python_rng"]
    return {
        "params": params,
        "sh_degree": m["sh_degree"],
        "optimizer": optimizer,
        "lrs": m["lrs"],
        "stats": {"grad_sum": t["stats.grad_sum"], "count": t["stats.count"]},
        "generator": t["gen.trainer"],
        "step": m["step"],
        "bad_steps": m["bad_steps"],
        "rng": {
            "torch": t["rng.torch"],
            "cuda": [t[f"rng.cuda.{i}"] for i in range(m["cuda_rng_count"])],
            "numpy": (kind, t["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached),
            "python": (version, tuple(py_state), gauss_next),
        },
    }


# ------------------------------------------------------------------------------------------------
# Save / load


def distill_state(ckpt: Checkpoint) -> dict[str, Tensor]:
    """The distillation rule's tensors (``distill.*``) by their own names."""
    return {k[len("distill."):]: v for k, v in ckpt.tensors.items() if k.startswith("distill.")}


def save_checkpoint(path: str | os.PathLike, *, stage: str, config: dict, trainer, prior=None,
                    ref_rgba: Tensor | None = None, extra: dict | None = None, distill=None) -> Path:
    """Write a checkpoint atomically; see the module docstring for what it holds.

    ``trainer`` is a :class:`~dreamgs.train.GaussianTrainer`; ``config`` the run's
    :func:`~dreamgs.config.to_dict`; ``extra`` any JSON-serialisable run information; ``distill``
    the stage's distillation rule (its ``state_dict``).
    """
    from safetensors.torch import save_file

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    tensors, tmeta = _flatten_trainer(trainer.state_dict())
    gens = prior_generators(prior)
    for name, gen in gens.items():
        tensors[f"gen.prior.{name}"] = gen.get_state()
    if ref_rgba is not None:
        tensors["ref.rgba"] = ref_rgba.detach().float()
    if distill is not None:
        for name, t in distill.state_dict().items():
            tensors[f"distill.{name}"] = t
    meta = {"format": FORMAT, "version": VERSION, "stage": stage, "step": tmeta["step"], "config": config,
            "trainer": tmeta, "prior_generators": {k: g.device.type for k, g in gens.items()},
            "extra": extra or {}}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the rename makes it the checkpoint
        finally:
            os.close(fd)
    return path


def _bad(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: not a usable dreamgs checkpoint ({problem})")


def read_meta(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON document, read from the file header only (no tensor data)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise _bad(path, f"unreadable header: {type(e).__name__}") from None
    if raw is None:
        raise _bad(path, "no dreamgs metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise _bad(path, "metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "wrong format marker")
    if meta.get("version") != VERSION:
        raise _bad(path, f"format version {meta.get('version')!r}, this dreamgs reads version {VERSION}")
    if meta.get("stage") not in STAGES or not isinstance(meta.get("step"), int) or meta["step"] < 0:
        raise _bad(path, "bad stage or step")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("trainer"), dict):
        raise _bad(path, "missing config or trainer state")
    return meta


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and check a checkpoint; any damage raises :class:`InputError` naming the file."""
    from safetensors.torch import load_file

    from .gaussians import PARAM_NAMES

    path = Path(path)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise _bad(path, f"unreadable tensor data: {type(e).__name__}") from None
    ckpt = Checkpoint(path, meta, tensors)
    try:
        state = trainer_state(ckpt)
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"incomplete trainer state: {e}") from None
    params = state["params"]
    if ckpt.meta["trainer"].get("representation", "gaussians") != "gaussians":
        _check_named_tensors(path, state, ckpt.step)
        return ckpt
    if sorted(params) != sorted(PARAM_NAMES):
        raise _bad(path, f"Gaussian parameters {sorted(params)}")
    n = params["means"].shape[0]
    for name, t in params.items():
        if t.dim() < 1 or t.shape[0] != n or not t.is_floating_point():
            raise _bad(path, f"parameter '{name}' has shape {tuple(t.shape)} / {t.dtype}")
        for key, v in state["optimizer"].get(name, {}).items():
            if v.dim() > 0 and v.shape != t.shape:
                raise _bad(path, f"optimizer state '{name}.{key}' does not match its parameter")
    if state["stats"]["grad_sum"].shape != (n,) or state["stats"]["count"].shape != (n,):
        raise _bad(path, "densification statistics do not match the Gaussians")
    if state["step"] != ckpt.step:
        raise _bad(path, "inconsistent step counts")
    _check_rng(path, state)
    return ckpt


def _check_named_tensors(path: Path, state: dict, step: int) -> None:
    """A NeRF checkpoint: float tensors, Adam states shaped like their tensors, sane RNG states
    (the field's own shapes are checked against the config when the trainer loads it)."""
    for name, t in state["params"].items():
        if not t.is_floating_point():
            raise _bad(path, f"tensor '{name}' is {t.dtype}")
        for key, v in state["optimizer"].get(name, {}).items():
            if v.dim() > 0 and v.shape != t.shape:
                raise _bad(path, f"optimizer state '{name}.{key}' does not match its tensor")
    if state["step"] != step:
        raise _bad(path, "inconsistent step counts")
    if "occupancy" not in state["params"]:
        raise _bad(path, "NeRF state without its occupancy grid")
    _check_rng(path, state)


def _check_rng(path: Path, state: dict) -> None:
    """Shapes of the RNG states, so that restoring them cannot fail half-way."""
    rng = state["rng"]
    checks = [
        ("torch RNG", rng["torch"], torch.get_rng_state()),
        ("trainer generator", state["generator"], torch.Generator().get_state()),
    ]
    for what, t, like in checks:
        if t.dtype != torch.uint8 or t.shape != like.shape:
            raise _bad(path, f"{what} state has shape {tuple(t.shape)} / {t.dtype}")
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    if kind != "MT19937" or keys.shape != (624,) or not 0 <= pos <= 624:
        raise _bad(path, "numpy RNG state")
    version, py_state, _ = rng["python"]
    if version != 3 or len(py_state) != 625 or not all(0 <= x < 2**32 for x in py_state[:624]):
        raise _bad(path, "python RNG state")
