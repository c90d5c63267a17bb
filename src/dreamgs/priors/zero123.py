"""Zero123 (Zero-1-to-3 / Zero123-XL) and Stable-Zero123 image-conditioned priors.

Weights: a hub id or local folder in the diffusers layout used by the public conversions
(``ashawkey/zero123-xl-diffusers``, ``ashawkey/stable-zero123-diffusers``, built for the
``Zero123Pipeline`` of the Zero-1-to-3 authors' diffusers port). We load each component
ourselves, never the custom pipeline code:

- ``unet/``: ``UNet2DConditionModel`` with 8 input channels (noisy latents ⊕ input-view latents),
  cross-attention width 768, SD-1.x layout;
- ``vae/``: ``AutoencoderKL``; ``scheduler/``: DDPM betas (we build a ``DDIMScheduler`` from it);
- ``image_encoder/``: ``CLIPVisionModelWithProjection`` (ViT-L/14, 768-d ``image_embeds``);
- ``feature_extractor/``: ``CLIPImageProcessor`` (224 px, CLIP mean/std);
- ``clip_camera_projection/``: ``config.json`` (``{"_class_name": "CLIPCameraProjection",
  "embedding_dim": 768, "additional_embeddings": 4}``) and ``diffusion_pytorch_model.safetensors``
  with keys ``proj.weight`` (768, 772) and ``proj.bias`` (768): one linear layer on the CLIP image
  embedding concatenated with a 4-d camera vector. :class:`CameraProjection` is our own module for
  it; only the safetensors file is ever read.

Conditioning (checked against DreamGaussian's ``guidance/zero123_utils.py``, threestudio's
``zero123_unified_guidance.py``/``stable_zero123_guidance.py`` and the authors' pipeline):

- the input view is resized to the prior's resolution (256 px -> 32x32 latents); its CLIP
  embedding comes from the feature extractor + image encoder (shape (1, 1, 768)), and its
  concat latents are the VAE posterior mode *without* the scaling factor (Zero123 was trained
  on unscaled concat latents; the noisy target latents are scaled as usual);
- camera vector, per target camera, in radians::

      [Δpolar, sin(Δazimuth), cos(Δazimuth), Δradius]          Zero123 / Zero123-XL
      [Δpolar, sin(Δazimuth), cos(Δazimuth), polar_input]      Stable-Zero123

  Zero123's polar angle is measured from the up axis, so in our (DreamGaussian) camera frame,
  where negative elevation is above the object, ``polar = 90° + elevation`` and
  ``Δpolar = elevation_target - elevation_input`` (a camera above the input view has a negative
  Δpolar). ``Δazimuth = azimuth_target - azimuth_input`` with the input view at azimuth 0 (both
  frames turn counter-clockwise seen from above). ``Δradius = radius_target - radius_input``
  in world units. Stable-Zero123 replaces the last entry by the *input* view's polar angle
  ``deg2rad(90 + elevation_input)``, the same for every target camera;
- classifier-free guidance (default scale 5): the conditional branch uses the projected
  embedding and the input-view latents, the unconditional branch a zero embedding (zeroed *after*
  the projection) and zero concat latents, exactly as the reference implementations do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_output
from ..cameras import Cameras
from ..errors import ConfigError, InputError
from .base import resize
from .latent import LatentDiffusionPrior
from .weights import (DEFAULT_STABLE_ZERO123_MODEL, DEFAULT_ZERO123_MODEL, ZERO123_COMPONENTS, load_component,
                      load_safetensors, missing, resolve_dtype, resolve_model_folder)

PROJECTION_CONFIG = "config.json"
PROJECTION_WEIGHTS = "diffusion_pytorch_model.safetensors"


class CameraProjection(torch.nn.Module):
    """``proj``: Linear(embedding_dim + additional_embeddings -> embedding_dim)."""

    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.additional_embeddings = int(additional_embeddings)
        self.proj = torch.nn.Linear(self.embedding_dim + self.additional_embeddings, self.embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

    @classmethod
    def from_folder(cls, folder: str | Path, model: str = "", kind: str = "zero123") -> "CameraProjection":
        """Load ``config.json`` + ``diffusion_pytorch_model.safetensors`` (pickles are never read)."""
        folder = Path(folder)
        model = model or str(folder)
        try:
            config = json.loads((folder / PROJECTION_CONFIG).read_text(encoding="utf-8"))
            dims = int(config.get("embedding_dim", 768)), int(config.get("additional_embeddings", 4))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise missing(model, kind, f"unreadable {folder / PROJECTION_CONFIG}: {e}") from None
        weights = folder / PROJECTION_WEIGHTS
        if not weights.is_file():
            raise missing(model, kind, f"{weights} is missing (only safetensors weights are loaded)")
        state = load_safetensors(weights, model, kind)
        module = cls(*dims)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            raise missing(model, kind, f"{weights} holds {got}, expected {expected}")
        module.load_state_dict(state)
        return module

    def save(self, folder: str | Path) -> None:
        """Write the diffusers-style folder (config.json + safetensors), each file atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "CLIPCameraProjection", "additional_embeddings": self.additional_embeddings,
                  "embedding_dim": self.embedding_dim}
        with atomic_output(folder / PROJECTION_CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_output(folder / PROJECTION_WEIGHTS) as tmp:
            save_file(state, str(tmp))


def _clip_image_processor_class():
    """transformers' CLIP image processor. Without torchvision, transformers 5 falls back from
    ``CLIPImageProcessor`` to ``CLIPImageProcessorPil`` with a warning line; take the PIL one directly
    then (older transformers have only ``CLIPImageProcessor``, which is the PIL one)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        try:
            from transformers import CLIPImageProcessorPil

            return CLIPImageProcessorPil
        except ImportError:
            pass
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor


def camera_vector(elevation: Tensor, azimuth: Tensor, radius: Tensor, ref_elevation: float,
                  ref_radius: float, stable: bool, ref_azimuth: float = 0.0) -> Tensor:
    """Zero123 / Stable-Zero123 camera vectors (C, 4), float32; angles in degrees (our frame)."""
    el, az, r = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (elevation, azimuth, radius))
    d_polar = torch.deg2rad(el - ref_elevation)
    d_az = torch.deg2rad(az - ref_azimuth)
    last = torch.full_like(el, math.radians(90.0 + ref_elevation)) if stable else r - ref_radius
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1).float()


class Zero123Prior(LatentDiffusionPrior):
    """SDS and SDEdit with Zero123 / Stable-Zero123 conditioned on one reference view."""

    native_resolution = 256

    def __init__(self, model: str = "", *, ref_image: Tensor, ref_elevation: float = 0.0,
                 ref_radius: float = 2.0, stable: bool = False, device="cpu",
                 dtype: str | torch.dtype = "auto", guidance_scale: float = 5.0, t_min: float = 0.02,
                 t_max: float = 0.98, t_schedule: str = "anneal", resolution: int = 0,
                 seed: int | None = None):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        CLIPImageProcessor = _clip_image_processor_class()

        self.name = "stable-zero123" if stable else "zero123"
        self.stable = stable
        model = model or (DEFAULT_STABLE_ZERO123_MODEL if stable else DEFAULT_ZERO123_MODEL)
        if not (isinstance(ref_image, Tensor) and ref_image.ndim == 4 and ref_image.shape[:2] == (1, 3)):
            shape = tuple(ref_image.shape) if isinstance(ref_image, Tensor) else type(ref_image).__name__
            raise InputError(f"{self.name}: the reference image must be a (1, 3, H, W) tensor, got {shape}")
        torch_dtype = resolve_dtype(dtype, device)
        folder = resolve_model_folder(model, ZERO123_COMPONENTS, self.name)

        def load(loader, sub, **kw):
            return load_component(loader, folder, sub, model, self.name, **kw)

        unet = load(UNet2DConditionModel.from_pretrained, "unet", use_safetensors=True, torch_dtype=torch_dtype)
        vae = load(AutoencoderKL.from_pretrained, "vae", use_safetensors=True, torch_dtype=torch_dtype)
        scheduler = load(DDIMScheduler.from_pretrained, "scheduler")
        image_encoder = load(CLIPVisionModelWithProjection.from_pretrained, "image_encoder", use_safetensors=True)
        self.feature_extractor = load(CLIPImageProcessor.from_pretrained, "feature_extractor")
        projection = CameraProjection.from_folder(folder / "clip_camera_projection", model, self.name)
        if unet.config.in_channels != 8:
            raise ConfigError(f"prior.model '{model}': the UNet takes {unet.config.in_channels} input "
                              f"channels; Zero123 needs 8 (noisy latents + input-view latents)")
        width = unet.config.cross_attention_dim
        if projection.embedding_dim != width or image_encoder.config.projection_dim != width:
            raise ConfigError(f"prior.model '{model}': image embedding {image_encoder.config.projection_dim}, "
                              f"camera projection {projection.embedding_dim} and UNet {width} widths differ")
        super().__init__(vae, unet, scheduler, device=device, dtype=torch_dtype,
                         guidance_scale=guidance_scale, t_min=t_min, t_max=t_max, t_schedule=t_schedule,
                         resolution=resolution or self.native_resolution, seed=seed)
        self.model = model
        self.image_encoder = self._frozen(image_encoder)
        self.camera_projection = self._frozen(projection)
        self.ref_elevation, self.ref_radius = float(ref_elevation), float(ref_radius)
        self.set_reference(ref_image)

    def describe(self) -> str:
        return f"{self.name} ({self.model}, {self.resolution} px, guidance {self.guidance_scale:g})"

    @torch.no_grad()
    def set_reference(self, ref_image: Tensor) -> None:
        """Cache the CLIP embedding (1, 1, D) and unscaled concat latents of the input view."""
        image = resize(ref_image.float().clamp(0.0, 1.0), self.resolution)
        pixels = (image[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
        clip_in = self.feature_extractor(images=[np.ascontiguousarray(pixels)], return_tensors="pt").pixel_values
        embeds = self.image_encoder(clip_in.to(self.device, self.dtype)).image_embeds
        self.clip_embedding = embeds[:, None, :].to(self.dtype)
        x = (image * 2.0 - 1.0).to(self.device, self.dtype)
        self.ref_latents = self.vae.encode(x).latent_dist.mode()

    def camera_vector(self, cams: Cameras) -> Tensor:
        """(C, 4) float32 camera vectors for ``cams`` relative to the input view (see module doc)."""
        return camera_vector(cams.elevation.cpu(), cams.azimuth.cpu(), cams.radius.cpu(),
                             self.ref_elevation, self.ref_radius, self.stable)

    def condition(self, cams: Cameras, batch: int) -> tuple[Tensor, Tensor]:
        """(encoder hidden states (2B, 1, D), concat latents (2B, 4, h, w)) for ``[cond; uncond]``."""
        cam = self.camera_vector(cams).to(self.device, self.dtype)[:, None, :]
        emb = self.camera_projection(torch.cat([self.clip_embedding.expand(batch, -1, -1), cam], dim=-1))
        hidden = torch.cat([emb, torch.zeros_like(emb)])
        ref = self.ref_latents.expand(batch, -1, -1, -1)
        concat = torch.cat([ref, torch.zeros_like(ref)])
        return hidden, concat

    def guided_eps(self, x_t: Tensor, t: int, cond: tuple[Tensor, Tensor]) -> Tensor:
        hidden, concat = cond
        x_in = torch.cat([x_t, x_t])
        out = self._unet(torch.cat([x_in, concat], dim=1), self._timesteps(t, x_in.shape[0]), hidden)
        return self._combine(out, x_in, t)

    def eps_uncond(self, x_t: Tensor, t: int, cond: tuple[Tensor, Tensor]) -> Tensor:
        hidden, concat = cond
        x, n = x_t.to(self.dtype), x_t.shape[0]
        out = self._unet(torch.cat([x, concat[n:]], dim=1), self._timesteps(t, n), hidden[n:])
        return self.to_eps(out, x, t)

    # VSD's LoRA (priors/lora.py): the conditional branch (input view and relative camera)

    def lora_condition(self, cams: Cameras, batch: int) -> tuple[Tensor, Tensor]:
        hidden, concat = self.condition(cams, batch)
        return hidden[:batch], concat[:batch]

    def lora_unet_call(self, x: Tensor, t: Tensor, cond: tuple[Tensor, Tensor], class_labels: Tensor) -> Tensor:
        hidden, concat = cond
        return self.unet(torch.cat([x, concat], dim=1), t, encoder_hidden_states=hidden, class_labels=class_labels,
                         return_dict=False)[0]
