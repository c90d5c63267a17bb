"""Stable Diffusion (text-conditioned) prior.

Loaded with diffusers/transformers from a hub id or a local folder in the diffusers layout
(``tokenizer/``, ``text_encoder/``, ``vae/``, ``unet/``, ``scheduler/``); the default is
``stabilityai/stable-diffusion-2-1-base`` (512 px, 64x64 latents, epsilon prediction).

Prompts: with ``view_dependent`` the prompt is embedded once per view bucket
(``"<prompt>, front view"``, ``side``, ``back``, ``overhead``; see
:func:`~dreamgs.priors.base.view_bucket`) and each camera picks its bucket from its elevation
and azimuth. The unconditional embedding is the negative prompt's, or the empty prompt's when
there is none. All embeddings are computed once at construction and cached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from .base import VIEW_BUCKETS, view_bucket, view_prompt
from .latent import LatentDiffusionPrior
from .weights import DEFAULT_SD_MODEL, SD_COMPONENTS, load_component, resolve_dtype, resolve_model_folder


class StableDiffusionPrior(LatentDiffusionPrior):
    """SDS and SDEdit with a text-conditioned Stable Diffusion model."""

    name = "sd"
    native_resolution = 512

    def __init__(self, model: str = DEFAULT_SD_MODEL, *, prompt: str, negative_prompt: str = "",
                 device="cpu", dtype: str | torch.dtype = "auto", guidance_scale: float = 100.0,
                 t_min: float = 0.02, t_max: float = 0.98, t_schedule: str = "anneal",
                 view_dependent: bool = True, resolution: int = 0, seed: int | None = None):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        model = model or DEFAULT_SD_MODEL
        torch_dtype = resolve_dtype(dtype, device)
        folder = resolve_model_folder(model, SD_COMPONENTS, self.name)

        def load(loader, sub, **kw):
            return load_component(loader, folder, sub, model, self.name, **kw)

        self.tokenizer = load(CLIPTokenizer.from_pretrained, "tokenizer")
        text_encoder = load(CLIPTextModel.from_pretrained, "text_encoder", use_safetensors=True)
        vae = load(AutoencoderKL.from_pretrained, "vae", use_safetensors=True, torch_dtype=torch_dtype)
        unet = load(UNet2DConditionModel.from_pretrained, "unet", use_safetensors=True, torch_dtype=torch_dtype)
        scheduler = load(DDIMScheduler.from_pretrained, "scheduler")
        super().__init__(vae, unet, scheduler, device=device, dtype=torch_dtype,
                         guidance_scale=guidance_scale, t_min=t_min, t_max=t_max, t_schedule=t_schedule,
                         resolution=resolution or self.native_resolution, seed=seed)
        self.model = model
        self.text_encoder = self._frozen(text_encoder)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.view_dependent = view_dependent
        prompts = [view_prompt(prompt, b) if view_dependent else prompt for b in VIEW_BUCKETS]
        # (4, L, D) in VIEW_BUCKETS order, and (1, L, D) for the unconditional branch.
        self.bucket_embeddings = self.encode_text(prompts)
        self.uncond_embedding = self.encode_text([negative_prompt])

    def describe(self) -> str:
        return f"sd ({self.model}, {self.resolution} px, guidance {self.guidance_scale:g})"

    def bucket_indices(self, cams: Cameras) -> Tensor:
        """Index into ``VIEW_BUCKETS`` for each camera (long, on the prior's device)."""
        el, az = cams.elevation.tolist(), cams.azimuth.tolist()
        idx = [VIEW_BUCKETS.index(view_bucket(e, a)) for e, a in zip(el, az)]
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def condition(self, cams: Cameras, batch: int) -> Tensor:
        """Encoder hidden states for the ``[cond; uncond]`` batch, (2B, L, D)."""
        cond = self.bucket_embeddings[self.bucket_indices(cams)]
        uncond = self.uncond_embedding.expand(batch, -1, -1)
        return torch.cat([cond, uncond])

    def guided_eps(self, x_t: Tensor, t: int, cond: Tensor) -> Tensor:
        x_in = torch.cat([x_t, x_t])
        out = self._unet(x_in, self._timesteps(t, x_in.shape[0]), cond)
        return self._combine(out, x_in, t)

    def eps_uncond(self, x_t: Tensor, t: int, cond: Tensor) -> Tensor:
        x, n = x_t.to(self.dtype), x_t.shape[0]
        return self.to_eps(self._unet(x, self._timesteps(t, n), cond[n:]), x, t)

    # VSD's LoRA (priors/lora.py): the conditional branch with the view-independent prompt

    def lora_condition(self, cams: Cameras, batch: int) -> Tensor:
        if getattr(self, "plain_embedding", None) is None:
            self.plain_embedding = (self.encode_text([self.prompt]) if self.view_dependent
                                    else self.bucket_embeddings[:1])
        return self.plain_embedding.expand(batch, -1, -1)

    def lora_unet_call(self, x: Tensor, t: Tensor, cond: Tensor, class_labels: Tensor) -> Tensor:
        return self.unet(x, t, encoder_hidden_states=cond, class_labels=class_labels, return_dict=False)[0]
