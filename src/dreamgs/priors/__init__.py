"""2D diffusion priors behind one interface (see :mod:`dreamgs.priors.base`).

:func:`load_prior` builds the prior named by ``cfg.prior.kind``:

- ``sd``: Stable Diffusion, text-conditioned (default ``stabilityai/stable-diffusion-2-1-base``);
- ``zero123``: Zero123-XL, image-conditioned (default ``ashawkey/zero123-xl-diffusers``);
- ``stable-zero123``: Stable-Zero123 (default ``ashawkey/stable-zero123-diffusers``, the public
  diffusers conversion that DreamGaussian uses);
- ``mvdream``: MVDream, text-conditioned, 4 views with cross-view attention and a camera embedding
  (default ``MVDream/MVDream``, its ``sd-v2.1-base-4view`` checkpoint as safetensors; ``priors/mvdream.py``);
- ``imagedream``: ImageDream, image-conditioned MVDream (default ``ashawkey/imagedream-ipmv-diffusers``);
- ``oracle``: an exact diffusion model of known 3D assets (``priors/oracle.py``), for offline runs
  whose quality can be measured against the asset itself;
- ``oracle-mv``: the joint 4-view oracle (``priors/oracle_mv.py``): the exact posterior mean over
  groups of 4 views 90 degrees apart, the multi-view testbed of the Janus-prone setting.

In image mode ``cfg.prior.text_guidance`` (``sd`` or ``mvdream``) adds a text prior under
``cfg.prompt`` with weight ``cfg.prior.text_weight`` (``priors/combined.py``, DreamGaussian's
``lambda_sd`` beside ``lambda_zero123``). An empty ``cfg.prior.model`` picks the kind's default.
How the prior's predictions become a gradient is ``cfg.prior.distill`` (sds, vsd, ism:
``priors/distill.py``; with vsd or ism, ``sd`` guides at 7.5 unless ``prior.guidance_scale`` is set). The diffusion modules import
diffusers/transformers only when a prior is built.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import ConfigError, InputError
if TYPE_CHECKING:
    import torch

    from .base import Prior

    from ..config import Config

PRIOR_KINDS = ("sd", "zero123", "stable-zero123", "mvdream", "imagedream", "oracle", "oracle-mv")

__all__ = ["PRIOR_KINDS", "Prior", "load_prior", "timestep_fraction", "view_bucket", "view_prompt"]
_BASE = ("Prior", "timestep_fraction", "view_bucket", "view_prompt")


def __getattr__(name: str):
    # The torch-based interface is imported on first use, so `dreamgs info` can read the model
    # catalogue (priors.weights) without importing torch.
    if name in _BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_prior(cfg: "Config", device, ref_image: "torch.Tensor | None" = None) -> Prior:
    """The prior for ``cfg.prior.kind``, plus ``cfg.prior.text_guidance`` if set; ``ref_image``
    (1, 3, H, W) in [0, 1], white background, is required by the image-conditioned kinds."""
    prior = _load_one(cfg, cfg.prior.kind, cfg.prior.model, device, ref_image)
    text = cfg.prior.text_guidance
    if not text:
        return prior
    from .combined import WeightedPriors

    if prior.name in ("sd", "mvdream"):
        raise ConfigError(f"prior.text_guidance={text}: prior.kind={cfg.prior.kind} is already a text prior")
    # its own seed, so that its noise does not repeat the image prior's
    seed = None if cfg.seed is None else cfg.seed + 1
    guide = _load_one(dataclasses.replace(cfg, seed=seed), text, cfg.prior.text_model, device, None)
    return WeightedPriors([(cfg.prior.kind, 1.0, prior), (text, cfg.prior.text_weight, guide)])


def _load_one(cfg: "Config", kind: str, model: str, device, ref_image) -> Prior:
    p = dataclasses.replace(cfg.prior, kind=kind, model=model)
    if kind != cfg.prior.kind:  # text guidance: its own default scale, and the plain prompt (DreamGaussian's:
        p.guidance_scale = None  # in image mode azimuth 0 is the input view, not the object's front)
        p.view_dependent_prompt = False
    common = dict(device=device, dtype=p.dtype, t_min=p.t_min, t_max=p.t_max, t_schedule=p.t_schedule,
                  resolution=p.resolution, seed=cfg.seed)
    if p.guidance_scale is None and kind == "sd" and p.distill in ("vsd", "ism"):
        p.guidance_scale = 7.5  # ProlificDreamer's and LucidDreamer's guidance for Stable Diffusion
    if p.guidance_scale is not None:  # None keeps the prior's own default (SD 100, Zero123 5, MVDream 50, ImageDream 5)
        common["guidance_scale"] = p.guidance_scale
    speed = (dict(channels_last=p.channels_last, compile=p.compile, cuda_graphs=p.cuda_graphs,
                  vae_matmul_attention=p.vae_matmul_attention)
             if str(device).startswith("cuda") else {})
    if kind == "sd":
        from .sd import DEFAULT_SD_MODEL, StableDiffusionPrior

        if not cfg.prompt.strip():
            raise ConfigError("prior.kind=sd needs a text prompt (prompt=...)")
        return StableDiffusionPrior(p.model or DEFAULT_SD_MODEL, prompt=cfg.prompt,
                                    negative_prompt=cfg.negative_prompt,
                                    view_dependent=p.view_dependent_prompt, **common).optimize(**speed)
    elif kind in ("zero123", "stable-zero123"):
        from .zero123 import Zero123Prior

        if ref_image is None:
            raise InputError(f"prior.kind={kind} needs an input image (image=path/to/image.png)")
        return Zero123Prior(p.model, ref_image=ref_image, ref_elevation=cfg.elevation,
                            ref_radius=cfg.camera.radius, stable=kind == "stable-zero123",
                            **common).optimize(**speed)
    elif kind in ("mvdream", "imagedream"):
        from .mvdream import build_multiview

        return build_multiview(kind, p.model, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                               ref_image=ref_image, **common).optimize(**speed)
    elif kind == "oracle":
        from .oracle import build_oracle

        return build_oracle(cfg, device, ref_image)
    elif kind == "oracle-mv":
        from .oracle_mv import build_oracle_mv

        return build_oracle_mv(cfg, device, ref_image)
    raise ConfigError(f"prior.kind: unknown kind '{kind}' (valid: {', '.join(PRIOR_KINDS)})")
