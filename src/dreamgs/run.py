"""Run folders and atomic file writes.

Every run gets its own folder holding its outputs, the resolved ``config.yaml`` and ``seed.txt``.
Files are written atomically: to a temporary name in the same folder, then renamed, so an
interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
from pathlib import Path

from .atomic import atomic_output
from .config import Config, dump_yaml
from .errors import InputError


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    with atomic_output(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")


def resolve_seed(cfg: Config) -> int:
    """The run's seed: the configured one, or a freshly drawn one (recorded with the outputs)."""
    if cfg.seed is None:
        cfg.seed = secrets.randbelow(2**31)
    return cfg.seed


def slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:max_len].rstrip("-") or "run"


def default_run_name(cfg: Config, subject: str | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<subject>-s<seed>``; the subject defaults to the prompt or image stem."""
    if subject is None:
        subject = cfg.prompt if cfg.mode == "text" else Path(cfg.image).stem
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slug(subject)}-s{cfg.seed}"


def new_run_dir(parent: str | os.PathLike, cfg: Config, subject: str | None = None) -> Path:
    """``parent/<date-time>-<subject>-s<seed>`` (:func:`default_run_name`), with ``-2``, ``-3``...
    appended while that folder exists, so two runs started in the same second never share one."""
    base = Path(parent) / default_run_name(cfg, subject)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(run_dir: str | os.PathLike, cfg: Config, seed: int) -> Path:
    """Create ``run_dir`` and record the resolved config and seed there."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"output folder {run_dir} is not writable ({e.strerror or e})") from None
    cfg.seed = seed
    atomic_write(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write(run_dir / "seed.txt", f"{seed}\n")
    return run_dir
